"""Tests for `llm_tutorial.alignment`: the DPO and GRPO losses written out, checked equal to
`trl`'s on the same batches (tiny random Llamas from `chat_models.py`; no pretrained asset)."""

from __future__ import annotations

import copy
import hashlib
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from chat_models import SFT_WORDS, tiny_llama, word_chat_tokenizer

from llm_tutorial import alignment as al
from llm_tutorial import chat
from llm_tutorial import peft_methods as pm
from llm_tutorial.trainer import TrainConfig, Trainer

PAIRS = [{"instruction": "say hi", "chosen": "hello", "rejected": "chien"},
         {"instruction": "name a colour", "input": "", "chosen": "red or blue", "rejected": "paris"},
         {"instruction": "translate cat into french", "input": "cat", "chosen": "chat", "rejected": "dog"}]


@pytest.fixture(scope="module")
def tok():
    return word_chat_tokenizer(SFT_WORDS)


# ------------------------------------------------------------------------------ DPO


def test_preference_batch_puts_chosen_first_and_masks_prompts(tok):
    batch = al.preference_batch(tok, PAIRS)
    assert batch["input_ids"].shape[0] == 6
    for i, pair in enumerate(PAIRS):
        for row, key in ((i, "chosen"), (i + 3, "rejected")):
            labelled = batch["labels"][row][batch["labels"][row] != -100]
            assert tok.decode(labelled).split("<|im_end|>")[0].strip() == pair[key].replace("or", "<unk>")


def test_dpo_loss_starts_at_log_two_and_falls_when_the_chosen_answer_gains():
    zero = torch.zeros(4)
    loss, chosen, rejected = al.dpo_loss(zero - 3, zero - 5, zero - 3, zero - 5)
    assert loss.item() == pytest.approx(math.log(2)) and al.preference_accuracy(chosen, rejected) == 0.5
    better, chosen, rejected = al.dpo_loss(zero - 2, zero - 6, zero - 3, zero - 5, beta=0.5)
    assert better.item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(1.0)).item()))
    assert al.preference_accuracy(chosen, rejected) == 1.0 and (chosen == 0.5).all()


def test_sequence_logps_sum_the_answer_tokens_only(tok):
    model = tiny_llama(tok).eval()
    batch = al.preference_batch(tok, PAIRS)
    with torch.no_grad():
        logps = al.sequence_logps(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    row, targets = 1, batch["labels"][1, 1:]
    by_hand = sum(logits[row, t].log_softmax(-1)[targets[t]].item()
                  for t in range(len(targets)) if targets[t] != -100)
    assert logps[row].item() == pytest.approx(by_hand, abs=1e-4) and (logps < 0).all()


def test_dpo_loss_equals_trls(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    policy, reference = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    rows = [{"prompt": [{"role": "user", "content": p["instruction"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in PAIRS[:2]]
    trainer = trl.DPOTrainer(model=policy, ref_model=copy.deepcopy(reference),
                             args=trl.DPOConfig(output_dir=str(tmp_path), beta=0.2, report_to=[], use_cpu=True, bf16=False,
                                                per_device_train_batch_size=2),
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, batch)
        ours_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                      "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)}
        chosen, rejected = al.sequence_logps(policy, ours_batch).chunk(2)
        ref_chosen, ref_rejected = al.sequence_logps(reference, ours_batch).chunk(2)
        ours, _, _ = al.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.2)
    assert abs(ours.item() - math.log(2)) > 1e-3  # policy and reference differ
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


# ------------------------------------------------------------------------------ GRPO


def test_group_advantages_are_standardised_within_each_group():
    adv = al.group_advantages([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], group_size=4)
    first, second = adv[:4], adv[4:]
    assert first.sum().abs() < 1e-6 and first[0] > 0 > first[1]
    assert torch.equal(second, torch.zeros(4))  # all answers equal: no signal
    assert first.std().item() == pytest.approx(1.0, rel=1e-3)


def test_grpo_loss_equals_trls(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    path = tmp_path / "tiny"
    tiny_llama(tok).save_pretrained(path)  # trl builds its reference model from a path
    tok.save_pretrained(path)
    prompts = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "say hi"}]}] * 4)
    args = trl.GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=4, beta=0.1, epsilon=0.2, loss_type="grpo", report_to=[], bf16=False,
                          use_cpu=True, use_bias_correction_kl=False)  # the paper's KL estimator (trl 1.16 weights it by the ratio)
    trainer = trl.GRPOTrainer(model=str(path), reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                              args=args, train_dataset=prompts, processing_class=tok)
    model = trainer.model.eval()
    g = torch.Generator().manual_seed(0)
    inputs = {"prompt_ids": torch.randint(4, len(tok), (4, 5), generator=g),
              "prompt_mask": torch.ones(4, 5, dtype=torch.long),
              "completion_ids": torch.randint(4, len(tok), (4, 6), generator=g),
              "completion_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 2 + [0] * 4]),
              "advantages": al.group_advantages([1.0, 0.0, 0.3, 0.9], group_size=2),
              "old_per_token_logps": -3 * torch.rand(4, 6, generator=g),
              "ref_per_token_logps": -3 * torch.rand(4, 6, generator=g)}
    with torch.no_grad():
        theirs = trainer._compute_loss(model, inputs)
        logps = al.per_token_logps(model, inputs["prompt_ids"], inputs["prompt_mask"],
                                   inputs["completion_ids"], inputs["completion_mask"])
        ours = al.grpo_loss(logps, inputs["old_per_token_logps"], inputs["ref_per_token_logps"],
                            inputs["advantages"], inputs["completion_mask"], epsilon=0.2, beta=0.1)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_on_the_sampling_step_the_ratio_is_one_and_the_gradient_follows_the_advantage():
    logps = torch.tensor([[-1.0, -2.0], [-1.5, -0.5]], requires_grad=True)
    advantages, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 2)
    al.grpo_loss(logps, logps.detach(), None, advantages, mask, beta=0.0).backward()
    # d(loss)/d(logp) = -A / (tokens * answers): raise the good answer's tokens, lower the bad one's
    assert torch.allclose(logps.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))


