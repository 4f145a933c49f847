"""
# Can notebook 08 show alignment learning on a CPU? (design probes for issue 27)

Two probes on SmolLM2-135M-Instruct with LoRA (r = 8 on `q_proj`, `v_proj`), using the losses
of `llm_tutorial.alignment`, each timed and scored on held-out data:

* **DPO** on the vendored preference pairs (`evaluation.load_preference_pairs`; the chosen
  answer is the more polite one; the 6 pairs whose two answers are identical are dropped). The
  reference is the same model with the LoRA scaled to 0, so there is no second copy. Scored by
  held-out *preference accuracy*: the share of pairs whose chosen answer gets the larger implicit
  reward (0.5 before training, by construction).
* **GRPO** on one instruction family of notebook 07, with the family's verifier as the reward:
  G sampled answers per prompt, group-standardised advantages, one policy-gradient step per
  sample batch. Scored by greedy exact match on 64 held-out prompts (all templates).

    python benchmarks/alignment_probes.py            # both, the settings below; writes docs/results/alignment_probes.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import torch

from llm_tutorial import alignment as al
from llm_tutorial import assets, runtime
from llm_tutorial import evaluation as ev
from llm_tutorial import instructions as ins
from llm_tutorial import peft_methods as pm
from llm_tutorial_build.report import cpu_model

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "alignment_probes.md"


def lora(model) -> None:
    """A fresh LoRA; the reference is the model with it off (`alignment.reference_policy`)."""
    pm.freeze(model)
    pm.inject_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)


def dpo(steps: int, batch: int, lr: float, beta: float, n_held: int, max_length: int = 128) -> dict:
    runtime.seed_everything(0)
    start = time.perf_counter()
    model, tok = assets.load_smollm2()
    pairs = al.usable_pairs(tok, ev.load_preference_pairs(), max_length)
    train, held = pairs[:-n_held], pairs[-n_held:]

    model.eval()
    ref_held = al.pair_logps(model, tok, held, max_length)
    lora(model)
    objective = al.DPOObjective(model, beta)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(0)
    train_start = time.perf_counter()
    for _ in range(steps):
        b = al.preference_batch(tok, [train[i] for i in torch.randint(0, len(train), (batch,), generator=g)],
                                max_length)
        model.train()
        loss = objective(**b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - train_start
    model.eval()
    metrics = al.preference_metrics(al.pair_logps(model, tok, held, max_length), ref_held, beta)
    return {"held-out pairs": n_held, "steps x pairs": f"{steps} x {batch}", "lr": lr, "beta": beta,
            "accuracy before": 0.5, "accuracy after": metrics["preference_accuracy"],
            "reward margin after": metrics["reward_margin"], "training s": train_s,
            "total s": time.perf_counter() - start}


def grpo(family: str, steps: int, prompts: int, group: int, lr: float, beta: float, tokens: int) -> dict:
    runtime.seed_everything(0)
    start = time.perf_counter()
    model, tok = assets.load_smollm2()
    model.eval()
    train = ins.take(steps * prompts, [family], seed=0, templates="train")
    held = ins.take(64, [family], seed=7, templates="all")
    before = float(ins.answer_and_score(model, tok, held, tokens, 32)["correct"].mean())
    lora(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rollouts = al.Rollouts(model, tok, train, al.strict_reward, group_size=group, prompts_per_batch=prompts,
                           max_new_tokens=tokens)
    objective = al.GRPOObjective(model, beta=beta)
    train_start = time.perf_counter()
    for batch in rollouts:  # one sampled batch per step: `steps` batches of `prompts` prompts
        model.train()
        loss = objective(**batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - train_start
    model.eval()
    after = float(ins.answer_and_score(model, tok, held, tokens, 32)["correct"].mean())
    k, mean_rewards = min(5, steps), [row["mean_reward"] for row in rollouts.log]
    return {"family": family, "steps x prompts x G": f"{steps} x {prompts} x {group}", "lr": lr, "beta": beta,
            "held-out EM before": before, "held-out EM after": after,
            f"mean reward, first {k} steps": sum(mean_rewards[:k]) / k,
            f"mean reward, last {k} steps": sum(mean_rewards[-k:]) / k,
            "training s": train_s, "total s": time.perf_counter() - start}


def table(row: dict) -> str:
    cell = {k: f"{v:.3f}" if isinstance(v, float) and not k.endswith(" s") and k not in ("lr", "beta")
            else f"{v:.0f}" if k.endswith(" s") else str(v) for k, v in row.items()}
    return "| " + " | ".join(cell) + " |\n|" + "---|" * len(cell) + "\n| " + " | ".join(cell.values()) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--dpo-steps", type=int, default=40)
    parser.add_argument("--grpo-steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    d = dpo(args.dpo_steps, batch=4, lr=2e-3, beta=0.1, n_held=100)
    print(d, flush=True)
    g = grpo("larger_number", args.grpo_steps, prompts=4, group=4, lr=2e-3, beta=0.04, tokens=8)
    print(g, flush=True)
    OUT.write_text(f"""# Alignment: design probes for notebook 08

Not yet a notebook: these probes measure whether DPO and GRPO show learning within a CPU budget
before notebook 08 is written. `python benchmarks/alignment_probes.py`, {dt.date.today()}, on
{cpu_model()} (2 threads, PyTorch {torch.__version__}); SmolLM2-135M-Instruct, LoRA r = 8 on
`q_proj` and `v_proj`, the losses of `llm_tutorial.alignment` (tested equal to trl's).

## DPO on the vendored preference pairs

{table(d)}

## GRPO with the family's verifier as the reward

{table(g)}

## What this means for the notebook

The smoke budget is 150 s for the whole notebook. Each probe alone takes most of it on this
machine, so notebook 08 in smoke needs smaller steps (shorter answers, fewer held-out items) or a
shipped full-profile adapter beside a shorter smoke run, as the visible-learning issue allows.
""", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
