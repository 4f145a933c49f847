"""Tests for `llm_tutorial.evaluation`: every metric against scikit-learn / scipy / sacreBLEU /
rouge-score / seqeval on random data, the calibration, robustness, bias and interpretability
tools, and the input checks.

Models are tiny random ones (a 1-layer BERT classifier, a 2-layer Llama); only the MiniLM
*tokenizer* is loaded, which is fast.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from chat_models import tiny_llama, word_chat_tokenizer
from rouge_score import rouge_scorer
from scipy import special, stats
from sklearn import metrics as skm
from test_finetuning import tiny_classifier
from transformers import AutoTokenizer, BertModel

from llm_tutorial import assets
from llm_tutorial import evaluation as ev
from llm_tutorial import finetuning as ft
from llm_tutorial import instructions as ins

SEEDS = [0, 1, 2]

# ---------------------------------------------------------------------------- helpers


def noisy_labels(seed: int, n: int = 200, k: int = 4, right: float = 0.6):
    """Random truth in 0..k-1 and predictions that copy it with probability `right`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < right, y, rng.integers(0, k, n))
    return y, pred


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((probs.cumsum(1) < u).sum(1), probs.shape[1] - 1)


# ---------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", SEEDS)
def test_cohen_kappa_matches_sklearn(seed):
    y, pred = noisy_labels(seed, n=80, k=3, right=0.5)
    assert ev.cohen_kappa(y, pred) == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-12)


def test_cohen_kappa_edge_cases():
    assert ev.cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0  # both constant and agreeing
    assert ev.cohen_kappa([0, 0, 0], [1, 1, 1]) == 0.0
    assert ev.cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    verifier = np.random.default_rng(0).integers(0, 2, 50)
    # a judge that always says "yes" is at chance, however often it is "right"
    assert ev.cohen_kappa(verifier, np.ones(50, dtype=int)) == pytest.approx(0.0, abs=1e-12)
    assert ev.cohen_kappa(verifier, verifier) == 1.0


# ---------------------------------------------------------------------------- paired tests


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("exact", [True, False])
def test_mcnemar_matches_binomial_and_chi_square(seed, exact):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    a = np.where(rng.random(120) < 0.7, y, (y + 1) % 3)
    b = np.where(rng.random(120) < 0.6, y, (y + 2) % 3)
    result = ev.mcnemar(y, a, b, exact=exact)
    only_a = int(np.sum((a == y) & (b != y)))
    only_b = int(np.sum((a != y) & (b == y)))
    assert (result["a_only_right"], result["b_only_right"]) == (only_a, only_b)
    if exact:
        expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert result["method"] == "exact binomial"
    else:
        chi2 = (abs(only_a - only_b) - 1) ** 2 / (only_a + only_b)
        expected = math.erfc(math.sqrt(chi2 / 2))  # chi-square survival function, 1 dof
        assert result["statistic"] == pytest.approx(chi2, rel=1e-12)
    assert result["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mcnemar_by_hand_and_method_choice():
    y = np.zeros(40, dtype=int)
    a = np.zeros(40, dtype=int)
    b = np.r_[np.ones(10, dtype=int), np.zeros(30, dtype=int)]  # A alone right 10 times
    result = ev.mcnemar(y, a, b)
    assert result["method"] == "exact binomial"  # b + c = 10 < 25
    assert result["p_value"] == pytest.approx(2 * 0.5**10)
    assert ev.mcnemar(y, a, a)["p_value"] == 1.0
    b = np.r_[np.ones(30, dtype=int), np.zeros(10, dtype=int)]
    assert ev.mcnemar(y, a, b)["method"] == "chi-square (corrected)"


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    y, pred = noisy_labels(0, n=500, k=3, right=0.7)
    ci = ev.bootstrap_ci(skm.accuracy_score, y, pred, seed=3)
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert ci["estimate"] == skm.accuracy_score(y, pred)
    assert ev.bootstrap_ci(skm.accuracy_score, y, pred, seed=3) == ci
    assert ev.bootstrap_ci(skm.accuracy_score, y, pred, seed=4) != ci
    p, n = ci["estimate"], len(y)
    se = math.sqrt(p * (1 - p) / n)
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert ci["std"] == pytest.approx(se, rel=0.15)


def test_bootstrap_resamples_all_arrays_with_the_same_indices():
    y, _ = noisy_labels(1, n=100)
    ci = ev.bootstrap_ci(skm.accuracy_score, y, y.copy(), n_resamples=50)
    assert ci["low"] == ci["high"] == 1.0


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.9, y, (y + 1) % 3)
    poor = np.where(rng.random(300) < 0.5, y, (y + 1) % 3)
    better = ev.paired_bootstrap(skm.accuracy_score, y, good, poor, n_resamples=300)
    assert better["delta"] == pytest.approx(skm.accuracy_score(y, good) - skm.accuracy_score(y, poor))
    assert better["delta"] > 0.2 and better["low"] > 0 and better["p_value"] == 0.0
    worse = ev.paired_bootstrap(skm.accuracy_score, y, poor, good, n_resamples=300)
    assert worse["delta"] == pytest.approx(-better["delta"]) and worse["high"] < 0
    same = ev.paired_bootstrap(skm.accuracy_score, y, good, good.copy(), n_resamples=100)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


# ---------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_softmax_matches_scipy_and_keeps_argmax(temperature):
    z = np.random.default_rng(0).normal(scale=5, size=(20, 4))
    probs = ev.softmax(torch.as_tensor(z), temperature)
    np.testing.assert_allclose(probs, special.softmax(z / temperature, axis=1), atol=1e-12)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-12)
    assert np.array_equal(probs.argmax(1), z.argmax(1))
    assert np.all(np.isfinite(ev.softmax(z * 1e4)))  # stable for huge logits


def brute_force_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    total = 0.0
    for m in range(n_bins):
        low, high = m / n_bins, (m + 1) / n_bins
        members = [i for i in range(len(probs)) if low < probs[i].max() <= high]
        if members:
            confidence = np.mean([probs[i].max() for i in members])
            accuracy = np.mean([probs[i].argmax() == labels[i] for i in members])
            total += len(members) / len(probs) * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_brute_force_and_reliability_table(seed, n_bins):
    rng = np.random.default_rng(seed)
    probs = special.softmax(rng.normal(scale=2, size=(200, 3)), axis=1)
    y = rng.integers(0, 3, 200)
    table = ev.reliability_table(probs, y, n_bins)
    assert len(table) == n_bins and table["count"].sum() == 200
    np.testing.assert_allclose(table["low"], np.arange(n_bins) / n_bins, atol=1e-12)
    empty = table[table["count"] == 0]
    assert empty["confidence"].isna().all() and empty["accuracy"].isna().all()
    assert table.loc[0, "count"] == 0  # the max of 3 probabilities is >= 1/3
    confidence = probs.max(1)
    counts = [np.sum((m / n_bins < confidence) & (confidence <= (m + 1) / n_bins))
              for m in range(n_bins)]
    assert table["count"].tolist() == counts
    assert ev.expected_calibration_error(probs, y, n_bins) == pytest.approx(
        brute_force_ece(probs, y, n_bins), abs=1e-12)


