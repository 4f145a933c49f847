"""Token classification (named-entity recognition) and extractive question answering.

Both tasks put a small linear head on top of an encoder and classify *tokens*:

* **NER** gives every token one of the BIO tags (`O`, `B-person`, `I-person`, ...) and
  trains with the cross-entropy over tags. The catch is that labels belong to *words*, while
  the model sees *sub-words*: "Kaepernick" is one word but four WordPieces. A fast tokenizer's
  `word_ids()` says which word each token came from, so the label of a word goes to its first
  sub-word and the other sub-words get `-100` (ignored by the loss). Predictions are read
  back the same way: one tag per word, from its first sub-word.
* **Extractive QA** scores every context token twice, as the start and as the end of the
  answer: a 2-unit head gives `start_logits` and `end_logits`, and the answer is the span
  :math:`(s, e)` with :math:`e \\ge s` that maximises :math:`z^{start}_s + z^{end}_e`.
  Offset mappings turn token positions back into characters; contexts longer than the model's
  window are cut into overlapping windows (`stride`) and the best span over all windows wins.

Everything here runs offline on MiniLM (`assets.asset_path("minilm")`), WNUT-17 and BBC
News with spaCy's silver entities; the training itself uses the course trainer.
"""

from __future__ import annotations

import collections
import functools
import html
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch.utils.data import DataLoader

from llm_tutorial import runtime
from llm_tutorial.trainer import TrainConfig, Trainer, eval_mode, model_device

IGNORE_INDEX = -100  # PyTorch's cross-entropy skips targets equal to this
ALIGNMENTS = ("first", "all", "naive")
WNUT_TYPES = ("corporation", "creative-work", "group", "location", "person", "product")
# spaCy types the silver BBC model learns; see the notebook for why these six.
SILVER_TYPES = ("PERSON", "ORG", "GPE", "DATE", "MONEY", "PERCENT")
# spaCy entity type -> the question word that asks for it.
WH_WORDS = {"PERSON": "who", "GPE": "where", "LOC": "where", "DATE": "when"}


# --------------------------------------------------------------------------- labels


def bio_labels(entity_types: Sequence[str]) -> list[str]:
    """The BIO tag set for `entity_types`: `O` first (id 0), then `B-t` and `I-t` for
    each type, in the order given."""
    tagged = [name for name in entity_types if name.startswith(("B-", "I-")) or name == "O"]
    if tagged or len(set(entity_types)) != len(entity_types):
        raise ValueError(f"entity_types must be distinct bare type names such as 'person', without "
                         f"a B-/I- prefix, got {list(entity_types)}")
    return ["O"] + [f"{prefix}-{name}" for name in entity_types for prefix in ("B", "I")]


def label_maps(labels: Sequence[str]) -> tuple[dict[str, int], dict[int, str]]:
    """`(label2id, id2label)` for a tag list such as `bio_labels` returns."""
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct tag names, got {list(labels)}")
    label2id = {label: i for i, label in enumerate(labels)}
    return label2id, {i: label for label, i in label2id.items()}


def check_tagged(words: Sequence[str], tags: Sequence[str], label2id: Mapping[str, int]) -> None:
    """Raise a helpful error unless there is exactly one known tag per word. (Truncation can
    hide both mistakes from `align_labels`, so `encode_tagged` checks every
    sentence first.)"""
    if len(tags) != len(words):
        raise ValueError(f"{len(words)} words but {len(tags)} tags: give exactly one tag per word "
                         f"(words start {list(words[:5])})")
    for tag in tags:
        _tag_id(tag, label2id)


