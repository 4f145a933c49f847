"""Exercises for notebook 00 · Set-up and tour.

* `00.cosine-lr`: the learning rate of the course trainer's warm-up + cosine-decay schedule.
* `00.seeded-noise`: reproducible random numbers from a seed, without touching the global
  random state that `runtime.seed_everything` sets.
* `00.steps-near-peak`: predict, then run: how many steps of a cosine schedule stay within
  10% of the peak learning rate?

Both checkers run on the CPU in milliseconds and are deterministic: they compare against
`trainer.lr_lambda` and against the learner's own function called twice. The second checker
puts the global random states (Python, NumPy, PyTorch) back as it found them.
"""

from __future__ import annotations

import math
import numbers
import random

import numpy as np
import torch

from llm_tutorial.exercises import exercise
from llm_tutorial.trainer import lr_lambda

# --------------------------------------------------------------------------- 00.cosine-lr

_PEAK = 3e-4
# (max_steps, warmup_steps); each is checked at every step from 0 to a few steps past the end
_COSINE_CASES = ((100, 10), (40, 0), (30, 7))
_PAST_END = 5


def _cosine_grid():
    return [(step, total, warmup) for total, warmup in _COSINE_CASES
            for step in range(total + _PAST_END + 1)]


def _cosine_multiplier(step, total, warmup):
    return lr_lambda(step, max_steps=total, warmup_steps=warmup, schedule="cosine")


def _half_cosine(progress):
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _with_warmup(decay, warmup_rule=lambda step, warmup: (step + 1) / (warmup + 1)):
    """A multiplier: `warmup_rule` during warm-up, then `decay(step, total, warmup)`."""
    def multiplier(step, total, warmup):
        return warmup_rule(step, warmup) if step < warmup else decay(step, total, warmup)
    return multiplier


def _progress(step, total, warmup):
    return min(1.0, (step - warmup) / max(1, total - warmup))


# Plausible mistakes (as multipliers of peak), each with the hint that names it; a learner's
# function is matched against each on the whole grid.
_COSINE_MISTAKES = (
    (lambda s, t, w: _cosine_multiplier(s, t, w) / _PEAK,  # the bare factor, without peak
     "you returned the multiplier in [0, 1]: multiply it by `peak`"),
    (lambda s, t, w: _half_cosine(min(1.0, s / t)),
     "your schedule has no warm-up: while step < warmup_steps the rate climbs as "
     "peak * (step + 1) / (warmup_steps + 1), and the cosine starts only after that"),
    (_with_warmup(lambda s, t, w: _half_cosine(_progress(s, t, w)), lambda s, w: s / w),
     "your warm-up starts at 0, so step 0 learns nothing: the course's warm-up is "
     "peak * (step + 1) / (warmup_steps + 1), small but not zero at step 0"),
    (_with_warmup(lambda s, t, w: _half_cosine(_progress(s, t, w)), lambda s, w: (s + 1) / w),
     "off by one in the warm-up: (step + 1) / warmup_steps reaches the peak a step early; "
     "divide by warmup_steps + 1"),
    (_with_warmup(lambda s, t, w: _half_cosine(min(1.0, (s - w) / t))),
     "your decay is too slow: the cosine spans the steps after warm-up, so progress is "
     "(step - warmup_steps) / (max_steps - warmup_steps), not / max_steps"),
    (_with_warmup(lambda s, t, w: _half_cosine(min(1.0, s / t))),
     "your cosine starts at step 0 instead of at the end of warm-up, so the rate drops right "
     "after warm-up: progress is (step - warmup_steps) / (max_steps - warmup_steps)"),
    (_with_warmup(lambda s, t, w: _half_cosine((s - w) / max(1, t - w))),
     "after max_steps your rate rises again (the cosine comes back up): clamp progress at 1 "
     "with min(1.0, ...), so the rate stays at 0"),
    (_with_warmup(lambda s, t, w: 1.0 - _progress(s, t, w)),
     "that is the linear decay (notebook 04's schedule); the cosine one is "
     "(1 + cos(pi * progress)) / 2"),
    (_with_warmup(lambda s, t, w: math.cos(math.pi / 2 * _progress(s, t, w))),
     "that is a quarter cosine, cos(pi / 2 * progress); the course uses half a period, shifted "
     "and scaled to go from 1 to 0: (1 + cos(pi * progress)) / 2"),
    (_with_warmup(lambda s, t, w: math.cos(math.pi * _progress(s, t, w))),
     "your rate goes negative: cos(pi * progress) runs from 1 to -1; shift and scale it, "
     "(1 + cos(pi * progress)) / 2"),
)