def lora_llama(tok, seed: int = 0):
    model = tiny_llama(tok, seed=seed)
    pm.freeze(model)
    torch.manual_seed(seed)
    pm.inject_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    return model


def nudge_lora(model, seed: int = 1, scale: float = 0.5) -> None:
    """Give every LoRA a non-zero B, so the policy differs from its reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in pm.lora_modules(model).values():
            m.lora_B.copy_(scale * torch.randn(m.lora_B.shape, generator=g))


def test_reference_policy_switches_the_lora_off_and_back_on(tok):
    model = lora_llama(tok)
    nudge_lora(model)
    ids = torch.tensor([[5, 6, 7, 8]])
    scalings = [m.scaling for m in pm.lora_modules(model).values()]
    with torch.no_grad():
        policy = model(ids).logits
        with al.reference_policy(model):
            reference = model(ids).logits
        again = model(ids).logits
    assert [m.scaling for m in pm.lora_modules(model).values()] == scalings
    assert torch.equal(policy, again) and not torch.allclose(policy, reference)
    pm.remove_lora(model)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference, atol=1e-6)  # the reference is the base model


def test_dpo_objective_uses_the_lora_free_model_as_reference(tok):
    model = lora_llama(tok)
    nudge_lora(model)
    batch = al.preference_batch(tok, PAIRS)
    base = copy.deepcopy(model)
    pm.remove_lora(base)
    objective = al.DPOObjective(model, beta=0.3)
    loss = objective(**batch)
    with torch.no_grad():
        ref_chosen, ref_rejected = al.sequence_logps(base, batch).chunk(2)
        chosen, rejected = al.sequence_logps(model, batch).chunk(2)
    expected, c, r = al.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6) and loss.requires_grad
    assert torch.allclose(objective.last["chosen"], c) and torch.allclose(objective.last["rejected"], r)
    metrics = al.preference_metrics(al.pair_logps(model, tok, PAIRS, batch_size=2),
                                    al.pair_logps(base, tok, PAIRS, batch_size=2), beta=0.3)
    assert metrics["dpo_loss"] == pytest.approx(expected.item(), abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(float((c - r).mean()), abs=1e-5)


def test_dpo_through_the_course_trainer_learns_the_preferences(tok):
    model = lora_llama(tok)
    batch = al.preference_batch(tok, PAIRS)
    with al.reference_policy(model):
        ref = al.pair_logps(model, tok, PAIRS)
    before = al.preference_metrics(al.pair_logps(model, tok, PAIRS), ref, beta=0.1)
    assert before["preference_accuracy"] == 0.5 and before["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    Trainer(al.DPOObjective(model, beta=0.1), [batch],
            TrainConfig(max_steps=40, lr=5e-2, warmup_steps=0, progress=False)).train()
    after = al.preference_metrics(al.pair_logps(model, tok, PAIRS), ref, beta=0.1)
    assert after["preference_accuracy"] == 1.0 and after["reward_margin"] > 0.1
    assert after["dpo_loss"] < math.log(2) - 0.05


def test_answer_kl_is_zero_at_the_start_and_the_exact_kl_after(tok):
    records = [chat.Record(p["instruction"], p.get("input", ""), p["chosen"]) for p in PAIRS]
    model = lora_llama(tok)
    assert al.answer_kl(model, tok, records) == pytest.approx(0.0, abs=1e-7)
    nudge_lora(model)
    batch = chat.pad(chat.encode_sft(tok, records), tok.pad_token_id)
    with torch.no_grad():
        p = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
        with al.reference_policy(model):
            q = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    keep = batch["labels"][:, 1:] != -100
    kl = (p[:, :-1].exp() * (p[:, :-1] - q[:, :-1])).sum(-1)[keep].mean()
    assert kl > 0 and al.answer_kl(model, tok, records, batch_size=2) == pytest.approx(kl.item(), rel=1e-4)


def test_the_loose_reward_accepts_what_the_strict_one_rejects():
    from llm_tutorial import instructions as ins

    record = ins.take(1, ["larger_number"], seed=0)[0]
    small, large = sorted(int(x) for x in re.findall(r"\d+", record.instruction + " " + record.input))
    assert str(large) == record.output
    for answer, strict, loose in ((f"{large}", 1.0, 1.0), (f"{small} or {large}", 0.0, 1.0), (f"{small}", 0.0, 0.0),
                                  (f"{large}0", 0.0, 0.0), (f"It is {large}.", 1.0, 1.0)):
        assert (al.strict_reward(answer, record), al.contains_reward(answer, record)) == (strict, loose), answer


def hello_reward(answer: str, record) -> float:
    return float("hello" in answer.split())


GREETINGS = set(SFT_WORDS[:20])


def greeting_reward(answer: str, record) -> float:
    """1 when the answer's first word is one of the tokenizer's first 20 words: about a third
    of random answers at the start, so most groups carry a signal."""
    words = answer.split()
    return float(bool(words) and words[0] in GREETINGS)


def test_rollouts_sample_groups_score_them_and_mask_after_the_end(tok):
    model = lora_llama(tok)
    records = [chat.Record("say hi", "", "hello"), chat.Record("name a colour", "", "red")]
    rollouts = al.Rollouts(model, tok, records, hello_reward, group_size=3, prompts_per_batch=2, max_new_tokens=5)
    batch = next(iter(rollouts))
    assert batch["prompt_ids"].shape[0] == batch["completion_ids"].shape[0] == 6
    assert (batch["prompt_ids"][:, -1] != tok.pad_token_id).all()  # prompts are left-padded
    mask, ids = batch["completion_mask"], batch["completion_ids"]
    for row in range(6):  # the mask covers the tokens up to and including the first end-of-turn
        ends = (ids[row] == tok.eos_token_id).nonzero()
        n = int(ends[0]) + 1 if len(ends) else ids.shape[1]
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
    samples = rollouts.samples
    assert list(samples["reward"]) == [hello_reward(a, None) for a in samples["answer"]]
    assert torch.allclose(torch.tensor(samples["advantage"].tolist()), batch["advantages"])
    assert rollouts.log[0]["mean_reward"] == pytest.approx(samples["reward"].mean())
    again = al.Rollouts(model, tok, records, hello_reward, group_size=3, prompts_per_batch=2, max_new_tokens=5)
    assert torch.equal(next(iter(again))["completion_ids"], ids)  # seeded


def grouped_batch(tok):
    """Two prompts of different lengths, left-padded, three answers each (consecutive rows), with
    right-padded answers of different lengths: the layout `Rollouts` samples."""
    prompts = [tok("<|im_start|>user\nsay hi", add_special_tokens=False)["input_ids"],
               tok("<|im_start|>user\nname a colour red or blue", add_special_tokens=False)["input_ids"]]
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts for _ in range(3)])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts for _ in range(3)])
    g = torch.Generator().manual_seed(0)
    completion_ids = torch.randint(4, len(tok), (6, 5), generator=g)
    completion_mask = torch.tensor([[1] * n + [0] * (5 - n) for n in (5, 2, 4, 1, 5, 3)])
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def test_per_token_logps_run_each_groups_prompt_once_and_equal_one_row_at_a_time(tok):
    model = lora_llama(tok)
    nudge_lora(model)
    prompt_ids, prompt_mask, completion_ids, completion_mask = grouped_batch(tok)
    seen = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        grouped = al.per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    finally:
        hook.remove()
    assert seen == [(2, prompt_ids.shape[1]), (6, 5)]  # each prompt once, then the six answers
    real = completion_mask.bool()
    for row in range(6):  # one row at a time, its prompt without padding
        alone = al.per_token_logps(model, prompt_ids[row:row + 1, prompt_mask[row].bool()], prompt_mask[row:row + 1, prompt_mask[row].bool()],
                                   completion_ids[row:row + 1], completion_mask[row:row + 1])
        assert torch.allclose(grouped[row][real[row]], alone[0][real[row]], atol=1e-5)
    # the gradient through the shared prompt equals the one through six whole sequences (rows
    # interleaved, so that no block of rows shares a prompt and each row runs whole)
    params = [p for p in model.parameters() if p.requires_grad]
    order = [0, 3, 1, 4, 2, 5]
    whole = al.per_token_logps(model, prompt_ids[order], prompt_mask[order], completion_ids[order], completion_mask[order])
    shared_grads = torch.autograd.grad((grouped * completion_mask).sum(), params)
    whole_grads = torch.autograd.grad((whole * completion_mask[order]).sum(), params)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(shared_grads, whole_grads, strict=True))
    assert sum(float(g.abs().sum()) for g in shared_grads) > 0


def test_rollouts_micro_batches_yield_whole_groups_from_one_sampled_batch(tok):
    model = lora_llama(tok)
    nudge_lora(model, scale=0.1)
    records = [chat.Record("say hi", "", "hello"), chat.Record("name a colour red or blue", "", "red")] * 2
    rollouts = al.Rollouts(model, tok, records, hello_reward, group_size=3, prompts_per_batch=4, max_new_tokens=5,
                           micro_batches=4)
    pieces = list(rollouts)
    assert len(pieces) == 4 and len(rollouts.log) == 1  # one sampled batch, one log row, four pieces
    assert torch.equal(torch.cat([p["advantages"] for p in pieces]), torch.tensor(rollouts.samples["advantage"].tolist()))
    for piece in pieces:
        assert len(piece["advantages"]) == 3 and (piece["prompt_ids"] == piece["prompt_ids"][:1]).all()
        assert piece["prompt_mask"][:, 0].any() and piece["completion_mask"][:, -1].any()  # no column all padding
        with torch.no_grad(), al.reference_policy(model):
            ref = al.per_token_logps(model, piece["prompt_ids"], piece["prompt_mask"], piece["completion_ids"],
                                     piece["completion_mask"])
        real = piece["completion_mask"].bool()
        assert torch.allclose(piece["ref_logps"][real], ref[real], atol=1e-5)  # sliced with its rows
    together = al.Rollouts(model, tok, records, hello_reward, group_size=3, prompts_per_batch=4, max_new_tokens=5)
    assert torch.equal(next(iter(together))["advantages"], torch.cat([p["advantages"] for p in pieces]))


@pytest.mark.parametrize("seed", [0, 1])
def test_rollouts_share_each_prompt_and_sample_what_generate_samples_from_copies(tok, seed):
    """The prefix cache changes nothing but the cost: the same answers as `generate` on the
    prompts repeated `group_size` times (left-padded), with the same random seed."""
    model = lora_llama(tok)
    nudge_lora(model, scale=0.1)
    records = [chat.Record("say hi", "", "hello"), chat.Record("name a colour red or blue", "", "red")]
    rollouts = al.Rollouts(model, tok, records, hello_reward, group_size=3, prompts_per_batch=2, max_new_tokens=5,
                           seed=seed)
    batch = next(iter(rollouts))
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok([chat.render_chat(tok, r, with_answer=False) for r in records for _ in range(3)], return_tensors="pt",
                  padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    assert torch.equal(batch["prompt_ids"], enc["input_ids"]) and torch.equal(batch["prompt_mask"], enc["attention_mask"])
    torch.manual_seed(seed * 1_000_003)  # the seed Rollouts uses for its first batch
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=True, top_k=0, top_p=1.0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert torch.equal(batch["completion_ids"], out[:, enc["input_ids"].shape[1]:])


def test_the_prompt_cache_continues_left_padded_prompts_as_the_whole_prompts_would(tok):
    model = lora_llama(tok)
    nudge_lora(model)
    prompt_ids, prompt_mask, _, _ = grouped_batch(tok)
    ids, mask = prompt_ids[::3], prompt_mask[::3]  # two prompts, the first left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers them
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        cache = al._prompt_cache(model, ids[:, :-1], mask[:, :-1], group=3)
        rows = torch.arange(2).repeat_interleave(3)
        last = model(input_ids=ids[rows, -1:], attention_mask=mask[rows], position_ids=positions[rows, -1:],
                     **{chat.kv_cache_argument(model): cache}).logits[:, -1]
    assert torch.allclose(last, whole[rows], atol=1e-5)


def test_grpo_through_the_course_trainer_raises_the_reward(tok):
    # the random model's output layer is tiny (std 0.02), so q/v LoRA barely moves its outputs: adapt it too
    model = tiny_llama(tok, seed=3)
    pm.freeze(model)
    torch.manual_seed(3)
    pm.inject_lora(model, ["v_proj", "lm_head"], r=4, alpha=8)
    records = [chat.Record("say hi", "", "hello")] * 4
    rollouts = al.Rollouts(model, tok, records, greeting_reward, group_size=8, prompts_per_batch=4, max_new_tokens=2)
    Trainer(al.GRPOObjective(model, beta=0.0), rollouts,
            TrainConfig(max_steps=25, lr=3e-2, warmup_steps=0, schedule="constant", progress=False)).train()
    rewards = [row["mean_reward"] for row in rollouts.log]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.3, rewards


BAD_CALLS = [
    (lambda tok: al.preference_batch(tok, [{"instruction": "a", "chosen": "b", "rejected": " b"}]), ValueError,
     r"two different, non-empty answers \(pairs \[0\]"),
    (lambda tok: al.preference_batch(tok, [{"instruction": "a", "chosen": "b", "rejected": ""}]), ValueError,
     "non-empty answers"),
    (lambda tok: al.group_advantages([1.0, 0.0, 1.0], group_size=2), ValueError, "groups of group_size"),
    (lambda tok: al.group_advantages([1.0, 0.0], group_size=1), ValueError, "at least two answers per prompt"),
    (lambda tok: al.group_advantages([1.0, float("nan")], group_size=2), ValueError, "return a number"),
    (lambda tok: al.Rollouts(tiny_llama(tok), tok, [chat.Record("say hi", "", "hello")], hello_reward, group_size=1),
     ValueError, "group_size must be >= 2"),
    (lambda tok: al.Rollouts(tiny_llama(tok), tok, [chat.Record("say hi", "", "hello")], hello_reward,
                             prompts_per_batch=4, micro_batches=3), ValueError, "must divide prompts_per_batch"),
    (lambda tok: next(iter(al.Rollouts(lora_llama(tok), tok, [chat.Record("say hi", "", "hello")],
                                       lambda answer, record: "yes", group_size=2))), TypeError, "finite number"),
    (lambda tok: al.DPOObjective(tiny_llama(tok))(**al.preference_batch(tok, PAIRS)), ValueError,
     "no LoRA layers.*inject_lora"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_mistakes_raise_a_message_that_names_the_fix(tok, call, error, match):
    with pytest.raises(error, match=match):
        call(tok)


# ------------------------------------------------------------------------------ the shipped record


RECORD_SHA256 = {
    "results/alignment.csv": "8533f6ce94b1815b5837fe825e104d47b2c186cc655887b8a4d18a4af696e574",
    "results/alignment_answers.csv": "fcb3af772126c4658cee5576a15df2895b7e459abb0884789c0774e1a00cc10c",
    "checkpoints/smollm2-grpo-lora.safetensors": "f559de88b408d91c195d03ed9c957078d13abbc4019b2cde7ed8a22ffb65721f",
}


def test_the_shipped_full_profile_record_is_complete_and_its_checks_hold():
    """What notebook 08's smoke run shows beside its own: the full profile's curves, the loose
    run's answers and the GRPO adapter, each with provenance; the full checks hold in it."""
    from safetensors import safe_open

    from llm_tutorial import assets

    for name, digest in RECORD_SHA256.items():  # the files llm_tutorial/data/README.md describes
        assert hashlib.sha256(Path(assets.DATA_DIR, name).read_bytes()).hexdigest() == digest, name
    rows, provenance = assets.read_recorded_results("alignment")
    assert "PROFILE full" in provenance["command"] and provenance["date"].startswith("2026-")
    assert set(rows["experiment"]) == {"dpo", "beta_sweep", "grpo", "grpo_loose", "sft"}

    def curve(experiment: str, metric: str):
        part = rows[(rows["experiment"] == experiment) & (rows["metric"] == metric)]
        return part.sort_values("step")["value"].tolist()

    assert curve("dpo", "preference_accuracy")[0] == 0.5 and curve("dpo", "preference_accuracy")[-1] >= 0.85
    em = curve("grpo", "exact_match")
    assert em[-1] >= em[0] + 0.20  # the notebook's full check
    assert curve("beta_sweep", "beta") == [0.05, 0.1, 0.5]
    answers, answers_provenance = assets.read_recorded_results("alignment_answers")
    assert answers_provenance == provenance and list(answers.columns) == ["prompt", "answer"] and len(answers) == 200
    path = assets.recorded_checkpoint("smollm2-grpo-lora")
    assert path.stat().st_size < 1_000_000
    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) == 120  # 30 layers x (q, v) x (A, B)
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
        assert '"r": 8' in f.metadata()["config"]


