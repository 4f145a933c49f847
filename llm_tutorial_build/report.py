"""Run, re-golden and benchmark the course notebooks (`make run`, `make goldens`, `make bench`).

Three subcommands, one executor::

    python -m llm_tutorial_build.report run     [--out outputs] [--profile smoke|full] [--notebooks ...]
    python -m llm_tutorial_build.report goldens [--notebooks ...]
    python -m llm_tutorial_build.report bench   [--out docs/results/notebooks.md] [--notebooks ...]
    python -m llm_tutorial_build.report kernel-paths [--notebooks ...]

* `run` executes every notebook with papermill into `outputs/NN_topic.ipynb` (with a log
  beside each) and writes the run's report: `outputs/run.json` (title, status, wall time, peak
  memory, error of each notebook; profile, device, machine), which the site renders as its page
  `run.html` (`llm_tutorial_build.site`, the course's one HTML renderer), and `outputs/run.md`,
  the same as Markdown. It exits non-zero if any notebook failed, after writing the report that
  marks the failure.
* `goldens` re-executes notebooks in the `smoke` profile and writes them back in place,
  outputs kept, volatile metadata (timings, papermill and widget state, kernel version) removed:
  these committed outputs are what `nbval` compares against in `make test`. It records in the
  notebook's metadata which path through PyTorch's CPU kernels made them (`AVX512`, `AVX2`).
* `kernel-paths` prints, per line, a kernel path other than the one that made a notebook's
  committed outputs and the notebooks to check on it (`make repro`; see `repro_path`).
* `bench` executes notebooks in the `smoke` profile one at a time and writes a Markdown table
  of wall time and peak memory against the course budget (150 s and 2 GB per notebook on a
  2-core CPU).

Each notebook runs as `python -m papermill` in a child process, with the interpreter running
this module, so the kernel (`python3`, resolved by jupyter_client to `sys.executable`) is the
one of this environment. **Peak RSS** is measured two ways and the larger is reported:

1. the summed resident memory of the kernel process tree (every descendant of the papermill
   process), sampled every 0.2 s with psutil;
2. the exact high-water mark of the largest single process in the papermill subtree, from
   `os.wait4`'s resource usage (`ru_maxrss`; the kernel is a grandchild, which papermill
   reaps, so it is included). This catches spikes shorter than the sampling interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
PROFILE_ENV = "LLM_TUTORIAL_PROFILE"
PROGRESS_ENV = "LLM_TUTORIAL_PROGRESS"  # runtime.progress: auto | text | off
KERNEL_NAME = "python3"
SAMPLE_INTERVAL_S = 0.2
BUDGET_WALL_S = 150.0
BUDGET_RSS_MB = 2048.0
DEFAULT_BENCH_OUT = REPO_ROOT / "docs" / "results" / "notebooks.md"
LOG_TAIL_CHARS = 4000
KEEP_MARKER = "<!-- kept by make bench -->"

# Notebook- and cell-level metadata keys that change on every execution.
VOLATILE_NOTEBOOK_METADATA = ("papermill", "widgets", "execution")
# Where `goldens` records the CPU kernel path that made a notebook's outputs; outputs committed
# before the key existed were all made with PyTorch's AVX-512 kernels (an AMD EPYC, Zen 4).
GOLDENS_PATH_KEY = "goldens_kernel_path"
GOLDENS_PATH_BEFORE_KEY = "AVX512"
VOLATILE_CELL_METADATA = ("papermill", "execution", "ExecuteTime")


# ----------------------------------------------------------------------------- discovery


def discover_notebooks(directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The course notebooks `NN_topic.ipynb` in `directory`, sorted by name."""
    return sorted(p for p in Path(directory).glob(NOTEBOOK_GLOB) if p.is_file())


