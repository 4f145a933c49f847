"""Tests of `llm_tutorial.efficiency` and `llm_tutorial/scripts/train_ddp.py`: the memory
arithmetic against PyTorch's own tracker, checkpointing, the two-process DDP/FSDP equality, the
ZeRO figures, quantization, ONNX export, pruning, distillation and generation speed."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from llm_tutorial import efficiency as eff
from llm_tutorial import runtime
from llm_tutorial.finetuning import SequenceClassifier
from llm_tutorial.scripts import train_ddp
from llm_tutorial.trainer import TrainConfig, Trainer
from llm_tutorial.transformer import Transformer, TransformerConfig
from tests.chat_models import tiny_llama, word_chat_tokenizer
from tests.records import read_record, record_table


def tiny_transformer(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=20, dim=32, n_layers=2, n_heads=4, max_positions=32))


def lm_batch(rows: int = 4, t: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    x = torch.randint(0, 20, (rows, t), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": x, "labels": x}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 1)

    def forward(self, x, y):
        return F.mse_loss(self.b(torch.relu(self.a(x))).squeeze(-1), y)


def tiny_classifier(seed: int = 0, heads: int = 4, layers: int = 2) -> SequenceClassifier:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=64, max_position_embeddings=64)
    return SequenceClassifier(BertModel(config, add_pooling_layer=False), num_labels=3).eval()


def classifier_batch(rows: int = 4, t: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, t, dtype=torch.long)
    mask[0, t // 2:] = 0  # one padded row
    return {"input_ids": torch.randint(1, 50, (rows, t), generator=g), "attention_mask": mask,
            "labels": torch.randint(0, 3, (rows,), generator=g)}


# ------------------------------------------------------------------------------ training memory


def test_training_memory_is_sixteen_bytes_a_parameter_plus_activations():
    out = eff.training_memory(1000, activation_bytes=500)
    assert out == {"weights": 4000, "gradients": 4000, "optimizer": 8000, "activations": 500, "total": 16500}
    with pytest.raises(ValueError, match="count things"):
        eff.training_memory(-1)


def test_saved_activations_scale_with_the_batch_and_exclude_weights():
    model = MLP()
    small = eff.saved_activation_bytes(model, {"x": torch.randn(10, 8), "y": torch.randn(10)})
    large = eff.saved_activation_bytes(model, {"x": torch.randn(20, 8), "y": torch.randn(20)})
    assert large == 2 * small > 0
    # saved: x (by `a`), relu's output (by relu and by `b`: one storage, counted once) and the
    # mse's two inputs; the weights `a` and `b` save are not counted
    assert small == 4 * 10 * (8 + 16 + 1 + 1)


def test_memory_by_category_counts_weights_and_adamw_states_exactly():
    model = tiny_transformer()
    n = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters())
    batch = lm_batch()

    def step(next_forward):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(lambda: None)  # the optimizer's states exist from here on
    out = eff.memory_by_category(step, model, opt)
    assert out["weights"] == 4 * n
    assert 0 <= out["optimizer"] - 8 * n <= 64 * len(list(model.parameters()))
    assert out["activations"] > 0 and out["total"] >= out["weights"] + out["optimizer"]


def test_checkpointing_gives_the_same_gradients_with_fewer_saved_activations():
    batch = lm_batch()
    plain, ckpt = tiny_transformer(), tiny_transformer()
    plain(**batch).loss.backward()
    calls = []
    for block in ckpt.blocks:
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    with eff.checkpointed(ckpt):
        ckpt(**batch).loss.backward()
        assert len(calls) == 2 * len(ckpt.blocks)  # each block ran again inside the backward pass
        saved_ckpt = eff.saved_activation_bytes(ckpt, batch)
    for a, b in zip(plain.parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert saved_ckpt < 0.5 * eff.saved_activation_bytes(plain, batch)
    assert all(type(block).__name__ == "Block" for block in ckpt.blocks)  # restored afterwards
    with pytest.raises(TypeError, match="gradient_checkpointing_enable"):
        with eff.checkpointed(MLP()):
            pass


def test_measure_training_accumulation_reaches_the_same_loss():
    batch = lm_batch(rows=8)
    one = eff.measure_training(tiny_transformer, batch, steps=2)
    four = eff.measure_training(tiny_transformer, batch, grad_accum=4, steps=2)
    assert one["final loss"] == pytest.approx(four["final loss"], abs=1e-5)
    assert four["activations MiB"] < 0.5 * one["activations MiB"]
    assert one["weights MiB"] == four["weights MiB"]
    with pytest.raises(ValueError, match="divisor of 8"):
        eff.measure_training(tiny_transformer, batch, grad_accum=3)


def test_flops_formula_and_matmul_ceiling():
    assert eff.training_flops(100, 10) == 6000
    assert eff.training_flops(100, 10, n_layers=2, dim=4, seq_len=8) == 10 * (600 + 12 * 2 * 4 * 8)
    assert eff.matmul_flops_per_second(64, repeats=1) > 0


# ------------------------------------------------------------------------------ scaling out


def test_shard_batch_partitions_the_rows():
    batch = {"input_ids": torch.arange(12).view(6, 2)}
    parts = [eff.shard_batch(batch, r, 3)["input_ids"] for r in range(3)]
    assert sorted(torch.cat(parts)[:, 0].tolist()) == list(range(0, 12, 2))
    with pytest.raises(ValueError, match="multiple of 4"):
        eff.shard_batch(batch, 0, 4)
    with pytest.raises(ValueError, match="rank 3"):
        eff.shard_batch(batch, 3, 3)


def test_zero_memory_matches_the_paper():
    # Rajbhandari et al. 2020, figure 1: 7.5B parameters, 64 GPUs, K = 12
    got = [round(eff.zero_memory_per_rank(7.5e9, 64, s) / 1e9, 1) for s in eff.ZERO_STAGES]
    assert got == [120.0, 31.4, 16.6, 1.9]
    table = eff.zero_memory_table({"a": 1e9}, world_size=1)
    assert table.loc["a"].nunique() == 1  # one rank: nothing to shard
    with pytest.raises(ValueError, match="choose one of"):
        eff.zero_memory_per_rank(1e9, 8, "ZeRO-4")


def test_two_processes_take_the_steps_of_one(tmp_path):
    """The CI test of issue 29: 2 CPU processes with gloo under PyTorch's launcher."""
    single = train_ddp.run("single", steps=6)
    eff.launch(["--strategy", "ddp", "fsdp", "independent", "--steps", 6, "--out", tmp_path / "r.json"], nproc=2)
    runs = {r["strategy"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    for name in ("ddp", "fsdp"):
        assert runs[name]["world_size"] == 2
        assert max(abs(a - b) for a, b in zip(runs[name]["loss"], single["loss"], strict=True)) < 1e-5
        assert runs[name]["weight_spread"] == 0.0
    # the all-reduce is what makes it so: without it the ranks drift apart and off the reference
    assert max(abs(a - b) for a, b in zip(runs["independent"]["loss"], single["loss"], strict=True)) > 1e-3
    assert runs["independent"]["weight_spread"] > 1e-3
    shards = runs["fsdp"]["parameters_per_rank"]
    assert runs["ddp"]["parameters_per_rank"] == [single["parameters"]] * 2
    assert max(shards) < 0.52 * single["parameters"] and sum(shards) >= single["parameters"]


def test_the_script_explains_how_to_launch_it(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node=2"):
        train_ddp.run("ddp", steps=1)
    with pytest.raises(ValueError, match="choose one of"):
        train_ddp.run("zero", steps=1)
    with pytest.raises(RuntimeError, match="failed"):
        eff.launch(["--strategy", "nonsense"], nproc=1)


# ------------------------------------------------------------------------------ latency, size, quantization


def test_latency_helpers_are_the_runtime_ones():
    """12 times its variants with the helpers 06 uses (tested in test_runtime.py)."""
    assert eff.latency is runtime.latency and eff.compare_latency is runtime.compare_latency


def test_quantize_int8_is_close_smaller_and_refuses_twice(tmp_path):
    model = tiny_classifier()
    batch = classifier_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    q = eff.quantize_int8(model)
    assert eff.is_quantized(q) and not eff.is_quantized(model)
    with torch.no_grad():
        assert (q(**inputs).logits - model(**inputs).logits).abs().max() < 0.1
    assert eff.file_size_mb(q) < eff.file_size_mb(model)
    with pytest.raises(ValueError, match="already quantized"):
        eff.quantize_int8(q)
    with pytest.raises(ValueError, match="do not export to ONNX"):
        eff.export_onnx(eff.LogitsOnly(q), inputs, tmp_path / "q.onnx")


def test_onnx_export_matches_pytorch_with_dynamic_shapes(tmp_path):
    model = eff.LogitsOnly(tiny_classifier()).eval()
    batch = classifier_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    path = eff.export_onnx(model, inputs, tmp_path / "m.onnx")
    onnx_model = eff.OnnxModel(path)
    other = classifier_batch(rows=3, t=20, seed=1)  # another batch size and length than the example
    for feed in (inputs, {k: other[k] for k in inputs}):
        with torch.no_grad():
            assert (onnx_model(**feed) - model(**feed)).abs().max() <= 1e-4
    int8 = eff.quantize_onnx_int8(path, tmp_path / "m8.onnx")
    assert eff.file_size_mb(int8) < eff.file_size_mb(path)
    assert onnx_model(**inputs).shape == eff.OnnxModel(int8)(**inputs).shape
    with pytest.raises(ValueError, match="already quantized"):
        eff.quantize_onnx_int8(int8, tmp_path / "again.onnx")
    with pytest.raises(KeyError, match="attention_mask"):
        onnx_model(input_ids=inputs["input_ids"])


def test_export_of_an_unsupported_module_says_what_to_do(tmp_path):
    class Eigenvalues(nn.Module):  # torch.linalg.eig has no ONNX translation
        def forward(self, input_ids, attention_mask):
            return torch.linalg.eig(input_ids[0, :4].float().reshape(2, 2))[0].real

    with pytest.raises(RuntimeError, match="LogitsOnly"):
        eff.export_onnx(Eigenvalues(), {"input_ids": torch.ones(2, 4, dtype=torch.long),
                                        "attention_mask": torch.ones(2, 4, dtype=torch.long)}, tmp_path / "x.onnx")


# ------------------------------------------------------------------------------ pruning


def test_magnitude_prune_zeroes_the_smallest_encoder_weights():
    model = tiny_classifier()
    head = model.head.weight.clone()
    embeddings = model.encoder.embeddings.word_embeddings.weight.clone()
    threshold_model = copy.deepcopy(model)
    eff.magnitude_prune(model, 0.5)
    assert eff.sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert torch.equal(model.head.weight, head)
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, embeddings)
    kept = torch.cat([m.weight.flatten() for _, m in eff._encoder_linears(model)])
    original = torch.cat([m.weight.flatten() for _, m in eff._encoder_linears(threshold_model)])
    assert kept[kept != 0].abs().min() >= original[kept == 0].abs().max()  # global: smallest went first
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        eff.magnitude_prune(model, 1.0)


def test_head_importance_is_the_gradient_of_a_head_gate():
    model = tiny_classifier()
    batch = classifier_batch()
    scores = eff.head_importance(model, [batch])
    assert scores.shape == (2, 4)
    # reference: gates xi_h (ones) on each head's slice of the output projection's input
    gates = [torch.ones(4, requires_grad=True) for _ in range(2)]
    hooks = []
    for layer, gate in zip(model.encoder.encoder.layer, gates, strict=True):
        def pre(module, args, gate=gate):
            x = args[0]
            return (x * gate.repeat_interleave(x.shape[-1] // 4),)
        hooks.append(layer.attention.output.dense.register_forward_pre_hook(pre))
    loss = model(**batch).loss
    loss.backward()
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(scores, torch.stack([g.grad.abs() for g in gates]), rtol=1e-4, atol=1e-7)


def test_prune_heads_equals_zeroing_their_output_columns():
    model = tiny_classifier()
    batch = classifier_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.encoder.encoder.layer[0].attention.output.dense.weight[:, 8:16] = 0  # head 1 of 4 (8 wide)
        zeroed.encoder.encoder.layer[1].attention.output.dense.weight[:, 0:8] = 0   # head 0
    pruned = eff.prune_heads(copy.deepcopy(model), {0: [1], 1: [0]})
    assert [layer.attention.self.num_attention_heads for layer in pruned.encoder.encoder.layer] == [3, 3]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(pruned(**inputs).logits, zeroed(**inputs).logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one head"):
        eff.prune_heads(copy.deepcopy(model), {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="layers 0..1"):
        eff.prune_heads(copy.deepcopy(model), {5: [0]})


# ------------------------------------------------------------------------------ distillation


def test_student_keeps_the_chosen_teacher_layers():
    teacher = tiny_classifier(layers=4)
    student = eff.student_from_teacher(teacher, [0, 2])
    assert len(student.encoder.encoder.layer) == 2 == student.encoder.config.num_hidden_layers
    for s, t in zip(student.encoder.encoder.layer, [teacher.encoder.encoder.layer[i] for i in (0, 2)], strict=True):
        for a, b in zip(s.parameters(), t.parameters(), strict=True):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert len(teacher.encoder.encoder.layer) == 4
    with pytest.raises(ValueError, match="layers 0..3"):
        eff.student_from_teacher(teacher, [4])


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    T = 3.0
    p_t = F.softmax(t / T, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean()
    torch.testing.assert_close(eff.distillation_loss(s, t, temperature=T), T**2 * kl)
    torch.testing.assert_close(eff.distillation_loss(s, t, y, T, alpha=0.0), F.cross_entropy(s, y))
    torch.testing.assert_close(eff.distillation_loss(s, t, y, T, alpha=0.3), 0.3 * T**2 * kl + 0.7 * F.cross_entropy(s, y))
    assert eff.distillation_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        eff.distillation_loss(s, t[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        eff.distillation_loss(s, t, temperature=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        eff.distillation_loss(s, t, y, alpha=1.5)


def test_distiller_trains_the_student_towards_the_teacher():
    teacher = tiny_classifier(layers=4)
    with torch.no_grad():
        teacher.head.weight.mul_(30)  # a confident teacher, so that there is something to learn
    student = eff.student_from_teacher(teacher, [0, 2])
    with torch.no_grad():
        student.head.reset_parameters()
    batch = classifier_batch(rows=8)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        target = teacher(**inputs).logits
    data = [{**batch, "teacher_logits": target}]

    def gap():
        with torch.no_grad():
            return eff.distillation_loss(student(**inputs).logits, target).item()

    before = gap()
    Trainer(eff.Distiller(student, alpha=1.0), data, TrainConfig(max_steps=30, lr=3e-3, progress=False)).train()
    assert gap() < 0.5 * before
    with pytest.raises(KeyError, match="teacher_logits"):
        eff.Distiller(student)(**inputs)


# ------------------------------------------------------------------------------ generation


def test_generation_speed_and_the_cache_do_not_change_the_answer():
    tokenizer = word_chat_tokenizer("one two three four five".split())
    model = tiny_llama(tokenizer).eval()
    prompt = tokenizer("one two three")["input_ids"]
    on = eff.generation_speed(model, prompt, [1, 3], new_tokens=5)
    off = eff.generation_speed(model, prompt, [1], new_tokens=5, use_cache=False)
    assert len({*on["new tokens"], *off["new tokens"]}) == 1
    assert all(len(t) == 5 for t in on["new tokens"])
    assert (on["tokens per second"] > 0).all()
    with pytest.raises(ValueError, match="new_tokens >= 1"):
        eff.generation_speed(model, prompt, [1], new_tokens=0)
    with torch.no_grad():
        cache = model(torch.tensor([prompt]), use_cache=True).cache
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert eff.cache_bytes(cache) == per_token * len(prompt)


# ------------------------------------------------------------------------------ the shipped record

RECORD_SHA256 = "6b16e0bc027a9e02874684e0d19bbdb3c061fe465c6bcede5129042ff412a40a"


def test_the_full_profile_record_holds_the_notebooks_checks():
    rows, _ = read_record("efficiency", RECORD_SHA256)
    deploy = record_table(rows, "deployment")
    assert deploy.loc["PyTorch float32", "accuracy %"] >= 97  # notebook 04's fine-tuned classifier, 445 articles
    int8 = deploy.loc["ONNX int8"]
    assert int8["x smaller"] >= 3 and int8["x faster"] >= 1.3 and int8["accuracy change"] >= -2.5
    student, both = deploy.loc["distilled 3 layers"], deploy.loc["distilled 3 layers, ONNX int8"]
    assert student["x faster"] >= 1.5 and student["accuracy change"] >= -2
    assert both["x faster"] >= 2.5 and both["x smaller"] >= 3
    assert abs(deploy.loc["magnitude-pruned 50%", "x smaller"] - 1) < 0.01
    training = record_table(rows, "training")
    base = training.loc["float32, batch 16"]
    assert training.loc["grad. accumulation 4 x 4", "activations MiB"] / base["activations MiB"] < 0.35
    assert training.loc["activation checkpointing", "activations MiB"] / base["activations MiB"] < 0.5
    assert abs(training.loc["grad. accumulation 4 x 4", "final loss"] - base["final loss"]) < 1e-4
    generation = rows[rows["table"] == "generation"].pivot(index="row", columns="column", values="value")
    assert generation.loc["batch 64, cache on", "tokens per second"] > 2 * generation.loc["batch 1, cache on", "tokens per second"]
    assert generation.loc["batch 1, cache on", "tokens per second"] > generation.loc["batch 1, cache off", "tokens per second"]
