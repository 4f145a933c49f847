"""Exercises for notebook 13 · Applications.

* `13.rrf-predict`: predict, then run: which document does reciprocal rank fusion put first
  when it fuses a BM25 ranking and a dense ranking?
* `13.ndcg`: write NDCG@k for one relevant item at a given rank, as `hit_and_ndcg` scores a
  recommender on each reader's held-out article.
* `13.cusum-threshold`: predict, then run: doubling the CUSUM threshold makes the detection delay
  and the false alarms higher, lower or the same?
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

from llm_tutorial import applications
from llm_tutorial.exercises import as_number as _as_number
from llm_tutorial.exercises import close as _close
from llm_tutorial.exercises import direction_pair_check as _direction_pair_check
from llm_tutorial.exercises import exercise
from llm_tutorial.exercises import measured_direction as _direction

# ------------------------------------------------------------------------------ 13.rrf-predict

# the top 5 chunks of one question, by each retriever, best first
BM25_RANKING = ["doc-A", "doc-C", "doc-D", "doc-E", "doc-F"]
DENSE_RANKING = ["doc-B", "doc-C", "doc-F", "doc-G", "doc-A"]
RRF_K = 60


def fused_ranking() -> list[tuple[str, float]]:
    """The two rankings fused by `applications.reciprocal_rank_fusion` (k = 60): (id, score),
    best first. What the notebook shows once the learner has predicted."""
    return applications.reciprocal_rank_fusion([BM25_RANKING, DENSE_RANKING], k=RRF_K)


def _rrf_id(answer) -> str | None:
    """The answer as one of the rankings' ids ("doc-C", "Doc-C", "C" and "c" all name doc-C)."""
    if not isinstance(answer, str):
        return None
    word = answer.strip().strip("\"'").lower()
    for item in dict.fromkeys(BM25_RANKING + DENSE_RANKING):
        if word in (item.lower(), item.lower().removeprefix("doc-")):
            return item
    return None


def _rrf_sum(item: str) -> str:
    terms = [f"1/({RRF_K}+{ranking.index(item) + 1})"
             for ranking in (BM25_RANKING, DENSE_RANKING) if item in ranking]
    return " + ".join(terms)


def _check_rrf(answer) -> str | None:
    if isinstance(answer, (list, tuple)) and answer and isinstance(answer[0], (tuple, list)):
        return "give one id, the first of the fused ranking (a string such as \"doc-A\"), not the list"
    if isinstance(answer, (list, tuple)) and len(answer) == 2 and isinstance(answer[0], str):
        return "give the id alone, a string such as \"doc-A\", without its score"
    item = _rrf_id(answer)
    if item is None:
        ids = ", ".join(f'"{i}"' for i in dict.fromkeys(BM25_RANKING + DENSE_RANKING))
        return f"answer with one of the ids in the two rankings: {ids}"
    fused = fused_ranking()
    if item == fused[0][0]:
        return None
    in_both = item in BM25_RANKING and item in DENSE_RANKING
    first_in = [name for name, ranking in (("BM25", BM25_RANKING), ("dense", DENSE_RANKING))
                if ranking[0] == item]
    if not in_both:
        where = "BM25's" if item in BM25_RANKING else "the dense"
        top = f"first in {where} list" if first_in else f"in {where} list only"
        return (f"{item} is {top}, and the other list does not hold it at all: RRF adds "
                f"1/({RRF_K} + rank) over the lists, and with k = {RRF_K} the ranks 1 to 5 give "
                "nearly the same 1/61 to 1/65, so being found by both retrievers counts for most. "
                "Which ids do both lists hold?")
    return (f"{item} is in both lists, but so are other ids: its score is {_rrf_sum(item)}. "
            "Work out that sum for every id both lists hold and compare them (a rank 1 in one "
            "list does not make up for a low rank in the other)")


@exercise("13.rrf-predict", "Predict, then run: a hybrid retriever fuses BM25's top 5, "
          f"BM25_RANKING = {BM25_RANKING}, and the dense retriever's, DENSE_RANKING = "
          f"{DENSE_RANKING} (best first), by reciprocal rank fusion with k = {RRF_K}: each list "
          f"gives the item at rank r (1-based) 1 / ({RRF_K} + r), and items are sorted by the sum. "
          "Which id comes first? (a string such as \"doc-A\") Then run "
          "applications.reciprocal_rank_fusion on the two lists.",
          _check_rrf, wrong_answer="doc-A", answer_is_value=True)
def rrf_predict_solution() -> str:
    # doc-C is second in both lists: 2 / 62 = 0.03226. doc-A, first for BM25 but fifth for the
    # dense retriever, gets 1/61 + 1/65 = 0.03178; doc-F 1/63 + 1/65 = 0.03126; doc-B, first
    # for the dense retriever only, 1/61 = 0.01639. With k = 60 the ranks matter little: what
    # both retrievers find wins, and between those, the steadier ranks
    fused = applications.reciprocal_rank_fusion([BM25_RANKING, DENSE_RANKING], k=RRF_K)
    return fused[0][0]


# ------------------------------------------------------------------------------ 13.ndcg