def notebook_title(nb: Mapping[str, Any], default: str = "") -> str:
    """The first Markdown heading of a notebook (without the `#`), else `default`."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(source)
        for line in source.splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                return stripped.lstrip("#").strip()
    return default


# ----------------------------------------------------------------------------- execution


@dataclasses.dataclass
class NotebookResult:
    """What happened when one notebook was executed."""

    name: str  # "01_tokenization"
    source: Path
    output: Path | None
    title: str
    ok: bool
    wall_s: float
    peak_rss_mb: float  # max(sampled kernel-tree sum, largest single-process high-water mark)
    tree_peak_mb: float = 0.0  # sampled sum over the kernel process tree
    maxrss_mb: float = 0.0  # ru_maxrss of the largest process in the papermill subtree
    returncode: int = 0
    error: str = ""  # last lines of papermill's log when it failed
    log: Path | None = None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed"

    @property
    def within_budget(self) -> bool:
        return self.ok and self.wall_s <= BUDGET_WALL_S and self.peak_rss_mb <= BUDGET_RSS_MB


def _tree_rss_bytes(pid: int) -> int:
    """Summed RSS of every descendant of `pid` (the kernel and anything it spawned)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def _maxrss_mb(rusage: Any) -> float:
    if rusage is None:
        return 0.0
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rusage.ru_maxrss * scale / 2**20


def _wait_sampling(proc: subprocess.Popen, interval: float) -> tuple[int, float, float]:
    """Wait for `proc`, sampling its process tree; return (returncode, tree MB, maxrss MB)."""
    peak = 0
    if not hasattr(os, "wait4"):  # Windows: sampling only
        while proc.poll() is None:
            peak = max(peak, _tree_rss_bytes(proc.pid))
            time.sleep(interval)
        return proc.returncode, peak / 2**20, 0.0
    while True:
        peak = max(peak, _tree_rss_bytes(proc.pid))
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, peak / 2**20, _maxrss_mb(rusage)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _log_tail(text: str, n_lines: int = 15) -> str:
    """Papermill's error message (from `PapermillExecutionError` on), else the log's last lines."""
    text = _ANSI.sub("", text)
    marker = text.rfind("PapermillExecutionError")
    if marker >= 0:
        text = text[marker:]
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n_lines:])[-LOG_TAIL_CHARS:]


def _print_result(tag: str, source: Path, result) -> None:
    """One progress line per executed notebook (and papermill's error when it failed)."""
    print(f"[{tag}] {source.name}: {result.status}, {result.wall_s:.1f} s, "
          f"peak RSS {result.peak_rss_mb:,.0f} MB", flush=True)  # fmt: skip
    if not result.ok:
        print(result.error, file=sys.stderr, flush=True)


def execute_notebook(
    source: Path,
    output: Path,
    *,
    profile: str | None = None,
    parameters: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    unset_env: Iterable[str] = (),
    timeout: int | None = None,
    log: Path | None = None,
    interval: float = SAMPLE_INTERVAL_S,
    progress: str | None = None,
) -> NotebookResult:
    """Execute `source` into `output` with papermill in a child process, measuring it.

    `profile` sets `$LLM_TUTORIAL_PROFILE` for the kernel; `parameters` are injected as raw
    strings into the notebook's `parameters` cell (papermill adds an "injected-parameters"
    cell, so leave them out when the result is to be committed). The kernel starts in `cwd`
    (default: the notebook's folder). `timeout` is papermill's per-cell execution timeout.
    `progress="text"` draws the course's progress bars as text and has papermill copy the
    cells' output into its log, so that `log` shows how far each loop got.
    """
    source, output = Path(source).resolve(), Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ if env is None else env)
    for name in unset_env:
        child_env.pop(name, None)
    if profile:
        child_env[PROFILE_ENV] = profile
    if progress:
        child_env[PROGRESS_ENV] = progress
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [
        sys.executable, "-m", "papermill", str(source), str(output),
        "--kernel", KERNEL_NAME,
        "--cwd", str(Path(cwd).resolve() if cwd else source.parent),
        "--no-progress-bar",
    ]  # fmt: skip
    if progress == "text":
        cmd.append("--log-output")
    for key, value in (parameters or {}).items():
        cmd += ["-r", key, str(value)]
    if timeout:
        cmd += ["--execution-timeout", str(timeout)]

    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as logfile:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, env=child_env
        )
        try:
            returncode, tree_mb, maxrss_mb = _wait_sampling(proc, interval)
        except BaseException:
            proc.kill()
            raise
        wall = time.perf_counter() - start
        logfile.seek(0)
        log_text = logfile.read()
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(log_text, encoding="utf-8")

    try:
        title = notebook_title(nbformat.read(source, as_version=4), default=source.stem)
    except Exception:  # noqa: BLE001 - an unreadable notebook is reported, not raised
        title = source.stem
    ok = returncode == 0
    return NotebookResult(
        name=source.stem,
        source=source,
        output=output if output.exists() else None,
        title=title,
        ok=ok,
        wall_s=wall,
        peak_rss_mb=max(tree_mb, maxrss_mb),
        tree_peak_mb=tree_mb,
        maxrss_mb=maxrss_mb,
        returncode=returncode,
        error="" if ok else (_log_tail(log_text) or f"papermill exited with {returncode}"),
        log=Path(log) if log is not None else None,
    )


