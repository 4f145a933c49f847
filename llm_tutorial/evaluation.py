"""
# Evaluation: a report card with error bars

A single accuracy number hides most of what we need to know about a model. This module holds
the pieces of notebook 10's report card, each small enough to read in one sitting:

* **uncertainty** for any classification metric (accuracy, macro-F1, per-class scores, the
  confusion matrix, log-loss and Cohen's κ are scikit-learn's; the lesson is what they mean and
  how much they move): **bootstrap confidence intervals** and two **paired tests** between
  models (McNemar's exact/χ² test and the paired bootstrap);
* **calibration**: reliability tables, expected calibration error (ECE) and **temperature
  scaling** fitted on validation logits;
* **robustness**: seeded text perturbations (character noise, word dropout, casing, synonym
  "paraphrases") at increasing strength, and accuracy curves over them;
* **generation metrics**: perplexity, the unbiased **pass@k** estimator, and hand-written
  BLEU and ROUGE-L (checked against `sacrebleu` and `rouge-score` in the notebook and the
  tests; chrF is `sacrebleu`'s and entity F1 `seqeval`'s, as in notebook 05);
* **LLM-as-judge**: yes/no judge prompts scored by the log-odds of "Yes" against "No",
  averaged over both answer orders (position debiasing), a verdict threshold calibrated on a dev
  split, Cohen's kappa with a bootstrap interval, and a **reward model** (a Bradley–Terry head
  on frozen embeddings, trained on the vendored preference pairs) as a judge to compare with;
* **bias probes** by counterfactual substitution (pronouns, first names): flip rate and
  confidence shift;
* **interpretability**: integrated gradients over input embeddings (with its completeness
  check), the weight-randomisation sanity check, attention weights, and highlighted text;
* a **model card**: Hugging Face's `ModelCard` (Markdown with YAML metadata), sections from
  the measurements.

The inputs that are easy to get wrong are checked, with a message that says what to fix: logits
passed as probabilities, predictions and labels of different lengths, an empty test set, a
confidence of 95 instead of 0.95.
"""

from __future__ import annotations

import copy
import html
import inspect
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, cohen_kappa_score
from torch import nn

from llm_tutorial import chat, runtime

__all__ = [
    "SentenceTopics",
    "sentence_topics",
    "bootstrap_ci",
    "mcnemar",
    "paired_bootstrap",
    "check_probabilities",
    "softmax",
    "reliability_table",
    "expected_calibration_error",
    "fit_temperature",
    "PERTURBATIONS",
    "perturb",
    "robustness_curve",
    "perplexity",
    "pass_at_k",
    "pass_at_k_table",
    "bleu",
    "sentence_bleu",
    "rouge_l",
    "judge_prompt",
    "pairwise_prompt",
    "load_preference_pairs",
    "preference_prompt",
    "choice_log_odds",
    "choice_probability",
    "cohen_kappa",
    "swap_average",
    "position_bias",
    "calibrate_threshold",
    "judge_agreement",
    "fit_bradley_terry",
    "GENDER_SWAPS",
    "swap_words",
    "replace_spans",
    "FEMALE_NAMES",
    "MALE_NAMES",
    "substitute_names",
    "counterfactual_table",
    "Attribution",
    "integrated_gradients",
    "randomised_copy",
    "rank_correlation",
    "attention_weights",
    "highlight_html",
    "markdown_table",
    "model_card",
]


# ------------------------------------------------------------------------------ input checks


def _labels(values: Any, name: str) -> np.ndarray:
    """A non-empty 1-D array of class ids 0, 1, 2, ... (bools and whole floats become int64)."""
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one class id per example), got shape {array.shape}; "
                         "for logits or probabilities take .argmax(-1) first")
    if len(array) == 0:
        raise ValueError(f"{name} is empty: evaluate on at least one example")
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not (np.issubdtype(array.dtype, np.number) and np.all(np.mod(array, 1) == 0) and array.min() >= 0):
        raise ValueError(f"{name} must hold class ids 0, 1, 2, ... (whole numbers >= 0), got {array[:4]}")
    return array if np.issubdtype(array.dtype, np.integer) else array.astype(np.int64)


def _pair(y_true: Any, y_pred: Any, names: tuple[str, str] = ("y_true", "y_pred")
          ) -> tuple[np.ndarray, np.ndarray]:
    a, b = _labels(y_true, names[0]), _labels(y_pred, names[1])
    if len(a) != len(b):
        raise ValueError(f"{names[0]} has {len(a)} entries but {names[1]} has {len(b)}: pass one "
                         "prediction per example, in the same order")
    return a, b


def check_probabilities(probs: Any, n_examples: int | None = None, atol: float = 1e-4
                        ) -> np.ndarray:
    """`probs` as a float array `(examples, classes)` whose rows are probability distributions:
    finite, in [0, 1], summing to 1 (within `atol`). Raises ValueError naming the first bad row."""
    array = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs,
                       dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise ValueError(f"probs must have shape (examples > 0, classes >= 2), got {array.shape}")
    if n_examples is not None and array.shape[0] != n_examples:
        raise ValueError(f"probs has {array.shape[0]} rows for {n_examples} labels: pass one row per example")
    if not np.all(np.isfinite(array)):
        raise ValueError("probs contains NaN or inf: check the model's logits")
    if array.min() < 0 or array.max() > 1:
        raise ValueError("probs must lie in [0, 1]: did you pass logits? apply softmax first")
    sums = array.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > atol)
    if len(bad):
        raise ValueError(f"row {bad[0]} of probs sums to {sums[bad[0]]:.6f}, not 1: pass "
                         "softmax probabilities (or use evaluation.softmax on logits)")
    return array


# ------------------------------------------------------------------------------ data


@dataclass
class SentenceTopics:
    """BBC News sentences labelled with their article's topic; train, validation and test
    sentences come from *different* articles, so no article leaks across the splits."""

    train_texts: list[str]
    train_labels: list[int]
    val_texts: list[str]
    val_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]

    def __repr__(self) -> str:
        return (f"SentenceTopics(train={len(self.train_texts)}, val={len(self.val_texts)}, "
                f"test={len(self.test_texts)}, labels={self.label_names})")


