"""
# Efficiency: where memory and time go, scaling out, and making a model small and fast

Training a model costs memory and time; serving it costs latency, memory and disk. This module
measures each of them on the course's own models and implements the standard tricks, so that
notebook 12 can put one number beside each idea.

## Training: the memory arithmetic

Training with AdamW in float32 keeps, per parameter, the weight (4 bytes), its gradient (4) and
AdamW's two moments (8): **16 bytes per parameter** before a single activation is stored. The
activations saved for the backward pass grow with batch × sequence length × layers, and for a
small model they dominate. `MemTracker` (PyTorch's own, in `torch.distributed._tools`) sorts
every live tensor into those categories; `training_memory` writes the arithmetic out and
`saved_activation_bytes` counts what autograd saves, so the two can be checked against each other.

* **mixed precision** (bf16 autocast) computes matrix products in 16 bits; the weights, and so
  the optimizer, stay in float32;
* **gradient accumulation** runs $k$ micro-batches of $B/k$ and steps once: the gradient of
  the mean loss is the same, the activations are $k$ times smaller;
* **activation (gradient) checkpointing** keeps only each block's input and recomputes the
  block in the backward pass: about one more forward pass of time for most of the activations.

The work of a training step is close to $6N$ FLOPs per token for a model of $N$ parameters
($2N$ forward, $4N$ backward), plus the attention scores, $12 L d T$ per token for $L$ layers
of width $d$ at sequence length $T$ (PaLM, Chowdhery et al. 2022, appendix B). Divided by the
step time and the hardware's peak, that is the **model-FLOPs utilisation** (MFU).

## Scaling out: data parallelism and sharding

Under `torchrun --nproc_per_node=N` every process holds a replica, takes $1/N$ of each global
batch (`shard_batch`), and **DDP** averages the gradients with an all-reduce in the backward
pass, so every replica takes the same optimizer step as one process on the whole batch would.
**ZeRO** (Rajbhandari et al. 2020) removes the redundancy: stage 1 shards the optimizer states,
stage 2 also the gradients, stage 3 also the weights (gathered layer by layer when needed).
PyTorch's **FSDP** (`fully_shard`) is stage 3. `zero_memory_per_rank` is the paper's
arithmetic; `llm_tutorial/scripts/train_ddp.py` is the launchable script.

## Deployment: smaller and faster

* **dynamic int8 quantization** stores the weights of each linear layer in 8 bits and
  quantizes activations on the fly (`quantize_int8`);
* **ONNX** exports the graph (`export_onnx`, the `torch.export`-based "dynamo" exporter), run by
  onnxruntime (`OnnxModel`), which can also quantize it (`quantize_onnx_int8`);
* **pruning**: zero the smallest weights (`magnitude_prune`: sparsity, but dense kernels run
  no faster) or remove whole attention heads (`head_importance`, `prune_heads`: a smaller
  dense model);
* **knowledge distillation** (Hinton et al. 2015): a smaller student, initialised from every
  other layer of the teacher (as DistilBERT), learns the teacher's softened output
  distribution (`distillation_loss`, `Distiller`).

`latency` times anything callable (median and 95th percentile after warm-up), `compare_latency`
several callables interleaved (both from `runtime`); `generation_speed`
measures a decoder's tokens per second by batch size, with the KV cache on and off.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llm_tutorial.runtime import compare_latency, latency
from llm_tutorial.trainer import TrainConfig, Trainer, compute_loss
from llm_tutorial.transformer import Transformer

__all__ = [
    "training_memory",
    "saved_activation_bytes",
    "memory_by_category",
    "checkpointed",
    "training_flops",
    "matmul_flops_per_second",
    "measure_training",
    "shard_batch",
    "ZERO_STAGES",
    "zero_memory_per_rank",
    "zero_memory_table",
    "launch",
    "latency",
    "compare_latency",
    "file_size_mb",
    "LogitsOnly",
    "is_quantized",
    "quantize_int8",
    "export_onnx",
    "quantize_onnx_int8",
    "OnnxModel",
    "magnitude_prune",
    "sparsity",
    "head_importance",
    "prune_heads",
    "student_from_teacher",
    "distillation_loss",
    "Distiller",
    "generation_speed",
    "cache_bytes",
]

MiB = 2**20


# ------------------------------------------------------------------------------ training memory


def training_memory(n_params: int, activation_bytes: int = 0, weight_bytes: int = 4,
                    grad_bytes: int = 4, optimizer_bytes: int = 8) -> dict[str, int]:
    """
    The bytes a training step needs, by category: `weights`, `gradients`, `optimizer` (AdamW:
    two float32 moments, 8 bytes a parameter) and `activations` (pass the measured or estimated
    saved activations), and their `total`. The defaults are float32 training with AdamW, the
    16 bytes per parameter of the module docstring.
    """
    if n_params < 0 or activation_bytes < 0:
        raise ValueError(f"n_params and activation_bytes count things, got {n_params}, {activation_bytes}")
    parts = {"weights": n_params * weight_bytes, "gradients": n_params * grad_bytes,
             "optimizer": n_params * optimizer_bytes, "activations": int(activation_bytes)}
    return {**parts, "total": sum(parts.values())}


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def saved_activation_bytes(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> int:
    """
    Bytes of the tensors autograd saves for the backward pass in one forward pass of `model` on
    `batch` (`torch.autograd.graph.saved_tensors_hooks` sees each one). Tensors that share a
    storage count once, and the model's own parameters and buffers (saved by every linear layer)
    do not count: they are the weights, not activations.
    """
    weights = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    seen: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in weights:
            seen[key] = max(seen.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = compute_loss(model, batch)
    del loss
    return sum(seen.values())


def memory_by_category(step: Callable[[Callable[[], None]], Any], model: nn.Module,
                       optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """
    Peak bytes of live tensors during `step(next_forward)`, by category, from PyTorch's
    `MemTracker` (`torch.distributed._tools.mem_tracker`): `weights`, `gradients`, `optimizer`,
    `activations`, `temporary` (tensors that live inside one operation) and the `total` at the
    peak. It follows tensors, not the process, so it works on a CPU as on a GPU and counts the
    same bytes on every machine. `step` must call `next_forward()` before each forward pass after
    its first (the tracker follows one forward pass of a module at a time).
    """
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    tracker = MemTracker()
    tracker.track_external(*(m for m in (model, optimizer) if m is not None))
    with tracker:
        step(tracker.reset_mod_stats)
    peak = tracker.get_tracker_snapshot("peak")
    device = next(iter(peak))
    names = {_MemRefType.PARAM: "weights", _MemRefType.GRAD: "gradients", _MemRefType.OPT: "optimizer",
             _MemRefType.ACT: "activations", _MemRefType.TEMP: "temporary"}
    out = {name: int(peak[device].get(kind, 0)) for kind, name in names.items()}
    out["total"] = int(peak[device]["Total"])
    return out


class _Checkpointed(nn.Module):
    """One block whose activations are recomputed in the backward pass instead of stored."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def checkpointed(model: Transformer):
    """
    Activation checkpointing for the `with` block: each block of the course `Transformer`
    keeps only its input and recomputes its inside during the backward pass. The model is the
    same model (same parameters) inside and after the block.
    """
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise TypeError(f"checkpointed() wraps the `blocks` of the course Transformer; "
                        f"{type(model).__name__} has none (for a Hugging Face model call "
                        f"model.gradient_checkpointing_enable())")
    original = model.blocks
    model.blocks = nn.ModuleList(_Checkpointed(block) for block in original)
    try:
        yield model
    finally:
        model.blocks = original


