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
