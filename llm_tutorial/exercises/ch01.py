"""Exercises for notebook 01 · Tokenization.

* `01.fertility`: write the fertility measure (tokens per word) yourself.
* `01.pieces`: predict how MiniLM's WordPiece vocabulary splits a word it has never seen whole.
* `01.wordpiece-pair`: WordPiece's merge rule, the pair with the best likelihood score.

The checkers run on small fixed inputs (a tokenizer trained here on a dozen sentences, a toy
corpus of symbol tuples) and take well under a second.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import Counter
from itertools import pairwise

from llm_tutorial.exercises import exercise

# --------------------------------------------------------------------------- 01.fertility

_FERTILITY_TEXTS = (
    "Tokenizers cut text into pieces.",
    "The unbelievably enthusiastic commentators kept talking.",
    "Short one.",
    "Subword vocabularies split rare words like cryptocurrency into several pieces, "
    "while frequent words stay whole.",
)


@functools.lru_cache(maxsize=1)
def _fertility_tokenizer():
    """A small WordPiece tokenizer, trained once on the checker's texts."""
    from llm_tutorial.tokenization import train_wordpiece

    return train_wordpiece(list(_FERTILITY_TEXTS) * 3, vocab_size=120, min_frequency=2)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_fertility(my_fertility) -> str | None:
    if not callable(my_fertility):
        return "pass the function itself, `my_fertility`, not the number it returns"
    tokenizer, texts = _fertility_tokenizer(), list(_FERTILITY_TEXTS)
    got = my_fertility(tokenizer, texts)
    if got is None:
        return "your function returned None: end it with `return n_tokens / n_words`"
    if not _is_number(got):
        return f"return a single number (a float), not a {type(got).__name__}"
    tokens = [len(tokenizer.tokenize(text)) for text in texts]
    words = [len(text.split()) for text in texts]
    expected = sum(tokens) / sum(words)
    if math.isclose(got, expected, rel_tol=1e-6):
        return None
    mistakes = {
        (sum(tokens) + 2 * len(texts)) / sum(words):
            "you counted the special tokens [CLS] and [SEP] too: use "
            "`tokenizer(text, add_special_tokens=False)` or `tokenizer.tokenize(text)`",
        sum(tokens) / len(texts):
            "you divided by the number of texts: fertility divides by the number of words, "
            "`sum(len(text.split()) for text in texts)`",
        sum(words) / sum(tokens):
            "your ratio is upside down: fertility is tokens / words",
        sum(t / w for t, w in zip(tokens, words, strict=True)) / len(texts):
            "you averaged the per-text ratios, so a short text counts as much as a long one: "
            "divide the total number of tokens by the total number of words",
        sum(len(text) for text in texts) / sum(words):
            "you counted characters, not tokens: use `tokenizer.tokenize(text)`",
    }
    for value, hint in mistakes.items():
        if math.isclose(got, value, rel_tol=1e-6):
            return hint
    return (f"expected {expected:.4f} on the checker's texts, got {got:.4f}: count tokens with "
            "`len(tokenizer.tokenize(text))`, words with `len(text.split())`, then divide the totals")


def _fertility_with_special_tokens(tokenizer, texts):
    return sum(len(tokenizer(t)["input_ids"]) for t in texts) / sum(len(t.split()) for t in texts)


@exercise(
    "01.fertility",
    "Write `my_fertility(tokenizer, texts)`: the total number of tokens (without special "
    "tokens) divided by the total number of whitespace-separated words.",
    _check_fertility,
    wrong_answer=_fertility_with_special_tokens,
)
def my_fertility(tokenizer, texts):
    n_tokens = sum(len(tokenizer.tokenize(text)) for text in texts)
    n_words = sum(len(text.split()) for text in texts)
    return n_tokens / n_words


# --------------------------------------------------------------------------- 01.pieces

_PIECES_WORD = "cryptocurrency"
_PIECES_EXPECTED = 5  # crypt ##oc ##ur ##ren ##cy; the test-suite checks it against MiniLM


def _check_pieces(answer) -> str | None:
    if isinstance(answer, str):
        return "answer with a number, not the pieces: how many pieces are there?"
    if not _is_number(answer) or answer != int(answer):
        return f"answer with a whole number such as 3, got {answer!r}"
    answer = int(answer)
    if answer == _PIECES_EXPECTED:
        return None
    if answer == _PIECES_EXPECTED + 2:
        return ("that count includes [CLS] and [SEP]: count only the pieces of the word, "
                "`tokenizer.tokenize(word)`")
    if answer < _PIECES_EXPECTED:
        return (f"more than {answer}: MiniLM's vocabulary was built from 2018-era Wikipedia and "
                f"books, where '{_PIECES_WORD}' was rare, and WordPiece splits greedily, longest "
                "known prefix first; check with `tokenizer.tokenize(word)`")
    return (f"fewer than {answer}: WordPiece takes the longest prefix it knows at each step, so "
            "the pieces are as long as the vocabulary allows; check with `tokenizer.tokenize(word)`")