def sentence_topics(n_train: int, n_val: int, n_test: int, seed: int = 0, min_words: int = 8,
                    max_words: int = 40) -> SentenceTopics:
    """
    A harder, evaluation-friendly version of notebook 04's task: classify one *sentence* of a
    BBC article by the article's topic. Articles are split 80/20 (notebook 04's split); the
    last 15% of the training articles give the validation sentences. Sentences of
    `min_words`..`max_words` words are drawn without replacement (seeded). Headlines are skipped.
    """
    from llm_tutorial import assets
    from llm_tutorial.token_classification import split_sentences

    data = assets.load_bbc_news(seed=seed)
    cut = int(len(data.train_texts) * 0.85)

    def draw(texts: Sequence[str], labels: Sequence[int], n: int, salt: int) -> tuple[list, list]:
        pool = [(s, label) for text, label in zip(texts, labels, strict=True)
                for s in split_sentences(text.split("\n", 1)[-1])
                if min_words <= len(s.split()) <= max_words]
        chosen = random.Random(seed * 1000 + salt).sample(pool, n)
        return [s for s, _ in chosen], [label for _, label in chosen]

    train = draw(data.train_texts[:cut], data.train_labels[:cut], n_train, 1)
    val = draw(data.train_texts[cut:], data.train_labels[cut:], n_val, 2)
    test = draw(data.test_texts, data.test_labels, n_test, 3)
    return SentenceTopics(*train, *val, *test, data.label_names)


# ------------------------------------------------------------------------------ classification


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if n_resamples < 10 or not 0 < confidence < 1:
        raise ValueError(f"need n_resamples >= 10 (1,000 is typical) and a confidence in (0, 1) such "
                         f"as 0.95, got n_resamples={n_resamples!r}, confidence={confidence!r}")


def bootstrap_ci(metric: Callable[..., float], *arrays: Any, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0, return_samples: bool = False
                 ) -> dict[str, Any]:
    """
    Percentile bootstrap: resample the *examples* with replacement `n_resamples` times,
    recompute `metric(*arrays)` on each resample, and report the middle `confidence` of those
    values. `arrays` are per-example arrays of equal length (e.g. `y_true, y_pred`), resampled
    with the same indices. The interval says how much the score would move on another test set
    of the same size drawn from the same distribution. `return_samples=True` adds the
    resampled values under `"samples"` (for a histogram).
    """
    _check_resampling(n_resamples, confidence)
    arrays_np = [np.asarray(a) for a in arrays]
    lengths = [len(a) for a in arrays_np]
    if not lengths or min(lengths) == 0 or len(set(lengths)) > 1:
        raise ValueError(f"pass non-empty, equally long per-example arrays, e.g. bootstrap_ci("
                         f"accuracy_score, y_true, y_pred); got lengths {lengths}")
    n = lengths[0]
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        values[i] = metric(*(a[idx] for a in arrays_np))
    alpha = (1 - confidence) / 2
    out = {"estimate": float(metric(*arrays_np)), "low": float(np.quantile(values, alpha)),
           "high": float(np.quantile(values, 1 - alpha)), "std": float(values.std(ddof=1))}
    if return_samples:
        out["samples"] = values
    return out


def mcnemar(y_true: Any, pred_a: Any, pred_b: Any, exact: bool | None = None) -> dict[str, Any]:
    """
    McNemar's test for two classifiers on the *same* examples. Only the discordant examples
    matter: $b$ = A right and B wrong, $c$ = A wrong and B right. Under "equally accurate",
    each discordant example is a fair coin, so $b \\sim \\text{Binomial}(b + c, \\tfrac12)$.

    * exact (default when $b + c < 25$): two-sided binomial p-value;
    * otherwise $\\chi^2 = (|b - c| - 1)^2 / (b + c)$ with 1 degree of freedom (continuity
      corrected).
    """
    from scipy import stats

    truth, a = _pair(y_true, pred_a, ("y_true", "pred_a"))
    _, b_pred = _pair(y_true, pred_b, ("y_true", "pred_b"))
    a_right, b_right = a == truth, b_pred == truth
    b = int(np.sum(a_right & ~b_right))
    c = int(np.sum(~a_right & b_right))
    use_exact = (b + c < 25) if exact is None else bool(exact)
    if b + c == 0:
        statistic, p_value = 0.0, 1.0
    elif use_exact:
        statistic = float(min(b, c))
        p_value = float(min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)))
    else:
        statistic = (abs(b - c) - 1) ** 2 / (b + c)
        p_value = float(stats.chi2.sf(statistic, 1))
    return {"a_only_right": b, "b_only_right": c, "statistic": float(statistic),
            "p_value": p_value, "method": "exact binomial" if use_exact else "chi-square (corrected)"}


def paired_bootstrap(metric: Callable[[np.ndarray, np.ndarray], float], y_true: Any, pred_a: Any,
                     pred_b: Any, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
                     ) -> dict[str, float]:
    """
    The paired bootstrap (Koehn 2004; Berg-Kirkpatrick et al. 2012): resample examples, score
    *both* models on each resample, and look at the distribution of the difference
    $\\delta = m(A) - m(B)$. Returns the observed $\\delta$, its percentile interval, and the
    two-sided p-value $2 \\min(P(\\delta^* \\le 0), P(\\delta^* \\ge 0))$. Pairing removes the
    noise both models share (the same hard examples), so it is far more sensitive than
    comparing two separate intervals.
    """
    _check_resampling(n_resamples, confidence)
    truth, a = _pair(y_true, pred_a, ("y_true", "pred_a"))
    _, b = _pair(y_true, pred_b, ("y_true", "pred_b"))
    rng = np.random.default_rng(seed)
    n = len(truth)
    deltas = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        deltas[i] = metric(truth[idx], a[idx]) - metric(truth[idx], b[idx])
    alpha = (1 - confidence) / 2
    p = 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0))
    return {"delta": float(metric(truth, a) - metric(truth, b)),
            "low": float(np.quantile(deltas, alpha)), "high": float(np.quantile(deltas, 1 - alpha)),
            "p_value": float(min(1.0, p))}


