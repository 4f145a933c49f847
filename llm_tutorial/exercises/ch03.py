"""Exercises for notebook 03 · Pretraining objectives.

* `03.unigram-loss`: write the baseline every language model must beat.
* `03.clm-shift`: build the (inputs, targets) pair of causal language modelling.
* `03.expected-masks`: how many tokens does BERT's rule turn into `[MASK]`?
* `03.more-masked`: predict, then measure: does a BERT's loss rise or fall when more is masked?
"""

from __future__ import annotations

import math
import numbers

import torch

from llm_tutorial.exercises import direction_check, exercise


def _unigram_data() -> tuple[torch.Tensor, torch.Tensor]:
    train = torch.tensor([[1, 2, 2, 3, 3, 3], [3, 3, 4, 4, -100, -100]])
    targets = torch.tensor([[3, 4, 2, -100], [5, 3, 1, -100]])  # token 5 never occurs in train
    return train, targets


def _unigram_reference(train, targets, vocab_size, smoothing=1.0) -> float:
    train, targets = train[train != -100], targets[targets != -100]
    counts = torch.bincount(train, minlength=vocab_size).double() + smoothing
    return float(-(counts / counts.sum()).log()[targets].mean())


def _check_unigram_loss(my_unigram_loss) -> str | None:
    if not callable(my_unigram_loss):
        return "pass the function itself, `my_unigram_loss`, not a value"
    train, targets = _unigram_data()
    got = my_unigram_loss(train, targets, 6)
    if got is None:
        return "your function returned None: return the mean negative log-probability (a number)"
    got = float(got)
    expected = _unigram_reference(train, targets, 6)
    if math.isclose(got, expected, rel_tol=1e-6):
        return None
    if math.isinf(got) or math.isnan(got):
        return ("token 5 never occurs in the training ids, so its frequency is 0 and log 0 = -inf: "
                "add 1 to every count (add-one smoothing) before normalising")
    if math.isclose(got, -expected, rel_tol=1e-6):
        return "the sign is flipped: the loss is the *negative* mean log-probability"
    if math.isclose(got, expected / math.log(2), rel_tol=1e-6):
        return "that is in bits: use the natural logarithm (nats), as cross_entropy does"
    seen_in_targets = _unigram_reference(targets, targets, 6)
    if math.isclose(got, seen_in_targets, rel_tol=1e-6):
        return ("you counted the *targets*: the frequencies must come from the training ids, "
                "or the baseline peeks at the text it is scored on")
    return (f"expected {expected:.4f}, got {got:.4f}: count each id in train_ids (skip -100), add 1, "
            "divide by the total, and average -log p over the target ids (skip -100)")


@exercise("03.unigram-loss", "Write my_unigram_loss(train_ids, target_ids, vocab_size): the "
          "cross-entropy (nats) of target_ids under the add-one-smoothed frequencies of "
          "train_ids, skipping -100 in both.", _check_unigram_loss,
          wrong_answer=lambda train, targets, vocab_size: _unigram_reference(targets, targets, vocab_size))
def unigram_loss_solution(train_ids: torch.Tensor, target_ids: torch.Tensor, vocab_size: int) -> float:
    train, targets = train_ids[train_ids != -100], target_ids[target_ids != -100]
    counts = torch.bincount(train, minlength=vocab_size).double() + 1  # add-one: no token gets p = 0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[targets].mean())


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


def _check_more_masked(answer) -> str | None:
    return direction_check(answer, "higher", (
        "each masked character now has fewer visible neighbours (40% of its context is "
        "hidden, not 15%), so it is harder to guess: run the cell and look"))


@exercise("03.more-masked", "Predict, then measure: the tiny BERT was trained with 15% of the "
          "characters masked. Scored on held-out text with 40% masked, is its loss per masked "
          'character "higher", "lower" or "same" (within 0.05 nats)?', _check_more_masked,
          wrong_answer="lower", answer_is_value=True)
def more_masked_solution() -> str:
    # Masking more removes context: a masked character's neighbours are themselves hidden more
    # often, so the model falls back towards the unigram guess and its loss rises.
    return "higher"
