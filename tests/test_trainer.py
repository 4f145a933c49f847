"""Tests for `llm_tutorial.trainer`: the one training loop of the course."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from llm_tutorial.trainer import (
    TrainConfig,
    Trainer,
    compute_loss,
    eval_mode,
    evaluate,
    load_checkpoint,
    lr_lambda,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
    train,
)

# ---------------------------------------------------------------------------- helpers


class Regression(nn.Module):
    """A linear model whose forward takes `(x, y)` and returns the MSE loss."""

    def __init__(self, n_in: int = 4, n_out: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self.linear(x), y)


def regression_data(n_batches: int = 8, batch_size: int = 8, seed: int = 0) -> list:
    """Batches `(x, y)` with `y = x @ w + 0.5`: learnable exactly by `Regression`."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(batch_size, 4, generator=g)
        batches.append((x, x @ w + 0.5))
    return batches


def tiny_bert(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertForMaskedLM(config)


def bert_batches(n_batches: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Copy task: predict each (visible) token. Learnable through the tied embeddings."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(5, 50, (4, 12), generator=g)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    return batches


def quiet(**kwargs) -> TrainConfig:
    kwargs.setdefault("progress", False)
    return TrainConfig(**kwargs)


# ------------------------------------------------------------------------- learning


def test_loss_decreases_on_regression():
    torch.manual_seed(0)
    model = Regression()
    history = train(model, regression_data(), quiet(max_steps=60, lr=5e-2, log_every=10))
    assert history["train_loss"].iloc[-1] < 0.1 * history["train_loss"].iloc[0]
    assert model.training, "the trainer leaves the model in train mode"


def test_hf_model_trains_and_evaluates():
    model = tiny_bert()
    data = bert_batches()
    before = evaluate(model, data)
    history = train(
        model, data, quiet(max_steps=30, lr=1e-2, warmup_steps=3, log_every=10), eval_data=data
    )
    after = evaluate(model, data)
    assert after < before - 0.5
    assert history["eval_loss"].iloc[-1] == pytest.approx(after, rel=1e-5)


def test_training_is_deterministic_given_a_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = Regression()
        history = train(model, regression_data(), quiet(max_steps=12, lr=1e-2, log_every=4))
        runs.append((history["train_loss"].tolist(), model.linear.weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_lr_lambda_shape(schedule):
    f = lambda step: lr_lambda(step, max_steps=100, warmup_steps=10, schedule=schedule)  # noqa: E731
    assert f(0) < 0.1
    warmup = [f(s) for s in range(11)]
    assert warmup == sorted(warmup), "warm-up increases"
    assert f(10) == pytest.approx(1.0)
    values = [f(s) for s in range(0, 120)]
    assert all(0.0 <= v <= 1.0 for v in values)
    if schedule == "constant":
        assert f(50) == f(99) == 1.0
    else:
        assert f(100) == pytest.approx(0.0, abs=1e-12)
        assert f(119) == pytest.approx(0.0, abs=1e-12)
        decay = [f(s) for s in range(10, 101)]
        assert decay == sorted(decay, reverse=True), "decays monotonically after warm-up"
        assert 0 < f(99) < 0.05, "the last optimizer step still has a small lr"
    if schedule == "cosine":
        assert f(55) == pytest.approx(0.5)
    if schedule == "linear":
        assert f(55) == pytest.approx(0.5)


def test_lr_lambda_without_warmup_starts_at_one():
    assert lr_lambda(0, max_steps=10, warmup_steps=0, schedule="linear") == 1.0


def test_scheduler_follows_config_and_history_records_lr():
    config = quiet(max_steps=20, lr=1e-2, warmup_steps=0.25, log_every=1)
    assert config.num_warmup_steps == 5
    model = Regression()
    scheduler = make_scheduler(make_optimizer(model, config), config)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2 / 6)
    history = train(Regression(), regression_data(), config)
    expected = [
        1e-2 * lr_lambda(s, max_steps=20, warmup_steps=5, schedule="linear") for s in range(20)
    ]
    assert history["lr"].tolist() == pytest.approx(expected)


# -------------------------------------------------------------- accumulation, clipping


def test_grad_accumulation_matches_one_big_batch():
    ((x, y),) = regression_data(n_batches=1, batch_size=8)
    torch.manual_seed(0)
    big = Regression()
    small = Regression()
    small.load_state_dict(big.state_dict())

    common = dict(max_steps=1, lr=1e-1, warmup_steps=0, max_grad_norm=None, weight_decay=0.1)
    train(big, [(x, y)], quiet(**common))
    micro = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    train(small, micro, quiet(grad_accum_steps=4, **common))

    for p_big, p_small in zip(big.parameters(), small.parameters(), strict=True):
        assert torch.allclose(p_big, p_small, atol=1e-6)


def test_grad_accumulation_consumes_micro_batches_and_counts_tokens():
    data = regression_data(n_batches=3, batch_size=8)
    trainer = Trainer(Regression(), data, quiet(max_steps=5, grad_accum_steps=2, log_every=1))
    history = trainer.train()
    # 5 steps x 2 micro-batches x (8 x 4) first-tensor elements.
    assert history["tokens"].tolist() == [64 * s for s in range(1, 6)]
    assert trainer.tokens_per_second > 0 and trainer.steps_per_second > 0


def test_clipping_bounds_the_gradient_norm():
    data = [(x * 100, y * 100) for x, y in regression_data(n_batches=2)]  # huge gradients
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    for max_norm in (0.5, None):
        torch.manual_seed(0)
        trainer = Trainer(Regression(), data, quiet(max_steps=3, max_grad_norm=max_norm))
        trainer.optimizer.register_step_pre_hook(record)
        trainer.train()
    clipped, unclipped = norms[:3], norms[3:]
    assert all(n <= 0.5 + 1e-4 for n in clipped)
    assert all(n > 10 for n in unclipped)


def test_weight_decay_groups_exclude_biases_and_layernorm():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model[3].weight.requires_grad_(False)  # frozen: not in the optimizer at all
    optimizer = make_optimizer(model, quiet(max_steps=1, weight_decay=0.1))
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert groups[0.1] == {id(model[0].weight), id(model[1].weight)}
    assert groups[0.0] == {
        id(model[1].bias),
        id(model[2].weight),
        id(model[2].bias),
        id(model[3].bias),
    }


def test_the_fused_update_is_adamw_itself():
    # the trainer's optimizer is PyTorch's fused kernel on the CPU; the update must be the
    # per-tensor AdamW's, groups (decay / no decay) included, to float rounding
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(64, 3))
    config = quiet(max_steps=1, lr=1e-2, weight_decay=0.1)
    fused = make_optimizer(model, config)
    assert fused.defaults["fused"]
    twin = copy.deepcopy(model)
    plain = torch.optim.AdamW([{"params": [twin[0].weight, twin[2].weight], "weight_decay": 0.1},
                               {"params": [twin[2].bias], "weight_decay": 0.0}], lr=1e-2,
                              betas=config.betas, foreach=False)
    x, y = torch.randint(0, 50, (8, 4)), torch.randint(0, 3, (8,))
    for _ in range(20):
        for net, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lr_by_prefix_gives_the_named_parameters_their_own_rate_under_one_schedule():
    class BodyHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.mse_loss(self.head(self.body(x)), y)

    model = BodyHead()
    config = quiet(max_steps=4, lr=1e-4, lr_by_prefix={"head.": 3e-3, "head.bias": 1e-2}, warmup_steps=0,
                   log_every=1)
    optimizer = make_optimizer(model, config)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rates == {id(model.body.weight): 1e-4, id(model.body.bias): 1e-4,
                     id(model.head.weight): 3e-3, id(model.head.bias): 1e-2}  # longest prefix wins
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model.head.weight)] == config.weight_decay and decays[id(model.head.bias)] == 0.0
    # the schedule scales every group alike; the history logs the base rate
    data = [(torch.randn(3, 4), torch.randn(3, 2)) for _ in range(4)]
    trainer = Trainer(model, data, config)
    history = trainer.train()
    assert history["lr"].iloc[0] == pytest.approx(1e-4)
    ratios = {round(g["lr"] / g["initial_lr"], 9) for g in trainer.optimizer.param_groups}
    assert len(ratios) == 1


