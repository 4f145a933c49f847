"""Tests for `llm_tutorial.peft_methods`: LoRA, adapters, `peft`'s methods and the comparison.

Every model here is a tiny random one built from a config; no pretrained asset is loaded.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
)

from llm_tutorial import finetuning as ft
from llm_tutorial import peft_methods as pm

# ---------------------------------------------------------------------------- fixtures

HIDDEN, LAYERS, VOCAB = 32, 2, 100


def bert_config() -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(bert_config(), add_pooling_layer=False).eval()


def bert_inputs(n: int = 3, seq: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0  # one padded example
    return {"input_ids": torch.randint(5, VOCAB, (n, seq), generator=g), "attention_mask": mask}


@torch.no_grad()
def hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).last_hidden_state


def randomise_lora_b(model: nn.Module, seed: int = 1) -> None:
    """What training does to LoRA: B leaves zero, so the adapted model differs from the base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in pm.lora_modules(model).values():
            module.lora_B.copy_(0.1 * torch.randn(module.lora_B.shape, generator=g))


def lora_bert(r: int = 4, alpha: float = 8, targets=("query", "value")) -> BertModel:
    model = pm.freeze(tiny_bert())
    pm.inject_lora(model, list(targets), r=r, alpha=alpha)
    return model


# ---------------------------------------------------------------------------- LoRALinear


def test_lora_linear_starts_as_the_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    lora = pm.LoRALinear(base, r=2, alpha=4)
    x = torch.randn(3, 6)
    assert torch.equal(lora(x), base(x))
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert lora.lora_A.requires_grad and lora.lora_B.requires_grad
    assert lora.lora_A.shape == (2, 6) and lora.lora_B.shape == (5, 2)
    assert lora.scaling == 2.0
    assert torch.count_nonzero(lora.lora_A) > 0 and torch.count_nonzero(lora.lora_B) == 0


def test_lora_linear_computes_w_plus_scaled_ba():
    torch.manual_seed(0)
    lora = pm.LoRALinear(nn.Linear(6, 5), r=3, alpha=1.5)
    with torch.no_grad():
        lora.lora_B.normal_()
    delta = lora.delta_weight()
    assert torch.allclose(delta, 0.5 * lora.lora_B @ lora.lora_A)
    x = torch.randn(4, 6)
    expected = F.linear(x, lora.base.weight + delta, lora.base.bias)
    assert torch.allclose(lora(x), expected, atol=1e-6)


def test_merged_is_a_plain_frozen_linear_with_the_same_outputs():
    torch.manual_seed(0)
    for bias in (True, False):
        lora = pm.LoRALinear(nn.Linear(6, 5, bias=bias), r=2, alpha=4)
        with torch.no_grad():
            lora.lora_B.normal_()
        merged = lora.merged()
        assert type(merged) is nn.Linear
        assert (merged.bias is None) == (not bias)
        assert not any(p.requires_grad for p in merged.parameters())
        x = torch.randn(4, 6)
        assert torch.allclose(merged(x), lora(x), atol=1e-6)


# ---------------------------------------------------------------------------- find_modules


def test_find_modules_list_matches_name_suffixes():
    names = pm.find_modules(tiny_bert(), ["query", "value"])
    assert len(names) == 2 * LAYERS
    assert "encoder.layer.0.attention.self.query" in names
    assert all(n.endswith((".query", ".value")) for n in names)


def test_output_dense_matches_attention_and_feed_forward_outputs():
    names = pm.find_modules(tiny_bert(), ["output.dense"])
    assert names == [f"encoder.layer.{i}.{part}output.dense"
                     for i in range(LAYERS) for part in ("attention.", "")]


def test_find_modules_full_name_and_module_types():
    model = tiny_bert()
    full = "encoder.layer.1.attention.self.key"
    assert pm.find_modules(model, [full]) == [full]
    norms = pm.find_modules(model, ["LayerNorm"], module_types=(nn.LayerNorm,))
    assert len(norms) == 1 + 2 * LAYERS


def test_find_modules_regex_must_match_the_whole_name():
    model = tiny_bert()
    names = pm.find_modules(model, pm.ADAPTER_TARGETS["pfeiffer"])
    assert names == [f"encoder.layer.{i}.output.dense" for i in range(LAYERS)]
    assert len(pm.find_modules(model, pm.ADAPTER_TARGETS["houlsby"])) == 2 * LAYERS


