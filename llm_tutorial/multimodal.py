"""
# Multimodal fusion: images and text in one model

A vision-language model has to *combine* what it sees with what it is asked. This module
builds a task where combining is the whole point, five ways to combine, and the
contrastive objective (CLIP's) that puts images and text in one space.

**The task.** scikit-learn's 1,797 handwritten digits (8 × 8 pixels), each paired with a
yes/no question: *"Is the digit greater than 6?"*, *"Is this digit plus 3 greater than 9?"*,
*"Does it have the same parity as five?"*. A question is a set of digits, the ones for which
the answer is yes. Two rules make each modality useless on its own:

1. every question comes with its **negation** ("greater than 6" / "at most 6") and both are
   asked equally often, so every *image* is answered yes exactly as often as no;
2. for each question the answer is drawn first (yes or no, 50/50) and the image second, from
   the digits that give that answer, so every *question* is answered yes exactly half the time.

A model that sees only the image or only the question is then at chance, 50%: the answer
lives in the interaction. (A naïve set, "greater than K?" with uniformly drawn images, leaks:
each modality alone reaches about 75%.)

**The encoders** are frozen feature extractors, so that the fusion strategies compete on the
same features and budget: `DigitCNN` (trained here to classify digits) or EfficientNet-Lite0
(ImageNet-pretrained, on up-sampled digits) for images; MiniLM (frozen) or a tiny
Transformer (`TinyTextEncoder`, trained with the fusion) for questions. An image is a grid of
patch vectors plus one pooled vector; a question is token vectors plus one pooled vector.

**The fusion strategies** (one `FusionHead` class each, in the `FUSIONS` registry): early concatenation, late fusion (averaged
scores), gated fusion, FiLM and cross-attention, next to an image-only and a text-only model.

**Alignment** (`ClipModel`): a small CNN and a projection of MiniLM sentence vectors trained
with the symmetric InfoNCE loss on digits placed in one corner of a 16 × 16 canvas and
captioned "a handwritten seven in the top left"; then zero-shot classification from text
prompts and retrieval both ways.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .finetuning import check_texts, encode, pool
from .pretraining import count_parameters
from .trainer import TrainConfig, Trainer, eval_mode, model_device

__all__ = [
    "DIGIT_WORDS",
    "STRATEGIES",
    "POSITIONS",
    "Question",
    "question_bank",
    "naive_questions",
    "DigitData",
    "load_digit_data",
    "VQAData",
    "make_vqa",
    "modality_ceilings",
    "check_digit_images",
    "DigitCNN",
    "random_shift",
    "train_digit_cnn",
    "EfficientNetDigitEncoder",
    "ImageFeatures",
    "TextFeatures",
    "encode_images",
    "encode_questions_minilm",
    "TinyTextEncoder",
    "FusionHead",
    "FusionDims",
    "FUSIONS",
    "fusion_head",
    "VQAModel",
    "train_vqa",
    "vqa_accuracy",
    "fusion_study",
    "summarise_fusion",
    "attention_map",
    "place_on_canvas",
    "CaptionData",
    "TRAIN_CAPTIONS",
    "caption",
    "make_captions",
    "CanvasCNN",
    "ClipModel",
    "info_nce",
    "train_clip",
    "zero_shot_accuracy",
    "retrieval_recall",
    "imagenet_preprocess",
    "imagenet_top_k",
    "conse_embeddings",
    "rank_captions",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STRATEGIES = ("image_only", "text_only", "concat", "late", "gated", "film", "cross_attention")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
YES, NO = 1, 0


# ================================================================================ the task


@dataclass(frozen=True)
class Question:
    """A yes/no question about a digit: its text, the digits answered *yes*, its family."""

    text: str
    yes: frozenset[int]
    family: str

    def answer(self, digit: int) -> int:
        """1 (yes) or 0 (no) for `digit`."""
        return YES if int(digit) in self.yes else NO


def _a(word: str) -> str:
    """The word with its indefinite article: "a seven", "an eight"."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _pair(family: str, text: str, negation: str, yes: set[int]) -> list[Question]:
    """A question and its negation, which is asked as often and answered the other way."""
    return [Question(text, frozenset(yes), family),
            Question(negation, frozenset(set(range(10)) - yes), family)]


def question_bank() -> list[Question]:
    """
    The 82 balanced questions: six families, every question next to its negation.

    Thresholds ("greater than k" / "at most k", "less than k" / "at least k"), parity,
    addition ("plus k greater than 9"), identity ("is it a seven") and number properties
    (multiples of three, primes). Numbers are written as numerals in some templates and as
    words in others, so the text encoder has to know that "7" and "seven" mean the same.
    """
    bank: list[Question] = []
    for k in range(9):
        bank += _pair("greater", f"Is the digit greater than {k}?", f"Is the digit at most {k}?",
                      set(range(k + 1, 10)))
    for k in range(1, 10):
        bank += _pair("less", f"Is the digit less than {DIGIT_WORDS[k]}?",
                      f"Is the digit at least {DIGIT_WORDS[k]}?", set(range(k)))
    bank += _pair("parity", "Is the digit even?", "Is the digit odd?", {0, 2, 4, 6, 8})
    bank += _pair("parity", "Does it have the same parity as two?",
                  "Does it have the same parity as five?", {0, 2, 4, 6, 8})
    for k in range(1, 10):
        bank += _pair("plus", f"Is this digit plus {k} greater than 9?",
                      f"Is this digit plus {k} at most 9?", {d for d in range(10) if d + k > 9})
    for k in range(10):
        bank += _pair("identity", f"Is it {_a(DIGIT_WORDS[k])}?", f"Is it any digit but {k}?", {k})
    bank += _pair("property", "Is the digit a multiple of three?",
                  "Is the digit not a multiple of three?", {0, 3, 6, 9})
    bank += _pair("property", "Is the digit a prime number?", "Is the digit not a prime number?",
                  {2, 3, 5, 7})
    return bank


def naive_questions() -> list[Question]:
    """The leaky design: "greater than k?" for k = 0..8, no negations (images drawn uniformly)."""
    return [Question(f"Is the digit greater than {k}?", frozenset(range(k + 1, 10)), "greater")
            for k in range(9)]


