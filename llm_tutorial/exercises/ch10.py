"""Exercises for notebook 10 · Evaluation.

* `10.ece`: expected calibration error from confidences and hits.
* `10.pass-at-k`: the unbiased pass@k estimator.
* `10.kappa`: Cohen's kappa for two raters.
* `10.debiased-first-rate`: predict, then run: how often does a swap-averaged judge name the
  answer shown first?
"""

from __future__ import annotations

import numbers

import numpy as np

from llm_tutorial.exercises import exercise


def _ece_cases():
    rng = np.random.default_rng(0)
    for n, bins in ((50, 5), (200, 10), (120, 15)):
        confidences = rng.uniform(0.2, 1.0, n)
        correct = rng.random(n) < confidences ** 2  # over-confident on purpose
        yield confidences, correct, bins


def _unweighted_ece(confidences, correct, n_bins):
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, n_bins - 1)
    gaps = [abs(correct[which == m].mean() - confidences[which == m].mean())
            for m in range(n_bins) if (which == m).any()]
    return float(np.mean(gaps))


def _check_ece(my_ece) -> str | None:
    if not callable(my_ece):
        return "pass the function itself, `my_ece`, not a value"
    for confidences, correct, bins in _ece_cases():
        got = my_ece(confidences.copy(), correct.copy(), bins)
        if got is None:
            return "your function returned None: return the ECE, a float in [0, 1]"
        want = ece_solution(confidences, correct, bins)
        if abs(float(got) - want) <= 1e-9:
            continue
        if abs(float(got) - _unweighted_ece(confidences, correct, bins)) <= 1e-9:
            return ("weight each bin's gap by the share of predictions in it (|B_m| / n); a plain "
                    "average lets a bin with one prediction count as much as a full one")
        if abs(float(got) - abs(correct.mean() - confidences.mean())) <= 1e-9:
            return ("that is the gap over all predictions at once; bin them by confidence first, "
                    "so over- and under-confidence in different bins cannot cancel out")
        return (f"for {len(confidences)} predictions and {bins} bins expected {want:.4f}, got "
                f"{float(got):.4f}: bin m holds confidences in ((m-1)/M, m/M]; sum over bins of "
                f"|B_m|/n · |accuracy - mean confidence|")
    return None


@exercise("10.ece", "Write my_ece(confidences, correct, n_bins): confidences is an array of the "
          "predicted class's probability, correct a boolean array; return the expected "
          "calibration error with n_bins equal-width bins.", _check_ece,
          wrong_answer=_unweighted_ece)
def ece_solution(confidences, correct, n_bins):
    confidences, correct = np.asarray(confidences, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, n_bins + 1)
    # bin m holds (edges[m], edges[m + 1]]
    which = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for m in range(n_bins):
        inside = which == m
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidences[inside].mean())
    return float(ece)


_PASS_CASES = [(10, 3, 1), (10, 3, 4), (20, 0, 5), (5, 5, 2), (200, 7, 10), (8, 6, 3), (30, 1, 30)]


def _check_pass(my_pass_at_k) -> str | None:
    if not callable(my_pass_at_k):
        return "pass the function itself, `my_pass_at_k`, not a value"
    for n, c, k in _PASS_CASES:
        got = my_pass_at_k(n, c, k)
        if got is None:
            return "your function returned None: return a probability"
        want = pass_at_k_solution(n, c, k)
        if abs(float(got) - want) <= 1e-9:
            continue
        if abs(float(got) - (1 - (1 - c / n) ** k)) <= 1e-9:
            return ("1 - (1 - c/n)^k draws with replacement and is biased low; draw k of the n "
                    "samples *without* replacement: 1 - C(n-c, k) / C(n, k)")
        if abs(float(got) - c / n) <= 1e-9:
            return "c / n is pass@1; for k > 1 ask how likely k draws all miss"
        return (f"for n={n}, c={c}, k={k} expected {want:.6f}, got {float(got):.6f}: "
                f"1 - C(n-c, k) / C(n, k) (and 1.0 when n - c < k)")
    return None


@exercise("10.pass-at-k", "Write my_pass_at_k(n, c, k): with n samples of which c are correct, "
          "the probability that k samples drawn without replacement include a correct one.",
          _check_pass, wrong_answer=lambda n, c, k: 1 - (1 - c / n) ** k)
def pass_at_k_solution(n, c, k):
    from math import comb

    if n - c < k:
        return 1.0  # every draw of k must contain a correct sample
    return 1.0 - comb(n - c, k) / comb(n, k)


_KAPPA_CASES = [
    ([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]),
    ([0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 2, 1, 0, 1]),
    ([1, 1, 1, 1, 0], [1, 1, 1, 1, 1]),
    ([0, 0, 1, 1], [0, 0, 1, 1]),
]


def _check_kappa(my_kappa) -> str | None:
    if not callable(my_kappa):
        return "pass the function itself, `my_kappa`, not a value"
    for a, b in _KAPPA_CASES:
        got = my_kappa(list(a), list(b))
        if got is None:
            return "your function returned None: return kappa, a float"
        want = kappa_solution(a, b)
        if abs(float(got) - want) <= 1e-9:
            continue
        observed = np.mean(np.asarray(a) == np.asarray(b))
        if abs(float(got) - observed) <= 1e-9:
            return ("that is the raw agreement p_o; subtract the agreement expected by chance, "
                    "p_e = sum over labels of P_a(label) · P_b(label), and divide by 1 - p_e")
        return (f"for {a} and {b} expected {want:.4f}, got {float(got):.4f}: "
                f"(p_o - p_e) / (1 - p_e)")
    return None


@exercise("10.kappa", "Write my_kappa(a, b): Cohen's kappa between two lists of labels.",
          _check_kappa, wrong_answer=lambda a, b: float(np.mean(np.asarray(a) == np.asarray(b))))
def kappa_solution(a, b):
    a, b = np.asarray(a), np.asarray(b)
    observed = np.mean(a == b)
    labels = np.union1d(a, b)
    expected = sum(np.mean(a == label) * np.mean(b == label) for label in labels)  # chance agreement
    return float((observed - expected) / (1 - expected))


def _check_debiased_first_rate(answer) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Number):
        return "answer with a share between 0 and 1, e.g. debiased_first_rate = 0.7"
    if not 0 <= answer <= 1:
        return f"{answer} is not a share: give a number between 0 and 1 (0.25 means a quarter)"
    if abs(answer - debiased_first_rate_solution()) <= 0.005:
        return None
    if answer > 0.5:
        return ("swap-averaging removes what the judge gives to a *position*: d(A, B) = -d(B, A), "
                "so whenever it names the first answer in one order, it names the second in "
                "the other")
    return ("below a half would be a bias towards the *second* position; the debiased score "
            "is antisymmetric, d(B, A) = -d(A, B): of each pair's two verdicts, how many name "
            "the first-shown answer?")


@exercise("10.debiased-first-rate",
          "Predict, then run: section 8 printed how often the raw SmolLM2 judge names the answer "
          "shown first. After swap-averaging, with the verdict 'the first answer wins when d > 0', "
          "what share of the verdicts over both orders names the first-shown answer? (±0.005 is "
          "accepted)",
          _check_debiased_first_rate, wrong_answer=0.87, answer_is_value=True)
def debiased_first_rate_solution() -> float:
    # d(B, A) = -d(A, B): each pair's winner is named first in one order and second in the
    # other (no score is exactly 0), so exactly one of its two verdicts names the first answer
    return 0.5
