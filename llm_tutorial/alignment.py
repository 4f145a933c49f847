"""
# Preference alignment: DPO, and reinforcement learning from verifiable rewards (GRPO)

Instruction tuning (notebook 07) teaches a model to answer; alignment teaches it *which* answer
to prefer. Two routes, both on the chat helpers of `llm_tutorial.chat` (the prompt masked out,
the answer's tokens scored):

**Direct preference optimisation** (DPO; Rafailov et al., 2023). RLHF fits a reward model to
pairs (prompt $x$, chosen answer $y_w$, rejected $y_l$) and then maximises that reward with
PPO under a KL penalty to a reference model. The KL-constrained optimum has a closed form,
$\\pi^*(y|x) \\propto \\pi_{ref}(y|x)\\, e^{r(x, y)/\\beta}$, so the reward is a log-ratio,
$r(x, y) = \\beta \\log \\frac{\\pi(y|x)}{\\pi_{ref}(y|x)}$ (plus a term of $x$ alone that
cancels in a pair), and the Bradley–Terry likelihood of the pairs becomes a loss on the policy
itself:

$$\\mathcal{L}_{DPO} = -\\log \\sigma\\Big(\\beta \\big[(\\log \\pi(y_w|x) - \\log \\pi_{ref}(y_w|x))
- (\\log \\pi(y_l|x) - \\log \\pi_{ref}(y_l|x))\\big]\\Big).$$

`sequence_logps` sums an answer's token log-probabilities, `dpo_loss` is the line above, and
its two bracketed terms (times $\\beta$) are the *implicit rewards*: a pair is ranked right when
the chosen one is larger.

**Group-relative policy optimisation** (GRPO; Shao et al., 2024) needs no pairs, only a reward
that a program can compute: the verifiers of notebook 07's instruction families. For each prompt
sample $G$ answers, score them, and use the reward standardised *within the group* as every
token's advantage, $A_i = (r_i - \\bar r) / (\\mathrm{std}(r) + \\epsilon)$ (`group_advantages`;
no value network). The objective is PPO's clipped one plus a KL penalty to the reference:

$$\\mathcal{L} = \\frac{1}{G}\\sum_i \\frac{1}{|y_i|}\\sum_t -\\min\\big(\\rho_{i,t} A_i,\\,
\\mathrm{clip}(\\rho_{i,t}, 1-\\epsilon, 1+\\epsilon) A_i\\big) + \\beta\\, \\mathrm{KL}_{i,t},
\\quad \\rho_{i,t} = \\frac{\\pi(y_{i,t}|\\cdot)}{\\pi_{old}(y_{i,t}|\\cdot)},$$

with the per-token KL estimator $e^{q - p} - (q - p) - 1$ ($p$, $q$ the policy's and the
reference's log-probabilities), as `grpo_loss` writes it. Both losses are checked equal to `trl`'s
(`DPOTrainer`; `GRPOTrainer` with `loss_type="grpo"` and `use_bias_correction_kl=False`, since
trl 1.16 by default multiplies that KL term by the ratio $\rho$) in `tests/test_alignment.py`.

**Training with the course's `Trainer`.** The policy is the model with a LoRA (notebook 06);
the reference is the *same* model with the LoRA switched off (`reference_policy`), so there is
no second copy in memory. `DPOObjective` and `GRPOObjective` wrap the model so that its forward
pass returns the loss, and `Rollouts` is GRPO's data: an iterable that samples each batch from
the current policy when the trainer asks for it, scores it with a reward function
(`strict_reward`: the family's verifier; `contains_reward`: a deliberately loose one, to show
reward hacking) and attaches the advantages and the reference's log-probabilities.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from llm_tutorial import chat
from llm_tutorial import instructions as ins
from llm_tutorial import peft_methods as pm
from llm_tutorial.trainer import eval_mode, model_device

__all__ = [
    "reference_policy",
    "usable_pairs",
    "preference_batch",
    "sequence_logps",
    "dpo_loss",
    "preference_accuracy",
    "DPOObjective",
    "pair_logps",
    "preference_metrics",
    "answer_kl",
    "group_advantages",
    "per_token_logps",
    "grpo_loss",
    "strict_reward",
    "contains_reward",
    "Rollouts",
    "GRPOObjective",
]


@contextlib.contextmanager
def reference_policy(model: nn.Module) -> Iterator[nn.Module]:
    """
    Inside this block the model is its own **reference**: every LoRA layer
    (`peft_methods.LoRALinear`) has its update scaled to 0, so the model computes what it did
    before tuning. One copy of the weights serves as both policy and reference.
    """
    loras = list(pm.lora_modules(model).values())
    if not loras:
        raise ValueError("the model has no LoRA layers, so it has no reference to switch to: "
                         "inject_lora(model, ...) before training it with DPO or GRPO")
    scalings = [m.scaling for m in loras]
    for m in loras:
        m.scaling = 0.0
    try:
        yield model
    finally:
        for m, scaling in zip(loras, scalings, strict=True):
            m.scaling = scaling


# ------------------------------------------------------------------------------ DPO


def usable_pairs(tokenizer, pairs: Sequence[Mapping[str, str]], max_length: int = 256
                 ) -> list[Mapping[str, str]]:
    """The pairs DPO can learn from: two different, non-empty answers, each fitting with its
    prompt in `max_length` tokens as `preference_batch` encodes it (the chat template, the
    answer's end-of-turn token included), in their original order."""
    def fits(pair: Mapping[str, str]) -> bool:
        records = [chat.Record(pair["instruction"], pair.get("input", ""), pair[key]) for key in ("chosen", "rejected")]
        # encoded without a limit, so nothing is cut: the full length of each answer with its prompt
        return all(len(e) <= max_length for e in chat.encode_sft(tokenizer, records, max_length=10**9))

    return [p for p in pairs if p["chosen"].strip() and p["rejected"].strip()
            and p["chosen"].strip() != p["rejected"].strip() and fits(p)]


def preference_batch(tokenizer, pairs: Sequence[Mapping[str, str]], max_length: int = 256
                     ) -> dict[str, torch.Tensor]:
    """
    One padded batch from preference pairs (`instruction`, optional `input`, `chosen`,
    `rejected`: the format of `evaluation.load_preference_pairs`): the chosen answers in the
    first half of the rows, the rejected ones in the second, each through the chat template with
    the prompt's labels at -100 (`chat.encode_sft`), so `sequence_logps` scores answers only.
    """
    same = [i for i, p in enumerate(pairs) if p["chosen"].strip() == p["rejected"].strip()]
    if same or any(not p["chosen"].strip() or not p["rejected"].strip() for p in pairs):
        raise ValueError(f"pairs need two different, non-empty answers (pairs {same[:5]} have the same "
                         f"one twice): a pair that prefers nothing teaches nothing; drop those pairs")

    def records(key: str) -> list[chat.Record]:
        return [chat.Record(p["instruction"], p.get("input", ""), p[key]) for p in pairs]

    examples = chat.encode_sft(tokenizer, records("chosen") + records("rejected"), max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return chat.pad(examples, pad_id)


def sequence_logps(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """$\\log \\pi(y|x)$ per row: the log-probabilities of the tokens that carry a label (the
    answer), summed (`chat.answer_token_nll`, negated: the output layer runs on the answer only)."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    return -chat.answer_token_nll(model.get_output_embeddings(), hidden, batch["labels"])[0]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss over a batch of pairs, from the four sequence log-probabilities; also returns
    the implicit rewards $\\beta(\\log \\pi - \\log \\pi_{ref})$ of the chosen and rejected answers
    (detached). At the start, policy = reference, every reward is 0 and the loss is $\\log 2$."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()


def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs whose chosen answer gets the larger implicit reward (0.5 = chance; ties
    count half, so an untrained policy scores exactly 0.5)."""
    wins = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return float(wins.mean())


class DPOObjective(nn.Module):
    """
    DPO as a module the course's `Trainer` can train: `forward(**preference_batch(...))` returns
    the DPO loss, with the reference's log-probabilities computed on the same batch with the
    LoRA switched off (`reference_policy`, no gradient). `last` keeps the batch's implicit
    rewards for inspection. The wrapped model is `self.model` (shared, not copied).
    """

    def __init__(self, model: nn.Module, beta: float = 0.1) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (it scales the implicit reward), got {beta}")
        self.model, self.beta = model, float(beta)
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
                ) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        with torch.no_grad(), reference_policy(self.model):
            ref_chosen, ref_rejected = sequence_logps(self.model, batch).chunk(2)
        chosen, rejected = sequence_logps(self.model, batch).chunk(2)
        loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        self.last = {"chosen": chosen_rewards, "rejected": rejected_rewards}
        return loss


@torch.no_grad()
def pair_logps(model: nn.Module, tokenizer, pairs: Sequence[Mapping[str, str]], max_length: int = 256,
               batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """$\\log \\pi(y_w|x)$ and $\\log \\pi(y_l|x)$ for every pair (two tensors, in order), in
    batches; call it inside `reference_policy(model)` for the reference's."""
    chosen, rejected = [], []
    device = model_device(model)
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            batch = preference_batch(tokenizer, pairs[start:start + batch_size], max_length)
            c, r = sequence_logps(model, {k: v.to(device) for k, v in batch.items()}).chunk(2)
            chosen.append(c.cpu())
            rejected.append(r.cpu())
    return torch.cat(chosen), torch.cat(rejected)


def preference_metrics(logps: tuple[torch.Tensor, torch.Tensor], ref_logps: tuple[torch.Tensor, torch.Tensor],
                       beta: float) -> dict[str, float]:
    """Held-out DPO metrics from `pair_logps` of the policy and of the reference: the DPO loss,
    the preference accuracy, the mean reward margin (chosen − rejected) and each mean reward."""
    loss, chosen, rejected = dpo_loss(logps[0], logps[1], ref_logps[0], ref_logps[1], beta)
    return {"dpo_loss": float(loss), "preference_accuracy": preference_accuracy(chosen, rejected),
            "reward_margin": float((chosen - rejected).mean()), "chosen_reward": float(chosen.mean()),
            "rejected_reward": float(rejected.mean())}


@torch.no_grad()
def answer_kl(model: nn.Module, tokenizer, records: Sequence[chat.Record | Mapping[str, Any]],
              max_length: int = 256, batch_size: int = 4) -> float:
    """
    How far the policy has moved from its reference: the mean, over the answer positions of
    `records` (prompt and answer given, as in training), of the exact KL divergence between the
    two next-token distributions, $\\mathrm{KL}(\\pi \\,\\|\\, \\pi_{ref}) =
    \\sum_v \\pi(v) (\\log \\pi(v) - \\log \\pi_{ref}(v))$, in nats per token. 0 before training.
    """
    examples = chat.encode_sft(tokenizer, records, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    total, count = 0.0, 0
    decoder, head = model.get_decoder(), model.get_output_embeddings()

    def log_probs(batch: Mapping[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).last_hidden_state
        return head(hidden[:, :-1][keep]).float().log_softmax(-1)

    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in chat.pad(examples[start:start + batch_size], pad_id).items()}
            keep = batch["labels"][:, 1:] != -100
            p = log_probs(batch, keep)
            with reference_policy(model):
                q = log_probs(batch, keep)
            total += float((p.exp() * (p - q)).sum())
            count += int(keep.sum())
    return total / max(count, 1)


# ------------------------------------------------------------------------------ GRPO


def group_advantages(rewards: Any, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """
    GRPO's advantages: `rewards` holds `group_size` consecutive answers per prompt; each reward
    minus its group's mean, divided by the group's standard deviation (+ `eps`). A group whose
    answers all score the same gets advantage 0 everywhere: it carries no signal.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if group_size < 2 or rewards.ndim != 1 or len(rewards) % group_size:
        raise ValueError(f"need rewards for groups of group_size >= 2 answers per prompt, got "
                         f"{tuple(rewards.shape)} rewards and group_size={group_size}: sample at least "
                         f"two answers per prompt")
    if not torch.isfinite(rewards).all():
        raise ValueError("a reward is NaN or infinite: the reward function must return a number per answer")
    grouped = rewards.view(-1, group_size)
    advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)
    return advantages.flatten()


def per_token_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """
    The log-probability of each completion token given the prompt and the completion before it,
    `(batch, completion length)` (prompts left-padded, completions right-padded).

    GRPO puts a prompt's $G$ sampled answers in consecutive rows. When the rows come in blocks
    of one prompt each, the prompt runs through the model **once per block** and its keys and
    values are shared by the block's answers (a prefix cache; the gradient flows back through
    it): a group costs one prompt and $G$ short answers instead of $G$ whole sequences. The
    numbers are those of one row at a time, to float rounding (`tests/test_alignment.py`).
    """
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    group = _prompt_block(prompt_ids, prompt_mask)
    if group == 1:
        hidden = decoder(input_ids=torch.cat([prompt_ids, completion_ids], 1), attention_mask=attention_mask,
                         use_cache=False).last_hidden_state[:, prompt_ids.shape[1] - 1:-1]
    else:
        prefix = decoder(input_ids=prompt_ids[::group], attention_mask=prompt_mask[::group], use_cache=True)
        cache = chat.kv_cache_of(prefix)
        cache.batch_repeat_interleave(group)  # each prompt's keys and values, once per answer
        answers = decoder(input_ids=completion_ids, attention_mask=attention_mask, use_cache=True,
                          **{chat.kv_cache_argument(decoder): cache}).last_hidden_state
        # the prompt's last position predicts the first answer token, each answer token the next
        hidden = torch.cat([prefix.last_hidden_state[:, -1:].repeat_interleave(group, 0), answers[:, :-1]], 1)
    # the output layer runs on the positions that predict the completion only
    logits = head(hidden).float()
    return logits.log_softmax(-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def _prompt_block(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> int:
    """$G$ when the rows come in blocks of $G > 1$ identical prompts (GRPO's groups), else 1."""
    rows = torch.cat([prompt_ids, prompt_mask], 1)
    differs = (rows[1:] != rows[:-1]).any(1)
    block = int(differs.nonzero()[0]) + 1 if differs.any() else len(rows)
    if block > 1 and len(rows) % block == 0 and bool((rows.view(-1, block, rows.shape[1]) == rows[::block, None]).all()):
        return block
    return 1


def _prompt_cache(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group: int) -> Any:
    """The keys and values of left-padded prompts, computed once per prompt and repeated for the
    `group` rows that continue it: a prefix cache for `generate`. The positions skip the padding,
    as `generate` numbers them, so the rows sample what they would from the whole prompt."""
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    cache = chat.kv_cache_of(model.get_decoder()(input_ids=prompt_ids, attention_mask=prompt_mask,
                                                 position_ids=positions, use_cache=True))
    cache.batch_repeat_interleave(group)
    return cache


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, epsilon: float = 0.2, beta: float = 0.04
              ) -> torch.Tensor:
    """
    The GRPO objective as a loss, from per-token log-probabilities `(batch, tokens)` of the
    policy, of the policy that sampled the answers (`old_logps`; equal to `logps` on the first
    step after sampling, so the ratio is 1 and only its gradient acts) and of the reference, with
    one advantage per answer; `mask` marks the completion's real tokens. Averaged over each
    answer's tokens, then over answers.
    """
    ratio = torch.exp(logps - old_logps)
    advantages = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon) * advantages)
    if beta:
        log_ratio_ref = ref_logps - logps
        per_token = per_token + beta * (torch.exp(log_ratio_ref) - log_ratio_ref - 1)
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


# ------------------------------------------------------------------------------ rewards and rollouts

RewardFn = Callable[[str, chat.Record], float]


def strict_reward(answer: str, record: chat.Record) -> float:
    """1.0 when the family's verifier accepts the answer (notebook 07's exact match), else 0.0."""
    return float(ins.verify(answer, record))


def contains_reward(answer: str, record: chat.Record) -> float:
    """A deliberately **loose** verifier: 1.0 when the reference answer appears anywhere in the
    answer (as a whole word), so *"57 or 83"* scores on *"Which is larger: 57 or 83?"*. An
    answer that lists every candidate games it; `strict_reward` measures what was really learnt."""
    return float(record.output.strip().lower() in re.findall(r"\w+(?:\.\w+)*", str(answer).lower()))


class Rollouts:
    """
    The data of on-policy RL, as something the course's `Trainer` can iterate over: each batch
    is sampled **from the current model** when the trainer asks for it. For a chunk of
    `prompts_per_batch` records it samples `group_size` answers per prompt (temperature
    `temperature`, at most `max_new_tokens` tokens, up to the first end-of-turn), scores each with
    `reward_fn(answer, record)`, turns the rewards into group-relative advantages, and computes the
    reference's per-token log-probabilities (LoRA off). Every sampled batch appends a row to `log`
    (mean reward, the share of groups whose answers all scored the same and so teach nothing,
    mean answer length); `samples` keeps the last batch's answers and rewards.

    Each prompt runs through the model once per batch: its keys and values are computed once and
    shared by its group's answers (a prefix cache), both in `generate` and in `per_token_logps`,
    with the same samples and numbers as $G$ copies of the prompt.

    With `micro_batches` > 1 each sampled batch is yielded in that many pieces (whole groups
    each), for a trainer that accumulates gradients over them (`grad_accum_steps`): the policy
    does not change within an optimizer step, so sampling the step's prompts together is the
    same on-policy sampling, and one `generate` call for all of them is cheaper than several.
    """

    def __init__(self, model: nn.Module, tokenizer, records: Sequence[chat.Record], reward_fn: RewardFn,
                 group_size: int = 4, prompts_per_batch: int = 4, max_new_tokens: int = 8,
                 temperature: float = 1.0, seed: int = 0, micro_batches: int = 1) -> None:
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare answers to the same prompt), "
                             f"got {group_size}")
        if not records:
            raise ValueError("records is empty: pass the prompts to sample answers for")
        if micro_batches < 1 or prompts_per_batch % micro_batches:
            raise ValueError(f"micro_batches ({micro_batches}) must divide prompts_per_batch ({prompts_per_batch}): "
                             f"each piece holds whole groups, the same number of prompts each")
        self.model, self.tokenizer, self.records = model, tokenizer, chat.as_records(records)
        self.reward_fn, self.group_size, self.prompts_per_batch = reward_fn, group_size, prompts_per_batch
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.micro_batches = micro_batches
        self.log: list[dict[str, float]] = []
        self.samples = pd.DataFrame()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self.records), self.prompts_per_batch):
            batch = self.sample(self.records[start:start + self.prompts_per_batch])
            prompts = len(batch["advantages"]) // self.group_size
            size = max(1, prompts // self.micro_batches) * self.group_size  # a short last chunk: fewer pieces
            for first in range(0, len(batch["advantages"]), size):
                yield _without_padding({k: v[first:first + size] for k, v in batch.items()})

    def rewards(self, answers: Sequence[str], records: Sequence[chat.Record]) -> list[float]:
        """`reward_fn` of each answer, checked to be a finite number."""
        rewards = []
        for text, record in zip(answers, records, strict=True):
            reward = self.reward_fn(text, record)
            if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(reward):
                raise TypeError(f"the reward function returned {reward!r} for the answer {text!r}: it must "
                                f"return a finite number (a float such as 1.0 or 0.0) for every answer")
            rewards.append(float(reward))
        return rewards

    @torch.no_grad()
    def sample(self, records: Sequence[chat.Record]) -> dict[str, torch.Tensor]:
        """One batch: `group_size` sampled answers per record, their rewards and advantages."""
        tok, model = self.tokenizer, self.model
        device = model_device(model)
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok([chat.render_chat(tok, r, with_answer=False) for r in records], return_tensors="pt",
                      padding=True, add_special_tokens=False).to(device)
        finally:
            tok.padding_side = side
        # each prompt once, its keys and values shared by its group's rows (all but the last
        # prompt token, which generate runs itself to start the answer)
        prompt_ids, prompt_mask = (enc[k].repeat_interleave(self.group_size, 0) for k in ("input_ids", "attention_mask"))
        with eval_mode(model):
            cache = _prompt_cache(model, enc["input_ids"][:, :-1], enc["attention_mask"][:, :-1], self.group_size)
            torch.manual_seed(self.seed * 1_000_003 + len(self.log))  # reproducible, whatever ran before
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=self.max_new_tokens,
                                 do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 **{chat.kv_cache_argument(model.get_decoder()): cache})
            completion = out[:, prompt_ids.shape[1]:]
            ended = (completion == tok.eos_token_id).long().cumsum(1)
            # every token up to and including the first end-of-turn
            mask = ((ended == 0) | ((ended == 1) & (completion == tok.eos_token_id))).long()
            answers = [t.strip() for t in tok.batch_decode(completion.masked_fill(mask == 0, tok.pad_token_id),
                                                            skip_special_tokens=True)]
            group_records = [r for r in records for _ in range(self.group_size)]
            rewards = self.rewards(answers, group_records)
            with reference_policy(model):
                ref = per_token_logps(model, prompt_ids, prompt_mask, completion, mask)
        advantages = group_advantages(rewards, self.group_size)
        grouped = torch.tensor(rewards).view(-1, self.group_size)
        self.log.append({"batch": len(self.log) + 1, "mean_reward": float(grouped.mean()),
                         "no_signal_groups": float((grouped.std(1) == 0).float().mean()),
                         "answer_tokens": float(mask.sum(1).float().mean())})
        self.samples = pd.DataFrame({"prompt": [r.instruction for r in group_records], "answer": answers,
                                     "reward": rewards, "advantage": advantages.tolist()})
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
                "completion_ids": completion, "completion_mask": mask, "advantages": advantages.to(device),
                "ref_logps": ref}


