"""Exercises for notebook 07 · Instruction tuning.

* `07.mask-labels`: build the labels of an SFT example, prompt masked out of the loss.
* `07.pack-rows`: predict how many rows packing needs.
* `07.numeric-verifier`: write a verifier that never crashes on free-form model text.
* `07.yes-to-everything`: predict, then run: the exact match of answering "yes" to every
  held-out-family record (a habit, not a skill).
"""

from __future__ import annotations

import functools
import numbers

from llm_tutorial.exercises import exercise

# (prompt ids, answer ids) pairs the label checker tries
_MASK_CASES = [([5, 6, 7], [8, 9]), ([1], [2, 3, 4]), ([10, 11, 12, 13], [14])]


def _check_mask_labels(my_labels) -> str | None:
    if not callable(my_labels):
        return "pass the function itself, `my_labels`, not a value"
    for prompt, answer in _MASK_CASES:
        got = my_labels(list(prompt), list(answer))
        if got is None:
            return "your function returned None: return the list of labels"
        got = list(got)
        if len(got) != len(prompt) + len(answer):
            return (f"for {len(prompt)} prompt and {len(answer)} answer tokens return "
                    f"{len(prompt) + len(answer)} labels, one per input token; got {len(got)}")
        if got == prompt + answer:
            return "the prompt tokens must not carry a loss: set their labels to -100"
        if got == [-100] * len(prompt) + [-100] * len(answer):
            return "the answer tokens are the targets: keep their ids as labels"
        if got != [-100] * len(prompt) + answer:
            return (f"for prompt {prompt} and answer {answer} expected "
                    f"{[-100] * len(prompt) + answer}, got {got}")
    return None


@exercise("07.mask-labels", "Write my_labels(prompt_ids, answer_ids) returning the labels of the "
          "SFT example prompt_ids + answer_ids, with the prompt masked out of the loss (-100).",
          _check_mask_labels, wrong_answer=lambda prompt, answer: prompt + answer)
def mask_labels_solution(prompt_ids: list[int], answer_ids: list[int]) -> list[int]:
    return [-100] * len(prompt_ids) + list(answer_ids)


PACK_LENGTHS = [60, 80, 30, 90, 40, 70, 20, 45]
PACK_ROW = 128


def _rows(lengths: list[int], row: int) -> int:
    rows, used = 1, 0
    for n in lengths:
        if used + n > row:
            rows, used = rows + 1, 0
        used += n
    return rows