@exercise(
    "01.pieces",
    f"Into how many WordPiece pieces does MiniLM's tokenizer split '{_PIECES_WORD}' "
    "(without [CLS] and [SEP])? Guess first, then check.",
    _check_pieces,
    wrong_answer=_PIECES_EXPECTED + 2,
    answer_is_value=True,
)
def minilm_pieces():
    from transformers import AutoTokenizer

    from llm_tutorial import assets

    tokenizer = AutoTokenizer.from_pretrained(assets.asset_path("minilm"))
    pieces = tokenizer.tokenize("cryptocurrency")  # ['crypt', '##oc', '##ur', '##ren', '##cy']
    return len(pieces)


# --------------------------------------------------------------------------- 01.wordpiece-pair

# Each word is a tuple of symbols, with the number of times it occurs in the corpus; then the
# pair WordPiece merges first. On every corpus BPE (the most frequent pair) would merge another.
_PAIR_CORPORA = (
    ({("h", "u", "g"): 10, ("p", "u", "g"): 5, ("p", "u", "n"): 12, ("b", "u", "n"): 4,
      ("h", "u", "g", "s"): 5}, ("g", "s")),
    ({("l", "o", "w"): 5, ("l", "o", "w", "e", "r"): 2, ("n", "e", "w", "e", "s", "t"): 6,
      ("w", "i", "d", "e", "s", "t"): 3, ("n", "e", "w", "e", "r"): 3}, ("i", "d")),
    # here the word counts matter: ignoring them picks ("c", "a")
    ({("s", "c", "a", "t"): 1, ("s", "a", "t"): 8, ("t", "a", "c", "t"): 7,
      ("c", "a", "s", "t"): 6, ("a", "t"): 7}, ("s", "a")),
)


def _pair_counts(word_counts, weighted: bool = True) -> tuple[Counter, Counter]:
    symbols, pairs = Counter(), Counter()
    for word, count in word_counts.items():
        count = count if weighted else 1
        for symbol in word:
            symbols[symbol] += count
        for pair in pairwise(word):
            pairs[pair] += count
    return symbols, pairs


def _check_wordpiece_pair(wordpiece_pair) -> str | None:
    if not callable(wordpiece_pair):
        return "pass the function itself, `wordpiece_pair`, not its result"
    for corpus, expected in _PAIR_CORPORA:
        got = wordpiece_pair(dict(corpus))
        if got is None:
            return "your function returned None: return the pair, e.g. `return ('u', 'g')`"
        if isinstance(got, list):
            got = tuple(got)
        if not (isinstance(got, tuple) and len(got) == 2):
            return f"return a pair of symbols such as ('u', 'g'), got {got!r}"
        if got == expected:
            continue
        symbols, pairs = _pair_counts(corpus)
        if got == max(pairs, key=pairs.get):
            return ("that is the most frequent pair, the one BPE merges; WordPiece divides the "
                    "pair's count by count(a) * count(b), which favours pairs whose symbols "
                    "rarely occur apart")
        symbols, pairs = _pair_counts(corpus, weighted=False)
        if got == max(pairs, key=lambda p: pairs[p] / (symbols[p[0]] * symbols[p[1]])):
            return ("you counted each word once: a word that occurs 8 times adds 8 to the counts "
                    "of its symbols and of its pairs")
        return (f"on the corpus {corpus} WordPiece would not merge {got!r} first: score every "
                "adjacent pair (a, b) as count(ab) / (count(a) * count(b)), all counts weighted "
                "by how often each word occurs, and return the best")
    return None


def _most_frequent_pair(word_counts):
    pairs = _pair_counts(word_counts)[1]
    return max(pairs, key=pairs.get)


@exercise(
    "01.wordpiece-pair",
    "Write `wordpiece_pair(word_counts)`: given {word as a tuple of symbols: count}, return the "
    "adjacent pair (a, b) with the highest WordPiece score count(ab) / (count(a) * count(b)), "
    "the pair WordPiece merges next.",
    _check_wordpiece_pair,
    wrong_answer=_most_frequent_pair,
)
def wordpiece_pair(word_counts):
    symbol_counts, pair_counts = Counter(), Counter()
    for symbols, count in word_counts.items():
        for symbol in symbols:
            symbol_counts[symbol] += count
        for pair in pairwise(symbols):
            pair_counts[pair] += count

    def score(pair):
        a, b = pair
        return pair_counts[pair] / (symbol_counts[a] * symbol_counts[b])

    return max(pair_counts, key=score)