def _inside(tag: str) -> str:
    """`B-x` -> `I-x`; other tags unchanged."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def align_labels(word_ids: Sequence[int | None], tags: Sequence[str],
                 label2id: Mapping[str, int], label_all_tokens: bool = False) -> list[int]:
    """Word-level tags -> one label id per token, from a fast tokenizer's `word_ids()`.

    Special tokens (`word_id` is `None`: `[CLS]`, `[SEP]`, padding) get `-100`. The
    first sub-word of each word gets the word's tag. The remaining sub-words get `-100` too,
    so every word counts once in the loss, however many pieces it has; with
    `label_all_tokens=True` they get the word's tag instead, with `B-x` turned into `I-x`
    (a word has only one beginning). Words cut off by truncation simply do not appear.
    """
    labels, previous = [], None
    for word_id in word_ids:
        if word_id is None:
            labels.append(IGNORE_INDEX)
        elif not 0 <= word_id < len(tags):
            raise ValueError(f"word_ids refer to word {word_id} but there are only {len(tags)} "
                             "tags: tokenize the same words you give tags for")
        elif word_id != previous:
            labels.append(_tag_id(tags[word_id], label2id))
        elif label_all_tokens:
            labels.append(_tag_id(_inside(tags[word_id]), label2id))
        else:
            labels.append(IGNORE_INDEX)
        previous = word_id
    return labels


def _tag_id(tag: str, label2id: Mapping[str, int]) -> int:
    if tag not in label2id:
        raise KeyError(f"unknown tag {tag!r}; known tags: {', '.join(label2id)}. Map it to 'O' "
                       "or add its type to the label set")
    return label2id[tag]


def naive_labels(tags: Sequence[str], label2id: Mapping[str, int], length: int) -> list[int]:
    """What many tutorials do: `-100` for `[CLS]`, then the word tags in order, truncated or
    padded with `-100` to the number of *tokens*, as if token `i + 1` were word `i`. It is
    right until the first word that splits into several pieces; after that every label sits on
    the wrong token. Kept here to measure how much that costs."""
    ids = [IGNORE_INDEX] + [_tag_id(tag, label2id) for tag in tags]
    return ids[:length] + [IGNORE_INDEX] * (length - len(ids))


def naive_misplaced(word_ids: Sequence[int | None], n_words: int) -> list[bool]:
    """For each word, whether `naive_labels` puts its tag on a token of *another* word
    (or on a special token, or past the end): word `i` is correct only if token `i + 1` is
    the first piece of word `i`."""
    word_ids = list(word_ids)
    return [not (i + 1 < len(word_ids) and word_ids[i + 1] == i
                 and word_ids[i] != i) for i in range(n_words)]


def _check_fast(tokenizer, alignment: str = "first") -> None:
    """Alignment needs a fast tokenizer's `word_ids()` and offsets, and a known rule."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a fast tokenizer is needed (it provides word_ids() and offset "
                        "mappings): load it with AutoTokenizer.from_pretrained(path)")
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")


def _check_sentences(sentences, label2id=None) -> None:
    if not len(sentences):
        raise ValueError("sentences is empty: give at least one (words, tags) pair")
    if label2id is not None:
        for words, tags in sentences:
            check_tagged(words, tags, label2id)


def encode_tagged(tokenizer, sentences: Sequence[tuple[Sequence[str], Sequence[str]]],
                  label2id: Mapping[str, int], max_length: int = 128,
                  alignment: str = "first", shapes: bool = False) -> list[dict[str, list[int]]]:
    """Tokenize `(words, tags)` sentences into features `{input_ids, attention_mask,
    labels}` (lists, unpadded), with labels from `align_labels` (`alignment="first"`,
    or `"all"` for `label_all_tokens`) or `naive_labels` (`"naive"`).
    `shapes=True` adds `shape_ids` (`token_shapes`), the input of a
    `CaseChannel` model."""
    _check_fast(tokenizer, alignment)
    _check_sentences(sentences, label2id)
    encoding = tokenizer([list(words) for words, _ in sentences], is_split_into_words=True,
                         truncation=True, max_length=max_length)
    features = []
    for i, (_, tags) in enumerate(sentences):
        ids = encoding["input_ids"][i]
        if alignment == "naive":
            labels = naive_labels(tags, label2id, len(ids))
        else:
            labels = align_labels(encoding.word_ids(i), tags, label2id,
                                  label_all_tokens=alignment == "all")
        feature = {"input_ids": ids, "attention_mask": encoding["attention_mask"][i],
                   "labels": labels}
        if shapes:
            feature["shape_ids"] = token_shapes(encoding.word_ids(i), sentences[i][0])
        features.append(feature)
    return features


# --------------------------------------------------------------------------- word shapes

# What an uncased tokenizer throws away. Id 0 marks tokens that belong to no word ([CLS], [SEP],
# padding), so that padding a batch of shape ids with 0 is right.
SHAPES = ("no word", "lower", "Capitalised", "UPPER", "mIxed", "no letters")


