"""Tests for `llm_tutorial.alignment`: the DPO and GRPO losses written out, checked equal to
`trl`'s on the same batches (tiny random Llamas from `chat_models.py`; no pretrained asset)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from chat_models import SFT_WORDS, tiny_llama, word_chat_tokenizer

from llm_tutorial import alignment as al

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


BAD_CALLS = [
    (lambda tok: al.preference_batch(tok, [{"instruction": "a", "chosen": "b", "rejected": " b"}]), ValueError,
     r"two different, non-empty answers \(pairs \[0\]"),
    (lambda tok: al.preference_batch(tok, [{"instruction": "a", "chosen": "b", "rejected": ""}]), ValueError,
     "non-empty answers"),
    (lambda tok: al.group_advantages([1.0, 0.0, 1.0], group_size=2), ValueError, "groups of group_size"),
    (lambda tok: al.group_advantages([1.0, 0.0], group_size=1), ValueError, "at least two answers per prompt"),
    (lambda tok: al.group_advantages([1.0, float("nan")], group_size=2), ValueError, "return a number"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_mistakes_raise_a_message_that_names_the_fix(tok, call, error, match):
    with pytest.raises(error, match=match):
        call(tok)
