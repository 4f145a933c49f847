"""
# One training script, one process or many

Trains the course `Transformer` on Tiny Shakespeare's characters with the course `Trainer`,
either alone or as one of the processes that PyTorch's launcher starts:

    python -m llm_tutorial.scripts.train_ddp --strategy single
    torchrun --nproc_per_node=2 -m llm_tutorial.scripts.train_ddp --strategy ddp
    torchrun --nproc_per_node=2 -m llm_tutorial.scripts.train_ddp --strategy fsdp
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
        -m llm_tutorial.scripts.train_ddp --strategy fsdp      # and node_rank=1 on the other node

Every process builds the same model (same seed) and draws the same global batches; each trains
on its own rows of them (`efficiency.shard_batch`). The strategies:

* `single`: one process, the whole global batch: the reference;
* `ddp`: `DistributedDataParallel` all-reduces (averages) the gradients in the backward pass;
* `fsdp`: `fully_shard` (FSDP2) on every block and on the model: each process keeps only its
  shard of every weight, gradient and optimizer state, and gathers a block's weights when needed;
* `independent`: the same processes with no gradient exchange, to show what the all-reduce does.

Several strategies may be given (`--strategy ddp fsdp independent`): they run one after the
other in the same processes, each from the same initial model.

The script writes one JSON file (rank 0), a list with one record per strategy: the mean loss over
ranks at every step, the parameters each rank holds, and how far the ranks' final weights are apart. The backend is gloo on a CPU
and NCCL on GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from llm_tutorial import assets
from llm_tutorial.efficiency import shard_batch
from llm_tutorial.trainer import TrainConfig, Trainer
from llm_tutorial.transformer import Transformer, TransformerConfig

STRATEGIES = ("single", "ddp", "fsdp", "independent")


def global_batches(steps: int, batch_size: int, seq_len: int, seed: int = 0) -> tuple[list[dict], int]:
    """`steps` global batches of `batch_size` random windows of Tiny Shakespeare's characters
    (`input_ids` = `labels`: the model shifts them), the same in every process; and the vocabulary size."""
    text = assets.load_tiny_shakespeare()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
        x = torch.stack([data[s: s + seq_len] for s in starts.tolist()])
        batches.append({"input_ids": x, "labels": x})
    return batches, len(chars)


def run(strategy: str, steps: int = 8, batch_size: int = 8, seq_len: int = 64, dim: int = 64,
        n_layers: int = 2, lr: float = 3e-3, seed: int = 0) -> dict:
    """Train with `strategy` in this process (inside a process group unless `single`); return the record."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    distributed = strategy != "single"
    if distributed and not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError(f"--strategy {strategy} runs under a launcher: torchrun --nproc_per_node=2 "
                               f"-m llm_tutorial.scripts.train_ddp --strategy {strategy}")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")

    batches, vocab = global_batches(steps, batch_size, seq_len, seed)
    shards = [shard_batch(b, rank, world) for b in batches]
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=4,
                                          max_positions=seq_len)).to(device)
    total = sum(p.numel() for p in model.parameters())
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    elif strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())

    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=0, schedule="constant", log_every=1,
                         mixed_precision="no", progress=False)
    history = Trainer(model, shards, config, device=device).train()
    losses = torch.tensor(history["train_loss"].to_numpy(), dtype=torch.float64, device=device)

    record = {"strategy": strategy, "world_size": world, "parameters": total}
    if distributed:
        dist.all_reduce(losses)  # the global batch's mean loss = the mean of the ranks' means
        losses /= world
        weights = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().flatten()
                             for p in model.parameters()]).double()
        spread = weights.clone()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        lowest = weights.clone()
        dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
        record["weight_spread"] = float((spread - lowest).max())  # 0 when every rank holds the same model
        all_local = torch.tensor([local], device=device)
        gathered = [torch.zeros_like(all_local) for _ in range(world)]
        dist.all_gather(gathered, all_local)
        record["parameters_per_rank"] = [int(t) for t in gathered]
    else:
        record["weight_spread"] = 0.0
        record["parameters_per_rank"] = [local]
    record["loss"] = losses.tolist()
    return record


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("# \n"))
    parser.add_argument("--strategy", choices=STRATEGIES, nargs="+", default=["ddp"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch, split over the processes")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write the record here as JSON (rank 0)")
    args = parser.parse_args(argv)
    records = [run(strategy, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len)
               for strategy in args.strategy]
    if args.out is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
    return records


if __name__ == "__main__":
    main()
