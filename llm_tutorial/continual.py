"""
# Continual learning: a stream of tasks, and what the model forgets

A model that keeps learning meets its tasks one after another, and the data of a finished task
is gone (or mostly gone) when the next one arrives. Fine-tune on task 2 and the weights that
solved task 1 move: **catastrophic forgetting** (McCloskey & Cohen, 1989). This module measures
it and implements the three families of remedies, at the same number of training steps:

* **rehearsal**: keep a few old examples in a `ReservoirBuffer` (every example seen so far has
  the same chance of being in it) and mix them into each new batch;
* **regularisation**: Elastic Weight Consolidation (Kirkpatrick et al., 2017) pulls each weight
  back towards its value after the old task, in proportion to how much the old task's
  log-likelihood depends on it: the diagonal of the Fisher information (`classifier_fisher`,
  `diagonal_fisher`, `EWCPenalty`);
* **parameter isolation**: one small adapter per task, the shared weights frozen, the task's own
  adapter chosen at test time; nothing shared changes, so nothing is forgotten (`method
  "adapters"`), but the task must be known when the model is used.

Training on every task seen so far together (`"joint"`) is the upper bound they are compared
with.

## The accuracy matrix and the three numbers

After training on task $i$ the model is tested on every task $j$: $R_{i,j}$, a $T \\times T$
matrix; $b_j$ is the untrained model's accuracy on task $j$. With the definitions of Lopez-Paz
& Ranzato ("Gradient Episodic Memory for Continual Learning", 2017):

$$\\mathrm{ACC} = \\frac{1}{T}\\sum_{j=1}^{T} R_{T,j}, \\qquad
\\mathrm{BWT} = \\frac{1}{T-1}\\sum_{j=1}^{T-1} \\big(R_{T,j} - R_{j,j}\\big), \\qquad
\\mathrm{FWT} = \\frac{1}{T-1}\\sum_{j=2}^{T} \\big(R_{j-1,j} - b_j\\big).$$

Backward transfer (BWT) below zero is forgetting; forward transfer (FWT) is what earlier tasks
did for a task not trained yet. These are the paper's equations. GEM's released code
(facebookresearch/GradientEpisodicMemory, `metrics/metrics.py`) averages over all $T$ tasks
instead, counting the last task's backward transfer and the first task's forward transfer as
zeros, so its numbers are $(T-1)/T$ times these (`tests/test_continual.py` checks both).
avalanche-lib implements them too, but needs torchvision, wandb and tensorboard, which the
course does not install.

## Two scenarios (van de Ven & Tolias, "Three scenarios for continual learning", 2019)

* **task-incremental**: the task is given at test time, so the model only chooses among that
  task's classes (its logits are masked to them);
* **class-incremental**: one head that grows with every task, and at test time the model
  chooses among every class seen so far, without being told the task. Much harder: training on
  new classes alone pushes the old classes' logits down.

`classification_stream` runs either scenario on fixed text embeddings (MiniLM's, notebook 04)
with a small trainable head; `instruction_stream` runs the stream of notebook 07's instruction
families through SmolLM2 with LoRA. Both go through the course's `Trainer`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm_tutorial import peft_methods as pm
from llm_tutorial.trainer import TrainConfig, Trainer, compute_loss

__all__ = [
    "SCENARIOS",
    "METHODS",
    "Task",
    "class_tasks",
    "check_matrix",
    "average_accuracy",
    "backward_transfer",
    "forward_transfer",
    "transfer_metrics",
    "accuracy_matrix",
    "ReservoirBuffer",
    "expected_old_share",
    "classifier_fisher",
    "diagonal_fisher",
    "EWCPenalty",
    "EWCObjective",
    "HeadClassifier",
    "StreamResult",
    "classification_stream",
    "instruction_stream",
    "summarise",
]

SCENARIOS = ("class", "task")
METHODS = ("naive", "replay", "ewc", "adapters", "joint")


# ------------------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class Task:
    """One task of a stream: a name and the class ids it brings."""

    name: str
    classes: tuple[int, ...]


def class_tasks(groups: Sequence[Sequence[int]], label_names: Sequence[str] | None = None) -> list[Task]:
    """
    Split classes into a stream of tasks, one group of class ids per task, in order. Each class
    belongs to one task only: in a class-incremental stream a class that came back in a later
    task would be new data for an old class, another scenario (domain-incremental).
    """
    if len(groups) == 0:
        raise ValueError("the task list is empty: give at least one group of class ids, e.g. "
                         "[[0, 1], [2, 3]]")
    owner: dict[int, int] = {}
    tasks = []
    for t, group in enumerate(groups):
        if len(group) == 0:
            raise ValueError(f"task {t} has no classes: every task needs at least one class id")
        for c in group:
            if c in owner:
                raise ValueError(f"class {c} is in task {owner[c]} and in task {t}: class-incremental "
                                 f"tasks must not share label ids; give each class to one task")
            if label_names is not None and not 0 <= c < len(label_names):
                raise ValueError(f"class id {c} is out of range for {len(label_names)} label names")
            owner[c] = t
        name = "+".join(label_names[c] for c in group) if label_names is not None else f"task {t + 1}"
        tasks.append(Task(name, tuple(int(c) for c in group)))
    return tasks


# ------------------------------------------------------------------------------ metrics


def check_matrix(R: Any) -> np.ndarray:
    """`R` as a float array, after checking it is a square T x T matrix (T >= 2) of finite
    accuracies in [0, 1]."""
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 2:
        raise ValueError(f"R must be a square T x T matrix with T >= 2 tasks (row i: after training "
                         f"task i; column j: tested on task j), got shape {R.shape}")
    if not np.isfinite(R).all() or R.min() < 0 or R.max() > 1:
        raise ValueError("R holds accuracies in [0, 1]; divide percentages by 100")
    return R


def average_accuracy(R: Any) -> float:
    """ACC: the mean accuracy over all tasks after training on the last one (the last row)."""
    R = check_matrix(R)
    return float(R[-1].mean())


def backward_transfer(R: Any) -> float:
    """BWT: how much the last model lost (< 0) or gained (> 0) on each earlier task, compared
    with right after learning it (the diagonal), averaged over the first T - 1 tasks."""
    R = check_matrix(R)
    T = len(R)
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R: Any, b: Any) -> float:
    """FWT: the accuracy on each task j >= 2 just before training on it, minus the untrained
    model's accuracy `b[j]` on it, averaged."""
    R = check_matrix(R)
    b = np.asarray(b, dtype=float)
    if b.shape != (len(R),):
        raise ValueError(f"b holds the untrained model's accuracy on each of the {len(R)} tasks, "
                         f"got shape {b.shape}")
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, len(R))]))