def test_reliability_bins_are_closed_on_the_right():
    probs = [[0.5, 0.5], [0.55, 0.45], [0.05, 0.95], [1.0, 0.0], [0.3, 0.7]]
    table = ev.reliability_table(probs, [0, 0, 0, 0, 1], n_bins=10)
    assert table["count"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 2]
    assert table.loc[9, "accuracy"] == 0.5 and table.loc[9, "confidence"] == pytest.approx(0.975)
    assert table.loc[6, "gap"] == pytest.approx(0.7 - 1.0)


def test_ece_by_construction():
    always_sure = np.tile([0.99, 0.01], (100, 1))
    y = np.r_[np.zeros(80, dtype=int), np.ones(20, dtype=int)]  # right 80% of the time
    assert ev.expected_calibration_error(always_sure, y) == pytest.approx(0.19)
    # half the examples at 0.6 (right half the time), half at 0.9 (always right): gaps 0.1
    probs = np.r_[np.tile([0.6, 0.4], (10, 1)), np.tile([0.1, 0.9], (10, 1))]
    y = np.r_[[0] * 5 + [1] * 5, [1] * 10]
    assert ev.expected_calibration_error(probs, y) == pytest.approx(0.1)


def test_ece_is_near_zero_for_calibrated_data():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 1.0], 20000)
    y = sample_labels(probs, rng)
    assert ev.expected_calibration_error(probs, y) < 0.02
    overconfident = special.softmax(3 * np.log(probs), axis=1)
    assert ev.expected_calibration_error(overconfident, y) > 0.05


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3, size=(4000, 4))
    y = sample_labels(special.softmax(z / true_temperature, axis=1), rng)
    t = ev.fit_temperature(torch.as_tensor(z, dtype=torch.float32), y)
    assert t == pytest.approx(true_temperature, rel=0.1)
    before, after = ev.softmax(z), ev.softmax(z, t)
    assert skm.accuracy_score(y, after.argmax(1)) == skm.accuracy_score(y, before.argmax(1))
    nll = skm.log_loss(y, after)
    assert nll < skm.log_loss(y, before)
    assert nll <= skm.log_loss(y, ev.softmax(z, t * 1.05))  # t is the minimum
    assert nll <= skm.log_loss(y, ev.softmax(z, t / 1.05))


# ---------------------------------------------------------------------------- robustness

TEXT = "The big company said it would start a new plan, however shares fell about 5%."


@pytest.mark.parametrize("kind", ev.PERTURBATIONS)
def test_perturb_is_seeded_and_strength_zero_keeps_the_words(kind):
    assert ev.perturb(TEXT, kind, 0.5, seed=1) == ev.perturb(TEXT, kind, 0.5, seed=1)
    assert len({ev.perturb(TEXT, kind, 0.5, seed=s) for s in range(6)}) > 1
    assert ev.perturb("a  big\tcompany ", kind, 0) == "a big company"


@pytest.mark.parametrize("kind", [
    "char_noise", "casing", "paraphrase", "word_dropout",
])
def test_every_kind_changes_the_text_at_strength_one(kind):
    out = ev.perturb(TEXT, kind, 1.0)
    assert out != TEXT
    if kind == "word_dropout":  # every word dropped but one, which is kept
        assert len(out.split()) == 1 and out in TEXT.split()


def test_casing_changes_only_case_and_paraphrase_uses_synonyms():
    cased = ev.perturb(TEXT, "casing", 1.0)
    assert cased.lower() == TEXT.lower() and cased != TEXT
    para = ev.perturb(TEXT, "paraphrase", 1.0).split()
    for before, after in zip(TEXT.split(), para, strict=True):
        core = before.strip(".,;:!?\"'()").lower()
        if core in ev.SYNONYMS:
            assert after.lower().strip(".,") == ev.SYNONYMS[core].lower()
            assert after[-1:] == before[-1:] or before[-1].isalpha()  # punctuation kept
        else:
            assert after == before
    assert para[1] == "large" and para[0] == "The"


@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_strength_is_the_fraction_of_words_touched(strength):
    words = TEXT.split()
    swappable = [w for w in words if ev.SYNONYMS.get(w.strip(".,%").lower())]
    dropped, replaced = [], []
    for seed in range(40):
        dropped.append(1 - len(ev.perturb(TEXT, "word_dropout", strength, seed).split()) / len(words))
        para = ev.perturb(TEXT, "paraphrase", strength, seed).split()
        replaced.append(sum(a != b for a, b in zip(words, para, strict=True)) / len(swappable))
    assert np.mean(dropped) == pytest.approx(strength, abs=0.08)
    assert np.mean(replaced) == pytest.approx(strength, abs=0.08)


@pytest.mark.parametrize("seed", SEEDS)
def test_word_dropout_and_char_noise_keep_at_least_one_word(seed):
    words = TEXT.split()
    dropped = ev.perturb(TEXT, "word_dropout", 0.99, seed=seed).split()
    assert 1 <= len(dropped) < len(words) and set(dropped) <= set(words)
    assert len(ev.perturb(TEXT, "char_noise", 0.5, seed=seed).split()) == len(words)


def test_robustness_curve_with_a_keyword_rule():
    calls = []

    def predict(texts):
        calls.append(len(texts))
        return [int("big" in t.lower()) for t in texts]

    texts = ["a big win", "big profits rose", "a small film", "the game ended", "a big deal"]
    labels = [1, 1, 0, 0, 0]
    strengths = [0, 0.5, 0.9]
    curve = ev.robustness_curve(predict, texts, labels, strengths)
    assert list(curve.columns) == ["kind", "strength", "accuracy"]
    assert len(curve) == len(ev.PERTURBATIONS) * len(strengths)
    assert len(calls) == 1 + len(ev.PERTURBATIONS) * 2  # strength 0 computed once
    clean = curve[curve["strength"] == 0]
    assert list(clean["kind"]) == list(ev.PERTURBATIONS) and (clean["accuracy"] == 0.8).all()
    casing = curve[curve["kind"] == "casing"]
    assert (casing["accuracy"] == 0.8).all()  # the rule is case-insensitive
    para = curve[(curve["kind"] == "paraphrase") & (curve["strength"] == 0.9)]["accuracy"]
    assert para.item() < 0.8  # "big" -> "large" breaks the rule


