"""Tests for `llm_tutorial.finetuning`: the classification head, baselines, noise and studies."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel

from llm_tutorial import assets
from llm_tutorial import finetuning as ft
from llm_tutorial.trainer import TrainConfig

# ---------------------------------------------------------------------------- fixtures


def tiny_encoder(seed: int = 0, vocab_size: int = 30522) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(config, add_pooling_layer=False)


def tiny_classifier(seed: int = 0, num_labels: int = 3, **kwargs) -> ft.SequenceClassifier:
    kwargs.setdefault("dropout", 0.0)
    model = ft.SequenceClassifier(tiny_encoder(seed), num_labels=num_labels, **kwargs)
    torch.manual_seed(seed)
    model.head.reset_parameters()
    return model


def toy_batch(n: int = 8, seq: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30000, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::2, seq // 2:] = 0  # every other example is padded
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 3}


@pytest.fixture(scope="module")
def tokenizer():
    try:
        path = assets.asset_path("minilm")
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
    return AutoTokenizer.from_pretrained(path)


TEXTS = ["the match ended in a draw", "shares fell on the stock market",
         "the minister announced an election", "a new phone with a faster chip",
         "the film won an award", "the striker scored twice"]
LABELS = [3, 0, 2, 4, 1, 3]

# ---------------------------------------------------------------------------- pooling and head


def test_cls_pooling_takes_position_zero():
    hidden = torch.randn(2, 4, 3)
    assert torch.equal(ft.pool(hidden, torch.ones(2, 4), "cls"), hidden[:, 0])


def test_mean_pooling_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = ft.pool(hidden, mask, "mean")
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))


def test_classifier_logits_and_loss():
    model = tiny_classifier()
    batch = toy_batch()
    out = model(**batch)
    assert out.logits.shape == (8, 3)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, batch["labels"]))
    assert model(batch["input_ids"]).loss is None


def test_padding_does_not_change_a_mean_pooled_prediction():
    model = tiny_classifier().eval()
    ids = torch.randint(5, 100, (1, 6))
    short = model(ids, torch.ones(1, 6, dtype=torch.long)).logits
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long()
    assert torch.allclose(short, model(padded_ids, mask).logits, atol=1e-5)


def test_fgm_adds_an_adversarial_loss_only_in_training():
    batch = toy_batch()
    clean = tiny_classifier().train()(**batch).loss
    adversarial = tiny_classifier(adversarial_eps=1.0).train()
    loss = adversarial(**batch).loss
    # clean + adversarial loss, and the perturbation (steepest ascent) makes the second larger
    assert loss > 2 * clean
    assert torch.allclose(adversarial.eval()(**batch).loss, clean)
    with torch.no_grad():  # no graph, no perturbation
        assert torch.allclose(adversarial.train()(**batch).loss, clean)


def test_fgm_gradients_reach_the_encoder():
    model = tiny_classifier(adversarial_eps=0.5).train()
    model(**toy_batch()).loss.backward()
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


def test_set_dropout_reaches_every_dropout_layer():
    model = ft.set_dropout(tiny_classifier(), 0.3)
    probabilities = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert probabilities == {0.3}


def test_classifier_learns_a_toy_task_with_the_course_trainer():
    model = tiny_classifier()
    batch = toy_batch(n=12)
    trainer = ft.fine_tune(model, batch, TrainConfig(max_steps=40, lr=3e-3, progress=False,
                                                     eval_every=40), batch_size=12,
                           val_encodings=batch)
    history = trainer.history
    assert history["val_accuracy"].iloc[-1] == 1.0
    assert history["train_loss"].iloc[-1] < 0.5 * history["train_loss"].iloc[0]


def test_val_metrics_fn_reports_loss_and_accuracy():
    model = tiny_classifier()
    batch = toy_batch()
    metrics = ft.val_metrics_fn(batch, prefix="dev")(model)
    logits = model.eval()(**batch).logits
    assert metrics["dev_loss"] == pytest.approx(F.cross_entropy(logits, batch["labels"]).item(),
                                                rel=1e-5)
    assert metrics["dev_accuracy"] == ft.accuracy(logits, batch["labels"])


# ---------------------------------------------------------------------------- data


def test_encode_shapes_and_labels(tokenizer):
    enc = ft.encode(tokenizer, TEXTS, 8, LABELS)
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (6, 8)
    assert enc["labels"].tolist() == LABELS
    assert set(ft.encode(tokenizer, TEXTS, 8)) == {"input_ids", "attention_mask"}


def test_encode_windows_covers_every_token_of_a_long_text(tokenizer):
    long = " ".join(f"word{i}" for i in range(60))  # far more than one window of 16
    words = tokenizer(long, add_special_tokens=False)["input_ids"]
    enc, doc = ft.encode_windows(tokenizer, [TEXTS[0], long], 16, stride=4, labels=[3, 1])
    assert enc["input_ids"].shape[1] == 16 and len(doc) == len(enc["labels"])
    assert doc[0] == 0 and (doc[1:] == 1).all()  # the short text needs one window
    assert enc["labels"].tolist() == [3] + [1] * (len(doc) - 1)
    # the formula in the docstring: ceil((T - s) / (m - 2 - s)) windows
    assert len(doc) - 1 == -(-(len(words) - 4) // (16 - 2 - 4))
    pieces = []
    for row, mask in zip(enc["input_ids"][1:], enc["attention_mask"][1:], strict=True):
        ids = row[mask.bool()].tolist()
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        pieces.append(ids[1:-1])
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert before[-4:] == after[:4]  # consecutive windows overlap by the stride
    stitched = pieces[0] + [t for piece in pieces[1:] for t in piece[4:]]
    assert stitched == words  # nothing lost, nothing repeated beyond the overlap


def test_document_logits_average_each_texts_windows():
    logits = torch.tensor([[1.0, 0.0], [0.0, 4.0], [2.0, 2.0], [5.0, 1.0]])
    doc = torch.tensor([0, 1, 1, 2])
    assert torch.allclose(ft.document_logits(logits, doc),
                          torch.tensor([[1.0, 0.0], [1.0, 3.0], [5.0, 1.0]]))


def test_batches_are_dicts_and_shuffling_is_seeded():
    data = {"input_ids": torch.arange(10).unsqueeze(1), "labels": torch.arange(10)}
    order = [b["labels"].tolist() for b in ft.batches(data, 4)]
    assert order == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    first = [b["labels"].tolist() for b in ft.batches(data, 4, shuffle=True, seed=1)]
    again = [b["labels"].tolist() for b in ft.batches(data, 4, shuffle=True, seed=1)]
    assert first == again and first != order


def test_predict_logits_restores_mode_and_supports_bf16():
    model = tiny_classifier().train()
    batch = toy_batch()
    logits = ft.predict_logits(model, batch, batch_size=3)
    assert model.training and logits.shape == (8, 3) and logits.dtype == torch.float32
    assert torch.allclose(logits, model.eval()(**batch).logits, atol=1e-5)
    bf16 = ft.predict_logits(model, batch, mixed_precision="bf16")
    assert torch.allclose(bf16, logits, atol=0.1)


def test_accuracy_from_logits_or_ids():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert ft.accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    assert ft.accuracy(np.array([0, 1, 1]), [0, 1, 1]) == 1.0


def test_embed_texts_is_deterministic(tokenizer):
    encoder = tiny_encoder().train()
    first = ft.embed_texts(encoder, tokenizer, TEXTS, 12, batch_size=4)
    assert first.shape == (6, 16) and isinstance(first, np.ndarray)
    assert np.allclose(first, ft.embed_texts(encoder, tokenizer, TEXTS, 12))
    assert encoder.training


# ---------------------------------------------------------------------------- baselines


def test_tfidf_and_probe_fit_separable_data():
    texts = ["goal striker match"] * 5 + ["shares market profit"] * 5
    labels = [0] * 5 + [1] * 5
    clf = ft.tfidf_classifier().fit(texts, labels)
    assert clf.predict(["a late goal in the match", "profit warning hits shares"]).tolist() == [0, 1]
    X = np.r_[np.random.default_rng(0).normal(0, 1, (10, 4)) + 3, np.random.default_rng(1).normal(0, 1, (10, 4)) - 3]
    y = [0] * 10 + [1] * 10
    assert ft.accuracy(ft.linear_probe().fit(X, y).predict(X), y) == 1.0


def test_sample_per_class():
    labels = [0, 1, 2] * 10
    chosen = ft.sample_per_class(labels, 4, seed=3)
    assert Counter(labels[i] for i in chosen) == {0: 4, 1: 4, 2: 4}
    assert chosen == sorted(chosen) == ft.sample_per_class(labels, 4, seed=3)
    assert chosen != ft.sample_per_class(labels, 4, seed=4)
    assert ft.sample_per_class(labels, None) == list(range(30))


# ---------------------------------------------------------------------------- noise


def test_random_deletion_keeps_a_subsequence():
    rng = random.Random(0)
    text = "one two three four five six seven eight"
    out = ft.random_deletion(text, 0.5, rng).split()
    words = text.split()
    assert 1 <= len(out) < len(words)
    assert out == [w for w in words if w in out]
    assert ft.random_deletion("alone", 0.99, random.Random(1)) == "alone"


def test_random_swap_permutes_words():
    text = "one two three four five"
    out = ft.random_swap(text, 2, random.Random(0))
    assert sorted(out.split()) == sorted(text.split()) and out != text
    assert ft.random_swap("single", 3, random.Random(0)) == "single"


def test_augment_appends_labelled_noisy_copies():
    texts, labels = ft.augment(TEXTS, LABELS, copies=2, seed=0)
    assert texts[:6] == TEXTS and labels == LABELS * 3
    assert texts != ft.augment(TEXTS, LABELS, copies=2, seed=1)[0]
    assert texts == ft.augment(TEXTS, LABELS, copies=2, seed=0)[0]
    assert ft.augment(TEXTS, LABELS, copies=0) == (TEXTS, LABELS)


def test_add_typos():
    text = "The government announced higher spending on schools and hospitals today"
    assert ft.add_typos(text, 0.0) == text
    noisy = ft.add_typos(text, 1.0, seed=0)
    assert noisy == ft.add_typos(text, 1.0, seed=0) != ft.add_typos(text, 1.0, seed=1)
    changed = sum(a != b for a, b in zip(text.split(), noisy.split(), strict=True))
    assert changed >= 7, noisy  # almost every word of 3+ letters gets a typo
    assert len(ft.add_typos(text, 0.3, seed=0).split()) == len(text.split())
    assert ft.add_typos("an ox 42 co-op", 1.0) == "an ox 42 co-op"  # short or non-alphabetic words


# ---------------------------------------------------------------------------- optimisation


def test_gradient_accumulation_equals_the_large_batch_gradient():
    model = tiny_classifier(dropout=0.1).train()
    batch = toy_batch(n=8)
    batch["attention_mask"][:] = 1  # equal micro-batches of equal length
    gap = ft.accumulation_gap(model, batch, micro_batches=4)
    assert gap["max_abs_grad"] > 0 and gap["relative"] < 1e-5
    assert model.training and all(p.grad is None for p in model.parameters())


def test_accumulation_gap_skips_parameters_without_gradients():
    encoder = tiny_encoder()
    encoder.pooler = torch.nn.Linear(16, 16)  # never used by the classifier
    model = ft.SequenceClassifier(encoder, num_labels=3, dropout=0.0)
    batch = toy_batch(n=4)
    batch["attention_mask"][:] = 1
    assert ft.accumulation_gap(model, batch, micro_batches=2)["relative"] < 1e-5


# ---------------------------------------------------------------------------- the study


def test_summarise_study_mean_and_std_in_setting_order():
    results = pd.DataFrame({"setting": ["b", "b", "a", "a"], "seed": [0, 1, 0, 1],
                            "val_accuracy": [0.5, 0.7, 0.9, 0.9], "gap": [0.5, 0.3, 0.1, 0.1]})
    table = ft.summarise_study(results)
    assert list(table.index) == ["b", "a"]
    assert table.loc["b", "val accuracy"] == pytest.approx(0.6)
    assert table.loc["b", "± std"] == pytest.approx(0.1)
    assert table.loc["a", "± std"] == 0 and table.loc["a", "seeds"] == 2


@pytest.mark.slow
def test_regularisation_study_runs_every_setting_and_seed(tokenizer):
    settings = {"none": ft.RegularisationSetting(),
                "everything": ft.RegularisationSetting(dropout=0.1, weight_decay=0.1,
                                                       early_stopping=True, augment_copies=1,
                                                       adversarial_eps=0.1)}
    results = ft.regularisation_study(settings, TEXTS, LABELS, TEXTS[:3], LABELS[:3], 5,
                                      seeds=(0, 1), max_steps=4, batch_size=4, max_length=12,
                                      num_layers=1, eval_every=2, patience=1)
    assert list(results["setting"]) == ["none", "none", "everything", "everything"]
    assert results["gap"].tolist() == pytest.approx(
        (results["train_accuracy"] - results["val_accuracy"]).tolist())
    assert (results["steps"] <= 4).all() and (results["steps"] >= 2).all()
    assert "val_accuracy" in results["history"].iloc[0]


@pytest.mark.slow
def test_load_classifier_truncates_layers():
    torch.manual_seed(0)
    model, tokenizer = ft.load_classifier(5, num_layers=2, dropout=0.2)
    assert len(model.encoder.encoder.layer) == 2 and model.head.out_features == 5
    assert model.encoder.pooler is None
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    with pytest.raises(ValueError, match=r"num_layers must be in \[1, 6\]"):
        ft.load_classifier(5, num_layers=7)


def head_from_fitted_probe(tokenizer, ys, num_labels):
    """A tiny classifier whose head starts at a probe fitted on its own embeddings of TEXTS * 2:
    (probe, embeddings, the classifier's logits)."""
    model = tiny_classifier(num_labels=num_labels).eval()
    texts = TEXTS * 2
    emb = ft.embed_texts(model.encoder, tokenizer, texts, 12)
    probe = ft.linear_probe(C=10.0).fit(emb, ys)
    ft.head_from_probe(model, probe)
    return probe, emb, ft.predict_logits(model, ft.encode(tokenizer, texts, 12))


def test_head_from_probe_reproduces_the_probe_predictions(tokenizer):
    probe, emb, logits = head_from_fitted_probe(tokenizer, [0, 1, 2, 0, 1, 2] * 2, num_labels=3)
    assert np.allclose(logits.numpy(), probe.decision_function(emb), atol=1e-3)


def test_head_from_probe_works_for_two_classes(tokenizer):
    # scikit-learn's binary logistic regression has one row of weights; the head has two
    probe, emb, logits = head_from_fitted_probe(tokenizer, [0, 1, 1, 0, 1, 0] * 2, num_labels=2)
    probs = torch.softmax(logits.double(), -1).numpy()
    assert np.allclose(probs, probe.predict_proba(emb), atol=1e-4)
    assert (logits.argmax(-1).numpy() == probe.predict(emb)).all()


def test_head_from_probe_ignores_constant_features():
    model = tiny_classifier()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 16))
    X[:, 3] = 0.25  # a constant feature: the scaler's sigma is ~0
    X[:, 5] = 0.25 + 1e-20 * rng.normal(size=30)
    y = np.arange(30) % 3
    probe = ft.linear_probe().fit(X, y)
    ft.head_from_probe(model, probe)
    weight = model.head.weight.detach()
    assert torch.isfinite(weight).all() and weight.abs().max() < 100
    assert (weight[:, 3] == 0).all() and (weight[:, 5] == 0).all()
    logits = model.head(torch.as_tensor(X, dtype=torch.float32)).detach().numpy()
    assert np.allclose(logits, probe.decision_function(X), atol=1e-4)