def transfer_metrics(R: Any, b: Any | None = None) -> dict[str, float]:
    """ACC, BWT and (with `b`) FWT of one accuracy matrix."""
    out = {"ACC": average_accuracy(R), "BWT": backward_transfer(R)}
    if b is not None:
        out["FWT"] = forward_transfer(R, b)
    return out


def accuracy_matrix(train_task: Callable[[int], Any], evaluate: Callable[[int], float],
                    n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """
    The protocol that fills R: test every task before training (`b`), then for each task `i`
    in order train on it (`train_task(i)`) and test every task `j` (`evaluate(j)`, an accuracy
    in [0, 1]). Returns `(R, b)`.
    """
    if n_tasks < 2:
        raise ValueError(f"a stream needs at least 2 tasks, got {n_tasks}")
    b = np.array([evaluate(j) for j in range(n_tasks)], dtype=float)
    R = np.zeros((n_tasks, n_tasks))
    for i in range(n_tasks):
        train_task(i)
        R[i] = [evaluate(j) for j in range(n_tasks)]
    return R, b


# ------------------------------------------------------------------------------ rehearsal


class ReservoirBuffer:
    """
    A memory of at most `capacity` items in which, at any moment, every item offered so far is
    present with the same probability `capacity / seen` (reservoir sampling, Vitter's
    algorithm R): the first `capacity` items are kept; the n-th after that replaces a random
    slot with probability `capacity / n`. It needs no knowledge of where tasks begin or end.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 (0 keeps nothing: naive fine-tuning), got {capacity}")
        self.capacity, self.seen = int(capacity), 0
        self.items: list[Any] = []
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        slot = self._rng.randrange(self.seen)  # uniform in [0, seen)
        if slot < self.capacity:
            self.items[slot] = item

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.add(item)

    def sample(self, k: int, rng: random.Random) -> list[Any]:
        """`k` items drawn with replacement (an empty list if the buffer is empty)."""
        return [self.items[rng.randrange(len(self.items))] for _ in range(k)] if self.items else []

    def __len__(self) -> int:
        return len(self.items)


def expected_old_share(task_sizes: Sequence[int], capacity: int) -> list[float]:
    """After a stream of tasks of `task_sizes` examples has gone through a reservoir of
    `capacity`, the expected share of the buffer that each task holds: its share of everything
    seen (every item is equally likely to be kept)."""
    if capacity < 0 or any(n < 0 for n in task_sizes):
        raise ValueError("capacity and task sizes must be >= 0")
    total = sum(task_sizes)
    return [n / total if total else 0.0 for n in task_sizes]


# ------------------------------------------------------------------------------ EWC


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def classifier_fisher(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                      allowed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """
    The diagonal Fisher information of a classifier's trainable parameters, by hand:

    $$F_i = \\frac{1}{N}\\sum_{n=1}^{N} \\sum_{y} p_\\theta(y \\mid x_n)
    \\left(\\frac{\\partial \\log p_\\theta(y \\mid x_n)}{\\partial \\theta_i}\\right)^2,$$

    one backward pass per example and class (the expectation over $y$ is exact: a sum over the
    classes, weighted by the model's own probabilities). With `labels`, the *empirical* Fisher
    instead: the squared gradient of the given label's log-probability. `model(x)` returns
    logits; `allowed`, a `(N, classes)` boolean mask, leaves out the classes an example could
    not be given (probability 0), as the head's training did.
    """
    params = _trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameters: nothing to consolidate")
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    for n in range(len(inputs)):
        logits = model(inputs[n:n + 1]).float()
        if allowed is not None:
            logits = logits.masked_fill(~allowed[n:n + 1], float("-inf"))
        logp = logits.log_softmax(-1)[0]
        if labels is not None:
            weights = {int(labels[n]): 1.0}
        else:
            probs = logp.detach().exp()
            weights = {y: float(probs[y]) for y in range(len(probs)) if probs[y] > 0}
        for y, w in weights.items():
            grads = torch.autograd.grad(logp[y], list(params.values()), retain_graph=True,
                                        allow_unused=True)
            for (name, _), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    fisher[name] += w * g.detach() ** 2
    return {name: f / len(inputs) for name, f in fisher.items()}


def diagonal_fisher(model: nn.Module, examples: Iterable[Any],
                    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = compute_loss
                    ) -> dict[str, torch.Tensor]:
    """
    The empirical diagonal Fisher for any model: the mean over `examples` (one example each)
    of the squared gradient of `loss_fn(model, example)`, the example's negative
    log-likelihood (the course trainer's `compute_loss` by default). For a language model this
    is the gradient of the reference answer's log-likelihood, since its expectation over every
    possible answer cannot be summed.
    """
    params = _trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameters: nothing to consolidate")
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    for example in examples:
        grads = torch.autograd.grad(loss_fn(model, example), list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                fisher[name] += g.detach().float() ** 2
        count += 1
    if count == 0:
        raise ValueError("no examples given: the Fisher is an average over examples of the old task")
    return {name: f / count for name, f in fisher.items()}


@dataclass
class EWCPenalty:
    """
    Elastic Weight Consolidation's penalty, one term per finished task $k$:

    $$\\Omega(\\theta) = \\frac{\\lambda}{2} \\sum_k \\sum_i F_{k,i}\\,(\\theta_i - \\theta^*_{k,i})^2,$$

    $\\theta^*_k$ the weights after task $k$ and $F_k$ their diagonal Fisher. A weight the old
    task's likelihood is flat in (small $F$) may move freely; one it depends on is held.
    """

    lam: float
    anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"lambda must be >= 0 (0 turns EWC off), got {self.lam}")

    def consolidate(self, model: nn.Module, fisher: Mapping[str, torch.Tensor]) -> None:
        """Remember the model's current weights and their Fisher (call after each task)."""
        params = _trainable(model)
        missing = sorted(set(params) - set(fisher))
        if missing:
            raise ValueError(f"the Fisher has no entry for trainable parameters {missing[:3]}: compute "
                             f"it on the same model (classifier_fisher / diagonal_fisher)")
        self.anchors.append(({n: p.detach().clone() for n, p in params.items()},
                             {n: fisher[n].detach().to(params[n].device) for n in params}))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = _trainable(model)
        total = torch.zeros((), device=next(iter(params.values())).device)
        for theta_star, fisher in self.anchors:
            for name, p in params.items():
                total = total + (fisher[name] * (p - theta_star[name]) ** 2).sum()
        return 0.5 * self.lam * total


class EWCObjective(nn.Module):
    """Wraps a model for the course's `Trainer`: the model's own loss plus the EWC penalty."""

    def __init__(self, model: nn.Module, penalty: EWCPenalty) -> None:
        super().__init__()
        self.model, self.penalty = model, penalty

    def forward(self, **batch: Any) -> torch.Tensor:
        return compute_loss(self.model, batch) + self.penalty(self.model)


# ------------------------------------------------------------------------------ a text-topic stream


class HeadClassifier(nn.Module):
    """
    The trainable part of the classification stream: a hidden layer and an output layer over
    fixed sentence embeddings. `forward(x, labels=None, allowed=None)` masks the logits of the
    classes not `allowed` (a `(batch, classes)` boolean mask: the task's classes in the
    task-incremental scenario, the classes seen so far in the class-incremental one) to -inf,
    and returns the cross-entropy when labels are given, the logits otherwise.
    """

    def __init__(self, dim: int, n_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def logits(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.out(F.gelu(self.hidden(x)))
        return logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits(x, allowed)
        return logits if labels is None else F.cross_entropy(logits, labels)


@dataclass
class StreamResult:
    """One run over a stream: the accuracy matrix `R`, the untrained accuracies `b`, the task
    names, the method and its setting, and the wall time; the classification stream's trained
    head (`model`), and the instruction stream's answers (`answers[i, j]`: to task j's test
    records after training task i, i = -1 before any training)."""

    method: str
    setting: float | int | None
    R: np.ndarray
    b: np.ndarray
    tasks: list[str]
    seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)  # the classification stream's last head
    answers: dict[tuple[int, int], list[str]] = field(default_factory=dict, repr=False)  # (i, j): answers
    records: list[list[Any]] = field(default_factory=list, repr=False)  # the instruction stream's test records

    @property
    def metrics(self) -> dict[str, float]:
        return transfer_metrics(self.R, self.b)

    @property
    def label(self) -> str:
        if self.method == "replay":
            return f"replay ({self.setting} examples)"
        if self.method == "ewc":
            return f"EWC (lambda {self.setting:g})"
        return {"naive": "naive fine-tuning", "adapters": "one adapter per task",
                "joint": "joint (all tasks so far)"}[self.method]


def _check_method(method: str, setting: Any, scenario: str | None = None) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "replay" and (setting is None or setting < 0):
        raise ValueError(f"replay needs a buffer size >= 0 as its setting, got {setting!r}")
    if method == "ewc" and (setting is None or not setting >= 0):
        raise ValueError(f"EWC needs lambda >= 0 as its setting, got {setting!r}")
    if method == "adapters" and scenario == "class":
        raise ValueError("one adapter per task needs the task id at test time to pick the adapter: "
                         "use scenario='task' (class-incremental learning would first have to "
                         "infer the task)")
    if scenario is not None and scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {SCENARIOS}")


def _draw(method: str, own: Sequence[Any], pool: Sequence[Any], buffer: ReservoirBuffer,
          batch_size: int, old: int, rng: random.Random) -> list[Any]:
    """One batch's examples, the same for both streams: `joint` draws from every task so far
    (`pool`), `replay` takes `old` of them from the buffer once it holds something, and every
    other method draws from the current task (`own`) only."""
    if method == "joint":
        return [pool[rng.randrange(len(pool))] for _ in range(batch_size)]
    if method == "replay" and len(buffer):
        return [own[rng.randrange(len(own))] for _ in range(batch_size - old)] + buffer.sample(old, rng)
    return [own[rng.randrange(len(own))] for _ in range(batch_size)]


def _allowed(classes: Sequence[int], n_classes: int) -> torch.Tensor:
    mask = torch.zeros(n_classes, dtype=torch.bool)
    mask[list(classes)] = True
    return mask


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable parameters (an adapter, and a head if it trains), by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def _state(model: nn.Module, state: Mapping[str, torch.Tensor] | None):
    """Temporarily load `state` (trainable parameters by name) into `model`."""
    if state is None:
        yield model
        return
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in state}
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)


def classification_stream(
    x: torch.Tensor, y: torch.Tensor, tasks: Sequence[Task], train_idx: np.ndarray,
    test_idx: np.ndarray, scenario: str = "class", method: str = "naive",
    setting: float | int | None = None, steps: int = 60, batch_size: int = 32, lr: float = 3e-3,
    hidden: int = 256, fisher_examples: int = 200, adapter_rank: int = 8, seed: int = 0,
) -> StreamResult:
    """
    Learn `tasks` one after another on fixed embeddings `x` (labels `y`) with a fresh
    `HeadClassifier`, `steps` optimizer steps of `batch_size` examples per task whatever the
    method, and fill the accuracy matrix on the test examples `test_idx`:

    * `naive`: each task's examples only;
    * `replay` (setting: buffer size): half of every batch from a reservoir of the earlier
      tasks' training examples, which each finished task's examples then enter;
    * `ewc` (setting: lambda): each task's examples, plus the EWC penalty of every finished
      task (true Fisher on `fisher_examples` of its training examples);
    * `adapters` (task-incremental only): the head's hidden layer frozen at its random start;
      each task trains its own LoRA on it (rank `adapter_rank`) and its own output layer, stored
      after the task and loaded to test it;
    * `joint`: every batch drawn from all tasks seen so far (the upper bound).

    Weight decay is off, so the classes a task never sees are changed by gradients only.
    """
    import time

    _check_method(method, setting, scenario)
    if len(tasks) < 2:
        raise ValueError(f"a stream needs at least 2 tasks, got {len(tasks)}")
    start = time.perf_counter()
    n_classes = int(y.max()) + 1
    torch.manual_seed(seed)
    model = HeadClassifier(x.shape[1], n_classes, hidden)
    rng = random.Random(seed)
    y_np = y.numpy()
    train_of = [[int(i) for i in train_idx if y_np[i] in t.classes] for t in tasks]
    test_of = [[int(i) for i in test_idx if y_np[i] in t.classes] for t in tasks]
    task_mask = [_allowed(t.classes, n_classes) for t in tasks]
    seen_mask = [_allowed([c for t in tasks[:i + 1] for c in t.classes], n_classes)
                 for i in range(len(tasks))]
    task_of_class = {c: k for k, t in enumerate(tasks) for c in t.classes}
    buffer = ReservoirBuffer(setting if method == "replay" else 0, seed)
    penalty = EWCPenalty(float(setting) if method == "ewc" else 0.0)
    adapters: dict[int, dict[str, torch.Tensor]] = {}
    if method == "adapters":
        pm.freeze(model)
        pm.inject_lora(model, ["hidden"], r=adapter_rank, alpha=2 * adapter_rank)
        model.out.requires_grad_(True)
        initial = _snapshot(model)
    stage_now = {"stage": -1}  # the last task trained (-1: none yet)

    def mask_for(index: int, stage: int) -> torch.Tensor:
        if scenario == "task":
            return task_mask[task_of_class[int(y_np[index])]]
        return seen_mask[stage]

    def batch(indices: Sequence[int], stage: int) -> dict[str, torch.Tensor]:
        return {"x": x[list(indices)], "labels": y[list(indices)],
                "allowed": torch.stack([mask_for(i, stage) for i in indices])}

    def batches_for(stage: int) -> list[dict[str, torch.Tensor]]:
        own = train_of[stage]
        pool = [i for k in range(stage + 1) for i in train_of[k]]
        return [batch(_draw(method, own, pool, buffer, batch_size, batch_size // 2, rng), stage)
                for _ in range(steps)]

    def train_task(i: int) -> None:
        if method == "adapters" and i > 0:  # a fresh adapter and output layer for this task
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in initial:
                        p.copy_(initial[n])
            torch.manual_seed(seed + i)
            for module in pm.lora_modules(model).values():
                nn.init.kaiming_uniform_(module.lora_A, a=math.sqrt(5))
        objective = EWCObjective(model, penalty) if method == "ewc" and penalty.anchors else model
        Trainer(objective, batches_for(i),
                TrainConfig(max_steps=steps, lr=lr, weight_decay=0.0, warmup_steps=0,
                            schedule="constant", log_every=steps, progress=False)).train()
        model.eval()
        if method == "replay":
            order = list(train_of[i])
            rng.shuffle(order)
            buffer.extend(order)
        if method == "ewc":
            sample = train_of[i][:fisher_examples]
            masks = torch.stack([mask_for(k, i) for k in sample])
            penalty.consolidate(model, classifier_fisher(model, x[sample], allowed=masks))
        if method == "adapters":
            adapters[i] = _snapshot(model)
        stage_now["stage"] = i

    def evaluate(j: int) -> float:
        indices = test_of[j]
        stage = stage_now["stage"]
        if scenario == "task":
            allowed = task_mask[j].expand(len(indices), -1)
        else:  # every class seen so far (before any training: every class)
            allowed = (seen_mask[stage] if stage >= 0 else torch.ones(n_classes, dtype=torch.bool)
                       ).expand(len(indices), -1)
        state = adapters.get(j) if method == "adapters" else None
        if method == "adapters" and state is None:  # a task not trained yet: the untrained adapter
            state = initial
        with torch.no_grad(), _state(model, state):
            predictions = model.logits(x[indices], allowed).argmax(-1)
        return float((predictions == y[indices]).float().mean())

    R, b = accuracy_matrix(train_task, evaluate, len(tasks))
    return StreamResult(method, setting, R, b, [t.name for t in tasks], time.perf_counter() - start,
                        model=model)


# ------------------------------------------------------------------------------ an instruction stream


def instruction_stream(
    model: nn.Module, tokenizer, families: Sequence[str], method: str = "naive",
    setting: float | int | None = None, steps: int = 30, batch_size: int = 4,
    train_records: int = 160, eval_records: int = 40, lr: float = 2e-3, r: int = 8,
    alpha: float = 16, targets: Sequence[str] = ("q_proj", "v_proj"), max_length: int = 128,
    fisher_examples: int = 32, max_new_tokens: int = 24, seed: int = 0, progress: bool = False,
) -> StreamResult:
    """
    Notebook 07's instruction families learned one after another by a causal LM with LoRA
    (the seeds' scenario: a model that keeps adding instructions). Each family is a task;
    accuracy is exact match under the family's verifier on `eval_records` held-out inputs
    (greedy answers). `steps` optimizer steps of `batch_size` padded examples per family:

    * `naive`: one LoRA, trained on each family in turn;
    * `replay` (setting: buffer size): a quarter of each batch from a reservoir of earlier
      families' training records;
    * `ewc` (setting: lambda): the EWC penalty on the LoRA weights, with the empirical Fisher
      of `fisher_examples` records of each finished family;
    * `adapters`: a fresh LoRA per family, stored after it and loaded to answer that family
      (the family of an instruction is known here);
    * `joint`: batches from every family so far.

    The model is left without LoRA.
    """
    import time

    from llm_tutorial import instructions as ins
    from llm_tutorial.chat import AnswerOnlyLM, encode_sft, pad

    _check_method(method, setting)
    if len(families) < 2:
        raise ValueError(f"a stream needs at least 2 families, got {len(families)}")
    if pm.lora_modules(model):
        raise ValueError("the model already has LoRA layers: call peft_methods.remove_lora(model) first")
    start = time.perf_counter()
    rng = random.Random(seed)
    train = [ins.take(train_records, [f], seed=seed) for f in families]
    test = [ins.take(eval_records, [f], seed=seed + 1000, templates="train") for f in families]
    seen = {r.instruction + r.input for rs in train for r in rs}
    test = [[r for r in rs if r.instruction + r.input not in seen] for rs in test]
    examples = [encode_sft(tokenizer, rs, max_length) for rs in train]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    buffer = ReservoirBuffer(setting if method == "replay" else 0, seed)
    penalty = EWCPenalty(float(setting) if method == "ewc" else 0.0)
    adapters: dict[int, dict[str, torch.Tensor]] = {}
    wrapped = AnswerOnlyLM(model)

    def fresh_lora(i: int) -> None:
        pm.remove_lora(model)
        pm.freeze(model)
        torch.manual_seed(seed + i)
        pm.inject_lora(model, list(targets), r=r, alpha=alpha)

    fresh_lora(0)
    initial = _snapshot(model)
    stage_now = {"stage": -1}
    answers: dict[tuple[int, int], list[str]] = {}

    def batches_for(i: int) -> list[dict[str, torch.Tensor]]:
        own, pool = examples[i], [e for k in range(i + 1) for e in examples[k]]
        return [pad(_draw(method, own, pool, buffer, batch_size, max(1, batch_size // 4), rng), pad_id)
                for _ in range(steps)]

    def train_task(i: int) -> None:
        if method == "adapters" and i > 0:
            fresh_lora(i)
        objective = EWCObjective(wrapped, penalty) if method == "ewc" and penalty.anchors else wrapped
        model.train()
        Trainer(objective, batches_for(i),
                TrainConfig(max_steps=steps, lr=lr, weight_decay=0.0, warmup_steps=0.1,
                            log_every=steps, progress=progress, desc=f"{method}: {families[i]}")).train()
        model.eval()
        if method == "replay":
            order = list(examples[i])
            rng.shuffle(order)
            buffer.extend(order)
        if method == "ewc":
            sample = [pad([e], pad_id) for e in examples[i][:fisher_examples]]
            penalty.consolidate(wrapped, diagonal_fisher(wrapped, sample))
        if method == "adapters":
            adapters[i] = _snapshot(model)
        stage_now["stage"] = i

    def evaluate(j: int) -> float:
        state = adapters.get(j, initial) if method == "adapters" else None
        with torch.no_grad(), _state(model, state):
            table = ins.answer_and_score(model, tokenizer, test[j], max_new_tokens)
        answers[stage_now["stage"], j] = list(table["prediction"])
        return float(table["correct"].mean())

    try:
        R, b = accuracy_matrix(train_task, evaluate, len(families))
    finally:
        pm.remove_lora(model)
    return StreamResult(method, setting, R, b, list(families), time.perf_counter() - start,
                        answers=answers, records=test)


# ------------------------------------------------------------------------------ tables


def summarise(results: Sequence[StreamResult]) -> Any:
    """One row per run: method, setting, ACC, BWT and FWT in points (x 100), and seconds."""
    import pandas as pd

    rows = []
    for res in results:
        m = res.metrics
        rows.append({"method": res.label, "ACC": 100 * m["ACC"], "BWT": 100 * m["BWT"],
                     "FWT": 100 * m["FWT"], "seconds": res.seconds})
    return pd.DataFrame(rows)