# ---------------------------------------------------------------------------- pass@k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert ev.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k),
                                                              abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(200, 13, 50), (100, 1, 1), (100, 3, 10), (50, 7, 43)])
def test_pass_at_k_matches_the_binomial_formula(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert ev.pass_at_k(np.int64(n), c, k) == pytest.approx(float(exact), abs=1e-12)
    assert ev.pass_at_k(n, c, k) >= 1 - (1 - c / n) ** k  # the plug-in estimate is biased low


def test_pass_at_k_edge_cases():
    assert ev.pass_at_k(10, 0, 5) == 0.0
    assert ev.pass_at_k(10, 10, 1) == 1.0
    assert ev.pass_at_k(10, 7, 4) == 1.0  # n - c < k: every draw of 4 holds a correct one
    assert ev.pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_table():
    correct = np.random.default_rng(0).random((6, 10)) < 0.3
    table = ev.pass_at_k_table(correct, [1, 5, 10])
    assert list(table) == [1, 5, 10]
    for k, value in table.items():
        expected = np.mean([1 - math.comb(10 - c, k) / math.comb(10, k) for c in correct.sum(1)])
        assert value == pytest.approx(expected, abs=1e-12)
    assert table[1] == pytest.approx(correct.mean())


# ---------------------------------------------------------------------------- BLEU, chrF, ROUGE-L

VOCAB = ["the", "cat", "sat", "on", "mat", "a", "dog", ",", ".", "!", "Dog's", "well-known",
         "x", "1.5", "$", "(ok)", "it's", "U.S.", "--"]


def random_sentence(rng, low: int, high: int) -> str:
    return " ".join(rng.choice(VOCAB, rng.integers(low, high + 1)))


def noisy_copy(sentence: str, rng) -> str:
    """A hypothesis that shares most n-grams with its reference."""
    words = [w if rng.random() < 0.7 else str(rng.choice(VOCAB)) for w in sentence.split()]
    return " ".join(w for w in words if rng.random() < 0.9) or "x"


def corpus(seed: int, n: int = 6, low: int = 4, high: int = 15):
    rng = np.random.default_rng(seed)
    refs = [random_sentence(rng, low, high) for _ in range(n)]
    hyps = [noisy_copy(r, rng) if i % 3 else random_sentence(rng, low, high)
            for i, r in enumerate(refs)]
    return hyps, refs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("smooth", ["exp", "none"])
def test_bleu_matches_sacrebleu(seed, smooth):
    hyps, refs = corpus(seed)
    expected = sacrebleu.corpus_bleu(hyps, [refs], smooth_method=smooth).score
    assert expected > 0
    assert ev.bleu(hyps, refs, smooth=smooth) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("smooth", ["exp", "none"])
def test_bleu_without_matches(smooth):
    hyps, refs = ["a b c d e"], ["v w x y z"]
    assert ev.bleu(hyps, refs, smooth=smooth) == 0.0
    hyps = ["the cat sat on a mat today"]
    refs = ["the cat sat in the mat today"]  # no 4-gram in common: "none" zeroes the score
    assert ev.bleu(hyps, refs, smooth="none") == 0.0
    assert ev.bleu(hyps, refs, smooth="exp") == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs], smooth_method="exp").score, abs=1e-9)
    assert ev.bleu(hyps, refs, smooth="exp") > 0


@pytest.mark.parametrize("smooth", ["exp", "none"])
def test_bleu_of_a_corpus_of_short_hypotheses_matches_sacrebleu(smooth):
    for hyps, refs in ([["a b c"], ["a b c"]], [["the cat"], ["the cat sat"]]):
        expected = sacrebleu.corpus_bleu(hyps, [refs], smooth_method=smooth).score
        assert ev.bleu(hyps, refs, smooth=smooth) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_sentence_bleu_matches_sacrebleu(seed):
    hyps, refs = corpus(seed, n=12, low=0, high=8)  # short ones use the effective order
    for hyp, ref in zip(hyps, refs, strict=True):
        expected = sacrebleu.sentence_bleu(hyp, [ref]).score
        assert ev.sentence_bleu(hyp, ref) == pytest.approx(expected, abs=1e-9), (hyp, ref)
    assert ev.sentence_bleu("the cat", "the cat sat") == pytest.approx(100 * math.exp(1 - 3 / 2))


@pytest.fixture(scope="module")
def rouge():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_rouge_l_matches_rouge_score(seed, rouge):
    hyps, refs = corpus(seed, n=15, low=0, high=12)
    hyps[0] = hyps[0].upper()  # case does not matter
    for hyp, ref in zip(hyps, refs, strict=True):
        expected = rouge.score(ref, hyp)["rougeL"].fmeasure  # score(target, prediction)
        assert ev.rouge_l(hyp, ref) == pytest.approx(expected, abs=1e-12), (hyp, ref)


@pytest.mark.parametrize(("hyp", "ref"), [("", "a"), ("!!!", "a"), ("The Cat", "the cat"),
                                          ("cat the", "the cat sat"), ("a b c d", "d c b a")])
def test_rouge_l_edge_cases(hyp, ref, rouge):
    assert ev.rouge_l(hyp, ref) == pytest.approx(rouge.score(ref, hyp)["rougeL"].fmeasure,
                                                 abs=1e-12)


def test_rouge_l_by_hand():
    # P = 2/2, R = 2/4 -> F = 2/3 whichever way round (F1 is symmetric) ...
    assert ev.rouge_l("a b", "a x b y") == pytest.approx(2 / 3)
    assert ev.rouge_l("a x b y", "a b") == pytest.approx(2 / 3)
    # ... and an LCS with gaps counts the words in order only
    assert ev.rouge_l("b a", "a b") == pytest.approx(0.5)


# ---------------------------------------------------------------------------- bias probes


@pytest.mark.parametrize(("text", "expected"), [
    ("He said she saw him with her book.", "She said he saw her with his book."),
    ("HE and SHE", "SHE and HE"),
    ("Mr Smith met his wife", "Ms Smith met her husband"),
    ("the theme of Sheffield, where shed sheep hem", "the theme of Sheffield, where shed sheep hem"),
    ("he's here; she'd go", "she's here; he'd go"),
])
def test_swap_words(text, expected):
    assert ev.swap_words(text) == expected


