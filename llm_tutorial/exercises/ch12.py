"""Exercises for notebook 12 · Efficiency and deployment.

* `12.zero-memory`: the GB of model states each GPU holds under ZeRO stage 2, by hand.
* `12.activation-quantize`: write onnxruntime's dynamic uint8 activation quantization
  (ONNX `DynamicQuantizeLinear`): scale, zero point and quantized tensor.
* `12.pruned-size`: predict, then run: does zeroing half of the encoder's weights with
  `magnitude_prune` make the saved model file smaller, larger or the same?
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from llm_tutorial import efficiency
from llm_tutorial.exercises import as_number as _as_number
from llm_tutorial.exercises import close as _close
from llm_tutorial.exercises import exercise

# ------------------------------------------------------------------------------ 12.zero-memory

PARAMS = 7e9  # a 7-billion-parameter model
RANKS = 8  # GPUs
WEIGHT_BYTES = 2  # bf16 weights
GRAD_BYTES = 2  # bf16 gradients
OPTIMIZER_BYTES = 12  # AdamW in mixed precision: float32 master weights + two float32 moments
ZERO_TOLERANCE = 0.05  # GB


def _zero_gb(stage: str = "ZeRO-2", optimizer_bytes: int = OPTIMIZER_BYTES) -> float:
    """GB of model states per GPU at `stage`, from the library's arithmetic."""
    return efficiency.zero_memory_per_rank(PARAMS, RANKS, stage, WEIGHT_BYTES, GRAD_BYTES,
                                           optimizer_bytes) / 1e9


def _check_zero_memory(answer) -> str | None:
    value = _as_number(answer)
    if value is None or not math.isfinite(value):
        return "answer with a number of GB, e.g. gb_per_gpu = 50.0"
    want, tol = _zero_gb(), ZERO_TOLERANCE
    if _close(value, want, tol):
        return None
    if _close(value, want * 1e9, tol * 1e9):
        return f"{value:g} is a number of bytes: give GB (10^9 bytes), divide by 1e9"
    if _close(value, want * 1e3, tol * 1e3):
        return f"{value:g} is in MB: give GB (10^9 bytes), divide by 1000"
    if _close(value, want * 1e9 / 2**30, tol):
        return "that is GiB (2^30 bytes): the question asks for GB, 10^9 bytes"
    if _close(value, _zero_gb("DDP"), tol):
        per_param = WEIGHT_BYTES + GRAD_BYTES + OPTIMIZER_BYTES
        return (f"{value:g} GB is plain DDP: every GPU keeps all {per_param} bytes per parameter. "
                f"ZeRO-2 shards the gradients and the optimizer state over the {RANKS} GPUs")
    if _close(value, _zero_gb("ZeRO-1"), tol):
        return (f"{value:g} GB is ZeRO stage 1, which shards only the optimizer state; stage 2 "
                f"shards the gradients too (each GPU keeps 1/{RANKS} of them)")
    if _close(value, _zero_gb("ZeRO-3 / FSDP"), tol):
        return (f"{value:g} GB is ZeRO stage 3 (FSDP), which shards the weights too; stage 2 keeps "
                f"a full copy of the {WEIGHT_BYTES}-byte weights on every GPU")
    if _close(value, want / RANKS, tol):
        return (f"you divided by {RANKS} once too often: the weights are not sharded at all, and "
                f"the gradients and optimizer state are divided by {RANKS} once")
    if _close(value, want * RANKS, tol):
        return f"{value:g} GB is the total over the {RANKS} GPUs: the question asks for each GPU"
    if _close(value, _zero_gb(optimizer_bytes=8), tol):
        return (f"the optimizer state is {OPTIMIZER_BYTES} bytes per parameter: mixed-precision "
                "AdamW keeps a float32 master copy of the weights (4) as well as its two "
                "moments (4 + 4)")
    if _close(value, want - PARAMS * WEIGHT_BYTES / 1e9, tol):
        return (f"add the weights: ZeRO-2 does not shard them, so every GPU holds all "
                f"{PARAMS / 1e9:g} billion of them at {WEIGHT_BYTES} bytes each")
    return (f"bytes per GPU = parameters x (weight bytes + (gradient bytes + optimizer bytes) "
            f"/ GPUs): ZeRO-2 shards the gradients and the optimizer state over the {RANKS} "
            f"GPUs but keeps every weight on each; then divide by 1e9 for GB")


@exercise("12.zero-memory", f"A {PARAMS / 1e9:g}-billion-parameter model "
          f"(PARAMS = {PARAMS / 1e9:g}e9) is trained with mixed-precision AdamW "
          f"({WEIGHT_BYTES}-byte weights, {GRAD_BYTES}-byte gradients, {OPTIMIZER_BYTES} bytes of "
          "optimizer state per parameter: a float32 master copy and two moments) on "
          f"RANKS = {RANKS} GPUs with ZeRO stage 2. How many GB (10^9 bytes) of model states does "
          "each GPU hold? (a number; ±0.05 is accepted)",
          _check_zero_memory, wrong_answer=_zero_gb("ZeRO-1"), answer_is_value=True)