# ------------------------------------------------------------------------------ calibration


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, computed stably in float64."""
    z = np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits,
                   dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or temperature <= 0:
        raise ValueError(f"need logits of shape (examples > 0, classes) and a temperature > 0, got "
                         f"shape {z.shape} and temperature {temperature!r}")
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_table(probs: Any, labels: Any, n_bins: int = 10) -> pd.DataFrame:
    """
    Group the predictions by their confidence $\\hat p = \\max_c p_c$ into `n_bins` equal-width
    bins $(\\tfrac{m-1}{M}, \\tfrac{m}{M}]$ and compare, in each, the mean confidence with the
    accuracy. A calibrated model is right 80% of the time when it says 0.8. Empty bins are
    kept with count 0 (and NaN means), so every table has `n_bins` rows.
    """
    y = _labels(labels, "labels")
    p = check_probabilities(probs, len(y))
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    # bin m holds (edges[m], edges[m+1]]; a confidence of exactly 0 cannot happen (max of >= 2)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    rows = []
    for m in range(n_bins):
        inside = which == m
        count = int(inside.sum())
        rows.append({"low": edges[m], "high": edges[m + 1], "count": count,
                     "confidence": confidence[inside].mean() if count else np.nan,
                     "accuracy": correct[inside].mean() if count else np.nan})
    table = pd.DataFrame(rows)
    table["gap"] = table["confidence"] - table["accuracy"]
    return table


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """
    $$\\mathrm{ECE} = \\sum_{m=1}^{M} \\frac{|B_m|}{n}\\, \\bigl|\\operatorname{acc}(B_m) -
    \\operatorname{conf}(B_m)\\bigr|$$

    the average gap of the reliability diagram, weighted by how many predictions fall in each
    bin (Guo et al., 2017). 0 is perfect; a model that always says 0.99 and is right 80% of
    the time has ECE 0.19.
    """
    table = reliability_table(probs, labels, n_bins)
    filled = table[table["count"] > 0]
    return float((filled["count"] * filled["gap"].abs()).sum() / filled["count"].sum())


def fit_temperature(logits: Any, labels: Any, max_iter: int = 200) -> float:
    """
    **Temperature scaling** (Guo et al., 2017): one scalar $T > 0$ fitted on held-out data by
    minimising the negative log-likelihood of $\\operatorname{softmax}(z / T)$. Dividing all
    logits by the same $T$ never changes the argmax, so accuracy is untouched; $T > 1$ softens
    over-confident predictions, $T < 1$ sharpens timid ones. Fit it on *validation* logits and
    apply it to the test logits. We optimise $\\log T$ with L-BFGS so $T$ stays positive.
    """
    y = torch.as_tensor(_labels(labels, "labels"))
    z = torch.as_tensor(np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor)
                                   else logits, dtype=np.float64))
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits must have shape ({len(y)}, classes), one row per label, got {tuple(z.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


# ------------------------------------------------------------------------------ robustness

PERTURBATIONS = ("char_noise", "word_dropout", "casing", "paraphrase")

# hand-made synonyms for frequent news words: a cheap stand-in for a paraphrase model that
# keeps the meaning and changes the surface form
SYNONYMS = {
    "said": "stated", "says": "states", "big": "large", "large": "big", "small": "little",
    "new": "fresh", "show": "display", "shows": "displays", "buy": "purchase", "bought": "purchased",
    "help": "assist", "start": "begin", "started": "began", "begin": "start", "end": "finish",
    "ended": "finished", "rise": "increase", "rose": "increased", "fall": "drop", "fell": "dropped",
    "fast": "quick", "quick": "fast", "hard": "difficult", "difficult": "hard", "also": "too",
    "but": "however", "however": "but", "about": "around", "around": "about", "many": "numerous",
    "people": "individuals", "firm": "company", "company": "firm", "government": "administration",
    "minister": "secretary", "match": "game", "game": "match", "win": "victory", "won": "secured",
    "film": "movie", "movie": "film", "music": "songs", "phone": "handset", "users": "customers",
    "customers": "users", "told": "informed",
    "make": "create", "made": "created", "get": "obtain", "got": "obtained", "think": "believe",
    "important": "significant", "major": "key", "key": "major", "market": "marketplace",
    "profit": "earnings", "profits": "earnings", "plan": "proposal", "plans": "proposals",
    "players": "athletes", "team": "side", "star": "celebrity", "award": "prize", "awards": "prizes",
    "technology": "tech", "computer": "PC", "mobile": "cellular", "election": "vote",
    "party": "faction", "chief": "head", "boss": "head", "deal": "agreement", "shares": "stocks",
}


def _check_strength(strength: float) -> float:
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1] (the fraction of words touched), got {strength!r}")
    return float(strength)


def _recase(word: str, rng: random.Random) -> str:
    return rng.choice((word.upper(), word.lower(), word.capitalize(), word.swapcase()))


def _synonym(word: str) -> str | None:
    core = word.strip(".,;:!?\"'()")
    replacement = SYNONYMS.get(core.lower())
    if replacement is None:
        return None
    if core[:1].isupper():
        replacement = replacement[:1].upper() + replacement[1:]
    return word.replace(core, replacement, 1)


def perturb(text: str, kind: str, strength: float, seed: int = 0) -> str:
    """
    A seeded perturbation of `text` that leaves its meaning (its topic) intact:

    * `char_noise`: each word of ≥ 3 letters gets, with probability `strength`, one keyboard
      slip (notebook 04's `add_typos`);
    * `word_dropout`: each word is deleted with probability `strength` (at least one stays);
    * `casing`: each word is upper-, lower-, title- or swap-cased with probability `strength`;
    * `paraphrase`: each word with an entry in `SYNONYMS` is replaced with probability
      `strength` (a synonym substitution, the cheapest paraphrase).

    `strength` 0 returns the text unchanged (with words re-joined by single spaces).
    """
    from llm_tutorial.finetuning import add_typos, random_deletion

    if not text.strip():
        raise ValueError("text is empty or blank: there is nothing to perturb")
    if kind not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation {kind!r}: choose one of {PERTURBATIONS}")
    strength = _check_strength(strength)
    rng = random.Random(f"{seed}:{kind}:{text}")  # the same text gets the same noise in every run
    if kind == "char_noise":
        return add_typos(text, strength, seed=rng.randrange(2**31))
    if kind == "word_dropout":
        if strength == 1:  # every word drawn for deletion; one survives, as at any strength
            return rng.choice(text.split())
        return random_deletion(text, strength, rng)
    words = text.split()
    for i, word in enumerate(words):
        if kind == "casing" and rng.random() < strength:
            words[i] = _recase(word, rng)
        elif kind == "paraphrase":
            replacement = _synonym(word)
            if replacement is not None and rng.random() < strength:
                words[i] = replacement
    return " ".join(words)


def robustness_curve(predict: Callable[[list[str]], Any], texts: Sequence[str], labels: Any,
                     strengths: Sequence[float], kinds: Sequence[str] = PERTURBATIONS, seed: int = 0
                     ) -> pd.DataFrame:
    """Accuracy of `predict` (texts → class ids) on perturbed copies of `texts`: one row per
    (kind, strength). Strength 0 is computed once and shared by every kind."""
    from llm_tutorial.finetuning import check_texts

    texts = check_texts(texts)
    y = _labels(labels, "labels")
    if len(y) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(y)} labels")
    strengths = [_check_strength(s) for s in strengths]
    clean = accuracy_score(y, np.asarray(predict(list(texts))))
    rows = []
    for kind in kinds:
        for strength in strengths:
            if strength == 0:
                acc = clean
            else:
                noisy = [perturb(t, kind, strength, seed) for t in texts]
                acc = accuracy_score(y, np.asarray(predict(noisy)))
            rows.append({"kind": kind, "strength": strength, "accuracy": acc})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ generation metrics


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 256,
               batch_size: int = 8) -> dict[str, float]:
    """
    Perplexity of a causal LM on `texts`:
    $\\mathrm{PPL} = \\exp\\bigl(-\\tfrac{1}{N} \\sum_t \\log p(x_t \\mid x_{<t})\\bigr)$ over all
    predicted tokens of all texts (each text truncated to `max_length` tokens; its first token
    is context only). Lower is better, and it is only comparable between models that share a
    tokenizer: the same text cut into fewer, rarer tokens has a different $N$.
    """
    from llm_tutorial.finetuning import check_texts
    from llm_tutorial.trainer import eval_mode, model_device

    texts = check_texts(texts)
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens = 0.0, 0
    with eval_mode(model):
        for start in runtime.batch_progress(range(0, len(texts), batch_size), desc="perplexity"):
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length]
                   for t in texts[start:start + batch_size]]
            width = max(len(i) for i in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for row, seq in enumerate(ids):
                input_ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            targets = input_ids[:, 1:].to(device)
            keep = mask[:, 1:].to(device).bool()
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
            total_nll += float(nll[keep].sum())
            total_tokens += int(keep.sum())
    if total_tokens == 0:
        raise ValueError("every text is a single token (is max_length < 2?): nothing to predict")
    mean = total_nll / total_tokens
    return {"nll": mean, "perplexity": math.exp(mean), "tokens": total_tokens}


def pass_at_k(n: int, c: int, k: int) -> float:
    """
    The unbiased pass@k estimator (Chen et al., 2021): with $n$ samples of which $c$ are
    correct, the probability that at least one of $k$ samples drawn *without replacement* is
    correct, $1 - \\binom{n-c}{k} / \\binom{n}{k}$. Computed as a product to avoid huge
    binomials. Plugging $\\hat p = c/n$ into $1 - (1 - \\hat p)^k$ instead is biased low:
    that function is concave in $\\hat p$ (Jensen's inequality).
    """
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need n >= 1, 0 <= c <= n and 1 <= k <= n (draw at least k samples per "
                         f"problem), got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_table(correct: Any, ks: Sequence[int]) -> dict[int, float]:
    """`correct` is a boolean matrix (problems × n samples); returns mean pass@k per k."""
    matrix = np.asarray(correct, dtype=bool)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"correct must be a non-empty 2-D array (problems, samples), got {matrix.shape}")
    n = matrix.shape[1]
    return {k: float(np.mean([pass_at_k(n, int(c), k) for c in matrix.sum(axis=1)])) for k in ks}


def _check_pairs(predictions: Any, references: Any) -> tuple[list[str], list[str]]:
    # one string would be scored character by character, without any error
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("pass lists of strings, one per example: bleu([hypothesis], [reference])")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: pass "
                         "one reference per prediction")
    if not predictions:
        raise ValueError("predictions is empty: score at least one")
    return list(predictions), list(references)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _bleu_stats(prediction: str, reference: str, max_order: int) -> np.ndarray:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    hyp, ref = tokenize(prediction.rstrip()).split(), tokenize(reference.rstrip()).split()
    stats = [len(hyp), len(ref)]
    for n in range(1, max_order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        stats += [sum(min(count, r[g]) for g, count in h.items()), max(len(hyp) - n + 1, 0)]
    return np.asarray(stats, dtype=np.int64)


def _bleu_from_stats(stats: np.ndarray, max_order: int, smooth: str, effective_order: bool) -> float:
    hyp_len, ref_len = int(stats[0]), int(stats[1])
    correct, total = stats[2::2], stats[3::2]
    if not correct.any():
        return 0.0
    brevity = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)
    logs, doubling = [], 1.0
    for n in range(max_order):
        if total[n] == 0:
            break
        if correct[n] == 0:
            if smooth == "none":
                return 0.0
            doubling *= 2  # "exp" smoothing: 1/2, 1/4, ... of a match for empty orders
            logs.append(math.log(1 / (doubling * total[n])))
        else:
            logs.append(math.log(correct[n] / total[n]))
    if not effective_order and len(logs) < max_order:
        return 0.0  # an order without any hypothesis n-gram has precision 0 (sacreBLEU)
    return 100 * brevity * math.exp(sum(logs) / len(logs))


def bleu(predictions: Sequence[str], references: Sequence[str], smooth: str = "exp",
         max_order: int = 4) -> float:
    """
    Corpus BLEU (Papineni et al., 2002) as sacreBLEU computes it, on 0-100:

    $$\\mathrm{BLEU} = \\mathrm{BP} \\cdot \\exp\\Bigl(\\tfrac{1}{N}\\sum_{n=1}^{N} \\log p_n\\Bigr),
    \\quad \\mathrm{BP} = \\min\\bigl(1, e^{1 - r/h}\\bigr)$$

    $p_n$ = clipped n-gram matches / hypothesis n-grams, summed over the corpus; $h, r$ =
    hypothesis and reference lengths in tokens (13a tokenization). `smooth="exp"` gives an
    order with no match $1/2^k$ of a match instead of zeroing the score.
    """
    predictions, references = _check_pairs(predictions, references)
    if smooth not in ("exp", "none"):
        raise ValueError(f"smooth must be 'exp' or 'none', got {smooth!r}")
    stats = sum(_bleu_stats(p, r, max_order) for p, r in zip(predictions, references, strict=True))
    return _bleu_from_stats(stats, max_order, smooth, effective_order=False)


def sentence_bleu(prediction: str, reference: str) -> float:
    """BLEU of one sentence, with exp smoothing and *effective order* (orders longer than the
    sentence are skipped), as `sacrebleu.sentence_bleu` computes it."""
    return _bleu_from_stats(_bleu_stats(prediction, reference, 4), 4, "exp", effective_order=True)


_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """
    ROUGE-L F1 (Lin, 2004): the longest common subsequence (LCS) of words,
    $P = \\mathrm{LCS}/|\\text{pred}|$, $R = \\mathrm{LCS}/|\\text{ref}|$, $F = 2PR/(P+R)$.
    Words are lower-cased runs of letters and digits, as `rouge-score` tokenizes them (without
    its optional stemmer). Order matters, but gaps are free.
    """
    pred, ref = _ROUGE_TOKEN.findall(prediction.lower()), _ROUGE_TOKEN.findall(reference.lower())
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


# ------------------------------------------------------------------------------ LLM-as-judge


def judge_prompt(tokenizer, instruction: str, answer: str, reference: str | None = None) -> str:
    """A yes/no grading prompt in the model's chat format, ending where the verdict goes.
    With `reference`, the judge may compare against the correct answer (reference-guided)."""
    from llm_tutorial.chat import chat_prompt

    text = (f"You are grading an answer.\nTask: {instruction}\nAnswer: {answer}\n")
    if reference is not None:
        text += f"Correct answer: {reference}\n"
    text += "Is the answer correct? Reply with Yes or No."
    return chat_prompt(tokenizer, text)


def pairwise_prompt(tokenizer, instruction: str, first: str, second: str) -> str:
    """An A/B preference prompt: which of two answers is better? (swap them to test position
    bias)."""
    from llm_tutorial.chat import chat_prompt

    text = (f"Which answer to the task is correct?\nTask: {instruction}\nAnswer A: {first}\n"
            f"Answer B: {second}\nReply with A or B.")
    return chat_prompt(tokenizer, text)


def load_preference_pairs() -> list[dict[str, str]]:
    """
    The 1,100 vendored preference records (Raschka, *LLMs from scratch*, chapter 7): the
    instructions of `assets.load_instruction_data()`, in the same order, each with a `chosen`
    and a `rejected` answer. One of the two is the original answer, the other a rewrite by
    Llama 3.1 70B; the *chosen* one is the more polite of the two.
    """
    import json

    from llm_tutorial import assets

    path = assets.asset_path("instruction_data").with_name("instruction-data-with-preference.json")
    return json.loads(path.read_text(encoding="utf-8"))


def preference_prompt(tokenizer, instruction: str, first: str, second: str) -> str:
    """A pairwise yes/no question in the model's chat format (a one-line system message, the
    question, then the task and the answers A and B), with the criterion of the preference data
    spelled out: is A more polite and helpful than B? Swap `first` and `second` to ask the same
    question with the answers in the other order."""
    # the question first: the part every prompt shares, read once by `choice_log_odds`
    text = ("Is A more polite and helpful than B? Reply with Yes or No.\n"
            f"Task: {instruction}\nA: {first}\nB: {second}")
    messages = [{"role": "system", "content": "You are a fair judge."},
                {"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _option_ids(tokenizer, option: str) -> list[int]:
    ids = set()
    for variant in (option, " " + option, option.lower(), " " + option.lower()):
        pieces = tokenizer(variant, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1 and pieces[0] != tokenizer.unk_token_id:
            ids.add(pieces[0])
    if not ids:  # otherwise its probability would be 0 and the log-odds infinite
        raise ValueError(f"option {option!r} is not a single token here: use e.g. 'Yes'/'No' or 'A'/'B'")
    return sorted(ids)


def _after_prefix(rest: list[list[int]], shared: int, pad: int, device: torch.device
                  ) -> dict[str, torch.Tensor]:
    """Model inputs for the tokens that follow a cached `shared`-token prefix: left-padded (so
    every prompt ends at the last position), an attention mask over prefix + rest, and position
    ids that continue the prefix's (shared, shared + 1, ...) whatever the padding."""
    width = max(len(r) for r in rest)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)
    return {"input_ids": input_ids,
            "attention_mask": torch.cat([mask.new_ones(len(rest), shared), mask], 1),
            "position_ids": (shared + mask.cumsum(-1) - 1).clamp(min=shared)}