@dataclass
class DigitData:
    """scikit-learn's digits: `images` (n, 8, 8) float32 in [0, 16], `digits` (n,), and a
    stratified split into `train_idx` / `test_idx` (indices into the arrays)."""

    images: torch.Tensor
    digits: torch.Tensor
    train_idx: torch.Tensor
    test_idx: torch.Tensor

    def __repr__(self) -> str:
        return (f"DigitData(images={tuple(self.images.shape)}, train={len(self.train_idx)}, "
                f"test={len(self.test_idx)})")


def load_digit_data(test_size: float = 0.2, seed: int = 0) -> DigitData:
    """The 1,797 digits (bundled with scikit-learn), split by image with a stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    digits = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(digits)), test_size=test_size,
                                           random_state=seed, stratify=digits)
    return DigitData(torch.tensor(bunch.images, dtype=torch.float32), torch.tensor(digits),
                     torch.tensor(np.sort(train_idx)), torch.tensor(np.sort(test_idx)))


@dataclass
class VQAData:
    """Question-answer samples: `image_idx` into the digit images, `question_idx` into the
    question list, `answers` (1 = yes, 0 = no); all `(n,)` long tensors."""

    image_idx: torch.Tensor
    question_idx: torch.Tensor
    answers: torch.Tensor

    def __post_init__(self) -> None:
        if not len(self.image_idx) == len(self.question_idx) == len(self.answers):
            raise ValueError(f"image_idx, question_idx and answers must have the same length, got "
                             f"{len(self.image_idx)}, {len(self.question_idx)}, {len(self.answers)}")

    def __len__(self) -> int:
        return len(self.answers)

    def batches(self, batch_size: int, seed: int = 0, shuffle: bool = True) -> _Batches:
        """Re-iterable dict batches for the trainer; a new seeded order every pass."""
        return _Batches(self, batch_size, seed, shuffle)

    def frame(self, questions: Sequence[Question], digits: torch.Tensor) -> pd.DataFrame:
        """One row per sample: digit, question, family, answer (for inspection)."""
        return pd.DataFrame({
            "digit": digits[self.image_idx].tolist(),
            "question": [questions[i].text for i in self.question_idx.tolist()],
            "family": [questions[i].family for i in self.question_idx.tolist()],
            "answer": ["yes" if a else "no" for a in self.answers.tolist()],
        })


class _Batches:
    """Dict batches `{image_idx, question_idx, labels}`; iterating again reshuffles (seeded)."""

    def __init__(self, data: VQAData, batch_size: int, seed: int, shuffle: bool) -> None:
        self.data, self.batch_size, self.seed, self.shuffle = data, batch_size, seed, shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self):
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        else:
            order = torch.arange(n)
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            yield {"image_idx": self.data.image_idx[rows],
                   "question_idx": self.data.question_idx[rows],
                   "labels": self.data.answers[rows]}


def make_vqa(digits: torch.Tensor, image_ids: torch.Tensor, questions: Sequence[Question],
             n: int, seed: int = 0, balanced: bool = True) -> VQAData:
    """
    ## Sampling questions so that neither modality alone helps

    `balanced=True`: draw a question uniformly, then the answer (yes/no, 50/50), then an
    image uniformly among `image_ids` whose digit gives that answer. Each question is then
    answered yes half the time. With every question's negation in the bank, each *digit* is
    too: $P(\\text{yes}, d, q) = P(q)\\,\\tfrac12\\,[d \\in Y_q]/|Y_q|$ and the negation $\\bar q$
    has $N_{\\bar q} = Y_q$, so its "no" mass on $d$ is the same.

    `balanced=False`: question and image drawn independently and uniformly, the way a first
    attempt would do it; answers then follow the digit distribution.
    """
    image_ids = torch.as_tensor(image_ids, dtype=torch.long)
    rng = np.random.default_rng(seed)
    ids = image_ids.numpy()
    labels = digits[image_ids].numpy()
    q_idx = rng.integers(len(questions), size=n)
    if balanced:
        answers = rng.integers(2, size=n)
        img = np.empty(n, dtype=np.int64)
        for qi, question in enumerate(questions):
            yes_mask = np.isin(labels, list(question.yes))
            for answer, pool_mask in ((YES, yes_mask), (NO, ~yes_mask)):
                rows = np.flatnonzero((q_idx == qi) & (answers == answer))
                if len(rows):
                    img[rows] = rng.choice(ids[pool_mask], size=len(rows))
    else:
        img = rng.choice(ids, size=n)
        answers = np.array([questions[q].answer(d) for q, d in
                            zip(q_idx, digits[torch.as_tensor(img)].tolist(), strict=True)])
    return VQAData(torch.as_tensor(img, dtype=torch.long), torch.as_tensor(q_idx, dtype=torch.long),
                   torch.as_tensor(answers, dtype=torch.long))


def modality_ceilings(data: VQAData, digits: torch.Tensor) -> dict[str, float]:
    """
    The best accuracy a one-modality model could reach *on this very data*: answer every
    question (or every digit, i.e. a perfect image model that ignores the question) with
    its majority answer. Measured in-sample, so it is an upper bound; 0.5 means chance.
    """
    frame = pd.DataFrame({"q": data.question_idx.numpy(), "d": digits[data.image_idx].numpy(),
                          "a": data.answers.numpy()})
    out = {}
    for name, key in (("question only", "q"), ("digit only", "d")):
        counts = frame.groupby(key)["a"].agg(["sum", "count"])
        out[name] = float(np.maximum(counts["sum"], counts["count"] - counts["sum"]).sum() / len(frame))
    out["majority answer"] = float(max(frame["a"].mean(), 1 - frame["a"].mean()))
    return out


# ================================================================================ encoders


def check_digit_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check a batch of digit images: a tensor `(batch, 8, 8)` or `(batch, 1, 8, 8)` with
    values in [0, 16] (scikit-learn's scale; NaN is out of range too). Returns
    `(batch, 1, 8, 8)` as floats."""
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.shape[1:] != (1, 8, 8) or len(images) == 0:
        raise ValueError(f"{name} must have shape (batch, 8, 8) or (batch, 1, 8, 8) with one channel (grey "
                         f"levels), got {tuple(images.shape)}; resize photos with imagenet_preprocess, not here")
    if not images.is_floating_point():
        images = images.float()
    if images.isnan().any() or images.min() < 0 or images.max() > 16:
        raise ValueError(f"{name} must hold grey levels in [0, 16] like sklearn's digits, got "
                         f"values in [{images.min().item():g}, {images.max().item():g}]")
    return images