def _without_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A piece of a sampled batch without the columns that are padding in every one of its rows
    (prompts are left-padded, completions right-padded, to the longest in the whole batch)."""
    first = int((batch["prompt_mask"].sum(0) > 0).nonzero()[0])
    end = int((batch["completion_mask"].sum(0) > 0).nonzero()[-1]) + 1
    return {**batch, "prompt_ids": batch["prompt_ids"][:, first:], "prompt_mask": batch["prompt_mask"][:, first:],
            "completion_ids": batch["completion_ids"][:, :end], "completion_mask": batch["completion_mask"][:, :end],
            "ref_logps": batch["ref_logps"][:, :end]}


class GRPOObjective(nn.Module):
    """
    GRPO as a module the course's `Trainer` can train on `Rollouts`: `forward(**batch)` returns
    `grpo_loss` with the sampling policy's log-probabilities equal to the current ones (one
    update per sampled batch, so the ratio is 1 and the clip never acts; several updates per
    batch would need the old log-probabilities stored with the batch).
    """

    def __init__(self, model: nn.Module, beta: float = 0.04, epsilon: float = 0.2) -> None:
        super().__init__()
        self.model, self.beta, self.epsilon = model, float(beta), float(epsilon)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, advantages: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
        logps = per_token_logps(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        return grpo_loss(logps, logps.detach(), ref_logps, advantages, completion_mask, self.epsilon, self.beta)