def _check_pack_rows(answer) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        return f"give a whole number of rows, got {answer!r}"
    right = _rows(PACK_LENGTHS, PACK_ROW)
    if answer == right:
        return None
    if answer == -(-sum(PACK_LENGTHS) // PACK_ROW):
        return ("that is total tokens / row length, as if examples could be split across rows; "
                "pack never splits an example: a new row starts when the next one does not fit")
    if answer == len(PACK_LENGTHS):
        return "that is one example per row (padding); several short examples share a row"
    return (f"go through the lengths in order, starting a new row of {PACK_ROW} tokens whenever "
            f"the next example does not fit in what is left")


@exercise("07.pack-rows", f"Examples of {PACK_LENGTHS} tokens are packed, in this order, into "
          f"rows of {PACK_ROW} tokens (chat.pack). How many rows?", _check_pack_rows,
          wrong_answer=-(-sum(PACK_LENGTHS) // PACK_ROW), answer_is_value=True)
def pack_rows_solution():
    rows, used = 1, 0
    for n in PACK_LENGTHS:
        if used + n > PACK_ROW:  # the next example does not fit: start a new row
            rows, used = rows + 1, 0
        used += n
    return rows


_VERIFIER_CASES = [("68", "68", True), ("The answer is 68.", "68", True), ("68.0", "68", True),
                   ("-2.2 °F", "-2.2", True), ("It is 67", "68", False), ("", "68", False),
                   ("sixty-eight", "68", False), ("1e400", "68", False), (None, "68", False),
                   ("68 or maybe 70", "68", True), ("about 10,000", "10000", True)]


def _check_numeric_verifier(my_verify) -> str | None:
    if not callable(my_verify):
        return "pass the function itself, `my_verify`, not a value"
    for prediction, reference, expected in _VERIFIER_CASES:
        try:
            got = my_verify(prediction, reference)
        except Exception as error:  # the point of the exercise: it must not raise
            return (f"my_verify({prediction!r}, {reference!r}) raised {type(error).__name__}: "
                    f"a verifier must return False on text it cannot read, never raise")
        if got is not expected and got != expected:
            return (f"my_verify({prediction!r}, {reference!r}) returned {got!r}, expected "
                    f"{expected}: take the first number in the text (commas as thousands "
                    f"separators) and compare within a small tolerance")
    return None


@exercise("07.numeric-verifier", "Write my_verify(prediction, reference) -> bool for numeric "
          "answers: True when the first number in the model's text equals the reference (within "
          "1e-6 relative), False otherwise, and never an exception, whatever the text.",
          _check_numeric_verifier, wrong_answer=lambda p, r: float(p) == float(r))
def numeric_verifier_solution(prediction, reference) -> bool:
    import math
    import re

    if not isinstance(prediction, str):
        return False
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", prediction)
    if match is None:
        return False
    try:
        value, target = float(match.group().replace(",", "")), float(reference)
    except ValueError:
        return False
    return math.isfinite(value) and math.isclose(value, target, rel_tol=1e-6, abs_tol=1e-9)


# --------------------------------------------------------------------------- 07.yes-to-everything

YES_RECORDS = dict(n=100, split_seed=0, n_heldout=8, seed=103)  # notebook 07's full held-out split


@functools.lru_cache(maxsize=1)
def _yes_scores() -> tuple[float, float]:
    """(exact match of "yes" to every record, share of the records from yes/no families)."""
    from llm_tutorial import instructions as ins

    s = YES_RECORDS
    _, heldout = ins.split_families(s["n_heldout"], seed=s["split_seed"])
    records = ins.take(s["n"], heldout, seed=s["seed"], templates="all")
    yes_no = [r for r in records if r.output in ("yes", "no")]
    return sum(ins.verify("yes", r) for r in records) / len(records), len(yes_no) / len(records)


def _check_yes_to_everything(answer) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real) or not 0 <= answer <= 1:
        return "answer with a number between 0 and 1 (an exact match), e.g. my_yes = 0.3"
    right, yes_no_share = _yes_scores()
    if abs(answer - right) <= 0.05:
        return None
    if abs(answer - 0.5) <= 0.05:
        return ("half would be right for yes/no questions only: most held-out families ask for a "
                "number, a letter, a title or a refusal, where 'yes' is never right")
    if abs(answer - yes_no_share) <= 0.05:
        return ("that is the share of yes/no records; 'yes' is right only for those whose answer "
                "is yes, about half of them")
    if answer == 0:
        return "two of the eight held-out families are yes/no questions: 'yes' is right for some"
    return ("count the records of the yes/no families (is_palindrome, leap_year) among the 100, "
            "and take the half of them whose answer is yes; every other answer is wrong")


@exercise("07.yes-to-everything", "Predict, then run: a 'model' answers \"yes\" to every one of the "
          "100 held-out-family records of the full profile (ins.take(100, heldout_families, "
          "seed=103, templates='all')). What exact match does it reach? (±0.05 is accepted)",
          _check_yes_to_everything, wrong_answer=0.5, answer_is_value=True)
def yes_to_everything_solution() -> float:
    from llm_tutorial import instructions as ins

    _, heldout = ins.split_families(8, seed=0)
    records = ins.take(100, heldout, seed=103, templates="all")
    # Only is_palindrome and leap_year (24 of the 100 records) can accept "yes", and the
    # generator balances them: about half of their answers are yes (15 of the 24 here).
    # Refusals need a refusal, and no number, letter or title is "yes".
    return sum(ins.verify("yes", r) for r in records) / len(records)
