"""Exercises for notebook 09 · Multimodal fusion.

* `09.question-ceiling`: how well could a model do that reads only the question?
* `09.info-nce`: write CLIP's symmetric InfoNCE loss.
* `09.recall-at-k`: retrieval recall@k from a similarity matrix.
* `09.no-corner`: predict, then measure: retrieval with captions that name no corner.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from llm_tutorial.exercises import exercise

# (question ids, answers): the ceiling checker's cases
_CEILING_CASES = [
    ([0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1]),
    ([0, 1, 0, 1, 0, 1, 2, 2], [1, 1, 1, 1, 0, 0, 1, 0]),
    ([5, 5, 5, 5], [0, 1, 0, 1]),
    ([3, 1, 3, 1, 3], [1, 0, 1, 0, 0]),
]


def _check_ceiling(my_ceiling) -> str | None:
    if not callable(my_ceiling):
        return "pass the function itself, `my_ceiling`, not a value"
    for questions, answers in _CEILING_CASES:
        got = my_ceiling(list(questions), list(answers))
        want = question_ceiling_solution(questions, answers)  # defined below
        if got is None:
            return "your function returned None: return the accuracy, a float in [0, 1]"
        if abs(float(got) - want) > 1e-9:
            overall = max(sum(answers), len(answers) - sum(answers)) / len(answers)
            if abs(float(got) - overall) < 1e-9:
                return ("that is the accuracy of one answer for every sample; a question-only "
                        "model can give each *question* its own majority answer")
            return (f"for questions {questions} and answers {answers} expected {want:.3f}, got "
                    f"{float(got):.3f}: count, per question, how often its most common answer "
                    f"occurs, sum over questions and divide by the number of samples")
    return None


@exercise("09.question-ceiling", "Write my_ceiling(question_ids, answers): the best accuracy a "
          "model that sees only the question can reach on these samples (it answers each question "
          "with that question's most common answer).", _check_ceiling,
          wrong_answer=lambda q, a: max(sum(a), len(a) - sum(a)) / len(a))
def question_ceiling_solution(question_ids: list[int], answers: list[int]) -> float:
    from collections import Counter

    right = 0
    for q in set(question_ids):
        counts = Counter(a for qi, a in zip(question_ids, answers, strict=True) if qi == q)
        right += max(counts.values())  # always give this question its majority answer
    return right / len(answers)


def _check_info_nce(my_info_nce) -> str | None:
    if not callable(my_info_nce):
        return "pass the function itself, `my_info_nce`, not a value"
    generator = torch.Generator().manual_seed(0)
    for batch, dim, temperature in ((4, 8, 0.07), (6, 3, 0.5), (3, 16, 1.0)):
        images = torch.randn(batch, dim, generator=generator) * 3
        texts = torch.randn(batch, dim, generator=generator)
        got = my_info_nce(images, texts, temperature)
        if not isinstance(got, torch.Tensor) or got.ndim != 0:
            return "return the loss as a scalar tensor (a mean over the batch)"
        want = info_nce_solution(images, texts, temperature)
        if torch.isclose(got, want, atol=1e-5):
            continue
        raw = (images @ texts.T) / temperature
        targets = torch.arange(batch)
        if torch.isclose(got, (F.cross_entropy(raw, targets) + F.cross_entropy(raw.T, targets)) / 2,
                         atol=1e-5):
            return "normalise the embeddings to unit length first: the score is a cosine / τ"
        scores = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T / temperature
        if torch.isclose(got, F.cross_entropy(scores, targets), atol=1e-5):
            return ("that is only the image→text half; add the text→image half (the transposed "
                    "scores) and average the two")
        return (f"for a batch of {batch} expected {want.item():.4f}, got {got.item():.4f}: "
                f"cosine similarities / τ, cross-entropy with the diagonal as targets, both ways")
    return None


@exercise("09.info-nce", "Write my_info_nce(image_emb, text_emb, temperature): CLIP's symmetric "
          "InfoNCE loss for (batch, dim) embeddings whose i-th image and i-th text belong "
          "together.", _check_info_nce,
          wrong_answer=lambda i, t, tau: F.cross_entropy(i @ t.T / tau, torch.arange(len(i))))
def info_nce_solution(image_emb, text_emb, temperature):
    scores = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    targets = torch.arange(len(scores))  # image i belongs with text i
    return (F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets)) / 2


def _reference_recall(similarity, k):
    ranks = similarity.argsort(dim=1, descending=True)[:, :k]
    return (ranks == torch.arange(len(similarity))[:, None]).any(1).float().mean().item()


def _check_recall(my_recall_at_k) -> str | None:
    if not callable(my_recall_at_k):
        return "pass the function itself, `my_recall_at_k`, not a value"
    generator = torch.Generator().manual_seed(1)
    for n, k in ((5, 1), (8, 3), (10, 5), (6, 6)):
        similarity = torch.randn(n, n, generator=generator)
        got = my_recall_at_k(similarity, k)
        want = _reference_recall(similarity, k)
        if got is None:
            return "your function returned None: return recall@k as a float"
        if abs(float(got) - want) > 1e-6:
            if abs(float(got) - _reference_recall(-similarity, k)) < 1e-6 and k < n:
                return "rank from the *most* similar: sort in descending order"
            if abs(float(got) - _reference_recall(similarity.T, k)) < 1e-6:
                return "queries are the rows: rank each row's candidates (the columns)"
            return (f"for a {n}×{n} similarity and k={k} expected {want:.3f}, got {float(got):.3f}: "
                    f"the fraction of rows whose own column (the diagonal) is among its k largest")
    return None


@exercise("09.recall-at-k", "Write my_recall_at_k(similarity, k): similarity is (n, n), row i a "
          "query whose match is column i; return the fraction of queries whose match is among "
          "their k most similar candidates.", _check_recall,
          wrong_answer=lambda s, k: _reference_recall(-s, k))
def recall_at_k_solution(similarity, k):
    top_k = similarity.argsort(dim=1, descending=True)[:, :k]  # the k best columns of each row
    hits = (top_k == torch.arange(len(similarity))[:, None]).any(dim=1)
    return hits.float().mean().item()


def _check_no_corner(answer) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real) or not 0 <= answer <= 1:
        return "give a recall between 0 and 1, e.g. 0.5"
    if 0.15 <= answer <= 0.35:
        return None
    if answer > 0.35:
        return ("the caption no longer says where the digit is: the gallery holds four images of "
                "that digit, one per corner, and the caption fits them all equally well")
    return ("the digit is still named, and the model still finds it: of the 40 images, the four "
            "of the right digit come first")


@exercise("09.no-corner", "Predict, then measure: retrieval among the 40 digit x corner classes "
          "with captions that name the digit but no corner (\"a seven\"). What text-to-image "
          "recall@1 do you expect, as a number between 0 and 1 (within 0.1)?", _check_no_corner,
          wrong_answer=0.9, answer_is_value=True)
def no_corner_solution() -> float:
    # Each query names the right digit, so one of the digit's four images (one per corner) comes
    # first; which corner is a coin toss the caption cannot settle: recall@1 = 1/4.
    return 0.25
