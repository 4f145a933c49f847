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
from llm_tutorial import assets, chat, runtime
from llm_tutorial import evaluation as ev
from llm_tutorial import instructions as ins
from llm_tutorial import peft_methods as pm
from llm_tutorial_build.report import cpu_model

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "alignment_probes.md"


def lora(model) -> list:
    pm.freeze(model)
    pm.inject_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)
    return list(pm.lora_modules(model).values())


def as_reference(loras, on: bool) -> None:
    """The reference policy is the model with its (zero-initialised, then trained) LoRA off."""
    for m in loras:
        m.scaling = 0.0 if on else m.alpha / m.r


def dpo(steps: int, batch: int, lr: float, beta: float, n_held: int, max_length: int = 128) -> dict:
    runtime.seed_everything(0)
    start = time.perf_counter()
    model, tok = assets.load_smollm2()
    pairs = [p for p in ev.load_preference_pairs() if p["chosen"].strip() != p["rejected"].strip()]
    train, held = pairs[:-n_held], pairs[-n_held:]

    @torch.no_grad()
    def rewards(loras=None):
        chosen, rejected = [], []
        for i in range(0, len(held), 16):
            c, r = al.sequence_logps(model, al.preference_batch(tok, held[i:i + 16], max_length)).chunk(2)
            chosen.append(c)
            rejected.append(r)
        return torch.cat(chosen), torch.cat(rejected)

    model.eval()
    ref_held = rewards()
    loras = lora(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(0)
    train_start = time.perf_counter()
    for _ in range(steps):
        b = al.preference_batch(tok, [train[i] for i in torch.randint(0, len(train), (batch,), generator=g)],
                                max_length)
        with torch.no_grad():
            as_reference(loras, True)
            ref_c, ref_r = al.sequence_logps(model, b).chunk(2)
            as_reference(loras, False)
        model.train()
        c, r = al.sequence_logps(model, b).chunk(2)
        loss, _, _ = al.dpo_loss(c, r, ref_c, ref_r, beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - train_start
    model.eval()
    c, r = rewards()
    chosen, rejected = beta * (c - ref_held[0]), beta * (r - ref_held[1])
    return {"held-out pairs": n_held, "steps x pairs": f"{steps} x {batch}", "lr": lr, "beta": beta,
            "accuracy before": 0.5, "accuracy after": al.preference_accuracy(chosen, rejected),
            "reward margin after": float((chosen - rejected).mean()), "training s": train_s,
            "total s": time.perf_counter() - start}


def grpo(family: str, steps: int, prompts: int, group: int, lr: float, beta: float, tokens: int) -> dict:
    runtime.seed_everything(0)
    start = time.perf_counter()
    model, tok = assets.load_smollm2()
    model.eval()
    train = ins.take(steps * prompts, [family], seed=0, templates="train")
    held = ins.take(64, [family], seed=7, templates="all")
    before = float(ins.answer_and_score(model, tok, held, tokens, 32)["correct"].mean())
    loras = lora(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    mean_rewards = []
    train_start = time.perf_counter()
    for step in range(steps):
        records = train[step * prompts:(step + 1) * prompts]
        tok.padding_side = "left"
        enc = tok([chat.render_chat(tok, r, with_answer=False) for r in records for _ in range(group)],
                  return_tensors="pt", padding=True, add_special_tokens=False)
        tok.padding_side = "right"
        model.eval()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=tokens, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        completion = out[:, enc["input_ids"].shape[1]:]
        ended = (completion == tok.eos_token_id).long().cumsum(1)
        mask = ((ended == 0) | ((ended == 1) & (completion == tok.eos_token_id))).long()  # up to the first end
        texts = tok.batch_decode(completion.masked_fill(mask == 0, tok.pad_token_id), skip_special_tokens=True)
        rewards = [float(ins.verify(text.strip(), records[i // group])) for i, text in enumerate(texts)]
        mean_rewards.append(sum(rewards) / len(rewards))
        with torch.no_grad():
            as_reference(loras, True)
            ref = al.per_token_logps(model, enc["input_ids"], enc["attention_mask"], completion, mask)
            as_reference(loras, False)
        model.train()
        logps = al.per_token_logps(model, enc["input_ids"], enc["attention_mask"], completion, mask)
        loss = al.grpo_loss(logps, logps.detach(), ref, al.group_advantages(rewards, group), mask, beta=beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - train_start
    model.eval()
    after = float(ins.answer_and_score(model, tok, held, tokens, 32)["correct"].mean())
    k = min(5, steps)
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
