"""
# Parameter-efficient fine-tuning

Full fine-tuning updates every weight of the pretrained model: one full-size copy of the model
per task, and optimizer state (gradient plus two Adam moments) for every weight while training.
*Parameter-efficient* methods freeze the pretrained weights $W_0$ and train a small number of new
ones instead. This module builds the common ones from scratch, so each is a few readable lines,
and wraps the `peft` library for the rest:

* **LoRA** (Hu et al., 2021) learns a low-rank update of a weight matrix,
  $W = W_0 + \\frac{\\alpha}{r} B A$ with $A \\in \\mathbb{R}^{r \\times k}$,
  $B \\in \\mathbb{R}^{d \\times r}$ and $r \\ll \\min(d, k)$. $B$ starts at zero, so at step 0
  the model is exactly the pretrained one. After training, $\\frac{\\alpha}{r}BA$ can be added
  into $W_0$: the merged model has the original architecture and no extra inference cost.
* **Bottleneck adapters** (Houlsby et al., 2019; Pfeiffer et al., 2020) insert a small
  residual MLP, $h \\leftarrow h + W_{up}\\,\\sigma(W_{down} h)$, after a sub-layer; Houlsby
  puts one after the attention block and one after the feed-forward block of every layer,
  Pfeiffer only after the feed-forward block.
* **Prefix tuning** (Li & Liang, 2021) prepends trainable key/value vectors to every
  attention layer; **IA3** (Liu et al., 2022) learns one scale per channel of keys, values and
  feed-forward activations; **AdaLoRA** (Zhang et al., 2023) is LoRA in SVD form whose ranks
  are moved during training to the matrices that need them. These three come from `peft`.

Then it compares them all on one task with the course's one training loop
(`llm_tutorial.trainer.Trainer`): trainable parameters, accuracy, time, memory and checkpoint
size, and saves or loads only the trained weights of an adapter as safetensors.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from llm_tutorial import finetuning as ft
from llm_tutorial import pretraining, runtime
from llm_tutorial.trainer import (
    TrainConfig,
    Trainer,
    eval_mode,
    model_device,
    read_safetensors,
)

__all__ = [
    "LoRALinear",
    "BottleneckAdapter",
    "AdaptedLinear",
    "ADAPTER_TARGETS",
    "BERT_ALL_LINEAR",
    "PEFT_METHODS",
    "find_modules",
    "inject_lora",
    "lora_modules",
    "merge_lora",
    "remove_lora",
    "inject_adapters",
    "freeze",
    "unfreeze",
    "parameter_counts",
    "trainable_by_location",
    "training_state_bytes",
    "trainable_state_dict",
    "save_adapter",
    "load_adapter",
    "peft_wrap",
    "copy_lora_into_peft",
    "forward_latencies",
    "Method",
    "standard_methods",
    "compare_methods",
    "summarise_comparison",
]


# ------------------------------------------------------------------------------ LoRA


def _check_rank_alpha(r: int, alpha: float) -> None:
    if not r > 0:
        raise ValueError(f"LoRA rank r must be a positive int, got {r!r}")
    if not alpha > 0:  # alpha = 0 scales the update, and B's gradient, to zero: nothing learns
        raise ValueError(f"LoRA alpha must be a positive number (often 2 * r), got {alpha!r}")


class LoRALinear(nn.Module):
    """
    ## A linear layer with a low-rank update

    Wraps a frozen `nn.Linear` $y = W_0 x + b$ and adds a trainable low-rank path:

    $$y = W_0 x + b + \\frac{\\alpha}{r}\\, B (A x)$$

    $A$ ($r \\times k$) gets the same Kaiming-uniform initialisation as an `nn.Linear` and $B$
    ($d \\times r$) starts at zero, so the wrapped layer computes exactly what the original did
    until $B$ learns something. Computing $B(Ax)$ rather than $(BA)x$ never forms the
    $d \\times k$ update: $r(d + k)$ multiply-adds per token instead of $dk$.

    $\\alpha / r$ keeps the size of the update roughly independent of $r$, so a learning rate
    tuned at one rank works at another. Dropout, if any, applies to the input of the low-rank
    path only.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_rank_alpha(r, alpha)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base = base
        base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype,
                                               device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype,
                                               device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """The update $\\frac{\\alpha}{r} B A$, the same shape as the base weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with weight $W_0 + \\frac{\\alpha}{r} B A$: same outputs, no
        extra cost. Its parameters are frozen, like the base layer's."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        return linear.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}"


def _suffixes(names: Sequence[str]) -> list[str]:
    """Every dotted suffix of every name: 'a.b.c' gives 'c', 'b.c' and 'a.b.c'."""
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[i:]) for i in range(len(parts)))
    return sorted(out)


def find_modules(
    model: nn.Module,
    target_modules: str | Sequence[str],
    module_types: tuple[type, ...] = (nn.Linear,),
) -> list[str]:
    """
    ## Choosing where to adapt

    The names of the modules of `model` (of `module_types`, `nn.Linear` by default) that
    `target_modules` selects, with the same rules as `peft`:

    * a **list** of names selects every module whose full name is one of them or ends with
      `"." + name`: `["query", "value"]` picks `encoder.layer.0.attention.self.query`, ...;
    * a single **string** is a regular expression that must match the whole name:
      `r".*layer\\.\\d+\\.output\\.dense"` picks the feed-forward output of every layer but not
      `attention.output.dense`.

    A name that selects nothing is almost always a typo, so it is an error that lists the
    closest names the model does have.
    """
    candidates = [name for name, module in model.named_modules()
                  if name and isinstance(module, module_types)]
    kind = "/".join(t.__name__ for t in module_types)
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as error:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regular "
                             f"expression: {error}") from None
        found = [name for name in candidates if pattern.fullmatch(name)]
        if not found:
            raise ValueError(f"the regular expression {target_modules!r} matches no {kind} module "
                             f"(it must match the whole name). Some names: {candidates[:4]}")
        return found
    if not target_modules:  # an empty list would adapt nothing, silently
        raise ValueError("target_modules must be a non-empty list of module names, or one "
                         "regular expression as a string")
    found, suffixes = [], _suffixes(candidates)
    for target in target_modules:
        hits = [n for n in candidates if n == target or n.endswith("." + target)]
        if not hits:
            close = difflib.get_close_matches(target, suffixes, n=5, cutoff=0.5)
            others = [n for n, m in model.named_modules()
                      if n and (n == target or n.endswith("." + target))]
            why = (f"; {others[0]!r} has that name but is a {type(model.get_submodule(others[0])).__name__}, "
                   f"not a {kind}" if others else "")
            raise ValueError(
                f"target module {target!r} matches no {kind} module of the model{why}. "
                f"Close matches: {close or suffixes[:5]}"
            )
        found += [n for n in hits if n not in found]
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject_lora(
    model: nn.Module,
    target_modules: str | Sequence[str],
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
) -> list[str]:
    """
    Replace every `nn.Linear` that `target_modules` selects (see `find_modules`) by a
    `LoRALinear` around it, in place, and return their names. Only the wrapped layers are
    frozen: call `freeze(model)` first to train nothing but the new $A$ and $B$ (and
    `unfreeze` a task head, if there is one).
    """
    _check_rank_alpha(r, alpha)
    names = find_modules(model, target_modules)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every `LoRALinear` in `model`, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> int:
    """Replace every `LoRALinear` by its merged `nn.Linear`, in place; return how many.
    The model is then the original architecture again, with updated weights."""
    found = lora_modules(model)
    if not found:
        raise ValueError("the model has no LoRALinear layers to merge; call inject_lora first")
    for name, module in found.items():
        _replace(model, name, module.merged())
    return len(found)


def remove_lora(model: nn.Module) -> int:
    """Undo `inject_lora` without merging: put the original linear layers back (the LoRA
    weights are discarded); return how many were removed (0 for a model without LoRA)."""
    found = lora_modules(model)
    for name, module in found.items():
        _replace(model, name, module.base)
    return len(found)


# ------------------------------------------------------------------------------ adapters


class BottleneckAdapter(nn.Module):
    """
    ## A bottleneck adapter

    $$h \\leftarrow h + W_{up}\\, \\mathrm{GELU}(W_{down} h + b_{down}) + b_{up}$$

    $W_{down}$ projects the $d$-dimensional hidden state down to `bottleneck` dimensions and
    $W_{up}$ back up. $W_{up}$ and $b_{up}$ start at zero, so a new adapter is the identity
    function and the pretrained model's behaviour is where training starts from.
    """

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class AdaptedLinear(nn.Module):
    """A frozen `nn.Linear` followed by a `BottleneckAdapter` on its output. In a BERT
    layer, wrapping the output projection of a sub-layer puts the adapter just before the
    residual connection and LayerNorm, where Houlsby et al. place it."""

    def __init__(self, base: nn.Linear, bottleneck: int) -> None:
        super().__init__()
        adapter = BottleneckAdapter(base.out_features, bottleneck)
        self.base = base.requires_grad_(False)
        self.adapter = adapter.to(device=base.weight.device, dtype=base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


# Where the two adapter designs go in a BERT layer (names as in Hugging Face's BertModel).
ADAPTER_TARGETS = {
    "houlsby": r".*(attention\.output|layer\.\d+\.output)\.dense",  # after attention and FFN
    "pfeiffer": r".*layer\.\d+\.output\.dense",  # after the feed-forward block only
}


def inject_adapters(
    model: nn.Module, target_modules: str | Sequence[str] = ADAPTER_TARGETS["houlsby"],
    bottleneck: int = 32,
) -> list[str]:
    """Put a `BottleneckAdapter` after every `nn.Linear` that `target_modules` selects (in
    place); return their names. Use `ADAPTER_TARGETS["houlsby"]` or `["pfeiffer"]` for BERT."""
    names = find_modules(model, target_modules)
    for name in names:
        _replace(model, name, AdaptedLinear(model.get_submodule(name), bottleneck))
    return names


# ------------------------------------------------------------------------------ bookkeeping


def freeze(module: nn.Module) -> nn.Module:
    """Set `requires_grad=False` on every parameter of `module`; return it."""
    return module.requires_grad_(False)


def unfreeze(module: nn.Module) -> nn.Module:
    """Set `requires_grad=True` on every parameter of `module`; return it."""
    return module.requires_grad_(True)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """`{"trainable": ..., "total": ...}` parameter counts (`parameters()` yields a tensor
    shared by two modules, such as tied embeddings, once)."""
    return {"trainable": pretraining.count_parameters(model, trainable_only=True),
            "total": pretraining.count_parameters(model)}


def trainable_by_location(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of a BERT-style model grouped by where they sit: `attention`,
    `feed-forward`, `LayerNorm`, `embeddings`, `prefix` (virtual tokens), `head`, `other`."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head.") or ".head." in name:
            where = "head"
        elif "prompt_encoder" in name or "prefix" in name:
            where = "prefix"
        elif "LayerNorm" in name or "layer_norm" in name:
            where = "LayerNorm"
        elif ".attention." in name or "attn" in name:
            where = "attention"
        elif "intermediate" in name or ".output." in name or "mlp" in name:
            where = "feed-forward"
        elif "embed" in name:
            where = "embeddings"
        else:
            where = "other"
        out[where] = out.get(where, 0) + p.numel()
    return out


def training_state_bytes(model: nn.Module) -> int:
    """
    Bytes that training with AdamW keeps besides activations: every weight, plus for each
    *trainable* weight its gradient and Adam's two moment estimates. This is the part of
    training memory that parameter-efficient methods shrink; activations are about the same
    for every method, since the forward pass still runs through the whole model.
    """
    return sum(p.numel() * p.element_size() * (4 if p.requires_grad else 1)
               for p in model.parameters())


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of `model`, by name, detached and contiguous on the CPU:
    all an adapter checkpoint has to store."""
    return {name: p.detach().cpu().contiguous()
            for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, path: str | os.PathLike, config: Mapping[str, Any] | None = None
                 ) -> Path:
    """
    Save only the trainable parameters of `model` (the adapter, and the task head if it is
    trainable) to a safetensors file, with `config` (how the adapter was injected: method,
    rank, targets, ...) as JSON metadata. The frozen pretrained weights are not copied:
    they are the same for every task. Returns the path.
    """
    state = trainable_state_dict(model)
    if not state:
        raise ValueError("the model has no trainable parameters: there is no adapter to save")
    try:
        meta = json.dumps(dict(config or {}), sort_keys=True)
    except TypeError as error:
        raise TypeError(f"config must be JSON-serialisable ({error})") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "llm_tutorial.adapter", "config": meta})
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """
    Load an adapter saved by `save_adapter` into `model`, which must already have the same
    adapter injected (same method, targets and rank), and return its config. Nothing is
    unpickled. Every tensor in the file must exist in the model with the same shape, and
    every trainable parameter of the model must be in the file; otherwise a `ValueError`
    says what differs and which config the adapter was trained with.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path, "adapter", "save_adapter")
    config = json.loads(meta.get("config", "{}"))
    params = dict(model.named_parameters())
    hint = f"Inject the adapter the file was trained with first: {config or 'no config saved'}"
    unknown = [k for k in tensors if k not in params]
    missing = [k for k, p in params.items() if p.requires_grad and k not in tensors]
    if unknown or missing:
        raise ValueError(f"{path} does not match the model's adapter: tensors only in the file "
                         f"{unknown[:3]}, trainable parameters only in the model {missing[:3]}. " + hint)
    wrong = [f"{k}: file {tuple(t.shape)} vs model {tuple(params[k].shape)}"
             for k, t in tensors.items() if t.shape != params[k].shape]
    if wrong:
        raise ValueError(f"adapter shapes do not fit the model ({'; '.join(wrong[:3])}). " + hint)
    with torch.no_grad():
        for key, tensor in tensors.items():
            params[key].copy_(tensor.to(params[key].device, params[key].dtype))
    return config


# ------------------------------------------------------------------------------ peft


PEFT_METHODS = ("lora", "prefix", "ia3", "adalora")


def peft_wrap(encoder: nn.Module, method: str, **kwargs: Any) -> nn.Module:
    """
    Wrap a Hugging Face encoder (BERT family) with one of `peft`'s methods and return the
    `PeftModel`, whose only trainable parameters are the method's. `kwargs` override the
    defaults below (names as in `peft`'s config classes):

    * `"lora"`: `LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"])`;
    * `"prefix"`: `PrefixTuningConfig(num_virtual_tokens=16)`: 16 trainable key and value
      vectors per layer;
    * `"ia3"`: `IA3Config` scaling keys, values and the feed-forward output;
    * `"adalora"`: `AdaLoraConfig(init_r=12, target_r=8)` on all attention projections; it
      needs `total_step`, and `update_and_allocate` after every optimizer step (see
      `Method.on_optimizer_step` / the trainer's `on_optimizer_step`).
    """
    import peft

    defaults = {
        "lora": dict(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0),
        "prefix": dict(task_type="FEATURE_EXTRACTION", num_virtual_tokens=16),
        "ia3": dict(target_modules=["key", "value", "output.dense"],
                    feedforward_modules=["output.dense"]),
        "adalora": dict(init_r=12, target_r=8, lora_alpha=16,
                        target_modules=["query", "key", "value", "attention.output.dense"]),
    }
    if method not in defaults:
        raise KeyError(f"unknown peft method {method!r}; choose one of {PEFT_METHODS}")
    config_cls = {"lora": peft.LoraConfig, "prefix": peft.PrefixTuningConfig,
                  "ia3": peft.IA3Config, "adalora": peft.AdaLoraConfig}[method]
    options = {**defaults[method], **kwargs}
    return peft.get_peft_model(encoder, config_cls(**options))


def copy_lora_into_peft(ours: nn.Module, peft_model: nn.Module, adapter_name: str = "default"
                        ) -> int:
    """Copy the $A$ and $B$ of every `LoRALinear` in `ours` into the matching `peft` LoRA
    layer of `peft_model` (same module names, under `peft`'s `base_model.model.` prefix);
    return how many layers were copied. Used to check the two compute the same function."""
    theirs = dict(peft_model.named_modules())
    copied = 0
    for name, module in lora_modules(ours).items():
        target = theirs.get(f"base_model.model.{name}")
        if target is None or not hasattr(target, "lora_A"):
            raise KeyError(f"peft model has no LoRA layer for {name!r}: build it with the same "
                           f"target_modules")
        if target.r[adapter_name] != module.r or target.scaling[adapter_name] != module.scaling:
            raise ValueError(f"{name}: peft has r={target.r[adapter_name]}, scaling="
                             f"{target.scaling[adapter_name]}; ours r={module.r}, "
                             f"scaling={module.scaling}. Use the same r and alpha")
        with torch.no_grad():
            target.lora_A[adapter_name].weight.copy_(module.lora_A)
            target.lora_B[adapter_name].weight.copy_(module.lora_B)
        copied += 1
    return copied


@torch.no_grad()
def forward_latencies(models: Mapping[str, nn.Module], inputs: Mapping[str, torch.Tensor],
                      repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds of one forward pass of each of `models` on `inputs` (eval mode, no
    gradients), timed interleaved with `runtime.compare_latency`: one pass of each model in
    turn, `repeats` rounds, so that a machine that slows down meanwhile slows them all alike."""
    calls = {}
    for name, model in models.items():
        device = model_device(model)
        batch = {k: v.to(device) for k, v in inputs.items()}

        def call(model=model, batch=batch, device=device):
            model(**batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # a CUDA call returns before the GPU is done
        calls[name] = call
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(eval_mode(model))
        timed = runtime.compare_latency(calls, runs=repeats, warmup=warmup, rounds=repeats)
    return {name: t["median_ms"] / 1000 for name, t in timed.items()}


# ------------------------------------------------------------------------------ the comparison


@dataclass(frozen=True)
class Method:
    """
    One way to fine-tune a `finetuning.SequenceClassifier`.

    `prepare(model, max_steps)` changes the freshly loaded model in place: it freezes what
    stays fixed and adds what is trained; it may return an `on_optimizer_step` hook for the
    trainer (AdaLoRA does). The task head is always trained, at `HEAD_LR` for every method:
    it starts from random numbers whatever the method, and a head that trains at a small
    rate would make a method look worse than its encoder update is. `lr` is the method's
    learning rate for everything else it trains: small for full fine-tuning, larger for the
    few new weights of an adapter.
    `full_checkpoint` means the method changes every weight, so its checkpoint is the whole
    model.
    """

    name: str
    prepare: Callable[[nn.Module, int], Callable[[nn.Module, int], None] | None]
    lr: float
    config: Mapping[str, Any] = field(default_factory=dict)
    full_checkpoint: bool = False


# The fresh classification head's learning rate, the same for every method (the probe's rate).
HEAD_LR = 3e-3


def _prepare_full(model: nn.Module, steps: int) -> None:
    unfreeze(model)


def _prepare_probe(model: nn.Module, steps: int) -> None:
    freeze(model.encoder)
    unfreeze(model.head)


def _prepare_lora(r: int, alpha: float, targets: Sequence[str]):
    def prepare(model: nn.Module, steps: int) -> None:
        freeze(model)
        inject_lora(model.encoder, list(targets), r=r, alpha=alpha)
        unfreeze(model.head)
    return prepare


def _prepare_adapters(style: str, bottleneck: int):
    def prepare(model: nn.Module, steps: int) -> None:
        freeze(model)
        inject_adapters(model.encoder, ADAPTER_TARGETS[style], bottleneck)
        if style == "houlsby":  # Houlsby et al. also train the LayerNorms
            for module in model.encoder.modules():
                if isinstance(module, nn.LayerNorm):
                    unfreeze(module)
        unfreeze(model.head)
    return prepare


def _prepare_peft(method: str, **kwargs: Any):
    def prepare(model: nn.Module, steps: int):
        freeze(model)
        options = dict(kwargs)
        if method == "adalora":
            options.update(total_step=steps, tinit=max(1, steps // 10),
                           tfinal=max(1, steps // 5), deltaT=max(1, steps // 20))
        model.encoder = peft_wrap(model.encoder, method, **options)
        unfreeze(model.head)
        if method == "adalora":
            wrapped = model.encoder

            def reallocate(_model: nn.Module, step: int) -> None:
                wrapped.base_model.update_and_allocate(step)

            return reallocate
        return None
    return prepare


# Every linear layer of a BERT layer: attention projections and the feed-forward block.
BERT_ALL_LINEAR = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                   "output.dense")


def standard_methods(lora_ranks: Sequence[int] = (1, 4, 8, 16),
                     all_linear_ranks: Sequence[int] = (8,), bottleneck: int = 32
                     ) -> dict[str, Method]:
    """The methods of notebook 06, with learning rates that work for MiniLM on short texts:
    full fine-tuning, a linear probe (head only), LoRA at each of `lora_ranks` on the query
    and value projections (alpha = 2r, as in the LoRA paper), LoRA at each of
    `all_linear_ranks` on every linear layer (as QLoRA recommends), Houlsby and Pfeiffer
    adapters, and `peft`'s prefix tuning, IA3 and AdaLoRA."""
    methods = {
        "full fine-tuning": Method("full fine-tuning", _prepare_full, 1e-4, {"method": "full"},
                                   full_checkpoint=True),
        "linear probe (head only)": Method("linear probe (head only)", _prepare_probe, 3e-3,
                                           {"method": "probe"}),
    }
    for r in lora_ranks:
        name = f"LoRA r={r}"
        config = {"method": "lora", "r": r, "alpha": 2 * r, "target_modules": ["query", "value"]}
        methods[name] = Method(name, _prepare_lora(r, 2 * r, ("query", "value")), 1e-3, config)
    for r in all_linear_ranks:
        name = f"LoRA r={r}, all linear"
        config = {"method": "lora", "r": r, "alpha": 2 * r, "target_modules": list(BERT_ALL_LINEAR)}
        methods[name] = Method(name, _prepare_lora(r, 2 * r, BERT_ALL_LINEAR), 1e-3, config)
    for style in ("houlsby", "pfeiffer"):
        name = f"adapters ({style.capitalize()}, {bottleneck})"
        methods[name] = Method(name, _prepare_adapters(style, bottleneck), 1e-3,
                               {"method": "adapter", "style": style, "bottleneck": bottleneck})
    methods["prefix tuning (16)"] = Method("prefix tuning (16)", _prepare_peft("prefix"), 3e-3,
                                           {"method": "prefix", "num_virtual_tokens": 16})
    methods["IA3"] = Method("IA3", _prepare_peft("ia3"), 3e-3, {"method": "ia3"})
    methods["AdaLoRA (12→8)"] = Method("AdaLoRA (12→8)", _prepare_peft("adalora"), 1e-3,
                                       {"method": "adalora", "init_r": 12, "target_r": 8})
    return methods


def _checkpoint_bytes(model: nn.Module, method: Method, directory: Path) -> int:
    path = directory / "checkpoint.safetensors"
    if method.full_checkpoint:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(path))
    else:
        save_adapter(model, path, method.config)
    size = path.stat().st_size
    path.unlink()
    return size


def compare_methods(
    methods: Mapping[str, Method],
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str],
    test_labels: Sequence[int],
    num_labels: int,
    seeds: Sequence[int] = (0, 1, 2),
    max_steps: int = 100,
    batch_size: int = 16,
    max_length: int = 32,
    num_layers: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    head_lr: float = HEAD_LR,
) -> pd.DataFrame:
    """
    ## The comparison

    For every method and seed: load MiniLM with a fresh head (seeded), `prepare` it, train
    `max_steps` steps with the course trainer (same data order, warm-up and schedule for all),
    and measure test accuracy, trainable and total parameters, training time, the training
    state in memory (`training_state_bytes`), peak GPU memory (on CUDA; `NaN` elsewhere) and
    the size of the checkpoint that the method needs to store (the trained weights only;
    the whole model for full fine-tuning), and where the trainable parameters sit
    (`trainable_by_location`). `num_layers` keeps only MiniLM's bottom layers (a cheaper
    model for quick runs). The fresh head trains at `head_lr` in every method. Returns one row
    per (method, seed).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rows, encoded = [], None
    full_params = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, method in methods.items():
            for seed in seeds:
                torch.manual_seed(seed)
                model, tokenizer = ft.load_classifier(num_labels, num_layers=num_layers)
                if encoded is None:
                    encoded = (ft.encode(tokenizer, train_texts, max_length, train_labels),
                               ft.encode(tokenizer, test_texts, max_length, test_labels))
                    full_params = parameter_counts(model)["total"]
                hook = method.prepare(model, max_steps)
                model.to(device)
                counts = parameter_counts(model)
                config = TrainConfig(max_steps=max_steps, lr=method.lr, lr_by_prefix={"head.": head_lr},
                                     warmup_steps=0.1,
                                     progress=progress, desc=name, log_every=max_steps)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                trainer = Trainer(model, ft.batches(encoded[0], batch_size, shuffle=True, seed=seed),
                                  config, on_optimizer_step=hook)
                start = time.perf_counter()
                trainer.train()
                seconds = time.perf_counter() - start
                peak = (torch.cuda.max_memory_allocated(device) / 2**20
                        if device.type == "cuda" else float("nan"))
                acc = ft.accuracy(ft.predict_logits(model, encoded[1]), encoded[1]["labels"])
                rows.append({
                    "method": name, "seed": seed, "accuracy": acc,
                    "trainable": counts["trainable"], "total": counts["total"],
                    "trainable %": 100 * counts["trainable"] / full_params,
                    "seconds": seconds,
                    "train state MB": training_state_bytes(model) / 2**20,
                    "peak GPU MB": peak,
                    "checkpoint MB": _checkpoint_bytes(model, method, Path(tmp)) / 2**20,
                    "final train loss": float(trainer.history["train_loss"].iloc[-1]),
                    "where": trainable_by_location(model),
                })
                del model, trainer
    return pd.DataFrame(rows)


def summarise_comparison(results: pd.DataFrame) -> pd.DataFrame:
    """One row per method (in the order run): accuracy mean ± std over seeds, trainable
    parameters (count and % of full fine-tuning), mean training seconds, training-state and
    peak GPU memory, checkpoint size (MB and % of the full checkpoint, when full fine-tuning
    was run)."""
    order = list(dict.fromkeys(results["method"]))
    g = results.groupby("method", sort=False)
    table = pd.DataFrame({
        "accuracy": g["accuracy"].mean(),
        "± std": g["accuracy"].std(ddof=0),
        "trainable": g["trainable"].first(),
        "trainable %": g["trainable %"].first(),
        "seconds": g["seconds"].mean(),
        "train state MB": g["train state MB"].first(),
        "peak GPU MB": g["peak GPU MB"].max(),
        "checkpoint MB": g["checkpoint MB"].first(),
        "seeds": g["seed"].count(),
    }).loc[order]
    full = results.loc[results["trainable %"] >= 99.999, "checkpoint MB"]
    if len(full):
        table["checkpoint % of full"] = 100 * table["checkpoint MB"] / full.iloc[0]
    return table


def load_recorded_comparison(path: str | os.PathLike | None = None
                             ) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows (one per method and seed) and provenance (`command`, `hardware`, `date`,
    `commit`...) of a comparison recorded by `benchmarks/peft_comparison.py`; by default the
    `full`-profile run shipped with the course (`assets.recorded_results("peft_comparison")`).
    `summarise_comparison` turns the rows into the notebook's table."""
    from llm_tutorial import assets

    return assets.read_recorded_results(path if path is not None else "peft_comparison")