def word_shape(word: str) -> int:
    """The case pattern of `word` as an index into `SHAPES`: `lower` ("talks"),
    `Capitalised` ("Blair", also a single capital: "I"), `UPPER` ("BBC"), `mIxed`
    ("McDonald", "eBay") or `no letters` ("2004", "%"). These are the word-shape features that
    classical taggers (and spaCy) feed to their models."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return SHAPES.index("no letters")
    if not any(c.isupper() for c in letters):
        return SHAPES.index("lower")
    if all(c.isupper() for c in letters):
        return SHAPES.index("UPPER" if len(letters) > 1 else "Capitalised")
    if letters[0].isupper() and not any(c.isupper() for c in letters[1:]):
        return SHAPES.index("Capitalised")
    return SHAPES.index("mIxed")


def token_shapes(word_ids: Sequence[int | None], words: Sequence[str]) -> list[int]:
    """One shape id per token: the `word_shape` of the word the token came from (every
    sub-word of "Kaepernick" is `Capitalised`), 0 for special tokens."""
    shapes = [word_shape(w) for w in words]
    return [0 if w is None else shapes[w] for w in word_ids]


class CaseChannel(torch.nn.Module):
    r"""Give an *uncased* encoder back the capital letters its tokenizer removed.

    MiniLM lower-cases its input, so "Apple" and "apple" reach it as the same tokens. A
    classical tagger would look at the word's shape; here each token's shape id
    (`SHAPES`) selects a learned vector :math:`s` that is added to its word embedding,
    :math:`e_t = E[x_t] + S[\text{shape}_t]`, before the position embeddings and the layers
    (the same place BERT adds its segment embeddings). :math:`S` starts at zero, so before
    training the model computes exactly what the wrapped model computes.

    `forward` takes the wrapped model's batch plus `shape_ids` (from
    `encode_tagged(..., shapes=True)`); without them it is the wrapped model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.shape_embeddings = torch.nn.Embedding(len(SHAPES), model.config.hidden_size)
        torch.nn.init.zeros_(self.shape_embeddings.weight)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                shape_ids: torch.Tensor | None = None, **kwargs):
        if shape_ids is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if shape_ids.shape != input_ids.shape:  # (batch, 1) would broadcast silently
            raise ValueError(f"shape_ids {tuple(shape_ids.shape)} must match input_ids "
                             f"{tuple(input_ids.shape)}: one shape id per token")
        embeds = self.get_input_embeddings()(input_ids) + self.shape_embeddings(shape_ids)
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


# --------------------------------------------------------------------------- batches


def collate(features: Sequence[Mapping[str, object]], pad_token_id: int = 0
            ) -> dict[str, torch.Tensor]:
    """Pad a list of features into a batch of tensors: `input_ids` with `pad_token_id`,
    `labels` with `-100`, other sequences with 0; scalar fields (`start_positions`) are
    stacked."""
    batch = {}
    for key, first in features[0].items():
        if isinstance(first, int):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
            continue
        width = max(len(f[key]) for f in features)
        pad = pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
        batch[key] = torch.tensor([list(f[key]) + [pad] * (width - len(f[key])) for f in features],
                                  dtype=torch.long)
    return batch


def make_loader(features: Sequence[Mapping[str, object]], batch_size: int, seed: int = 0,
                pad_token_id: int = 0, shuffle: bool = True) -> DataLoader:
    """A `DataLoader` over features that pads each batch to its longest member; the shuffle
    order comes from a generator seeded with `seed`, so runs repeat exactly."""
    if not len(features):
        raise ValueError("features is empty: there is nothing to train on")
    return DataLoader(list(features), batch_size=batch_size, shuffle=shuffle, num_workers=0,
                      generator=torch.Generator().manual_seed(seed),
                      collate_fn=functools.partial(collate, pad_token_id=pad_token_id))


# --------------------------------------------------------------------------- models


def _from_pretrained(model_class, path, freeze_embeddings: bool, **kwargs):
    from llm_tutorial import assets

    source = assets.asset_path("minilm") if path is None else path
    with assets.quiet_hf_loading():  # "newly initialized weights" is expected: the head is new
        model = model_class.from_pretrained(source, **kwargs)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def token_classifier(labels: Sequence[str], path=None, freeze_embeddings: bool = True,
                     case_channel: bool = False):
    """MiniLM (or the BERT at `path`) with a fresh linear head over `labels`.

    `freeze_embeddings` keeps the 30,522 x 384 word-embedding matrix (half of MiniLM's
    parameters) fixed: the optimizer then has half the work, and the embeddings of words that
    are rare in the fine-tuning data are not pulled around by the few that occur.
    `case_channel=True` wraps the model in a `CaseChannel` (train it on features
    encoded with `shapes=True`). Seed first for a repeatable head."""
    label2id, id2label = label_maps(labels)
    from transformers import AutoModelForTokenClassification

    model = _from_pretrained(AutoModelForTokenClassification, path, freeze_embeddings,
                             num_labels=len(labels), id2label=id2label, label2id=label2id)
    return CaseChannel(model) if case_channel else model


def qa_model(path=None, freeze_embeddings: bool = True):
    """MiniLM (or the BERT at `path`) with a fresh 2-unit head: start and end logits."""
    from transformers import AutoModelForQuestionAnswering

    return _from_pretrained(AutoModelForQuestionAnswering, path, freeze_embeddings)


# --------------------------------------------------------------------------- NER predictions


