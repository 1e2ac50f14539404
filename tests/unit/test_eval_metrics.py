"""Ranking metrics against hand-computed examples (client/ranking/metrics.py)."""

from __future__ import annotations

import math

import pytest

from lenscope.client.ranking.metrics import (
    classification_scores,
    dcg,
    evaluate_rankings,
    ndcg_at_k,
    recall_at_k,
    recall_fraction_at_k,
    reciprocal_rank,
    relevant_set,
)

# A photo query on the generated catalog: the product itself (3), same category+colour (2),
# same category (1); everything else unjudged (0).
PHOTO = {"p": 3, "cc1": 2, "cc2": 2, "c1": 1, "c2": 1, "c3": 1}
# A text query that two products satisfy fully.
TEXT = {"a": 3, "b": 3, "cc": 2, "c": 1}


def test_relevant_set_thresholds() -> None:
    assert relevant_set(PHOTO) == {"p"}  # "max": exact-product variant
    assert relevant_set(PHOTO, 2) == {"p", "cc1", "cc2"}
    assert relevant_set(PHOTO, 1) == set(PHOTO)
    assert relevant_set(TEXT) == {"a", "b"}
    assert relevant_set({"x": 0}) == set()  # grade 0 is never relevant
    with pytest.raises(ValueError):
        relevant_set(PHOTO, 0)
    with pytest.raises(ValueError):
        relevant_set({"x": -1})


def test_recall_at_k_exact_and_graded() -> None:
    ranking = ["z", "cc1", "y", "p", "c1"]
    # exact product at rank 4
    assert [recall_at_k(ranking, PHOTO, k) for k in (1, 3, 4, 5, 10)] == [0, 0, 1, 1, 1]
    # grade >= 2: cc1 at rank 2
    assert [recall_at_k(ranking, PHOTO, k, 2) for k in (1, 2)] == [0, 1]
    # text: either of the two grade-3 products counts
    assert recall_at_k(["b", "x"], TEXT, 1) == 1.0
    assert recall_at_k(["x"], {"x": 0, "y": 1}, 1) == 0.0


def test_recall_fraction_at_k() -> None:
    ranking = ["z", "cc1", "y", "p", "c1"]
    # relevant (>= 2) = {p, cc1, cc2}; top 5 holds p and cc1 -> 2/3
    assert recall_fraction_at_k(ranking, PHOTO, 5, 2) == pytest.approx(2 / 3)
    assert recall_fraction_at_k(ranking, PHOTO, 2, 2) == pytest.approx(1 / 3)
    assert recall_fraction_at_k(["a", "x", "b"], TEXT, 2) == pytest.approx(1 / 2)
    assert recall_fraction_at_k(["a", "x", "b"], TEXT, 3) == pytest.approx(1.0)


def test_ndcg_hand_computed() -> None:
    # ranking grades: [2, 0, 3]  -> DCG = (2^2-1)/log2(2) + 0 + (2^3-1)/log2(4) = 3 + 3.5 = 6.5
    ranking = ["cc1", "z", "p"]
    got_dcg = 3.0 / 1.0 + 0.0 + 7.0 / 2.0
    # ideal from all judged products: grades [3, 2, 2, 1, 1, 1]
    ideal = 7 / math.log2(2) + 3 / math.log2(3) + 3 / math.log2(4) + 1 / math.log2(5) + 1 / math.log2(6) + 1 / math.log2(7)
    assert dcg([2, 0, 3]) == pytest.approx(got_dcg)
    assert ndcg_at_k(ranking, PHOTO, 10) == pytest.approx(got_dcg / ideal)
    # at k=2 only the first two count, ideal is the top-2 grades [3, 2]
    assert ndcg_at_k(ranking, PHOTO, 2) == pytest.approx(3.0 / (7 + 3 / math.log2(3)))


def test_ndcg_perfect_and_worst() -> None:
    perfect = sorted(PHOTO, key=lambda p: -PHOTO[p])
    assert ndcg_at_k(perfect, PHOTO, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], PHOTO, 10) == 0.0
    # the ideal uses all judged products: finding only the exact match is not perfect
    assert ndcg_at_k(["p"], PHOTO, 10) == pytest.approx(7 / (7 + 3 / math.log2(3) + 3 / 2 + 1 / math.log2(5)
                                                            + 1 / math.log2(6) + 1 / math.log2(7)))
    # a repeated product counts once
    assert ndcg_at_k(["p", "p"], {"p": 3, "q": 3}, 2) == pytest.approx(7 / (7 + 7 / math.log2(3)))
    assert ndcg_at_k(["p"], {"p": 0}, 10) == 0.0


def test_reciprocal_rank() -> None:
    assert reciprocal_rank(["z", "cc1", "y", "p"], PHOTO) == pytest.approx(1 / 4)
    assert reciprocal_rank(["z", "cc1", "y", "p"], PHOTO, 2) == pytest.approx(1 / 2)
    assert reciprocal_rank(["x", "b"], TEXT) == pytest.approx(1 / 2)
    assert reciprocal_rank(["x"], TEXT) == 0.0


def test_evaluate_rankings_means_and_monotone() -> None:
    rankings = [["z", "cc1", "y", "p", "c1"], ["a", "x"], ["x", "y"]]
    rels = [PHOTO, TEXT, {"q": 3}]
    s = evaluate_rankings(rankings, rels, ks=(1, 5, 10))
    assert s.n == 3
    assert s.recall[1] == pytest.approx(1 / 3)  # only the text query hits at rank 1
    assert s.recall[5] == pytest.approx(2 / 3)
    assert s.recall[10] == pytest.approx(2 / 3)
    assert s.mrr == pytest.approx((1 / 4 + 1 + 0) / 3)
    assert s.recall[1] <= s.recall[5] <= s.recall[10]
    expected_ndcg = (ndcg_at_k(rankings[0], PHOTO) + ndcg_at_k(rankings[1], TEXT) + 0.0) / 3
    assert s.ndcg10 == pytest.approx(expected_ndcg)
    d = s.as_dict()
    assert d["R@1"] == s.recall[1] and d["nDCG@10"] == s.ndcg10 and d["n"] == 3
    with pytest.raises(ValueError):
        evaluate_rankings([["a"]], [])
    assert evaluate_rankings([], []).n == 0


def test_bad_k() -> None:
    with pytest.raises(ValueError):
        recall_at_k(["a"], TEXT, 0)
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], TEXT, 0)


def test_classification_scores_hand_computed() -> None:
    truth = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    # label 0: tp 1 fp 1 fn 1 -> 2/4; label 1: tp 2 fp 1 fn 0 -> 4/5; label 2: tp 0 fp 0 fn 1 -> 0
    s = classification_scores(truth, pred)
    assert s["n"] == 5
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["macro_f1"] == pytest.approx(round((0.5 + 0.8 + 0.0) / 3, 4))
    assert classification_scores([1, 2], [1, 2])["macro_f1"] == 1.0
    assert classification_scores([], [])["n"] == 0
    with pytest.raises(ValueError):
        classification_scores([1], [])
