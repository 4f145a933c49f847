"""
# Fine-tuning with a task head: sequence classification

A pretrained encoder turns a text into one vector per token. To classify the text, we
*pool* those vectors into one (the `[CLS]` vector, or the mean over real tokens), pass it
through dropout and a linear layer to get one logit per class, and train everything with
cross-entropy:

$$\\mathcal{L} = -\\log \\operatorname{softmax}(W\\,\\operatorname{pool}(h_1, \\dots, h_T) + b)_y$$

Compare the generation head of notebook 03: there the linear layer maps *every* position to
the whole vocabulary and the loss is the negative log-likelihood of each next token. A
classification head is the same idea with one position and five "words".

This module holds what notebook 04 needs around that head: encoding and batching texts,
the classifier itself (with optional adversarial training on the embeddings), prediction,
the classical baselines it must beat (TF-IDF and a linear probe on frozen embeddings),
few-shot subsets, text augmentation and typo noise, a numerical check of gradient
accumulation, and the regularisation study. Training always goes through the course's one
loop, `llm_tutorial.trainer.Trainer`.
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llm_tutorial import assets, runtime
from llm_tutorial.trainer import TrainConfig, Trainer, eval_mode, model_device

__all__ = [
    "POOLINGS",
    "pool",
    "check_texts",
    "SequenceClassifier",
    "set_dropout",
    "load_classifier",
    "encode",
    "encode_windows",
    "document_logits",
    "TensorDictDataset",
    "batches",
    "predict_logits",
    "accuracy",
    "embed_texts",
    "tfidf_classifier",
    "linear_probe",
    "head_from_probe",
    "sample_per_class",
    "random_deletion",
    "random_swap",
    "augment",
    "add_typos",
    "accumulation_gap",
    "val_metrics_fn",
    "fine_tune",
    "RegularisationSetting",
    "regularisation_study",
    "summarise_study",
]

POOLINGS = ("cls", "mean")


# ------------------------------------------------------------------------------ the head


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """
    ## Pooling: many token vectors → one text vector

    `"cls"` takes the vector at position 0 (the `[CLS]` token, which BERT's next-sentence
    objective trained to summarise the pair). `"mean"` averages the vectors of real tokens,
    ignoring padding: $\\bar h = \\sum_t m_t h_t / \\sum_t m_t$. Sentence-embedding models such as
    all-MiniLM-L6-v2 were trained with mean pooling, so it is the better start for them.
    """
    if method not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {method!r}")
    if method == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@dataclass
class ClassifierOutput:
    """What `SequenceClassifier.forward` returns: `logits`, and `loss` when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class SequenceClassifier(nn.Module):
    """
    ## Encoder + pooling + dropout + linear

    `encoder` is any Hugging Face encoder that accepts `inputs_embeds` (BERT, MiniLM, ...).

    With `adversarial_eps > 0`, training adds a **fast gradient method** (FGM) step on the
    word embeddings $e$ (Miyato et al., 2017): take the gradient $g$ of the loss with respect
    to $e$, move every example's embeddings by $r = \\epsilon\\, g / \\lVert g \\rVert_2$ (the
    direction that increases the loss fastest), and add the loss on $e + r$ to the clean loss.
    The model learns to give the same answer inside a small ball around each input. It costs
    about twice the compute of a plain step. Evaluation never perturbs.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        pooling: str = "mean",
        dropout: float = 0.1,
        adversarial_eps: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.adversarial_eps = float(adversarial_eps)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.num_labels = num_labels

    def _logits(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(pool(hidden, attention_mask, self.pooling)))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> ClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.encoder.get_input_embeddings()(input_ids)
        logits = self._logits(embeds, attention_mask)
        if labels is None:
            return ClassifierOutput(logits=logits)
        loss = F.cross_entropy(logits.float(), labels)
        if self.training and self.adversarial_eps > 0 and torch.is_grad_enabled():
            (grad,) = torch.autograd.grad(loss, embeds, retain_graph=True)
            norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1)
            delta = (self.adversarial_eps * grad / norm).detach()
            adv_logits = self._logits(embeds + delta, attention_mask)
            loss = loss + F.cross_entropy(adv_logits.float(), labels)
        return ClassifierOutput(logits=logits, loss=loss)


def set_dropout(model: nn.Module, p: float) -> nn.Module:
    """Set the probability of every `nn.Dropout` in `model` to `p` (in place); return it."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    return model