# --------------------------------------------------------------------- history, eval


def test_history_columns_and_rows():
    history = train(Regression(), regression_data(), quiet(max_steps=25, log_every=10))
    assert isinstance(history, pd.DataFrame)
    assert list(history.columns) == ["step", "train_loss", "lr", "eval_loss", "tokens", "elapsed_s"]
    assert history["step"].tolist() == [10, 20, 25]
    assert history["eval_loss"].isna().all()
    assert history["elapsed_s"].is_monotonic_increasing


def test_eval_loss_at_eval_points_and_eval_fn_metrics():
    data = regression_data()
    calls = []

    def eval_fn(model):
        calls.append((model.training, torch.is_grad_enabled()))
        return {"weight_norm": model.linear.weight.norm().item()}

    trainer = Trainer(
        Regression(),
        data,
        quiet(max_steps=20, eval_every=7, log_every=10),
        eval_data=data[:2],
        eval_fn=eval_fn,
    )
    history = trainer.train()
    assert history["step"].tolist() == [7, 10, 14, 20]
    evaluated = history["eval_loss"].notna().tolist()
    assert evaluated == [True, False, True, True]
    assert history["weight_norm"].notna().tolist() == evaluated
    assert calls == [(False, False)] * 3, "eval_fn runs in eval mode without gradients"
    assert trainer.model.training
    # Re-running after the end does nothing.
    assert len(trainer.train()) == 4


