"""
# Every PEFT method on one task: notebook 06's comparison at its `full` sizes

Section 4 of notebook 06 as a script: MiniLM (6 layers) with a fresh linear head learns the
topic of BBC News headlines from 32 labelled headlines per class, once per method and seed,
with `peft_methods.compare_methods` (the notebook's function, the course trainer, the same
data order, warm-up and schedule for every method; the head at `peft_methods.HEAD_LR` for all).
It writes one row per (method, seed) to a CSV that notebook 06 shows beside its `smoke` run,
checks the notebook's `full` target (LoRA r=8 on all linear layers within 1 point of full
fine-tuning) and prints the summary table for docs/results/peft.md.

    python benchmarks/peft_comparison.py                       # the full profile's sizes
    python benchmarks/peft_comparison.py --steps 30 --layers 2 --seeds 0   # about smoke's

About 30 minutes on a 2-core CPU. Results: docs/results/peft.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import time
from pathlib import Path

import torch

from llm_tutorial import assets, runtime
from llm_tutorial import finetuning as ft
from llm_tutorial import peft_methods as pm
from llm_tutorial_build.report import cpu_model

OUT = Path(__file__).resolve().parents[1] / "llm_tutorial" / "data" / "results" / "peft_comparison.csv"
COLUMNS = ["method", "seed", "accuracy", "trainable", "total", "trainable %", "seconds",
           "train state MB", "peak GPU MB", "checkpoint MB", "final train loss"]


def headline(text: str) -> str:
    return text.split("\n", 1)[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1].lstrip("# "))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--layers", type=int, default=None, help="MiniLM's bottom layers (default: all 6)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    runtime.seed_everything(0, profile="full")
    device = runtime.get_device("full")
    bbc = assets.load_bbc_news()
    train_idx = ft.sample_per_class(bbc.train_labels, args.per_class, seed=1)
    test_idx = range(len(bbc.test_labels))
    start = time.perf_counter()
    results = pm.compare_methods(
        pm.standard_methods(lora_ranks=(1, 4, 8, 16), all_linear_ranks=(8,)),
        [headline(bbc.train_texts[i]) for i in train_idx], [bbc.train_labels[i] for i in train_idx],
        [headline(bbc.test_texts[i]) for i in test_idx], [bbc.test_labels[i] for i in test_idx],
        len(bbc.label_names), seeds=args.seeds, max_steps=args.steps, batch_size=16, max_length=32,
        num_layers=args.layers, device=device, progress=False,
    )
    wall = time.perf_counter() - start
    summary = pm.summarise_comparison(results)
    print(summary.round(3).to_string())

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    argv = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in vars(args).items() if k != "out" and v is not None)
    provenance = {
        "command": f"python benchmarks/peft_comparison.py {argv}",
        "hardware": f"{cpu_model()}, {torch.get_num_threads()} threads; GPU: {gpu}",
        "date": dt.date.today().isoformat(), "commit": commit or "unknown",
        "software": f"python {platform.python_version()}, torch {torch.__version__}",
        "wall s": f"{wall:.0f}", "test headlines": str(len(test_idx)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as file:
        for key, value in provenance.items():
            file.write(f"# {key}: {value}\n")
        results[COLUMNS].to_csv(file, index=False, float_format="%.6g")
    print(f"wrote {args.out} ({wall:.0f} s)")

    lora8, full_ft = summary.loc["LoRA r=8, all linear", "accuracy"], summary.loc["full fine-tuning", "accuracy"]
    verdict = "met" if full_ft - lora8 <= 0.01 else "NOT met"
    print(f"full target, LoRA r=8 (all linear) within 1 point of full fine-tuning: "
          f"{lora8:.3f} vs {full_ft:.3f} ({lora8 - full_ft:+.1%}): {verdict}")


if __name__ == "__main__":
    main()