def load_classifier(
    num_labels: int,
    pooling: str = "mean",
    dropout: float = 0.1,
    adversarial_eps: float = 0.0,
    num_layers: int | None = None,
    name_or_path: str | None = None,
):
    """
    MiniLM (or another BERT given by `name_or_path`) with a fresh classification head;
    returns `(model, tokenizer)`. `dropout` is applied everywhere (attention, hidden states,
    head). `num_layers` keeps only the bottom layers, a cheap, smaller encoder for studies
    that train many models. Seed before calling: the head is initialised at random.
    """
    encoder, tokenizer = assets.load_minilm(name_or_path=name_or_path)
    if num_layers is not None:
        total = len(encoder.encoder.layer)
        if not 1 <= num_layers <= total:
            raise ValueError(f"num_layers must be in [1, {total}], got {num_layers!r}")
        encoder.encoder.layer = encoder.encoder.layer[:num_layers]
        encoder.config.num_hidden_layers = num_layers
    encoder.pooler = None  # BERT's next-sentence pooler: unused, since we pool ourselves
    model = SequenceClassifier(encoder, num_labels, pooling, dropout, adversarial_eps)
    set_dropout(model, dropout)
    return model, tokenizer


# ------------------------------------------------------------------------------ data


def check_texts(texts: Any, name: str = "texts") -> list[str]:
    """A non-empty list of non-blank strings, or a TypeError/ValueError naming the bad item."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} is empty: pass at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] is a {type(text).__name__}, not a string")
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty or blank: drop it or give it some text")
    return list(texts)


def encode(
    tokenizer, texts: Sequence[str], max_length: int, labels: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """
    Tokenize `texts` once, truncated and padded to `max_length`, into tensors
    `input_ids`, `attention_mask` (and `labels` when given). Encoding once up front keeps
    tokenization out of the training loop.
    """
    texts = check_texts(texts)
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"got {len(labels)} labels for {len(texts)} texts: pass one label per text")
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if labels is not None:
        out["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
    return out


def encode_windows(
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    stride: int = 128,
    labels: Sequence[int] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """
    ## Reading the whole of a long text

    `encode` keeps the first `max_length` tokens and drops the rest: about 38% of BBC articles
    are longer than MiniLM's 512 positions. Here each text is cut into *windows* of
    `max_length` tokens that overlap by `stride` tokens (the same sliding window as extractive
    QA in notebook 05), so every token is in at least one window. With window length $m$ and
    stride $s$, a text of $T > s$ tokens (not counting `[CLS]` and `[SEP]`, which take two
    positions of each window) gives $\\lceil (T - s) / (m - 2 - s) \\rceil$ windows.

    Returns `(encodings, doc)`: the windows' `input_ids` and `attention_mask` (and `labels`,
    each window carrying its text's label, to train on every window), and `doc`, the index of
    the text each window came from. `document_logits` turns the windows' logits back into one
    row per text.
    """
    texts = check_texts(texts)
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"got {len(labels)} labels for {len(texts)} texts: pass one label per text")
    enc = tokenizer(texts, truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, padding="max_length", return_tensors="pt")
    doc = enc["overflow_to_sample_mapping"].long()
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if labels is not None:
        out["labels"] = torch.as_tensor(list(labels), dtype=torch.long)[doc]
    return out, doc


def document_logits(window_logits: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """One row of logits per text: the mean of its windows' logits (`doc` from `encode_windows`).

    Every part of the text votes, each window with the same weight; notebook 04 measures
    whether that beats reading only the first window.
    """
    window_logits, doc = torch.as_tensor(window_logits), torch.as_tensor(doc).long()
    n_docs = int(doc.max()) + 1
    counts = torch.bincount(doc, minlength=n_docs)
    if (counts == 0).any():
        raise ValueError(f"doc skips text {int((counts == 0).nonzero()[0])}: pass the doc "
                         "tensor encode_windows returned, unchanged")
    total = torch.zeros(n_docs, window_logits.shape[1], dtype=torch.float64)
    total.index_add_(0, doc, window_logits.double())
    return (total / counts.unsqueeze(1)).float()


class TensorDictDataset(Dataset):
    """Rows of a dict of equally long tensors, as dicts: what `DataLoader` batches back up."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        lengths = {key: len(value) for key, value in tensors.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"need tensors with the same first dimension, got lengths {lengths}")
        self.tensors = dict(tensors)
        self.length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


