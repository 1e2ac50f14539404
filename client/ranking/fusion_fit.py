"""Fit per-pair calibration and fusion weights from labelled queries. Pure numpy, no I/O but the
small file helpers at the end.

Input: for each labelled query, its **candidate pool** as the search engine scored it (a
``CandidatePool``: per candidate the raw cosine of every similarity signal the query has, the
attribute agreement and popularity prior, and the query's grade for that product). The evaluation
harness collects these through the live stack (tritonserver + index + SearchEngine) on the
validation split; any other source in the same shape works (e.g. logged searches + clicks).

1. **Calibration** (``fit_pool_calibration``): per modality pair, the raw cosines of the candidates
   of the queries that carry that modality, labelled relevant / not, fitted with
   ``calibration.fit_calibration_set`` (Platt by default). Image pairs (``image_image``,
   ``image_title``) learn from photo-only queries and text pairs (``text_image``, ``text_title``)
   from text-only queries when the file has them, so a pair is not fitted on the other modality's
   evidence. Unlike the index-time fit on a catalog's own pairs, labelled queries also calibrate
   ``text_title`` (a query text is written independently of the title), and the negatives are the
   hard candidates the re-ranker really sees, not random products.
2. **Fusion weights** (``learn_fusion``): ``rerank.learn_weights`` (non-negative L2 logistic
   regression) on the calibrated signals of every candidate of every query type. ``learn_weights``
   needs complete rows, but a text-only query has no visual or attribute signal. ``fuse`` scores
   such a row as if each missing signal were the weighted mean of the present ones (its
   renormalisation, see ``rerank``), so the fit imputes exactly that and iterates to a fixed point:
   impute with the current weights -> refit -> ... At the fixed point the fitted logit of *every*
   row, complete or not, is the score ``fuse`` gives it, so one weights file serves photo, text and
   photo+text queries.
3. **Ranking objective** (``learn_lambda``): pointwise relevance is not what nDCG rewards; the
   same ``learn_weights`` on score *differences* of candidate pairs of one query, drawn in
   proportion to how much swapping them would change nDCG@10 (LambdaRank's weighting, with a
   linear model), fits the order of the top directly; a one-variable Platt step then sets scale
   and bias so sigmoid(score) stays a relevance probability.
4. **Selection** (``fit_fusion``): which grade counts as "relevant" (the query's top grade, or
   >= 2) and which objective, chosen by the mean nDCG@10 over query types that the fitted
   calibration + weights give on the same pools, then polished by coordinate ascent on that
   metric (optional). Selection and fitting use the validation split only; the test split is
   never seen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lenscope.client.ranking.calibration import CalibrationSet, fit_pair
from lenscope.client.ranking.metrics import Threshold, ndcg_at_k
from lenscope.client.ranking.fusion import SIGNAL_PAIR, SIGNALS, FusionWeights, fuse, learn_weights

QueryType = Literal["text", "image", "image+text"]
SIMILARITY_SIGNALS: tuple[str, ...] = ("visual", "image_title", "text_image", "text_title")
# which query input each similarity signal comes from
SIGNAL_INPUT = {"visual": "image", "image_title": "image", "text_image": "text", "text_title": "text"}
QUERY_INPUTS: dict[str, frozenset[str]] = {
    "image": frozenset({"image"}), "text": frozenset({"text"}), "image+text": frozenset({"image", "text"}),
}


class FitError(ValueError):
    """Not enough labelled data to fit; the message says what is missing."""


@dataclass(frozen=True)
class CandidatePool:
    """One labelled query's candidates, as the engine scored them.

    ``signals[name]`` is an (n,) float array: raw cosines for the similarity signals, the [0, 1]
    attribute agreement and popularity prior; NaN (or a missing key) = absent for that candidate.
    ``grades`` are the query's relevance grades of the candidates (0 = not judged relevant).
    """

    query_id: str
    query_type: QueryType
    product_ids: tuple[str, ...]
    signals: dict[str, np.ndarray]
    grades: np.ndarray
    relevance: dict[str, int] = field(default_factory=dict)  # all judged products (for nDCG's ideal)

    def __post_init__(self) -> None:
        n = len(self.product_ids)
        if self.grades.shape != (n,):
            raise ValueError(f"query {self.query_id}: {self.grades.shape} grades for {n} candidates")
        for name, values in self.signals.items():
            if name not in SIGNALS:
                raise ValueError(f"query {self.query_id}: unknown signal {name!r}")
            if np.shape(values) != (n,):
                raise ValueError(f"query {self.query_id}: signal {name} has shape {np.shape(values)}, want ({n},)")

    def __len__(self) -> int:
        return len(self.product_ids)

    def labels(self, min_grade: Threshold) -> np.ndarray:
        """0/1 per candidate: grade >= threshold (``"max"``: the query's highest judged grade)."""
        if min_grade == "max":
            judged = [g for g in self.relevance.values() if g > 0]
            top = max(judged) if judged else int(self.grades.max(initial=0))
            threshold = max(top, 1)
        else:
            threshold = int(min_grade)
        return (self.grades >= threshold).astype(np.int8)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def pair_data(pools: Sequence[CandidatePool], min_grade: Threshold = "max"
              ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Labelled raw cosines per modality pair (pair -> (scores, labels)) and a note per pair.

    A pair learns from the queries of its input modality alone (photo-only for image pairs,
    text-only for text pairs); only when there are none does it use photo+text queries.
    """
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    notes: dict[str, str] = {}
    for signal in SIMILARITY_SIGNALS:
        pair = SIGNAL_PAIR[signal]
        modality = SIGNAL_INPUT[signal]
        has = [p for p in pools if signal in p.signals and np.isfinite(p.signals[signal]).any()]
        pure = [p for p in has if QUERY_INPUTS[p.query_type] == {modality}]
        use = pure or has
        if not use:
            notes[pair] = f"skipped: no labelled query carries a {modality} input"
            continue
        scores, labels = [], []
        for p in use:
            s = np.asarray(p.signals[signal], dtype=np.float64)
            ok = np.isfinite(s)
            scores.append(s[ok])
            labels.append(p.labels(min_grade)[ok])
        sc, lb = np.concatenate(scores), np.concatenate(labels)
        kinds = sorted({p.query_type for p in use})
        notes[pair] = (f"{len(use)} {'/'.join(kinds)} queries, {int(lb.sum())} relevant and "
                       f"{int(lb.size - lb.sum())} other candidates (relevant: grade >= {min_grade})")
        data[pair] = (sc, lb)
    return data, notes


def fit_pool_calibration(pools: Sequence[CandidatePool], *, min_grade: Threshold = "max",
                         method: Literal["platt", "isotonic"] = "platt", model_hash: str | None = None
                         ) -> tuple[CalibrationSet, dict[str, str]]:
    """Fit every pair that has both relevant and irrelevant candidates; notes say why others were skipped."""
    data, notes = pair_data(pools, min_grade)
    pairs = {}
    for pair, (scores, labels) in data.items():
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            notes[pair] = f"skipped: {n_pos} relevant of {labels.size} candidates; need both kinds"
            continue
        pairs[pair] = fit_pair(pair, scores, labels, method=method)
    if not pairs:
        raise FitError("no modality pair could be calibrated: " + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    return CalibrationSet(model_hash=model_hash, pairs=pairs), notes


def calibrated_signals(pool: CandidatePool, calibration: CalibrationSet | None) -> dict[str, np.ndarray]:
    """What the engine fuses: calibrated similarities (a pair without calibration is left out when a
    calibration set is given, raw when none is; as ``SearchEngine``), attributes and popularity as is."""
    out: dict[str, np.ndarray] = {}
    for name, values in pool.signals.items():
        v = np.asarray(values, dtype=np.float64)
        if name in SIGNAL_PAIR:
            pair = SIGNAL_PAIR[name]
            if calibration is None:
                out[name] = v
            elif pair in calibration.pairs:
                out[name] = np.where(np.isfinite(v), calibration.apply(pair, np.nan_to_num(v)), np.nan)
        else:
            out[name] = v
    return out


# --------------------------------------------------------------------------------------------------
# Fusion weights
# --------------------------------------------------------------------------------------------------


def feature_matrix(pools: Sequence[CandidatePool], calibration: CalibrationSet | None,
                   min_grade: Threshold = "max") -> tuple[np.ndarray, np.ndarray]:
    """(n, len(SIGNALS)) calibrated features (NaN = absent) and 0/1 labels over all candidates."""
    rows, labels = [], []
    for p in pools:
        sig = calibrated_signals(p, calibration)
        x = np.full((len(p), len(SIGNALS)), np.nan)
        for j, name in enumerate(SIGNALS):
            if name in sig:
                x[:, j] = sig[name]
        rows.append(x)
        labels.append(p.labels(min_grade))
    if not rows:
        raise FitError("no labelled candidates")
    return np.vstack(rows), np.concatenate(labels)


def impute_like_fuse(features: np.ndarray, weights: FusionWeights, signals: Sequence[str] = SIGNALS) -> np.ndarray:
    """Replace each row's missing signals by the weighted mean of its present ones (``fuse``'s
    renormalisation); 0 where a row has no present signal with weight > 0."""
    x = np.asarray(features, dtype=np.float64)
    w = np.array([getattr(weights, s) for s in signals], dtype=np.float64)
    present = np.isfinite(x)
    wp = present @ w
    num = np.where(present, np.nan_to_num(x), 0.0) @ w
    mean = np.divide(num, wp, out=np.zeros(len(x)), where=wp > 0)
    return np.where(present, x, mean[:, None])


@dataclass(frozen=True)
class FusionFit:
    weights: FusionWeights
    iterations: int
    converged: bool
    n_rows: int
    n_relevant: int
    complete_rows: int
    objective: float  # penalised log-loss of sigmoid(fuse score) at ``weights``


def fuse_objective(features: np.ndarray, labels: np.ndarray, weights: FusionWeights, l2: float) -> float:
    """Mean log-loss of sigmoid(score) with score exactly as ``fuse`` computes it on rows with
    missing signals, plus ``learn_weights``' L2 penalty: what the fixed point minimises."""
    x = impute_like_fuse(features, weights)
    z = x @ weights.vector() + weights.bias
    t = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - t * z) + 0.5 * l2 * float(np.sum(weights.vector() ** 2)))