class DigitCNN(nn.Module):
    """
    ## A small CNN for 8 × 8 digits

    conv 3×3 (1→32) → ReLU → conv 3×3 stride 2 (32→64) → ReLU → conv 3×3 (64→64) → ReLU
    gives a 4 × 4 grid of 64-dimensional **patch** vectors; each sees a 9 × 9 window, that
    is the whole digit from its own vantage point. Flattening them and one
    linear layer give the 128-dimensional image **vector**; a last linear layer classifies
    the ten digits, which is how the encoder is trained (`train_digit_cnn`).
    """

    patch_dim, n_patches, dim = 64, 16, 128

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, self.dim), nn.ReLU())
        self.classifier = nn.Linear(self.dim, 10)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(patches (batch, 16, 64), vector (batch, 128))`."""
        x = check_digit_images(images).to(self.classifier.weight.device) / 16.0
        grid = self.conv(x)
        return grid.flatten(2).transpose(1, 2), self.project(grid)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.classifier(self.encode(images)[1])
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Move each (n, 8, 8) image by up to one pixel in x and y, filling with blank paper: the
    cheapest data augmentation, worth about two points of test accuracy on 1,437 digits."""
    padded = F.pad(images, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(images), 2), generator=generator)
    out = torch.empty_like(images)
    for dy in range(3):
        for dx in range(3):
            rows = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            out[rows] = padded[rows, dy:dy + 8, dx:dx + 8]
    return out


def _shuffled_rows(n: int, batch_size: int, generator: torch.Generator):
    """Row indices of full batches, epoch after epoch, endlessly: each epoch a fresh permutation
    from `generator`, its incomplete last batch dropped. Take as many as there are steps."""
    if not 1 <= batch_size <= n:  # else no full batch exists and this loop never yields
        raise ValueError(f"batch_size must be in [1, {n}] (the training examples), got {batch_size}")
    while True:
        perm = torch.randperm(n, generator=generator)
        yield from perm[: n // batch_size * batch_size].split(batch_size)


def train_digit_cnn(data: DigitData, steps: int = 300, batch_size: int = 128, lr: float = 3e-3,
                    augment: bool = True, seed: int = 0, progress: bool = False
                    ) -> tuple[DigitCNN, float]:
    """Train `DigitCNN` to classify the training digits (with `random_shift` unless
    `augment=False`) with the course trainer; return the model, frozen and in eval mode, and
    its test accuracy."""
    torch.manual_seed(seed)
    model = DigitCNN()
    images, labels = data.images[data.train_idx], data.digits[data.train_idx]
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for rows in itertools.islice(_shuffled_rows(len(labels), batch_size, generator), steps):
        x = random_shift(images[rows], generator) if augment else images[rows]
        batches.append({"images": x, "labels": labels[rows]})
    Trainer(model, batches, TrainConfig(max_steps=steps, lr=lr, warmup_steps=0.05,
                                                progress=progress, desc="digit CNN")).train()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        logits = model(data.images[data.test_idx])["logits"]
    accuracy = (logits.argmax(-1) == data.digits[data.test_idx]).float().mean().item()
    return model, accuracy


IMAGENET_MEAN_LITE = (0.498, 0.498, 0.498)  # EfficientNet-Lite's preprocessing: (x - 127) / 128
IMAGENET_STD_LITE = (0.502, 0.502, 0.502)


class EfficientNetDigitEncoder(nn.Module):
    """
    ## A frozen ImageNet encoder on digits

    EfficientNet-Lite0 expects colour photographs around 224 × 224. A digit becomes dark ink
    on white paper (`1 - x/16`), is up-sampled bilinearly to `size` × `size` (a multiple of
    32), copied to three channels and normalised as in Lite0's training. The last feature map (1,280 channels,
    `size/32` × `size/32` cells) is the patch grid; its mean is the image vector.
    """

    def __init__(self, network: nn.Module, size: int = 128) -> None:
        super().__init__()
        self.network, self.size = network.eval().requires_grad_(False), size
        self.patch_dim = self.dim = int(network._conv_head.out_channels)
        self.n_patches = (size // 32) ** 2

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.network.parameters()).device
        x = 1.0 - check_digit_images(images).to(device) / 16.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN_LITE, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD_LITE, device=device).view(1, 3, 1, 1)
        grid = self.network.extract_features((x.expand(-1, 3, -1, -1) - mean) / std)
        patches = grid.flatten(2).transpose(1, 2)
        return patches, patches.mean(1)


@dataclass
class ImageFeatures:
    """Frozen image features for a set of images: `patches` (n, p, c) and `vectors` (n, d)."""

    patches: torch.Tensor
    vectors: torch.Tensor

    def to(self, device: torch.device | str) -> ImageFeatures:
        return ImageFeatures(self.patches.to(device), self.vectors.to(device))


@torch.no_grad()
def encode_images(encoder: nn.Module, images: torch.Tensor, batch_size: int = 256) -> ImageFeatures:
    """Run a frozen image encoder (anything with `.encode(images) -> (patches, vector)`) over
    all `images` once; training then only indexes these tensors."""
    check_digit_images(images)
    patches, vectors = [], []
    for start in range(0, len(images), batch_size):
        p, v = encoder.encode(images[start:start + batch_size])
        patches.append(p.float().cpu())
        vectors.append(v.float().cpu())
    return ImageFeatures(torch.cat(patches), torch.cat(vectors))


@dataclass
class TextFeatures:
    """Frozen question features: `tokens` (q, t, d), `mask` (q, t) and pooled `vectors` (q, d)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    vectors: torch.Tensor

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.tokens.to(device), self.mask.to(device), self.vectors.to(device))


@torch.no_grad()
def encode_questions_minilm(encoder: nn.Module, tokenizer, questions: Sequence[str],
                            max_length: int = 24) -> TextFeatures:
    """MiniLM's last hidden states for each question (the token vectors) and their mean over
    real tokens (the sentence vector all-MiniLM-L6-v2 was trained to produce)."""
    questions = check_texts(questions, "questions")
    enc = encode(tokenizer, questions, max_length)
    device = model_device(encoder)
    with eval_mode(encoder):
        hidden = encoder(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state.float().cpu()
    mask = enc["attention_mask"].bool()
    return TextFeatures(hidden, mask, pool(hidden, enc["attention_mask"], "mean"))


_WORD = re.compile(r"[a-z]+|\d|[?]")


class TinyTextEncoder(nn.Module):
    """
    ## A tiny text encoder, trained from scratch

    Words (lower-cased letters, single digits, "?") become ids in a vocabulary built from the
    training questions (`[UNK]` for the rest); an embedding plus a learned position, one
    Transformer encoder layer, and the mean over real tokens. About 40k parameters, against
    MiniLM's 22.7M: it knows only what the fusion task teaches it.
    """

    def __init__(self, vocabulary_from: Sequence[str], dim: int = 64, max_length: int = 16) -> None:
        super().__init__()
        texts = check_texts(vocabulary_from, "vocabulary_from")
        words = sorted({w for text in texts for w in _WORD.findall(text.lower())})
        self.vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
        self.dim, self.max_length = dim, max_length
        self.embed = nn.Embedding(len(self.vocab), dim, padding_idx=0)
        self.position = nn.Embedding(max_length, dim)
        self.layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0,
                                                batch_first=True, norm_first=True)

    def tokenize(self, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(ids (q, max_length), mask (q, max_length))`; longer questions are cut."""
        rows = [[self.vocab.get(w, 1) for w in _WORD.findall(t.lower())][:self.max_length]
                for t in check_texts(questions, "questions")]
        ids = torch.zeros(len(rows), self.max_length, dtype=torch.long)
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"questions[{i}] has no words: ask something, e.g. 'Is it odd?'")
            ids[i, :len(row)] = torch.tensor(row)
        return ids, ids != 0

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(tokens (b, t, dim), vector (b, dim))`."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.layer(self.embed(ids) + self.position(positions), src_key_padding_mask=~mask)
        return x, pool(x, mask.long(), "mean")


# ================================================================================ fusion


def _mlp(d_in: int, hidden: int, d_out: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class FusionHead(nn.Module):
    """
    ## Five ways to combine an image and a question

    Every fusion head takes image `patches` $P \\in \\mathbb{R}^{n\\times c}$ and vector $v$, and
    question `tokens` $T \\in \\mathbb{R}^{t\\times d}$ (with a padding mask) and vector $u$, and
    returns two logits. One small class per strategy follows, registered in `FUSIONS` under its
    name; `fusion_head(strategy, ...)` builds one. `last_attention` is set by the strategies
    that attend (cross-attention) for plotting.
    """

    strategy = ""
    last_attention: torch.Tensor | None = None

    def forward(self, patches: torch.Tensor, image_vector: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor, text_vector: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class FusionDims:
    """The sizes a fusion head is built for: patch and pooled image features, token and pooled
    question features, patches per image, and the head's hidden width and attention heads."""

    patch_dim: int
    image_dim: int
    token_dim: int
    text_dim: int
    n_patches: int
    hidden: int = 64
    heads: int = 4