def test_usable_pairs_drop_what_dpo_cannot_learn_from(tok):
    long_answer = " ".join(["hello"] * 40)
    pairs = PAIRS + [{"instruction": "say hi", "chosen": "hello", "rejected": " hello "},   # the same answer twice
                     {"instruction": "say hi", "chosen": "", "rejected": "hello"},          # an empty answer
                     {"instruction": "say hi", "chosen": long_answer, "rejected": "chien"}]  # too long for 24 tokens
    assert al.usable_pairs(tok, pairs, max_length=24) == PAIRS
    al.preference_batch(tok, al.usable_pairs(tok, pairs, max_length=24), max_length=24)  # every kept pair encodes


def test_usable_pairs_keep_exactly_the_pairs_that_encode_whole():
    """At every `max_length`, a kept pair encodes without a cut and a dropped pair is one that would
    not fit: the boundary is exact. The tokenizer makes "\\n" a token, so a turn ends with two
    tokens after the answer, `<|im_end|>` and a newline, as SmolLM2's does (a check that counts the
    answer's text alone keeps pairs one token too long)."""
    tok = word_chat_tokenizer(SFT_WORDS)
    tok.add_tokens(["\n"], special_tokens=True)
    assert chat.encode_sft(tok, [chat.Record("say hi", "", "hello")])[0].input_ids[-2:] == tuple(
        tok.convert_tokens_to_ids(["<|im_end|>", "\n"]))
    pairs = PAIRS + [{"instruction": "say hi", "input": "cat chat", "chosen": " ".join(["hello"] * 6), "rejected": "chien"}]
    for max_length in range(8, 40):
        kept = al.usable_pairs(tok, pairs, max_length=max_length)
        for pair in pairs:
            records = [chat.Record(pair["instruction"], pair.get("input", ""), pair[k]) for k in ("chosen", "rejected")]
            longest = max(len(e) for e in chat.encode_sft(tok, records, max_length=10**9))
            assert (pair in kept) == (longest <= max_length), (max_length, pair, longest)
        if kept:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # encode_sft warns when it cuts an input
                batch = al.preference_batch(tok, kept, max_length=max_length)
            assert batch["input_ids"].shape[1] <= max_length