def training_flops(n_params: int, tokens: int, n_layers: int = 0, dim: int = 0, seq_len: int = 0) -> float:
    """FLOPs of training on `tokens` tokens: $6N$ per token plus attention's $12 L d T$."""
    return float(tokens) * (6 * n_params + 12 * n_layers * dim * seq_len)


def matmul_flops_per_second(size: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32,
                            device: torch.device | str = "cpu") -> float:
    """
    FLOP/s of a `size`×`size` matrix product on `device` (the best of `repeats`): a measured
    ceiling for the MFU on a machine whose peak is not in a datasheet (a CPU).
    """
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measure_training(make_model: Callable[[], nn.Module], batch: Mapping[str, torch.Tensor],
                     precision: str = "no", grad_accum: int = 1, checkpointing: bool = False,
                     steps: int = 3, lr: float = 1e-3) -> dict[str, float]:
    """
    One setting of the training table: a fresh model from `make_model()` trained through the
    course `Trainer` on `batch` (split into `grad_accum` micro-batches, bf16 autocast when
    `precision="bf16"`, activation checkpointing when `checkpointing`) for one warm-up step and
    `steps` timed steps; then one more step by hand under `memory_by_category`. Returns the
    seconds per step (median), tokens per second, the last loss and the peak MiB by category.
    """
    rows = batch["input_ids"].shape[0]
    if rows % grad_accum:
        raise ValueError(f"grad_accum={grad_accum} does not divide the batch of {rows} rows; choose "
                         f"a divisor of {rows}")
    micro = [{k: v[i::grad_accum] for k, v in batch.items()} for i in range(grad_accum)]
    model = make_model()
    config = TrainConfig(max_steps=1, lr=lr, warmup_steps=0, schedule="constant", max_grad_norm=None,
                         grad_accum_steps=grad_accum, mixed_precision=precision, progress=False)
    trainer = Trainer(model, micro, config)
    times = []
    with checkpointed(model) if checkpointing else contextlib.nullcontext():
        trainer.train()  # warm-up: the optimizer's states now exist
        for _ in range(steps):
            config.max_steps += 1
            start = time.perf_counter()
            trainer.train()
            times.append(time.perf_counter() - start)

        def step(next_forward: Callable[[], None]) -> None:
            for i, micro_batch in enumerate(micro):
                if i:
                    next_forward()
                with torch.autocast(trainer.device.type, torch.bfloat16, enabled=precision == "bf16"):
                    loss = compute_loss(model, micro_batch)
                (loss / grad_accum).backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        memory = memory_by_category(step, model, trainer.optimizer)
    seconds = statistics.median(times)
    return {"seconds per step": seconds, "tokens per second": batch["input_ids"].numel() / seconds,
            "final loss": float(trainer.history["train_loss"].iloc[-1]),
            **{f"{k} MiB": v / MiB for k, v in memory.items()}}