class ImageOnly(FusionHead):
    """The image-only baseline: an MLP on $v$. It cannot see the question."""

    strategy = "image_only"

    def __init__(self, d: FusionDims) -> None:
        super().__init__()
        self.mlp = _mlp(d.image_dim, d.hidden)

    def forward(self, patches, image_vector, tokens, token_mask, text_vector):
        return self.mlp(image_vector)


class TextOnly(FusionHead):
    """The text-only baseline: an MLP on $u$. It cannot see the image."""

    strategy = "text_only"

    def __init__(self, d: FusionDims) -> None:
        super().__init__()
        self.mlp = _mlp(d.text_dim, d.hidden)

    def forward(self, patches, image_vector, tokens, token_mask, text_vector):
        return self.mlp(text_vector)


class Concat(FusionHead):
    """Early fusion: $\\mathrm{MLP}([W_v v;\\, W_u u])$. The MLP sees both at once and can learn
    any interaction."""

    strategy = "concat"

    def __init__(self, d: FusionDims) -> None:
        super().__init__()
        self.image, self.text = nn.Linear(d.image_dim, d.hidden), nn.Linear(d.text_dim, d.hidden)
        self.mlp = _mlp(2 * d.hidden, d.hidden)

    def forward(self, patches, image_vector, tokens, token_mask, text_vector):
        return self.mlp(torch.relu(torch.cat([self.image(image_vector), self.text(text_vector)], -1)))


class Late(FusionHead):
    """Late fusion (score averaging): $\\tfrac12(\\mathrm{MLP}_v(v) + \\mathrm{MLP}_u(u))$. Each
    modality scores alone and the scores are averaged: an *additive* model, which cannot
    express "yes for 7 under this question, no under its negation"."""

    strategy = "late"

    def __init__(self, d: FusionDims) -> None:
        super().__init__()
        self.image_mlp, self.text_mlp = _mlp(d.image_dim, d.hidden), _mlp(d.text_dim, d.hidden)

    def forward(self, patches, image_vector, tokens, token_mask, text_vector):
        return (self.image_mlp(image_vector) + self.text_mlp(text_vector)) / 2