def learn_fusion(features: np.ndarray, labels: np.ndarray, *, signals: Sequence[str] = SIGNALS, l2: float = 1e-3,
                 max_iter: int = 50, tol: float = 1e-5) -> FusionFit:
    """``learn_weights`` on rows with missing signals, imputed as ``fuse`` would (fixed point).

    ``features`` is (n, len(SIGNALS)) with NaN for absent signals; ``signals`` selects which ones
    may get a non-zero weight (e.g. all but ``attributes`` for a heads-off model). Starts from
    the fit on complete rows when there are enough of them (both classes), else from the
    defaults. Each step refits on the rows imputed with the current weights; the step is damped
    (half-way) so the iteration does not oscillate, and the iterate with the lowest
    ``fuse_objective`` is returned (so the result is never worse than the complete-row start).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or x.shape[1] != len(SIGNALS) or y.shape != (x.shape[0],):
        raise FitError(f"features must be (n, {len(SIGNALS)}) and labels (n,), got {x.shape} and {y.shape}")
    if y.sum() == 0 or y.sum() == len(y):
        raise FitError(f"labels need both relevant and irrelevant candidates, got {int(y.sum())} of {len(y)}")
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown:
        raise FitError(f"unknown signal(s) {unknown}; known: {list(SIGNALS)}")
    cols = [SIGNALS.index(s) for s in signals]
    x = x.copy()
    x[:, [j for j in range(len(SIGNALS)) if j not in cols]] = np.nan  # signals not fitted are absent
    usable = np.isfinite(x).any(axis=1)
    x, y = x[usable], y[usable]
    complete = np.isfinite(x[:, cols]).all(axis=1)
    if complete.sum() >= 20 and 0 < y[complete].sum() < complete.sum():
        w = learn_weights(x[complete][:, cols], y[complete], signals, l2=l2)
    else:
        defaults = FusionWeights()
        w = FusionWeights(**{s: (getattr(defaults, s) if s in signals else 0.0) for s in SIGNALS})
    best, best_obj = w, fuse_objective(x, y, w, l2)
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        new = learn_weights(impute_like_fuse(x, w)[:, cols], y, signals, l2=l2)
        damped = FusionWeights(bias=(w.bias + new.bias) / 2,
                               **{s: (getattr(w, s) + getattr(new, s)) / 2 for s in SIGNALS})
        delta = float(np.max(np.abs(np.r_[damped.vector() - w.vector(), damped.bias - w.bias])))
        w = damped
        obj = fuse_objective(x, y, w, l2)
        if obj < best_obj:
            best, best_obj = w, obj
        if delta < tol:
            converged = True
            break
    return FusionFit(weights=best, iterations=iterations, converged=converged, n_rows=int(len(y)), n_relevant=int(y.sum()),
                     complete_rows=int(complete.sum()), objective=best_obj)


def gain(grades: np.ndarray) -> np.ndarray:
    """nDCG's exponential gain 2^g - 1."""
    return np.power(2.0, np.asarray(grades, dtype=np.float64)) - 1.0