def _check_cosine_lr(my_cosine_lr) -> str | None:
    if not callable(my_cosine_lr):
        return "pass the function itself, `my_cosine_lr`, not a value"
    grid = _cosine_grid()
    got = []
    for step, total, warmup in grid:
        value = my_cosine_lr(step, peak=_PEAK, max_steps=total, warmup_steps=warmup)
        if value is None:
            return "your function returned None: end it with `return peak * ...`"
        if isinstance(value, torch.Tensor):
            return "return a Python float, not a tensor: use math.cos (or call .item())"
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return f"return a number; my_cosine_lr({step}, ...) returned {type(value).__name__}"
        got.append(float(value))
    got = np.array(got)
    expected = np.array([_PEAK * _cosine_multiplier(*point) for point in grid])
    if np.allclose(got, expected, rtol=1e-6, atol=1e-12):
        return None
    for mistake, hint in _COSINE_MISTAKES:
        values = np.array([_PEAK * mistake(*point) for point in grid])
        if np.allclose(got, values, rtol=1e-6, atol=1e-12):
            return hint
    i = int(np.flatnonzero(~np.isclose(got, expected, rtol=1e-6, atol=1e-12))[0])
    step, total, warmup = grid[i]
    where = ("during warm-up" if step < warmup else "after max_steps" if step > total
             else "during the decay")
    return (f"with max_steps={total}, warmup_steps={warmup}: at step {step} ({where}) expected "
            f"{expected[i]:.4g}, got {got[i]:.4g}. Warm-up: peak * (step + 1) / (warmup_steps + 1); "
            "then progress = min(1, (step - warmup_steps) / (max_steps - warmup_steps)) and "
            "the rate is peak * (1 + cos(pi * progress)) / 2")


def _cosine_without_warmup(step, peak, max_steps, warmup_steps):
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max_steps)))