@torch.no_grad()
def choice_log_odds(model: nn.Module, tokenizer, prompts: Sequence[str],
                    options: tuple[str, str] = ("Yes", "No"), batch_size: int = 8) -> np.ndarray:
    """
    For each prompt, the judge's **log-odds** of `options[0]` against `options[1]` as the next
    token: $\\log p_0 - \\log p_1$, each $p$ summed over the option's spellings ("Yes", " yes",
    ...). One forward pass per prompt, no sampling: a deterministic, graded verdict. 0 means
    "no preference"; a judge whose $p_0$ is tiny next to $p_1$ still ranks answers by how far
    below 0 it sits, which is what a calibrated threshold uses.

    **Prefix caching:** the tokens that begin every prompt (a judge's instructions) are read
    once, and their keys and values (notebook 02's KV cache) are reused for every prompt; only
    the rest is computed per prompt. The numbers are those of full forward passes.
    """
    from llm_tutorial.finetuning import check_texts
    from llm_tutorial.instructions import shared_prefix_length
    from llm_tutorial.trainer import eval_mode, model_device

    prompts = check_texts(prompts, "prompts")
    first, second = _option_ids(tokenizer, options[0]), _option_ids(tokenizer, options[1])
    device = model_device(model)
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    shared = shared_prefix_length(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    parameters = inspect.signature(model.forward).parameters
    # only the last position's logits are needed: skip the vocabulary projection elsewhere
    keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    cache_kw = chat.kv_cache_argument(model)
    order = np.argsort([len(row) for row in ids], kind="stable")  # similar lengths: little padding
    out = np.empty(len(ids))
    with eval_mode(model):
        prefix_cache = None
        if shared:
            prefix = torch.tensor([ids[0][:shared]], device=device)
            output = model(input_ids=prefix, use_cache=True, **keep)
            prefix_cache = chat.kv_cache_of(output)
        for start in runtime.batch_progress(range(0, len(ids), batch_size), desc="judge"):
            rows = order[start:start + batch_size]
            batch = _after_prefix([ids[i][shared:] for i in rows], shared, pad, device)
            cache = None
            if prefix_cache is not None:  # a copy per batch: the forward pass appends to it
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(rows))
            logits = model(**batch, use_cache=cache is not None, **{cache_kw: cache},
                           **keep).logits[:, -1].float()
            log_probs = logits.log_softmax(-1)
            a, b = log_probs[:, first].logsumexp(-1), log_probs[:, second].logsumexp(-1)
            out[rows] = (a - b).double().cpu().numpy()
    return out