class Gated(FusionHead):
    """A gated multimodal unit (Arevalo et al. 2017): $z = \\sigma(W_z[v; u])$,
    $h = z \\odot \\tanh(W_v v) + (1 - z) \\odot \\tanh(W_u u)$, then an MLP. The gate decides,
    feature by feature, which modality to listen to."""

    strategy = "gated"

    def __init__(self, d: FusionDims) -> None:
        super().__init__()
        self.image, self.text = nn.Linear(d.image_dim, d.hidden), nn.Linear(d.text_dim, d.hidden)
        self.gate = nn.Linear(d.image_dim + d.text_dim, d.hidden)
        self.mlp = _mlp(d.hidden, d.hidden)

    def forward(self, patches, image_vector, tokens, token_mask, text_vector):
        z = torch.sigmoid(self.gate(torch.cat([image_vector, text_vector], -1)))
        return self.mlp(z * torch.tanh(self.image(image_vector))
                        + (1 - z) * torch.tanh(self.text(text_vector)))


class FiLM(FusionHead):
    """FiLM (Perez et al. 2018): the question predicts a scale and shift per channel,
    $\\gamma, \\beta = W u$, applied to every image patch (plus a learned position),
    $\\mathrm{ReLU}((1+\\gamma) \\odot (W_P p + e_{pos}) + \\beta)$; the modulated grid, flattened,
    goes to an MLP. Text *modulates* vision: the same pixels, read differently per question."""

    strategy = "film"

    def __init__(self, d: FusionDims) -> None:
        super().__init__()
        self.patch = nn.Linear(d.patch_dim, d.hidden)
        self.where = nn.Parameter(torch.zeros(d.n_patches, d.hidden))
        self.film = nn.Linear(d.text_dim, 2 * d.hidden)
        self.out = _mlp(d.n_patches * d.hidden, d.hidden)

    def forward(self, patches, image_vector, tokens, token_mask, text_vector):
        gamma, beta = self.film(text_vector).unsqueeze(1).chunk(2, dim=-1)
        x = torch.relu((1 + gamma) * (self.patch(patches) + self.where) + beta)
        return self.out(x.flatten(1))


class CrossAttention(FusionHead):
    """The question tokens are queries over the image patches,
    $\\mathrm{softmax}(Q K^\\top/\\sqrt{d_h}) V$ with $Q = W_Q T$, $K = W_K P$, $V = W_V P$ (4 heads);
    the keys are the patches (each plus a learned position) and the pooled image vector as a
    summary key. The mean over tokens of the queries and of what they read, side by side, goes
    to an MLP. `last_attention` keeps the weights (batch, tokens, 1 + patches, averaged over
    heads) for plotting."""

    strategy = "cross_attention"

    def __init__(self, d: FusionDims) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.LayerNorm(d.token_dim), nn.Linear(d.token_dim, d.hidden))
        self.patch = nn.Sequential(nn.LayerNorm(d.patch_dim), nn.Linear(d.patch_dim, d.hidden))
        self.where = nn.Parameter(torch.zeros(d.n_patches, d.hidden))
        self.summary = nn.Linear(d.image_dim, d.hidden)
        self.key_value = nn.Linear(d.hidden, 2 * d.hidden)
        self.attention = nn.MultiheadAttention(d.hidden, d.heads, batch_first=True)
        self.mlp = _mlp(2 * d.hidden, d.hidden)

    def forward(self, patches, image_vector, tokens, token_mask, text_vector):
        query = self.query(tokens)
        keys = torch.cat([self.summary(image_vector).unsqueeze(1), self.patch(patches) + self.where], 1)
        key, value = self.key_value(keys).chunk(2, dim=-1)
        attended, weights = self.attention(query, key, value, need_weights=True,
                                           average_attn_weights=True)
        self.last_attention = weights.detach()
        mask = token_mask.long()
        return self.mlp(torch.relu(torch.cat([pool(query, mask, "mean"),
                                              pool(attended, mask, "mean")], -1)))


FUSIONS: dict[str, type[FusionHead]] = {
    cls.strategy: cls for cls in (ImageOnly, TextOnly, Concat, Late, Gated, FiLM, CrossAttention)}
assert tuple(FUSIONS) == STRATEGIES


def fusion_head(strategy: str, patch_dim: int, image_dim: int, token_dim: int, text_dim: int,
                n_patches: int, hidden: int = 64, heads: int = 4) -> FusionHead:
    """The fusion head registered as `strategy` (one of `STRATEGIES`), built for these sizes."""
    if strategy not in FUSIONS:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return FUSIONS[strategy](FusionDims(patch_dim, image_dim, token_dim, text_dim, n_patches,
                                        hidden, heads))