def predict_word_tags(model, tokenizer, sentences: Sequence[Sequence[str]],
                      id2label: Mapping[int, str], max_length: int = 128, batch_size: int = 64,
                      alignment: str = "first") -> list[list[str]]:
    """One predicted tag per word: the argmax at each word's *first* sub-word (`"first"` or
    `"all"`), or at token `i + 1` for word `i` (`"naive"`, how a model trained with
    `naive_labels` is read). Words that were truncated away are tagged `O`. A
    `CaseChannel` model is given the words' shapes."""
    _check_fast(tokenizer, alignment)
    results = []
    with eval_mode(model):
        for start in runtime.batch_progress(range(0, len(sentences), batch_size), desc="tag"):
            chunk = [list(words) for words in sentences[start:start + batch_size]]
            encoding = tokenizer(chunk, is_split_into_words=True, truncation=True,
                                 max_length=max_length, padding=True, return_tensors="pt")
            inputs = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}
            if isinstance(model, CaseChannel):
                inputs["shape_ids"] = torch.tensor(
                    [token_shapes(encoding.word_ids(i), words) for i, words in enumerate(chunk)])
            with torch.no_grad():
                logits = model(**{k: v.to(model_device(model)) for k, v in inputs.items()}).logits
            best = logits.argmax(-1).cpu().tolist()
            for i, words in enumerate(chunk):
                tags = ["O"] * len(words)
                if alignment == "naive":
                    n_tokens = int(encoding["attention_mask"][i].sum())
                    for word in range(min(len(words), n_tokens - 1)):
                        tags[word] = id2label[best[i][word + 1]]
                else:
                    seen = set()
                    for position, word_id in enumerate(encoding.word_ids(i)):
                        if word_id is not None and word_id not in seen:
                            seen.add(word_id)
                            tags[word_id] = id2label[best[i][position]]
                results.append(tags)
    return results


def entity_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
                  ) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 (seqeval, conlleval rules): an entity counts
    only if its type *and* both boundaries are right."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    _check_same_shape(true_tags, pred_tags)
    return {"precision": precision_score(true_tags, pred_tags, zero_division=0),
            "recall": recall_score(true_tags, pred_tags, zero_division=0),
            "f1": f1_score(true_tags, pred_tags, zero_division=0)}


def entity_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
                  ) -> pd.DataFrame:
    """seqeval's per-type report as a `DataFrame` (precision, recall, f1, support)."""
    from seqeval.metrics import classification_report

    _check_same_shape(true_tags, pred_tags)
    report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    table = pd.DataFrame(report).T
    table.columns = ["precision", "recall", "f1", "support"]
    table["support"] = table["support"].astype(int)
    return table


DISAGREEMENTS = ("type", "boundary", "only predicted", "only reference")


def disagreements(words: Sequence[Sequence[str]], true_tags: Sequence[Sequence[str]],
                  pred_tags: Sequence[Sequence[str]]) -> pd.DataFrame:
    """Where a prediction and a reference disagree, entity by entity, with the kind of each
    disagreement (`DISAGREEMENTS`): the same words with another `type`; overlapping
    words with other boundaries (`boundary`, one row per overlapping pair, so a reference
    entity split in two gives two rows); an entity `only predicted`, overlapping none of the
    reference; one `only reference`, overlapping no prediction. Columns: `sentence`
    (index), `kind`, `type` (the reference entity's, else the predicted one's),
    `reference` and `predicted` (`"TYPE: words"`, empty if none) and `text` (the
    sentence). Entity-F1 tells *how much* two taggers disagree; this tells *how*."""
    _check_same_shape(true_tags, pred_tags)
    _check_same_shape(words, true_tags, ("words", "true tags"))

    def show(sentence, span):
        return f"{span[0]}: {' '.join(sentence[span[1]:span[2]])}" if span else ""

    rows = []
    for index, (sentence, true, pred) in enumerate(zip(words, true_tags, pred_tags, strict=True)):
        reference, predicted = set(bio_to_spans(true)), set(bio_to_spans(pred))

        def overlapping(span, others):
            return sorted(o for o in others if o[1] < span[2] and span[1] < o[2])

        found = []
        for span in sorted(predicted - reference, key=lambda x: x[1]):
            hits = overlapping(span, reference - predicted)
            found += [("boundary" if hit[1:] != span[1:] else "type", hit, span) for hit in hits]
            if not hits:
                found.append(("only predicted", None, span))
        for span in sorted(reference - predicted, key=lambda x: x[1]):
            if not overlapping(span, predicted - reference):
                found.append(("only reference", span, None))
        text = " ".join(sentence)
        rows += [{"sentence": index, "kind": kind, "type": (ref or pre)[0],
                  "reference": show(sentence, ref), "predicted": show(sentence, pre),
                  "text": text} for kind, ref, pre in found]
    return pd.DataFrame(rows, columns=["sentence", "kind", "type", "reference", "predicted",
                                       "text"])


def _check_same_shape(first, second, names=("true tags", "predicted tags")) -> None:
    """Raise unless `first` and `second` hold as many sentences, each with as many items."""
    bad = [i for i, (a, b) in enumerate(zip(first, second, strict=False)) if len(a) != len(b)]
    where = "" if not bad else (f"; sentence {bad[0]} has {len(first[bad[0]])} {names[0]} but "
                                f"{len(second[bad[0]])} {names[1]}")
    if len(first) != len(second) or bad:
        raise ValueError(f"{len(first)} sentences of {names[0]} but {len(second)} of {names[1]}"
                         f"{where}: give one tag per word of every sentence")


