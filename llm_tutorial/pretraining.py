"""Pretraining objectives: masked language modelling (BERT), causal language modelling (GPT),
next-sentence and sentence-order prediction, and how to measure what a model has learned.

The two objectives differ only in *which* tokens the model must predict and *what it may see*
while predicting them:

* **MLM** hides ~15% of the tokens and predicts them from both sides:
  :math:`\\mathcal{L}_{MLM} = -\\frac{1}{|M|}\\sum_{i \\in M} \\log p_\\theta(x_i \\mid x_{\\setminus M})`.
* **CLM** predicts every token from the ones before it:
  :math:`\\mathcal{L}_{CLM} = -\\frac{1}{T-1}\\sum_{t=2}^{T} \\log p_\\theta(x_t \\mid x_{<t})`.

Both are a cross-entropy over the vocabulary, so both can be compared with the simplest
possible model, one that ignores the context and predicts every token with its corpus
frequency (the *unigram baseline*). A model that has learned anything beats it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .trainer import eval_mode

IGNORE_INDEX = -100  # PyTorch's cross-entropy skips targets equal to this


# --------------------------------------------------------------------------- masking


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, vocab_size: int,
                mask_token_id: int, mlm_probability: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking rule; returns `(masked_input_ids, labels)`.

    Each ordinary token is *selected* with probability `mlm_probability` (special tokens and
    padding, marked in `special_tokens_mask`, never are). A selected token is replaced by
    `[MASK]` 80% of the time, by a random token 10% of the time, and left unchanged 10% of
    the time, so the model cannot learn that only `[MASK]` positions matter. `labels` hold
    the original id at selected positions and `-100` (ignored by the loss) everywhere else.
    """
    if special_tokens_mask.shape != input_ids.shape:  # a (T,) mask would broadcast over the rows
        raise ValueError(f"special_tokens_mask {tuple(special_tokens_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")

    def coin(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator) < p

    selected = coin(mlm_probability) & ~special_tokens_mask.bool().cpu()
    labels = torch.where(selected, input_ids.cpu(), torch.full_like(input_ids.cpu(), IGNORE_INDEX))
    to_mask = selected & coin(0.8)
    to_random = selected & ~to_mask & coin(0.5)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.cpu().clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked.to(input_ids.device), labels.to(input_ids.device)


def masking_rates(input_ids: torch.Tensor, masked_input_ids: torch.Tensor, labels: torch.Tensor,
                  special_tokens_mask: torch.Tensor, mask_token_id: int) -> dict[str, float]:
    """Measure what `mask_tokens` did: the selection rate among ordinary tokens, and how
    the selected ones split into `[MASK]` / random / unchanged (expected 0.15, 0.8/0.1/0.1;
    a "random" draw can land on the original token, so `unchanged` is a hair above 0.1)."""
    ordinary = ~special_tokens_mask.bool()
    selected = labels != IGNORE_INDEX
    n_sel = int(selected.sum())
    as_mask = selected & (masked_input_ids == mask_token_id)
    unchanged = selected & (masked_input_ids == input_ids)
    return {
        "selected": n_sel / int(ordinary.sum()),
        "special selected": int((selected & ~ordinary).sum()),
        "[MASK]": int(as_mask.sum()) / n_sel,
        "random": int((selected & ~as_mask & ~unchanged).sum()) / n_sel,
        "unchanged": int(unchanged.sum()) / n_sel,
    }


