"""
# An instruction set that never runs out, and whose answers a program can check

Instruction tuning teaches a model to *follow instructions*, and the claim worth testing is that
a model tuned on many kinds of instructions follows kinds it has never seen. To measure that we
need instructions whose answers can be checked by a program, in many distinct *families*, with
an unlimited supply of fresh examples. This module generates them.

A **family** is one kind of task (reverse a word, add two numbers, sort a list, turn key-value
pairs into JSON, refuse an impossible request, ...). It has

* an input **sampler** (`sample(rng) -> value`), drawing a random input,
* a way to **show** the input as text (`show(value) -> str`),
* a reference **solver** (`solve(value) -> str`), the correct answer,
* at least five paraphrased instruction **templates** (the last one is held out, so a model
  can be tested on wordings it has never seen),
* a **verifier** that decides whether a model's free-form answer is right: `exact`,
  `normalised` (case, spacing and final punctuation ignored), `numeric` (the first number in
  the answer, within a tolerance), `list` (comma-separated items), `json` (parsed and compared
  as data), or `refusal` (the answer declines). Verifiers never raise on arbitrary text.

`stream(families, seed)` yields an endless, reproducible sequence of distinct `Record`s;
`split_families` separates training families from held-out families. A `Record`, its rendering
through a model's chat template (`render_chat`) or the Alpaca format (`render_alpaca`), SFT
encoding, padding, packing and generation live in `llm_tutorial.chat`, which notebooks 06, 07
and 10 share; the course's vendored 1,100 Alpaca-style instructions load into the same type.

The second half of the module tunes a model on them (notebook 07):

* `score` and `answer_and_score` apply the verifiers to a model's answers (`chat.answer`);
  `evaluate_splits` scores several named evaluation sets in one pass, such as the three of
  `evaluation_splits`, optionally with each reference answer's NLL (`chat.answer_nll`;
  `answers_and_nll` computes both at once with a shared KV cache); `split_summary` tabulates
  them, and `majority_answer_accuracy` the score of
  a constant answer per family, the baseline a tuned model must beat;
* `sft_mixture` draws a training mix of generated and open-ended records, `tune` is LoRA SFT
  with the course's trainer, and `generalisation_curve` repeats it for growing numbers of
  training families, scored on held-out ones.
"""

from __future__ import annotations

import calendar
import json
import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from llm_tutorial import runtime
from llm_tutorial.chat import (
    AnswerOnlyLM,
    Record,
    answer,
    answer_nll,
    answer_token_nll,
    as_records,
    encode_sft,
    kv_cache_argument,
    kv_cache_of,
    records_from_dicts,
    sft_batches,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Family",
    "VERIFIERS",
    "FAMILIES",
    "KINDS",
    "get_family",
    "verify",
    "stream",
    "take",
    "split_families",
    "load_vendored_records",
    "score",
    "answer_and_score",
    "answers_and_nll",
    "shared_prefix_length",
    "majority_answer_accuracy",
    "evaluation_splits",
    "evaluate_splits",
    "split_summary",
    "family_breakdown",
    "sft_mixture",
    "tune",
    "family_subsets",
    "generalisation_curve",
]


@dataclass(frozen=True)
class Family:
    """One kind of task: sampler, display, solver, templates (`{x}` marks the input) and
    the name of its verifier."""

    name: str
    kind: str
    templates: tuple[str, ...]
    sample: Callable[[random.Random], Any]
    show: Callable[[Any], str]
    solve: Callable[[Any], str]
    verifier: str = "exact"

    def make(self, rng: random.Random, template: int) -> Record:
        value = self.sample(rng)
        return Record(self.templates[template].format(x=self.show(value)), "", self.solve(value),
                      self.name, self.kind, template, self.verifier)


# ------------------------------------------------------------------------------ verifiers

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:\.\d+)?")
REFUSAL_MARKERS = ("can't", "cannot", "can not", "unable", "not possible", "impossible",
                   "no way to", "not able", "undefined", "i don't know", "won't")


def _normalise(text: str) -> str:
    text = str(text).strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .!?\"'`")


def _first_number(text: str) -> float | None:
    match = _NUMBER.search(str(text))
    if match is None:
        return None
    try:
        return float(match.group().replace(",", ""))
    except ValueError:
        return None


def _items(text: str) -> list[str]:
    text = str(text).strip().strip("[]().")
    return [_normalise(item) for item in re.split(r"\s*,\s*|\s*;\s*|\n+", text) if item.strip()]


def _json_value(text: str) -> Any:
    text = str(text).strip()
    match = re.search(r"(\{.*\}|\[.*\])", text, re.S)
    if match is None:
        raise ValueError("no JSON object or array in the answer")
    return json.loads(match.group(1))


def _verify_exact(prediction: str, reference: str) -> bool:
    return str(prediction).strip() == reference.strip()


def _verify_normalised(prediction: str, reference: str) -> bool:
    return _normalise(prediction) == _normalise(reference)


def _verify_numeric(prediction: str, reference: str) -> bool:
    got, want = _first_number(prediction), _first_number(reference)
    if got is None or want is None:
        return False
    return math.isclose(got, want, rel_tol=1e-6, abs_tol=0.051)


def _verify_list(prediction: str, reference: str) -> bool:
    return _items(prediction) == _items(reference)


def _verify_json(prediction: str, reference: str) -> bool:
    try:
        return _json_value(prediction) == json.loads(reference)
    except (ValueError, RecursionError):
        return False


def _verify_refusal(prediction: str, reference: str) -> bool:
    text = str(prediction).lower().replace("’", "'")
    return any(marker in text for marker in REFUSAL_MARKERS)


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "exact": _verify_exact,
    "normalised": _verify_normalised,
    "numeric": _verify_numeric,
    "list": _verify_list,
    "json": _verify_json,
    "refusal": _verify_refusal,
}


def verify(prediction: Any, record: Record) -> bool:
    """Is `prediction` (a model's answer, any text) a correct answer to `record`? Never raises
    on the prediction: anything that cannot be read as an answer is wrong."""
    if record.verifier not in VERIFIERS:
        raise KeyError(f"unknown verifier {record.verifier!r}; known: {sorted(VERIFIERS)}")
    try:
        return bool(VERIFIERS[record.verifier]("" if prediction is None else str(prediction),
                                               record.output))
    except Exception:  # a verifier must never crash on model text
        return False


# ------------------------------------------------------------------------------ vocabulary