def ner_eval_fn(tokenizer, sentences: Sequence[tuple[Sequence[str], Sequence[str]]],
                id2label: Mapping[int, str], max_length: int = 128, alignment: str = "first"
                ) -> Callable[[torch.nn.Module], dict[str, float]]:
    """An `eval_fn` for the trainer: entity F1 of the model on `sentences`."""
    _check_sentences(sentences)
    words = [list(w) for w, _ in sentences]
    gold = [list(t) for _, t in sentences]

    def eval_fn(model) -> dict[str, float]:
        pred = predict_word_tags(model, tokenizer, words, id2label, max_length,
                                 alignment=alignment)
        return {"entity_f1": entity_scores(gold, pred)["f1"]}

    return eval_fn


def train_tagger(tokenizer, sentences: Sequence[tuple[Sequence[str], Sequence[str]]],
                 labels: Sequence[str], *, steps: int, lr: float, batch_size: int,
                 max_length: int = 128,
                 eval_sentences: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
                 evals: int = 8, alignment: str = "first", case_channel: bool = False,
                 seed: int = 0, device=None, profile: str | None = None, desc: str = "NER"):
    """Train a MiniLM tagger on `(words, tags)` sentences; return `(model, history)`.

    Notebook 05's recipe in one call: encode once (tags aligned to sub-words by
    `alignment`; word shapes too when `case_channel`), seed, build
    `token_classifier(labels)` (word embeddings frozen), then run the course trainer for
    `steps` shuffled batches of `batch_size` with AdamW, 10% warm-up and linear decay.
    With `eval_sentences`, entity F1 on them is logged `evals` times (column
    `entity_f1` of the history).
    """
    label2id, id2label = label_maps(labels)
    features = encode_tagged(tokenizer, sentences, label2id, max_length, alignment=alignment,
                             shapes=case_channel)
    runtime.seed_everything(seed, profile=profile)
    model = token_classifier(labels, case_channel=case_channel)
    every = max(steps // evals, 1)
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=0.1, schedule="linear",
                         log_every=every, eval_every=every, desc=desc)
    eval_fn = None if eval_sentences is None else ner_eval_fn(
        tokenizer, eval_sentences, id2label, max_length, alignment=alignment)
    loader = make_loader(features, batch_size, seed=seed, pad_token_id=tokenizer.pad_token_id)
    history = Trainer(model, loader, config, device=device, eval_fn=eval_fn).train()
    return model, history


# --------------------------------------------------------------------------- spans


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    if len(tag) < 3 or tag[:2] not in ("B-", "I-"):  # BIOES or IOB tags would be misread
        raise ValueError(f"bad BIO tag {tag!r}: use 'O', 'B-type' or 'I-type'")
    return tag[0], tag[2:]


def bio_to_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """BIO tags -> entities `(type, start, end)` over word positions, `end` exclusive.

    The conlleval rules seqeval uses by default: an entity starts at `B-x`, or at an `I-x`
    that does not continue an entity of the same type (`O I-x` is read as `B-x`); it goes
    on while `I-x` follows. `B-x B-x` is two adjacent entities."""
    spans, current = [], None  # current = [type, start]
    for position, tag in enumerate(tags):
        prefix, kind = _split_tag(tag)
        if current is not None and (prefix != "I" or kind != current[0]):
            spans.append((current[0], current[1], position))
            current = None
        if prefix in ("B", "I") and current is None:
            current = [kind, position]
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans


