"""Auto-checked exercises with friendly feedback and hidden reference solutions.

Each notebook `NN_topic.ipynb` has a module `llm_tutorial.exercises.chNN` that defines its
exercises with `exercise`. In the notebook a learner writes an answer and calls:

    from llm_tutorial import exercises
    exercises.check("01.fertility", my_fertility)      # prints ✅ or ❌ with a hint
    exercises.show_solution("01.fertility")            # the reference, once the learner has tried

A checker receives the learner's answer (a value or a function) and returns `None` when it is
right, or a hint string saying what is wrong. The reference solution is a plain function whose
source is what `show_solution` prints, but only after the learner has tried the exercise
in this kernel (any answer, right or wrong, passed to `check`): committed outputs, which
are executed with the placeholders in place, never show a solution. The test-suite runs every checker on its reference
(must pass) and on a wrong answer (must fail with a message).
"""

from __future__ import annotations

import dis
import importlib
import inspect
import numbers
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Checker = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Exercise:
    """A question, a checker, a reference answer, and a wrong answer used to test the checker."""

    key: str  # "NN.short-name"
    question: str
    checker: Checker
    solution: Callable[..., Any]  # the reference: a function, or a function returning the value
    solution_is_value: bool  # True: the answer is `solution()`; False: the answer is `solution`
    wrong_answer: Any  # an answer the checker must reject (tested)

    def reference_answer(self) -> Any:
        return self.solution() if self.solution_is_value else self.solution


_REGISTRY: dict[str, Exercise] = {}
_ATTEMPTED: set[str] = set()  # keys the learner has answered (right or wrong) in this kernel


def _instructions(code) -> list[tuple[str, Any]]:
    return [(i.opname, i.argval) for i in dis.get_instructions(code) if i.opname not in ("RESUME", "NOP")]


def _stub(): ...  # the body of an exercise's placeholder function; `pass` and `return None` compile the same


def _is_placeholder(answer: Any) -> bool:
    """True for the untouched placeholders: None, `...`, a tuple of them, or a function whose
    body only returns None (`...`, `pass`, `return None`, with or without a docstring)."""
    if answer is None or answer is Ellipsis:
        return True
    if isinstance(answer, tuple) and answer:
        return all(_is_placeholder(part) for part in answer)
    code = getattr(answer, "__code__", None)
    return code is not None and _instructions(code) == _instructions(_stub.__code__)


DIRECTIONS = ("higher", "lower", "same")