# ---------------------------------------------------------------------------- inject, merge


def test_inject_lora_keeps_outputs_and_trains_only_a_and_b():
    model = tiny_bert()
    inputs = bert_inputs()
    before = hidden(model, inputs)
    total = pm.parameter_counts(model)["total"]
    pm.freeze(model)
    names = pm.inject_lora(model, ["query", "value"], r=4, alpha=8)
    assert names == pm.find_modules(tiny_bert(), ["query", "value"])
    assert set(pm.lora_modules(model)) == set(names)
    assert isinstance(model.encoder.layer[0].attention.self.query, pm.LoRALinear)
    assert torch.allclose(hidden(model, inputs), before)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    expected = len(names) * 4 * (HIDDEN + HIDDEN)  # r * (in + out) per module
    assert pm.parameter_counts(model) == {"trainable": expected, "total": total + expected}


def test_inject_lora_checks_rank_before_touching_the_model():
    model = tiny_bert()
    with pytest.raises(ValueError, match="rank"):
        pm.inject_lora(model, ["query"], r=0)
    assert not pm.lora_modules(model)
    assert all(p.requires_grad for p in model.parameters())


def test_merge_lora_restores_the_architecture_with_the_same_outputs():
    original_total = pm.parameter_counts(tiny_bert())["total"]
    model = lora_bert()
    randomise_lora_b(model)
    inputs = bert_inputs()
    adapted = hidden(model, inputs)
    assert not torch.allclose(adapted, hidden(tiny_bert(), inputs), atol=1e-3)

    assert pm.merge_lora(model) == 2 * LAYERS
    assert not pm.lora_modules(model)
    query = model.encoder.layer[1].attention.self.query
    assert type(query) is nn.Linear
    assert torch.allclose(hidden(model, inputs), adapted, atol=1e-5)
    assert pm.parameter_counts(model) == {"trainable": 0, "total": original_total}


def test_remove_lora_puts_the_original_layers_back():
    model = tiny_bert()
    inputs = bert_inputs()
    before = hidden(model, inputs)
    query = model.encoder.layer[0].attention.self.query
    pm.inject_lora(model, ["query", "value"], r=2, alpha=4)
    randomise_lora_b(model)
    assert not torch.allclose(hidden(model, inputs), before, atol=1e-3)
    assert pm.remove_lora(model) == 2 * LAYERS
    assert model.encoder.layer[0].attention.self.query is query
    assert torch.equal(hidden(model, inputs), before)
    assert pm.remove_lora(model) == 0  # nothing left to remove


# ---------------------------------------------------------------------------- peft


def test_our_lora_matches_peft_lora():
    base = tiny_bert()
    ours = copy.deepcopy(base)
    pm.inject_lora(ours, ["query", "value"], r=4, alpha=8)
    randomise_lora_b(ours)
    theirs = pm.peft_wrap(copy.deepcopy(base), "lora", r=4, lora_alpha=8,
                          target_modules=["query", "value"]).eval()
    assert pm.copy_lora_into_peft(ours, theirs) == 2 * LAYERS
    inputs = bert_inputs()
    assert torch.allclose(hidden(ours, inputs), hidden(theirs, inputs), atol=1e-5)
    assert not torch.allclose(hidden(base, inputs), hidden(theirs, inputs), atol=1e-3)


@pytest.mark.parametrize(("method", "kwargs"), [
    ("prefix", {"num_virtual_tokens": 4}),
    ("ia3", {}),
    ("adalora", {"total_step": 10}),
])
def test_peft_wrap_methods_run_a_forward_pass(method, kwargs):
    model = pm.peft_wrap(tiny_bert(), method, **kwargs).eval()
    counts = pm.parameter_counts(model)
    assert 0 < counts["trainable"] < counts["total"]
    inputs = bert_inputs()
    assert hidden(model, inputs).shape == (3, 8, HIDDEN)


# ---------------------------------------------------------------------------- adapters


def test_bottleneck_adapter_is_the_identity_at_init():
    torch.manual_seed(0)
    adapter = pm.BottleneckAdapter(8, 3)
    h = torch.randn(2, 5, 8)
    assert torch.equal(adapter(h), h)
    assert sum(p.numel() for p in adapter.parameters()) == 8 * 3 + 3 + 3 * 8 + 8