def choice_probability(model: nn.Module, tokenizer, prompts: Sequence[str],
                       options: tuple[str, str] = ("Yes", "No"), batch_size: int = 8) -> np.ndarray:
    """The judge's probability of `options[0]` against `options[1]`, $p_0 / (p_0 + p_1)$: the
    sigmoid of `choice_log_odds`."""
    return 1.0 / (1.0 + np.exp(-choice_log_odds(model, tokenizer, prompts, options, batch_size)))


def cohen_kappa(a: Any, b: Any) -> float:
    """
    Cohen's kappa, scikit-learn's `cohen_kappa_score`: agreement between two raters beyond
    chance, $\\kappa = (p_o - p_e) / (1 - p_e)$, with $p_o$ the observed agreement and
    $p_e = \\sum_c p_a(c)\\, p_b(c)$ the agreement expected if each rated at random with its own
    label frequencies. 1 = perfect, 0 = chance level (a judge that always says "yes" gets
    $\\kappa = 0$ however often it is "right"). Defined as 1 where both raters give one and the
    same label throughout ($p_e = 1$; scikit-learn returns NaN there, which would poison a bootstrap).
    """
    x, y = _pair(a, b, ("a", "b"))
    if len(np.union1d(x, y)) == 1:
        return 1.0
    return float(cohen_kappa_score(x, y))