def platt_scale(features: np.ndarray, labels: np.ndarray, weights: FusionWeights) -> FusionWeights:
    """Rescale weights by a > 0 and set the bias so that sigmoid(fused score) fits the 0/1
    ``labels`` (a one-variable logistic regression on the fused score): the ranking is unchanged
    and the fused score is a relevance logit again."""
    from lenscope.client.ranking.calibration import fit_logistic

    z = impute_like_fuse(features, weights) @ weights.vector()
    ok = np.isfinite(z)
    (a,), b = fit_logistic(z[ok][:, None], np.asarray(labels, dtype=np.float64)[ok], 0.0)
    if not a > 0:
        return weights
    return FusionWeights(bias=float(b), **{s: float(a) * getattr(weights, s) for s in SIGNALS})


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
                      rounds: int = 4, min_gain: float = 1e-4) -> tuple[FusionWeights, float]:
    """Coordinate ascent on mean nDCG@10 (Metzler & Croft's linear-ranker search): try scaling
    each weight (x0, x0.5, x0.8, x1.25, x2; a zero weight tries a small positive value), keep a
    change when it improves by more than ``min_gain``; stop after a round without one."""
    w = weights.model_copy(update={"bias": 0.0})
    best = data.ndcg_by_type(w)["mean"]
    for _ in range(rounds):
        improved = False
        for s in signals:
            cur = getattr(w, s)
            scale = float(np.mean([getattr(w, t) for t in signals if getattr(w, t) > 0] or [1.0]))
            candidates = [cur * f for f in (0.0, 0.5, 0.8, 1.25, 2.0)] if cur > 0 else [0.05 * scale, 0.2 * scale]
            for c in candidates:
                trial = w.model_copy(update={s: float(c)})
                score = data.ndcg_by_type(trial)["mean"]
                if score > best + min_gain:
                    w, best, improved = trial, score, True
        if not improved:
            break
    return platt_scale(data.x, data.labels, w), best


