"""Fusion weights fitted to the ranking itself: LambdaRank-weighted pairwise logistic regression
(``learn_lambda``) and coordinate ascent on mean nDCG@10 (``refine_coordinate``), over pools
stacked for fast re-ranking (``RankingData``).

Pointwise relevance is not what nDCG rewards; the same ``learn_weights`` on score *differences* of
candidate pairs of one query, drawn in proportion to how much swapping them would change nDCG@10
(LambdaRank's weighting, with a linear model), fits the order of the top directly; a one-variable
Platt step then sets scale and bias so sigmoid(score) stays a relevance probability. Separate from
``fusion_pointwise`` (the relevance objective) and ``fusion_fit`` (which chooses between them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.metrics import Threshold
from lenscope.client.ranking.fusion import SIGNALS, FusionWeights, learn_weights
from lenscope.client.ranking.fusion_pointwise import FusionFit, impute_like_fuse, platt_scale
from lenscope.client.ranking.pools import CandidatePool, FitError, feature_matrix


def gain(grades: np.ndarray) -> np.ndarray:
    """nDCG's exponential gain 2^g - 1."""
    return np.power(2.0, np.asarray(grades, dtype=np.float64)) - 1.0


class RankingData:
    """Pools stacked for fast re-ranking: every candidate's calibrated features (``fuse``'s
    inputs), grades, 0/1 labels, and per-query offsets, types and ideal DCG@10. ``ndcg`` ranks
    each query's candidates by the fused score exactly as ``rank_pool`` / the engine does (stable
    sort: ties keep pool order)."""

    def __init__(self, pools: Sequence[CandidatePool], calibration: CalibrationSet | None, min_grade: Threshold):
        if not pools:
            raise FitError("no labelled queries")
        self.x, self.labels = feature_matrix(pools, calibration, min_grade)
        self.grades = np.concatenate([p.grades for p in pools]).astype(np.int64)
        self.gains = gain(self.grades)
        self.offsets = np.cumsum([0] + [len(p) for p in pools])
        self.types = [p.query_type for p in pools]
        self.ideal = np.array([dcg_sorted(p) for p in pools])
        # each query's top judged grade (R@10: one product of that grade in the top 10)
        self.top_grade = np.array([max([g for g in p.relevance.values() if g > 0], default=int(p.grades.max(initial=0)))
                                   for p in pools], dtype=np.int64)

    def scores(self, weights: FusionWeights) -> np.ndarray:
        return impute_like_fuse(self.x, weights) @ weights.vector()

    def ndcg(self, weights: FusionWeights, k: int = 10) -> np.ndarray:
        z = self.scores(weights)
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        out = np.zeros(len(self.types))
        for q in range(len(self.types)):
            a, b = self.offsets[q], self.offsets[q + 1]
            if self.ideal[q] <= 0:
                continue
            top = np.argsort(-z[a:b], kind="stable")[:k]
            out[q] = float(self.gains[a:b][top] @ disc[:top.size]) / self.ideal[q]
        return out

    def ndcg_recall(self, weights: FusionWeights, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Per query nDCG@k and R@k (a product of the query's top grade in the top k)."""
        z = self.scores(weights)
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        nd, rec = np.zeros(len(self.types)), np.zeros(len(self.types))
        for q in range(len(self.types)):
            a, b = self.offsets[q], self.offsets[q + 1]
            if self.ideal[q] <= 0:
                continue
            top = np.argsort(-z[a:b], kind="stable")[:k]
            nd[q] = float(self.gains[a:b][top] @ disc[:top.size]) / self.ideal[q]
            rec[q] = float(self.top_grade[q] > 0 and (self.grades[a:b][top] >= self.top_grade[q]).any())
        return nd, rec

    def ndcg_by_type(self, weights: FusionWeights) -> dict[str, float]:
        per_query = self.ndcg(weights)
        out = {t: float(np.mean([v for v, tt in zip(per_query, self.types) if tt == t]))
               for t in sorted(set(self.types))}
        out["mean"] = float(np.mean(list(out.values())))
        return out

    def lambda_pairs(self, weights: FusionWeights, rng: np.random.Generator, *, per_query: int = 100, k: int = 10
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(better, worse) candidate pairs of one query, drawn with probability proportional to
        LambdaRank's |delta nDCG@k| of swapping them in the current ranking (pairs that cannot
        move the top k are never drawn)."""
        z = self.scores(weights)
        better, worse = [], []
        for q in range(len(self.types)):
            a, b = self.offsets[q], self.offsets[q + 1]
            g = self.gains[a:b]
            if self.ideal[q] <= 0:
                continue
            order = np.argsort(-z[a:b], kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            disc = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
            i, j = np.nonzero(g[:, None] > g[None, :])
            lam = (g[i] - g[j]) * np.abs(disc[i] - disc[j])
            live = lam > 0
            if not live.any():
                continue
            i, j, lam = i[live], j[live], lam[live]
            pick = rng.choice(i.size, size=min(per_query, i.size), replace=False, p=lam / lam.sum())
            better.append(a + i[pick])
            worse.append(a + j[pick])
        if not better:
            raise FitError("no query has candidates of different grades: nothing to rank")
        return np.concatenate(better), np.concatenate(worse)


def dcg_sorted(pool: CandidatePool, k: int = 10) -> float:
    """Ideal DCG@k of a query: its judged grades sorted (all judged products, as ``ndcg_at_k``)."""
    grades = sorted((pool.relevance or {i: int(g) for i, g in zip(pool.product_ids, pool.grades)}).values(),
                    reverse=True)[:k]
    return float(sum((2.0 ** g - 1.0) / np.log2(i + 2.0) for i, g in enumerate(grades)))


def learn_lambda(data: RankingData, *, signals: Sequence[str] = SIGNALS, start: FusionWeights | None = None,
                 l2: float = 1e-3, iterations: int = 12, per_query: int = 100, seed: int = 0) -> FusionFit:
    """Pairwise logistic regression with ``learn_weights`` on LambdaRank-weighted pairs.

    Each iteration draws (better, worse) pairs of one query in proportion to how much nDCG@10
    swapping them in the *current* ranking would change, and fits ``learn_weights`` on the
    differences of their ``fuse``-imputed features, each pair in both orders (label 1 / 0: the
    bias is 0 by symmetry). Differences of imputed rows are exactly differences of fused scores.
    Steps are damped (half-way); the iterate with the best nDCG@10 on ``data`` is kept, then
    ``platt_scale`` makes the score a relevance logit again.
    """
    rng = np.random.default_rng(seed)
    cols = [SIGNALS.index(s) for s in signals]
    defaults = FusionWeights()
    w = start or FusionWeights(**{s: (getattr(defaults, s) if s in signals else 0.0) for s in SIGNALS})
    w = w.model_copy(update={"bias": 0.0, **{s: 0.0 for s in SIGNALS if s not in signals}})
    best, best_score = w, data.ndcg_by_type(w)["mean"]
    for _ in range(iterations):
        better, worse = data.lambda_pairs(w, rng, per_query=per_query)
        filled = impute_like_fuse(data.x, w)[:, cols]
        diff = filled[better] - filled[worse]
        target = np.r_[np.ones(diff.shape[0], np.int64), np.zeros(diff.shape[0], np.int64)]
        new = learn_weights(np.vstack([diff, -diff]), target, signals, l2=l2)
        w = FusionWeights(bias=0.0, **{s: (getattr(w, s) + getattr(new, s)) / 2 for s in SIGNALS})
        score = data.ndcg_by_type(w)["mean"]
        if score > best_score:
            best, best_score = w, score
    final = platt_scale(data.x, data.labels, best)
    return FusionFit(weights=final, iterations=iterations, converged=True, n_rows=int(data.x.shape[0]),
                     n_relevant=int(data.labels.sum()), complete_rows=int(np.isfinite(data.x).all(axis=1).sum()),
                     objective=-best_score)


def refine_coordinate(data: RankingData, weights: FusionWeights, *, signals: Sequence[str] = SIGNALS,
                      rounds: int = 4, min_gain: float = 1e-4, with_recall: bool = False) -> tuple[FusionWeights, float]:
    """Coordinate ascent on mean nDCG@10 (Metzler & Croft's linear-ranker search): try scaling
    each weight (x0, x0.5, x0.8, x1.25, x2; a zero weight tries a small positive value), keep a
    change when it improves by more than ``min_gain``; stop after a round without one.
    ``with_recall``: the objective is mean nDCG@10 + mean R@10 (one query type's pools), the two
    numbers the do-no-harm rule judges by: nDCG alone happily trades a query's exact product out
    of the top 10 for several look-alikes, which the rule then refuses."""
    def objective(w: FusionWeights) -> float:
        if with_recall:
            nd, rec = data.ndcg_recall(w)
            return float(nd.mean() + rec.mean())
        return data.ndcg_by_type(w)["mean"]

    w = weights.model_copy(update={"bias": 0.0})
    best = objective(w)
    for _ in range(rounds):
        improved = False
        for s in signals:
            cur = getattr(w, s)
            scale = float(np.mean([getattr(w, t) for t in signals if getattr(w, t) > 0] or [1.0]))
            candidates = [cur * f for f in (0.0, 0.5, 0.8, 1.25, 2.0)] if cur > 0 else [0.05 * scale, 0.2 * scale]
            for c in candidates:
                trial = w.model_copy(update={s: float(c)})
                score = objective(trial)
                if score > best + min_gain:
                    w, best, improved = trial, score, True
        if not improved:
            break
    return platt_scale(data.x, data.labels, w), best