def as_number(value: Any) -> float | None:
    """`value` as a float if it is one number (a Python or NumPy number, a one-element tensor
    or array), else None: what a checker accepts where a learner may type `2`, `np.float64(2)`
    or `torch.tensor(2.0)`."""
    if isinstance(value, (bool, str, bytes)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        if getattr(value, "size", None) == 1 or getattr(value, "numel", lambda: 0)() == 1:
            return float(value.item())
    except Exception:  # an object that only looks like an array
        return None
    return None


def close(a: float, b: float, tol: float) -> bool:
    """|a - b| <= tol."""
    return abs(a - b) <= tol


def direction_check(answer: Any, right: str, hint: str) -> str | None:
    """Check a "predict, then measure" answer that is one of `DIRECTIONS`: `None` for
    `right`, `hint` for another of the three words, a reminder of the words for anything else."""
    word = answer.strip().lower() if isinstance(answer, str) else None
    if word not in DIRECTIONS:
        return 'answer with one of the words "higher", "lower" or "same"'
    return None if word == right else hint


# the words a learner may write for each of DIRECTIONS
DIRECTION_WORDS = {
    "higher": ("higher", "up", "goes up", "longer", "more", "larger", "greater", "worse", "increase",
               "increases", "rises", "grows"),
    "lower": ("lower", "down", "goes down", "shorter", "fewer", "less", "smaller", "better",
              "decrease", "decreases", "falls", "drops"),
    "same": ("same", "the same", "unchanged", "no change", "equal", "stays the same"),
}


def as_direction(word: Any) -> str | None:
    """The one of `DIRECTIONS` that `word` names ("up", "Longer.", "fewer" ...), else None."""
    if not isinstance(word, str):
        return None
    word = word.strip().lower().rstrip(".")
    return next((d for d in DIRECTIONS if word in DIRECTION_WORDS[d]), None)


def measured_direction(before: float, after: float, tol: float = 0.05) -> str:
    """Which of `DIRECTIONS` a measurement moved, `before` → `after`: "same" within `tol` of the
    larger (relatively), else "higher" or "lower"."""
    if abs(after - before) <= tol * max(abs(before), abs(after), 1e-12):
        return "same"
    return "higher" if after > before else "lower"


def direction_pair_check(answer: Any, names: tuple[str, str], keys: tuple[tuple[str, ...], tuple[str, ...]],
                         right: tuple[str, str], hints: tuple[str, str]) -> str | None:
    """Check a "predict, then measure" answer about two quantities at once, e.g. (delay, false
    alarms): a tuple or list of two `DIRECTIONS` words, or a dict whose keys contain one of
    `keys[0]` and one of `keys[1]`. `None` when both equal `right`; else the `hints` of the
    wrong parts, each opening with its quantity's name ("the delay: think again. ..."), and
    saying which part is right when one is."""
    example = '("same", "higher")'
    if isinstance(answer, dict):
        parts = [[v for k, v in answer.items() if any(w in str(k).lower() for w in words)] for words in keys]
        pair = (parts[0][0], parts[1][0]) if all(len(p) == 1 for p in parts) else None
    else:
        pair = tuple(answer) if isinstance(answer, (tuple, list)) and len(answer) == 2 else None
    if pair is None:
        return (f"answer with a pair ({names[0]}, {names[1]}), each \"higher\", \"lower\" or \"same\", "
                f"e.g. {example}")
    if all(part is None or part is Ellipsis for part in pair):
        return f"no answer yet: replace the placeholders with two words, e.g. {example}"
    words = [as_direction(part) for part in pair]
    if None in words:
        return (f"{pair[words.index(None)]!r} is not a direction: use \"higher\", \"lower\" or \"same\" "
                "(or \"up\", \"down\")")
    wrong = [f"the {name}: think again. {hint}" for name, word, want, hint
             in zip(names, words, right, hints, strict=True) if word != want]
    if not wrong:
        return None
    if len(wrong) == 1:
        correct = names[0] if words[0] == right[0] else names[1]
        return f"the {correct}: right. {wrong[0][0].upper() + wrong[0][1:]}"
    return " ".join(w[0].upper() + w[1:] for w in wrong)


def exercise(key: str, question: str, checker: Checker, *, wrong_answer: Any,
             answer_is_value: bool = False) -> Callable[[Callable], Callable]:
    """Decorator that registers the decorated function as the reference solution of `key`."""

    def register(solution: Callable) -> Callable:
        if key in _REGISTRY:
            raise ValueError(f"exercise {key!r} is defined twice")
        _REGISTRY[key] = Exercise(key, question, checker, solution, answer_is_value, wrong_answer)
        return solution

    return register


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("ch"):
            importlib.import_module(f"{__name__}.{module.name}")


def all_exercises() -> dict[str, Exercise]:
    """Every registered exercise, keyed by `NN.name`."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get(key: str) -> Exercise:
    """One exercise by key; unknown keys raise `KeyError` listing the known ones."""
    exercises = all_exercises()
    if key not in exercises:
        raise KeyError(f"unknown exercise {key!r}; known exercises: {', '.join(exercises)}")
    return exercises[key]


def evaluate(key: str, answer: Any) -> str | None:
    """Run the checker quietly: `None` if the answer is right, otherwise the hint."""
    ex = get(key)
    if answer is None or answer is Ellipsis:
        return "no answer yet: replace the `...` / `None` placeholder with your answer"
    try:
        return ex.checker(answer)
    except NotImplementedError:
        return "your function still raises NotImplementedError: fill in its body"
    except Exception as error:  # a learner's bug is feedback, not a crash
        return f"your answer raised {type(error).__name__}: {error}"


def check(key: str, answer: Any) -> None:
    """Check a learner's answer and print friendly feedback (✅ or ❌ with a hint).

    It returns nothing, so a notebook cell shows only the feedback; use `evaluate` to
    get the verdict as a value."""
    hint = evaluate(key, answer)
    if not _is_placeholder(answer):
        _ATTEMPTED.add(key)
    print(f"✅ {key}: correct." if hint is None else f"❌ {key}: not yet. {hint}")


def show_solution(key: str) -> None:
    """Print the question and the reference solution's source code, once the learner has tried.

    Before any attempt it prints how to unlock the solution (and nothing of the solution), so
    a notebook executed with its placeholders, as the committed outputs are, never shows one."""
    ex = get(key)
    if key not in _ATTEMPTED:
        print(f"🔒 {key}: the solution opens once you have tried the exercise. Put your answer in "
              "the cell above and run it (a wrong answer counts too), then run this cell again.")
        return
    print(f"# {key}: {ex.question}\n")
    print(inspect.getsource(ex.solution))