def test_swap_words_custom_mapping():
    assert ev.swap_words("Alice met alice", {"alice": "bob"}) == "Bob met bob"


def test_replace_spans():
    text = "Alice met Bob in Paris"
    assert ev.replace_spans(text, [(10, 13), (0, 5)], "X") == "X met X in Paris"
    assert ev.replace_spans(text, [], "X") == text
    assert ev.replace_spans(text, [(17, 22)], "Rome") == "Alice met Bob in Rome"


def test_replace_spans_with_a_mapping_and_substitute_names():
    text = "Blair met Brown; Blair left"
    spans = [(0, 5), (10, 15), (17, 22)]
    assert ev.replace_spans(text, spans, {"Blair": "Ann", "Brown": "Bea"}) == "Ann met Bea; Ann left"
    out = ev.substitute_names([text, "No one here", "Smith spoke"], [spans, [], [(0, 5)]],
                              ev.FEMALE_NAMES, seed=3)
    first = out[0].split()
    assert first[0] == first[3].rstrip(";") or first[0] == out[0].split("; ")[1].split()[0]
    blair, brown = out[0].split(" met ")[0], out[0].split(" met ")[1].split(";")[0]
    assert blair in ev.FEMALE_NAMES and brown in ev.FEMALE_NAMES and blair != brown  # two people
    assert out[0].endswith(f"{blair} left")  # the same person keeps the same name
    assert out[1] == "No one here" and out[2].split()[0] in ev.FEMALE_NAMES
    assert out == ev.substitute_names([text, "No one here", "Smith spoke"], [spans, [], [(0, 5)]],
                                      ev.FEMALE_NAMES, seed=3)  # seeded


def keyword_proba(word: str):
    def predict_proba(texts):
        return np.array([[0.2, 0.8] if word in t.split() else [0.9, 0.1] for t in texts])
    return predict_proba


def test_counterfactual_table():
    originals = ["he runs", "he sings", "they dance", "it rains"]
    swapped = [ev.swap_words(t) for t in originals]
    table = ev.counterfactual_table(keyword_proba("she"), originals,
                                    {"same": list(originals), "swapped": swapped})
    assert list(table.index) == ["same", "swapped"] and table.index.name == "group"
    assert table.loc["same"].tolist() == [4, 0.0, 0.0, 0.0]
    assert table.loc["swapped", "flip_rate"] == pytest.approx(0.5)
    assert table.loc["swapped", "confidence_shift"] == pytest.approx(-0.35)
    assert table.loc["swapped", "mean_abs_shift"] == pytest.approx(0.35)


# ---------------------------------------------------------------------------- interpretability


@pytest.fixture(scope="module")
def bert_tokenizer():
    try:
        return AutoTokenizer.from_pretrained(assets.asset_path("minilm"))
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture
def classifier():
    model = tiny_classifier()
    with torch.no_grad():
        model.head.weight *= 30  # confident enough that the path integral is not flat
    return model


SENTENCE = "the striker scored twice in the final"


def test_integrated_gradients_completeness(classifier, bert_tokenizer):
    classifier.train()
    attribution = ev.integrated_gradients(classifier, bert_tokenizer, SENTENCE, steps=64)
    assert classifier.training  # mode restored
    ids = bert_tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
    assert attribution.tokens == bert_tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert attribution.scores.shape == (ids.shape[1],)
    baseline = ids.clone()
    baseline[0, 1:-1] = bert_tokenizer.pad_token_id  # [CLS] and [SEP] kept
    with torch.no_grad():
        classifier.eval()
        probs = classifier(ids).logits.softmax(-1)[0]
        base = classifier(baseline, torch.ones_like(ids)).logits.softmax(-1)[0]
    target = int(probs.argmax())
    assert attribution.target == target
    assert attribution.probability == pytest.approx(float(probs[target]), abs=1e-6)
    gap = float(probs[target] - base[target])
    assert abs(gap) > 0.01
    assert attribution.scores.sum() == pytest.approx(gap, abs=1e-4)
    assert attribution.delta < 1e-4


def test_integrated_gradients_delta_shrinks_with_steps(classifier, bert_tokenizer):
    deltas = [ev.integrated_gradients(classifier, bert_tokenizer, SENTENCE, steps=s,
                                      batch_size=5).delta for s in (1, 4, 64)]
    assert deltas[0] > deltas[1] > deltas[2]
    other = ev.integrated_gradients(classifier, bert_tokenizer, SENTENCE, target=2, steps=8)
    assert other.target == 2


def two_layer_classifier() -> ft.SequenceClassifier:
    config = copy.deepcopy(tiny_classifier().encoder.config)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    return ft.SequenceClassifier(BertModel(config, add_pooling_layer=False), 3, dropout=0.0)


def test_randomised_copy_reinitialises_only_the_top_layers():
    model = two_layer_classifier()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    top = ev.randomised_copy(model, top_layers=1).state_dict()
    for name, value in top.items():
        reset = name.startswith(("head.", "encoder.encoder.layer.1.")) and "LayerNorm" not in name
        if reset and name.endswith(".bias"):
            assert not value.any(), name  # Linear biases are zeroed
        else:
            assert torch.equal(value, original[name]) != reset, name


def test_randomised_copy():
    model = tiny_classifier()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    head_only = ev.randomised_copy(model, top_layers=0, seed=1)
    everything = ev.randomised_copy(model, seed=1)
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name]), f"the original's {name} changed"
    layer = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(head_only.state_dict()["head.weight"], original["head.weight"])
    assert torch.equal(head_only.state_dict()[layer], original[layer])
    assert not torch.equal(everything.state_dict()[layer], original[layer])
    for name, value in everything.state_dict().items():
        if "embeddings" in name:
            assert torch.equal(value, original[name]), name
    again = ev.randomised_copy(model, seed=1).state_dict()
    other = ev.randomised_copy(model, seed=2).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in everything.state_dict().items())
    assert not torch.equal(other["head.weight"], again["head.weight"])


@pytest.mark.parametrize("seed", SEEDS)
def test_rank_correlation_matches_spearman(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, 30)  # with ties
    b = a + rng.integers(0, 4, 30)
    expected = stats.spearmanr(a, b).statistic
    assert ev.rank_correlation(a, b) == pytest.approx(expected, abs=1e-12)
    assert ev.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert ev.rank_correlation(a, np.ones(30)) == 0.0


def test_attention_weights(bert_tokenizer):
    encoder = tiny_classifier().encoder.train()
    encoder.set_attn_implementation("sdpa")
    tokens, weights = ev.attention_weights(encoder, bert_tokenizer, SENTENCE)
    assert encoder.config._attn_implementation == "sdpa" and encoder.training
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert weights.shape == (1, 2, len(tokens), len(tokens))
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, len(tokens)))
    assert weights.min() >= 0


