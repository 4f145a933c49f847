"""Every exercise's checker accepts its reference solution and rejects a known wrong answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_tutorial import exercises

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KEYS = sorted(exercises.all_exercises())


def test_registry_is_not_empty_and_keys_name_their_notebook():
    assert len(KEYS) >= 4
    numbers = {p.name[:2] for p in NOTEBOOKS}
    for key in KEYS:
        assert re.fullmatch(r"\d\d\.[a-z0-9-]+", key), key
        assert key[:2] in numbers, f"{key} belongs to no notebook"


@pytest.mark.parametrize("key", KEYS)
def test_reference_solution_passes(key):
    ex = exercises.get(key)
    assert exercises.evaluate(key, ex.reference_answer()) is None


@pytest.mark.parametrize("key", KEYS)
def test_wrong_answer_fails_with_a_hint(key):
    hint = exercises.evaluate(key, exercises.get(key).wrong_answer)
    assert isinstance(hint, str) and len(hint) > 10


@pytest.mark.parametrize("key", KEYS)
def test_placeholders_and_crashing_answers_give_feedback(key, capsys):
    assert "placeholder" in exercises.evaluate(key, None)

    def crashes(*args, **kwargs):
        raise NotImplementedError

    assert exercises.evaluate(key, crashes)  # a hint, never an exception
    exercises.check(key, None)
    assert capsys.readouterr().out.startswith(f"❌ {key}: not yet.")


def test_check_prints_success(capsys):
    key = "03.expected-masks"
    assert exercises.check(key, exercises.get(key).reference_answer()) is None
    assert capsys.readouterr().out.strip() == f"✅ {key}: correct."


def test_show_solution_opens_only_after_an_attempt(capsys, monkeypatch):
    monkeypatch.setattr(exercises, "_ATTEMPTED", set())
    exercises.show_solution("03.clm-shift")
    locked = capsys.readouterr().out
    assert "once you have tried" in locked and "input_ids" not in locked
    def my_shift(input_ids):
        ...  # your code here

    def documented(input_ids):
        """A docstring, then the placeholder of notebooks 04-10."""
        return None  # your code here

    for placeholder in (None, ..., (None, None), my_shift, documented):  # the notebooks' placeholders
        exercises.check("03.clm-shift", placeholder)
        exercises.show_solution("03.clm-shift")
        assert capsys.readouterr().out.endswith(locked)
    exercises.check("03.clm-shift", lambda ids: (ids, ids))  # a wrong attempt opens it
    exercises.show_solution("03.clm-shift")
    out = capsys.readouterr().out
    assert "def shift_solution" in out and "input_ids[:, 1:]" in out


def test_unknown_key_lists_known_ones():
    with pytest.raises(KeyError, match="03.unigram-loss"):
        exercises.get("99.nope")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="twice"):
        exercises.exercise("03.unigram-loss", "again", lambda answer: None, wrong_answer=0)(lambda: 0)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_exercises_exist_and_solutions_are_hidden(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    checked = {k for c in cells if c["cell_type"] == "code"
               for k in re.findall(r'exercises\.check\("([^"]+)"', "".join(c["source"]))}
    solutions = [c for c in cells if "solution" in c.get("metadata", {}).get("tags", [])]
    assert len(checked) >= 2, f"{notebook.name} needs at least two auto-checked exercises"
    assert checked <= set(KEYS)
    assert len(solutions) >= len(checked)
    for cell in solutions:
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True
        shown = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
        assert "def " not in shown and "return" not in shown, "a committed output shows a solution"


def test_every_registered_exercise_is_asked_in_its_notebook():
    asked = set()
    for notebook in NOTEBOOKS:
        text = notebook.read_text(encoding="utf-8")
        asked |= {k for k in KEYS if k.startswith(notebook.name[:2]) and f'exercises.check(\\"{k}\\"' in text}
    assert set(KEYS) == asked, f"registered but never asked: {sorted(set(KEYS) - asked)}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_the_notebooks_placeholders_do_not_open_the_solutions(notebook):
    """Committed outputs are executed with the placeholders in place: each must be recognised as
    one, or show_solution would print the solution into the committed outputs."""
    answers = {}

    class Recorder:
        @staticmethod
        def check(key, answer):
            answers[key] = answer

    for cell in json.loads(notebook.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "exercises.check(" in source:
            exec(compile(source, f"{notebook.name} exercise cell", "exec"), {"exercises": Recorder})
    assert answers
    opened = [key for key, answer in answers.items() if not exercises._is_placeholder(answer)]
    assert not opened, f"placeholders taken for attempts: {opened}"


# ------------------------------------------------------------------------------ notebook 13's designs


def test_rrf_exercise_puts_first_what_neither_list_does():
    from llm_tutorial.exercises import ch13

    first = ch13.rrf_predict_solution()
    assert first not in (ch13.BM25_RANKING[0], ch13.DENSE_RANKING[0])  # the point of the question
    assert ch13.BM25_RANKING.index(first) == ch13.DENSE_RANKING.index(first) == 1
    for spelling in (first, first.upper(), f" {first[-1].lower()} "):
        assert exercises.evaluate("13.rrf-predict", spelling) is None
    for other in dict.fromkeys(ch13.BM25_RANKING + ch13.DENSE_RANKING):
        if other != first:
            hint = exercises.evaluate("13.rrf-predict", other)
            assert hint and first not in hint, (other, hint)


def test_ndcg_checker_agrees_with_the_library_and_names_common_mistakes():
    import math

    from llm_tutorial.exercises import ch13

    for rank, k in ch13.NDCG_CASES:
        assert ch13._library_ndcg(rank, k) == pytest.approx(ch13.ndcg_solution(rank, k), abs=1e-12)
    mistakes = {  # a learner's function -> a word its hint must contain
        lambda r, k: 1 / math.log(1 + r) if 0 < r <= k else 0.0: "base 2",
        lambda r, k: 1 / math.log2(1 + r) if 0 < r else 0.0: "outside the top",
        lambda r, k: 1 / math.log2(1 + r) if 0 < r < k else 0.0: "still inside",
        lambda r, k: 1 / math.log2(1 + r) if r <= k else 0.0: "not retrieved",
        lambda r, k: 1 / math.log2(r) if 0 < r <= k else 0.0: "log2(1 + r)",
        lambda r, k: 1 / math.log2(2 + r) if 0 < r <= k else 0.0: "rank 1",
    }
    for wrong, word in mistakes.items():
        hint = exercises.evaluate("13.ndcg", wrong)
        assert hint and word in hint, hint


def test_cusum_exercise_answer_is_measured_and_accepts_synonyms():
    from llm_tutorial.exercises import ch13

    table = ch13.measure_thresholds()
    assert list(table.index) == [ch13.THRESHOLD, 2 * ch13.THRESHOLD] and (table["detected"] == 1).all()
    delay, false = table["detection delay (mentions)"], table["false alarms per 1000"]
    assert delay.iloc[1] > 1.5 * delay.iloc[0] and false.iloc[1] < 0.5 * false.iloc[0]
    assert ch13.cusum_threshold_solution() == ("higher", "lower")
    for answer in (("up", "down"), ["Longer", "fewer."], {"delay": "higher", "false alarms": "lower"}):
        assert exercises.evaluate("13.cusum-threshold", answer) is None
    assert "right" in exercises.evaluate("13.cusum-threshold", ("higher", "same"))
    assert "placeholder" in exercises.evaluate("13.cusum-threshold", (None, None))


# ------------------------------------------------------------------------------ notebook 14's designs


def test_ch14_receptive_field_measured_equals_the_solution_and_wrong_counts_are_named():
    import numpy as np

    from llm_tutorial.exercises import ch14

    for seed in range(3):
        table = ch14.measure_receptive_field(seed=seed)
        changed = set(table.index[table["changes T"]])
        assert changed == {n for n, hops in table["hops from T"].items() if hops <= 2}
        assert (table.loc[~table["changes T"], "change of T's output"] == 0).all()  # exactly 0
        assert len(changed) == ch14.receptive_field_solution() == 7
    for answer in (7, 7.0, np.int64(7)):
        assert exercises.evaluate("14.receptive-field", answer) is None
    named = {6: "T itself", 3: "one layer", 2: "neighbours only", 4: "exactly two hops",
             9: "three hops", 10: "whole graph"}
    for count, words in named.items():
        hint = exercises.evaluate("14.receptive-field", count)
        assert words in hint, (count, hint)
    assert "whole number" in exercises.evaluate("14.receptive-field", 6.5)
    assert "whole number" in exercises.evaluate("14.receptive-field", "seven")


def test_ch14_kl_diagonal_matches_torch_distributions_and_names_planted_mistakes():
    import torch

    from llm_tutorial import generative
    from llm_tutorial.exercises import ch14

    for _, args in ch14._kl_cases():
        want = ch14._reference_kl(*args)
        assert torch.allclose(ch14.kl_diagonal_solution(*args), want, atol=1e-12)
        assert torch.allclose(ch14._kl_formula(*args), want, atol=1e-12)
    mu, logvar = torch.randn(6, 2), torch.randn(6, 2)
    zeros = torch.zeros_like(mu)
    assert torch.allclose(ch14.kl_diagonal_solution(mu, logvar, zeros, zeros),
                          generative.gaussian_kl(mu, logvar), atol=1e-6)

    def kl(mq, lq, mp, lp, half=0.5, var=torch.exp, log_ratio=None, reduce="sum", minus=1.0,
           mean_scale=True):
        vq, vp = var(lq), var(lp)
        log_term = torch.log(vp / vq) if log_ratio is None else log_ratio(lq, lp)
        mean = (mq - mp) ** 2 / (vp if mean_scale else 1.0)
        per_dim = half * (log_term + vq / vp + mean - minus)
        return {"sum": per_dim.sum(-1), "mean": per_dim.mean(-1), None: per_dim}[reduce]

    right = [kl, lambda *a: kl(*a).numpy(), lambda *a: kl(*a).tolist()]
    for answer in right:
        assert exercises.evaluate("14.kl-gaussians", answer) is None
    mistakes = {
        lambda mq, lq, mp, lp: kl(mp, lp, mq, lq): "other way round",
        lambda *a: kl(*a, half=1.0): "½",
        lambda *a: kl(*a, reduce="mean"): "averaged over the latent dimensions",
        lambda *a: kl(*a, var=lambda lv: torch.exp(lv) ** 2): "not log σ",  # exp(logvar) as σ
        lambda *a: kl(*a, var=lambda lv: lv ** 2): "as the standard deviation",
        lambda *a: kl(*a, var=lambda lv: lv, log_ratio=lambda lq, lp: lp - lq): "as the variance σ²",
        lambda *a: kl(*a, var=lambda lv: lv): "NaN",  # log of a negative "variance"
        lambda *a: kl(*a, mean_scale=False): "divided by p's variance",
        lambda *a: kl(*a, minus=0.0): "not 0",
        lambda mq, lq, mp, lp: generative.gaussian_kl(mq, lq): "gaussian_kl",
        lambda *a: kl(*a).sum(): "one number",
        lambda *a: kl(*a).mean().item(): "one number",
        lambda *a: kl(*a, reduce=None): "per latent dimension",
        lambda mq, lq, mp, lp: kl(mq, lq, mp, lp).sum(0) if mq.ndim == 3 else kl(mq, lq, mp, lp): "dim=1",
        lambda *a: None: "returned None",
        lambda *a: "kl": "returned str",
    }
    for wrong, words in mistakes.items():
        hint = exercises.evaluate("14.kl-gaussians", wrong)
        assert hint and words in hint, (words, hint)
    assert "not its result" in exercises.evaluate("14.kl-gaussians", 1.5)


def test_ch14_beta_exercise_answer_is_measured_and_accepts_synonyms():
    from llm_tutorial.exercises import ch14

    table = ch14.measure_beta()
    assert list(table.index) == [1.0, 4.0]
    recon, kl, nelbo = table["reconstruction (nats)"], table["KL (nats)"], table["−ELBO (nats)"]
    assert recon.iloc[1] > recon.iloc[0] + 1.0 and kl.iloc[1] < 0.5 * kl.iloc[0]  # clear margins
    assert nelbo.iloc[1] > nelbo.iloc[0]
    assert ch14.beta_predict_solution() == ("higher", "lower")
    for answer in (("up", "down"), ["Worse", "less."], {"reconstruction": "higher", "KL": "lower"}):
        assert exercises.evaluate("14.beta-predict", answer) is None
    assert "the KL: right" in exercises.evaluate("14.beta-predict", ("same", "lower"))
    assert "the reconstruction error: right" in exercises.evaluate("14.beta-predict", ("higher", "same"))
    both = exercises.evaluate("14.beta-predict", ("lower", "higher"))
    assert "reconstruction error: think again" in both and "KL: think again" in both
    assert "placeholder" in exercises.evaluate("14.beta-predict", (None, None))
    assert "not a direction" in exercises.evaluate("14.beta-predict", ("higher", "maybe"))