def _scores(values: Any, name: str) -> np.ndarray:
    """A non-empty 1-D array of finite float scores."""
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                       dtype=np.float64)
    if array.ndim != 1 or len(array) == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite scores, got {array[:4]} "
                         f"of shape {array.shape}")
    return array


def _score_pairs(score_ab: Any, score_ba: Any) -> tuple[np.ndarray, np.ndarray]:
    """The judge's scores of the same pairs in both orders, checked to line up."""
    ab, ba = _scores(score_ab, "score_ab"), _scores(score_ba, "score_ba")
    if len(ab) != len(ba):
        raise ValueError(f"score_ab has {len(ab)} entries but score_ba has {len(ba)}: one per pair and order")
    return ab, ba


def _verdict_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """A judge's scores and the 0/1 labels it should reproduce, one label per score."""
    x, y = _scores(scores, "scores"), _labels(labels, "labels")
    if len(x) != len(y) or y.max() > 1:
        raise ValueError(f"pass one 0/1 label per score (1 = the judge should say yes), got {len(x)} "
                         f"scores and {len(y)} labels with values {sorted(set(y.tolist()))}")
    return x, y


def swap_average(score_ab: Any, score_ba: Any) -> np.ndarray:
    """
    **Position debiasing.** Ask the judge about each pair twice: `score_ab[i]` is its score
    (log-odds) for "the first answer wins" with pair *i* shown as (A, B), `score_ba[i]` the
    same question with the two answers swapped. The debiased score of "A beats B" is

    $$d = \\tfrac12\\bigl(s(A, B) - s(B, A)\\bigr).$$

    A judge that adds a constant $c$ for whatever stands first (or for saying "Yes") adds $c$ to
    both terms, and it cancels. $d$ is antisymmetric: swapping the answers flips its sign, so
    with the threshold at 0 the debiased judge names the same winner in both orders.
    """
    ab, ba = _score_pairs(score_ab, score_ba)
    return (ab - ba) / 2


def position_bias(score_ab: Any, score_ba: Any, threshold: float = 0.0) -> dict[str, float]:
    """
    How much a pairwise judge reads *positions*: the verdict in each order is "the first answer
    wins" when the score is above `threshold`.

    * `first_rate`: share of all verdicts (both orders) that name the first-shown answer; a
      judge without position bias is near 0.5 whatever the answers;
    * `consistent`: share of pairs whose winner is the same answer in both orders (it names the
      first answer in one order and the second in the other); 1.0 for a position-blind judge.
    """
    ab, ba = _score_pairs(score_ab, score_ba)
    first_ab, first_ba = ab > threshold, ba > threshold
    return {"first_rate": float(np.mean(np.r_[first_ab, first_ba])),
            "consistent": float(np.mean(first_ab != first_ba))}


def calibrate_threshold(scores: Any, labels: Any) -> float:
    """
    The verdict threshold that agrees best with the labels of a **dev split**: the `t` that
    maximises Cohen's kappa between `scores > t` and `labels` (0/1). Candidates are the
    midpoints between consecutive distinct scores, plus one below the lowest and one above the
    highest (the "always yes" and "always no" judges, both at kappa 0); among tied best ones the
    lowest wins. Fit it on dev and *apply* it to test: a threshold tuned on the test set
    flatters the judge.
    """
    x, y = _verdict_labels(scores, labels)
    values = np.unique(x)
    candidates = np.r_[values[0] - 1.0, (values[:-1] + values[1:]) / 2, values[-1] + 1.0]
    kappas = [cohen_kappa(y, (x > t).astype(int)) for t in candidates]
    return float(candidates[int(np.argmax(kappas))])


