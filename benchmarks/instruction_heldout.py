"""
# Instruction tuning: how far does LoRA SFT carry to held-out families?

Sections 4 and 5 of notebook 07 with the `full` profile's sizes, as a script, so that the
before/after exact match (and its per-family breakdown) can be measured for other training
lengths, learning rates, LoRA targets or held-out sets without the rest of the notebook:
SmolLM2-135M-Instruct, the notebook's mixture (`ins.sft_mixture`: generated records from the
training families plus a quarter of vendored open-ended instructions), `ins.tune`, and the
three evaluation splits scored by their verifiers (`ins.evaluate_splits`).

    python benchmarks/instruction_heldout.py                 # the notebook's full recipe
    python benchmarks/instruction_heldout.py --steps 900     # three times longer
    python benchmarks/instruction_heldout.py --no-mask       # the loss on the prompt too
    python benchmarks/instruction_heldout.py --split-seed 1  # another set of held-out families
    python benchmarks/instruction_heldout.py --csv outputs/07_heldout   # keep every answer

On a 2-core CPU: about 2 s per step (300 steps: 10 minutes) and 50 s per evaluation of the
three splits. Results: docs/results/instruction_tuning.md.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from llm_tutorial import assets, runtime
from llm_tutorial import instructions as ins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("# \n"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=2, help="packed rows per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--records", type=int, default=3600, help="records in the mixture")
    parser.add_argument("--open-share", type=float, default=0.25)
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules")
    parser.add_argument("--eval-n", type=int, default=100, help="records per split")
    parser.add_argument("--heldout", default=None,
                        help="comma-separated held-out families (default: split_families(8, "
                             "seed=SPLIT_SEED))")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of split_families, which draws the 8 held-out families "
                             "(the notebook uses 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mask", action="store_true",
                        help="put the loss on the prompt tokens too (the masking ablation)")
    parser.add_argument("--no-base", action="store_true", help="skip the base model's scores")
    parser.add_argument("--csv", default=None, help="path prefix for every answer, as CSV")
    parser.add_argument("--profile", default=None, help="device choice (default: auto)")
    args = parser.parse_args()

    profile = runtime.get_profile(args.profile or "")
    device = runtime.get_device(profile)
    runtime.seed_everything(args.seed, profile=profile)
    train, heldout = ins.split_families(8, seed=args.split_seed)
    if args.heldout:
        heldout = [name.strip() for name in args.heldout.split(",")]
        for name in heldout:
            ins.get_family(name)  # KeyError listing the known families
        train = [name for name in ins.FAMILIES if name not in heldout]
    print(f"device {device}; held-out families: {', '.join(heldout)}", flush=True)

    lm, tok = assets.load_smollm2()
    lm.to(device)
    splits = ins.evaluation_splits(train, heldout, args.eval_n)
    tables = {}
    if not args.no_base:
        tables["base"] = ins.evaluate_splits(lm, tok, splits, 24, batch_size=64)
    open_records = ins.load_vendored_records()
    mix = ins.sft_mixture(train, args.records, open_records[: int(0.9 * len(open_records))],
                          args.open_share, seed=args.seed)
    start = time.perf_counter()
    history = ins.tune(lm, tok, mix, args.steps, batch_size=args.batch, lr=args.lr,
                       targets=args.targets.split(","), max_length=args.max_length,
                       seed=args.seed, mask_prompt=not args.no_mask, desc="LoRA SFT")
    seconds = time.perf_counter() - start
    tables["LoRA SFT"] = ins.evaluate_splits(lm, tok, splits, 24, batch_size=64)

    print(f"\n{args.steps} steps in {seconds:.0f} s ({seconds / args.steps:.2f} s/step); "
          f"training loss by step:")
    print(history[["step", "train_loss"]].to_string(index=False))
    summary = pd.DataFrame({model: {name: t["correct"].mean() for name, t in split.items()}
                            for model, split in tables.items()})
    if "base" in summary:
        summary["gain (points)"] = 100 * (summary["LoRA SFT"] - summary["base"])
    print("\nexact match\n" + summary.round(3).to_string())
    by_family = pd.DataFrame({model: split["held-out families"].groupby("family")["correct"].mean()
                              for model, split in tables.items()})
    by_family["records"] = tables["LoRA SFT"]["held-out families"]["family"].value_counts()
    print("\nheld-out families\n" + by_family.round(3).to_string())
    heldout_after = tables["LoRA SFT"]["held-out families"]
    breakdown = ins.family_breakdown(heldout_after)
    print("\nheld-out families after SFT: skill or habit? (constant = the family's most frequent "
          "answer, given to all)\n" + breakdown.round(3).to_string(max_colwidth=30))
    weights = breakdown["records"] / breakdown["records"].sum()
    print(f"all held-out families: exact match {heldout_after['correct'].mean():.3f}, "
          f"constant {(weights * breakdown['constant exact match']).sum():.3f}")
    if args.csv:
        for model, split in tables.items():
            table = pd.concat(split.values(), ignore_index=True)
            path = f"{args.csv}_{model.replace(' ', '_').lower()}.csv"
            table.to_csv(path, index=False)
            print("answers written to", path)


if __name__ == "__main__":
    main()