def test_evaluate_weights_batches_by_scored_labels_and_restores_mode():
    class MeanLabel(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, labels):
            mask = labels != -100
            return labels[mask].float().mean() + self.p

    data = [
        {"labels": torch.tensor([1, 1, 1, 1])},
        {"labels": torch.tensor([3, -100, -100, -100])},
    ]
    model = MeanLabel().train()
    assert evaluate(model, data) == pytest.approx(7 / 5)  # not the naive (1 + 3) / 2
    assert evaluate(model, data, max_batches=1) == pytest.approx(1.0)
    assert model.training
    model.eval()
    evaluate(model, data)
    assert not model.training


def test_eval_mode_turns_dropout_off_and_restores_every_module_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.5)))
    model.train()
    model[2].eval()  # a frozen part the caller keeps in eval mode
    x = torch.ones(2, 4)
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(m.training for m in model.modules())
        assert torch.equal(model(x), model(x))  # no dropout
    assert model.training and model[0].training and model[1].training
    assert not model[2].training and not model[2][0].training  # model.train(True) would flip it


def test_eval_mode_restores_on_error():
    model = nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training


def test_evaluate_keeps_a_frozen_submodule_in_eval_mode():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Dropout(0.5)
            self.head = nn.Linear(1, 1)

        def forward(self, x, y):
            return nn.functional.mse_loss(self.head(self.encoder(x)), y)

    model = Frozen().train()
    model.encoder.eval()
    evaluate(model, [(torch.ones(3, 1), torch.zeros(3, 1))])
    assert model.training and model.head.training and not model.encoder.training


def test_bf16_autocast_on_cpu():
    seen = []

    class Probe(Regression):
        def forward(self, x, y):
            out = self.linear(x)
            seen.append(out.dtype)
            return nn.functional.mse_loss(out.float(), y)

    history = train(Probe(), regression_data(), quiet(max_steps=3, mixed_precision="bf16"))
    assert seen == [torch.bfloat16] * 3
    assert math.isfinite(history["train_loss"].iloc[-1])
    trainer = Trainer(Regression(), regression_data(), quiet(max_steps=1))
    assert trainer.mixed_precision == "no", "auto means full precision on the CPU"


def test_train_data_is_cycled():
    seen = []

    class Counting(Regression):
        def forward(self, x, y):
            seen.append(id(x))
            return super().forward(x, y)

    data = regression_data(n_batches=3)
    train(Counting(), data, quiet(max_steps=10))
    assert len(seen) == 10
    assert seen == [id(x) for x, _ in data] * 3 + [id(data[0][0])]


def test_progress_bar_runs(capsys):
    trainer = Trainer(Regression(), regression_data(), TrainConfig(max_steps=3, desc="unit"))
    trainer.train()
    assert "unit" in capsys.readouterr().err


def test_dict_batches_move_and_count_input_ids():
    data = bert_batches(n_batches=2)
    trainer = Trainer(tiny_bert(), data, quiet(max_steps=3, log_every=1), device="cpu")
    assert trainer.train()["tokens"].tolist() == [48, 96, 144]


# ------------------------------------------------------------------------ checkpoints


def test_checkpoint_roundtrip_with_tied_weights(tmp_path):
    model = tiny_bert(seed=0)
    train(model, bert_batches(), quiet(max_steps=3, lr=1e-2))
    path = save_checkpoint(
        model, tmp_path / "sub" / "dir" / "bert.safetensors", metadata={"note": "hello"}
    )
    assert path.is_file()

    other = tiny_bert(seed=1)
    metadata = load_checkpoint(other, path)
    assert metadata == {"note": "hello"}
    assert other.cls.predictions.decoder.weight is other.bert.embeddings.word_embeddings.weight
    batch = bert_batches(n_batches=1)[0]
    model.eval()
    other.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, other(**batch).logits)