WORD_PATTERN = re.compile(r"\w+(?:['’.\-]\w+)*|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Split text into words and punctuation marks, each with its character offsets
    `(word, start, end)`, so that word-level entities can be mapped back to characters."""
    if not text.strip():
        raise ValueError("text is empty: type a sentence")
    return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(text)]


def extract_entities(model, tokenizer, text: str, id2label: Mapping[int, str],
                     max_length: int = 128) -> list[dict[str, object]]:
    """Tag a raw string: split it into words, predict a tag per word (first sub-word), read the
    BIO tags as spans and return them as `{type, start, end, text}` with character offsets."""
    words = split_words(text)
    tags = predict_word_tags(model, tokenizer, [[w for w, _, _ in words]], id2label, max_length)[0]
    entities = []
    for kind, first, last in bio_to_spans(tags):
        start, end = words[first][1], words[last - 1][2]
        entities.append({"type": kind, "start": start, "end": end, "text": text[start:end]})
    return entities


PALETTE = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fecaca", "#ddd6fe", "#fed7aa", "#a5f3fc", "#f5d0fe")


def entities_html(text: str, entities: Sequence[Mapping[str, object]]) -> str:
    """Highlight entities (`{type, start, end}` with character offsets, not overlapping) in
    `text` as HTML `<mark>` elements, one colour per type."""
    types = sorted({str(e["type"]) for e in entities})
    colour = {kind: PALETTE[i % len(PALETTE)] for i, kind in enumerate(types)}
    parts, cursor = [], 0
    for entity in sorted(entities, key=lambda e: e["start"]):
        start, end = int(entity["start"]), int(entity["end"])
        if not cursor <= start < end <= len(text):
            raise ValueError(f"entity {entity} overlaps another or lies outside the text")
        parts.append(html.escape(text[cursor:start]))
        parts.append(f'<mark style="background:{colour[str(entity["type"])]};padding:0 2px">'
                     f'{html.escape(text[start:end])} <small><b>{html.escape(str(entity["type"]))}'
                     "</b></small></mark>")
        cursor = end
    parts.append(html.escape(text[cursor:]))
    return '<div style="line-height:2">' + "".join(parts) + "</div>"


# --------------------------------------------------------------------------- silver labels


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Cut an article into sentences: at line breaks, and after `.`, `!` or `?` followed by
    a space and a capital letter, digit or quote. Crude, but good enough for news text."""
    sentences = []
    for line in text.splitlines():
        sentences += [s.strip() for s in SENTENCE_END.split(line) if s.strip()]
    return sentences


def sample_sentences(texts: Sequence[str], n: int | None, seed: int = 0, min_words: int = 6,
                     max_words: int = 40) -> list[str]:
    """`n` sentences drawn without replacement (seeded) from all sentences of `texts` that
    have `min_words` to `max_words` words; headlines (the first line) are skipped.
    `n=None` takes every such sentence, in the same seeded random order."""
    pool = [s for text in texts for s in split_sentences(text.split("\n", 1)[-1])
            if min_words <= len(s.split()) <= max_words]
    if not pool or (n is not None and not 1 <= n <= len(pool)):
        raise ValueError(f"n={n}, but {len(pool)} sentences have {min_words} to {max_words} words: "
                         "ask for fewer (n=None takes all), or widen min_words/max_words")
    if n is None:
        n = len(pool)
    return random.Random(seed).sample(pool, n)


def silver_tags(doc, types: Sequence[str] = SILVER_TYPES) -> tuple[list[str], list[str]]:
    """A spaCy `Doc` -> `(words, tags)`: spaCy's tokens as words, its entities of `types`
    as BIO tags, every other entity as `O`. Whitespace tokens are dropped."""
    tags = ["O"] * len(doc)
    for ent in doc.ents:
        if ent.label_ in types:
            tags[ent.start] = "B-" + ent.label_
            for i in range(ent.start + 1, ent.end):
                tags[i] = "I-" + ent.label_
    kept = [(t.text, tag) for t, tag in zip(doc, tags, strict=True) if not t.is_space]
    return [w for w, _ in kept], [tag for _, tag in kept]


def annotate(nlp, sentences: Sequence[str], batch_size: int = 64) -> list:
    """Run the spaCy pipeline over sentences (`nlp.pipe`, batched); returns the `Doc` s."""
    return list(nlp.pipe(sentences, batch_size=batch_size))


# --------------------------------------------------------------------------- QA data


@dataclass(frozen=True)
class QAExample:
    """One extractive-QA example: the answer is `context[answer_start:answer_start +
    len(answer)]`."""

    question: str
    context: str
    answer: str
    answer_start: int
    kind: str = ""  # the spaCy type the question asks for (PERSON, GPE, ...)


def check_qa_example(example: QAExample) -> None:
    """Raise a helpful error unless the question, context and answer are non-empty and the
    answer is exactly where `answer_start` says."""
    empty = [field for field in ("question", "context", "answer")
             if not getattr(example, field).strip()]
    if empty:
        raise ValueError(f"the {' and '.join(empty)} is empty: a training example needs a "
                         "question, the context the answer comes from and an answer span")
    found = example.context[example.answer_start:example.answer_start + len(example.answer)]
    if example.answer_start < 0 or found != example.answer:
        where = example.context.find(example.answer)
        hint = (f"context.find(answer) = {where}: fix answer_start" if where >= 0 else
                "the answer does not occur in the context at all: drop the example or fix it")
        raise ValueError(f"the answer {example.answer!r} is not at context[{example.answer_start}:"
                         f"...] (found {found!r}); {hint}")


def templated_question(sentence: str, start: int, end: int, wh: str) -> str:
    """Turn a sentence into a question about its span `[start, end)` by replacing the span
    with a question word: "Blair met Bush in Washington." -> "Blair met Bush in where?"."""
    if not 0 <= start < end <= len(sentence):
        raise ValueError(f"span [{start}, {end}) is not inside the sentence")
    question = (sentence[:start] + wh + sentence[end:]).strip().rstrip(".!?;:,").strip()
    return question[:1].upper() + question[1:] + "?"


def qa_examples_from_articles(nlp, articles: Sequence[str], n: int, seed: int = 0,
                              context_sentences: int = 1, per_article: int = 2,
                              wh_words: Mapping[str, str] = WH_WORDS,
                              max_answer_words: int = 6) -> list[QAExample]:
    """Templated who/where/when questions about spaCy's entities in news articles.

    For `per_article` random sentences of each article (articles in a seeded random order),
    spaCy finds entities; for each entity of a type in `wh_words` (at most one question per
    sentence, the first such entity whose text occurs only once in the context), the question
    is the sentence with the entity replaced by the question word, the context is the sentence
    with `context_sentences` neighbours on each side, and the answer is the entity. Stops after
    `n` examples."""
    rng = random.Random(seed)
    order = list(range(len(articles)))
    rng.shuffle(order)
    examples: list[QAExample] = []
    for start in range(0, len(order), 64):  # annotate a few candidates at a time
        candidates = []
        for index in order[start:start + 64]:
            sentences = split_sentences(articles[index].split("\n", 1)[-1])
            picks = [i for i in range(len(sentences)) if 6 <= len(sentences[i].split()) <= 40]
            for i in sorted(rng.sample(picks, min(per_article, len(picks)))):
                candidates.append((sentences, i))
        if not candidates:
            continue
        docs = annotate(nlp, [s[i] for s, i in candidates])
        for (sentences, i), doc in zip(candidates, docs, strict=True):
            example = _question_for(doc, sentences, i, context_sentences, wh_words,
                                    max_answer_words)
            if example is not None:
                examples.append(example)
                if len(examples) == n:
                    return examples
    return examples


def _question_for(doc, sentences, i, context_sentences, wh_words, max_answer_words):
    before = " ".join(sentences[max(0, i - context_sentences):i])
    after = " ".join(sentences[i + 1:i + 1 + context_sentences])
    offset = len(before) + 1 if before else 0
    context = " ".join(part for part in (before, sentences[i], after) if part)
    for ent in doc.ents:
        if ent.label_ not in wh_words or len(ent.text.split()) > max_answer_words:
            continue
        if context.count(ent.text) != 1:
            continue  # ambiguous: the answer text occurs elsewhere in the context
        question = templated_question(doc.text, ent.start_char, ent.end_char,
                                      wh_words[ent.label_])
        example = QAExample(question, context, ent.text, offset + ent.start_char, ent.label_)
        check_qa_example(example)
        return example
    return None


# --------------------------------------------------------------------------- QA features


@dataclass
class QAFeatures:
    """Windows of (question, context) pairs ready for the model, plus what is needed to map
    predictions back: the example each window came from and, per token, its character offsets
    in the context (`None` for question and special tokens)."""

    features: list[dict[str, object]]
    example_index: list[int]
    offsets: list[list[tuple[int, int] | None]]

    def __len__(self) -> int:
        return len(self.features)


def build_qa_features(tokenizer, examples: Sequence[QAExample], max_length: int = 384,
                      stride: int = 128, train: bool = True) -> QAFeatures:
    """Tokenize `[CLS] question [SEP] context [SEP]`, cutting long contexts into windows of
    `max_length` tokens that overlap by `stride` tokens (`return_overflowing_tokens`).

    With `train=True` every window gets `start_positions` / `end_positions`: the tokens
    holding the first and last character of the answer, or 0 (`[CLS]`) for a window that does
    not contain the whole answer, which teaches the model to point at `[CLS]` for "not here".
    """
    _check_fast(tokenizer)
    if not len(examples):
        raise ValueError("examples is empty: give at least one QAExample")
    for example in examples:
        if train:
            check_qa_example(example)
        elif not example.question.strip() or not example.context.strip():
            raise ValueError("every example needs a non-empty question and context")
    longest = max(len(tokenizer(e.question, add_special_tokens=False)["input_ids"])
                  for e in examples)
    room = max_length - longest - 3  # [CLS] question [SEP] context [SEP]
    if room < 1:
        raise ValueError(f"max_length={max_length} is smaller than the longest question "
                         f"({longest} tokens + 3 special tokens): raise it or shorten the question")
    if not 0 <= stride < room:
        raise ValueError(f"stride={stride} must be in [0, {room}): below the {room} context "
                         "tokens a window holds, or windows would not advance; lower stride or "
                         "raise max_length")
    encoding = tokenizer([e.question for e in examples], [e.context for e in examples],
                         truncation="only_second", max_length=max_length, stride=stride,
                         return_overflowing_tokens=True, return_offsets_mapping=True)
    result = QAFeatures([], [], [])
    for w in range(len(encoding["input_ids"])):
        index = encoding["overflow_to_sample_mapping"][w]
        sequence_ids = encoding.sequence_ids(w)
        offsets = [tuple(o) if s == 1 else None
                   for o, s in zip(encoding["offset_mapping"][w], sequence_ids, strict=True)]
        feature = {key: encoding[key][w] for key in ("input_ids", "token_type_ids",
                                                      "attention_mask") if key in encoding}
        if train:
            feature["start_positions"], feature["end_positions"] = _answer_tokens(
                offsets, examples[index])
        result.features.append(feature)
        result.example_index.append(index)
        result.offsets.append(offsets)
    return result


def _answer_tokens(offsets, example: QAExample) -> tuple[int, int]:
    """Token positions of the answer's first and last character in this window, or (0, 0)."""
    first_char = example.answer_start
    last_char = example.answer_start + len(example.answer)  # exclusive
    context = [i for i, o in enumerate(offsets) if o is not None]
    if offsets[context[0]][0] > first_char or offsets[context[-1]][1] < last_char:
        return 0, 0
    start = next(i for i in context if offsets[i][1] > first_char)
    end = next(i for i in reversed(context) if offsets[i][0] < last_char)
    return start, end


def best_span(start_logits: Sequence[float], end_logits: Sequence[float],
              context_mask: Sequence[bool], n_best: int = 20, max_answer_len: int = 30
              ) -> tuple[float, int, int] | None:
    """The best answer span in one window: `(score, start, end)` with token positions,
    `end` inclusive, or `None` if no span is allowed.

    Candidates are the top-`n_best` starts times the top-`n_best` ends; a pair is allowed
    when both tokens are context tokens (`context_mask`), `end >= start` and the span has at
    most `max_answer_len` tokens. Its score is `start_logit + end_logit` (the log of an
    unnormalised probability of the span)."""
    start_logits = torch.as_tensor(start_logits, dtype=torch.float32).flatten()
    end_logits = torch.as_tensor(end_logits, dtype=torch.float32).flatten()
    mask = torch.as_tensor(context_mask, dtype=torch.bool).flatten()
    if not len(start_logits) == len(end_logits) == len(mask):
        raise ValueError(f"start_logits ({len(start_logits)}), end_logits ({len(end_logits)}) and "
                         f"context_mask ({len(mask)}) must have one entry per token")
    k = min(n_best, len(mask))
    starts = torch.topk(start_logits.masked_fill(~mask, float("-inf")), k).indices.tolist()
    ends = torch.topk(end_logits.masked_fill(~mask, float("-inf")), k).indices.tolist()
    best = None
    for s in starts:
        for e in ends:
            if not (mask[s] and mask[e]) or e < s or e - s + 1 > max_answer_len:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, s, e)
    return best