# ----------------------------------------------------------------------------- goldens


def strip_volatile_metadata(nb: Any) -> Any:
    """Remove what changes on every execution from a notebook (in place); return it.

    Removed: notebook-level `papermill`, `widgets` (widget state) and `execution`
    metadata, the kernel's `language_info.version`; per cell the `papermill`, `execution`
    (nbclient timestamps) and `ExecuteTime` metadata, and empty `tags` lists. Outputs and
    execution counts stay: they are the goldens.
    """
    metadata = nb.setdefault("metadata", {})
    for key in VOLATILE_NOTEBOOK_METADATA:
        metadata.pop(key, None)
    language_info = metadata.get("language_info")
    if isinstance(language_info, dict):
        language_info.pop("version", None)
    for cell in nb.get("cells", []):
        cell_metadata = cell.setdefault("metadata", {})
        for key in VOLATILE_CELL_METADATA:
            cell_metadata.pop(key, None)
        if cell_metadata.get("tags") == []:
            del cell_metadata["tags"]
    return nb


def regenerate_golden(path: Path, *, timeout: int | None = None) -> NotebookResult:
    """Re-execute `path` in the smoke profile and, if it succeeds, write it back in place.

    The kernel starts in the notebook's folder with `$LLM_TUTORIAL_PROFILE=smoke` and without
    `$OMP_NUM_THREADS` (as in CI), and no parameters are injected. On failure the notebook is
    left untouched.
    """
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="goldens-") as tmp:
        executed = Path(tmp) / path.name
        result = execute_notebook(
            path, executed, profile="smoke", cwd=path.parent, unset_env=("OMP_NUM_THREADS", PROGRESS_ENV),
            timeout=timeout,
        )  # fmt: skip
        if result.ok:
            nb = strip_volatile_metadata(nbformat.read(executed, as_version=4))
            nb.metadata.setdefault("llm_tutorial", {})[GOLDENS_PATH_KEY] = cpu_kernel_path()
            nbformat.write(nb, path)
        result.output = path if result.ok else None
    return result


def cpu_kernel_path() -> str:
    """The path through PyTorch's CPU kernels this process takes (`AVX512`, `AVX2`,
    `DEFAULT`...): the CPU's best, unless `$ATEN_CPU_CAPABILITY` forces a lower one."""
    import torch  # here, not at the top: `run` and `bench` need no torch in this process

    return torch.backends.cpu.get_cpu_capability()


def goldens_kernel_path(nb: Mapping[str, Any]) -> str:
    """The kernel path recorded by `goldens` in `nb`'s metadata (AVX-512 before it was)."""
    return nb.get("metadata", {}).get("llm_tutorial", {}).get(GOLDENS_PATH_KEY, GOLDENS_PATH_BEFORE_KEY)


def repro_path(made_with: str, native: str) -> str:
    """Which `$ATEN_CPU_CAPABILITY` makes nbval compare outputs made on path `made_with` with
    another path, on a CPU whose own path is `native`; `""` means the CPU's own.

    A float sum or softmax rounds differently on each path, so outputs that nbval compares must
    come out the same on any two. The CPU's own path is the fastest, so it is used whenever it
    differs from `made_with`; otherwise AVX2 below AVX-512, else PyTorch's unvectorised
    default (about 1.7x slower).

    >>> repro_path("AVX512", "AVX2"), repro_path("AVX512", "AVX512"), repro_path("AVX2", "AVX2")
    ('', 'avx2', 'default')
    """
    if made_with.upper() != native.upper():
        return ""
    return "avx2" if native.upper() == "AVX512" else "default"


def kernel_path_plan(notebooks: Iterable[Path], native: str) -> dict[str, list[Path]]:
    """Notebooks grouped by the path `repro_path` picks for each (`"native"` for `""`)."""
    plan: dict[str, list[Path]] = {}
    for path in notebooks:
        made_with = goldens_kernel_path(nbformat.read(path, as_version=4))
        plan.setdefault(repro_path(made_with, native) or "native", []).append(Path(path))
    return plan