# --------------------------------------------------------------------------- losses


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-LM loss written out: log-softmax over the vocabulary, then the log-probability
    of the true token gathered at each selected position, averaged and negated.

    `logits` is `(..., V)` and `labels` is `(...)` with `-100` at unselected
    positions. It equals `F.cross_entropy(logits.view(-1, V), labels.view(-1))`, the loss
    `BertForMaskedLM` returns.
    """
    selected = labels != IGNORE_INDEX
    if not selected.any():
        raise ValueError("no position is selected (all labels are -100): nothing to predict")
    log_probs = torch.log_softmax(logits[selected].float(), dim=-1)  # (|M|, V)
    true_log_probs = log_probs.gather(1, labels[selected].unsqueeze(1)).squeeze(1)
    return -true_log_probs.mean()


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token loss: position *t* predicts token *t+1*, so logits drop their last step and
    targets drop their first ("the shift"). Padding targets (`attention_mask == 0`) are
    ignored. Equals `transformers`' `ForCausalLMLoss` (what `GPT2LMHeadModel` and
    `LlamaForCausalLM` return with `labels=input_ids`) and `transformer.Transformer`'s loss."""
    targets = input_ids[:, 1:].clone()
    if attention_mask is not None:
        targets[attention_mask[:, 1:] == 0] = IGNORE_INDEX
    return mlm_loss(logits[:, :-1], targets)


class MaskedPositionsMLM(nn.Module):
    """Wrap a `BertForMaskedLM` so the MLM head runs only where there is something to predict.

    The head's last layer maps every hidden state to `V` logits: with `V = 30,522` that is
    most of the compute, spent on the 85% of positions whose loss is ignored anyway. Gathering
    the selected hidden states first gives the *same loss* at a fraction of the cost (the
    notebook measures it). `forward` returns an object with `.loss` and `.logits` (the
    logits at selected positions only), so the course trainer can use it directly.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not (hasattr(model, "bert") and hasattr(model, "cls")):
            raise TypeError("MaskedPositionsMLM wraps a BertForMaskedLM (it needs .bert and .cls)")
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None):
        hidden = self.model.bert(input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state
        if labels is None:
            return MLMOutput(loss=None, logits=self.model.cls(hidden))
        selected = labels != IGNORE_INDEX
        logits = self.model.cls(hidden[selected])  # (|M|, V)
        loss = F.cross_entropy(logits.float(), labels[selected])
        return MLMOutput(loss=loss, logits=logits)


@dataclass
class MLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


# --------------------------------------------------------------------------- data


def special_tokens_mask_for(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """`True` where `input_ids` holds one of the tokenizer's special tokens."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    return torch.isin(input_ids, special)


def pack_texts(tokenizer, texts: Sequence[str], block_size: int = 128,
               max_blocks: int | None = None) -> torch.Tensor:
    """Tokenize `texts`, concatenate them, and cut the stream into `(N, block_size)` blocks
    framed as `[CLS] ... [SEP]` (no padding is wasted). Documents are separated by `[SEP]`.
    The last incomplete block is dropped."""
    if isinstance(texts, str) or not len(texts):  # one string would be read as its characters
        raise ValueError("texts must be a non-empty list of strings")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    body = block_size - 2
    stream: list[int] = []
    # verbose=False: documents longer than the model's window are expected here, we cut them
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        stream.extend(ids)
        stream.append(sep_id)
        if max_blocks is not None and len(stream) >= body * max_blocks:
            break
    n = len(stream) // body
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one block of {body}")
    blocks = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    cls = torch.full((n, 1), cls_id, dtype=torch.long)
    sep = torch.full((n, 1), sep_id, dtype=torch.long)
    return torch.cat([cls, blocks, sep], dim=1)


