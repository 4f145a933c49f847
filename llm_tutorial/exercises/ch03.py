"""Exercises for notebook 03 · Pretraining objectives.

* ``03.mlm-loss``: write the masked-LM loss from log-softmax and gather.
* ``03.clm-shift``: build the (inputs, targets) pair of causal language modelling.
* ``03.expected-masks``: how many tokens does BERT's rule turn into ``[MASK]``?
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from llm_tutorial.exercises import exercise


def _fixed_logits_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 6, 11, generator=generator)
    labels = torch.full((2, 6), -100, dtype=torch.long)
    labels[0, 1], labels[0, 4], labels[1, 0], labels[1, 5] = 3, 9, 0, 7
    return logits, labels


def _check_mlm_loss(my_mlm_loss) -> str | None:
    if not callable(my_mlm_loss):
        return "pass the function itself, `my_mlm_loss`, not a value"
    logits, labels = _fixed_logits_and_labels()
    got = my_mlm_loss(logits, labels)
    if got is None:
        return "your function returned None: return the mean negative log-probability"
    if not isinstance(got, torch.Tensor) or got.numel() != 1:
        return "return a scalar tensor (one number), e.g. `-true_log_probs.mean()`"
    expected = F.cross_entropy(logits.view(-1, 11), labels.view(-1))
    if torch.allclose(got.float(), expected, atol=1e-5):
        return None
    everywhere = F.cross_entropy(logits.view(-1, 11), labels.clamp(min=0).view(-1))
    if torch.allclose(got.float(), everywhere, atol=1e-5):
        return "you scored every position: keep only positions where labels != -100"
    if torch.allclose(got.float(), -expected, atol=1e-5):
        return "the sign is flipped: the loss is the *negative* log-probability"
    return f"expected {float(expected):.4f}, got {float(got):.4f}: log_softmax over the last dim, then gather"


@exercise("03.mlm-loss", "Write mlm_loss(logits, labels): the mean negative log-probability of the "
          "true token at positions whose label is not -100.", _check_mlm_loss,
          wrong_answer=lambda logits, labels: F.cross_entropy(
              logits.view(-1, logits.shape[-1]), labels.clamp(min=0).view(-1)))
def mlm_loss_solution(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    selected = labels != -100
    log_probs = torch.log_softmax(logits[selected], dim=-1)
    return -log_probs.gather(1, labels[selected].unsqueeze(1)).mean()


def _check_shift(my_shift) -> str | None:
    if not callable(my_shift):
        return "pass the function itself, `my_shift`"
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    got = my_shift(ids)
    if got is None:
        return "your function returned None: return (inputs, targets)"
    if not (isinstance(got, tuple) and len(got) == 2):
        return "return a tuple (inputs, targets)"
    inputs, targets = got
    if torch.equal(inputs, ids[:, :-1]) and torch.equal(targets, ids[:, 1:]):
        return None
    if torch.equal(inputs, ids[:, 1:]) and torch.equal(targets, ids[:, :-1]):
        return "inputs and targets are swapped: position t predicts token t+1"
    return "inputs drop the last token, targets drop the first: ids[:, :-1], ids[:, 1:]"


@exercise("03.clm-shift", "Write my_shift(input_ids) returning (inputs, targets) for next-token "
          "prediction.", _check_shift, wrong_answer=lambda ids: (ids, ids))
def shift_solution(input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return input_ids[:, :-1], input_ids[:, 1:]


def _check_expected_masks(answer) -> str | None:
    if not isinstance(answer, numbers.Real) or isinstance(answer, bool):
        return "answer with a number"
    expected = 10_000 * 0.15 * 0.8
    if math.isclose(answer, expected, rel_tol=1e-9):
        return None
    if math.isclose(answer, 10_000 * 0.15, rel_tol=1e-9):
        return "that is how many are *selected*; only 80% of those become [MASK]"
    if math.isclose(answer, 12_000 * 0.15 * 0.8, rel_tol=1e-9):
        return "[CLS], [SEP] and padding are never selected: use the 10,000 ordinary tokens"
    return "selected = 15% of ordinary tokens; 80% of the selected become [MASK]"


@exercise("03.expected-masks", "A batch has 12,000 positions: 10,000 ordinary tokens and 2,000 "
          "[CLS]/[SEP]/[PAD]. With p = 0.15, how many positions become [MASK] on average?",
          _check_expected_masks, wrong_answer=1500, answer_is_value=True)
def expected_masks_solution() -> float:
    ordinary_tokens, p_select, p_mask = 10_000, 0.15, 0.8
    return ordinary_tokens * p_select * p_mask