def batches(
    encodings: Mapping[str, torch.Tensor], batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """A `DataLoader` of dict batches; shuffling uses its own seeded generator (repeatable)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDictDataset(encodings), batch_size=batch_size, shuffle=shuffle,
                      generator=generator)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    batch_size: int = 64,
    mixed_precision: str = "no",
) -> torch.Tensor:
    """Logits for every row of `encodings`, in eval mode, on the model's device (returned on
    the CPU as float32). `mixed_precision="bf16"` runs the forward under bf16 autocast."""
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
    device = model_device(model)
    outputs = []
    with eval_mode(model):
        inputs = {k: v for k, v in encodings.items() if k != "labels"}
        for batch in runtime.batch_progress(batches(inputs, batch_size), desc="predict"):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=mixed_precision == "bf16"):
                outputs.append(model(**batch).logits.float().cpu())
    return torch.cat(outputs)


def accuracy(logits_or_predictions: Any, labels: Any) -> float:
    """Fraction of correct predictions; accepts logits `(n, classes)` or predicted ids `(n,)`."""
    def as_tensor(values: Any) -> torch.Tensor:
        if isinstance(values, torch.Tensor):
            return values.detach().cpu()
        return torch.as_tensor(np.asarray(values))

    pred, labels = as_tensor(logits_or_predictions), as_tensor(labels)
    if pred.ndim == 2:
        pred = pred.argmax(-1)
    if pred.shape != labels.shape or len(labels) == 0:
        raise ValueError(f"need as many predictions as labels (> 0), got {tuple(pred.shape)} "
                         f"and {tuple(labels.shape)}")
    return (pred == labels).double().mean().item()


@torch.no_grad()
def embed_texts(
    encoder: nn.Module,
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
    pooling: str = "mean",
) -> np.ndarray:
    """Frozen text embeddings `(n, hidden)`: the encoder's pooled last hidden states, as a
    NumPy array for scikit-learn. Nothing is trained; this is the input of a *linear probe*.
    `encoder` may also be a `SequenceClassifier`: its encoder is used, so a probe and the model
    it initialises (`head_from_probe`) share one copy of the weights."""
    if isinstance(encoder, SequenceClassifier):
        encoder = encoder.encoder
    enc = encode(tokenizer, texts, max_length)
    device = model_device(encoder)
    out = []
    with eval_mode(encoder):
        for batch in batches(enc, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = encoder(**batch).last_hidden_state
            out.append(pool(hidden, batch["attention_mask"], pooling).float().cpu())
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------ baselines


def tfidf_classifier(ngram_range: tuple[int, int] = (1, 2), C: float = 10.0):
    """
    The classical baseline: TF-IDF features of word n-grams (sub-linear term frequency)
    and a multinomial logistic regression. An untrained `scikit-learn` pipeline: call
    `.fit(texts, labels)`, then `.predict(texts)`.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=ngram_range, sublinear_tf=True, min_df=1),
        LogisticRegression(C=C, max_iter=2000),
    )


