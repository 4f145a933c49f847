"""Exercises for notebook 05 · Token classification and extractive QA.

* `05.align-labels`: give each word's tag to its first sub-word and -100 to the rest.
* `05.bio-spans`: read BIO tags back as entity spans.
* `05.token-f1`: the SQuAD token F1 between a predicted and a true answer.
* `05.one-window`: predict, then measure: the QA reader scored with one long window per question.
"""

from __future__ import annotations

import collections
import math
import re
import string

from llm_tutorial.exercises import direction_check, exercise

_LABEL2ID = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
# (word_ids, tags, expected labels): [CLS]/[SEP]/[PAD] are None
_ALIGN_CASES = [
    ([None, 0, 1, 1, 1, 2, None], ["O", "B-PER", "B-LOC"], [-100, 0, 1, -100, -100, 3, -100]),
    ([None, 0, 0, 1, None, None], ["B-LOC", "I-LOC"], [-100, 3, -100, 4, -100, -100]),
    ([None, 0, 1, 2, None], ["B-PER", "I-PER", "O"], [-100, 1, 2, 0, -100]),
]


def _check_align(my_align) -> str | None:
    if not callable(my_align):
        return "pass the function itself, `my_align`, not a value"
    for word_ids, tags, expected in _ALIGN_CASES:
        got = my_align(list(word_ids), list(tags), dict(_LABEL2ID))
        if got is None:
            return "your function returned None: return a list with one label per token"
        got = list(got)
        if len(got) != len(word_ids):
            return f"return one label per *token* ({len(word_ids)} here), not per word"
        if got == expected:
            continue
        specials = [g for g, w in zip(got, word_ids, strict=True) if w is None]
        if any(g != -100 for g in specials):
            return "special tokens (word_id None: [CLS], [SEP], padding) must get -100"
        if -100 not in got[1:-1] and any(e == -100 for e in expected[1:-1]):
            return ("every sub-word got a label: only the first piece of a word is labelled, "
                    "the following pieces get -100")
        return f"for word_ids {word_ids} and tags {tags} expected {expected}, got {got}"
    return None


@exercise("05.align-labels", "Write my_align(word_ids, tags, label2id): the label id of each "
          "word's tag on its first sub-word, -100 on special tokens and on later sub-words.",
          _check_align,
          wrong_answer=lambda word_ids, tags, label2id: [
              -100 if w is None else label2id[tags[w]] for w in word_ids])
def align_solution(word_ids, tags, label2id):
    labels, previous = [], None
    for word_id in word_ids:
        if word_id is None or word_id == previous:
            labels.append(-100)  # a special token, or a later piece of the same word
        else:
            labels.append(label2id[tags[word_id]])  # the first piece of a new word
        previous = word_id
    return labels


_SPAN_CASES = [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),
    (["O", "O"], []),
]


def _check_spans(my_spans) -> str | None:
    if not callable(my_spans):
        return "pass the function itself, `my_spans`"
    for tags, expected in _SPAN_CASES:
        got = my_spans(list(tags))
        if got is None:
            return "your function returned None: return a list of (type, start, end) tuples"
        got = [tuple(span) for span in got]
        if got == expected:
            continue
        if tags[1] == "I-PER" and tags[0] == "O" and not got:
            return "an I-x that follows O (or another type) starts a new entity, as seqeval reads it"
        if [(t, s, e - 1) for t, s, e in expected] == got:
            return "`end` is exclusive: the span covers words start .. end - 1"
        return f"for {tags} expected {expected}, got {got}"
    return None


@exercise("05.bio-spans", "Write my_spans(tags): the entities in a BIO tag list as (type, start, "
          "end) with end exclusive; an I-x that does not continue an x entity starts one.",
          _check_spans,
          wrong_answer=lambda tags: [(t[2:], i, i + 1) for i, t in enumerate(tags)
                                     if t.startswith("B-")])
def spans_solution(tags):
    spans, kind, start = [], None, 0
    for i, tag in enumerate(list(tags) + ["O"]):  # a final "O" closes the last entity
        prefix, name = tag[:1], tag[2:]
        if kind is not None and not (prefix == "I" and name == kind):
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = name, i
    return spans


def _normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _reference_f1(prediction: str, truth: str) -> float:
    pred, true = _normalize(prediction).split(), _normalize(truth).split()
    same = sum((collections.Counter(pred) & collections.Counter(true)).values())
    if same == 0:
        return 0.0
    return 2 * same / (len(pred) + len(true))


_F1_CASES = [("Tony Blair", "Blair"), ("the Prime Minister Tony Blair", "Tony Blair"),
             ("London", "Paris"), ("in New York.", "New York"), ("Blair, Blair", "Blair")]


def _check_token_f1(my_token_f1) -> str | None:
    if not callable(my_token_f1):
        return "pass the function itself, `my_token_f1`"
    for prediction, truth in _F1_CASES:
        got = my_token_f1(prediction, truth)
        if got is None:
            return "your function returned None: return a number between 0 and 1"
        expected = _reference_f1(prediction, truth)
        if not math.isclose(float(got), expected, abs_tol=1e-6):
            raw = sum((collections.Counter(prediction.split())
                       & collections.Counter(truth.split())).values())
            raw_f1 = 2 * raw / (len(prediction.split()) + len(truth.split()))
            if math.isclose(float(got), raw_f1, abs_tol=1e-6):
                return "normalise first: lower-case, drop punctuation and the articles a/an/the"
            return (f"token_f1({prediction!r}, {truth!r}) should be {expected:.4f}, got "
                    f"{float(got):.4f}: precision = shared / predicted words, recall = shared / "
                    "true words, F1 their harmonic mean")
    return None


@exercise("05.token-f1", "Write my_token_f1(prediction, truth): SQuAD's token F1 between the "
          "normalised words of the two answers.", _check_token_f1,
          wrong_answer=lambda prediction, truth: float(prediction.split() == truth.split()))
def token_f1_solution(prediction, truth):
    def normalize(text):  # lower-case, no punctuation, no articles, single spaces
        text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", text).split()

    predicted, true = normalize(prediction), normalize(truth)
    shared = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(true)
    return 2 * precision * recall / (precision + recall)


def _check_one_window(answer) -> str | None:
    return direction_check(answer, "same", (
        "no answer is lost between windows: they overlap, and the best span is searched over "
        "every window of a question; run the cell and look"))


@exercise("05.one-window", "Predict, then measure: the QA reader is scored with overlapping "
          "windows of CFG['qa_max_length'] tokens. Scored with one 256-token window per question "
          "instead (every test context fits), is its exact match \"higher\", \"lower\" or "
          "\"same\" (within 3 points)?", _check_one_window, wrong_answer="higher",
          answer_is_value=True)
def one_window_solution() -> str:
    # An answer cut by one window lies whole in the next (they overlap by `stride` tokens), a
    # window without the answer points at [CLS], and the best span is taken over all windows.
    # So windows cost a little compute, not answers: the exact match moves by a point or so.
    return "same"
