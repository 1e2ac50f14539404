"""client/ranking/metrics.py against trec_eval (through ir-measures / pytrec-eval-terrier) on the same runs.

The hand-computed examples in test_eval_metrics.py pin the definitions; this checks that the
implementation agrees with the field's reference tool on many random runs. Mapping between the two:

- nDCG@10: ours uses exponential gain 2^g - 1; trec_eval's ndcg_cut uses the judged grade as the
  gain, so the qrels given to trec_eval carry 2^g - 1 (0, 1, 3, 7). Both normalise by the ideal DCG
  of all judged products of the query.
- Recall@K (ours: any relevant product in the top K) is trec_eval's success@K; the recall
  fraction@K is trec_eval's recall@K; MRR is trec_eval's recip_rank over the whole ranking.
- A threshold is expressed as binary qrels (relevant = grade >= threshold, or = the query's own
  highest grade for "max"), because trec_eval's relevance level is one number for all queries.

Runs have no repeated products and no tied scores (trec_eval breaks ties by document id, our
rankings are already ordered), and every query has a relevant product at every threshold.
"""

from __future__ import annotations

import numpy as np
import pytest

import ir_measures  # test dependency, pinned in requirements.lock
from ir_measures import RR, Qrel, R, ScoredDoc, Success, nDCG

from lenscope.client.ranking.metrics import (
    evaluate_rankings,
    ndcg_at_k,
    recall_at_k,
    recall_fraction_at_k,
    reciprocal_rank,
)

KS = (1, 5, 10)


def random_runs(seed: int, n_queries: int = 60, n_products: int = 40, depth: int = 25):
    """Graded judgments (0-3, at least one grade >= 2 per query) and one truncated ranking per query."""
    rng = np.random.default_rng(seed)
    products = [f"p{i:03d}" for i in range(n_products)]
    relevances, rankings = [], []
    for _ in range(n_queries):
        judged = rng.choice(n_products, size=int(rng.integers(3, 15)), replace=False)
        grades = {products[i]: int(rng.integers(0, 4)) for i in judged}
        grades[products[int(judged[0])]] = int(rng.integers(2, 4))
        relevances.append(grades)
        rankings.append([products[i] for i in rng.permutation(n_products)[:depth]])
    return rankings, relevances


def as_run(rankings):
    return [ScoredDoc(f"q{q}", pid, float(len(r) - i)) for q, r in enumerate(rankings) for i, pid in enumerate(r)]


def qrels(relevances, gain):
    return [Qrel(f"q{q}", pid, int(gain(g, rel))) for q, rel in enumerate(relevances) for pid, g in rel.items()]


def per_query(measures, rels, run):
    out: dict = {}
    for m in ir_measures.pytrec_eval.iter_calc(measures, rels, run):
        out.setdefault(m.measure, {})[int(m.query_id[1:])] = m.value
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ndcg_matches_trec_eval(seed: int) -> None:
    rankings, relevances = random_runs(seed)
    ref = per_query([nDCG @ 10], qrels(relevances, lambda g, _: 2**g - 1), as_run(rankings))[nDCG @ 10]
    ours = [ndcg_at_k(r, q, 10) for r, q in zip(rankings, relevances)]
    assert len(ref) == len(ours)
    np.testing.assert_allclose([ref[i] for i in range(len(ours))], ours, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", ["max", 2, 1])
def test_recall_and_mrr_match_trec_eval(seed: int, threshold) -> None:
    rankings, relevances = random_runs(seed)

    def binary(g: int, rel: dict) -> int:
        level = max(rel.values()) if threshold == "max" else threshold
        return int(g > 0 and g >= level)

    measures = [*(Success(rel=1) @ k for k in KS), RR(rel=1), R(rel=1) @ 10]
    ref = per_query(measures, qrels(relevances, binary), as_run(rankings))
    pairs = list(zip(rankings, relevances))
    for k in KS:
        ours = [recall_at_k(r, q, k, threshold) for r, q in pairs]
        assert [ref[Success(rel=1) @ k][i] for i in range(len(ours))] == ours, f"Recall@{k}"
    np.testing.assert_allclose([ref[RR(rel=1)][i] for i in range(len(pairs))],
                               [reciprocal_rank(r, q, threshold) for r, q in pairs], rtol=0, atol=1e-12)
    np.testing.assert_allclose([ref[R(rel=1) @ 10][i] for i in range(len(pairs))],
                               [recall_fraction_at_k(r, q, 10, threshold) for r, q in pairs], rtol=0, atol=1e-12)


def test_evaluate_rankings_means_match_trec_eval_aggregates() -> None:
    rankings, relevances = random_runs(7)
    run = as_run(rankings)
    exact = qrels(relevances, lambda g, rel: g > 0 and g == max(rel.values()))
    graded = qrels(relevances, lambda g, _: g >= 2)
    agg = ir_measures.pytrec_eval.calc_aggregate([*(Success(rel=1) @ k for k in KS), RR(rel=1)], exact, run)
    ndcg = ir_measures.pytrec_eval.calc_aggregate([nDCG @ 10], qrels(relevances, lambda g, _: 2**g - 1), run)
    rfrac = ir_measures.pytrec_eval.calc_aggregate([R(rel=1) @ 10], graded, run)
    s = evaluate_rankings(rankings, relevances, ks=KS, min_grade="max", min_grade_graded=2)
    for k in KS:
        assert s.recall[k] == pytest.approx(agg[Success(rel=1) @ k], abs=1e-12)
    assert s.mrr == pytest.approx(agg[RR(rel=1)], abs=1e-12)
    assert s.ndcg10 == pytest.approx(ndcg[nDCG @ 10], abs=1e-12)
    assert s.recall_fraction10 == pytest.approx(rfrac[R(rel=1) @ 10], abs=1e-12)