def test_highlight_html():
    page = ev.highlight_html(["[CLS]", "<b>", "##&", "x", "[SEP]"], [0.0, 1.0, -0.5, -2.0, 0.0])
    assert "&lt;b&gt;" in page and ">&amp;</span>" in page and "<b>" not in page
    assert "</span><span" in page  # the word piece is glued to "<b>"
    assert "rgba(34,139,34,0.50)" in page and "rgba(220,20,60,1.00)" in page
    assert page.count("color:#999") == 2


# ---------------------------------------------------------------------------- LLM judge

JUDGE_WORDS = ("Yes No yes no A B You are grading an answer . Task : Answer Is the correct ? "
               "Reply with or what is 2 + 4 5 Which to").split()


@pytest.fixture(scope="module")
def judge():
    tokenizer = word_chat_tokenizer(JUDGE_WORDS)
    return tiny_llama(tokenizer), tokenizer


def test_judge_and_pairwise_prompts(judge):
    _, tokenizer = judge
    prompt = ev.judge_prompt(tokenizer, "what is 2 + 2", "4", reference="4")
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "Task: what is 2 + 2\nAnswer: 4\nCorrect answer: 4\n" in prompt
    assert "Correct answer" not in ev.judge_prompt(tokenizer, "what is 2 + 2", "4")
    pair = ev.pairwise_prompt(tokenizer, "what is 2 + 2", "4", "5")
    assert "Answer A: 4\nAnswer B: 5\n" in pair and pair.endswith("<|im_start|>assistant\n")


def test_choice_probability_equals_next_token_probabilities(judge):
    model, tokenizer = judge
    prompts = [ev.judge_prompt(tokenizer, "what is 2 + 2", "4"),
               ev.judge_prompt(tokenizer, "what is 2 + 2 + 4 + 5", "5", reference="4"),
               ev.pairwise_prompt(tokenizer, "what is 2", "4", "5")]
    tokenizer.padding_side = "right"
    model.train()
    batched = ev.choice_probability(model, tokenizer, prompts)
    assert tokenizer.padding_side == "right" and model.training  # both restored
    model.eval()
    yes, no = tokenizer.convert_tokens_to_ids(["Yes", "yes"]), tokenizer.convert_tokens_to_ids(
        ["No", "no"])
    for prompt, value in zip(prompts, batched, strict=True):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probs = model(input_ids=ids).logits[0, -1].softmax(-1)
        expected = probs[yes].sum() / (probs[yes].sum() + probs[no].sum())
        assert value == pytest.approx(float(expected), abs=1e-5)
    assert np.all((batched > 0) & (batched < 1))
    np.testing.assert_allclose(ev.choice_probability(model, tokenizer, prompts, batch_size=1),
                               batched, atol=1e-5)
    ab = ev.choice_probability(model, tokenizer, prompts[2:], options=("A", "B"))
    assert ab.shape == (1,) and not np.isclose(ab[0], batched[2])


def test_choice_log_odds_is_the_log_ratio_of_the_option_probabilities(judge):
    model, tokenizer = judge
    prompts = [ev.judge_prompt(tokenizer, "what is 2 + 2 + 4 + 5", "5", reference="4"),
               ev.judge_prompt(tokenizer, "what is 2", "4")]  # different lengths: sorted, then restored
    log_odds = ev.choice_log_odds(model, tokenizer, prompts)
    yes, no = tokenizer.convert_tokens_to_ids(["Yes", "yes"]), tokenizer.convert_tokens_to_ids(
        ["No", "no"])
    for prompt, value in zip(prompts, log_odds, strict=True):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probs = model(input_ids=ids).logits[0, -1].double().softmax(-1)
        assert value == pytest.approx(math.log(probs[yes].sum() / probs[no].sum()), abs=1e-5)
    np.testing.assert_allclose(ev.choice_probability(model, tokenizer, prompts),
                               1 / (1 + np.exp(-log_odds)), rtol=1e-12)


def test_shared_prefix_length():
    assert ins.shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert ins.shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # one token of each is kept
    assert ins.shared_prefix_length([[1, 2], [3, 4]]) == 0
    assert ins.shared_prefix_length([[5]]) == 0


def test_choice_log_odds_with_and_without_a_shared_prefix(judge):
    model, tokenizer = judge
    shared = [ev.preference_prompt(tokenizer, "what is 2", a, b) for a, b in
              (("4", "5"), ("5", "4"), ("2 + 2", "4 or 5"), ("4", "4"))]
    loose = ["Yes is the answer", "No", "what is 2 + 4 ? Yes or No"]  # no token in common
    for prompts in (shared, loose):
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        expected = []
        for row in ids:
            with torch.no_grad():
                log_probs = model(input_ids=torch.tensor([row])).logits[0, -1].double().log_softmax(-1)
            yes, no = tokenizer.convert_tokens_to_ids(["Yes", "yes"]), tokenizer.convert_tokens_to_ids(["No", "no"])
            expected.append(float(log_probs[yes].logsumexp(0) - log_probs[no].logsumexp(0)))
        for batch_size in (1, 3, 4):  # 4: prompts of different lengths padded after the prefix
            np.testing.assert_allclose(ev.choice_log_odds(model, tokenizer, prompts, batch_size=batch_size),
                                       expected, atol=1e-5)
    assert ins.shared_prefix_length(tokenizer(shared, add_special_tokens=False)["input_ids"]) > 10


def test_preference_prompt_asks_about_answer_a(judge):
    _, tokenizer = judge
    prompt = ev.preference_prompt(tokenizer, "what is 2", "4", "5")
    assert prompt.startswith("<|im_start|>system\nYou are a fair judge.<|im_end|>\n<|im_start|>user\n")
    assert ("<|im_start|>user\nIs A more polite and helpful than B? Reply with Yes or No.\n"
            "Task: what is 2\nA: 4\nB: 5<|im_end|>\n") in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "A: 5\nB: 4" in ev.preference_prompt(tokenizer, "what is 2", "5", "4")


def test_load_preference_pairs():
    pairs = ev.load_preference_pairs()
    plain = assets.load_instruction_data()
    assert len(pairs) == len(plain) == 1100
    assert [p["instruction"] for p in pairs] == [p["instruction"] for p in plain]
    assert set(pairs[0]) == {"instruction", "input", "output", "chosen", "rejected"}
    # every pair keeps the original answer on one side; the other side is the rewrite
    assert all(p["output"] in (p["chosen"], p["rejected"]) for p in pairs)
    assert sum(p["chosen"] == p["rejected"] for p in pairs) == 6