WORDS = ("apple", "river", "garden", "pencil", "window", "silver", "planet", "forest", "candle",
         "button", "rocket", "orange", "marble", "pillow", "jacket", "bridge", "camera", "dragon",
         "violin", "tomato", "basket", "mirror", "castle", "lemon", "tiger", "cloud", "stone",
         "music", "paper", "horse", "beach", "light", "chair", "green", "storm", "piano", "bread",
         "ocean", "honey", "train", "zebra", "water", "sugar", "night", "table", "knife", "mouse",
         "world", "smile", "dance", "field", "spoon", "clock", "grape", "snake", "queen", "robot")
PALINDROMES = ("level", "radar", "civic", "kayak", "rotor", "refer", "madam", "noon", "stats",
               "racecar", "deed", "peep")
NAMES = ("Ann", "Bob", "Chen", "Dara", "Eve", "Femi", "Gita", "Hugo", "Ivan", "Jana", "Kofi",
         "Lena", "Marta", "Nils", "Omar", "Priya")
CITIES = ("Oslo", "Lima", "Cairo", "Paris", "Tokyo", "Quito", "Accra", "Delhi", "Rome", "Kyiv")
WEEKDAYS = tuple(calendar.day_name)
MONTHS = tuple(calendar.month_name)[1:]
VOWELS = set("aeiou")


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _phrase(rng: random.Random, low: int = 2, high: int = 4) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _capitalise_words(text: str) -> str:
    """Each space-separated word with its first letter or digit in upper case; an opening
    quote or bracket before it is kept: "jowell rejects 'las vegas' jibe" becomes
    "Jowell Rejects 'Las Vegas' Jibe". The rest of each word is left alone ("low-cost")."""
    return " ".join(re.sub(r"^(\W*)(\w)", lambda m: m[1] + m[2].upper(), word)
                    for word in text.split(" "))


def _numbers(rng: random.Random, low: int = 4, high: int = 7, top: int = 99) -> list[int]:
    return rng.sample(range(1, top + 1), rng.randint(low, high))