@exercise(
    "00.cosine-lr",
    "Write my_cosine_lr(step, peak, max_steps, warmup_steps) as the course trainer does it: "
    "during warm-up peak * (step + 1) / (warmup_steps + 1); then, with progress = "
    "(step - warmup_steps) / (max_steps - warmup_steps) capped at 1, "
    "peak * (1 + cos(pi * progress)) / 2, which reaches 0 at max_steps and stays there.",
    _check_cosine_lr,
    wrong_answer=_cosine_without_warmup,
)
def cosine_lr_solution(step, peak, max_steps, warmup_steps):
    if step < warmup_steps:
        return peak * (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- 00.seeded-noise


def _global_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _same_states(a, b) -> bool:
    (py_a, np_a, torch_a), (py_b, np_b, torch_b) = a, b
    return (py_a == py_b and torch.equal(torch_a, torch_b)
            and all(np.array_equal(x, y) for x, y in zip(np_a, np_b, strict=True)))


def _restore(states) -> None:
    py, np_state, torch_state = states
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


def _check_seeded_noise(noise) -> str | None:
    if not callable(noise):
        return "pass the function itself, `noise`, not the tensor it returned"
    saved = _global_states()
    touched = False

    def call(seed, n):
        nonlocal touched
        before = _global_states()
        result = noise(seed, n)
        touched = touched or not _same_states(before, _global_states())
        return result

    try:
        first = call(7, 5)
        if first is None:
            return "your function returned None: return the tensor of n random numbers"
        if isinstance(first, np.ndarray):
            return "return a torch tensor, not a NumPy array (torch.from_numpy converts one)"
        if not isinstance(first, torch.Tensor):
            return f"return a torch tensor, got {type(first).__name__}"
        if tuple(first.shape) != (5,):
            return f"noise(7, 5) must have shape (5,): n numbers; got {tuple(first.shape)}"
        if not first.is_floating_point():
            return f"return floating-point numbers, got dtype {first.dtype}"
        torch.randn(4)  # other code draws random numbers between two calls
        again = call(7, 5)
        if not (isinstance(again, torch.Tensor) and torch.equal(again, first)):
            return ("the same seed gave different numbers: seed a generator inside the function, "
                    "`g = torch.Generator().manual_seed(seed)`, and draw with "
                    "`torch.randn(n, generator=g)`")
        other = call(8, 5)
        if isinstance(other, torch.Tensor) and other.shape == first.shape and torch.equal(other, first):
            return ("seeds 7 and 8 gave the same numbers: your function ignores its `seed` "
                    "argument (a fixed seed such as 0 is not it)")
        many = call(11, 20_000).double()
        if bool(((many >= 0) & (many < 1)).all()):
            return "those are uniform numbers in [0, 1) (torch.rand): draw standard normals, torch.randn"
        mean, std = many.mean().item(), many.std().item()
        if abs(mean) > 0.05 or abs(std - 1) > 0.05:
            return (f"expected standard normal numbers (mean 0, std 1); 20,000 of yours have mean "
                    f"{mean:.3f} and std {std:.3f}: use torch.randn")
        if touched:
            return ("the numbers are right, but your function re-seeds or draws from the global "
                    "random state (torch.manual_seed, seed_everything, or torch.randn without "
                    "generator=), so every later random draw in the notebook depends on this "
                    "call: draw from a private `torch.Generator().manual_seed(seed)` instead")
        return None
    finally:
        _restore(saved)


def _noise_from_global_seed(seed, n):
    torch.manual_seed(seed)
    return torch.randn(n)


@exercise(
    "00.seeded-noise",
    "Write noise(seed, n): n standard-normal numbers as a torch tensor, the same for the same "
    "seed and different for different seeds, without touching the global random state.",
    _check_seeded_noise,
    wrong_answer=_noise_from_global_seed,
)
def noise(seed, n):
    generator = torch.Generator().manual_seed(seed)  # private: the global RNG is left alone
    return torch.randn(n, generator=generator)


# --------------------------------------------------------------------------- 00.steps-near-peak

_NEAR_PEAK = dict(max_steps=100, warmup_steps=10, fraction=0.9)


def _steps_near_peak(schedule: str) -> int:
    s = _NEAR_PEAK
    return sum(lr_lambda(step, max_steps=s["max_steps"], warmup_steps=s["warmup_steps"], schedule=schedule)
               >= s["fraction"] for step in range(s["max_steps"]))


def _check_steps_near_peak(answer) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Number):
        return "answer with a number of steps (an int), e.g. steps_near_peak = 30"
    right, linear = _steps_near_peak("cosine"), _steps_near_peak("linear")
    if abs(answer - right) <= 1:
        return None
    if abs(answer - linear) <= 1:
        return (f"{answer} is the count for the linear schedule; the cosine stays near its peak "
                "longer: solve (1 + cos(pi p)) / 2 >= 0.9 for the progress p")
    return (f"not {answer}: after warm-up, (1 + cos(pi p)) / 2 >= 0.9 means cos(pi p) >= 0.8, "
            "so p <= acos(0.8) / pi; the decay spans max_steps - warmup_steps = 90 steps")


@exercise(
    "00.steps-near-peak",
    "Predict, then run: with schedule='cosine', max_steps=100 and warmup_steps=10, at how many of "
    "the steps 0..99 is the learning rate at least 90% of its peak? (±1 step is accepted)",
    _check_steps_near_peak, wrong_answer=11, answer_is_value=True,
)
def steps_near_peak_solution() -> int:
    warmup_steps = 1  # only step 9: (9 + 1) / (10 + 1) = 0.909
    p_max = math.acos(0.8) / math.pi  # cosine: (1 + cos(pi p)) / 2 >= 0.9
    return warmup_steps + math.floor(p_max * 90) + 1  # steps 10 .. 10 + floor(18.4)