class VQAModel(nn.Module):
    """
    ## Encoders + fusion head, trained on indices

    The image encoder is frozen, so its features are computed once (`image_features`, for
    all images); so are the features of a frozen text encoder (`text`: a `TextFeatures` for
    the question list). A `TinyTextEncoder` (`text`: the module) is trained with the head,
    from the question list's token ids. A batch is then just `image_idx`, `question_idx`
    and `labels`, and `forward` returns the loss and logits the trainer expects.
    """

    def __init__(self, strategy: str, image_features: ImageFeatures,
                 text: TextFeatures | TinyTextEncoder, questions: Sequence[str],
                 hidden: int = 64) -> None:
        super().__init__()
        questions = check_texts(questions, "questions")
        self.image_features = image_features
        if isinstance(text, TinyTextEncoder):
            self.text_encoder: TinyTextEncoder | None = text
            ids, mask = text.tokenize(questions)
            self.register_buffer("question_ids", ids, persistent=False)
            self.register_buffer("question_mask", mask, persistent=False)
            token_dim = text_dim = text.dim
            self.text_features = None
        elif isinstance(text, TextFeatures):
            if len(text.vectors) != len(questions):
                raise ValueError(f"text features for {len(text.vectors)} questions, but "
                                 f"{len(questions)} questions: encode the same list")
            self.text_encoder, self.text_features = None, text
            token_dim = text_dim = text.vectors.shape[1]
        else:
            raise TypeError(f"text must be TextFeatures (frozen) or a TinyTextEncoder, got "
                            f"{type(text).__name__}")
        self.questions = questions
        self.head = fusion_head(strategy, image_features.patches.shape[2],
                                image_features.vectors.shape[1], token_dim, text_dim,
                                image_features.patches.shape[1], hidden)

    @property
    def strategy(self) -> str:
        return self.head.strategy

    def _text(self, question_idx: torch.Tensor):
        if self.text_encoder is not None:
            mask = self.question_mask[question_idx]
            tokens, vector = self.text_encoder(self.question_ids[question_idx], mask)
            return tokens, mask, vector
        rows, device, feats = question_idx.cpu(), self.head_device, self.text_features
        return tuple(t[rows].to(device) for t in (feats.tokens, feats.mask, feats.vectors))

    @property
    def head_device(self) -> torch.device:
        return next(self.head.parameters()).device

    def forward(self, image_idx: torch.Tensor, question_idx: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict:
        if len(image_idx) != len(question_idx):
            raise ValueError(f"got {len(image_idx)} images and {len(question_idx)} questions: "
                             f"pass one question per image")
        device = self.head_device
        rows = image_idx.cpu()
        patches = self.image_features.patches[rows].to(device)
        vector = self.image_features.vectors[rows].to(device)
        tokens, mask, text_vector = self._text(question_idx.to(device))
        logits = self.head(patches, vector, tokens, mask, text_vector)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels.to(device))
        return out

    @torch.no_grad()
    def prob_yes(self, image_idx: Sequence[int] | torch.Tensor,
                 question_idx: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """P(yes) for image/question index pairs (one question per image)."""
        image_idx = torch.as_tensor(image_idx, dtype=torch.long).reshape(-1)
        question_idx = torch.as_tensor(question_idx, dtype=torch.long).reshape(-1)
        with eval_mode(self):
            logits = self(image_idx.to(self.head_device), question_idx.to(self.head_device))["logits"]
        return logits.float().softmax(-1)[:, YES].cpu()


def train_vqa(model: VQAModel, train: VQAData, steps: int, batch_size: int = 256,
              lr: float = 2e-3, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Train a `VQAModel` with the course trainer (AdamW, warm-up then linear decay)."""
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=0.05, weight_decay=0.01,
                         progress=progress, desc=model.strategy, log_every=max(1, steps // 10))
    return Trainer(model, train.batches(batch_size, seed), config).train()


@torch.no_grad()
def vqa_accuracy(model: VQAModel, data: VQAData, batch_size: int = 4096) -> float:
    """Fraction of correct yes/no answers."""
    if len(data) == 0:
        raise ValueError("data is empty: evaluate on at least one sample")
    correct = 0
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        p = model.prob_yes(data.image_idx[rows], data.question_idx[rows])
        correct += ((p > 0.5).long() == data.answers[rows]).sum().item()
    return correct / len(data)


def fusion_study(image_features: Mapping[str, ImageFeatures],
                 text_encoders: Mapping[str, TextFeatures | Any], questions: Sequence[Question],
                 train: VQAData, test: VQAData, strategies: Sequence[str] = STRATEGIES,
                 steps: int = 600, batch_size: int = 256, lr: float = 2e-3,
                 seeds: Sequence[int] = (0,), hidden: int = 64,
                 device: torch.device | str = "cpu", progress: bool = False
                 ) -> tuple[pd.DataFrame, dict[tuple[str, str, str], VQAModel]]:
    """
    Train every strategy × image encoder × text encoder × seed with the same steps, batch and
    learning rate; return a table (test accuracy, trainable parameters, seconds) and the
    models of the first seed. `text_encoders` maps a name to frozen `TextFeatures` or to a
    zero-argument factory returning a fresh `TinyTextEncoder` (it is trained, so each run
    needs its own).
    """
    texts = [q.text for q in questions]
    rows, models = [], {}
    for image_name, features in image_features.items():
        features = features.to(device)
        for text_name, text in text_encoders.items():
            if isinstance(text, TextFeatures):  # frozen: on the device once, not every batch
                text = text.to(device)
            for strategy in strategies:
                for seed in seeds:
                    torch.manual_seed(seed)
                    encoder = text if isinstance(text, TextFeatures) else text()
                    model = VQAModel(strategy, features, encoder, texts, hidden).to(device)
                    start = time.perf_counter()
                    train_vqa(model, train, steps, batch_size, lr, seed, progress)
                    seconds = time.perf_counter() - start
                    rows.append({"strategy": strategy, "image encoder": image_name,
                                 "text encoder": text_name, "seed": seed,
                                 "accuracy": vqa_accuracy(model, test),
                                 "trainable params": count_parameters(model, trainable_only=True),
                                 "train s": seconds})
                    if seed == seeds[0]:
                        models[(strategy, image_name, text_name)] = model.eval()
    return pd.DataFrame(rows), models


def summarise_fusion(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of accuracy over seeds, one row per configuration."""
    keys = ["strategy", "image encoder", "text encoder"]
    grouped = results.groupby(keys, sort=False)
    table = grouped.agg(accuracy=("accuracy", "mean"), std=("accuracy", "std"),
                        seeds=("seed", "count"), params=("trainable params", "first"),
                        train_s=("train s", "mean")).reset_index()
    return table.fillna({"std": 0.0})


def attention_map(model: VQAModel, image_idx: int, question_idx: int) -> torch.Tensor:
    """Cross-attention weights of one image/question pair, `(tokens, 1 + patches)`: one row per
    real question token; column 0 is the pooled image vector (the summary key), then the
    patches in row-major order. Rows sum to 1 (averaged over heads)."""
    if model.strategy != "cross_attention":
        raise ValueError(f"attention maps need a cross_attention model, got {model.strategy!r}")
    model.prob_yes([image_idx], [question_idx])
    weights = model.head.last_attention[0].cpu()
    if model.text_encoder is not None:
        mask = model.question_mask[question_idx].cpu()
    else:
        mask = model.text_features.mask[question_idx].cpu()
    return weights[mask]


# ================================================================================ alignment


def place_on_canvas(images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Put each 8 × 8 digit in one quadrant (`POSITIONS[i]`) of a blank 16 × 16 canvas."""
    images = check_digit_images(images)[:, 0]
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.shape != (len(images),) or positions.min() < 0 or positions.max() >= len(POSITIONS):
        raise ValueError(f"need one position in [0, {len(POSITIONS)}) per image, got {len(images)} images "
                         f"and positions {positions.unique().tolist()} of shape {tuple(positions.shape)}")
    canvas = torch.zeros(len(images), 16, 16)
    for p in range(len(POSITIONS)):
        rows = positions == p
        r, c = divmod(p, 2)
        canvas[rows, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = images[rows]
    return canvas


TRAIN_CAPTIONS = ("a handwritten {word} in the {pos}", "the digit {num}, {pos}",
                  "{pos}: the number {word}", "{a_word} written in the {pos} corner")


@dataclass
class CaptionData:
    """Canvas images (n, 16, 16) with their digit, position, class id (`digit * 4 + position`)
    and caption."""

    canvases: torch.Tensor
    digits: torch.Tensor
    positions: torch.Tensor
    captions: list[str]

    @property
    def classes(self) -> torch.Tensor:
        return self.digits * len(POSITIONS) + self.positions


def caption(template: str, digit: int, position: int) -> str:
    """Fill a caption template: `{word}` "seven", `{a_word}` "a seven", `{num}` "7", `{pos}`."""
    word = DIGIT_WORDS[digit]
    return template.format(word=word, a_word=_a(word), num=digit, pos=POSITIONS[position])


def make_captions(data: DigitData, image_ids: torch.Tensor, n: int, seed: int = 0,
                  templates: Sequence[str] = TRAIN_CAPTIONS) -> CaptionData:
    """`n` captioned canvases: a random image of `image_ids`, a random quadrant, a random
    caption template."""
    rng = np.random.default_rng(seed)
    img = torch.as_tensor(rng.choice(np.asarray(image_ids), size=n))
    pos = torch.as_tensor(rng.integers(len(POSITIONS), size=n))
    tpl = rng.integers(len(templates), size=n)
    digits = data.digits[img]
    captions = [caption(templates[t], d, p) for t, d, p in
                zip(tpl, digits.tolist(), pos.tolist(), strict=True)]
    return CaptionData(place_on_canvas(data.images[img], pos), digits, pos, captions)


class CanvasCNN(nn.Module):
    """Three 3×3 convolutions (16 → 8 → 4 cells) and a linear map to a `dim`-d embedding."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 16, dim))

    def forward(self, canvases: torch.Tensor) -> torch.Tensor:
        return self.net(canvases.unsqueeze(1).to(self.net[0].weight.device) / 16.0)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float | torch.Tensor,
             classes: torch.Tensor | None = None) -> torch.Tensor:
    """
    ## The symmetric InfoNCE loss (CLIP)

    With L2-normalised embeddings, $S_{ij} = \\langle x_i, y_j\\rangle / \\tau$ scores image
    $i$ against caption $j$. Each row is a classification "which caption is mine?" and each
    column "which image is mine?":
    $\\mathcal{L} = \\tfrac12\\big(\\mathrm{CE}(S, \\text{targets}) + \\mathrm{CE}(S^\\top,
    \\text{targets})\\big)$. The temperature $\\tau$ sets how peaked the softmax is.

    Our captions repeat (40 digit × position combinations), so a batch holds several correct
    captions per image. With `classes`, every pair of the same class is a positive and the
    target spreads evenly over them (the multi-positive form of Khosla et al. 2020); without
    it, only the diagonal is (CLIP's form, which pushes identical captions apart).
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be (batch, dim) with the same shape, "
                         f"got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if not torch.is_tensor(temperature) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    scores = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    if classes is None:
        targets = torch.eye(len(scores), device=scores.device)
    else:
        targets = (classes[:, None] == classes[None, :]).float().to(scores.device)
    targets = targets / targets.sum(1, keepdim=True)
    loss_i = -(targets * scores.log_softmax(1)).sum(1).mean()
    loss_t = -(targets.T * scores.T.log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


class ClipModel(nn.Module):
    """
    ## Two towers in one space

    An image tower (`CanvasCNN`) and a text tower (frozen MiniLM sentence vectors through a
    trainable two-layer projection) map into the same `dim`-d space, trained with `info_nce`.
    `temperature=None` learns $\\log(1/\\tau)$ as CLIP does (starting from $\\tau = 0.07$,
    capped at 100); a number fixes it. Batches: `canvases`, `text` (sentence vectors),
    `classes`.
    """

    def __init__(self, text_dim: int = 384, dim: int = 64, temperature: float | None = None,
                 multi_positive: bool = True) -> None:
        super().__init__()
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0 or None (learned), got {temperature!r}")
        self.image_tower = CanvasCNN(dim)
        self.text_tower = nn.Sequential(nn.Linear(text_dim, 256), nn.ReLU(), nn.Linear(256, dim))
        self.multi_positive = multi_positive
        if temperature is None:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(1 / temperature)))

    @property
    def temperature(self) -> float:
        return float(1 / self.log_scale.detach().clamp(max=math.log(100)).exp())

    def embed_images(self, canvases: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(canvases), dim=-1)

    def embed_texts(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_tower(vectors.to(self.log_scale.device)), dim=-1)

    def forward(self, canvases: torch.Tensor, text: torch.Tensor,
                classes: torch.Tensor | None = None) -> dict:
        if len(canvases) != len(text):
            raise ValueError(f"got {len(canvases)} images and {len(text)} captions: a batch "
                             f"needs one caption per image")
        tau = 1 / self.log_scale.clamp(max=math.log(100)).exp()
        loss = info_nce(self.image_tower(canvases), self.text_tower(text), tau,
                        classes if self.multi_positive else None)
        return {"loss": loss}


def train_clip(train: CaptionData, caption_vectors: torch.Tensor, steps: int = 400,
               batch_size: int = 128, lr: float = 2e-3, temperature: float | None = None,
               multi_positive: bool = True, seed: int = 0, progress: bool = False
               ) -> tuple[ClipModel, pd.DataFrame]:
    """Train a `ClipModel` on canvases and the MiniLM vectors of their captions."""
    if len(caption_vectors) != len(train.captions):
        raise ValueError(f"caption_vectors has {len(caption_vectors)} rows for "
                         f"{len(train.captions)} captions: encode train.captions")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (a contrastive batch needs negatives), got {batch_size}")
    torch.manual_seed(seed)
    model = ClipModel(caption_vectors.shape[1], temperature=temperature,
                      multi_positive=multi_positive)
    order = torch.Generator().manual_seed(seed)
    batches = [{"canvases": train.canvases[rows], "text": caption_vectors[rows],
                "classes": train.classes[rows]}
               for rows in itertools.islice(_shuffled_rows(len(train.captions), batch_size, order),
                                            steps)]
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=0.05, progress=progress,
                         desc=f"CLIP τ={'learned' if temperature is None else temperature}",
                         log_every=max(1, steps // 10))
    history = Trainer(model, batches, config).train()
    return model.eval(), history


@torch.no_grad()
def zero_shot_accuracy(model: ClipModel, canvases: torch.Tensor, labels: torch.Tensor,
                       prompt_vectors: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Classify each canvas by its most similar prompt (one prompt vector per class, e.g. "a
    picture of the number seven" for digit 7); return accuracy and predictions."""
    if len(canvases) != len(labels):
        raise ValueError(f"got {len(canvases)} images and {len(labels)} labels")
    sims = model.embed_images(canvases) @ model.embed_texts(prompt_vectors).T
    pred = sims.argmax(-1).cpu()
    return (pred == labels).float().mean().item(), pred


@torch.no_grad()
def retrieval_recall(model: ClipModel, test: CaptionData, class_vectors: torch.Tensor,
                     ks: Sequence[int] = (1, 5), galleries: int = 20, seed: int = 0
                     ) -> dict[str, float]:
    """
    Retrieval both ways among the 40 digit × position classes (chance: k/40).

    *image → text*: rank the 40 class captions (`class_vectors`, row `digit * 4 + position`)
    for every test image. *text → image*: for each class caption, rank a gallery of 40 test
    images, one per class, drawn at random (`galleries` times). Recall@k is the fraction of
    queries whose match is in the top k.
    """
    n_classes = len(DIGIT_WORDS) * len(POSITIONS)
    if len(class_vectors) != n_classes:
        raise ValueError(f"class_vectors needs {n_classes} rows (digit * 4 + position)")
    images = model.embed_images(test.canvases).cpu()
    texts = model.embed_texts(class_vectors).cpu()
    classes = test.classes
    ranks_i2t = (images @ texts.T).argsort(-1, descending=True)
    out = {}
    for k in ks:
        out[f"image→text R@{k}"] = (ranks_i2t[:, :k] == classes[:, None]).any(-1).float().mean().item()
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(classes.numpy() == c) for c in range(n_classes)]
    hits = {k: [] for k in ks}
    for _ in range(galleries):
        gallery = np.array([rng.choice(rows) for rows in by_class])
        ranks = (texts @ images[gallery].T).argsort(-1, descending=True)
        for k in ks:
            hits[k].append((ranks[:, :k] == torch.arange(n_classes)[:, None]).any(-1).float().mean().item())
    for k in ks:
        out[f"text→image R@{k}"] = float(np.mean(hits[k]))
    return out


# ================================================================================ photographs


def imagenet_preprocess(photo: Any, size: int = 224) -> torch.Tensor:
    """A PIL image or an (h, w, 3) uint8 array → a normalised (3, size, size) tensor: resize
    the short side to `size * 8/7`, centre-crop, scale as EfficientNet-Lite was trained."""
    from PIL import Image

    if isinstance(photo, np.ndarray):
        photo = Image.fromarray(photo)
    photo = photo.convert("RGB")
    scale = round(size * 8 / 7) / min(photo.size)
    w, h = (max(size, round(s * scale)) for s in photo.size)
    photo = photo.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    x = torch.tensor(np.asarray(photo.crop((left, top, left + size, top + size))),
                     dtype=torch.float32).permute(2, 0, 1) / 255.0
    mean = torch.tensor(IMAGENET_MEAN_LITE).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_LITE).view(3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def imagenet_top_k(network: nn.Module, photos: Sequence[Any], class_names: Sequence[str],
                   k: int = 5) -> tuple[torch.Tensor, list[list[tuple[str, float]]]]:
    """ImageNet class probabilities `(n, 1000)` and the top-k `(name, probability)` per photo."""
    if len(class_names) != 1000:
        raise ValueError(f"need the 1,000 ImageNet class names, got {len(class_names)}")
    x = torch.stack([imagenet_preprocess(p) for p in photos])
    device = next(network.parameters()).device
    with eval_mode(network):
        probs = network(x.to(device)).float().softmax(-1).cpu()
    top = probs.topk(k, dim=-1)
    names = [[(class_names[i], float(p)) for p, i in zip(v.tolist(), ix.tolist(), strict=True)]
             for v, ix in zip(top.values, top.indices, strict=True)]
    return probs, names


def conse_embeddings(probs: torch.Tensor, class_vectors: torch.Tensor, top_k: int = 10) -> torch.Tensor:
    """
    ## An image in text space without training (ConSE)

    Norouzi et al. (2014): an image's embedding is the probability-weighted mean of the text
    embeddings of its top-k predicted class names,
    $e(x) = \\sum_{i \\in \\text{top-}k} p_i\\, t_i / \\sum p_i$. A classifier and a sentence
    encoder, each trained on its own, then share a space where captions can be retrieved.
    """
    if probs.ndim != 2 or probs.shape[1] != len(class_vectors):
        raise ValueError(f"probs must be (n, {len(class_vectors)}), got {tuple(probs.shape)}")
    top = probs.topk(top_k, dim=-1)
    weights = top.values / top.values.sum(-1, keepdim=True)
    mixed = (weights.unsqueeze(-1) * class_vectors[top.indices]).sum(1)
    return F.normalize(mixed, dim=-1)


def rank_captions(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
    """For each image, caption indices sorted from most to least similar (cosine)."""
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(caption_emb, dim=-1).T
    return sims.argsort(-1, descending=True)