# ----------------------------------------------------------------------------- run + index


def _device_for(profile: str | None) -> tuple[str, str]:
    """(resolved profile, device) as the notebooks will see them."""
    from llm_tutorial import runtime

    resolved = runtime.get_profile(profile)
    return resolved, str(runtime.get_device(resolved))


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def run_notebooks(
    notebooks: Sequence[Path],
    out_dir: Path,
    *,
    profile: str | None = None,
    timeout: int | None = None,
    echo: bool = True,
) -> tuple[list[NotebookResult], Path]:
    """Execute `notebooks` into `out_dir` and write the run's report (`run.json`, rendered
    by the site as `run.html`, and `run.md`); return (results, path of `run.json`)."""
    resolved, device = _device_for(profile)
    out_dir = Path(out_dir)
    results = []
    for source in notebooks:
        source = Path(source)
        if echo:
            print(f"[run] {source.name} (profile {resolved}, device {device}) ...", flush=True)
        result = execute_notebook(
            source, out_dir / source.name, profile=resolved, parameters={"PROFILE": resolved},
            timeout=timeout, log=out_dir / f"{source.stem}.log", progress="text",
        )  # fmt: skip
        results.append(result)
        if echo:
            _print_result("run", source, result)
    machine = machine_description()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.md").write_text(format_run_summary(results, machine, profile=resolved, device=device),
                                    encoding="utf-8")
    return results, write_run_report(results, out_dir, profile=resolved, device=device, machine=machine)


def write_run_report(results: Sequence[NotebookResult], out_dir: Path, *, profile: str, device: str,
                     machine: Mapping[str, str]) -> Path:
    """`out_dir/run.json`: what the site's run page shows, one entry per notebook (paths
    relative to `out_dir`)."""
    out_dir = Path(out_dir)
    report = {
        "profile": profile, "device": device, "machine": dict(machine),
        "python": platform.python_version(), "torch": _version("torch"),
        "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "notebooks": [
            {"name": r.name, "title": r.title, "ok": r.ok, "wall_s": round(r.wall_s, 1),
             "peak_rss_mb": round(r.peak_rss_mb), "error": r.error,
             "output": _rel(r.output, out_dir) if r.output is not None else None,
             "log": _rel(r.log, out_dir) if r.log is not None else None}
            for r in results],
    }
    path = out_dir / "run.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return path