# (rank, k): inside the top k, at its edge, beyond it, and not retrieved at all (rank 0)
NDCG_CASES = [(1, 10), (2, 10), (3, 10), (7, 10), (10, 10), (1, 1), (5, 5), (4, 20),
              (11, 10), (25, 10), (2, 1), (6, 5), (0, 10), (0, 1)]


def _library_ndcg(rank: int, k: int) -> float:
    """NDCG@k from `applications.hit_and_ndcg`: one reader, one unseen item per score, the
    held-out item placed so that it ranks `rank`; 0 (not retrieved, `gold_ranks`' convention)
    scores no gain."""
    if rank == 0:
        return 0.0
    n = max(rank, k) + 2
    scores = np.arange(n, 0, -1, dtype=float)[None, :]  # item i has the (i + 1)-th best score
    _, ndcg = applications.hit_and_ndcg(scores, np.zeros((1, n)), np.array([rank - 1]), k)
    return float(ndcg[0])


def _reciprocal_rank(rank: int, k: int) -> float:
    """A wrong answer: the reciprocal rank (MRR's term) cut at k, not NDCG's log discount."""
    return 1.0 / rank if 0 < rank <= k else 0.0


def _same_inside(values: dict, formula) -> bool:
    """Whether the learner's values equal `formula(rank)` on every case inside the top k."""
    return all(_close(values[(r, k)], formula(r), 1e-9) for r, k in NDCG_CASES if 0 < r <= k)


def _check_ndcg(ndcg_at_k) -> str | None:
    if not callable(ndcg_at_k):
        return "pass the function itself, `ndcg_at_k`, not its result"
    values = {}
    for rank, k in NDCG_CASES:
        try:
            got = ndcg_at_k(rank, k)
        except NotImplementedError:
            raise
        except Exception as error:
            advice = ""
            if rank == 0:
                advice = ": rank 0 means the item was not retrieved at all, NDCG@k 0.0"
            elif rank == 1 and isinstance(error, ZeroDivisionError):
                advice = ": the discount of rank r is log2(1 + r), which is 1 at rank 1"
            return f"ndcg_at_k({rank}, {k}) raised {type(error).__name__}: {error}{advice}"
        if got is None:
            return "your function returned None: return NDCG@k, one float"
        value = _as_number(got)
        if value is None:
            return f"ndcg_at_k({rank}, {k}) returned {got!r}: return one number"
        values[(rank, k)] = value
    inside = [(r, k) for r, k in NDCG_CASES if 0 < r <= k]
    if _same_inside(values, lambda r: 1.0 / r):
        return ("that is the reciprocal rank, MRR's term: NDCG discounts the gain of a hit at rank r "
                "by log2(1 + r), more gently than 1/r")
    if _same_inside(values, lambda r: 1.0 / math.log(1 + r)):
        return "the discount is a logarithm in base 2: math.log2, not the natural math.log"
    if _same_inside(values, lambda r: math.log2(1 + r)):
        return "the discount divides the gain of 1: a hit further down is worth less, not more"
    for rank, k in inside:
        want = _library_ndcg(rank, k)
        if _close(values[(rank, k)], want, 1e-9):
            continue
        if values[(rank, k)] == 0.0 and rank == k:
            return (f"ndcg_at_k({rank}, {k}) gave 0.0: rank {rank} is still inside the top {k} "
                    "(the ranks are 1-based: rank <= k counts)")
        if rank == 1:
            return (f"ndcg_at_k(1, {k}) gave {values[(1, k)]:.4g}: a hit at rank 1 is the ideal "
                    "list, NDCG@k 1.0 (with one relevant item the ideal DCG is 1)")
        return (f"ndcg_at_k({rank}, {k}) gave {values[(rank, k)]:.4g}, a wrong value: the gain of a "
                "hit at rank r is discounted by log2(1 + r), and with one relevant item the ideal "
                "DCG (that item at rank 1) is 1")
    for rank, k in NDCG_CASES:
        if rank > k and values[(rank, k)] != 0.0:
            return (f"ndcg_at_k({rank}, {k}) gave {values[(rank, k)]:.4g}: at rank {rank} the item "
                    f"is outside the top {k}, so the list of k = {k} does not hold it: 0.0")
        if rank == 0 and values[(rank, k)] != 0.0:
            return (f"ndcg_at_k(0, {k}) gave {values[(rank, k)]:.4g}: rank 0 means the item was not "
                    "retrieved at all (gold_ranks' convention), so there is no gain: 0.0")
    return None


@exercise("13.ndcg", "Write ndcg_at_k(rank, k): a recommender's list holds one relevant item, "
          "the reader's held-out article, at the 1-based position `rank` (0: not retrieved). "
          "DCG@k sums, over the top k positions, the gain of each relevant item (1) discounted "
          "by log2(1 + its rank); NDCG@k divides it by the DCG@k of the ideal list. Return "
          "NDCG@k, a float, as applications.hit_and_ndcg computes it for each reader.",
          _check_ndcg, wrong_answer=_reciprocal_rank)