def judge_agreement(scores: Any, labels: Any, threshold: float = 0.0, n_resamples: int = 1000,
                    confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """
    Score a judge like an instrument: its verdict is "yes" when `scores > threshold` (take the
    threshold from `calibrate_threshold` on a *dev* split, then call this on *test*). Returns
    Cohen's kappa with a percentile-bootstrap interval over the items (`bootstrap_ci`), the
    accuracy, the share of "yes" verdicts, and the number of items.
    """
    x, y = _verdict_labels(scores, labels)
    verdict = (x > threshold).astype(int)
    kappa = bootstrap_ci(cohen_kappa, y, verdict, n_resamples=n_resamples, confidence=confidence,
                         seed=seed)
    return {"kappa": kappa["estimate"], "low": kappa["low"], "high": kappa["high"],
            "accuracy": accuracy_score(y, verdict), "yes_rate": float(verdict.mean()), "n": len(y)}


def fit_bradley_terry(chosen: Any, rejected: Any, C: float = 1.0) -> np.ndarray:
    """
    A **reward model** head: weights $w$ of a linear reward $r(x) = w^\\top x$ on the answers'
    features, fitted so that

    $$P(\\text{chosen} \\succ \\text{rejected}) = \\sigma\\bigl(r(x_c) - r(x_r)\\bigr)$$

    (the Bradley–Terry model; the loss of RLHF reward models, Ouyang et al. 2022). That is
    logistic regression without an intercept on the differences $x_c - x_r$; each pair goes in
    both ways round (label 1, and its negation with label 0) so the two classes balance. The
    L2 penalty is $\\lVert w\\rVert^2 / (2C)$ next to the summed loss of those rows
    (scikit-learn's `C`).
    """
    from sklearn.linear_model import LogisticRegression

    xc, xr = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    if xc.ndim != 2 or xc.shape != xr.shape or len(xc) == 0:
        raise ValueError(f"chosen and rejected must be (pairs, features) arrays of one shape, got "
                         f"{xc.shape} and {xr.shape}")
    diff = xc - xr
    fit = LogisticRegression(C=C, fit_intercept=False, max_iter=5000, tol=1e-8)
    fit.fit(np.r_[diff, -diff], np.r_[np.ones(len(diff)), np.zeros(len(diff))])
    return fit.coef_[0]


# ------------------------------------------------------------------------------ counterfactual bias

GENDER_SWAPS = {
    "he": "she", "she": "he", "him": "her", "his": "her", "her": "his", "himself": "herself",
    "herself": "himself", "man": "woman", "woman": "man", "men": "women", "women": "men",
    "mr": "ms", "ms": "mr", "mrs": "mr", "boy": "girl", "girl": "boy", "father": "mother",
    "mother": "father", "son": "daughter", "daughter": "son", "husband": "wife", "wife": "husband",
    "brother": "sister", "sister": "brother", "king": "queen", "queen": "king",
    "chairman": "chairwoman", "chairwoman": "chairman", "sportsman": "sportswoman",
}


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_words(text: str, mapping: Mapping[str, str] = GENDER_SWAPS) -> str:
    """Replace every whole word found in `mapping` (case-insensitive keys, all swapped at once,
    so he→she and she→he do not undo each other), keeping the original capitalisation. "her"
    is ambiguous (his/him); we map it to "his", the more frequent reading in news text."""
    lower = {k.lower(): v for k, v in mapping.items()}
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(lower, key=len, reverse=True))
                         + r")\b", re.IGNORECASE)
    return pattern.sub(lambda m: _match_case(m.group(0), lower[m.group(0).lower()]), text)


def replace_spans(text: str, spans: Sequence[tuple[int, int]],
                  replacement: str | Mapping[str, str]) -> str:
    """Replace the character spans `(start, end)` of `text` (e.g. spaCy PERSON entities) with
    `replacement`, or with `replacement[surface text]` when it is a mapping; spans must not
    overlap."""
    out, last = [], 0
    for start, end in sorted(spans):
        if not (last <= start < end <= len(text)):
            raise ValueError(f"bad or overlapping span ({start}, {end}) for {len(text)} characters")
        new = replacement if isinstance(replacement, str) else replacement[text[start:end]]
        out += [text[last:start], new]
        last = end
    return "".join(out + [text[last:]])


# common first names, ten each (England and Wales birth registrations): one attribute changes,
# nothing else about the sentence
FEMALE_NAMES = ("Emily", "Sarah", "Olivia", "Jessica", "Sophie", "Hannah", "Laura", "Rachel", "Amy",
                "Claire")
MALE_NAMES = ("James", "David", "Thomas", "Daniel", "Michael", "Jack", "Oliver", "Matthew", "Paul",
              "Andrew")


def substitute_names(texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]],
                     names: Sequence[str], seed: int = 0) -> list[str]:
    """For each text, replace its person spans (character offsets, e.g. spaCy's PERSON
    entities) with names drawn from `names` (seeded; the same surface form gets the same
    name within a text, different people get different names while names last)."""
    rng = random.Random(seed)
    out = []
    for text, text_spans in zip(texts, spans, strict=True):
        mentions = sorted({text[s:e] for s, e in text_spans})
        chosen = rng.sample(list(names), min(len(mentions), len(names)))
        pick = {m: chosen[i % len(chosen)] for i, m in enumerate(mentions)}
        out.append(replace_spans(text, text_spans, pick))
    return out