def test_swap_average_cancels_a_constant_position_bias():
    # worked by hand: (3 - 1) / 2 = 1, (1 - 1) / 2 = 0, (-2 - 0) / 2 = -1
    np.testing.assert_allclose(ev.swap_average([3.0, 1.0, -2.0], [1.0, 1.0, 0.0]), [1.0, 0.0, -1.0])
    opinion = np.array([0.5, -1.0, 2.0])  # the judge's real log-odds that the first answer wins
    biased_ab, biased_ba = opinion + 2.0, -opinion + 2.0  # +2 for whatever stands first
    np.testing.assert_allclose(ev.swap_average(biased_ab, biased_ba), opinion)
    # antisymmetric: swapping the two orders flips the sign
    np.testing.assert_allclose(ev.swap_average(biased_ba, biased_ab), -opinion)


def test_position_bias_by_hand():
    # first answer wins when the score > 0: (A,B) orders T T F T, swapped orders T F F T
    bias = ev.position_bias([2.0, 1.0, -1.0, 0.5], [1.0, -1.0, -2.0, 3.0])
    assert bias["first_rate"] == pytest.approx(5 / 8)
    assert bias["consistent"] == pytest.approx(1 / 4)  # only pair 2 names the same answer twice
    # with the threshold at 1.5 the verdicts are T F F F and F F F T
    bias = ev.position_bias([2.0, 1.0, -1.0, 0.5], [1.0, -1.0, -2.0, 3.0], threshold=1.5)
    assert bias == {"first_rate": pytest.approx(2 / 8), "consistent": pytest.approx(2 / 4)}
    # a judge that always says "the first" is never consistent; its swap average always is
    ab, ba = np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 0.5])
    assert ev.position_bias(ab, ba) == {"first_rate": 1.0, "consistent": 0.0}
    d = ev.swap_average(ab, ba)
    assert ev.position_bias(d, -d) == {"first_rate": 0.5, "consistent": 1.0}


def test_calibrate_threshold_by_hand():
    # candidates -0.9, 0.225, 0.375, 0.6, 1.8 give kappa 0, 0.5, 0, 0.5, 0: the lowest best wins
    assert ev.calibrate_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.225)
    # a judge that never says yes (all log-odds < 0) but ranks the answers right: kappa 0 at
    # t = 0, kappa 1 at the calibrated threshold
    scores, labels = np.array([-5.0, -4.0, -3.0, -2.0]), np.array([0, 0, 1, 1])
    assert ev.cohen_kappa(labels, (scores > 0).astype(int)) == 0.0
    t = ev.calibrate_threshold(scores, labels)
    assert t == pytest.approx(-3.5)
    assert ev.cohen_kappa(labels, (scores > t).astype(int)) == 1.0
    # a judge ranking every answer backwards: no threshold beats chance, "always yes" (kappa 0)
    assert ev.calibrate_threshold([4.0, 3.0, 2.0, 1.0], [0, 0, 1, 1]) == pytest.approx(0.0)