@pytest.mark.parametrize(("style", "per_layer"), [("houlsby", 2), ("pfeiffer", 1)])
def test_inject_adapters(style, per_layer):
    model = tiny_bert()
    inputs = bert_inputs()
    before = hidden(model, inputs)
    pm.freeze(model)
    names = pm.inject_adapters(model, pm.ADAPTER_TARGETS[style], bottleneck=4)
    assert len(names) == per_layer * LAYERS
    assert all(isinstance(model.get_submodule(n), pm.AdaptedLinear) for n in names)
    assert torch.allclose(hidden(model, inputs), before)
    per_adapter = 2 * HIDDEN * 4 + 4 + HIDDEN
    assert pm.parameter_counts(model)["trainable"] == len(names) * per_adapter


# ---------------------------------------------------------------------------- bookkeeping


def test_count_parameters_counts_shared_tensors_once():
    linear = nn.Linear(4, 3)
    linear.weight.requires_grad_(False)
    shared = nn.Sequential(linear, linear)
    assert pm.parameter_counts(shared) == {"trainable": 3, "total": 15}
    assert pm.parameter_counts(pm.unfreeze(shared)) == {"trainable": 15, "total": 15}
    assert pm.parameter_counts(pm.freeze(shared)) == {"trainable": 0, "total": 15}


def test_trainable_by_location():
    model = ft.SequenceClassifier(tiny_bert(), num_labels=3)
    pm.freeze(model.encoder)
    assert pm.trainable_by_location(model) == {"head": HIDDEN * 3 + 3}
    pm.inject_lora(model.encoder, ["query", "value"], r=2, alpha=4)
    pm.inject_adapters(model.encoder, pm.ADAPTER_TARGETS["pfeiffer"], bottleneck=4)
    model.encoder.encoder.layer[0].output.LayerNorm.requires_grad_(True)
    assert pm.trainable_by_location(model) == {
        "head": HIDDEN * 3 + 3,
        "attention": 2 * LAYERS * 2 * (2 * HIDDEN),
        "feed-forward": LAYERS * (2 * HIDDEN * 4 + 4 + HIDDEN),
        "LayerNorm": 2 * HIDDEN,
    }
    unfrozen = pm.trainable_by_location(pm.unfreeze(tiny_bert()))
    assert sum(unfrozen.values()) == pm.parameter_counts(tiny_bert())["total"]
    assert set(unfrozen) == {"embeddings", "LayerNorm", "attention", "feed-forward"}


def test_training_state_bytes():
    linear = nn.Linear(4, 3)
    linear.weight.requires_grad_(False)
    # frozen: the weight itself (4 bytes each); trainable: weight, grad and two Adam moments
    assert pm.training_state_bytes(linear) == 12 * 4 + 3 * 16
    assert pm.training_state_bytes(pm.freeze(linear)) == 15 * 4
    assert pm.training_state_bytes(linear.to(torch.bfloat16)) == 15 * 2


def test_trainable_state_dict_holds_only_trainable_detached_tensors():
    model = lora_bert()
    state = pm.trainable_state_dict(model)
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(state) == 2 * 2 * LAYERS
    assert all(not t.requires_grad and t.device.type == "cpu" for t in state.values())


def test_forward_latencies_time_each_model_in_turn_in_eval_mode_and_restore_it():
    first, second = tiny_bert().train(), tiny_bert().eval()
    order = []
    for name, model in (("first", first), ("second", second)):
        model.register_forward_pre_hook(lambda module, args, name=name: order.append((name, module.training)))
    seconds = pm.forward_latencies({"first": first, "second": second}, bert_inputs(), repeats=3, warmup=1)
    assert set(seconds) == {"first", "second"} and all(s > 0 for s in seconds.values())
    assert order == [("first", False), ("second", False)] * 4  # warm-up, then one call each per round
    assert first.training and not second.training


# ---------------------------------------------------------------------------- save / load

LORA_CONFIG = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]}


def test_adapter_roundtrip(tmp_path):
    model = lora_bert()
    randomise_lora_b(model)
    path = pm.save_adapter(model, tmp_path / "sub" / "lora.safetensors", LORA_CONFIG)
    assert path.is_file()

    fresh = lora_bert()  # same injection, different A (the rng has moved on)
    inputs = bert_inputs()
    assert not torch.allclose(hidden(fresh, inputs), hidden(model, inputs), atol=1e-3)
    assert pm.load_adapter(fresh, path) == LORA_CONFIG
    assert torch.equal(hidden(fresh, inputs), hidden(model, inputs))


