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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from llm_tutorial import chat

__all__ = [
    "preference_batch",
    "sequence_logps",
    "dpo_loss",
    "preference_accuracy",
    "group_advantages",
    "per_token_logps",
    "grpo_loss",
]


# ------------------------------------------------------------------------------ DPO


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
    """The log-probability of each completion token given the prompt and the completion before
    it, `(batch, completion length)` (prompts left-padded, completions right-padded)."""
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                 use_cache=False).last_hidden_state
    # the positions that predict the completion; the output layer runs on those only
    logits = model.get_output_embeddings()(hidden[:, prompt_ids.shape[1] - 1:-1]).float()
    return logits.log_softmax(-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


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
