"""Fit per-pair calibration and fusion weights from labelled queries, and choose the best fit
(``fit_fusion``). Pure numpy, no I/O.

Input: for each labelled query, its **candidate pool** as the search engine scored it (a
``CandidatePool``: per candidate the raw cosine of every similarity signal the query has, the
attribute agreement and popularity prior, and the query's grade for that product). The evaluation
harness collects these through the live stack (tritonserver + index + SearchEngine) on the
validation split; any other source in the same shape works (e.g. logged searches + clicks, read
with ``labelled_rows.read_labelled_rows``).

1. **Calibration** (``pools.fit_pool_calibration``): per modality pair, on the raw cosines of the
   pools.
2. **Fusion weights** (``fusion_pointwise.learn_fusion``): pointwise logistic regression on the
   calibrated signals, imputing missing signals exactly as ``fuse`` does.
3. **Ranking objective** (``fusion_search.learn_lambda``): LambdaRank-weighted pairwise logistic
   regression, Platt-scaled back to a relevance logit.
4. **Selection** (``fit_fusion``, this module): which grade counts as "relevant" (the query's top
   grade, or >= 2) and which objective, chosen by the mean nDCG@10 over query types that the fitted
   calibration + weights give on the same pools, then polished by coordinate ascent on that
   metric (``fusion_search.refine_coordinate``, optional). Selection and fitting use the
   validation split only; the test split is never seen.

The modality gap report on a fit is in ``modality_gap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.metrics import Threshold, ndcg_at_k
from lenscope.client.ranking.fusion import SIGNALS, FusionWeights, fuse
from lenscope.client.ranking.fusion_pointwise import FusionFit, learn_fusion
from lenscope.client.ranking.fusion_search import RankingData, learn_lambda, refine_coordinate
from lenscope.client.ranking.modality_gap import gap_table
from lenscope.client.ranking.pools import (
    SIMILARITY_SIGNALS,
    CandidatePool,
    FitError,
    calibrated_signals,
    fit_pool_calibration,
    pools_by_type,
)


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
            selection[f"calibration at grade >= {t}"] = {"skipped": str(err)}  # type: ignore[dict-item]
            continue
        for objective in objectives:
            key = f"{objective}, relevant grade >= {t}"
            try:
                fit = learn(objective, data, signals)
            except (FitError, ValueError) as err:
                selection[key] = {"skipped": str(err)}  # type: ignore[dict-item]
                continue
            score = data.ndcg_by_type(fit.weights)
            selection[key] = score
            if best is None or score["mean"] > best[0] + 1e-12:
                best = (score["mean"], (t, objective, cal, notes, fit, data, fit_pools))
    if best is None:
        raise FitError(f"nothing could be fitted: {selection}")
    t, objective, cal, notes, fit, data, fit_pools = best[1]
    weights = fit.weights
    # without heads the fit above already is the heads-off fit: do not fit it twice
    no_heads = learn(objective, data, all_but_attr).weights if use_heads else weights
    if refine:
        weights, _ = refine_coordinate(data, weights, signals=signals)
        no_heads = refine_coordinate(data, no_heads, signals=all_but_attr)[0] if use_heads else weights
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


def weights_without(weights: FusionWeights, *signals: str) -> FusionWeights:
    """The same weights with ``signals`` set to 0 (e.g. heads off: ``weights_without(w, "attributes")``)."""
    return weights.model_copy(update={s: 0.0 for s in signals})


def as_weights(values: Mapping[str, float]) -> FusionWeights:
    return FusionWeights(**values)


def fit_type_weights(pools: Sequence[CandidatePool], calibration: CalibrationSet | None,
                     signals_by_type: Mapping[str, Sequence[str]], *, min_grade: Threshold = "max",
                     refine: bool = True, l2: float = 1e-3) -> dict[str, FusionWeights]:
    """One set of fusion weights per query type, each fitted on that type's pools alone (pointwise,
    then coordinate ascent on its nDCG@10 + R@10) over the signals ``signals_by_type[type]`` allows.

    Why per type: ``fuse`` renormalises over the signals a query has, so one weights file makes
    text queries share the text_image : text_title balance of photo+text queries, and photo queries
    the visual : image_title balance; a photo+text query whose text names another variant wants the
    text to dominate, which then costs the photo-only and text-only rankings. Separate fits remove
    that coupling; the do-no-harm check then judges each type's own fused ranking. A type whose
    pools cannot be fitted (one class only, no pools) is left out."""
    out: dict[str, FusionWeights] = {}
    for qtype, mine in sorted(pools_by_type(pools).items()):
        signals = [s for s in signals_by_type.get(qtype, ()) if s in SIGNALS]
        if not signals:
            continue
        try:
            data = RankingData(mine, calibration, min_grade)
            weights = learn_fusion(data.x, data.labels, signals=signals, l2=l2).weights
        except (FitError, ValueError):
            continue
        if refine:  # on nDCG@10 + R@10: what the do-no-harm rule judges the type by
            weights, _ = refine_coordinate(data, weights, signals=signals, with_recall=True)
        out[qtype] = weights
    return out