def rank_pool(pool: CandidatePool, calibration: CalibrationSet | None, weights: FusionWeights) -> list[str]:
    """The pool re-ranked the way the engine ranks: calibrate -> ``fuse`` -> order (ties: pool order)."""
    fused = fuse(calibrated_signals(pool, calibration), weights)
    return [pool.product_ids[i] for i in fused.order()]


def mean_ndcg(pools: Sequence[CandidatePool], calibration: CalibrationSet | None, weights: FusionWeights
              ) -> dict[str, float]:
    """nDCG@10 per query type (and their unweighted mean under "mean") of the re-fused pools."""
    by_type: dict[str, list[float]] = {}
    for p in pools:
        rel = p.relevance or {pid: int(g) for pid, g in zip(p.product_ids, p.grades) if g > 0}
        by_type.setdefault(p.query_type, []).append(ndcg_at_k(rank_pool(p, calibration, weights), rel, 10))
    out = {t: float(np.mean(v)) for t, v in sorted(by_type.items())}
    out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


@dataclass(frozen=True)
class FittedFusion:
    """Everything ``fit_fusion`` decided, with the evidence."""

    calibration: CalibrationSet
    weights: FusionWeights
    weights_no_heads: FusionWeights
    min_grade: Threshold
    objective: str
    calibration_notes: dict[str, str]
    fit: FusionFit
    selection: dict[str, dict[str, float]]  # candidate -> nDCG@10 per query type on the fitting pools
    baseline: dict[str, dict[str, float]]  # reference rankings' nDCG@10 on the same pools

    def summary(self) -> dict[str, Any]:
        return {
            "min_grade": self.min_grade,
            "objective": self.objective,
            "weights": self.weights.model_dump(),
            "weights_no_heads": self.weights_no_heads.model_dump(),
            "calibration_notes": self.calibration_notes,
            "fit": {"iterations": self.fit.iterations, "converged": self.fit.converged, "rows": self.fit.n_rows,
                    "relevant": self.fit.n_relevant, "complete_rows": self.fit.complete_rows},
            "selection_ndcg10": self.selection,
            "baseline_ndcg10": self.baseline,
            "gap": gap_table(self.calibration),
        }