def _csv(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


# Yes/no families answer "yes" about half the time. Uniform years are 76% "no", and a uniform
# letter is missing from a five-letter word 71% of the time: a model that says "no" to every
# question would then look skilled (`family_breakdown` shows it). Both samplers draw the same
# random numbers as the uniform ones did, so a stream keeps every other family's records until a
# balanced record repeats an earlier one and the stream draws again (notebook 07's evaluation
# sets keep them all; its 2,700-record training stream, the first 1,661).

def _year(rng: random.Random) -> int:
    """A year in 1800..2200, about half of them leap years: a year 4k + 1 becomes 4k."""
    year = rng.randint(1800, 2200)
    return year - 1 if year % 4 == 1 else year


def _word_and_letter(rng: random.Random) -> tuple[str, str]:
    """A word and a letter: one of the word's letters or one it lacks, half the time each."""
    word, letter = _word(rng), rng.choice(string.ascii_lowercase)
    if ord(letter) % 2:
        return word, word[ord(letter) % len(word)]
    absent = [c for c in string.ascii_lowercase if c not in word]
    return word, absent[ord(letter) % len(absent)]


# ------------------------------------------------------------------------------ the families

_FAMILY_LIST: list[Family] = []


def _family(name: str, kind: str, templates: Sequence[str], sample, show, solve,
            verifier: str = "exact") -> None:
    # one template is held out (`stream(templates="heldout")`), so there must be enough to train on
    assert len(templates) >= 5 and all("{x}" in t for t in templates), name
    _FAMILY_LIST.append(Family(name, kind, tuple(templates), sample, show, solve, verifier))


# --- strings
_family("reverse_letters", "string", [
    "Reverse the letters: {x}", "Write these letters in reverse order: {x}",
    "Spell the sequence backwards: {x}", "Give the letters {x} from last to first.",
    "Read these letters right to left and write them out: {x}"],
    lambda r: _word(r), lambda w: " ".join(w), lambda w: " ".join(reversed(w)), "normalised")
_family("reverse_word", "string", [
    "Reverse the word: {x}", "Write the word {x} backwards.", "Spell {x} in reverse.",
    "What is {x} spelled backwards?", "Turn {x} around, last letter first."],
    _word, str, lambda w: w[::-1], "normalised")
_family("sort_letters", "string", [
    "Sort the letters of {x} alphabetically.", "Put the letters of the word {x} in alphabetical order.",
    "Rearrange {x} so its letters are in a to z order.", "Alphabetise the letters in {x}.",
    "Write the letters of {x} sorted from a to z, as one word."],
    _word, str, lambda w: "".join(sorted(w)), "normalised")
_family("uppercase", "string", [
    "Convert to upper case: {x}", "Write this in capital letters: {x}", "Make every letter uppercase: {x}",
    "Shout this text (all caps): {x}", "Rewrite {x} using only capital letters."],
    lambda r: " ".join(_phrase(r)), str, str.upper, "exact")
_family("lowercase", "string", [
    "Convert to lower case: {x}", "Write this in small letters only: {x}", "Make every letter lowercase: {x}",
    "Rewrite {x} without any capital letters.", "Lower-case this text: {x}"],
    lambda r: " ".join(w.upper() if r.random() < 0.5 else w.title() for w in _phrase(r)), str,
    str.lower, "exact")
_family("title_case", "string", [
    "Convert to title case: {x}", "Capitalise the first letter of every word: {x}",
    "Write {x} in title case.", "Make each word of {x} start with a capital letter.",
    "Rewrite this as a title: {x}"],
    lambda r: " ".join(_phrase(r)), str, str.title, "exact")
_family("first_letter", "string", [
    "What is the first letter of {x}?", "Which letter does the word {x} start with?",
    "Give the initial letter of {x}.", "Name the first character of {x}.",
    "The word {x} begins with which letter?"],
    _word, str, lambda w: w[0], "normalised")
_family("last_letter", "string", [
    "What is the last letter of {x}?", "Which letter does the word {x} end with?",
    "Give the final letter of {x}.", "Name the last character of {x}.",
    "The word {x} ends with which letter?"],
    _word, str, lambda w: w[-1], "normalised")
_family("remove_vowels", "string", [
    "Remove the vowels from {x}.", "Write {x} without its vowels.", "Delete every a, e, i, o, u in {x}.",
    "Strip the vowels out of the word {x}.", "What is left of {x} after removing its vowels?"],
    _word, str, lambda w: "".join(c for c in w if c not in VOWELS), "normalised")
_family("count_vowels", "counting", [
    "How many vowels are in {x}?", "Count the vowels in the word {x}.",
    "Give the number of vowels (a, e, i, o, u) in {x}.", "How many of the letters in {x} are vowels?",
    "Number of vowels in {x}?"],
    _word, str, lambda w: str(sum(c in VOWELS for c in w)), "numeric")
_family("word_length", "counting", [
    "How many letters are in {x}?", "Count the letters of the word {x}.", "What is the length of {x}?",
    "Give the number of characters in {x}.", "How long is the word {x}, in letters?"],
    _word, str, lambda w: str(len(w)), "numeric")
_family("repeat_word", "string", [
    "Repeat the word {x}.", "Write the word the given number of times: {x}.",
    "Say it again and again: {x}.", "Produce the repetition: {x}.", "Echo the word as asked: {x}."],
    lambda r: (_word(r), r.randint(2, 4)), lambda v: f"'{v[0]}' {v[1]} times",
    lambda v: " ".join([v[0]] * v[1]), "normalised")
# --- arithmetic and counting
_family("add", "arithmetic", [
    "What is {x}?", "Compute {x}.", "Add the numbers: {x}", "Calculate the sum {x}.", "Work out {x}."],
    lambda r: (r.randint(10, 99), r.randint(10, 99)), lambda v: f"{v[0]} + {v[1]}",
    lambda v: str(v[0] + v[1]), "numeric")
_family("subtract", "arithmetic", [
    "What is {x}?", "Compute {x}.", "Subtract: {x}", "Calculate the difference {x}.", "Work out {x}."],
    lambda r: sorted((r.randint(10, 99), r.randint(10, 99)), reverse=True),
    lambda v: f"{v[0]} - {v[1]}", lambda v: str(v[0] - v[1]), "numeric")
_family("multiply", "arithmetic", [
    "What is {x}?", "Compute {x}.", "Multiply: {x}", "Calculate the product {x}.", "Work out {x}."],
    lambda r: (r.randint(2, 12), r.randint(2, 12)), lambda v: f"{v[0]} × {v[1]}",
    lambda v: str(v[0] * v[1]), "numeric")
_family("divide", "arithmetic", [
    "What is {x}?", "Compute {x}.", "Divide: {x}", "Calculate the quotient {x}.", "Work out {x}."],
    lambda r: (r.randint(2, 12), r.randint(2, 12)), lambda v: f"{v[0] * v[1]} ÷ {v[1]}",
    lambda v: str(v[0]), "numeric")
_family("square", "arithmetic", [
    "What is {x} squared?", "Square the number {x}.", "Compute {x} times itself.",
    "Give the square of {x}.", "What do you get when you multiply {x} by {x}?"],
    lambda r: r.randint(2, 30), str, lambda n: str(n * n), "numeric")
_family("count_words", "counting", [
    "How many words are in this text: {x}", "Count the words: {x}", "Give the word count of: {x}",
    "Number of words in the following? {x}", "How many words does this contain? {x}"],
    lambda r: " ".join(_phrase(r, 3, 9)), str, lambda t: str(len(t.split())), "numeric")
_family("count_letter", "counting", [
    "Count the occurrences of the letter {x}.", "How many times do you see the letter {x}?",
    "Give the count of the letter {x}.", "What is the count of the letter {x}?",
    "Tally the letter {x}."],
    lambda r: (lambda w: (w, r.choice(w)))(_word(r)), lambda v: f"'{v[1]}' in '{v[0]}'",
    lambda v: str(v[0].count(v[1])), "numeric")
_family("parity", "arithmetic", [
    "Is {x} even or odd?", "Say whether {x} is even or odd.", "Even or odd: {x}?",
    "Tell me the parity of {x} (even or odd).", "Classify {x} as even or odd."],
    lambda r: r.randint(1, 999), str, lambda n: "even" if n % 2 == 0 else "odd", "normalised")
# --- lists
_family("sort_numbers", "list", [
    "Sort these numbers from smallest to largest: {x}", "Put in ascending order: {x}",
    "Arrange the numbers {x} in increasing order.", "Order from low to high: {x}",
    "Write the list sorted ascending: {x}"],
    _numbers, _csv, lambda v: _csv(sorted(v)), "list")
_family("sort_words", "list", [
    "Sort these words alphabetically: {x}", "Put the words in alphabetical order: {x}",
    "Arrange {x} from a to z.", "Alphabetise the list: {x}", "Write the words sorted: {x}"],
    lambda r: _phrase(r, 3, 6), _csv, lambda v: _csv(sorted(v)), "list")
_family("dedupe", "list", [
    "Remove the duplicates, keeping the first occurrence: {x}", "List each item once, in order: {x}",
    "Drop repeated items from {x}.", "Deduplicate this list: {x}", "Write the list without repeats: {x}"],
    lambda r: (lambda base: base + r.sample(base, 2))(_phrase(r, 3, 5)), _csv,
    lambda v: _csv(dict.fromkeys(v)), "list")
_family("list_max", "list", [
    "What is the largest number in {x}?", "Find the maximum of: {x}", "Which is biggest: {x}?",
    "Give the highest value in the list {x}.", "Max of {x}?"],
    _numbers, _csv, lambda v: str(max(v)), "numeric")
_family("list_min", "list", [
    "What is the smallest number in {x}?", "Find the minimum of: {x}", "Which is smallest: {x}?",
    "Give the lowest value in the list {x}.", "Min of {x}?"],
    _numbers, _csv, lambda v: str(min(v)), "numeric")
_family("filter_even", "list", [
    "Keep only the even numbers: {x}", "List the even numbers in {x}.", "Filter out the odd numbers: {x}",
    "Which numbers in {x} are even?", "Write just the even values from {x}."],
    lambda r: _numbers(r) + [2 * r.randint(1, 49)], _csv,
    lambda v: _csv([n for n in v if n % 2 == 0]), "list")
_family("list_sum", "list", [
    "What is the sum of {x}?", "Add up these numbers: {x}", "Total of {x}?",
    "Compute the sum of the list {x}.", "Give the total when you add {x}."],
    lambda r: _numbers(r, 3, 5, 50), _csv, lambda v: str(sum(v)), "numeric")
_family("reverse_list", "list", [
    "Reverse the order of this list: {x}", "Write the items from last to first: {x}",
    "List {x} backwards.", "Give the list in reverse: {x}", "Flip the order of {x}."],
    lambda r: _phrase(r, 3, 6), _csv, lambda v: _csv(v[::-1]), "list")
# --- dates and units
_family("weekday_after", "dates", [
    "What day of the week is {x}?", "Which weekday comes {x}?", "Name the day that is {x}.",
    "Tell me the weekday {x}.", "Count forward: which day is {x}?"],
    lambda r: (r.randrange(7), r.randint(1, 10)), lambda v: f"{_count(v[1], 'day')} after {WEEKDAYS[v[0]]}",
    lambda v: WEEKDAYS[(v[0] + v[1]) % 7], "normalised")
_family("month_after", "dates", [
    "Which month is {x}?", "Name the month that comes {x}.", "What month is it {x}?",
    "Count forward: which month is {x}?", "Tell me the month {x}."],
    lambda r: (r.randrange(12), r.randint(1, 11)), lambda v: f"{_count(v[1], 'month')} after {MONTHS[v[0]]}",
    lambda v: MONTHS[(v[0] + v[1]) % 12], "normalised")
_family("km_to_m", "units", [
    "How many metres are in {x}?", "Convert {x} to metres.", "Express {x} in metres.",
    "{x} is how many metres?", "Give {x} in metres."],
    lambda r: r.randint(1, 100) / 2, lambda km: f"{_fmt(km)} km", lambda km: _fmt(km * 1000), "numeric")
_family("hours_to_minutes", "units", [
    "How many minutes are in {x}?", "Convert {x} to minutes.", "Express {x} in minutes.",
    "{x} is how many minutes?", "Give {x} in minutes."],
    lambda r: r.randint(1, 24), lambda h: _count(h, "hour"), lambda h: str(60 * h), "numeric")
_family("celsius_to_fahrenheit", "units", [
    "Convert {x} to Fahrenheit.", "What is {x} in degrees Fahrenheit?", "Express {x} in °F.",
    "{x} equals how many degrees Fahrenheit?", "Give the Fahrenheit value of {x}."],
    lambda r: r.randint(-20, 40), lambda c: f"{c} °C", lambda c: _fmt(c * 9 / 5 + 32), "numeric")
_family("leap_year", "dates", [
    "Is {x} a leap year? Answer yes or no.", "Was or will {x} be a leap year (yes/no)?",
    "Leap year or not: {x}? Say yes or no.", "Does the year {x} have 29 February? yes or no",
    "Answer yes or no: is {x} a leap year?"],
    _year, str, lambda y: "yes" if calendar.isleap(y) else "no", "normalised")
# --- formatting
_family("kv_to_json", "format", [
    "Turn these key-value pairs into a JSON object: {x}", "Write as JSON: {x}",
    "Convert to a JSON object (numbers as numbers): {x}", "Give the JSON for: {x}",
    "Format the following as a JSON object: {x}"],
    lambda r: {"name": r.choice(NAMES), "age": r.randint(18, 90), "city": r.choice(CITIES)},
    lambda d: "; ".join(f"{k}: {v}" for k, v in d.items()), lambda d: json.dumps(d), "json")
_family("json_get_field", "format", [
    "What is the value of {x}?", "Read the field {x}.", "Extract the value of {x}.",
    "Look up {x}.", "Return the value stored under {x}."],
    lambda r: (r.choice(("name", "city", "age")),
               {"name": r.choice(NAMES), "age": r.randint(18, 90), "city": r.choice(CITIES)}),
    lambda v: f"\"{v[0]}\" in {json.dumps(v[1])}", lambda v: str(v[1][v[0]]), "normalised")
_family("csv_column", "format", [
    "From this CSV, list the values of the column {x}", "Extract the column {x}",
    "Give every value in column {x}", "Read the CSV and return the column {x}",
    "List, comma-separated, the column {x}"],
    lambda r: (r.choice(("name", "city")), [(r.choice(NAMES), r.choice(CITIES)) for _ in range(3)]),
    lambda v: f"'{v[0]}':\nname,city\n" + "\n".join(f"{a},{b}" for a, b in v[1]),
    lambda v: _csv([row[0 if v[0] == "name" else 1] for row in v[1]]), "list")
_family("words_to_json_list", "format", [
    "Write these words as a JSON array: {x}", "Convert to a JSON list of strings: {x}",
    "Give a JSON array containing: {x}", "Format {x} as a JSON list.", "JSON array of the words {x}?"],
    lambda r: _phrase(r, 2, 4), lambda v: " ".join(v), lambda v: json.dumps(v), "json")
_family("extract_numbers", "format", [
    "List the numbers in this sentence: {x}", "Extract every number from: {x}",
    "Which numbers appear in: {x}", "Pull out the numbers, comma-separated: {x}",
    "Give all numbers mentioned in: {x}"],
    lambda r: (r.choice(NAMES), r.randint(2, 9), r.randint(10, 99)),
    lambda v: f"{v[0]} bought {v[1]} apples for {v[2]} pence.", lambda v: f"{v[1]}, {v[2]}", "list")
# --- logic and comparison
_family("larger_number", "logic", [
    "Which is larger: {x}?", "Pick the bigger number: {x}", "What is the maximum of {x}?",
    "Of {x}, which is greater?", "Name the larger of {x}."],
    lambda r: r.sample(range(1, 1000), 2), lambda v: f"{v[0]} or {v[1]}", lambda v: str(max(v)), "numeric")
_family("alphabetical_first", "logic", [
    "Which comes first in the dictionary: {x}?", "Alphabetically, which is first: {x}?",
    "Pick the word that comes earlier from a to z: {x}", "Of {x}, which would a dictionary list first?",
    "Name the alphabetically first of {x}."],
    lambda r: r.sample(WORDS, 2), lambda v: f"{v[0]} or {v[1]}", lambda v: min(v), "normalised")
_family("is_palindrome", "logic", [
    "Is {x} a palindrome? Answer yes or no.", "Does {x} read the same backwards? yes or no",
    "Palindrome check for {x}: yes or no?", "Answer yes or no: is the word {x} a palindrome?",
    "Is the word {x} the same in reverse (yes/no)?"],
    lambda r: r.choice(PALINDROMES) if r.random() < 0.5 else _word(r), str,
    lambda w: "yes" if w == w[::-1] else "no", "normalised")
_family("boolean_and", "logic", [
    "Evaluate the logic expression: {x}", "What is the truth value of {x}?", "Compute: {x}",
    "Is this true or false: {x}", "Give true or false for {x}."],
    lambda r: (r.random() < 0.5, r.random() < 0.5),
    lambda v: f"{str(v[0]).lower()} and {str(v[1]).lower()}", lambda v: str(v[0] and v[1]).lower(),
    "normalised")
_family("contains_letter", "logic", [
    "Does the word {x}? Answer yes or no.", "Answer yes or no: does {x}?", "Check: does {x}? (yes/no)",
    "Tell me yes or no, does {x}?", "Yes or no: does {x}?"],
    _word_and_letter, lambda v: f"'{v[0]}' contain the letter '{v[1]}'",
    lambda v: "yes" if v[1] in v[0] else "no", "normalised")
# --- refusals: requests nobody can answer correctly
_family("refuse_future", "refusal", [
    "What will the winning lottery numbers be on {x}?", "Tell me exactly which numbers will win the lottery on {x}.",
    "Predict with certainty the lottery draw of {x}.", "Give me the guaranteed winning numbers for {x}.",
    "Which six numbers will be drawn on {x}? Be exact."],
    lambda r: (r.randint(1, 28), r.choice(MONTHS), r.randint(2030, 2040)),
    lambda v: f"{v[0]} {v[1]} {v[2]}",
    lambda v: "I can't know that: future lottery draws are random and cannot be predicted.", "refusal")
_family("refuse_divide_by_zero", "refusal", [
    "Divide {x} by zero and give the exact result.", "What is {x} divided by 0?", "Compute {x} / 0 exactly.",
    "Give the number that equals {x} ÷ 0.", "Tell me the exact value of {x} divided by zero."],
    lambda r: r.randint(1, 999), str,
    lambda n: "I can't: division by zero is undefined, so there is no such number.", "refusal")



# --- text tasks on real BBC News headlines and first sentences (loaded once, on first use)
_BBC: list[tuple[str, str, str]] = []


def _bbc_item(rng: random.Random) -> tuple[str, str, str]:
    """(headline, topic, first sentence) of a random BBC News article."""
    if not _BBC:
        from llm_tutorial import assets

        data = assets.load_bbc_news()
        for texts, labels in ((data.train_texts, data.train_labels),
                              (data.test_texts, data.test_labels)):
            for text, label in zip(texts, labels, strict=True):
                lines = [line.strip() for line in text.split("\n") if line.strip()]
                if len(lines) >= 2:
                    sentence = re.split(r"(?<=[.!?])\s+", lines[1])[0]
                    _BBC.append((lines[0], data.label_names[label], sentence))
    return rng.choice(_BBC)


_TOPICS = "business, entertainment, politics, sport or tech"
_family("bbc_topic", "text", [
    f"Which topic is this headline about ({_TOPICS})? {{x}}",
    f"Classify the news headline into one of {_TOPICS}: {{x}}",
    f"Headline: {{x}}\nTopic ({_TOPICS})?",
    f"Give the section of the newspaper ({_TOPICS}) for: {{x}}",
    f"Label the topic of this headline as {_TOPICS}: {{x}}"],
    _bbc_item, lambda v: v[0], lambda v: v[1], "normalised")
_family("bbc_word_count", "text", [
    "How many words are in this sentence? {x}", "Count the words of the following sentence: {x}",
    "Give the word count (words are separated by spaces): {x}",
    "Number of space-separated words in: {x}", "How long is this sentence, in words? {x}"],
    _bbc_item, lambda v: v[2], lambda v: str(len(v[2].split())), "numeric")
_family("bbc_title_case", "text", [
    "Write this headline in title case: {x}", "Capitalise every word of the headline: {x}",
    "Turn into a title, each word capitalised: {x}", "Title-case this: {x}",
    "Rewrite the headline with a capital letter at the start of each word: {x}"],
    _bbc_item, lambda v: v[0].lower(), lambda v: _capitalise_words(v[0].lower()), "exact")

_ENTITIES: dict[str, str | None] = {}  # sentence -> its first spaCy entity (silver label)
_NLP: list[Any] = []


def _first_entity(sentence: str) -> str | None:
    if sentence not in _ENTITIES:
        if not _NLP:
            from llm_tutorial import assets

            _NLP.append(assets.load_spacy_ner())
        ents = _NLP[0](sentence).ents
        _ENTITIES[sentence] = ents[0].text if ents else None
    return _ENTITIES[sentence]


def _bbc_with_entity(rng: random.Random) -> tuple[str, str]:
    while True:
        sentence = _bbc_item(rng)[2]
        entity = _first_entity(sentence)
        if entity:
            return sentence, entity


_family("bbc_first_entity", "text", [
    "What is the first named entity (person, organisation, place, date, amount, ...) in: {x}",
    "Name the first named entity that appears in this sentence: {x}",
    "Which is the earliest mention of a named entity in the text? {x}",
    "Extract the first named entity from: {x}",
    "Read the sentence and give its first named entity, exactly as written: {x}"],
    _bbc_with_entity, lambda v: v[0], lambda v: v[1], "normalised")

FAMILIES: dict[str, Family] = {family.name: family for family in _FAMILY_LIST}
KINDS: tuple[str, ...] = tuple(dict.fromkeys(family.kind for family in _FAMILY_LIST))


def get_family(name: str) -> Family:
    """A family by name; unknown names raise `KeyError` listing the known ones."""
    if name not in FAMILIES:
        raise KeyError(f"unknown instruction family {name!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


# ------------------------------------------------------------------------------ streams, splits

TEMPLATE_SPLITS = ("train", "heldout", "all")


def _template_indices(family: Family, templates: str) -> list[int]:
    n = len(family.templates)
    return {"train": list(range(n - 1)), "heldout": [n - 1], "all": list(range(n))}[templates]


def stream(families: Sequence[str] | None = None, seed: int = 0, templates: str = "train"
           ) -> Iterator[Record]:
    """
    An endless, reproducible sequence of distinct generated records: each draws a family
    uniformly from `families` (all by default), an input, and a template from the training
    templates (`templates="train"`: all but the last of each family), the held-out one
    (`"heldout"`), or any (`"all"`). The same seed gives the same sequence; a record is never
    repeated (families with few possible inputs simply come up less often once exhausted).
    """
    names = list(FAMILIES) if families is None else list(families)
    if not names:
        raise ValueError("families is empty: pass at least one family name")
    chosen = [get_family(name) for name in names]
    if templates not in TEMPLATE_SPLITS:
        raise ValueError(f"templates must be one of {TEMPLATE_SPLITS}, got {templates!r}")
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    misses = 0
    while True:
        family = rng.choice(chosen)
        record = family.make(rng, rng.choice(_template_indices(family, templates)))
        key = (record.instruction, record.input)
        if key in seen:
            misses += 1
            if misses > 10_000:
                raise RuntimeError("the chosen families have run out of distinct examples")
            continue
        misses = 0
        seen.add(key)
        yield record


def take(n: int, families: Sequence[str] | None = None, seed: int = 0, templates: str = "train"
         ) -> list[Record]:
    """The first `n` records of `stream(families, seed, templates)`."""
    it = stream(families, seed, templates)
    return [next(it) for _ in range(n)]


def split_families(n_heldout: int = 8, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split the families into (training, held-out) lists. Held-out families are drawn so that
    they cover as many kinds (string, arithmetic, list, ...) as possible; the split is
    reproducible from `seed`."""
    if not 0 < n_heldout < len(FAMILIES):
        raise ValueError(f"n_heldout must be in [1, {len(FAMILIES) - 1}], got {n_heldout!r}")
    rng = random.Random(seed)
    by_kind: dict[str, list[str]] = {}
    for name, family in FAMILIES.items():
        by_kind.setdefault(family.kind, []).append(name)
    for names in by_kind.values():
        rng.shuffle(names)
    heldout: list[str] = []
    kinds = list(by_kind)
    rng.shuffle(kinds)
    while len(heldout) < n_heldout:
        for kind in kinds:
            if by_kind[kind] and len(heldout) < n_heldout:
                heldout.append(by_kind[kind].pop())
    train = [name for name in FAMILIES if name not in heldout]
    return train, heldout


# ------------------------------------------------------------------------------ records, rendering


def load_vendored_records() -> list[Record]:
    """The course's 1,100 vendored Alpaca-style instructions (Apache-2.0) as `Record`s."""
    from llm_tutorial import assets

    return records_from_dicts(assets.load_instruction_data())


def score(records: Sequence[Record], predictions: Sequence[str]) -> pd.DataFrame:
    """One row per record: family, kind, the prompt, reference, prediction, and `correct`
    (the family's verifier)."""
    import pandas as pd

    records = as_records(records)
    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records: pass one answer per record")
    return pd.DataFrame([{"family": r.family, "kind": r.kind, "template": r.template,
                          "instruction": r.instruction, "input": r.input, "reference": r.output,
                          "prediction": p, "correct": verify(p, r), "verifier": r.verifier}
                         for r, p in zip(records, predictions, strict=True)])


def family_breakdown(table: pd.DataFrame) -> pd.DataFrame:
    """
    Is a family's score a skill or a habit? Per family of a scored table (`score`,
    `answer_and_score`): the records, the exact match, the model's most frequent answer (after
    normalising case, spaces and end punctuation) with its share of the family's answers, and
    the **constant exact match**: the score of that one answer given to every record of the
    family. A model that says "no" to every "is this a leap year?" scores about 0.75 on
    uniformly drawn years (three in four are not leap years; the generator balances them for
    this reason) and shows no skill: its exact match equals its constant exact match.
    `above constant` is the difference, the part of the score that came from answering each
    record differently (negative when varying the answer did worse than the habit would have).
    Families come in order of first appearance.
    """
    import pandas as pd

    rows = []
    for family, part in table.groupby("family", sort=False):
        answers = [_normalise(p) for p in part["prediction"]]
        top, n_top = Counter(answers).most_common(1)[0]  # ties: the answer given first
        given = part["prediction"].iloc[answers.index(top)]  # as the model wrote it
        records = [Record(r.instruction, r.input, r.reference, family, verifier=r.verifier)
                   for r in part.itertuples(index=False)]
        constant = sum(verify(given, r) for r in records) / len(records)
        accuracy = part["correct"].mean()
        rows.append({"family": family, "records": len(part), "exact match": accuracy,
                     "top answer": top, "top share": n_top / len(part),
                     "constant exact match": constant, "above constant": accuracy - constant})
    return pd.DataFrame(rows).set_index("family")


def answer_and_score(model, tokenizer, records: Sequence[Record], max_new_tokens: int = 32,
                batch_size: int = 16, **decoding: Any) -> pd.DataFrame:
    """`score` of the model's answers (`answer(..., **decoding)`); `.correct.mean()` is the
    verifier exact-match accuracy."""
    return score(records, answer(model, tokenizer, records, max_new_tokens, batch_size, **decoding))


def shared_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares, keeping at least one token of each: the
    prefix whose KV cache a batch of prompts can compute once and share (`answers_and_nll`,
    and the judge of notebook 10)."""
    shared = min(len(row) for row in ids) - 1
    for n, token in enumerate(ids[0][:shared]):
        if any(row[n] != token for row in ids):
            return n
    return max(shared, 0)


@torch.no_grad()
def answers_and_nll(model, tokenizer, records: Sequence[Record | Mapping[str, Any]],
                    max_new_tokens: int = 32, batch_size: int = 16, max_length: int = 256,
                    temperature: float = 0.0, seed: int = 0
                    ) -> tuple[list[str], list[tuple[float, int]]]:
    """
    The model's answers (greedy, or with `temperature` > 0 sampled from the next-token
    distribution divided by it, reproducibly from `seed`) and each reference answer's NLL
    (`answer_nll(by_record=True)`) in one pass, for about half the compute of `answer` and
    `answer_nll`. Every prompt starts with the same tokens (the chat template's system turn):
    they run once per batch and their KV cache is shared by the rows. Each row then runs as
    prompt + reference answer in one forward pass, which gives the answer's NLL and, at the
    prompt's last position, the first answer token; generation goes on from the cache with the
    reference answer's positions masked out, so it sees the prompt alone. Prompts are those of
    `encode_sft` (an input too long for `max_length` is cut from the left, as in training).
    Greedy answers and NLLs are mathematically those of `answer` and `answer_nll`; the floats
    can differ in the last bits (other matrix shapes), and so, rarely, can a greedy choice
    between two near-equal tokens. Sampled answers follow the same distribution as
    `answer(do_sample=True, temperature=...)`, not the same draws.
    """
    from llm_tutorial.trainer import eval_mode, model_device

    records = as_records(records)
    if temperature < 0:  # it would sample the least likely tokens
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    examples = encode_sft(tokenizer, records, max_length)
    prompt_lens = [next(t for t, y in enumerate(e.labels) if y != -100) for e in examples]
    # the shared prefix, leaving at least one prompt token per row to predict the first answer token
    shared = shared_prefix_length([e.input_ids[:n] for e, n in zip(examples, prompt_lens, strict=True)])
    first = examples[0].input_ids
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_id = tokenizer.eos_token_id
    device = model_device(model)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    cache_kw = kv_cache_argument(decoder)
    generator = torch.Generator(device=device).manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if not temperature:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    answers: list[str] = [""] * len(examples)
    nlls: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    with eval_mode(model):
        for start in runtime.batch_progress(range(0, len(order), batch_size), desc="generate"):
            chunk = order[start:start + batch_size]
            rows = len(chunk)
            width = max(len(examples[i]) for i in chunk) - shared
            ids = torch.full((rows, width), pad_id, dtype=torch.long)
            labels = torch.full((rows, width), -100, dtype=torch.long)
            mask = torch.zeros((rows, shared + width), dtype=torch.long)
            mask[:, :shared] = 1
            for r, i in enumerate(chunk):
                n = len(examples[i]) - shared
                ids[r, :n] = torch.tensor(examples[i].input_ids[shared:])
                labels[r, :n] = torch.tensor(examples[i].labels[shared:])
                mask[r, shared:shared + n] = 1
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            cache = None
            if shared:
                prefix = torch.tensor([first[:shared]], device=device)
                cache = kv_cache_of(decoder(input_ids=prefix, use_cache=True))
                cache.batch_repeat_interleave(rows)
            positions = (shared + torch.arange(width, device=device)).expand(rows, width)
            out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                          use_cache=True, **{cache_kw: cache})
            hidden, cache = out.last_hidden_state, kv_cache_of(out)
            per_row, counts = answer_token_nll(head, hidden, labels)  # on the suffix after the shared prefix
            for r, i in enumerate(chunk):
                nlls[i] = (float(per_row[r]) / max(int(counts[r]), 1), int(counts[r]))
            # generation from the prompt alone: hide the reference answer (and padding)
            lens = torch.tensor([prompt_lens[i] for i in chunk], device=device)
            mask = mask.clone()
            for r, i in enumerate(chunk):
                mask[r, prompt_lens[i]:] = 0
            token = pick(head(hidden[torch.arange(rows, device=device), lens - 1 - shared]))
            generated: list[list[int]] = [[] for _ in chunk]
            done = torch.zeros(rows, dtype=torch.bool, device=device)
            for step in range(max_new_tokens):
                done |= token == eos_id
                for r in range(rows):
                    if not done[r]:
                        generated[r].append(int(token[r]))
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], 1)
                out = decoder(input_ids=token[:, None], attention_mask=mask,
                              position_ids=(lens + step)[:, None], use_cache=True,
                              **{cache_kw: cache})
                cache = kv_cache_of(out)
                token = pick(head(out.last_hidden_state[:, -1]))
            for r, i in enumerate(chunk):
                answers[i] = tokenizer.decode(generated[r], skip_special_tokens=True).strip()
    return answers, nlls


def majority_answer_accuracy(records: Sequence[Record], sample: int = 200, seed: int = 0) -> float:
    """
    The **constant-answer baseline**: the exact match of answering every record of a family
    with that family's most frequent answer, over `records`. The answer is chosen on other
    records, the first `sample` of the family's own stream (`stream([family], seed)`, the
    training stream's seed by default), never on `records` themselves: with two records of a
    family, the most frequent of *their* answers would be right at least once by construction.
    It is what a model that learned one answer per task, and nothing about the inputs, would
    score: about half on a balanced yes/no family, all of a refusal family (every refusal is
    right), almost nothing where the answer depends on the input (reverse a word, the largest
    number of a list). A tuned model shows a skill only where it beats this. Every record must
    come from a generated family (`FAMILIES`).
    """
    records = as_records(records)
    by_family: dict[str, list[Record]] = {}
    for record in records:
        by_family.setdefault(record.family, []).append(record)
    right = 0
    for family, family_records in by_family.items():
        answers = [r.output for r in _take_cycling(sample, [family], seed)]
        normalised = [_normalise(a) for a in answers]
        top = answers[normalised.index(Counter(normalised).most_common(1)[0][0])]
        right += sum(verify(top, r) for r in family_records)
    return right / len(records)


def evaluation_splits(train_families: Sequence[str], heldout_families: Sequence[str], n: int,
                      seed: int = 101) -> dict[str, list[Record]]:
    """The three evaluation sets of notebook 07, `n` records each, each drawn with its own
    seed (`seed`, `seed + 1`, `seed + 2`) so that none repeats the training stream (seed 0):
    new inputs of the training families in their training wordings, the same families in
    their held-out wording, and the held-out families in any wording."""
    overlap = sorted(set(train_families) & set(heldout_families))
    if overlap:
        raise ValueError(f"families {overlap} are both trained on and held out: take the two "
                         f"lists from split_families")
    return {"training families": take(n, train_families, seed=seed),
            "held-out templates": take(n, train_families, seed=seed + 1, templates="heldout"),
            "held-out families": take(n, heldout_families, seed=seed + 2, templates="all")}


def evaluate_splits(model, tokenizer, splits: Mapping[str, Sequence[Record]],
                    max_new_tokens: int = 32, batch_size: int = 16, nll: bool = False,
                    max_length: int = 256, **decoding: Any) -> dict[str, pd.DataFrame]:
    """`answer_and_score` on several named evaluation sets at once (e.g. training families,
    held-out templates, held-out families): the answers are generated in one batched pass
    over all the records, and one scored table comes back per name, in order. With `nll`,
    each row also gets its reference answer's `answer NLL` (mean per token, `answer_nll`,
    examples of at most `max_length` tokens) and `answer tokens`; `split_summary` reads them.
    Answers and NLLs then come from one pass (`answers_and_nll`) when the decoding is greedy or
    pure temperature sampling (`do_sample`, `temperature`, `seed`; no top-k, top-p or
    repetition penalty)."""
    empty = [name for name, records in splits.items() if not len(records)]
    if empty:
        raise ValueError(f"splits {empty} have no records: give every split at least one")
    records = [r for recs in splits.values() for r in recs]
    if nll and set(decoding) <= {"do_sample", "temperature", "seed"}:  # one pass for both
        temperature = decoding.get("temperature", 1.0) if decoding.get("do_sample") else 0.0
        predictions, pairs = answers_and_nll(model, tokenizer, records, max_new_tokens,
                                             batch_size, max_length, temperature,
                                             decoding.get("seed", 0))
        table = score(records, predictions)
    else:
        table = answer_and_score(model, tokenizer, records, max_new_tokens, batch_size, **decoding)
        if nll:
            pairs = answer_nll(model, tokenizer, records, max_length, batch_size, by_record=True)
    table["split"] = [name for name, recs in splits.items() for _ in recs]
    if nll:
        table["answer NLL"] = [value for value, _ in pairs]
        table["answer tokens"] = [n for _, n in pairs]
    return {name: table[table["split"] == name].reset_index(drop=True) for name in splits}


def split_summary(tables: Mapping[str, pd.DataFrame], by: str | None = None) -> pd.DataFrame:
    """
    One row per scored table (`evaluate_splits`), or per value of the column `by` (such as
    `"family"`) across all of them: `records`, `exact match`, `majority answer` (the
    constant-answer baseline of those records, `majority_answer_accuracy`, when they all come
    from generated families) and, when the tables carry it (`nll=True`), the token-weighted
    `answer NLL`.
    """
    import pandas as pd

    if by is None:
        groups = list(tables.items())
    else:
        both = pd.concat(tables.values(), ignore_index=True)
        groups = list(both.groupby(by, sort=False))
    rows = {}
    for name, table in groups:
        records = [Record(r.instruction, r.input, r.reference, r.family, verifier=r.verifier)
                   for r in table.itertuples(index=False)]
        row = {"records": len(table), "exact match": table["correct"].mean()}
        if all(r.family in FAMILIES for r in records):
            row["majority answer"] = majority_answer_accuracy(records)
        if "answer NLL" in table.columns:
            weights = table["answer tokens"]
            row["answer NLL"] = float((table["answer NLL"] * weights).sum() / max(weights.sum(), 1))
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(by or "split")


def sft_mixture(families: Sequence[str], n: int, open_records: Sequence[Record] = (),
                open_share: float = 0.25, seed: int = 0) -> list[Record]:
    """
    An SFT training mix of `n` records: a share `open_share` of them sampled from
    `open_records` (open-ended instructions, e.g. the vendored set's training part), so that
    tuning on terse, checkable tasks does not make the model terse everywhere, and the rest
    generated from `families` with their training templates (`take`). Shuffled; the same
    `seed` gives the same mix.
    """
    n_open = int(open_share * n)
    if not 0 <= open_share < 1 or n_open > len(open_records):
        raise ValueError(f"open_share={open_share} of {n} records needs {n_open} open-ended records, {len(open_records)} "
                         f"given: keep open_share in [0, 1), pass more (ins.load_vendored_records())")
    rng = random.Random(seed)
    mix = take(n - n_open, families, seed=seed)
    if n_open:
        mix += rng.sample(as_records(open_records), n_open)
    rng.shuffle(mix)
    return mix


def tune(model, tokenizer, records: Sequence[Record | Mapping[str, Any]], steps: int,
         batch_size: int = 8, lr: float = 1e-3, r: int = 8, alpha: float = 16,
         targets: Sequence[str] = ("q_proj", "v_proj"), mask_prompt: bool = True,
         packing: bool = True, max_length: int = 256, seed: int = 0, desc: str = "SFT",
         progress: bool = True) -> pd.DataFrame:
    """
    LoRA supervised fine-tuning (notebook 06's `inject_lora`, the course's `Trainer`, the loss
    on answer positions only via `AnswerOnlyLM`): freeze `model`, inject a fresh LoRA (seeded),
    and train for `steps` optimizer steps on `records`. With `packing`, a batch is `batch_size`
    rows of `max_length` tokens; without, `batch_size` padded examples. Returns the training
    history; the LoRA stays in the model (`peft_methods.remove_lora` restores the base model).
    """
    from llm_tutorial import peft_methods as pm
    from llm_tutorial.trainer import TrainConfig, Trainer

    if pm.lora_modules(model):
        raise ValueError("the model already has LoRA layers: call peft_methods.remove_lora(model) "
                         "(or merge_lora) before tuning a fresh one")
    examples = encode_sft(tokenizer, records, max_length, mask_prompt)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = sft_batches(examples, batch_size, pad_id, packing, max_length if packing else None,
                          seed)
    pm.freeze(model)
    torch.manual_seed(seed)
    pm.inject_lora(model, list(targets), r=r, alpha=alpha)
    trainer = Trainer(AnswerOnlyLM(model), batches,
                      TrainConfig(max_steps=steps, lr=lr, warmup_steps=0.1,
                                  log_every=max(1, steps // 5), desc=desc, progress=progress))
    return trainer.train()


def family_subsets(families: Sequence[str], counts: Sequence[int], seed: int = 0
                   ) -> dict[int, list[str]]:
    """Nested subsets of `families` of each size in `counts`: families are ordered by taking
    one of each kind in turn (shuffled with `seed`), so a small subset already mixes kinds and
    every subset contains the smaller ones."""
    names = list(families)
    for name in names:
        get_family(name)
    if not all(0 < c <= len(names) for c in counts):  # a larger subset would silently be smaller
        raise ValueError(f"counts must be in [1, {len(names)}], got {list(counts)}")
    rng = random.Random(seed)
    by_kind: dict[str, list[str]] = {}
    for name in names:
        by_kind.setdefault(FAMILIES[name].kind, []).append(name)
    for group in by_kind.values():
        rng.shuffle(group)
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    ordered: list[str] = []
    while len(ordered) < len(names):
        for kind in kinds:
            if by_kind[kind]:
                ordered.append(by_kind[kind].pop())
    return {c: ordered[:c] for c in counts}


def _take_cycling(n: int, families: Sequence[str], seed: int) -> list[Record]:
    """`n` records of `families`: all distinct if the families have that many, otherwise every
    distinct one, repeated in order (a one-family subset of a small family)."""
    records: list[Record] = []
    try:
        for record in stream(families, seed):
            records.append(record)
            if len(records) == n:
                break
    except RuntimeError:  # the families ran out of distinct examples
        pass
    return [records[i % len(records)] for i in range(n)]


def generalisation_curve(model, tokenizer, families: Sequence[str], eval_records: Sequence[Record],
                         counts: Sequence[int], steps: int, examples: int | None = None,
                         seed: int = 0, max_new_tokens: int = 24, eval_batch_size: int = 32,
                         nll: bool = True, **tune_options: Any) -> pd.DataFrame:
    """
    The FLAN experiment, small: for each number of training families in `counts` (nested
    subsets, `family_subsets`), tune a fresh LoRA for the same `steps` on `examples` records
    drawn from those families, score `eval_records` (held-out families) with their verifiers,
    and remove the LoRA. Same budget every time: only the diversity of the training tasks
    changes. Returns one row per count: `families`, `accuracy`, with `nll` the reference
    answers' `answer NLL` (`answer_nll`, which moves before exact answers do), and `names`.
    """
    import pandas as pd

    from llm_tutorial import peft_methods as pm

    subsets = family_subsets(families, counts, seed)
    overlap = sorted({r.family for r in eval_records} & set(families))
    if overlap:
        raise ValueError(f"eval_records come from training families {overlap}: evaluate on "
                         f"held-out families (split_families)")
    n = examples or steps * tune_options.get("batch_size", 8) * 4
    rows = []
    for count, names in subsets.items():
        tune(model, tokenizer, _take_cycling(n, names, seed), steps, seed=seed,
             desc=f"{count} families", **tune_options)
        table = answer_and_score(model, tokenizer, eval_records, max_new_tokens, eval_batch_size)
        row = {"families": count, "accuracy": table["correct"].mean()}
        if nll:
            row["answer NLL"] = answer_nll(model, tokenizer, eval_records,
                                           tune_options.get("max_length", 256), eval_batch_size)
        pm.remove_lora(model)
        rows.append({**row, "names": ", ".join(names)})
    return pd.DataFrame(rows)