class MLMCollator:
    """Turn a list of token blocks into an MLM batch, masking afresh every time it is called
    (*dynamic masking*, as RoBERTa does) from its own seeded generator."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 0):
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, blocks: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack(list(blocks))
        masked, labels = mask_tokens(input_ids, special_tokens_mask_for(input_ids, self.tokenizer),
                                     len(self.tokenizer), self.tokenizer.mask_token_id,
                                     self.mlm_probability, self.generator)
        return {"input_ids": masked, "attention_mask": torch.ones_like(masked), "labels": labels}


def clm_collate(blocks: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """A causal-LM batch: the labels are the inputs (the model shifts them)."""
    input_ids = torch.stack(list(blocks))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}


def fixed_mlm_batches(blocks: torch.Tensor, tokenizer, batch_size: int = 16,
                      mlm_probability: float = 0.15, seed: int = 1234) -> list[dict[str, torch.Tensor]]:
    """Held-out MLM batches masked *once* with a fixed seed, so every model is evaluated on
    exactly the same hidden tokens."""
    collate = MLMCollator(tokenizer, mlm_probability, seed)
    return [collate(blocks[i : i + batch_size]) for i in range(0, len(blocks), batch_size)]


def mlm_loader(blocks: torch.Tensor, tokenizer, batch_size: int = 16, mlm_probability: float = 0.15,
               seed: int = 0) -> torch.utils.data.DataLoader:
    """Shuffled, dynamically masked training batches; repeatable for a given seed."""
    return torch.utils.data.DataLoader(
        list(blocks), batch_size=batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=MLMCollator(tokenizer, mlm_probability, seed + 1),
    )


def clm_loader(blocks: torch.Tensor, batch_size: int = 16, seed: int = 0) -> torch.utils.data.DataLoader:
    """Shuffled causal-LM training batches; repeatable for a given seed."""
    return torch.utils.data.DataLoader(list(blocks), batch_size=batch_size, shuffle=True,
                                       drop_last=True, generator=torch.Generator().manual_seed(seed),
                                       collate_fn=clm_collate)


# --------------------------------------------------------------------------- baselines, metrics


def unigram_loss(train_ids: torch.Tensor, target_ids: torch.Tensor, vocab_size: int,
                 smoothing: float = 1.0) -> float:
    """Cross-entropy (nats) of `target_ids` under the add-`smoothing` unigram distribution
    of `train_ids`: the loss of a model that ignores all context. `-100` targets are skipped.
    """
    train = train_ids.flatten()
    targets = target_ids.flatten()
    targets = targets[targets != IGNORE_INDEX]
    if targets.numel() == 0 or train.numel() == 0:
        raise ValueError("train_ids and target_ids must contain tokens")
    counts = torch.bincount(train[train != IGNORE_INDEX], minlength=vocab_size).double() + smoothing
    log_p = counts.log() - counts.sum().log()
    return float(-log_p[targets].mean())


@torch.no_grad()
def pseudo_perplexity(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 64,
                      batch_size: int = 32) -> float:
    """Pseudo-perplexity of a masked LM (Salazar et al., 2020): mask each token in turn, score
    the true token, and exponentiate the mean negative log-probability,
    :math:`\\mathrm{PPPL} = \\exp\\big(-\\frac{1}{N}\\sum_i \\log p(x_i \\mid x_{\\setminus i})\\big)`.
    It needs one forward pass per token, so use a few short texts. `model` returns logits
    over every position (a `BertForMaskedLM` or `MaskedPositionsMLM`)."""
    if isinstance(texts, str) or not len(texts):  # one string would be read as its characters
        raise ValueError("texts must be a non-empty list of strings")
    device = next(model.parameters()).device
    rows, targets, positions = [], [], []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"][0]
        special = special_tokens_mask_for(ids, tokenizer)
        for i in torch.nonzero(~special).flatten().tolist():
            masked = ids.clone()
            masked[i] = tokenizer.mask_token_id
            rows.append(masked)
            targets.append(int(ids[i]))
            positions.append(i)
    total = 0.0
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            input_ids = nn.utils.rnn.pad_sequence(chunk, batch_first=True, padding_value=tokenizer.pad_token_id)
            attention_mask = (nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in chunk], batch_first=True))
            pos = torch.tensor(positions[start : start + batch_size], device=device)
            tgt = torch.tensor(targets[start : start + batch_size], device=device)
            rows_idx = torch.arange(len(chunk), device=device)
            labels = torch.full(input_ids.shape, IGNORE_INDEX, dtype=torch.long, device=device)
            labels[rows_idx, pos] = tgt
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                           labels=labels).logits
            # MaskedPositionsMLM returns logits at the one labelled position per row, (B, V), and
            # never builds the (B, T, V) tensor; a plain BertForMaskedLM returns (B, T, V)
            picked = (logits if logits.dim() == 2 else logits[rows_idx, pos]).float().log_softmax(-1)
            total += float(picked.gather(1, tgt.unsqueeze(1)).sum())
    return math.exp(-total / len(rows))


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer, text: str, top_k: int = 5) -> list[tuple[str, float]]:
    """Top-`k` predictions (token, probability) for the first `[MASK]` in `text`."""
    if tokenizer.mask_token not in text:  # notebook 03's widget prints this message as you type
        raise ValueError(f"text must contain {tokenizer.mask_token}, e.g. 'The {tokenizer.mask_token} rose.'")
    enc = tokenizer(text, return_tensors="pt").to(next(model.parameters()).device)
    position = int((enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
    with eval_mode(model):
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    probs = logits[0, position].float().softmax(-1)
    values, ids = probs.topk(top_k)
    return [(tokenizer.convert_ids_to_tokens(int(i)), round(float(v), 4)) for v, i in zip(values, ids, strict=True)]


# --------------------------------------------------------------------------- sentence pairs


def nsp_sentences(text: str) -> list[str]:
    """The sentences `nsp_pairs` and `sop_pairs` draw from: split after '.', '?' or '!' and at
    newlines, keeping those of three words or more (a crude rule, good enough for news text;
    notebook 05's `token_classification.split_sentences` is the stricter one)."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip() for p in parts if len(p.strip().split()) >= 3]


def nsp_pairs(documents: Sequence[str], n: int, seed: int = 0) -> list[tuple[str, str, int]]:
    """Next-sentence-prediction pairs `(A, B, label)` as in BERT: half the time B is the
    sentence that follows A (label 0, "is next"), half the time a sentence from another
    document (label 1, "random"). Labels follow `BertForPreTraining`'s convention."""
    rng = random.Random(seed)
    docs = [s for s in (nsp_sentences(d) for d in documents) if len(s) >= 2]
    if len(docs) < 2:
        raise ValueError("need at least two documents with two or more sentences each")
    pairs = []
    for _ in range(n):
        d = rng.randrange(len(docs))
        i = rng.randrange(len(docs[d]) - 1)
        if rng.random() < 0.5:
            pairs.append((docs[d][i], docs[d][i + 1], 0))
        else:
            other = (d + rng.randrange(1, len(docs))) % len(docs)  # any document but d
            pairs.append((docs[d][i], rng.choice(docs[other]), 1))
    return pairs


def sop_pairs(documents: Sequence[str], n: int, seed: int = 0) -> list[tuple[str, str, int]]:
    """Sentence-order-prediction pairs (ALBERT): two *consecutive* sentences of one document,
    in order (label 0) or swapped (label 1). Unlike NSP, topic cannot give the answer away."""
    rng = random.Random(seed)
    docs = [s for s in (nsp_sentences(d) for d in documents) if len(s) >= 2]
    pairs = []
    for _ in range(n):
        sents = rng.choice(docs)
        i = rng.randrange(len(sents) - 1)
        a, b = sents[i], sents[i + 1]
        pairs.append((a, b, 0) if rng.random() < 0.5 else (b, a, 1))
    return pairs


# --------------------------------------------------------------------------- tiny models


def tiny_bert(vocab_size: int, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 2,
              max_length: int = 128, pad_token_id: int = 0):
    """A small `BertForMaskedLM` (decoder tied to the embeddings), randomly initialised."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
                        max_position_embeddings=max_length, pad_token_id=pad_token_id,
                        tie_word_embeddings=True)
    return BertForMaskedLM(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters; tied weights are counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