Objective = Literal["pointwise", "lambda"]


def fit_fusion(pools: Sequence[CandidatePool], *, thresholds: Sequence[Threshold] = ("max", 2),
               objectives: Sequence[Objective] = ("pointwise", "lambda"), refine: bool = True,
               method: Literal["platt", "isotonic"] = "platt", use_heads: bool = True, l2: float = 1e-3,
               model_hash: str | None = None, seed: int = 0,
               serving_pools: Callable[[CalibrationSet], Sequence[CandidatePool]] | None = None) -> FittedFusion:
    """Fit calibration + weights for each relevance threshold and objective, keep the one with the
    best mean nDCG@10 over query types on the fitting pools, optionally polish it by coordinate
    ascent on that metric.

    Objectives (both ``rerank.learn_weights`` logistic regressions): ``pointwise``
    (``learn_fusion``: relevant vs not at the threshold) and ``lambda`` (``learn_lambda``:
    pairwise on LambdaRank-weighted pairs; uses every grade, the threshold only sets the
    calibration's labels and the final Platt step's). With ``use_heads=False`` (a model whose
    attribute heads are untrained) the attribute signal keeps weight 0. ``weights_no_heads`` is
    always fitted too, the same way without ``attributes``: the heads-off ranking of the harness.

    ``pools`` fit the calibration. The engine builds its candidate pool with the calibration in
    place (it merges the query vectors' ANN results on the calibrated scale), so the pools the
    weights should be fitted on depend on the calibration: ``serving_pools(calibration)``, when
    given, returns them (the harness re-runs the queries with that calibration installed);
    without it the weights are fitted on ``pools`` too.
    """
    if not pools:
        raise FitError("no labelled queries to fit on")
    all_but_attr = tuple(s for s in SIGNALS if s != "attributes")
    signals = SIGNALS if use_heads else all_but_attr

    def learn(objective: str, data: RankingData, sigs: Sequence[str]) -> FusionFit:
        if objective == "lambda":
            start = learn_fusion(data.x, data.labels, signals=sigs, l2=l2).weights
            return learn_lambda(data, signals=sigs, start=start, l2=l2, seed=seed)
        return learn_fusion(data.x, data.labels, signals=sigs, l2=l2)

    best: tuple[float, Any] | None = None
    selection: dict[str, dict[str, float]] = {}
    for t in thresholds:
        try:
            cal, notes = fit_pool_calibration(pools, min_grade=t, method=method, model_hash=model_hash)
            fit_pools = list(serving_pools(cal)) if serving_pools is not None else list(pools)
            data = RankingData(fit_pools, cal, t)
        except (FitError, ValueError) as err:
            selection[f"calibration at grade >= {t}"] = {"error": str(err)}  # type: ignore[dict-item]
            continue
        for objective in objectives:
            key = f"{objective}, relevant grade >= {t}"
            try:
                fit = learn(objective, data, signals)
            except (FitError, ValueError) as err:
                selection[key] = {"error": str(err)}  # type: ignore[dict-item]
                continue
            score = data.ndcg_by_type(fit.weights)
            selection[key] = score
            if best is None or score["mean"] > best[0] + 1e-12:
                best = (score["mean"], (t, objective, cal, notes, fit, data, fit_pools))
    if best is None:
        raise FitError(f"nothing could be fitted: {selection}")
    t, objective, cal, notes, fit, data, fit_pools = best[1]
    weights = fit.weights
    no_heads = learn(objective, data, all_but_attr).weights
    if refine:
        weights, _ = refine_coordinate(data, weights, signals=signals)
        no_heads, _ = refine_coordinate(data, no_heads, signals=all_but_attr)
        selection[f"{objective}, relevant grade >= {t}, + coordinate ascent"] = data.ndcg_by_type(weights)
        objective = f"{objective} + coordinate ascent"
    equal = FusionWeights(bias=0.0, **{s: (1.0 if s in SIMILARITY_SIGNALS else 0.0) for s in SIGNALS})
    raw = RankingData(fit_pools, None, t)
    baseline = {"defaults (calibrated)": data.ndcg_by_type(FusionWeights()),
                "equal similarity weights (calibrated)": data.ndcg_by_type(equal),
                "equal similarity weights (raw)": raw.ndcg_by_type(equal),
                "heads off (fitted without attributes)": data.ndcg_by_type(no_heads)}
    for single in SIMILARITY_SIGNALS:
        having = [p for p in fit_pools if single in p.signals]
        if having:
            only = FusionWeights(bias=0.0, **{s: (1.0 if s == single else 0.0) for s in SIGNALS})
            baseline[f"single:{single} (raw)"] = RankingData(having, None, t).ndcg_by_type(only)
    return FittedFusion(calibration=cal, weights=weights, weights_no_heads=no_heads, min_grade=t,
                        objective=objective, calibration_notes=notes, fit=fit, selection=selection,
                        baseline=baseline)