def counterfactual_table(predict_proba: Callable[[list[str]], Any], originals: Sequence[str],
                         variants: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """
    For each group of counterfactual texts (aligned with `originals`: variant *i* is original
    *i* with one attribute changed), compare the model's predictions with those on the
    originals: the **flip rate** (share of predicted classes that change) and the **confidence
    shift** (mean change of the probability of the originally predicted class; negative = less
    sure). An unbiased topic classifier should give ~0 for both, whatever the group.
    """
    from llm_tutorial.finetuning import check_texts

    originals = check_texts(originals, "originals")
    base = check_probabilities(predict_proba(list(originals)), len(originals))
    predicted = base.argmax(axis=1)
    rows = []
    for group, texts in variants.items():
        texts = check_texts(texts, f"variants[{group!r}]")
        if len(texts) != len(originals):
            raise ValueError(f"group {group!r} has {len(texts)} texts for {len(originals)} originals: "
                             "keep one counterfactual per original, in order")
        probs = check_probabilities(predict_proba(list(texts)), len(texts))
        shift = probs[np.arange(len(texts)), predicted] - base[np.arange(len(texts)), predicted]
        rows.append({"group": group, "n": len(texts),
                     "flip_rate": float(np.mean(probs.argmax(axis=1) != predicted)),
                     "confidence_shift": float(shift.mean()), "mean_abs_shift": float(np.abs(shift).mean())})
    return pd.DataFrame(rows).set_index("group")


# ------------------------------------------------------------------------------ interpretability


@dataclass
class Attribution:
    """Integrated-gradients result for one text: its tokens, one score per token, the target
    class and its probability, and the completeness error `delta`."""

    tokens: list[str]
    scores: np.ndarray
    target: int
    probability: float
    delta: float


def _classifier_parts(model: nn.Module) -> tuple[nn.Module, Callable]:
    if not (hasattr(model, "encoder") and hasattr(model, "_logits")):
        raise TypeError(f"need a finetuning.SequenceClassifier (an encoder and a head that accept "
                        f"input embeddings), got a {type(model).__name__}")
    return model.encoder.get_input_embeddings(), model._logits


def integrated_gradients(model: nn.Module, tokenizer, text: str, target: int | None = None,
                         steps: int = 32, max_length: int = 64, batch_size: int = 16) -> Attribution:
    """
    **Integrated gradients** (Sundararajan et al., 2017) for a sequence classifier. With
    input embeddings $x$, a baseline $x'$ (every word replaced by `[PAD]`, `[CLS]`/`[SEP]`
    kept) and $F$ = the probability of class `target`:

    $$\\mathrm{IG}_i = (x_i - x'_i) \\cdot \\frac{1}{m} \\sum_{k=1}^{m}
    \\nabla_{x_i} F\\Bigl(x' + \\tfrac{k - 1/2}{m}(x - x')\\Bigr)$$

    summed over the embedding dimensions, one score per token (midpoint rule, $m$ = `steps`).
    **Completeness**: the scores add up to $F(x) - F(x')$; `delta` is the error of that sum, a
    check that `steps` is large enough. Positive scores push towards `target`.
    """
    from llm_tutorial.trainer import eval_mode, model_device

    embeddings, logits_fn = _classifier_parts(model)
    device = model_device(model)
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    special = torch.tensor(tokenizer.get_special_tokens_mask(ids[0].tolist(),
                                                             already_has_special_tokens=True),
                           device=device).bool()
    baseline_ids = torch.where(special, ids[0], torch.full_like(ids[0], tokenizer.pad_token_id))
    with eval_mode(model):
        with torch.no_grad():
            x = embeddings(ids)[0]
            x0 = embeddings(baseline_ids[None])[0]
            probs = logits_fn(x[None], mask).float().softmax(-1)[0]
            target = int(probs.argmax()) if target is None else int(target)
            p_base = float(logits_fn(x0[None], mask).float().softmax(-1)[0, target])
        alphas = (torch.arange(steps, device=device, dtype=x.dtype) + 0.5) / steps
        grads = torch.zeros_like(x)
        for start in range(0, steps, batch_size):
            a = alphas[start:start + batch_size].view(-1, 1, 1)
            path = (x0 + a * (x - x0)).detach().requires_grad_(True)
            out = logits_fn(path, mask.expand(len(a), -1)).float().softmax(-1)[:, target]
            (g,) = torch.autograd.grad(out.sum(), path)
            grads += g.sum(0)
        scores = ((x - x0) * grads / steps).sum(-1).detach().float().cpu().numpy()
    probability = float(probs[target])
    return Attribution(tokenizer.convert_ids_to_tokens(ids[0].tolist()), scores, target, probability,
                       float(abs(scores.sum() - (probability - p_base))))


def randomised_copy(model: nn.Module, top_layers: int | None = None, seed: int = 0) -> nn.Module:
    """
    A deep copy of a `SequenceClassifier` whose head and top `top_layers` Transformer layers
    (all of them when None) are re-initialised at random: the model-randomisation test of
    Adebayo et al. (2018). An attribution method that *explains the model* must give different
    maps for the randomised copy; one that barely changes is only showing the input.
    """
    _classifier_parts(model)
    layers = model.encoder.encoder.layer
    n = len(layers) if top_layers is None else top_layers
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        targets = [clone.head] + [clone.encoder.encoder.layer[len(layers) - 1 - i] for i in range(n)]
        for part in targets:
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
    return clone


def rank_correlation(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two equally long score vectors (ties get average ranks)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two 1-D arrays of the same length >= 2, got {x.shape} and {y.shape}")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


@torch.no_grad()
def attention_weights(encoder: nn.Module, tokenizer, text: str, max_length: int = 64
                      ) -> tuple[list[str], torch.Tensor]:
    """Tokens of `text` and the encoder's attention weights, shape `(layers, heads, T, T)`;
    row *i* of a head is how token *i* distributes its attention over the tokens. Uses the
    eager attention kernel for this call (the fused one does not return weights)."""
    from llm_tutorial.trainer import eval_mode, model_device

    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(model_device(encoder)) for k, v in enc.items()}
    previous = encoder.config._attn_implementation
    with eval_mode(encoder):
        try:
            encoder.set_attn_implementation("eager")
            out = encoder(**enc, output_attentions=True)
        finally:
            encoder.set_attn_implementation(previous)
    weights = torch.stack([a[0] for a in out.attentions]).float().cpu()
    return tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist()), weights


def highlight_html(tokens: Sequence[str], scores: Any, max_abs: float | None = None) -> str:
    """Tokens as HTML spans coloured by score: green pushes towards the prediction, red
    against, white ~0. Word pieces (`##x`) are glued to the previous token; special tokens
    are shown in grey."""
    values = np.asarray(scores, dtype=float)
    scale = max_abs or float(np.abs(values).max()) or 1.0
    parts = []
    for token, value in zip(tokens, values, strict=True):
        strength = min(abs(value) / scale, 1.0)
        colour = (f"rgba(34,139,34,{strength:.2f})" if value >= 0 else f"rgba(220,20,60,{strength:.2f})")
        glue = token.startswith("##")
        shown = html.escape(token[2:] if glue else token)
        style = f"background:{colour};padding:1px 2px;border-radius:3px"
        if token in ("[CLS]", "[SEP]", "[PAD]"):
            style += ";color:#999"
        parts.append(("" if glue or not parts else " ")
                     + f'<span title="{value:+.3f}" style="{style}">{shown}</span>')
    return '<div style="line-height:1.9;font-family:sans-serif">' + "".join(parts) + "</div>"


# ------------------------------------------------------------------------------ model card


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (index included, floats rounded)."""
    frame = frame.reset_index() if frame.index.name or not isinstance(frame.index, pd.RangeIndex) else frame

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---"
                          for c in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def model_card(title: str, sections: Mapping[str, Any], directory: str | Path,
               metadata: Mapping[str, Any] | None = None):
    """
    A model card (Mitchell et al., 2019) as the Hugging Face Hub reads one: Hugging Face's
    `ModelCard`, YAML metadata (`ModelCardData`: `language`, `license`, `base_model`, `tags`,
    ...) above Markdown sections. `sections` maps a heading to a paragraph (str), a list of
    bullet strings, or a DataFrame (a table). Saved as `directory/README.md`, the file name the
    Hub shows; returns the card (`card.text` is the Markdown, `card.data` the metadata).
    """
    from huggingface_hub import ModelCard, ModelCardData

    md = [f"# {title}", ""]
    for heading, content in sections.items():
        md += [f"## {heading}", ""]
        if isinstance(content, pd.DataFrame):
            md.append(markdown_table(content))
        elif isinstance(content, str):
            md.append(content)
        else:
            md += [f"- {item}" for item in content]
        md.append("")
    card = ModelCard(f"---\n{ModelCardData(**(metadata or {})).to_yaml()}\n---\n\n" + "\n".join(md))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    card.save(directory / "README.md")
    return card