def linear_probe(C: float = 0.1):
    """A linear probe: standardised frozen embeddings → logistic regression (untrained pipeline).
    If a linear layer on frozen features does well, the pretrained encoder already "knows" the task."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def head_from_probe(model: SequenceClassifier, probe) -> SequenceClassifier:
    """
    ## Linear probe, then fine-tune (LP-FT)

    Start the classification head at the solution of a linear probe fitted on the same
    (mean-pooled, frozen) embeddings, instead of at random (Kumar et al., 2022). A random head
    sends large, arbitrary gradients into the pretrained encoder during the first steps;
    a head that is already right sends small, useful ones, so fine-tuning converges in
    fewer steps and distorts the pretrained features less.

    `probe` is the fitted `linear_probe()` pipeline; its standardisation is folded into
    the linear layer: with $x' = (x - \\mu)/\\sigma$, $Wx' + b = (W/\\sigma)x + (b - (W/\\sigma)\\mu)$.
    Features that were (numerically) constant in the probe's data get weight 0: dividing by
    their tiny $\\sigma$ would give weights of $10^{30}$ that explode as soon as fine-tuning moves
    them. (Mean-pooled MiniLM has such dimensions.)

    With two classes scikit-learn fits one row, $z = w \\cdot x + b$, the log-odds of class 1;
    the head's two rows become $-z/2$ and $z/2$, whose softmax is the probe's $\\sigma(z)$.
    """
    scaler, logistic = probe[0], probe[-1]
    coef = torch.as_tensor(logistic.coef_, dtype=torch.float64)
    intercept = torch.as_tensor(logistic.intercept_, dtype=torch.float64)
    if len(coef) == 1 and len(model.head.weight) == 2:  # binary: one row of log-odds
        coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
    if coef.shape != model.head.weight.shape:
        raise ValueError(
            f"the probe has weights {tuple(coef.shape)} but the head expects "
            f"{tuple(model.head.weight.shape)}: fit the probe on this encoder's embeddings "
            f"with the same classes"
        )
    mean = torch.as_tensor(scaler.mean_, dtype=torch.float64)
    scale = torch.as_tensor(scaler.scale_, dtype=torch.float64)
    varies = scale > 1e-6 * scale.max()
    weight = torch.where(varies, coef / scale, torch.zeros_like(coef))
    bias = intercept - weight @ mean
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    return model


def sample_per_class(labels: Sequence[int], n_per_class: int | None, seed: int = 0) -> list[int]:
    """
    Indices of `n_per_class` examples of every class, drawn at random with `seed` (all
    indices when `n_per_class` is `None`). Returned in their original order.
    """
    labels = [int(y) for y in labels]
    if n_per_class is None:
        return list(range(len(labels)))
    rng = random.Random(seed)
    chosen: list[int] = []
    for cls in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == cls]
        if len(members) < n_per_class:
            raise ValueError(f"class {cls} has only {len(members)} examples, fewer than "
                             f"n_per_class={n_per_class}; ask for fewer")
        chosen += rng.sample(members, n_per_class)
    return sorted(chosen)


# ------------------------------------------------------------------------------ noise


def random_deletion(text: str, p: float, rng: random.Random) -> str:
    """Drop each word with probability `p` (always keeping at least one)."""
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept or [rng.choice(words)])


def random_swap(text: str, n_swaps: int, rng: random.Random) -> str:
    """Swap two randomly chosen words, `n_swaps` times."""
    words = text.split()
    for _ in range(n_swaps if len(words) > 1 else 0):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def augment(
    texts: Sequence[str],
    labels: Sequence[int],
    copies: int = 1,
    p_delete: float = 0.1,
    swap_fraction: float = 0.05,
    seed: int = 0,
) -> tuple[list[str], list[int]]:
    """
    Easy data augmentation (Wei & Zou, 2019), two of its four operations: each text gets
    `copies` noisy copies, with random deletion (`p_delete`) and random swaps (a
    `swap_fraction` of the words). Returns the originals followed by the copies.
    """
    texts = check_texts(texts)
    if len(labels) != len(texts):
        raise ValueError(f"got {len(labels)} labels for {len(texts)} texts: pass one label per text")
    rng = random.Random(seed)
    out_texts, out_labels = list(texts), [int(y) for y in labels]
    for _ in range(copies):
        for text, label in zip(texts, labels, strict=True):
            n_swaps = max(1, round(swap_fraction * len(text.split())))
            out_texts.append(random_swap(random_deletion(text, p_delete, rng), n_swaps, rng))
            out_labels.append(int(label))
    return out_texts, out_labels


def add_typos(text: str, rate: float, seed: int = 0) -> str:
    """
    Keyboard-slip noise: each word of 3 or more letters gets, with probability `rate`, one
    typo: two neighbouring letters swapped, a letter dropped, doubled, or replaced.
    Deterministic for a given `seed`. TF-IDF sees a misspelt word as an unknown feature;
    a sub-word tokenizer still sees most of its pieces.
    """
    words = text.split()
    rng = random.Random(seed)
    for i, word in enumerate(words):
        if len(word) < 3 or not word.isalpha() or rng.random() >= rate:
            continue
        k = rng.randrange(len(word) - 1)
        kind = rng.randrange(4)
        if kind == 0:
            word = word[:k] + word[k + 1] + word[k] + word[k + 2:]
        elif kind == 1:
            word = word[:k] + word[k + 1:]
        elif kind == 2:
            word = word[:k] + word[k] + word[k:]
        else:
            word = word[:k] + rng.choice(string.ascii_lowercase) + word[k + 1:]
        words[i] = word
    return " ".join(words)


# ------------------------------------------------------------------------------ optimisation


def accumulation_gap(model: nn.Module, batch: Mapping[str, torch.Tensor], micro_batches: int) -> dict:
    """
    ## Gradient accumulation, checked numerically

    The gradient of the mean loss over a batch of $B$ examples equals the average of the
    gradients of $k$ equal micro-batches of $B/k$:
    $\\nabla \\frac{1}{B}\\sum_i \\ell_i = \\frac{1}{k}\\sum_j \\nabla \\frac{k}{B}\\sum_{i \\in j} \\ell_i$.
    So `(loss / k).backward()` on each micro-batch (gradients add up in `.grad`) reproduces
    the large batch with $1/k$ of the memory. Dropout is switched off so both passes see the
    same network. Returns the largest absolute difference over all parameters, the largest
    gradient entry for scale, and their ratio. Gradients are cleared afterwards.
    """
    size = len(batch["input_ids"])
    if size % micro_batches:
        raise ValueError(f"micro_batches must divide the batch size {size}, got {micro_batches!r}")
    device = model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        try:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            # parameters the loss does not reach (e.g. an unused pooler) have no gradient
            params = [p for p in params if p.grad is not None]
            full = [p.grad.detach().clone() for p in params]
            model.zero_grad(set_to_none=True)
            step = size // micro_batches
            for start in range(0, size, step):
                micro = {k: v[start:start + step] for k, v in batch.items()}
                (model(**micro).loss / micro_batches).backward()
            diff = max((p.grad - g).abs().max().item() for p, g in zip(params, full, strict=True))
            scale = max(g.abs().max().item() for g in full)
        finally:
            model.zero_grad(set_to_none=True)
    return {"max_abs_diff": diff, "max_abs_grad": scale, "relative": diff / max(scale, 1e-30)}


# ------------------------------------------------------------------------------ training


def val_metrics_fn(encodings: Mapping[str, torch.Tensor], batch_size: int = 64, prefix: str = "val"):
    """An `eval_fn` for the trainer: `{prefix}_loss` and `{prefix}_accuracy` on `encodings`,
    both from one pass over the data."""
    if "labels" not in encodings:
        raise KeyError("the evaluation encodings need 'labels': encode(..., labels=...)")

    def eval_fn(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, encodings, batch_size)
        labels = encodings["labels"]
        return {f"{prefix}_loss": F.cross_entropy(logits, labels).item(),
                f"{prefix}_accuracy": accuracy(logits, labels)}

    return eval_fn


def fine_tune(
    model: nn.Module,
    train_encodings: Mapping[str, torch.Tensor],
    config: TrainConfig,
    batch_size: int,
    val_encodings: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Trainer:
    """
    Fine-tune `model` on `train_encodings` with the course trainer (shuffled batches,
    `seed`ed), scoring `val_loss`/`val_accuracy` on `val_encodings` at each evaluation.
    Returns the `Trainer`: its `history` has the curves, `best_step` the early-stopping point.
    """
    if "labels" not in train_encodings:
        raise KeyError("the training encodings need 'labels': encode(..., labels=...)")
    eval_fn = None if val_encodings is None else val_metrics_fn(val_encodings)
    trainer = Trainer(model, batches(train_encodings, batch_size, shuffle=True, seed=seed),
                      config, device=device, eval_fn=eval_fn)
    trainer.train()
    return trainer


@dataclass(frozen=True)
class RegularisationSetting:
    """One row of the overfitting study: which regularisers are on."""

    dropout: float = 0.0
    weight_decay: float = 0.0
    early_stopping: bool = False
    augment_copies: int = 0
    adversarial_eps: float = 0.0


def regularisation_study(
    settings: Mapping[str, RegularisationSetting],
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    val_texts: Sequence[str],
    val_labels: Sequence[int],
    num_labels: int,
    seeds: Sequence[int] = (0, 1, 2),
    max_steps: int = 60,
    batch_size: int = 8,
    lr: float = 5e-5,
    max_length: int = 64,
    num_layers: int | None = None,
    eval_every: int = 10,
    patience: int = 2,
    device: torch.device | str | None = None,
    progress: bool = False,
    head_lr: float | None = None,
) -> pd.DataFrame:
    """
    ## The overfitting study

    For every named setting and every seed: a fresh classifier, fine-tuned for `max_steps`
    on the (small) training set, evaluated on the validation set every `eval_every` steps.
    With `early_stopping`, training stops after `patience` evaluations without a better
    validation accuracy and keeps the best weights. Returns one row per (setting, seed):
    train accuracy, validation accuracy, their gap, the steps trained and the wall time.
    Only the named knobs differ between settings; data, steps and seeds are shared. With
    `head_lr`, the fresh head trains at that rate and the encoder at `lr`.
    """
    val_texts = check_texts(val_texts, "val_texts")
    rows = []
    val_enc = original = None  # encoded once, with the first model's tokenizer
    for name, setting in settings.items():
        for seed in seeds:
            torch.manual_seed(seed)
            model, tokenizer = load_classifier(num_labels, dropout=setting.dropout,
                                               adversarial_eps=setting.adversarial_eps,
                                               num_layers=num_layers)
            if val_enc is None:
                val_enc = encode(tokenizer, val_texts, max_length, val_labels)
                original = encode(tokenizer, list(train_texts), max_length, train_labels)
            train_enc = original
            if setting.augment_copies:
                texts, labels = augment(train_texts, train_labels,
                                        copies=setting.augment_copies, seed=seed)
                train_enc = encode(tokenizer, texts, max_length, labels)
            config = TrainConfig(
                max_steps=max_steps, lr=lr, weight_decay=setting.weight_decay, warmup_steps=0.1,
                lr_by_prefix=None if head_lr is None else {"head.": head_lr},
                eval_every=eval_every, log_every=eval_every, progress=progress, desc=name,
                early_stopping_patience=patience if setting.early_stopping else None,
                early_stopping_metric="val_accuracy", early_stopping_mode="max",
            )
            start = time.perf_counter()
            trainer = fine_tune(model, train_enc, config, batch_size, val_enc, seed, device)
            seconds = time.perf_counter() - start
            train_acc = accuracy(predict_logits(model, original), original["labels"])
            val_acc = accuracy(predict_logits(model, val_enc), val_enc["labels"])
            rows.append({"setting": name, "seed": seed, "train_accuracy": train_acc,
                         "val_accuracy": val_acc, "gap": train_acc - val_acc,
                         "steps": trainer.step, "seconds": seconds,
                         "history": trainer.history})
            del model, trainer  # free weights and optimizer state before the next run
    return pd.DataFrame(rows)


def summarise_study(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± standard deviation over seeds of validation accuracy and train−val gap, per
    setting (in the order the settings were given). One seed gives a std of 0."""
    order = list(dict.fromkeys(results["setting"]))
    grouped = results.groupby("setting", sort=False)
    table = pd.DataFrame({
        "val accuracy": grouped["val_accuracy"].mean(),
        "± std": grouped["val_accuracy"].std(ddof=0),
        "train−val gap": grouped["gap"].mean(),
        "gap ± std": grouped["gap"].std(ddof=0),
        "seeds": grouped["seed"].count(),
    }).loc[order]
    return table