def format_run_summary(
    results: Sequence[NotebookResult], machine: Mapping[str, str], *, profile: str, device: str
) -> str:
    """`outputs/run.md`: status, wall time and peak RSS of each notebook of a `make run`,
    with the machine (GPU included). A full-profile run on a GPU is committed as
    `docs/results/gpu.md`; the notebooks' quality numbers are in their own pages and logs."""
    n_ok = sum(r.ok for r in results)
    lines = [
        f"# `make run`, {profile} profile, on {machine.get('gpu', device)}",
        "",
        f"{n_ok} of {len(results)} notebook(s) ran to the end on `{device}`. Wall time is the "
        "whole papermill execution (kernel start and model loading included); peak RSS is the "
        "kernel's CPU memory.",
        "",
        "| notebook | status | wall s | peak RSS MB |",
        "|---|:---:|---:|---:|",
    ]
    for r in results:
        status = "ok" if r.ok else "**failed**"
        lines.append(f"| `{r.name}` | {status} | {r.wall_s:.1f} | {r.peak_rss_mb:,.0f} |")
    total = sum(r.wall_s for r in results)
    lines += ["", f"Total: {total / 60:.1f} min.", "", "Machine:", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    failures = [r for r in results if not r.ok]
    for r in failures:
        lines += ["", f"`{r.name}` failed:", "", "```", r.error.strip(), "```"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- bench


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from `/proc/cpuinfo`, else what `platform` knows."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> dict[str, str]:
    """CPU model, usable cores, Python/torch versions, load, date: the context of a benchmark."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": str(cores),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "date": dt.date.today().isoformat(),
    }
    if hasattr(os, "getloadavg"):
        info["load average (1 min, at start)"] = f"{os.getloadavg()[0]:.2f}"
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
            info["cuda"] = str(torch.version.cuda)
    except Exception:  # noqa: BLE001 - describing the machine must never fail a run
        pass
    return info


def format_bench_table(
    results: Sequence[NotebookResult], machine: Mapping[str, str], *, command: str = ""
) -> str:
    """The Markdown report of `make bench`: a table against the budget plus the machine."""
    budget = f"within {BUDGET_WALL_S:.0f} s / {BUDGET_RSS_MB / 1024:.0f} GB"
    lines = [
        "# Notebook run times (smoke profile)",
        "",
        "Each notebook executed once with papermill in the `smoke` profile, one at a time. "
        "Peak RSS is the larger of the kernel process tree's summed resident memory (sampled "
        "every 0.2 s) and the high-water mark of its largest process (`ru_maxrss`).",
        "",
        f"| notebook | wall s | peak RSS MB | {budget} |",
        "|---|---:|---:|:---:|",
    ]
    for r in results:
        verdict = "failed" if not r.ok else ("yes" if r.within_budget else "**no**")
        lines.append(f"| `{r.name}` | {r.wall_s:.1f} | {r.peak_rss_mb:,.0f} | {verdict} |")
    lines += ["", "Machine:", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    if command:
        lines += ["", f"Generated by `{command}`."]
    return "\n".join(lines) + "\n"


def bench_notebooks(
    notebooks: Sequence[Path], out: Path, *, timeout: int | None = None, echo: bool = True
) -> list[NotebookResult]:
    """Execute each notebook in the smoke profile and write the Markdown table to `out`."""
    machine = machine_description()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for source in notebooks:
            source = Path(source)
            result = execute_notebook(
                source, Path(tmp) / source.name, profile="smoke", timeout=timeout
            )
            result.output = None
            results.append(result)
            if echo:
                _print_result("bench", source, result)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = format_bench_table(results, machine, command="make bench")
    out.write_text(table + kept_notes(out), encoding="utf-8")
    return results


def kept_notes(path: Path) -> str:
    """What follows `KEEP_MARKER` in `path` (marker included), else `""`: hand-written
    records below the generated table (which CPUs ran nbval, and with what result) that a new
    `make bench` must not erase."""
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
    at = text.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + text[at:]


# ----------------------------------------------------------------------------- CLI


def _selected(paths: Sequence[str] | None) -> list[Path]:
    notebooks = [Path(p) for p in paths] if paths else discover_notebooks()
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")
    if not notebooks:
        raise SystemExit(f"no notebooks matching {NOTEBOOK_GLOB} in {NOTEBOOKS_DIR}")
    return notebooks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_tutorial_build.report", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--notebooks", nargs="*", metavar="PATH", help="default: notebooks/NN_*.ipynb")
        p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")

    p_run = sub.add_parser("run", help="execute every notebook into --out and write the run's report")
    common(p_run)
    p_run.add_argument("--out", type=Path, default=Path("outputs"))
    p_run.add_argument("--profile", default=None, help=f"smoke or full (default: ${PROFILE_ENV}, else auto)")

    p_gold = sub.add_parser("goldens", help="re-execute notebooks (smoke) and write them back in place")
    common(p_gold)

    p_bench = sub.add_parser("bench", help="time notebooks (smoke) and write a Markdown table")
    common(p_bench)
    p_bench.add_argument("--out", type=Path, default=DEFAULT_BENCH_OUT)

    p_paths = sub.add_parser("kernel-paths", help="per line: another CPU kernel path, then the notebooks to check on it")
    common(p_paths)

    args = parser.parse_args(argv)
    notebooks = _selected(args.notebooks)

    if args.command == "kernel-paths":
        for path, group in kernel_path_plan(notebooks, cpu_kernel_path()).items():
            print(path, *group)
        return 0
    if args.command == "run":
        results, report = run_notebooks(notebooks, args.out, profile=args.profile or None, timeout=args.timeout)
        print(f"[run] wrote {report} (the site renders it as run.html)")
    elif args.command == "goldens":
        results = []
        for path in notebooks:
            print(f"[goldens] {path} ...", flush=True)
            result = regenerate_golden(path, timeout=args.timeout)
            results.append(result)
            print(f"[goldens] {path.name}: {result.status} ({result.wall_s:.1f} s)"
                  + ("" if result.ok else ", left unchanged"), flush=True)  # fmt: skip
            if not result.ok:
                print(result.error, file=sys.stderr, flush=True)
    else:
        results = bench_notebooks(notebooks, args.out, timeout=args.timeout)
        print(f"[bench] wrote {args.out}")

    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
