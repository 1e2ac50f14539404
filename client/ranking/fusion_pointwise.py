"""Pointwise fit of the fusion weights (``learn_fusion``) and the Platt step that turns any
weights' fused score back into a relevance logit (``platt_scale``).

``rerank.learn_weights`` (non-negative L2 logistic regression) on the calibrated signals of every
candidate of every query type. ``learn_weights`` needs complete rows, but a text-only query has no
visual or attribute signal. ``fuse`` scores such a row as if each missing signal were the weighted
mean of the present ones (its renormalisation, see ``rerank``), so the fit imputes exactly that
and iterates to a fixed point: impute with the current weights -> refit -> ... At the fixed point
the fitted logit of *every* row, complete or not, is the score ``fuse`` gives it, so one weights
file serves photo, text and photo+text queries. Separate from ``fusion_search`` (the ranking
objectives), which builds on the imputation and the Platt step defined here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lenscope.client.ranking.fusion import SIGNALS, FusionWeights, learn_weights
from lenscope.client.ranking.pools import FitError


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