# --------------------------------------------------------------------------------------------------
# Modality gap
# --------------------------------------------------------------------------------------------------


def gap_table(calibration: CalibrationSet, reference: str = "image_image") -> dict[str, dict[str, float | None]]:
    """Per pair: raw matched / unmatched mean cosine of the fitting data, the calibrated values of
    those means, and the gap to the reference pair's matched mean before and after calibration."""
    out: dict[str, dict[str, float | None]] = {}
    ref = calibration.pairs.get(reference)  # type: ignore[call-overload]
    ref_raw = ref.report.mean_matched if ref is not None else None
    ref_cal = float(ref.apply(np.array([ref_raw]))[0]) if ref is not None and ref_raw is not None else None
    for pair, c in calibration.pairs.items():
        r = c.report
        cm = None if r.mean_matched is None else float(c.apply(np.array([r.mean_matched]))[0])
        cu = None if r.mean_unmatched is None else float(c.apply(np.array([r.mean_unmatched]))[0])
        out[pair] = {
            "raw_matched": r.mean_matched, "raw_unmatched": r.mean_unmatched,
            "calibrated_at_matched_mean": cm, "calibrated_at_unmatched_mean": cu,
            f"gap_to_{reference}_raw": None if ref_raw is None or r.mean_matched is None else ref_raw - r.mean_matched,
            f"gap_to_{reference}_calibrated": None if ref_cal is None or cm is None else ref_cal - cm,
        }
    return out


