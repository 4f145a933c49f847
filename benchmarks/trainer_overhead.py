"""
# How much does the course trainer cost?

The course trains everything through `llm_tutorial.trainer.Trainer`. A trainer is
only worth having if it is (nearly) free, so this script times the same training
job three ways on the same tiny GPT-2 and the same random-token batches:

1. a bare PyTorch loop: forward, backward, clip, AdamW (fused, as in all three), `LambdaLR`, nothing else;
2. the course `Trainer` (progress bar off, history logged every 10 steps);
3. Hugging Face `transformers.Trainer`, fed from a `Dataset` of per-example dicts.

Each run starts from a freshly built model with the same seed. After one warm-up
run of each, the three are repeated `--repeats` times, interleaved (and rotated) so
that drifts in machine speed hit them equally; the table reports median tokens per
second and the ratio to the bare loop. The target is a course trainer at >= 0.95x.

    python benchmarks/trainer_overhead.py --steps 40 --repeats 5 [--threads 1]

The results go to `docs/results/trainer.md` (see `--out`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from llm_tutorial.trainer import TrainConfig, Trainer, lr_lambda

VOCAB, SEQ_LEN, BATCH, HIDDEN, LAYERS, HEADS = 1000, 64, 16, 128, 2, 4
LR, WEIGHT_DECAY, MAX_GRAD_NORM, WARMUP_FRACTION = 5e-4, 0.01, 1.0, 0.1
N_BATCHES = 8  # distinct batches, cycled
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "trainer.md"


def make_model(device: torch.device) -> GPT2LMHeadModel:
    """A tiny GPT-2 built from a config (no downloads), identical for every run."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ_LEN,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).to(device)


def make_batches(device: torch.device) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(N_BATCHES):
        ids = torch.randint(0, VOCAB, (BATCH, SEQ_LEN), generator=g)
        batches.append({"input_ids": ids.to(device), "labels": ids.to(device)})
    return batches


class ExampleDataset(Dataset):
    """The same tokens as `make_batches`, one example per item, as HF `Trainer` expects."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.rows = [
            {"input_ids": b["input_ids"][i].cpu(), "labels": b["labels"][i].cpu()}
            for b in batches
            for i in range(BATCH)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bare(steps: int, batches: list, device: torch.device) -> float:
    """The loop everyone writes by hand. Returns seconds."""
    model = make_model(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=LR,
        fused=True,  # the kernel the course trainer uses, so only the loops differ
    )
    factor = functools.partial(
        lr_lambda,
        max_steps=steps,
        warmup_steps=round(WARMUP_FRACTION * steps),
        schedule="linear",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    sync(device)
    start = time.perf_counter()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    loss.item()
    sync(device)
    return time.perf_counter() - start


def run_course(steps: int, batches: list, device: torch.device) -> float:
    """The course trainer on the same job. Returns seconds spent in `train()`."""
    config = TrainConfig(
        max_steps=steps,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP_FRACTION,
        max_grad_norm=MAX_GRAD_NORM,
        mixed_precision="no",  # same arithmetic as the bare loop, also on a GPU
        log_every=10,
        progress=False,
    )
    trainer = Trainer(make_model(device), batches, config)
    sync(device)
    start = time.perf_counter()
    trainer.train()
    sync(device)
    return time.perf_counter() - start


def run_hf(steps: int, batches: list, device: torch.device) -> float:
    """Hugging Face `Trainer`, no saving or reporting. Returns seconds spent in `train()`."""
    dataset = ExampleDataset(batches)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            weight_decay=WEIGHT_DECAY,
            warmup_steps=round(WARMUP_FRACTION * steps),
            lr_scheduler_type="linear",
            optim="adamw_torch_fused",
            max_grad_norm=MAX_GRAD_NORM,
            logging_strategy="steps",
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=device.type != "cuda",
            dataloader_num_workers=0,
            dataloader_pin_memory=device.type == "cuda",
            seed=0,
        )
        trainer = transformers.Trainer(model=make_model(device), args=args, train_dataset=dataset)
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no printing
        sync(device)
        start = time.perf_counter()
        trainer.train()
        sync(device)
        return time.perf_counter() - start


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        accel = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        accel = "CPU only"
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}, "
        f"{accel}; device `{device}`; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("# \n"))
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each loop")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report path")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice). On a small shared machine, "
        "--threads 1 avoids threads waiting for a busy core, which makes timings erratic",
    )
    args = parser.parse_args()
    if args.steps < 10 or args.repeats < 3:
        parser.error("use --steps >= 10 and --repeats >= 3 for a meaningful median")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    batches = make_batches(device)
    tokens = args.steps * BATCH * SEQ_LEN
    runners: dict[str, Callable[[int, list, torch.device], float]] = {
        "bare PyTorch loop": run_bare,
        "course `Trainer`": run_course,
        "HF `transformers.Trainer`": run_hf,
    }
    names = list(runners)

    for name in names:  # warm-up: allocator, kernels, lazy imports
        runners[name](10, batches, device)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        order = names[repeat % 3 :] + names[: repeat % 3]
        for name in order:
            seconds = runners[name](args.steps, batches, device)
            rates[name].append(tokens / seconds)
            print(f"repeat {repeat + 1}: {name:<28} {tokens / seconds:9.0f} tokens/s")

    bare, bare_best = statistics.median(rates[names[0]]), max(rates[names[0]])
    rows = []
    for name in names:
        median, best = statistics.median(rates[name]), max(rates[name])
        rows.append(
            f"| {name} | {median:,.0f} | {median / bare:.3f}x | {best:,.0f} "
            f"| {best / bare_best:.3f}x | {min(rates[name]):,.0f} |"
        )
    threads_flag = "" if args.threads is None else f" --threads {args.threads}"
    params = sum(p.numel() for p in make_model(device).parameters())
    report = "\n".join(
        [
            "# Trainer overhead",
            "",
            "Throughput of one training job run three ways: tokens per second, median of "
            f"{args.repeats} interleaved runs of {args.steps} optimizer steps each, after a "
            "warm-up run of each.",
            "",
            "| Loop | median tokens/s | median vs bare loop | best tokens/s | best vs bare loop "
            "| worst tokens/s |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"- Job: GPT-2 from config ({params / 1e6:.2f}M parameters, vocab {VOCAB}, "
            f"hidden {HIDDEN}, {LAYERS} layers), batch {BATCH} x {SEQ_LEN} random tokens, "
            f"fused AdamW (all three) lr {LR} with linear warm-up/decay, gradient clipping at {MAX_GRAD_NORM}, "
            "full precision.",
            f"- Machine: {machine(device)}; 1-minute load average {load:.2f} at start "
            "(other work on the machine adds noise; the runs are interleaved so it hits all "
            "three loops alike).",
            f"- Generated {dt.date.today().isoformat()} by "
            f"`python benchmarks/trainer_overhead.py --steps {args.steps} "
            f"--repeats {args.repeats}{threads_flag}`.",
            "- Target: the course trainer at >= 0.95x the bare loop.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print()
    print(report)


if __name__ == "__main__":
    main()
