"""The course's layout, as DEVELOPERS.md states it and a learner relies on it.

* Every notebook names its module(s) in its first cell (`llm_tutorial/<name>.py`); a module
  named by notebook NN is lesson NN's. Each lesson module belongs to exactly one notebook, and
  has its tests in `tests/test_<name>.py`; each notebook has its exercises in
  `llm_tutorial/exercises/chNN.py`.
* Lesson NN imports only the shared modules and earlier lessons, so chapters read in order:
  nothing in notebook 06 depends on code that notebook 07 introduces. Where a notebook names
  several modules, each may also import the ones it names before it (13: `applications`, then
  `serve`, which serves them).
* Shared modules import no lesson; the build tooling lives in its own package,
  `llm_tutorial_build`, which nothing in `llm_tutorial` imports.
* No import cycle among the package's modules, counting imports inside functions too.

Imports are read with `ast` from the source, not by importing, so the test sees the imports
inside functions as well.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llm_tutorial"
SHARED = {"runtime", "assets", "trainer", "plotting", "chat", "exercises"}
# lesson modules whose notebook is being written (named by issue), with the notebook's number
PLANNED: dict[str, int] = {}
NAMED = re.compile(r"`llm_tutorial/(\w+)\.py`")
# launchable scripts of a lesson (`llm_tutorial/scripts/<name>.py`), named by its notebook too
NAMED_SCRIPT = re.compile(r"`llm_tutorial/scripts/(\w+)\.py`")


def _notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _first_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "".join(cells[0]["source"])


def _lessons() -> dict[str, int]:
    """Lesson module -> the number of the notebook that names it in its first cell."""
    owner: dict[str, int] = {}
    for notebook in _notebooks():
        for name in dict.fromkeys(NAMED.findall(_first_cell(notebook))):
            if name in SHARED:
                continue
            assert name not in owner, f"{name}.py is named by notebooks {owner[name]:02d} and {notebook.name}"
            owner[name] = int(notebook.name[:2])
    for name, number in PLANNED.items():
        assert name not in owner, f"{name}.py has its notebook now: remove it from PLANNED"
        owner[name] = number
    return owner


def _scripts() -> dict[str, int]:
    """Script module ("scripts.train_ddp") -> the number of the notebook that names it."""
    owner = {}
    for notebook in _notebooks():
        for name in NAMED_SCRIPT.findall(_first_cell(notebook)):
            assert (PACKAGE / "scripts" / f"{name}.py").exists(), f"{notebook.name} names llm_tutorial/scripts/{name}.py"
            owner[f"scripts.{name}"] = int(notebook.name[:2])
    return owner


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(relative.parts)


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports anywhere in its source ("exercises.ch07", "trainer")."""
    package = _module_name(path).rpartition(".")[0]  # "" for a top-level module
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("llm_tutorial.") for a in node.names
                      if a.name.startswith("llm_tutorial.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import runtime, from .report import x
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = ".".join(p for p in (base, node.module or "") if p)
            elif node.module and (node.module == "llm_tutorial" or node.module.startswith("llm_tutorial.")):
                module = node.module.removeprefix("llm_tutorial").lstrip(".")
            else:
                continue
            if module:
                found.add(module)
            else:  # from llm_tutorial import a, b
                found |= {a.name for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name.endswith("__init__"):
            name = name.removesuffix(".__init__").removesuffix("__init__") or "llm_tutorial"
        graph[name] = {m for m in _imports(path) if m != name}
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_notebook_names_its_modules_tests_and_exercises():
    owner = _lessons()
    for notebook in _notebooks():
        number = int(notebook.name[:2])
        named = NAMED.findall(_first_cell(notebook))
        assert named, f"{notebook.name}: its first cell names no `llm_tutorial/<module>.py`"
        for name in named:
            assert (PACKAGE / f"{name}.py").exists(), f"{notebook.name} names llm_tutorial/{name}.py"
            assert (ROOT / "tests" / f"test_{name}.py").exists(), f"no tests/test_{name}.py"
        assert (PACKAGE / "exercises" / f"ch{number:02d}.py").exists(), f"no exercises/ch{number:02d}.py"
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"} - SHARED
    assert set(owner) == modules, ("every lesson module is named by one notebook's first cell; "
                                   f"unnamed: {sorted(modules - set(owner))}")


def _positions() -> dict[str, int]:
    """Lesson module -> its place among the modules its notebook's first cell names."""
    return {name: i for notebook in _notebooks()
            for i, name in enumerate(n for n in dict.fromkeys(NAMED.findall(_first_cell(notebook))) if n not in SHARED)}


def test_lessons_import_only_shared_modules_and_earlier_lessons():
    owner, graph, scripts, place = _lessons(), _graph(), _scripts(), _positions()
    problems = []
    for module, imported in graph.items():
        top = _top(module)
        if module == "scripts":  # the scripts package's empty __init__
            continue
        if module in scripts or module.startswith("exercises.ch"):
            # a lesson's script or exercises: what its lesson may import, and that lesson itself
            number, what = ((scripts[module], f"{module} (lesson {scripts[module]:02d})") if module in scripts
                            else (int(module[len("exercises.ch"):]), f"exercises/{module[10:]}"))
            allowed = lambda m, n=number: _top(m) in SHARED or owner.get(_top(m), 99) <= n  # noqa: E731
        elif top in owner:
            number, what = owner[top], f"{top} (lesson {owner[top]:02d})"
            allowed = lambda m, n=number, t=top: (_top(m) in SHARED or owner.get(_top(m), 99) < n  # noqa: E731
                                                  or (owner.get(_top(m)) == n and place[_top(m)] < place[t]))
        elif module == "llm_tutorial":  # the package's __init__
            continue
        elif top in SHARED:
            what = f"shared module {module}"
            allowed = lambda m: _top(m) in SHARED  # noqa: E731
        else:
            problems.append(f"{module} is neither a lesson (named by a notebook) nor shared")
            continue
        problems += [f"{what} imports {m}" for m in sorted(imported) if not allowed(m)]
    assert not problems, "\n".join(problems)


def test_no_lesson_or_shared_module_imports_the_build_tooling():
    importers = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                       if "llm_tutorial_build" in p.read_text(encoding="utf-8"))
    assert not importers, f"{importers} use llm_tutorial_build: lessons cannot depend on the build tooling"


def test_there_is_no_import_cycle():
    graph = {m: {_top(i) if _top(i) != "exercises" else i for i in deps}
             for m, deps in _graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [module, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layout_checks_can_fail(tmp_path, monkeypatch):
    # the import reader sees a function-level import and a relative one
    source = tmp_path / "llm_tutorial" / "lesson.py"
    source.parent.mkdir()
    source.write_text("from . import runtime\n\ndef f():\n    from llm_tutorial import instructions as ins\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "llm_tutorial")
    assert _imports(source) == {"runtime", "instructions"}


def test_docstrings_are_markdown():
    # one markup across the package, as labml's annotated code: `code`, not reST's ``code`` or :func:`x`
    rest = re.compile(r"``[^`\n]+``|:(?:func|class|mod|meth|attr):`")
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "llm_tutorial_build").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            doc = ast.get_docstring(node, clean=False) if isinstance(
                node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None
            if doc and rest.search(doc):
                found.append(f"{path.relative_to(ROOT)}: {rest.search(doc).group(0)}")
    assert not found, "reStructuredText in docstrings:\n" + "\n".join(found)