def gap_samples(pools: Sequence[CandidatePool], calibration: CalibrationSet | None, min_grade: Threshold = "max"
                ) -> dict[str, dict[str, np.ndarray]]:
    """Per pair: raw and calibrated values of matched (relevant) and unmatched (grade 0) candidates
    (partially relevant ones left out), from each signal's pure-modality queries (as ``pair_data``)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for signal in SIMILARITY_SIGNALS:
        pair = SIGNAL_PAIR[signal]
        modality = SIGNAL_INPUT[signal]
        has = [p for p in pools if signal in p.signals and np.isfinite(p.signals[signal]).any()]
        use = [p for p in has if QUERY_INPUTS[p.query_type] == {modality}] or has
        if not use:
            continue
        m, u = [], []
        for p in use:
            s = np.asarray(p.signals[signal], dtype=np.float64)
            lab = p.labels(min_grade).astype(bool)
            ok = np.isfinite(s)
            m.append(s[ok & lab])
            u.append(s[ok & (p.grades == 0)])
        raw_m, raw_u = np.concatenate(m), np.concatenate(u)
        entry = {"raw_matched": raw_m, "raw_unmatched": raw_u}
        if calibration is not None and pair in calibration.pairs:
            entry["calibrated_matched"] = calibration.apply(pair, raw_m)
            entry["calibrated_unmatched"] = calibration.apply(pair, raw_u)
        out[pair] = entry
    return out


# --------------------------------------------------------------------------------------------------
# Labelled feature rows from a file (logged searches + clicks, or anything else)
# --------------------------------------------------------------------------------------------------


def read_labelled_rows(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """JSONL, one candidate per line: ``{"label": 0|1, "<signal>": value, ...}``; signal values are
    the [0, 1] values ``fuse`` receives (calibrated similarities, attribute agreement, popularity);
    a signal left out (or null) is absent for that row. Returns (features with NaN, labels)."""
    path = Path(path)
    rows, labels, problems = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"line {n}: not JSON: {err.msg}")
                continue
            if not isinstance(rec, dict) or rec.get("label") not in (0, 1):
                problems.append(f"line {n}: needs an object with label 0 or 1")
                continue
            unknown = sorted(set(rec) - set(SIGNALS) - {"label", "query_id", "product_id"})
            if unknown:
                problems.append(f"line {n}: unknown field(s) {unknown}; signals: {list(SIGNALS)}")
                continue
            x = []
            for s in SIGNALS:
                v = rec.get(s)
                if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                    problems.append(f"line {n}: {s} must be a finite number or null")
                    v = None
                x.append(np.nan if v is None else float(v))
            rows.append(x)
            labels.append(int(rec["label"]))
    if problems:
        shown = "\n  - ".join(problems[:20])
        raise FitError(f"{path}: {len(problems)} problem(s):\n  - {shown}")
    if not rows:
        raise FitError(f"{path}: no rows")
    return np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.int8)


def shipped_fit_files(checkpoint_name: str, checkpoint_sha256: str | None, weights_dir: Path
                      ) -> dict[str, Path | None]:
    """The fusion / calibration files shipped for a checkpoint: ``<stem>.fusion.json`` and
    ``<stem>.calibration.json`` next to it in ``weights_dir``, only if the checkpoint file there
    is the one the model was exported from (same sha256)."""
    import hashlib

    ckpt = weights_dir / checkpoint_name
    found: dict[str, Path | None] = {"fusion": None, "calibration": None}
    if not ckpt.is_file() or checkpoint_sha256 is None:
        return found
    h = hashlib.sha256()
    with open(ckpt, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != checkpoint_sha256:
        return found
    stem = Path(checkpoint_name).stem
    for kind in found:
        p = weights_dir / f"{stem}.{kind}.json"
        found[kind] = p if p.is_file() else None
    return found


def pools_by_type(pools: Iterable[CandidatePool]) -> dict[str, list[CandidatePool]]:
    out: dict[str, list[CandidatePool]] = {}
    for p in pools:
        out.setdefault(p.query_type, []).append(p)
    return out


def weights_without(weights: FusionWeights, *signals: str) -> FusionWeights:
    """The same weights with ``signals`` set to 0 (e.g. heads off: ``weights_without(w, "attributes")``)."""
    return weights.model_copy(update={s: 0.0 for s in signals})


def as_weights(values: Mapping[str, float]) -> FusionWeights:
    return FusionWeights(**values)
