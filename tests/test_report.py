"""Tests for `llm_tutorial_build.report` (make run / goldens / bench) on throwaway notebooks.

Each test that executes a notebook starts a real kernel through papermill (a few seconds).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

from llm_tutorial_build import report

ROOT = Path(__file__).resolve().parents[1]

PRINT_ENVIRONMENT = """\
import os, sys
print("profile:", PROFILE or os.environ.get("LLM_TUTORIAL_PROFILE"))
print("python:", sys.executable)
print("cwd:", os.getcwd())
print("omp:", os.environ.get("OMP_NUM_THREADS"))
print("progress:", os.environ.get("LLM_TUTORIAL_PROGRESS"))
"""


def make_notebook(path: Path, *code: str, title: str = "Tiny notebook") -> Path:
    """A notebook with a title, a ``parameters`` cell (``PROFILE = ""``) and ``code`` cells."""
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('PROFILE = ""')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSome text."), parameters]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in code]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def stdout_of(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )


# ----------------------------------------------------------------------------- pure functions


def test_discover_and_title(tmp_path):
    for name in ("01_b.ipynb", "00_a.ipynb", "scratch.ipynb", "1_x.ipynb"):
        make_notebook(tmp_path / name, title=f"Title of {name}")
    assert [p.name for p in report.discover_notebooks(tmp_path)] == ["00_a.ipynb", "01_b.ipynb"]
    nb = nbformat.read(tmp_path / "00_a.ipynb", as_version=4)
    assert report.notebook_title(nb) == "Title of 00_a.ipynb"
    assert report.notebook_title({"cells": []}, default="fallback") == "fallback"


def test_repository_notebooks_are_discovered():
    found = report.discover_notebooks()
    assert found == sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_strip_volatile_metadata():
    nb = {
        "metadata": {
            "kernelspec": {"name": "python3"},
            "language_info": {"name": "python", "version": "3.11.7", "pygments_lexer": "ipython3"},
            "papermill": {"duration": 1.0, "parameters": {}},
            "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}},
        },
        "cells": [
            {"cell_type": "markdown", "metadata": {"tags": [], "papermill": {"status": "completed"}}, "source": "# t"},
            {
                "cell_type": "code",
                "execution_count": 1,
                "metadata": {
                    "tags": ["parameters"],
                    "execution": {"iopub.status.busy": "2026-01-01T00:00:00Z"},
                    "papermill": {"duration": 0.1, "start_time": "x"},
                    "ExecuteTime": {"end_time": "x"},
                    "collapsed": True,
                },
                "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}],
                "source": "PROFILE = ''",
            },
        ],
    }
    out = report.strip_volatile_metadata(nb)
    assert out is nb
    assert set(nb["metadata"]) == {"kernelspec", "language_info"}
    assert nb["metadata"]["language_info"] == {"name": "python", "pygments_lexer": "ipython3"}
    assert nb["cells"][0]["metadata"] == {}
    assert nb["cells"][1]["metadata"] == {"tags": ["parameters"], "collapsed": True}
    assert nb["cells"][1]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    assert nb["cells"][1]["execution_count"] == 1


def test_format_bench_table():
    def result(name, ok, wall, rss):
        return report.NotebookResult(name=name, source=Path(f"{name}.ipynb"), output=None, title=name,
                                     ok=ok, wall_s=wall, peak_rss_mb=rss)  # fmt: skip

    results = [result("00_a", True, 12.34, 512.4), result("01_b", True, 151.0, 900.0),
               result("02_c", True, 20.0, 2100.0), result("03_d", False, 3.0, 80.0)]  # fmt: skip
    machine = {"cpu": "Some CPU @ 2.0GHz", "cores": "2", "torch": "2.13.0+cpu", "date": "2026-11-25"}
    text = report.format_bench_table(results, machine, command="make bench")
    lines = text.splitlines()
    assert "| notebook | wall s | peak RSS MB | within 150 s / 2 GB |" in lines
    assert "| `00_a` | 12.3 | 512 | yes |" in lines
    assert "| `01_b` | 151.0 | 900 | **no** |" in lines
    assert "| `02_c` | 20.0 | 2,100 | **no** |" in lines
    assert "| `03_d` | 3.0 | 80 | failed |" in lines
    for value in machine.values():
        assert value in text
    assert "`make bench`" in text


def test_bench_keeps_the_notes_below_its_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "execute_notebook", lambda source, output, **kw: report.NotebookResult(
        name=Path(source).stem, source=Path(source), output=None, title="t", ok=True, wall_s=1.0,
        peak_rss_mb=100.0))  # fmt: skip
    out = tmp_path / "notebooks.md"
    notes = f"{report.KEEP_MARKER}\n## Other CPUs\n\nnbval green on Some CPU.\n"
    out.write_text("# an old table\n\n| `00_a` | 99.0 |\n\n" + notes, encoding="utf-8")
    report.bench_notebooks([tmp_path / "00_a.ipynb"], out, echo=False)
    text = out.read_text(encoding="utf-8")
    assert "| `00_a` | 1.0 | 100 | yes |" in text and "99.0" not in text
    assert text.endswith("\n" + notes)
    out.unlink()
    report.bench_notebooks([tmp_path / "00_a.ipynb"], out, echo=False)
    assert report.KEEP_MARKER not in out.read_text(encoding="utf-8")


def test_machine_description_names_the_gpu_when_there_is_one(monkeypatch):
    import torch

    class Props:
        name, total_memory = "NVIDIA Test GPU", 16 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    info = report.machine_description()
    assert info["gpu"] == "NVIDIA Test GPU (16 GiB)" and "cuda" in info
    text = report.format_run_summary([], info, profile="full", device="cuda")
    assert text.startswith("# `make run`, full profile, on NVIDIA Test GPU (16 GiB)")


def test_machine_description(tmp_path):
    info = report.machine_description()
    assert {"cpu", "cores", "python", "torch", "date"} <= set(info)
    assert int(info["cores"]) >= 1 and info["cpu"]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\n")
    assert report.cpu_model(cpuinfo) == "AMD EPYC 7B13"


def test_sanitize_config_only_hides_volatile_text():
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text(encoding="utf-8"))
    assert len(patterns) >= 5

    def sanitize(text: str) -> str:
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    volatile_pairs = [
        ("100%|██████████| 40/40 [00:01<00:00, 25.31it/s]", "100%|██████████| 40/40 [00:03<00:00,  9.80it/s]"),
        ("  5%|▌         | 1/20 [00:02<00:41,  2.17s/it]", "  5%|▌         | 1/20 [00:01<00:20,  1.02s/it]"),
        ("0it [00:00, ?it/s]", "0it [00:01, 12.5it/s]"),
        ("<Foo object at 0x7f3a2c1e5d90>", "<Foo object at 0x7f11aa0b2c40>"),
        ("trained in 12.3 s", "trained in 9.8 s"),
        ("training took 0.8 s", "training took 1.25 s"),
        ("wall time: 3.0 s", "wall time: 4.5 s"),
        ("CPU times: user 1.2 s, sys: 3 ms, total: 1.2 s", "CPU times: user 2 s, sys: 1 ms, total: 2 s"),
    ]
    for a, b in volatile_pairs:
        assert sanitize(a) == sanitize(b), (a, b, sanitize(a), sanitize(b))

    stable = [
        "step 40: loss 2.3456, perplexity 10.44",
        "vocab 1000, fertility 1.31, unknown rate 0.27%",
        "byte 0xe2 0x80 0x99 is a curly apostrophe",
        "40/40 batches, 3 sentences in 2 documents",
        "accuracy 0.912 after 3 epochs",
    ]
    for text in stable:
        assert sanitize(text) == text


# ----------------------------------------------------------------------------- executing notebooks


def test_run_executes_in_this_environment_measures_and_reports(tmp_path):
    loop = "from llm_tutorial import runtime\nfor _ in runtime.progress(range(3), desc='a long loop'):\n    pass"
    ok = make_notebook(tmp_path / "nb" / "00_ok.ipynb", PRINT_ENVIRONMENT,
                       "import torch\nprint('torch', torch.__version__)", loop, title="All good")  # fmt: skip
    bad = make_notebook(tmp_path / "nb" / "01_bad.ipynb", "raise ValueError('boom')", title="Broken <on purpose>")
    out = tmp_path / "outputs"
    results, report_path = report.run_notebooks([ok, bad], out, profile="smoke", echo=False)
    assert report_path == out / "run.json"
    good, failed = results
    assert good.ok and not failed.ok and failed.returncode != 0
    assert "ValueError: boom" in failed.error

    text = stdout_of(out / "00_ok.ipynb")
    assert "profile: smoke" in text  # PROFILE injected by papermill
    assert f"python: {sys.executable}" in text  # the kernel is this environment's interpreter
    assert f"cwd: {ok.parent}" in text  # started in the notebook's folder
    assert "progress: text" in text  # progress bars as text, copied into the log:
    assert re.search(r"a long loop: 100%\|.+\| 3/3", (out / "00_ok.log").read_text(encoding="utf-8"))
    # importing torch costs well over 200 MB: the kernel (papermill's child, our grandchild) is measured
    assert good.peak_rss_mb > 200 and good.maxrss_mb > 200 and good.tree_peak_mb > 100, good
    assert good.wall_s > 0

    for name in ("00_ok", "01_bad"):
        assert (out / f"{name}.ipynb").is_file() and (out / f"{name}.log").is_file()
        assert not (out / f"{name}.html").exists()  # pages are the site's job (one renderer)

    run = json.loads(report_path.read_text(encoding="utf-8"))
    assert run["profile"] == "smoke" and run["device"] == "cpu" and run["machine"]["cpu"] == report.cpu_model()
    first, second = run["notebooks"]
    assert first["name"] == "00_ok" and first["title"] == "All good" and first["ok"]
    assert first["output"] == "00_ok.ipynb" and first["log"] == "00_ok.log" and first["wall_s"] > 0
    assert second["title"] == "Broken <on purpose>" and not second["ok"] and "ValueError: boom" in second["error"]

    summary = (out / "run.md").read_text(encoding="utf-8")
    assert summary.startswith("# `make run`, smoke profile, on cpu")
    assert "1 of 2 notebook(s) ran to the end" in summary
    assert re.search(r"\| `00_ok` \| ok \| \d+\.\d \| [\d,]+ \|", summary)
    assert "| `01_bad` | **failed** |" in summary and "ValueError: boom" in summary
    assert f"- cpu: {report.cpu_model()}" in summary


def test_run_cli_exits_nonzero_on_failure_and_still_writes_the_report(tmp_path, monkeypatch):
    calls = []

    def fake_execute(source, output, **kwargs):
        calls.append((Path(source).name, kwargs.get("profile"), kwargs.get("parameters")))
        failed = Path(source).stem.endswith("bad")
        return report.NotebookResult(name=Path(source).stem, source=Path(source), output=None,
                                     title=Path(source).stem, ok=not failed, wall_s=1.0, peak_rss_mb=1.0,
                                     error="ValueError: boom" if failed else "")  # fmt: skip

    monkeypatch.setattr(report, "execute_notebook", fake_execute)
    ok = make_notebook(tmp_path / "00_ok.ipynb")
    bad = make_notebook(tmp_path / "01_bad.ipynb")
    out = tmp_path / "out"
    assert report.main(["run", "--out", str(out), "--profile", "smoke", "--notebooks", str(ok), str(bad)]) == 1
    assert calls == [("00_ok.ipynb", "smoke", {"PROFILE": "smoke"}), ("01_bad.ipynb", "smoke", {"PROFILE": "smoke"})]
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert [n["ok"] for n in run["notebooks"]] == [True, False]
    assert report.main(["run", "--out", str(out), "--profile", "smoke", "--notebooks", str(ok)]) == 0
    with pytest.raises(SystemExit):
        report.main(["run", "--notebooks", str(tmp_path / "missing.ipynb")])


def test_goldens_rewrites_in_place_without_volatile_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("LLM_TUTORIAL_PROFILE", "full")
    monkeypatch.setenv("LLM_TUTORIAL_PROGRESS", "text")
    path = make_notebook(tmp_path / "nb" / "00_gold.ipynb", PRINT_ENVIRONMENT)
    bad = make_notebook(tmp_path / "nb" / "01_bad.ipynb", "raise RuntimeError('nope')")
    bad_before = bad.read_bytes()
    n_cells = len(nbformat.read(path, as_version=4).cells)

    assert report.main(["goldens", "--notebooks", str(path), str(bad)]) == 1
    assert bad.read_bytes() == bad_before  # a failing notebook is left untouched

    raw = json.loads(path.read_text(encoding="utf-8"))
    assert len(raw["cells"]) == n_cells  # no injected-parameters cell
    assert "papermill" not in raw["metadata"] and "widgets" not in raw["metadata"]
    assert "version" not in raw["metadata"].get("language_info", {})
    for cell in raw["cells"]:
        assert not {"papermill", "execution", "ExecuteTime"} & set(cell["metadata"])
    assert raw["cells"][1]["metadata"] == {"tags": ["parameters"]}
    text = stdout_of(path)
    assert "profile: smoke" in text  # forced smoke profile
    assert "omp: None" in text  # OMP_NUM_THREADS unset
    assert "progress: None" in text  # bars drawn as in nbval (widgets), whatever the shell says
    assert f"cwd: {path.parent}" in text
    # the kernel path that made the outputs, which `make repro` must not check them on
    assert raw["metadata"]["llm_tutorial"] == {"goldens_kernel_path": report.cpu_kernel_path()}
    assert report.goldens_kernel_path(raw) == report.cpu_kernel_path()


@pytest.mark.parametrize(("made_with", "native", "expected"), [
    ("AVX512", "AVX512", "avx2"),  # the goldens' own path: force the next one down
    ("AVX512", "AVX2", ""),  # this CPU's own path already differs: the fastest check
    ("AVX2", "AVX512", ""),
    ("AVX2", "AVX2", "default"),  # nothing below AVX2 but the unvectorised kernels
    ("avx2", "AVX2", "default"),
    ("DEFAULT", "DEFAULT", "default"),
])  # fmt: skip
def test_repro_path_never_checks_outputs_on_the_path_that_made_them(made_with, native, expected):
    assert report.repro_path(made_with, native) == expected


def test_kernel_path_plan_groups_notebooks_by_the_path_to_check_them_on(tmp_path):
    old = make_notebook(tmp_path / "00_old.ipynb")  # committed before the path was recorded
    new = make_notebook(tmp_path / "01_new.ipynb")
    nb = nbformat.read(new, as_version=4)
    nb.metadata["llm_tutorial"] = {"goldens_kernel_path": "AVX2"}
    nbformat.write(nb, new)
    assert report.goldens_kernel_path(nbformat.read(old, as_version=4)) == "AVX512"
    assert report.kernel_path_plan([old, new], "AVX512") == {"avx2": [old], "native": [new]}
    assert report.kernel_path_plan([old, new], "AVX2") == {"native": [old], "default": [new]}