def test_adapter_saved_without_config_loads_with_an_empty_one(tmp_path):
    path = pm.save_adapter(lora_bert(), tmp_path / "c.safetensors")
    assert pm.load_adapter(lora_bert(), path) == {}


# ---------------------------------------------------------------------------- comparison

WORDS = ("the match ended in a draw shares fell on stock market minister announced an "
         "election new phone with faster chip film won award striker scored twice").split()
TEXTS = ["the match ended in a draw", "shares fell on the stock market",
         "the minister announced an election", "a new phone with a faster chip",
         "the film won an award", "the striker scored twice", "a draw in the match",
         "stock market shares fell", "an election announced", "a faster phone chip",
         "an award for the film", "the striker scored"]
LABELS = [0, 1, 2, 1, 2, 0, 0, 1, 2, 1, 2, 0]


@pytest.fixture
def tiny_classifiers(monkeypatch):
    """`ft.load_classifier` replaced by a tiny random BERT classifier and a word tokenizer."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = BertTokenizerFast(vocab=vocab)

    def load_classifier(num_labels, num_layers=None, **_):
        config = bert_config()
        config.num_hidden_layers = num_layers or LAYERS
        encoder = BertModel(config, add_pooling_layer=False)
        return ft.SequenceClassifier(encoder, num_labels, dropout=0.0), tokenizer

    monkeypatch.setattr(ft, "load_classifier", load_classifier)


def test_compare_and_summarise_methods(tiny_classifiers):
    methods = pm.standard_methods(lora_ranks=(2,), bottleneck=4)
    chosen = ["full fine-tuning", "linear probe (head only)", "LoRA r=2",
              "adapters (Houlsby, 4)", "prefix tuning (16)", "IA3", "AdaLoRA (12→8)"]
    results = pm.compare_methods({k: methods[k] for k in chosen}, TEXTS, LABELS, TEXTS[:6],
                                 LABELS[:6], num_labels=3, seeds=(0, 1), max_steps=4,
                                 batch_size=4, max_length=12)
    assert {"method", "seed", "accuracy", "trainable", "total", "trainable %", "seconds",
            "train state MB", "peak GPU MB", "checkpoint MB", "final train loss",
            "where"} <= set(results.columns)
    assert list(zip(results["method"], results["seed"], strict=True)) == [
        (m, s) for m in chosen for s in (0, 1)]
    rows = results.set_index(["method", "seed"])
    assert rows.loc[("full fine-tuning", 0), "trainable %"] == 100
    head = HIDDEN * 3 + 3
    assert rows.loc[("linear probe (head only)", 1), "trainable"] == head
    assert rows.loc[("linear probe (head only)", 0), "where"] == {"head": head}
    lora = (2 * LAYERS) * 2 * (2 * HIDDEN)  # 4 modules, r * (in + out) each
    assert rows.loc[("LoRA r=2", 0), "trainable"] == lora + head
    assert rows.loc[("LoRA r=2", 0), "where"] == {"attention": lora, "head": head}
    assert all(sum(where.values()) == n
               for where, n in zip(results["where"], results["trainable"], strict=True))
    full_mb = rows.loc[("full fine-tuning", 0), "checkpoint MB"]
    assert rows.loc[("LoRA r=2", 0), "checkpoint MB"] < 0.2 * full_mb
    assert results["peak GPU MB"].isna().all()
    assert results["accuracy"].between(0, 1).all()
    assert results["final train loss"].notna().all()

    table = pm.summarise_comparison(results)
    assert list(table.index) == chosen
    assert {"accuracy", "± std", "seeds", "checkpoint % of full"} <= set(table.columns)
    assert (table["seeds"] == 2).all()
    probe = results[results["method"] == "linear probe (head only)"]["accuracy"]
    assert table.loc["linear probe (head only)", "accuracy"] == pytest.approx(probe.mean())
    assert table.loc["linear probe (head only)", "± std"] == pytest.approx(probe.std(ddof=0))
    assert table.loc["full fine-tuning", "checkpoint % of full"] == pytest.approx(100)
    assert table.loc["LoRA r=2", "checkpoint % of full"] < 20


def test_every_method_trains_its_fresh_head_at_the_same_rate(tiny_classifiers, monkeypatch):
    """The head starts random in every method; at the method's own rate (1e-4 for full
    fine-tuning) it would barely move in a short run, and the method would look worse than its
    encoder update is. So the head trains at `HEAD_LR` everywhere, the rest at `method.lr`."""
    real, seen = pm.Trainer, {}

    def spy(model, data, config, **kwargs):
        trainer = real(model, data, config, **kwargs)
        head = {id(p) for p in model.head.parameters()}
        for group in trainer.optimizer.param_groups:
            where = "head" if head & {id(p) for p in group["params"]} else "rest"
            seen.setdefault(config.desc, {}).setdefault(where, set()).add(group["initial_lr"])
        return trainer

    monkeypatch.setattr(pm, "Trainer", spy)
    methods = pm.standard_methods(lora_ranks=(2,), bottleneck=4)
    chosen = {k: methods[k] for k in ("full fine-tuning", "linear probe (head only)", "LoRA r=2", "IA3")}
    pm.compare_methods(chosen, TEXTS, LABELS, TEXTS[:6], LABELS[:6], num_labels=3, seeds=(0,),
                       max_steps=2, batch_size=4, max_length=12)
    assert {name: rates["head"] for name, rates in seen.items()} == {name: {pm.HEAD_LR} for name in chosen}
    assert seen["full fine-tuning"]["rest"] == {1e-4} and seen["LoRA r=2"]["rest"] == {1e-3}
    assert "rest" not in seen["linear probe (head only)"]


def test_load_recorded_comparison_reads_provenance_and_rows(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("# command: python benchmarks/peft_comparison.py --steps 2\n# hardware: a CPU\n"
                    "# date: 2026-12-03\nmethod,seed,accuracy,trainable %,trainable,seconds,train state MB,"
                    "peak GPU MB,checkpoint MB\nLoRA r=8,0,0.5,1.0,10,1.0,2.0,,0.1\nLoRA r=8,1,0.7,1.0,10,"
                    "1.0,2.0,,0.1\n", encoding="utf-8")  # fmt: skip
    rows, provenance = pm.load_recorded_comparison(path)
    assert provenance == {"command": "python benchmarks/peft_comparison.py --steps 2", "hardware": "a CPU",
                          "date": "2026-12-03"}
    assert pm.summarise_comparison(rows).loc["LoRA r=8", "accuracy"] == pytest.approx(0.6)
    path.write_text("method,seed\nx,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="provenance"):
        pm.load_recorded_comparison(path)


# the `full`-profile comparison shipped with the course (benchmarks/peft_comparison.py)
RECORDED_SHA256 = "df09428ba2cfeeacd65c886f428daf84a79d0cf360032e57204965561b2d711b"


def test_the_shipped_full_comparison_is_the_recorded_run_in_docs():
    """The CSV notebook 06 shows beside its smoke run: unchanged (sha256), with provenance, every
    method over 3 seeds, and summarising to the accuracies docs/results/peft.md reports."""
    import hashlib
    import re
    from pathlib import Path

    from llm_tutorial import assets

    path = assets.recorded_results("peft_comparison")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == RECORDED_SHA256
    rows, provenance = pm.load_recorded_comparison()
    assert {"command", "hardware", "date", "commit", "wall s"} <= set(provenance)
    assert provenance["command"].startswith("python benchmarks/peft_comparison.py")
    table = pm.summarise_comparison(rows)
    assert list(table.index) == list(pm.standard_methods())
    assert (table["seeds"] == 3).all()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results" / "peft.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Full profile, recorded"):]
    for method, accuracy in table["accuracy"].items():
        row = re.search(rf"^\| {re.escape(method)} \| \**([0-9.]+)", section, flags=re.M)
        assert row is not None, f"docs/results/peft.md has no row for {method}"
        assert float(row.group(1)) == round(accuracy, 3), method


# ---------------------------------------------------------------------------- mistakes that raise


def saved_lora(directory) -> str:
    """A LoRA r=4 on query and value (`LORA_CONFIG`), saved under `directory`."""
    return pm.save_adapter(lora_bert(), directory / "lora.safetensors", LORA_CONFIG)


def garbage_file(directory):
    path = directory / "garbage.safetensors"
    path.write_bytes(b"not an adapter at all" * 10)
    return path


def peft_lora_r4():
    return pm.peft_wrap(tiny_bert(), "lora", r=4, lora_alpha=8, target_modules=["query", "value"])


# Each mistake a learner makes, the error it raises and what the message must say. Every call
# gets a fresh temporary directory (for the adapter files).
BAD_CALLS = [
    (lambda tmp: pm.LoRALinear(nn.Linear(4, 4), r=0, alpha=4), ValueError,
     "LoRA rank r must be a positive int, got 0"),
    (lambda tmp: pm.LoRALinear(nn.Linear(4, 4), r=-2, alpha=4), ValueError, "got -2"),
    (lambda tmp: pm.LoRALinear(nn.Linear(4, 4), r=2, alpha=0), ValueError,
     "LoRA alpha must be a positive number"),
    (lambda tmp: pm.inject_lora(tiny_bert(), ["query"], r=2, alpha=-1.0), ValueError, "alpha"),
    (lambda tmp: pm.LoRALinear(nn.Linear(4, 4), r=2, alpha=4, dropout=1.0), ValueError,
     r"dropout must be in \[0, 1\), got 1.0"),
    (lambda tmp: pm.LoRALinear(nn.Conv1d(4, 4, 1), r=2, alpha=4), TypeError,
     "LoRALinear wraps an nn.Linear, got Conv1d"),
    (lambda tmp: pm.find_modules(tiny_bert(), ["query", "querry"]), ValueError,
     r"target module 'querry' matches no Linear module of the model. Close matches: \[.*'query'"),
    (lambda tmp: pm.find_modules(tiny_bert(), ["attention"]), ValueError,
     "'encoder.layer.0.attention' has that name but is a BertAttention, not a Linear"),
    (lambda tmp: pm.find_modules(tiny_bert(), "query"), ValueError,
     r"matches no Linear module \(it must match the whole name\)"),
    (lambda tmp: pm.find_modules(tiny_bert(), r".*nothing\.here"), ValueError, "matches no Linear"),
    (lambda tmp: pm.find_modules(tiny_bert(), "(query"), ValueError,
     "not a valid regular expression"),
    (lambda tmp: pm.find_modules(tiny_bert(), []), ValueError, "non-empty list of module names"),
    (lambda tmp: pm.merge_lora(tiny_bert()), ValueError, "no LoRALinear layers to merge"),
    (lambda tmp: pm.peft_wrap(tiny_bert(), "bitfit"), KeyError,
     "unknown peft method 'bitfit'.*'prefix'"),
    (lambda tmp: pm.copy_lora_into_peft(lora_bert(r=2, alpha=4), peft_lora_r4()), ValueError,
     "peft has r=4, scaling=2.0; ours r=2, scaling=2.0"),
    (lambda tmp: pm.copy_lora_into_peft(lora_bert(alpha=4), peft_lora_r4()), ValueError,
     "peft has r=4, scaling=2.0; ours r=4, scaling=1.0. Use the same r and alpha"),
    (lambda tmp: pm.copy_lora_into_peft(lora_bert(targets=("key",)), peft_lora_r4()), KeyError,
     "no LoRA layer for 'encoder.layer.0.attention.self.key'"),
    (lambda tmp: pm.save_adapter(pm.freeze(tiny_bert()), tmp / "a.safetensors"), ValueError,
     "no trainable parameters"),
    (lambda tmp: pm.save_adapter(lora_bert(), tmp / "b.safetensors", {"dtype": torch.float32}),
     TypeError, "JSON"),
    # the adapter of notebook 06: loaded into a LoRA of another rank
    (lambda tmp: pm.load_adapter(lora_bert(r=2, alpha=4), saved_lora(tmp)), ValueError,
     r"adapter shapes do not fit the model \(.*lora_A: file \(4, 32\) vs model \(2, 32\).*'r': 4"),
    (lambda tmp: pm.load_adapter(pm.freeze(tiny_bert()), saved_lora(tmp)), ValueError,
     r"tensors only in the file \['encoder.layer.0.attention.self.query.lora_A'.*"
     r"Inject the adapter the file was trained with first"),
    (lambda tmp: pm.load_adapter(lora_bert(targets=("query", "value", "key")), saved_lora(tmp)),
     ValueError, r"tensors only in the file \[\], trainable parameters only in the model "
     r"\['encoder.layer.0.attention.self.key.lora_A'"),
    (lambda tmp: pm.load_adapter(lora_bert(), garbage_file(tmp)), ValueError,
     "not a valid safetensors adapter"),
    (lambda tmp: pm.load_adapter(lora_bert(), tmp / "missing.safetensors"), FileNotFoundError,
     "missing.safetensors"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_mistakes_raise_a_message_that_names_the_fix(call, error, match, tmp_path):
    with pytest.raises(error, match=match):
        call(tmp_path)
