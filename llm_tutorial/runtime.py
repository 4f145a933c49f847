"""Runtime: which profile we run in, on which device, and how to make a run repeatable.

Every notebook starts by asking three questions:

1. **Which profile?** `smoke` is small, CPU-only and deterministic: it is what CI runs and
   what the committed notebook outputs show. `full` uses a GPU, more data and more steps,
   and reaches the quality numbers the course quotes. The same code runs in both; only the
   sizes differ. (Deterministic on one machine: another CPU's kernels round the last digits
   of a float sum differently, so cells tagged `cpu-dependent` assert their claims rather
   than print digits every CPU reproduces; see the README.)
2. **Which device?** CUDA if present, then Apple's MPS, then the CPU.
3. **Which seed?** `seed_everything` seeds Python, NumPy and PyTorch and switches PyTorch
   to deterministic algorithms, so that two runs print the same numbers.

Long loops (training, batched inference) report their progress with `progress`: a widget
in JupyterLab, a text bar in a terminal and in `make run`'s papermill logs. Timings that are
compared with each other come from `compare_latency`, which interleaves the candidates so that
a machine that speeds up or slows down meanwhile shifts them all alike.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROFILES = ("smoke", "full")
SMOKE_THREADS = 2  # PyTorch CPU threads in the smoke profile, whatever OMP_NUM_THREADS says
ENV_VAR = "LLM_TUTORIAL_PROFILE"
OUTPUTS_ENV_VAR = "LLM_TUTORIAL_OUTPUTS"
PROGRESS_ENV_VAR = "LLM_TUTORIAL_PROGRESS"
PROGRESS_MODES = ("auto", "text", "off")
MIN_BATCHES_FOR_BAR = 20  # inference loops shorter than this finish too fast to need a bar


def get_profile(value: str | None = None) -> str:
    """Return the active profile: the argument, else `$LLM_TUTORIAL_PROFILE`, else automatic.

    Automatic means `full` when a CUDA GPU is visible and `smoke` otherwise. Values are
    case-insensitive; an empty string counts as unset (papermill passes `""` for "no value").
    """
    for source, candidate in (("argument", value), (ENV_VAR, os.environ.get(ENV_VAR))):
        if candidate is None or str(candidate).strip() == "":
            continue
        name = str(candidate).strip().lower()
        if name not in PROFILES:
            raise ValueError(
                f"unknown profile {candidate!r} (from the {source}); choose one of {', '.join(PROFILES)}"
            )
        return name
    return "full" if torch.cuda.is_available() else "smoke"


def get_device(profile: str | None = None) -> torch.device:
    """The best available device: `cuda` > `mps` > `cpu`.

    The `smoke` profile always uses the CPU, because its outputs must be bit-for-bit
    repeatable and identical to the committed ones. No profile (`None` or `""`) means the
    active one, as `get_profile` resolves it, so `$LLM_TUTORIAL_PROFILE=smoke` is obeyed.
    """
    if get_profile(profile) == "smoke":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0, deterministic: bool = True,
                    profile: str | None = None) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices) and return a seeded `torch.Generator`.

    With `deterministic=True` PyTorch is told to use deterministic algorithms only (warning,
    not failing, where an operation has none), cuDNN autotuning is switched off, and cuBLAS gets
    the workspace setting it needs for reproducible matrix products. In the `smoke` profile
    (`profile` resolved by `get_profile`) it also fixes PyTorch's CPU thread count to
    `SMOKE_THREADS`: a float sum split over a different number of threads rounds differently,
    and after a few hundred training steps those last bits show in the printed losses. With the
    count fixed, the committed outputs do not depend on `OMP_NUM_THREADS` or the core count.
    On a busy machine two threads are only fast if they sleep while they wait: start Jupyter
    with `OMP_WAIT_POLICY=PASSIVE` (read when PyTorch loads; on an idle machine it slows
    generation, so it is not the default).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        if get_profile(profile) == "smoke":
            torch.set_num_threads(SMOKE_THREADS)
    return torch.Generator().manual_seed(seed)


def output_dir(*parts: str) -> Path:
    """The folder where notebooks write files (checkpoints, adapters), created if needed.

    It is `outputs/` (git-ignored) at the root of the course's repository, or under the
    current directory when the package is installed elsewhere; `$LLM_TUTORIAL_OUTPUTS`
    overrides it. `parts` name a sub-folder, e.g. `output_dir("05")`.
    """
    for part in parts:
        if not isinstance(part, str) or not part or part in (".", "..") or "/" in part or "\\" in part:
            raise ValueError(f"output_dir parts must be plain folder names, got {part!r}")
    root = os.environ.get(OUTPUTS_ENV_VAR)
    if root:
        base = Path(root)
    else:
        repo = Path(__file__).resolve().parents[1]
        base = repo / "outputs" if (repo / "pyproject.toml").is_file() else Path.cwd() / "outputs"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_environment(profile: str | None = None) -> dict[str, str]:
    """A flat `{name: value}` summary of this machine, for the first cell of every notebook.

    It lists Python and library versions, the device, the profile, and which offline assets
    (models and data sets) are installed, so a learner sees at once what will run.
    """
    from . import assets  # local import: assets imports this module

    device = get_device(profile)
    info: dict[str, str] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu cores": str(os.cpu_count()),
        "profile": get_profile(profile),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    for package in ("torch", "transformers", "tokenizers", "peft", "numpy", "pandas", "scikit-learn"):
        info[package] = _version(package) or "not installed"
    for name, available in assets.available_assets().items():
        info[f"asset: {name}"] = "installed" if available else f"missing ({assets.ASSETS[name].install})"
    return info


def progress_mode() -> str:
    """How `progress` draws bars: `$LLM_TUTORIAL_PROGRESS`, else `auto`.

    `auto`: tqdm.auto, a widget in JupyterLab and text in a terminal; `text`: plain text on
    stderr, which papermill copies into its log (`make run` sets it); `off`: no bars.
    """
    value = os.environ.get(PROGRESS_ENV_VAR, "").strip().lower() or "auto"
    if value not in PROGRESS_MODES:
        raise ValueError(
            f"{PROGRESS_ENV_VAR}={os.environ[PROGRESS_ENV_VAR]!r} is not a progress mode; "
            f"set it to one of {', '.join(PROGRESS_MODES)} or unset it"
        )
    return value


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             enabled: bool = True, min_total: int = 1, leave: bool = True, **kwargs: Any):
    """A tqdm progress bar for a long loop, drawn the way `progress_mode` says.

    Use it like `tqdm`: wrap an iterable (`for batch in progress(batches, desc="predict")`)
    or pass `total` and call `update`. The bar is disabled (the object still works) when
    `enabled` is false, when the mode is `off`, or when the loop has fewer than
    `min_total` items: inference helpers pass `min_total=MIN_BATCHES_FOR_BAR` so that short
    calls stay quiet. `leave=False` removes a widget bar once its loop ends; text bars always
    stay. Extra keyword arguments go to tqdm.
    """
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    mode = progress_mode()
    disable = not enabled or mode == "off" or (total is not None and total < min_total)
    if mode == "text":
        from tqdm.std import tqdm as bar

        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("mininterval", 2.0)
        kwargs.setdefault("ncols", 100)
        leave = True  # a log keeps the last state of every bar, even of short-lived ones
    else:
        bar = _auto_tqdm()
        kwargs.setdefault("dynamic_ncols", True)
    return bar(iterable, total=total, desc=desc, disable=disable, leave=leave, **kwargs)


def batch_progress(iterable: Iterable, *, total: int | None = None, desc: str = ""):
    """`progress` for a batched inference loop: shown only from
    `MIN_BATCHES_FOR_BAR` batches (short calls stay quiet), and removed once done."""
    return progress(iterable, total=total, desc=desc, min_total=MIN_BATCHES_FOR_BAR, leave=False)


def _auto_tqdm():
    """tqdm's widget bar inside Jupyter, its text bar elsewhere: what `tqdm.auto` picks,
    without `tqdm.auto`'s asyncio mix-in, which calls `iter()` on the iterable as soon as
    the bar is made. Iterating a `DataLoader` twice draws its base seed twice from the
    global generator, so the numbers of every later random draw would change."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autonotebook's "experimental" warning in Jupyter
        from tqdm.autonotebook import tqdm

    return tqdm