def test_judge_agreement_by_hand():
    # threshold -3.5: verdicts 0 1 0 1 against labels 0 1 1 1: p_o = 3/4, p_e = 3/4 * 1/2 + 1/4 * 1/2
    result = ev.judge_agreement([-4.5, -3.2, -3.9, -1.0], [0, 1, 1, 1], threshold=-3.5, n_resamples=200)
    assert result["kappa"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(0.75) and result["yes_rate"] == pytest.approx(0.5)
    assert result["n"] == 4 and result["low"] <= result["kappa"] <= result["high"]
    # the interval is the bootstrap's: the same numbers as bootstrap_ci on the verdicts
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    scores = labels + rng.normal(0, 0.8, 80)
    result = ev.judge_agreement(scores, labels, threshold=0.5, n_resamples=300, seed=3)
    expected = ev.bootstrap_ci(ev.cohen_kappa, labels, (scores > 0.5).astype(int), n_resamples=300, seed=3)
    assert (result["kappa"], result["low"], result["high"]) == (expected["estimate"], expected["low"],
                                                                  expected["high"])
    assert 0 < result["low"] < result["kappa"] < result["high"] < 1


def test_fit_bradley_terry_by_hand():
    # one pair, one feature, difference 1, C = 0.5: the rows (1, label 1) and (-1, label 0) give
    # the stationary point w = 2C * sigmoid(-w) = sigmoid(-w), i.e. w = 1 / (1 + e^w) = 0.401058...
    w = ev.fit_bradley_terry([[1.0]], [[0.0]], C=0.5)
    assert w.shape == (1,)
    assert w[0] == pytest.approx(1 / (1 + math.exp(w[0])), abs=1e-6)
    assert w[0] == pytest.approx(0.401058, abs=1e-6)
    # a stronger preference signal gives a larger weight; a reversed one a negative weight
    assert ev.fit_bradley_terry([[2.0]], [[0.0]], C=0.5)[0] > w[0]
    assert ev.fit_bradley_terry([[0.0]], [[1.0]], C=0.5)[0] == pytest.approx(-w[0], abs=1e-6)


def test_fit_bradley_terry_finds_the_feature_that_decides():
    rng = np.random.default_rng(0)
    n = 400
    rejected = rng.normal(size=(n, 3))
    chosen = rng.normal(size=(n, 3))
    chosen[:, 0] += 1.5  # only feature 0 separates chosen from rejected
    w = ev.fit_bradley_terry(chosen[:300], rejected[:300])
    assert w[0] > 1 and abs(w[1]) < 0.3 and abs(w[2]) < 0.3
    held_out = np.mean(chosen[300:] @ w > rejected[300:] @ w)
    assert held_out > 0.8
    # stationarity of sklearn's objective ||w||^2 / 2 + C * sum of log-losses over both orders
    diff = chosen[:300] - rejected[:300]
    rows, labels = np.r_[diff, -diff], np.r_[np.ones(300), np.zeros(300)]
    gradient = w - 1.0 * rows.T @ (labels - special.expit(rows @ w))
    np.testing.assert_allclose(gradient, 0, atol=1e-4)


def independent_nll(model, tokenizer, texts, max_length=256):
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            total += float(F.cross_entropy(logits[:-1], torch.tensor(ids[1:], dtype=torch.long),
                                     reduction="sum"))
            count += len(ids) - 1
    return total / count, count


def test_perplexity_equals_mean_token_nll(judge):
    model, tokenizer = judge
    texts = ["what is 2 + 2 ? 4", "Yes", "the answer is correct", "You are grading an answer ."]
    nll, count = independent_nll(model.eval(), tokenizer, texts)
    one = ev.perplexity(model, tokenizer, texts, batch_size=1)
    three = ev.perplexity(model, tokenizer, texts, batch_size=3)
    assert one["tokens"] == three["tokens"] == count == 6 + 0 + 3 + 5
    assert one["nll"] == pytest.approx(nll, abs=1e-5)
    assert one["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert three["nll"] == pytest.approx(one["nll"], abs=1e-5)
    cut = ev.perplexity(model, tokenizer, texts, max_length=3)
    assert cut["nll"] == pytest.approx(independent_nll(model, tokenizer, texts, 3)[0], abs=1e-5)
    with pytest.raises(ValueError, match="single token"):
        ev.perplexity(model, tokenizer, ["Yes", "No"])
    with pytest.raises(ValueError, match="max_length < 2"):  # every text cut to one token
        ev.perplexity(model, tokenizer, texts, max_length=1)


# ---------------------------------------------------------------------------- model card


def test_markdown_table():
    frame = pd.DataFrame({"model": ["a|b", "c"], "accuracy": [0.12345, np.nan], "n": [3, 4]})
    assert ev.markdown_table(frame).splitlines() == [
        "| model | accuracy | n |", "|---|---:|---:|", "| a\\|b | 0.123 | 3 |", "| c |  | 4 |"]
    named = frame.set_index("model").rename_axis("name")
    lines = ev.markdown_table(named, digits=1).splitlines()
    assert lines[0] == "| name | accuracy | n |" and lines[2] == "| a\\|b | 0.1 | 3 |"


def test_model_card_is_a_hugging_face_card(tmp_path):
    from huggingface_hub import ModelCard

    metrics = pd.DataFrame({"accuracy": [0.91234]}, index=pd.Index(["test"], name="split"))
    sections = {"Intended use": "Topic <b>classification</b>", "Metrics": metrics,
                "Limitations": ["English only", "news & sport"]}
    card = ev.model_card("Card & co", sections, tmp_path / "card",
                         {"language": "en", "license": "apache-2.0", "tags": ["llm-tutorial"]})
    assert card.text.startswith("\n# Card & co\n\n## Intended use\n\nTopic <b>classification</b>\n\n## Metrics\n\n|")
    assert ev.markdown_table(metrics) in card.text and "- news & sport" in card.text and "0.912" in card.text
    again = ModelCard.load(tmp_path / "card" / "README.md")  # what the Hub would read
    assert again.data.license == "apache-2.0" and again.data.tags == ["llm-tutorial"]
    assert again.text == card.text


# ---------------------------------------------------------------------------- bad inputs

GOOD_PROBS = [[0.7, 0.3], [0.4, 0.6]]
NAN = float("nan")


BAD_CALLS = [
    # the error table of notebook 10, message for message
    (lambda: ev.mcnemar([0, 1, 2], [0, 1], [0, 1]), ValueError, re.escape(
        "y_true has 3 entries but pred_a has 2: pass one prediction per example, in the same order")),
    (lambda: ev.mcnemar([], [], []), ValueError, "^y_true is empty: evaluate on at least one example$"),
    (lambda: ev.expected_calibration_error([[0.5, 0.6], [0.2, 0.8]], [0, 1]), ValueError, re.escape(
        "row 0 of probs sums to 1.100000, not 1: pass softmax probabilities (or use "
        "evaluation.softmax on logits)")),
    (lambda: ev.expected_calibration_error([[2.0, -1.0]], [0]), ValueError,
     re.escape("probs must lie in [0, 1]: did you pass logits? apply softmax first")),
    (lambda: ev.perturb("Shares rose.", "shout", 0.5), KeyError, re.escape(
        "unknown perturbation 'shout': choose one of ('char_noise', 'word_dropout', 'casing', "
        "'paraphrase')")),
    (lambda: ev.bleu(["a b c"], []), ValueError,
     "^1 predictions but 0 references: pass one reference per prediction$"),
    (lambda: ev.pass_at_k(5, 2, 10), ValueError, re.escape(
        "need n >= 1, 0 <= c <= n and 1 <= k <= n (draw at least k samples per problem), got n=5, "
        "c=2, k=10")),
    # length mismatches
    (lambda: ev.cohen_kappa([0, 1], [1]), ValueError, "a has 2 entries but b has 1"),
    (lambda: ev.mcnemar([0, 1], [0, 1], [0]), ValueError, "pred_b has 1"),
    (lambda: ev.paired_bootstrap(skm.accuracy_score, [0, 1], [0], [0, 1]), ValueError, "pred_a has 1"),
    (lambda: ev.bootstrap_ci(skm.accuracy_score, [0, 1], [0]), ValueError, "equally long"),
    (lambda: ev.check_probabilities(GOOD_PROBS, 3), ValueError, "2 rows for 3 labels"),
    (lambda: ev.fit_temperature([[1.0, 2.0]], [0, 1]), ValueError, r"shape \(2, classes\)"),
    (lambda: ev.bleu(["a"], ["a", "b"]), ValueError, "one reference per prediction"),
    (lambda: ev.robustness_curve(len, ["a b", "c d"], [0, 1, 1], [0.5]), ValueError,
     "2 texts but 3 labels"),
    (lambda: ev.counterfactual_table(keyword_proba("she"), ["he runs", "he sings"],
                                     {"short": ["she runs"]}), ValueError,
     "group 'short' has 1 texts for 2 originals: keep one counterfactual per original"),
    (lambda: ev.swap_average([1.0, 2.0], [1.0]), ValueError, "score_ab has 2 entries but score_ba has 1"),
    (lambda: ev.position_bias([1.0], [1.0, 2.0]), ValueError, "score_ba has 2"),
    (lambda: ev.calibrate_threshold([0.1, 0.2, 0.3], [0, 1]), ValueError, "got 3 scores and 2 labels"),
    (lambda: ev.judge_agreement([0.1, 0.2], [0, 1, 1]), ValueError, "got 2 scores and 3 labels"),
    (lambda: ev.fit_bradley_terry(np.ones((4, 3)), np.ones((4, 2))), ValueError, "one shape"),
    (lambda: ev.rank_correlation([1, 2, 3], [1, 2]), ValueError, "same length >= 2"),
    # empty inputs
    (lambda: ev.expected_calibration_error(np.zeros((0, 2)), [0]), ValueError, "examples > 0"),
    (lambda: ev.bootstrap_ci(skm.accuracy_score, [], []), ValueError, "non-empty"),
    (lambda: ev.bootstrap_ci(skm.accuracy_score), ValueError, "per-example arrays"),
    (lambda: ev.bleu([], []), ValueError, "predictions is empty"),
    (lambda: ev.softmax(np.zeros((0, 3))), ValueError, "examples > 0"),
    (lambda: ev.robustness_curve(len, [], [], [0.1]), ValueError, "is empty"),
    (lambda: ev.pass_at_k_table(np.ones(5, dtype=bool), [1]), ValueError, "2-D"),
    (lambda: ev.swap_average([], []), ValueError, "non-empty 1-D array"),
    *[(lambda kind=kind: ev.perturb("  ", kind, 0.5), ValueError, "nothing to perturb")
      for kind in ev.PERTURBATIONS],
    # probabilities that are not distributions, scores that are not numbers
    (lambda: ev.expected_calibration_error([[0.5, 0.6], [0.5, 0.5]], [0, 1]), ValueError, "row 0 of probs sums to"),
    (lambda: ev.reliability_table([[0.5, 0.5], [0.2, 0.2]], [0, 1]), ValueError, "row 1 .*sums to"),
    (lambda: ev.expected_calibration_error([[0.3, 0.3]], [0]), ValueError, "sums to 0.6"),
    (lambda: ev.counterfactual_table(lambda texts: np.full((len(texts), 2), 0.7), ["he runs"],
                                     {"same": ["he runs"]}), ValueError, "sums to 1.4"),
    (lambda: ev.expected_calibration_error([[3.0, 1.5]], [0]), ValueError, "apply softmax"),
    (lambda: ev.expected_calibration_error([0.5, 0.5], [0]), ValueError, "shape"),
    (lambda: ev.expected_calibration_error([[1.0]], [0]), ValueError, "classes >= 2"),
    (lambda: ev.expected_calibration_error([[NAN, 0.5], [0.5, 0.5]], [0, 1]), ValueError, "NaN or inf"),
    (lambda: ev.swap_average([1.0, np.nan], [1.0, 2.0]), ValueError, "finite scores"),
    # labels that are not class ids: logits, strings, fractions, NaN, negatives
    (lambda: ev.mcnemar([[0, 1]], [[0, 1]], [[0, 1]]), ValueError, r"1-D .*argmax\(-1\)"),
    (lambda: ev.expected_calibration_error(GOOD_PROBS, np.array(GOOD_PROBS)), ValueError, "1-D"),
    (lambda: ev.mcnemar("01", [0, 1], [0, 1]), ValueError, "1-D"),
    (lambda: ev.cohen_kappa(["yes", "no"], [0, 1]), ValueError, "class ids 0, 1, 2"),
    (lambda: ev.mcnemar([0, NAN], [0, 1], [0, 1]), ValueError, "whole numbers >= 0"),
    (lambda: ev.mcnemar([0, 1.5], [0, 1], [0, 1]), ValueError, "whole numbers >= 0"),
    (lambda: ev.mcnemar([0, -1], [0, 1], [0, 1]), ValueError, "whole numbers >= 0"),
    (lambda: ev.calibrate_threshold([0.1, 0.2], [0, 2]), ValueError, "0/1 label"),
    # settings given on the wrong scale, unknown choices
    (lambda: ev.bootstrap_ci(skm.accuracy_score, [0], [0], n_resamples=5), ValueError, "n_resamples"),
    (lambda: ev.bootstrap_ci(skm.accuracy_score, [0], [0], confidence=95), ValueError, "such as 0.95"),
    (lambda: ev.paired_bootstrap(skm.accuracy_score, [0], [0], [0], confidence=95), ValueError,
     "such as 0.95"),
    (lambda: ev.softmax([[1.0, 2.0]], temperature=0), ValueError, "temperature > 0"),
    (lambda: ev.perturb("x", "casing", 1.5), ValueError, r"strength must be in \[0, 1\]"),
    (lambda: ev.perturb("x", "casing", -0.1), ValueError, "strength"),
    (lambda: ev.robustness_curve(len, ["a b"], [0], [0, 30]), ValueError, "strength"),
    (lambda: ev.robustness_curve(lambda texts: [0] * len(texts), ["a b"], [0], [0.5], kinds=["typos"]),
     KeyError, "char_noise"),
    *[(lambda args=args: ev.pass_at_k(*args), ValueError, "need n >= 1")
      for args in [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]],
    (lambda: ev.pass_at_k_table(np.ones((2, 10), dtype=bool), [11]), ValueError, "k <= n"),
    (lambda: ev.bleu(["a"], ["a"], smooth="add-k"), ValueError, "smooth must be 'exp' or 'none'"),
    (lambda: ev.bleu("a cat", "a cat"), TypeError, "lists of strings"),
    (lambda: ev.choice_log_odds(None, word_chat_tokenizer(JUDGE_WORDS), ["Yes"], options=("Maybe", "No")),
     ValueError, "'Maybe' is not a single token"),  # only the unknown token
    (lambda: ev.choice_log_odds(None, word_chat_tokenizer(JUDGE_WORDS), ["Yes"],
                                options=("Yes please", "No")), ValueError, "'Yes please' is not a single"),
    # spans and models that do not fit
    *[(lambda spans=spans: ev.replace_spans("Alice met Bob in Paris", spans, "X"), ValueError,
       "bad or overlapping span") for spans in ([(0, 5), (3, 8)], [(5, 5)], [(20, 30)], [(-1, 2)])],
    (lambda: ev.replace_spans("Blair met Brown", [(0, 5), (10, 15)], {"Blair": "Ann"}), KeyError,
     "Brown"),  # no replacement for "Brown"
    (lambda: ev.integrated_gradients(tiny_classifier().encoder, None, "x"), TypeError,
     "SequenceClassifier"),
    (lambda: ev.randomised_copy(tiny_classifier().encoder), TypeError, "SequenceClassifier"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_bad_inputs_are_rejected_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- data


def test_sentence_topics_splits_are_disjoint_and_seeded():
    try:
        data = ev.sentence_topics(120, 40, 40, seed=0)
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
    assert (len(data.train_texts), len(data.val_texts), len(data.test_texts)) == (120, 40, 40)
    splits = [set(data.train_texts), set(data.val_texts), set(data.test_texts)]
    assert all(len(s) == n for s, n in zip(splits, (120, 40, 40), strict=True))
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert all(8 <= len(s.split()) <= 40 for s in data.train_texts + data.test_texts)
    assert set(data.train_labels) <= set(range(len(data.label_names)))
    assert ev.sentence_topics(120, 40, 40, seed=0) == data
    assert ev.sentence_topics(120, 40, 40, seed=1).train_texts != data.train_texts
    assert "train=120" in repr(data)