# ------------------------------------------------------------------------------ scaling out


def shard_batch(batch: Mapping[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """
    Rank `rank`'s share of a global batch: rows `rank, rank + world_size, ...`. With equal
    shares, the mean of the ranks' mean losses is the global batch's mean loss, which is what
    makes DDP's averaged gradient equal to one process's.
    """
    rows = next(iter(batch.values())).shape[0]
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if rows % world_size:
        raise ValueError(f"a global batch of {rows} rows does not split evenly over {world_size} "
                         f"processes; use a batch size that is a multiple of {world_size}")
    return {key: value[rank::world_size] for key, value in batch.items()}


ZERO_STAGES = ("DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3 / FSDP")


def zero_memory_per_rank(n_params: float, world_size: int, stage: str, weight_bytes: int = 2,
                         grad_bytes: int = 2, optimizer_bytes: int = 12) -> float:
    """
    Bytes of model states per rank (Rajbhandari et al. 2020, section 5): mixed-precision AdamW
    keeps 2-byte weights and gradients and K = 12 bytes of optimizer state (a float32 copy of
    the weights and two moments) per parameter. DDP replicates all three; ZeRO-1 divides the
    optimizer state by the number of ranks $N_d$, ZeRO-2 the gradients too, ZeRO-3 everything.
    Activations and buffers come on top.
    """
    if stage not in ZERO_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {ZERO_STAGES}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    level = ZERO_STAGES.index(stage)
    w, g, o = (n_params * b for b in (weight_bytes, grad_bytes, optimizer_bytes))
    return (w / world_size if level >= 3 else w) + (g / world_size if level >= 2 else g) + (
        o / world_size if level >= 1 else o)


def zero_memory_table(models: Mapping[str, float], world_size: int) -> pd.DataFrame:
    """GB of model states per rank for each model (`name -> parameters`) and each stage."""
    return pd.DataFrame({stage: [zero_memory_per_rank(n, world_size, stage) / 1e9 for n in models.values()]
                         for stage in ZERO_STAGES}, index=list(models)).rename_axis(
        f"GB per rank, {world_size} ranks")


def launch(script_args: Sequence[str], nproc: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """
    Run `python -m torch.distributed.run --nproc_per_node=nproc -m llm_tutorial.scripts.train_ddp
    *script_args` (PyTorch's own launcher, which is what `torchrun` is) on this machine, with one
    thread per process, and return the finished process; a failure raises with its stderr.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "llm_tutorial.scripts.train_ddp", *map(str, script_args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


# ------------------------------------------------------------------------------ latency and size


# `latency` and `compare_latency` live in `runtime` (06 times its adapters with them too).


def file_size_mb(model_or_path: nn.Module | str | os.PathLike) -> float:
    """Megabytes (10^6 bytes) on disk: of a file, or of a model's `state_dict` as `torch.save` writes it
    (which also serialises a quantized model's packed int8 weights)."""
    if isinstance(model_or_path, nn.Module):
        buffer = io.BytesIO()
        torch.save(model_or_path.state_dict(), buffer)
        return buffer.tell() / 1e6
    return os.path.getsize(model_or_path) / 1e6


class LogitsOnly(nn.Module):
    """`model(input_ids, attention_mask).logits` as a plain tensor: the form an exporter and
    onnxruntime want (one tensor in, one tensor out, no output object)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


# ------------------------------------------------------------------------------ quantization


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` already holds int8 modules from `quantize_int8`."""
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
               for m in model.modules())


def quantize_int8(model: nn.Module) -> nn.Module:
    """
    A copy of `model` with dynamic int8 quantization (`torch.ao.quantization.quantize_dynamic`):
    every `nn.Linear` stores int8 weights with one scale per output row, $s_i = \\max_j |W_{ij}| /
    127.5$ on the range $[-128, 127]$, and quantizes its input on the fly. The embeddings stay
    float32: torch.ao's weight-only int8 embedding fails inside BERT's embedding layer ("Expect
    weight, indices, and offsets to be contiguous"); onnxruntime's quantizer does quantize them.
    PyTorch marks `torch.ao.quantization` as deprecated in favour of `torchao`; notebook 12 says
    why the course stays with it, and its warning is silenced here.
    """
    if is_quantized(model):
        raise ValueError("this model is already quantized; quantize the float model it came from "
                         "(quantizing twice would quantize the int8 weights' rounding again)")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


def export_onnx(model: nn.Module, example: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """
    Export `model` (called as `model(**example)`, returning one tensor) to an ONNX file with
    `torch.onnx.export(..., dynamo=True)`: `torch.export` traces the graph, with the batch and
    sequence dimensions left dynamic. (The legacy TorchScript exporter, `dynamo=False`, gave
    MiniLM outputs off by up to 1.1 with transformers 5.) Returns the path.
    """
    if is_quantized(model):
        raise ValueError("torch.ao's dynamic int8 modules do not export to ONNX; export the float "
                         "model and quantize the ONNX file with quantize_onnx_int8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2)
    dynamic = {name: {0: batch, 1: seq} for name in example}
    model = model.eval()
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, kwargs=dict(example), dynamo=True, dynamic_shapes=dynamic,
                                        input_names=list(example), output_names=["logits"], verbose=False)
        except Exception as error:  # torch.export's messages are long; say what to do first
            raise RuntimeError(f"torch.onnx.export could not trace {type(model).__name__}: export a module "
                               f"whose forward takes tensors and returns one tensor (wrap a Hugging Face "
                               f"model in LogitsOnly), and avoid Python control flow on tensor values and "
                               f"operators that ONNX has no translation for. "
                               f"The exporter said: {str(error)[:500]}") from error
    program.save(str(path))
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress and torch's logger warns about torchvision: silence both."""
    import logging

    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch._dynamo", "torch.export")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _onnx_ops(path: str | os.PathLike) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def quantize_onnx_int8(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """
    onnxruntime's dynamic int8 quantization of an ONNX file: the weights of every matrix
    product (and the embedding tables) become int8 with a scale; activations are quantized on
    the fly. Returns the new file's path.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized_ops = {"DynamicQuantizeLinear", "MatMulInteger", "DequantizeLinear", "QLinearMatMul"}
    if _onnx_ops(source) & quantized_ops:
        raise ValueError(f"{source} is already quantized; quantize the float32 export instead")
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing": shape inference adds nothing here
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(target)


class OnnxModel:
    """
    An ONNX file run by onnxruntime on the CPU with `threads` intra-op threads, called like the
    PyTorch model: `model(input_ids=..., attention_mask=...)` returns the logits as a tensor.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False  # give each run's buffers back: less memory, same speed here
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise KeyError(f"the ONNX model needs inputs {self.input_names}; missing {sorted(missing)}")
        feed = {name: inputs[name].cpu().numpy() for name in self.input_names}
        return torch.from_numpy(self.session.run(None, feed)[0])


# ------------------------------------------------------------------------------ pruning


def _encoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and ".layer." in f".{name}"]


def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """
    Global magnitude pruning (in place): zero the `amount` fraction of the encoder layers'
    linear weights with the smallest absolute values, ranked across all layers together
    (`torch.nn.utils.prune.global_unstructured`), then make the zeros permanent. The embeddings
    and the task head are left alone. Returns `model`.
    """
    if not 0 <= amount < 1:
        raise ValueError(f"amount is the fraction of weights to zero, in [0, 1); got {amount!r}")
    from torch.nn.utils import prune

    linears = _encoder_linears(model)
    if not linears:
        raise ValueError("found no linear layers under a `.layer.` module (a BERT encoder's blocks) to prune")
    params = [(m, "weight") for _, m in linears]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    """The fraction of exact zeros among the encoder layers' linear weights."""
    weights = [m.weight for _, m in _encoder_linears(model)]
    return float(sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights))


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if hasattr(m, "attention") and hasattr(m.attention, "self")]
    if not layers:
        raise ValueError("this model has no BERT-style attention layers (layer.attention.self / .output)")
    return layers


def head_importance(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """
    Importance of every attention head, `(layers, heads)`: $|\\partial L / \\partial \\xi_h|$ summed
    over `batches`, where $\\xi_h$ would scale head $h$'s output (Michel et al., "Are sixteen heads
    really better than one?", 2019). Since head $h$ enters the loss only through its columns
    $W_h$ of the attention output projection, $\\partial L/\\partial \\xi_h = \\sum W_h \\odot
    \\partial L / \\partial W_h$: one backward pass gives every head's score.
    """
    layers = _attention_layers(model)
    scores = torch.zeros(len(layers), layers[0].attention.self.num_attention_heads)
    head_dim = layers[0].attention.self.attention_head_size
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            compute_loss(model, batch).backward()
            for i, layer in enumerate(layers):
                dense = layer.attention.output.dense.weight
                product = (dense * dense.grad).view(dense.shape[0], -1, head_dim).sum(dim=(0, 2))
                scores[i, : product.numel()] += product.abs().detach()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


@torch.no_grad()
def prune_heads(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> nn.Module:
    """
    Remove attention heads (in place): `heads` maps a layer index to the heads to drop. Their
    rows of the query, key and value projections and their columns of the output projection are
    cut out, so the model is smaller and each layer does less work. Returns `model`.
    """
    layers = _attention_layers(model)
    for index, drop in heads.items():
        if not 0 <= index < len(layers):
            raise ValueError(f"layer {index} does not exist: the model has layers 0..{len(layers) - 1}")
        attn = layers[index].attention
        n, d = attn.self.num_attention_heads, attn.self.attention_head_size
        bad = [h for h in drop if not 0 <= h < n]
        if bad or len(set(drop)) >= n:
            raise ValueError(f"layer {index} has heads 0..{n - 1}: cannot drop {sorted(drop)} "
                             f"(each layer keeps at least one head)")
        keep = torch.tensor([h * d + j for h in range(n) if h not in set(drop) for j in range(d)])
        for name in ("query", "key", "value"):
            old = getattr(attn.self, name)
            new = nn.Linear(old.in_features, len(keep), bias=old.bias is not None)
            new.weight.copy_(old.weight[keep])
            if old.bias is not None:
                new.bias.copy_(old.bias[keep])
            setattr(attn.self, name, new)
        old = attn.output.dense
        new = nn.Linear(len(keep), old.out_features, bias=old.bias is not None)
        new.weight.copy_(old.weight[:, keep])
        if old.bias is not None:
            new.bias.copy_(old.bias)
        attn.output.dense = new
        attn.self.num_attention_heads = n - len(set(drop))
        attn.self.all_head_size = len(keep)
    return model


# ------------------------------------------------------------------------------ distillation


def student_from_teacher(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """
    A copy of a `finetuning.SequenceClassifier` that keeps only the encoder layers `layers` of
    the teacher (DistilBERT's initialisation: every other layer), with the same embeddings and
    task head.
    """
    encoder = teacher.encoder.encoder.layer
    bad = [i for i in layers if not 0 <= i < len(encoder)]
    if bad or not layers:
        raise ValueError(f"the teacher has layers 0..{len(encoder) - 1}; got {list(layers)}")
    student = copy.deepcopy(teacher)
    student.encoder.encoder.layer = nn.ModuleList(copy.deepcopy(encoder[i]) for i in layers)
    student.encoder.config.num_hidden_layers = len(layers)
    return student


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor | None = None, temperature: float = 2.0,
                      alpha: float = 0.5) -> torch.Tensor:
    """
    Hinton et al.'s loss: $\\alpha\\, T^2\\, \\mathrm{KL}(p_T^{teacher} \\,\\|\\, p_T^{student}) +
    (1 - \\alpha)\\, \\mathrm{CE}(\\text{student}, y)$, with $p_T = \\mathrm{softmax}(z / T)$. The $T^2$
    keeps the soft term's gradients on the scale of the hard one's as $T$ changes. Without
    `labels`, only the soft term (alpha = 1).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha weighs the soft loss against the hard one and must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (same classes, same batch)")
    soft = F.kl_div(F.log_softmax(student_logits.float() / temperature, -1),
                    F.log_softmax(teacher_logits.float() / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature**2
    if labels is None:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


class Distiller(nn.Module):
    """
    The student with the distillation loss, trainable by the course `Trainer`: each batch
    carries `teacher_logits` (computed once, before training) next to `input_ids`,
    `attention_mask` and `labels`.
    """

    def __init__(self, student: nn.Module, temperature: float = 2.0, alpha: float = 0.5):
        super().__init__()
        self.student, self.temperature, self.alpha = student, temperature, alpha

    def forward(self, input_ids, attention_mask=None, labels=None, teacher_logits=None, **_):
        if teacher_logits is None:
            raise KeyError("a distillation batch needs 'teacher_logits': run the teacher over the "
                           "training texts first and add its logits to the encodings")
        logits = self.student(input_ids=input_ids, attention_mask=attention_mask).logits
        return distillation_loss(logits, teacher_logits, labels, self.temperature, self.alpha)


# ------------------------------------------------------------------------------ generation


def generation_speed(model: nn.Module, prompt_ids: Sequence[int], batch_sizes: Sequence[int],
                     new_tokens: int, use_cache: bool = True, repeats: int = 1) -> pd.DataFrame:
    """
    Greedy generation of exactly `new_tokens` tokens after the same prompt, `batch` copies at a
    time, with a Hugging Face causal LM's `generate`: seconds (best of `repeats`), generated
    tokens per second, and the first row's new tokens (to check that batching and the cache do
    not change the answer). Without the cache (`use_cache=False`) every step runs the whole
    sequence again, as `generate_tokens(use_cache=False)` of notebook 02 does.
    """
    if new_tokens < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"need new_tokens >= 1 and batch sizes >= 1, got {new_tokens}, {list(batch_sizes)}")
    rows = []
    ids = torch.tensor([list(prompt_ids)])
    for batch in batch_sizes:
        best, out = math.inf, None
        inputs = ids.repeat(batch, 1)
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache,
                                     pad_token_id=model.config.eos_token_id)
            best = min(best, time.perf_counter() - start)
        rows.append({"batch": batch, "KV cache": use_cache, "seconds": best,
                     "tokens per second": batch * new_tokens / best,
                     "new tokens": tuple(out[0, ids.shape[1]:].tolist())})
    return pd.DataFrame(rows)


def cache_bytes(past_key_values: Any) -> int:
    """Bytes held by a Hugging Face KV cache (a `DynamicCache` or the older tuple of (key, value) pairs)."""
    layers = getattr(past_key_values, "layers", None)
    pairs = ([(layer.keys, layer.values) for layer in layers] if layers is not None else list(past_key_values))
    return sum(t.numel() * t.element_size() for pair in pairs for t in pair if t is not None)