# ------------------------------------------------------------------------------ timing


def latency(fn: Callable[[], Any], runs: int = 100, warmup: int = 10) -> dict[str, Any]:
    """
    Time `runs` calls of `fn()` after `warmup` untimed ones: the `median_ms`, the `p95_ms`
    (95th percentile: the latency that 1 call in 20 exceeds), `mean_ms`, and every call's
    time in `times_ms`.
    """
    if runs < 1:
        raise ValueError(f"latency needs at least one timed run, got runs={runs} (100 or more "
                         f"give a stable 95th percentile)")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _latency_summary([1000 * t for t in times])


def _latency_summary(ms: list[float]) -> dict[str, Any]:
    values = np.array(ms)
    return {"median_ms": float(np.median(values)), "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(values.mean()), "runs": len(ms), "times_ms": list(ms)}


def compare_latency(calls: Mapping[str, Callable[[], Any]], runs: int = 100, warmup: int = 5,
                    rounds: int = 10) -> dict[str, dict[str, Any]]:
    """
    `latency` of several callables, interleaved: after `warmup` calls of each, `rounds` rounds in
    which each callable makes `runs / rounds` timed calls in turn. A machine that speeds up or
    slows down during the measurement (another process, the clock, the caches) then shifts every
    callable alike, instead of whichever happened to be timed at that moment.
    """
    if runs < 1 or rounds < 1 or runs % rounds:
        raise ValueError(f"need runs >= 1 split evenly into rounds >= 1, got runs={runs}, rounds={rounds}")
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name] += latency(fn, runs=runs // rounds, warmup=0)["times_ms"]
    return {name: _latency_summary(ms) for name, ms in times.items()}