def predict_answers(model, tokenizer, examples: Sequence[QAExample], max_length: int = 384,
                    stride: int = 128, n_best: int = 20, max_answer_len: int = 30,
                    batch_size: int = 64) -> list[dict[str, object]]:
    """Answer each example: run every window, take `best_span` per window, keep the best
    score over the example's windows, and map its tokens back to characters of the context.
    Returns `{answer, score, start, end, window}` per example (`answer` is `""` when no
    window allows a span)."""
    windows = build_qa_features(tokenizer, examples, max_length, stride, train=False)
    best: list[dict[str, object]] = [{"answer": "", "score": float("-inf"), "start": -1,
                                      "end": -1, "window": -1} for _ in examples]
    with eval_mode(model):
        for first in runtime.batch_progress(range(0, len(windows), batch_size), desc="answer"):
            batch = collate(windows.features[first:first + batch_size], tokenizer.pad_token_id)
            with torch.no_grad():
                output = model(**{k: v.to(model_device(model)) for k, v in batch.items()})
            for row in range(len(batch["input_ids"])):
                w = first + row
                offsets = windows.offsets[w]
                n_tokens = len(offsets)
                span = best_span(output.start_logits[row, :n_tokens].float().cpu(),
                                 output.end_logits[row, :n_tokens].float().cpu(),
                                 [o is not None for o in offsets], n_best, max_answer_len)
                current = best[windows.example_index[w]]
                if span is not None and span[0] > current["score"]:
                    start, end = offsets[span[1]][0], offsets[span[2]][1]
                    context = examples[windows.example_index[w]].context
                    current.update(answer=context[start:end], score=span[0], start=start,
                                   end=end, window=w)
    return best


# --------------------------------------------------------------------------- SQuAD metrics


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, drop punctuation and the articles a/an/the, and
    collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    """SQuAD v1.1 token F1: the harmonic mean of precision and recall of the bag of normalised
    words shared by prediction and truth (0 when they share none)."""
    predicted, true = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(predicted) & collections.Counter(true)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], truths: Sequence[str | Sequence[str]]
                 ) -> dict[str, float]:
    """Mean exact match and token F1 in percent, as the SQuAD script reports them; a truth may
    be a list of acceptable answers (the best match counts)."""
    if len(predictions) != len(truths) or not len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths: give one "
                         "prediction per question (and at least one)")
    em = f1 = 0.0
    for prediction, truth in zip(predictions, truths, strict=True):
        options = [truth] if isinstance(truth, str) else list(truth)
        em += max(exact_match(prediction, t) for t in options)
        f1 += max(token_f1(prediction, t) for t in options)
    return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}
