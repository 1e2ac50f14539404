"""Ranking metrics over graded relevance labels: Recall@K, nDCG@K, MRR. Pure Python, no I/O.

A query comes with ``relevance``: ``{product_id: grade}`` (integer grades >= 0, unjudged products
are grade 0; the catalog's queries file format). A ranking is the list of product ids the system
returned, best first. Definitions (what the evaluation report means by each column):

Relevant set
    A product is *relevant* to a query when its grade is >= a threshold. The threshold is either a
    fixed grade (``min_grade=2``: "same category and colour or better" on the generated catalog) or
    ``"max"``: the query's own highest grade. ``"max"`` is the **exact-product variant**: for a
    user-photo query it is the photographed product; for a text query it is every product that
    matches everything the text asks for (on the generated catalog, grade 3).

Recall@K (``recall_at_k``)
    1 if at least one relevant product is among the first K results, else 0; averaged over
    queries. This is the definition CLIP-style retrieval papers use (COCO image->text has five
    relevant captions and counts a hit when any of them is in the top K); with one relevant product
    it is the textbook recall. It is non-decreasing in K.

Recall fraction@K (``recall_fraction_at_k``)
    The IR textbook variant: the fraction of the query's relevant products found in the top K
    (|relevant ∩ top K| / |relevant|). Reported next to Recall@K for the graded threshold, where a
    text query may have many relevant products and "found one" and "found them all" differ.

nDCG@K (``ndcg_at_k``)
    DCG@K = sum over ranks r = 1..K of (2^g_r - 1) / log2(r + 1) (exponential gain, so an exact
    match (grade 3, gain 7) counts much more than a same-category product (grade 1, gain 1));
    normalised by the ideal DCG@K computed from **all judged products of the query** (its grades
    sorted descending), not just the retrieved ones, so a system that never retrieves the best
    products cannot score 1. Products a ranking repeats count once (first position).

MRR (``reciprocal_rank``)
    1 / (rank of the first relevant product) within the ranking, 0 if none is in it. Rankings are
    truncated by the system (e.g. the top 100 hits), so this is MRR at that depth.

``evaluate_rankings`` averages all of these over a list of queries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Threshold = int | Literal["max"]

__all__ = [
    "MetricSummary",
    "classification_scores",
    "Threshold",
    "dcg",
    "evaluate_rankings",
    "ndcg_at_k",
    "recall_at_k",
    "recall_fraction_at_k",
    "reciprocal_rank",
    "relevant_set",
]


def _check_grades(relevance: Mapping[str, int]) -> None:
    for pid, g in relevance.items():
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise ValueError(f"grade of {pid!r} must be an integer >= 0, got {g!r}")


def relevant_set(relevance: Mapping[str, int], min_grade: Threshold = "max") -> frozenset[str]:
    """Products whose grade is >= ``min_grade`` (``"max"``: the query's highest grade). Grade 0 is
    never relevant, whatever the threshold."""
    _check_grades(relevance)
    positive = {pid: g for pid, g in relevance.items() if g > 0}
    if not positive:
        return frozenset()
    if min_grade == "max":
        threshold = max(positive.values())
    elif isinstance(min_grade, int) and not isinstance(min_grade, bool) and min_grade >= 1:
        threshold = min_grade
    else:
        raise ValueError(f"min_grade must be an integer >= 1 or 'max', got {min_grade!r}")
    return frozenset(pid for pid, g in positive.items() if g >= threshold)


def _dedup(ranking: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for pid in ranking:
        if pid not in seen:
            seen.add(pid)
            out.append(pid)
    return out


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_grade: Threshold = "max") -> float:
    """1.0 if any relevant product is in the top k, else 0.0 (0.0 when the query has none)."""
    _check_k(k)
    rel = relevant_set(relevance, min_grade)
    return 1.0 if any(pid in rel for pid in _dedup(ranking)[:k]) else 0.0


def recall_fraction_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int,
                         min_grade: Threshold = "max") -> float:
    """|relevant ∩ top k| / |relevant| (0.0 when the query has no relevant product)."""
    _check_k(k)
    rel = relevant_set(relevance, min_grade)
    if not rel:
        return 0.0
    return sum(1 for pid in _dedup(ranking)[:k] if pid in rel) / len(rel)


def dcg(grades: Sequence[int]) -> float:
    """sum_i (2^g_i - 1) / log2(i + 2) over positions i = 0, 1, ..."""
    return sum((2.0 ** g - 1.0) / math.log2(i + 2) for i, g in enumerate(grades))


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """Graded nDCG@k; the ideal ranking is built from all judged products (0.0 if none is > 0)."""
    _check_k(k)
    _check_grades(relevance)
    ideal = dcg(sorted(relevance.values(), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return dcg([relevance.get(pid, 0) for pid in _dedup(ranking)[:k]]) / ideal


def reciprocal_rank(ranking: Sequence[str], relevance: Mapping[str, int], min_grade: Threshold = "max") -> float:
    """1 / rank of the first relevant product (ranks from 1), 0.0 if none is in the ranking."""
    rel = relevant_set(relevance, min_grade)
    for i, pid in enumerate(_dedup(ranking)):
        if pid in rel:
            return 1.0 / (i + 1)
    return 0.0


@dataclass(frozen=True)
class MetricSummary:
    """Means over ``n`` queries; ``recall`` is keyed by K (Recall@K as defined above)."""

    n: int
    recall: dict[int, float]
    ndcg10: float
    mrr: float
    recall_fraction10: float  # at the graded threshold (min_grade_graded)

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"n": self.n}
        out.update({f"R@{k}": v for k, v in self.recall.items()})
        out.update({"nDCG@10": self.ndcg10, "MRR": self.mrr, "Rfrac@10": self.recall_fraction10})
        return out


def evaluate_rankings(
    rankings: Sequence[Sequence[str]],
    relevances: Sequence[Mapping[str, int]],
    *,
    ks: Sequence[int] = (1, 5, 10),
    min_grade: Threshold = "max",
    min_grade_graded: Threshold = 2,
) -> MetricSummary:
    """Mean Recall@K (for each K in ``ks``), nDCG@10 and MRR at ``min_grade``, and the recall
    fraction@10 at ``min_grade_graded``; one ranking per query, in the same order."""
    if len(rankings) != len(relevances):
        raise ValueError(f"{len(rankings)} rankings for {len(relevances)} queries")
    n = len(rankings)
    if n == 0:
        return MetricSummary(0, {k: float("nan") for k in ks}, float("nan"), float("nan"), float("nan"))
    recall = {k: sum(recall_at_k(r, q, k, min_grade) for r, q in zip(rankings, relevances)) / n for k in ks}
    return MetricSummary(
        n=n,
        recall=recall,
        ndcg10=sum(ndcg_at_k(r, q, 10) for r, q in zip(rankings, relevances)) / n,
        mrr=sum(reciprocal_rank(r, q, min_grade) for r, q in zip(rankings, relevances)) / n,
        recall_fraction10=sum(recall_fraction_at_k(r, q, 10, min_grade_graded)
                              for r, q in zip(rankings, relevances)) / n,
    )


def classification_scores(truth: Sequence[int], predicted: Sequence[int]) -> dict[str, float | int]:
    """Accuracy and macro-F1 of label predictions (attribute heads).

    Macro-F1 is the unweighted mean of per-label F1 over every label that occurs in ``truth`` or
    ``predicted`` (a label never predicted and never true does not count; one predicted but never
    true counts with F1 0). F1 of a label = 2 TP / (2 TP + FP + FN).
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels for {len(predicted)} predictions")
    n = len(truth)
    if n == 0:
        return {"n": 0, "accuracy": float("nan"), "macro_f1": float("nan")}
    f1s = []
    for label in sorted(set(truth) | set(predicted)):
        tp = sum(1 for t, p in zip(truth, predicted) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted) if t == label and p != label)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    accuracy = sum(1 for t, p in zip(truth, predicted) if t == p) / n
    return {"n": n, "accuracy": round(accuracy, 4), "macro_f1": round(sum(f1s) / len(f1s), 4)}
