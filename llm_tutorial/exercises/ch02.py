"""Exercises for notebook 02 · The transformer from scratch.

* `02.causal-mask`: the boolean mask of a decoder that already holds `past` cached tokens.
* `02.rope-pair`: rotate one pair of a query by its position's angle.
* `02.kv-cache-mb`: predict, then measure: how many MB does SmolLM2's KV cache hold after 512 tokens?
"""

from __future__ import annotations

import math
import numbers

import torch

from llm_tutorial.exercises import exercise


def _check_causal_mask(my_mask) -> str | None:
    if not callable(my_mask):
        return "pass the function itself, `my_mask`, not a value"
    for t, past in [(4, 0), (3, 2), (1, 5)]:
        got = my_mask(t, past)
        if got is None:
            return "your function returned None: return a (t, past + t) boolean tensor"
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
            return "return a boolean tensor: True where a query may attend to a key"
        if tuple(got.shape) != (t, past + t):
            return (f"my_mask({t}, {past}) has shape {tuple(got.shape)}: the rows are the {t} new "
                    f"queries, the columns all {past + t} keys (cached and new)")
        expected = torch.arange(past + t)[None, :] <= torch.arange(past, past + t)[:, None]
        if torch.equal(got, expected):
            continue
        if torch.equal(got, ~expected):
            return "inverted: True must mark the keys a query *may* see (itself and earlier tokens)"
        if past and torch.equal(got[:, past:], torch.ones(t, t, dtype=torch.bool).tril()):
            return "the new queries sit at positions past ... past + t - 1: they see every cached key"
        return f"my_mask({t}, {past}) is wrong: query i (at position past + i) may see key j iff j <= past + i"
    return None


@exercise("02.causal-mask", "Write my_mask(t, past): a (t, past + t) boolean tensor, True where one "
          "of the t new queries (at positions past ... past + t - 1) may attend to a key "
          "(positions 0 ... past + t - 1).", _check_causal_mask,
          wrong_answer=lambda t, past: torch.ones(t, t, dtype=torch.bool).tril())
def causal_mask_solution(t: int, past: int = 0) -> torch.Tensor:
    queries = torch.arange(past, past + t)[:, None]
    keys = torch.arange(past + t)[None, :]
    return keys <= queries


def _check_rope_pair(my_rope) -> str | None:
    if not callable(my_rope):
        return "pass the function itself, `my_rope`"
    x, y, m, theta = 0.6, -0.8, 3, 0.5
    got = my_rope(x, y, m, theta)
    if got is None:
        return "your function returned None: return the rotated pair (x', y')"
    try:
        gx, gy = (float(v) for v in got)
    except (TypeError, ValueError):
        return "return two numbers, (x', y')"
    angle = m * theta
    ex, ey = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
    if math.isclose(gx, ex, abs_tol=1e-6) and math.isclose(gy, ey, abs_tol=1e-6):
        return None
    bx, by = x * math.cos(-angle) - y * math.sin(-angle), x * math.sin(-angle) + y * math.cos(-angle)
    if math.isclose(gx, bx, abs_tol=1e-6) and math.isclose(gy, by, abs_tol=1e-6):
        return "you rotated clockwise: the angle is +m·θ (x cos φ − y sin φ, x sin φ + y cos φ)"
    if math.isclose(math.hypot(gx, gy), 1.0, abs_tol=1e-6):
        return "a rotation, but by the wrong angle: φ = m · θ"
    return "a rotation keeps the length of (x, y): x' = x cos φ − y sin φ, y' = x sin φ + y cos φ"


@exercise("02.rope-pair", "Write my_rope(x, y, m, theta): the pair (x, y) of a query at position m, "
          "rotated by RoPE's angle m * theta. Return (x', y').", _check_rope_pair,
          wrong_answer=lambda x, y, m, theta: (x * math.cos(theta) - y * math.sin(theta),
                                               x * math.sin(theta) + y * math.cos(theta)))
def rope_pair_solution(x: float, y: float, m: int, theta: float) -> tuple[float, float]:
    angle = m * theta
    return x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)


# SmolLM2-135M's shape, as the notebook prints it from the model's config
KV_SHAPE = dict(layers=30, kv_heads=3, head_dim=64, tokens=512, bytes_per_number=4)


def _check_kv_cache_mb(answer) -> str | None:
    if not isinstance(answer, numbers.Real) or isinstance(answer, bool):
        return "answer with a number of MB (10^6 bytes)"
    s = KV_SHAPE
    expected = kv_cache_mb_solution()
    if math.isclose(answer, expected, rel_tol=0.01):
        return None
    if math.isclose(answer, expected / 2, rel_tol=0.01):
        return "that is the keys alone: the cache holds keys *and* values"
    if math.isclose(answer, expected * 3, rel_tol=0.01):
        return "that would be full multi-head attention: SmolLM2 caches 3 kv heads, not 9"
    if math.isclose(answer, expected * 1e6 / 2**20, rel_tol=0.01):
        return "that is MiB (2^20 bytes); give MB (10^6 bytes)"
    if math.isclose(answer, expected / s["bytes_per_number"] * 2, rel_tol=0.01):
        return "that is the size in bf16/fp16 (2 bytes); the model here runs in float32 (4 bytes)"
    return "2 (keys and values) · layers · kv_heads · head_dim · tokens · bytes per number, in MB"


@exercise("02.kv-cache-mb", "Predict, then measure: after 512 tokens (batch 1, float32), how many MB "
          "(10^6 bytes) does SmolLM2-135M's KV cache hold? (30 layers, 3 kv heads of width 64)",
          _check_kv_cache_mb, wrong_answer=47.19, answer_is_value=True)
def kv_cache_mb_solution() -> float:
    s = KV_SHAPE
    return 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * s["tokens"] * s["bytes_per_number"] / 1e6
