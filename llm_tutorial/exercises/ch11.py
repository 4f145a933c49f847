"""Exercises for notebook 11 · Continual learning.

* `11.backward-transfer`: write backward transfer (BWT) from an accuracy matrix R.
* `11.ewc-penalty`: the EWC penalty of three weights, by hand.
* `11.reservoir-share`: predict, then run: the share of a reservoir buffer that the first,
  largest task still holds after two more tasks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from llm_tutorial import continual
from llm_tutorial.exercises import as_number as _as_number
from llm_tutorial.exercises import close as _close
from llm_tutorial.exercises import exercise

# ------------------------------------------------------------------------------ 11.backward-transfer

# R[i][j]: accuracy on task j after training on tasks 0..i (rows: after training, columns: tested on)
BWT_R = [[0.95, 0.10, 0.05],
         [0.40, 0.92, 0.08],
         [0.20, 0.55, 0.90]]


def _bwt_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    cases = [np.array(BWT_R, dtype=float), np.round(rng.uniform(0, 1, (4, 4)), 2)]
    cases.append(np.array([[0.50, 0.30, 0.20],  # the old tasks improved: BWT > 0
                           [0.60, 0.80, 0.35],
                           [0.70, 0.85, 0.90]]))
    cases.append(np.round(rng.uniform(0, 1, (5, 5)), 3))
    cases.append(np.array([[0.90, 0.20], [0.60, 0.85]]))  # two tasks: T - 1 = 1
    return cases


def _bwt_first_row(R) -> float:
    """A wrong answer: the first row (after task 0) instead of the diagonal."""
    R = np.asarray(R, dtype=float)
    return float(np.mean([R[-1, j] - R[0, j] for j in range(len(R) - 1)]))


def _check_bwt(bwt) -> str | None:
    if not callable(bwt):
        return "pass the function itself, `bwt`, not a value"
    for R in _bwt_cases():
        T = len(R)
        try:
            got = bwt(R.copy())
        except NotImplementedError:
            raise
        except Exception as error:
            return (f"bwt(R) raised {type(error).__name__}: {error} for a {T} x {T} matrix; R is a "
                    "NumPy array, R[i, j] the accuracy on task j after training on task i")
        if got is None:
            return "your function returned None: return BWT, one float"
        value = _as_number(got)
        if value is None:
            return f"bwt(R) returned {got!r}: return one number, the average over the earlier tasks"
        if not math.isfinite(value):
            return f"bwt(R) returned {value}: check for a division by zero (T - 1 is at least 1)"
        want = continual.backward_transfer(R)
        if _close(value, want, 1e-6):
            continue
        last, diag = R[-1], np.diag(R)
        if _close(value, float(np.mean(last - diag)), 1e-6):
            return ("average over the first T - 1 tasks only: the last task was just learned, "
                    "its term R[T-1, T-1] - R[T-1, T-1] is always 0, and counting it divides by T")
        if _close(value, -want, 1e-6):
            if want > 0:
                return ("BWT can be positive: here the final model is better on an old task than "
                        "right after learning it; do not force the sign (no abs)")
            return ("the sign is flipped: BWT = R[T-1, j] - R[j, j] is negative when the model "
                    "forgot (forgetting is -BWT)")
        if _close(value, _bwt_first_row(R), 1e-6):
            return ("compare with the accuracy right after learning each task, the diagonal "
                    "R[j, j], not with the first row R[0, j] (task j had not been trained then)")
        if _close(value, float(np.mean([R[j, -1] - R[j, j] for j in range(T - 1)])), 1e-6):
            return ("rows are 'after training task i', columns 'tested on task j': the final "
                    "model's accuracies are the last row R[T-1, j], not the last column")
        if _close(value, 100 * want, 1e-4) or _close(value, -100 * want, 1e-4):
            return "R holds fractions in [0, 1]: return BWT as a fraction, not in points (x 100)"
        if _close(value, (T - 1) * want, 1e-6):
            return "that is the sum of the differences: average them (divide by T - 1)"
        return (f"for the {T} x {T} matrix R = {np.round(R, 3).tolist()} expected {want:.4f}, got "
                f"{value:.4f}: BWT = 1/(T-1) x sum over j = 0..T-2 of (R[T-1, j] - R[j, j])")
    return None


@exercise("11.backward-transfer", "Write bwt(R): R is a T x T NumPy array of accuracies in "
          "[0, 1], R[i, j] the accuracy on task j after training on task i (rows: after training, "
          "columns: tested on). Return the backward transfer of Lopez-Paz & Ranzato (2017), a "
          "float: for each task but the last, the final model's accuracy on it minus its accuracy "
          "right after it was learned, averaged (negative when the model forgot). For example "
          f"BWT_R = {BWT_R}.", _check_bwt, wrong_answer=_bwt_first_row)
def bwt_solution(R) -> float:
    R = np.asarray(R, dtype=float)
    T = len(R)
    # the last row (after all T tasks) minus the diagonal (right after learning task j), over
    # the first T - 1 tasks: the last one has just been learned, there was no time to forget it
    total = 0.0
    for j in range(T - 1):
        total += R[T - 1, j] - R[j, j]
    return float(total / (T - 1))


# ------------------------------------------------------------------------------ 11.ewc-penalty

FISHER = [4.0, 0.0, 1.0]  # diagonal Fisher of the old task, one value per weight
THETA_STAR = [1.0, -2.0, 0.0]  # the weights right after the old task
THETA = [1.5, 3.0, -2.0]  # the weights now, during the new task
LAMBDA = 10.0


def _ewc_value(fisher=FISHER, half=True, lam=True, power=2) -> float:
    total = sum(f * abs(t - s) ** power for f, t, s in zip(fisher, THETA, THETA_STAR, strict=True))
    return (0.5 if half else 1.0) * (LAMBDA if lam else 1.0) * total


def _check_ewc_penalty(answer) -> str | None:
    value = _as_number(answer)
    if value is None or not math.isfinite(value):
        return "answer with a number, the penalty, e.g. my_penalty = 12.5"
    if _close(value, _ewc_value(), 0.01):
        return None
    if _close(value, _ewc_value(half=False), 0.01):
        return "the penalty is λ/2 times the weighted sum, not λ times it: you forgot the 1/2"
    if _close(value, _ewc_value(lam=False), 0.01):
        return f"multiply by the strength λ = {LAMBDA:g} too: Ω = λ/2 · Σ F_i (θ_i − θ*_i)²"
    if _close(value, _ewc_value(half=False, lam=False), 0.01):
        return "that is Σ F_i (θ_i − θ*_i)², the weighted sum: multiply it by λ/2"
    if any(_close(value, _ewc_value(half=h, lam=m, power=1), 0.01)
           for h in (True, False) for m in (True, False)):
        return "square each weight's move, (θ_i − θ*_i)², rather than taking its absolute value"
    if any(_close(value, _ewc_value([1.0 if f == 0 else f for f in FISHER], half=h), 0.01)
           for h in (True, False)):
        return ("the second weight has Fisher 0: the old task does not depend on it, so its big "
                "move (−2 → 3) costs nothing; its term is 0 × 25 = 0")
    return (f"expected Ω = λ/2 · Σ_i F_i (θ_i − θ*_i)² with F = {FISHER}, θ* = {THETA_STAR}, "
            f"θ = {THETA} and λ = {LAMBDA:g}: work out each weight's term, then add them up")


@exercise("11.ewc-penalty", "Elastic Weight Consolidation penalises moving each weight away from "
          "its value θ* after the old task in proportion to the old task's Fisher F: "
          "Ω(θ) = λ/2 · Σ_i F_i (θ_i − θ*_i)². With FISHER = "
          f"{FISHER}, THETA_STAR = {THETA_STAR}, THETA = {THETA} (the weights now) and "
          f"LAMBDA = {LAMBDA:g}, what is the penalty? (a number; ±0.01 is accepted)",
          _check_ewc_penalty, wrong_answer=_ewc_value(half=False), answer_is_value=True)
def ewc_penalty_solution() -> float:
    # Ω = λ/2 · Σ F_i (θ_i − θ*_i)² = 10/2 × (4 × 0.5² + 0 × 5² + 1 × (−2)²) = 5 × 5 = 25:
    # the second weight moved most, but the old task does not depend on it (F = 0)
    model = nn.Linear(3, 1, bias=False)  # three weights
    with torch.no_grad():
        model.weight.copy_(torch.tensor([THETA_STAR]))
    penalty = continual.EWCPenalty(LAMBDA)
    penalty.consolidate(model, {"weight": torch.tensor([FISHER])})  # remembers θ* and F
    with torch.no_grad():
        model.weight.copy_(torch.tensor([THETA]))  # the new task has moved the weights
    return penalty(model).item()


# ------------------------------------------------------------------------------ 11.reservoir-share

RESERVOIR_CAPACITY = 50
RESERVOIR_TASK_SIZES = [300, 100, 100]  # tasks 1, 2 and 3, offered in this order


def _check_reservoir_share(answer) -> str | None:
    value = _as_number(answer)
    if value is None or not math.isfinite(value):
        return "answer with a share between 0 and 1, e.g. task1_share = 0.25"
    capacity, sizes = RESERVOIR_CAPACITY, RESERVOIR_TASK_SIZES
    seen = sum(sizes)
    if _close(value, capacity * sizes[0] / seen, 0.5):
        return (f"{value:g} is a number of slots: give the share of the {capacity} slots, "
                "a fraction between 0 and 1")
    if 1 < value <= 100:
        return f"give a fraction between 0 and 1, not a percentage ({value:g}% is {value / 100:g})"
    if not 0 <= value <= 1:
        return f"{value:g} is not a share: give a number between 0 and 1 (0.25 means a quarter)"
    if _close(value, sizes[0] / seen, 0.02):
        return None
    if _close(value, 1 / len(sizes), 0.02):
        return ("the buffer does not give each task an equal share: it knows nothing of tasks, "
                "and every example offered so far is equally likely to be in it")
    if _close(value, 0.0, 0.02):
        return ("a reservoir is not a queue that the newest examples push the old ones out of: "
                f"the n-th example replaces a random slot only with probability {capacity}/n, "
                "so old examples stay as likely to be there as new ones")
    if _close(value, sizes[-1] / seen, 0.02):
        return (f"{sizes[-1]}/{seen} is what task 2 or task 3 should hold (each brought "
                f"{sizes[-1]} of the {seen} examples); the newest task does not push the old "
                "one out: how many examples did task 1 bring?")
    if _close(value, capacity / sizes[0], 0.02):
        return (f"{capacity}/{sizes[0]} is the chance that one task-1 example was kept at the end "
                "of task 1; tasks 2 and 3 came after, and the question asks for a share of the "
                "buffer, not a probability for one example")
    if _close(value, capacity / seen, 0.02):
        return (f"{capacity}/{seen} is the chance that any one example is in the buffer at the "
                f"end; task 1 has {sizes[0]} examples: how many slots do they fill, out of "
                f"{capacity}?")
    if _close(value, 1.0, 0.02):
        return (f"after the first {capacity} examples the buffer keeps replacing: the n-th "
                f"example takes a random slot with probability {capacity}/n")
    return ("every example offered so far is in the buffer with the same probability, "
            "capacity / seen, whichever task it came from: what share of the examples seen "
            "came from task 1?")


@exercise("11.reservoir-share", "Predict, then run: a ReservoirBuffer of capacity "
          f"{RESERVOIR_CAPACITY} is offered task 1's {RESERVOIR_TASK_SIZES[0]} examples, then "
          f"task 2's {RESERVOIR_TASK_SIZES[1]}, then task 3's {RESERVOIR_TASK_SIZES[2]}. After "
          "the last one, what share of the buffer do you expect to hold task-1 examples? "
          "(a fraction between 0 and 1; ±0.02 is accepted) Then run continual.ReservoirBuffer "
          "on this stream in the notebook to see the measured share.",
          _check_reservoir_share, wrong_answer=1 / 3, answer_is_value=True)
def reservoir_share_solution() -> float:
    # Reservoir sampling keeps every example seen so far with the same probability,
    # capacity / seen = 50 / 500 = 0.1, whichever task it came from: task 1's 300 examples
    # fill 300 × 0.1 = 30 of the 50 slots on average, a share of 300 / 500 = 0.6
    return continual.expected_old_share(RESERVOIR_TASK_SIZES, RESERVOIR_CAPACITY)[0]