def test_checkpoint_without_metadata(tmp_path):
    model = Regression()
    path = save_checkpoint(model, tmp_path / "reg.safetensors")
    other = Regression()
    assert load_checkpoint(other, str(path)) == {}
    assert torch.equal(model.linear.weight, other.linear.weight)


def test_shape_and_key_mismatches_raise_value_error(tmp_path):
    saved = Regression(n_out=3)
    path = save_checkpoint(saved, tmp_path / "reg3.safetensors")
    with pytest.raises(ValueError, match=r"linear\.weight"):
        load_checkpoint(Regression(n_out=1), path)

    class Bigger(Regression):
        def __init__(self):
            super().__init__(n_out=3)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"missing keys: extra\.bias, extra\.weight"):
        load_checkpoint(Bigger(), path)
    bigger = Bigger()
    load_checkpoint(bigger, path, strict=False)
    assert torch.equal(bigger.linear.weight, saved.linear.weight)


# --------------------------------------------------------------------------- early stopping


def scripted_metric(values):
    """An eval_fn returning the given values in turn, counting how often it was called."""
    calls = []

    def eval_fn(model):
        calls.append(model.linear.weight.detach().clone())
        return {"score": values[len(calls) - 1]}

    return eval_fn, calls


def test_early_stopping_stops_and_restores_the_best_weights():
    torch.manual_seed(0)
    model = Regression()
    eval_fn, calls = scripted_metric([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])
    config = quiet(max_steps=12, lr=1e-2, eval_every=2, early_stopping_patience=2,
                   early_stopping_metric="score", early_stopping_mode="max")
    trainer = Trainer(model, regression_data(), config, eval_fn=eval_fn)
    history = trainer.train()
    # evaluations at steps 2, 4, 6, 8: best at step 4, then two worse ones -> stop at step 8
    assert trainer.stopped_early and trainer.step == 8 and len(calls) == 4
    assert trainer.best_step == 4 and trainer.best_metric == 0.9
    assert torch.equal(model.linear.weight, calls[1]), "weights of the best evaluation restored"
    assert history["step"].iloc[-1] == 8
    assert trainer.train() is not None and trainer.step == 8, "a stopped run stays stopped"


def test_early_stopping_min_mode_without_stopping_restores_best_at_the_end():
    torch.manual_seed(0)
    model = Regression()
    eval_fn, calls = scripted_metric([3.0, 1.0, 2.0])
    config = quiet(max_steps=6, lr=1e-2, eval_every=2, early_stopping_patience=5,
                   early_stopping_metric="score")
    trainer = Trainer(model, regression_data(), config, eval_fn=eval_fn)
    trainer.train()
    assert not trainer.stopped_early and trainer.step == 6 and trainer.best_step == 4
    assert torch.equal(model.linear.weight, calls[1])


# --------------------------------------------------------------------- on_optimizer_step


@pytest.mark.parametrize("accum", [1, 2])
def test_on_optimizer_step_runs_after_each_step_before_zero_grad(accum):
    seen = []

    class Snapshot(Regression):
        def forward(self, x, y):
            self.before_step = self.linear.weight.detach().clone()
            return super().forward(x, y)

    def hook(model, step):
        assert all(p.grad is not None for p in model.parameters()), "gradients still there"
        assert not torch.equal(model.linear.weight, model.before_step), "after optimizer.step"
        seen.append(step)

    trainer = Trainer(Snapshot(), regression_data(), quiet(max_steps=5, grad_accum_steps=accum),
                      on_optimizer_step=hook)
    trainer.train()
    assert seen == [1, 2, 3, 4, 5]
    assert all(p.grad is None for p in trainer.model.parameters()), "cleared after the hook"
    trainer.train()
    assert seen == [1, 2, 3, 4, 5], "nothing more once max_steps is reached"


# ------------------------------------------------------------------ mistakes that raise


def test_compute_loss_takes_the_loss_from_a_dict():
    loss = compute_loss(lambda **kw: {"loss": kw["x"].sum()}, {"x": torch.ones(2)})
    assert loss.item() == 2.0


def _garbage_checkpoint(tmp):
    path = tmp / "garbage.safetensors"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    return path


def _truncated_checkpoint(tmp):
    good = save_checkpoint(nn.Linear(64, 64), tmp / "good.safetensors")
    path = tmp / "truncated.safetensors"
    path.write_bytes(good.read_bytes()[:-100])
    return path


def _early_stopping_on(metric):
    config = quiet(max_steps=4, eval_every=2, early_stopping_patience=1,
                   early_stopping_metric=metric)
    return Trainer(Regression(), regression_data(), config, eval_fn=lambda m: {"f1": 1.0})