# ---------------------------------------------------------------------------- mistakes that raise


def unlabelled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def probe_on_random_features(classes: list[int]):
    """A fitted linear probe on 16 random features (the tiny encoder's width)."""
    X = np.random.default_rng(0).normal(size=(len(classes), 16))
    return ft.linear_probe().fit(X, classes)


# Each mistake a learner makes, the error it raises and what the message must say. The checks
# run before the tokenizer is called, so `None` stands in for one.
BAD_CALLS = [
    (lambda: ft.pool(torch.randn(1, 2, 3), torch.ones(1, 2), "max"), ValueError,
     r"pooling must be one of \('cls', 'mean'\)"),
    (lambda: ft.encode(None, [], 8), ValueError, "texts is empty"),
    (lambda: ft.encode(None, ["fine", "  "], 8), ValueError,
     r"texts\[1\] is empty or blank: drop it or give it some text"),
    (lambda: ft.encode(None, "one string", 8), TypeError, "must be a list of strings, got str"),
    (lambda: ft.encode(None, ["a", 3], 8), TypeError, r"texts\[1\] is a int, not a string"),
    (lambda: ft.encode(None, ["a", "b"], 8, [0]), ValueError,
     "got 1 labels for 2 texts: pass one label per text"),
    (lambda: ft.encode_windows(None, ["a", "b"], 16, labels=[0]), ValueError,
     "one label per text"),
    (lambda: ft.augment(TEXTS, LABELS[:2]), ValueError, "got 2 labels for 6 texts"),
    (lambda: ft.document_logits(torch.zeros(4, 2), torch.tensor([0, 2, 2, 3])), ValueError,
     "doc skips text 1"),
    (lambda: ft.TensorDictDataset({"a": torch.zeros(3), "b": torch.zeros(4)}), ValueError,
     "same first dimension"),
    (lambda: ft.predict_logits(tiny_classifier(), toy_batch(), mixed_precision="fp16"),
     ValueError, "'no' or 'bf16'"),
    (lambda: ft.accuracy([0, 1], [0, 1, 1]), ValueError, r"as many predictions as labels.*\(2,\)"),
    (lambda: ft.accuracy([], []), ValueError, r"as many predictions as labels \(> 0\)"),
    (lambda: ft.head_from_probe(tiny_classifier(num_labels=3), probe_on_random_features([0, 1] * 6)),
     ValueError, r"probe has weights \(1, 16\) but the head expects \(3, 16\).*same classes"),
    (lambda: ft.sample_per_class([0, 1, 2] * 10, 11), ValueError,
     "class 0 has only 10 examples, fewer than n_per_class=11"),
    (lambda: ft.accumulation_gap(tiny_classifier(), toy_batch(n=8), 3), ValueError,
     "must divide the batch size 8, got 3"),
    (lambda: ft.fine_tune(tiny_classifier(), unlabelled(toy_batch()),
                          TrainConfig(max_steps=1, progress=False), 4), KeyError,
     "training encodings need 'labels'"),
    (lambda: ft.val_metrics_fn(unlabelled(toy_batch())), KeyError,
     "evaluation encodings need 'labels'"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_mistakes_raise_a_message_that_names_the_fix(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- your own data


def test_notebook_04_runs_on_a_learners_own_two_class_file(tokenizer, tmp_path):
    # a 2-class sentiment set in a TSV file, not BBC News: read, baselines, probe -> head, fine-tune
    good = ["a wonderful film", "great acting and a great story", "i loved every minute",
            "a delight from start to end", "superb and moving", "the best film this year"]
    bad = ["a dull film", "poor acting and a weak story", "i hated every minute",
           "a bore from start to end", "clumsy and tedious", "the worst film this year"]
    rows = [("text", "label")] + [(t, "positive") for t in good] + [(t, "negative") for t in bad]
    path = tmp_path / "reviews.tsv"
    path.write_text("\n".join("\t".join(row) for row in rows) + "\n", encoding="utf-8")
    data = assets.read_text_classification(path, test_size=0.5)
    assert data.label_names == ["negative", "positive"] and len(data.train_texts) == 6
    assert sorted(data.train_labels) == [0, 0, 0, 1, 1, 1]  # stratified

    tfidf = ft.tfidf_classifier().fit(data.train_texts, data.train_labels)
    assert len(tfidf.predict(data.test_texts)) == 6
    model = tiny_classifier(num_labels=2).eval()
    emb = ft.embed_texts(model, tokenizer, data.train_texts, 16)  # the classifier itself: one copy
    probe = ft.linear_probe(C=10.0).fit(emb, data.train_labels)
    ft.head_from_probe(model, probe)
    train_enc = ft.encode(tokenizer, data.train_texts, 16, labels=data.train_labels)
    logits = ft.predict_logits(model, train_enc)
    assert (logits.argmax(-1).numpy() == probe.predict(emb)).all()
    trainer = ft.fine_tune(model, train_enc, TrainConfig(max_steps=6, lr=1e-3, log_every=1, progress=False),
                           batch_size=3, val_encodings=ft.encode(tokenizer, data.test_texts, 16,
                                                                 labels=data.test_labels))
    history = trainer.history
    assert history["train_loss"].notna().sum() == 6 and "val_accuracy" in history
    assert ft.accuracy(ft.predict_logits(model, train_enc), data.train_labels) >= 0.5


def test_read_text_classification_names_missing_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("review,stars\ngood,5\n", encoding="utf-8")
    with pytest.raises(KeyError, match=r"no column \['label', 'text'\].*text_column= and label_column="):
        assets.read_text_classification(path)