def zero_memory_solution() -> float:
    # ZeRO-2 shards the gradients and the optimizer state over the GPUs, not the weights:
    # 2 + (2 + 12) / 8 = 3.75 bytes per parameter, x 7e9 = 26.25e9 bytes = 26.25 GB
    # (efficiency.zero_memory_per_rank(PARAMS, RANKS, "ZeRO-2") / 1e9 gives the same)
    bytes_per_param = WEIGHT_BYTES + (GRAD_BYTES + OPTIMIZER_BYTES) / RANKS
    return PARAMS * bytes_per_param / 1e9


# ---------------------------------------------------------------------- 12.activation-quantize


def _quantize_cases() -> list[tuple[str, torch.Tensor]]:
    mixed = torch.randn(4, 8, generator=torch.Generator().manual_seed(12)) * 2 + 0.5
    return [("all positive", torch.tensor([[0.31, 1.07, 2.53], [2.9, 0.18, 1.66]])),
            ("all negative", torch.tensor([-2.87, -1.13, -0.09, -2.21, -0.64])),
            ("mixed signs", mixed),
            ("one repeated value", torch.full((2, 3), 0.7))]


def _reference_uint8(x: np.ndarray, levels: int = 255,
                     include_zero: bool = True) -> tuple[np.ndarray, float, int]:
    """DynamicQuantizeLinear in NumPy float32 (np.rint rounds half to even, as ONNX does)."""
    x = x.astype(np.float32)
    lo, hi = x.min(), x.max()
    if include_zero:
        lo, hi = min(lo, np.float32(0)), max(hi, np.float32(0))
    scale = np.float32((hi - lo) / np.float32(levels))
    zero_point = int(np.clip(np.rint(-lo / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, float(scale), zero_point


def _quantize_without_zero(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """A wrong answer: the range is [x_min, x_max], not extended to include 0."""
    lo, hi = x.min(), x.max()
    scale = (hi - lo) / 255
    zero_point = int(torch.round(-lo / scale).clamp(0, 255))
    q = (torch.round(x / scale) + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale.item(), zero_point


def _check_quantize(quantize_uint8) -> str | None:
    if not callable(quantize_uint8):
        return "pass the function itself, `quantize_uint8`, not its result"
    for name, x in _quantize_cases():
        shown = f"on the {name} tensor {np.round(x.double().numpy(), 3).tolist()}"
        want_q, want_scale, want_zp = _reference_uint8(x.numpy())
        try:
            got = quantize_uint8(x.clone())
        except NotImplementedError:
            raise
        except Exception as error:
            return f"quantize_uint8(x) raised {type(error).__name__}: {error} {shown}"
        if got is None:
            return "your function returned None: return the tuple (q, scale, zero_point)"
        if isinstance(got, torch.Tensor) and got.is_floating_point():
            return ("you returned one float tensor: return the tuple (q, scale, zero_point), with "
                    "q the uint8 tensor (not the dequantized (q - zero_point) * scale)")
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            return "return three things, the tuple (q, scale, zero_point)"
        q, scale, zero_point = got
        scale, zero_point = _as_number(scale), _as_number(zero_point)
        if not isinstance(q, torch.Tensor):
            return f"q should be a torch.Tensor, got {type(q).__name__}"
        if scale is None or zero_point is None:
            return "scale and zero_point should be numbers: a float and an int"
        if tuple(q.shape) != tuple(x.shape):
            return (f"q has shape {tuple(q.shape)} {shown}: it should have x's shape "
                    f"{tuple(x.shape)}")
        if q.is_floating_point() and torch.allclose(q.float(), x, atol=want_scale):
            return ("q is the dequantized tensor, close to x: return the quantized integers "
                    "q = clamp(round(x / scale) + zero_point, 0, 255) as torch.uint8")
        if scale == 0 or not math.isfinite(scale):
            return (f"scale is {scale} {shown}: when every value is the same, x_max - x_min is 0; "
                    "extend the range to include 0 first, (max(x_max, 0) - min(x_min, 0)) / 255")
        lo, hi = float(x.min()), float(x.max())
        if _close(scale, (max(hi, 0) - min(lo, 0)) / 256, 1e-6 * abs(scale)):
            return ("uint8 has 256 levels, 0..255, but 255 steps between them: divide the range "
                    "by 255, not 256")
        if not _close(scale, want_scale, 1e-7 * want_scale):
            if _close(scale, (hi - lo) / 255, 1e-6 * abs(scale)):
                return (f"scale is {scale:.6g} {shown}, expected {want_scale:.6g}: extend the "
                        "range to include 0, (max(x_max, 0) - min(x_min, 0)) / 255, so that 0.0 "
                        "(padding, a ReLU's output) has an exact integer, the zero point")
            return (f"scale is {scale:.6g} {shown}, expected {want_scale:.6g} = "
                    "(max(x_max, 0) - min(x_min, 0)) / 255")
        if zero_point != want_zp:
            return (f"zero_point is {zero_point:g} {shown}, expected {want_zp}: the integer that "
                    "stands for 0.0, round(-min(x_min, 0) / scale), clamped to [0, 255]")
        if q.dtype != torch.uint8:
            same = torch.equal(q.to(torch.float64), torch.from_numpy(want_q).to(torch.float64))
            return (f"q has dtype {q.dtype}" + (" (its values are right)" if same else "") +
                    ": convert it with .to(torch.uint8), the 8-bit unsigned integers 0..255")
        if torch.equal(q, torch.from_numpy(want_q)):
            continue
        steps = x.numpy() / np.float32(want_scale)  # float32, as in the reference
        if np.array_equal(q.numpy(), np.clip(np.floor(steps) + want_zp, 0, 255)):
            return (f"q is truncated {shown}: round x / scale to the nearest integer with "
                    "torch.round before adding zero_point (.to(torch.uint8) alone drops the "
                    "fraction)")
        if np.array_equal(q.numpy(), np.clip(np.rint(steps), 0, 255)):
            return (f"add zero_point {shown}: q = round(x / scale) + zero_point, so that 0.0 "
                    "becomes the integer zero_point and the negative values fit in 0..255")
        back = (q.double() - zero_point) * scale
        worst = int((back - x.double()).abs().argmax())
        if (back - x.double()).abs().max() > want_scale / 2 * (1 + 1e-4):
            return (f"dequantizing, (q - zero_point) * scale, should give x back within scale / 2 "
                    f"(half a step), but {shown} x = {x.flatten()[worst].item():.4g} comes back as "
                    f"{back.flatten()[worst].item():.4g}: q = clamp(round(x / scale) + zero_point, "
                    "0, 255), clamped before converting to uint8 (which wraps around)")
        return (f"q differs from the expected {want_q.tolist()} {shown} although it dequantizes "
                "within half a step: round half to even (torch.round) and compute in float32")
    return None


@exercise("12.activation-quantize", "Write quantize_uint8(x): onnxruntime's dynamic quantization "
          "of an activation tensor x (the ONNX operator DynamicQuantizeLinear), asymmetric, to "
          "uint8. Extend x's range to include 0, scale = (max(x_max, 0) - min(x_min, 0)) / 255, "
          "zero_point = round(-min(x_min, 0) / scale) clamped to [0, 255] (an int), and "
          "q = clamp(round(x / scale) + zero_point, 0, 255) as a torch.uint8 tensor (torch.round "
          "rounds half to even, as ONNX does). Return (q, scale, zero_point).",
          _check_quantize, wrong_answer=_quantize_without_zero)
def quantize_uint8_solution(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    # the range always includes 0, so that 0.0 (padding, a ReLU's output) is exactly the integer
    # zero_point; 256 levels, 0..255, are 255 steps of `scale`
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (hi - lo) / 255
    zero_point = int(torch.round(-lo / scale).clamp(0, 255))
    q = (torch.round(x / scale) + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale.item(), zero_point


# ------------------------------------------------------------------------------ 12.pruned-size


def _check_pruned_size(answer) -> str | None:
    word = answer.strip().lower().rstrip(".") if isinstance(answer, str) else None
    if word in ("same", "the same", "same size", "the same size"):
        return None
    if word == "smaller":
        return ("the zeros are still float32 numbers in a dense tensor, 4 bytes each like any "
                "other weight: torch.save writes every element. Only a sparse format (indices and "
                "values) or compression would shrink the file")
    if word == "larger":
        return ("magnitude_prune makes the zeros permanent (prune.remove), which drops the mask "
                "and the weight_orig copy: the state_dict holds the same tensors, of the same "
                "shapes and dtype, as before")
    return 'answer with one of the words "smaller", "larger" or "the same"'


@exercise("12.pruned-size", "Predict, then run: after magnitude_prune(model, 0.5) zeroes half of "
          "the encoder's linear weights, will the model's file (its state_dict saved by "
          "torch.save, efficiency.file_size_mb) be \"smaller\", \"larger\" or \"the same\"? "
          "Then run the next cell to measure it.",
          _check_pruned_size, wrong_answer="smaller", answer_is_value=True)
def pruned_size_solution() -> str:
    # The zeros stay float32 numbers in the same dense tensors, 4 bytes each: the file does not
    # shrink. A small stand-in whose linear layers sit under `.layer.`, as in a BERT encoder:
    model = nn.ModuleDict({"layer": nn.ModuleList([nn.Linear(64, 64), nn.Linear(64, 64)])})
    before = efficiency.file_size_mb(model)
    efficiency.magnitude_prune(model, 0.5)  # half of the weights are now exactly 0.0
    after = efficiency.file_size_mb(model)
    return "the same" if after == before else ("smaller" if after < before else "larger")
