"""Exercises for notebook 04 · Fine-tuning for classification.

* `04.mean-pool`: mean pooling that ignores padding.
* `04.warmup-lr`: the learning rate of linear warm-up followed by linear decay.
* `04.precision-recall`: precision and recall of one class, from a confusion matrix.
* `04.fewer-articles`: predict, then measure: the overfitting study with half the articles.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from llm_tutorial.exercises import direction_check, exercise
from llm_tutorial.trainer import lr_lambda


def _pool_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return hidden, mask


def _check_mean_pool(my_mean_pool) -> str | None:
    if not callable(my_mean_pool):
        return "pass the function itself, `my_mean_pool`, not a value"
    hidden, mask = _pool_inputs()
    got = my_mean_pool(hidden, mask)
    if got is None:
        return "your function returned None: return a (batch, dim) tensor"
    if not isinstance(got, torch.Tensor) or got.shape != (3, 4):
        return f"return a tensor of shape (batch, dim) = (3, 4), got {getattr(got, 'shape', got)}"
    expected = torch.stack([hidden[i, : int(mask[i].sum())].mean(0) for i in range(3)])
    if torch.allclose(got.float(), expected, atol=1e-5):
        return None
    if torch.allclose(got.float(), hidden.mean(1), atol=1e-5):
        return "you averaged padding too: multiply by the mask, then divide by the mask's sum"
    if torch.allclose(got.float(), (hidden * mask.unsqueeze(-1)).mean(1), atol=1e-5):
        return "divide by the number of real tokens (mask.sum(1)), not by the sequence length"
    return "weight each position by mask.unsqueeze(-1), sum over dim 1, divide by mask.sum(1, keepdim=True)"


@exercise("04.mean-pool", "Write my_mean_pool(hidden, mask): the mean of hidden[b, t] over the "
          "positions t where mask[b, t] == 1.", _check_mean_pool,
          wrong_answer=lambda hidden, mask: hidden.mean(1))
def mean_pool_solution(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def _check_warmup_lr(my_lr) -> str | None:
    if not callable(my_lr):
        return "pass the function itself, `my_lr`, not a value"
    peak, max_steps, warmup = 1e-4, 100, 10
    for step in (0, 5, 10, 55, 99, 100):
        expected = peak * lr_lambda(step, max_steps=max_steps, warmup_steps=warmup, schedule="linear")
        got = my_lr(step, peak=peak, max_steps=max_steps, warmup_steps=warmup)
        if not isinstance(got, numbers.Real):
            return f"return a number; my_lr({step}, ...) returned {type(got).__name__}"
        if not np.isclose(float(got), expected, rtol=1e-6, atol=1e-12):
            where = "during warm-up" if step < warmup else "during the decay"
            return (f"at step {step} ({where}) expected {expected:.3g}, got {float(got):.3g}: "
                    "rise as peak * (step + 1) / (warmup_steps + 1), then fall linearly to 0 "
                    "at max_steps")
    return None


@exercise("04.warmup-lr", "Write my_lr(step, peak, max_steps, warmup_steps) as the course trainer does "
          "it: during warm-up peak * (step + 1) / (warmup_steps + 1) (step 0 already learns), "
          "then a linear decay from peak at step warmup_steps to 0 at max_steps.", _check_warmup_lr,
          wrong_answer=lambda step, peak, max_steps, warmup_steps: peak)
def warmup_lr_solution(step: int, peak: float, max_steps: int, warmup_steps: int) -> float:
    if step < warmup_steps:
        return peak * (step + 1) / (warmup_steps + 1)
    return peak * max(0.0, (max_steps - step) / (max_steps - warmup_steps))


CONFUSION = np.array([[50, 2, 3], [4, 40, 6], [1, 0, 44]])  # rows: true class, columns: predicted


def _check_precision_recall(answer) -> str | None:
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return "answer with a pair (precision, recall) for class 1"
    if not all(isinstance(x, numbers.Real) for x in answer):
        return "both values must be numbers"
    precision, recall = (float(x) for x in answer)
    true_precision = CONFUSION[1, 1] / CONFUSION[:, 1].sum()
    true_recall = CONFUSION[1, 1] / CONFUSION[1].sum()
    if np.isclose(precision, true_recall) and np.isclose(recall, true_precision):
        return "swapped: precision divides by the column (all predicted 1), recall by the row"
    if not np.isclose(precision, true_precision, atol=1e-4):
        return "precision = correct 1s / everything *predicted* as 1 (the column of class 1)"
    if not np.isclose(recall, true_recall, atol=1e-4):
        return "recall = correct 1s / every *true* 1 (the row of class 1)"
    return None


@exercise("04.precision-recall", "From the confusion matrix CONFUSION (rows = true class, columns = "
          "predicted), give (precision, recall) of class 1.", _check_precision_recall,
          wrong_answer=(40 / 50, 40 / 42), answer_is_value=True)
def precision_recall_solution():
    confusion = CONFUSION
    precision = confusion[1, 1] / confusion[:, 1].sum()  # 40 / 42
    recall = confusion[1, 1] / confusion[1].sum()  # 40 / 50
    return float(precision), float(recall)


def _check_fewer_articles(answer) -> str | None:
    return direction_check(answer, "higher", (
        "with half the articles the model still drives its training loss to zero, but from "
        "less evidence: it becomes confidently wrong on more validation articles. Run the cell "
        "and compare the validation accuracy too"))


@exercise("04.fewer-articles", "Predict, then measure: the unregularised model of section 5, "
          "trained on 4 articles per class instead of 8 (same steps, same validation articles). "
          'Will its final validation loss be "higher", "lower" or "same" (a difference under 0.05 nats)?',
          _check_fewer_articles, wrong_answer="same", answer_is_value=True)
def fewer_articles_solution() -> str:
    # Training loss still reaches about zero (the model memorises 20 articles as easily as 40),
    # so the weights are pushed to extreme confidence on less evidence. Validation *accuracy*
    # may hardly move; the validation *loss*, which punishes confident mistakes, rises.
    return "higher"