def ndcg_solution(rank: int, k: int) -> float:
    # one relevant item: DCG@k = 1 / log2(1 + rank) if it is in the top k, else 0; the ideal
    # list puts it at rank 1, where the discount log2(2) is 1, so the ideal DCG is 1
    if rank < 1 or rank > k:
        return 0.0
    return 1.0 / math.log2(1 + rank)


# ------------------------------------------------------------------------------ 13.cusum-threshold

POOL_SIZE = 200  # labelled mentions; the first 20% are the negative ones
NEGATIVE_POOL = np.arange(POOL_SIZE) < POOL_SIZE // 5
STREAM_LENGTH = 2000
CHANGE_AT = 1000  # the share of negative mentions jumps here
SHARE_BEFORE, SHARE_AFTER = 0.2, 0.4
CUSUM_MEAN = 0.2  # the expected share of negative mentions
CUSUM_SLACK = 0.1  # half the shift worth detecting
THRESHOLD = 2.0  # H; the question doubles it to 2H
SEEDS = tuple(range(20))  # streams averaged over


def measure_thresholds(h_values: Sequence[float] = (THRESHOLD, 2 * THRESHOLD),
                       seeds: Sequence[int] = SEEDS) -> pd.DataFrame:
    """CUSUM (`applications.cusum`, mean 0.2, slack 0.1) at each threshold h on the same streams
    (`applications.shifted_stream`: 2,000 mentions drawn from a pool of 200, 20% negative, whose
    negative share jumps from 0.2 to 0.4 at mention 1,000), scored by `applications.alert_stats`
    and averaged over the seeds: one row per threshold."""
    streams = [NEGATIVE_POOL[applications.shifted_stream(NEGATIVE_POOL, STREAM_LENGTH, CHANGE_AT,
                                                         SHARE_BEFORE, SHARE_AFTER, seed=s)]
               .astype(float) for s in seeds]
    rows = []
    for h in h_values:
        stats = [applications.alert_stats(
            applications.cusum(x, CUSUM_MEAN, CUSUM_SLACK, h)[1], CHANGE_AT, STREAM_LENGTH)
            for x in streams]
        rows.append({"threshold h": float(h),
                     "detection delay (mentions)": float(np.nanmean([s["delay"] for s in stats])),
                     "false alarms per 1000": float(np.mean([s["false alarms per 1000"] for s in stats])),
                     "detected": float(np.mean([s["detected"] for s in stats]))})
    return pd.DataFrame(rows).set_index("threshold h")


@lru_cache(maxsize=1)
def _measured_directions() -> tuple[str, str]:
    """(delay, false alarms) at 2H against H, measured with the library."""
    table = measure_thresholds()
    low, high = table.iloc[0], table.iloc[1]
    return (_direction(low["detection delay (mentions)"], high["detection delay (mentions)"]),
            _direction(low["false alarms per 1000"], high["false alarms per 1000"]))


def _check_cusum_threshold(answer) -> str | None:
    return _direction_pair_check(
        answer, ("delay", "false alarms"), (("delay",), ("false", "alarm")), _measured_directions(),
        ("After the change S_t climbs only slowly, by about "
         f"{SHARE_AFTER} - {CUSUM_MEAN} - {CUSUM_SLACK} = {SHARE_AFTER - CUSUM_MEAN - CUSUM_SLACK:.1f} per "
         "mention on average; how long does it take to climb past a threshold twice as high?",
         "Before the change S_t drifts down to 0 and crosses h only on an unlucky run of negative "
         "mentions; how much longer must that run be to cross 2H, and how much rarer is it?"))


@exercise("13.cusum-threshold", "Predict, then run: the CUSUM alert rule watches the share of "
          f"negative mentions (mean {CUSUM_MEAN}, slack {CUSUM_SLACK}) on streams whose share "
          f"jumps from {SHARE_BEFORE} to {SHARE_AFTER} at mention {CHANGE_AT:,}. If its threshold "
          f"h is doubled, from H = {THRESHOLD:g} to 2H = {2 * THRESHOLD:g}, will the detection "
          "delay and the false alarms (per 1,000 mentions before the change) be \"higher\", "
          "\"lower\" or \"same\"? Answer a pair (delay, false alarms), e.g. (\"same\", "
          "\"higher\"). Then run measure_thresholds() to see them measured.",
          _check_cusum_threshold, wrong_answer=("higher", "higher"), answer_is_value=True)
def cusum_threshold_solution() -> tuple[str, str]:
    # A higher threshold asks for more evidence before an alarm. After the change S_t climbs by
    # about 0.4 - 0.2 - 0.1 = 0.1 per mention, so reaching 2H takes longer: the delay is higher.
    # Before it, S_t drifts down and only a run of negative mentions lifts it past h; a run long
    # enough for 2H is far rarer: fewer false alarms. The threshold trades one for the other.
    table = measure_thresholds((THRESHOLD, 2 * THRESHOLD))
    delay = table["detection delay (mentions)"]
    false = table["false alarms per 1000"]
    return ("higher" if delay.iloc[1] > delay.iloc[0] else "lower",
            "lower" if false.iloc[1] < false.iloc[0] else "higher")