# (call(tmp_path), error, match): each guard names the mistake and the fix
BAD_CALLS = [
    # settings that would never train, accumulate, log or evaluate, or warm up past the end
    (lambda tmp: TrainConfig(max_steps=0), ValueError, "max_steps"),
    (lambda tmp: TrainConfig(max_steps=10, grad_accum_steps=0), ValueError, "grad_accum_steps"),
    (lambda tmp: TrainConfig(max_steps=10, eval_every=0), ValueError, "eval_every"),
    (lambda tmp: TrainConfig(max_steps=10, log_every=0), ValueError, "log_every"),
    (lambda tmp: TrainConfig(max_steps=10, warmup_steps=1.5), ValueError, "fraction"),
    (lambda tmp: TrainConfig(max_steps=10, warmup_steps=11), ValueError, "max_steps=10"),
    (lambda tmp: TrainConfig(max_steps=10, early_stopping_patience=2), ValueError,
     "periodic evaluation: set eval_every"),
    # unknown choices name the known ones
    (lambda tmp: TrainConfig(max_steps=10, schedule="step"), ValueError, "'linear', 'cosine'"),
    (lambda tmp: TrainConfig(max_steps=10, mixed_precision="fp16"), ValueError, "'bf16'"),
    (lambda tmp: TrainConfig(max_steps=10, early_stopping_mode="up"), ValueError, "'min', 'max'"),
    (lambda tmp: lr_lambda(0, max_steps=10, warmup_steps=0, schedule="step"), ValueError,
     "unknown schedule 'step'"),
    # the optimizer would train nothing, or not what lr_by_prefix says
    (lambda tmp: make_optimizer(nn.Sequential(nn.Linear(4, 2)),
                                quiet(max_steps=1, lr_by_prefix={"classifier.": 1e-3})),
     ValueError, r"\['classifier.'\] match no trainable parameter.*'0.weight'"),
    (lambda tmp: make_optimizer(nn.Linear(2, 2).requires_grad_(False), quiet(max_steps=1)),
     ValueError, "requires_grad"),
    # a forward that returns no scalar loss
    (lambda tmp: compute_loss(nn.Linear(4, 1), (torch.randn(2, 4),)), TypeError,
     "must return a scalar loss"),  # logits, not a loss
    (lambda tmp: compute_loss(lambda x: (x, x), (torch.randn(2, 4),)), TypeError, "must return"),
    (lambda tmp: compute_loss(tiny_bert(), {"input_ids": torch.randint(0, 50, (2, 5))}),
     TypeError, "labels"),  # HF model called without labels
    (lambda tmp: compute_loss(nn.Identity(), torch.ones(3)), TypeError, "scalar"),
    # data the trainer cannot iterate (again)
    (lambda tmp: Trainer(Regression(), iter(regression_data()), quiet(max_steps=1)), TypeError,
     "train_data is a one-shot iterator.*list"),
    (lambda tmp: Trainer(Regression(), regression_data(), quiet(max_steps=1),
                         eval_data=(b for b in regression_data())), TypeError,
     "eval_data is a one-shot iterator"),
    (lambda tmp: Trainer(Regression(), [], quiet(max_steps=1)).train(), ValueError, "no batches"),
    (lambda tmp: evaluate(Regression(), []), ValueError, "evaluation data yielded no batches"),
    # eval_fn results the history cannot hold, early stopping on a metric nobody computes
    (lambda tmp: Trainer(Regression(), regression_data(), quiet(max_steps=1),
                         eval_fn=lambda m: 0.5).train(), TypeError, "must return a dict"),
    (lambda tmp: Trainer(Regression(), regression_data(), quiet(max_steps=1),
                         eval_fn=lambda m: {"eval_loss": 0.5}).train(), ValueError,
     "'eval_loss', which clashes with a history column"),
    (lambda tmp: _early_stopping_on("accuracy").train(), ValueError,
     r"'accuracy' is not among.*'f1'"),
    # checkpoints that are missing or unreadable
    (lambda tmp: load_checkpoint(Regression(), tmp / "nope.safetensors"), FileNotFoundError,
     "nope.safetensors"),
    (lambda tmp: load_checkpoint(Regression(), _garbage_checkpoint(tmp)), ValueError,
     "not a valid safetensors checkpoint"),
    (lambda tmp: load_checkpoint(nn.Linear(64, 64), _truncated_checkpoint(tmp)), ValueError,
     "save_checkpoint"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_mistakes_raise_a_message_that_names_the_fix(call, error, match, tmp_path):
    with pytest.raises(error, match=match):
        call(tmp_path)
