"""Calibration + fusion for an evaluation: resolve them (files, the manifest's shipped fit, a fit
on another split's labelled queries through the live stack, or the index bundle's own), and the
``lenscope rerank fit`` command body that fits them and writes the files."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.catalog.rows import QuerySet
from lenscope.client.eval.config import CalibrationMethod, EvalConfig, EvaluationError, Log
from lenscope.client.eval.queries import collect_pools, load_queries, prefetch, split_queries
from lenscope.client.eval.stack import LiveStack, live_stack
from lenscope.client.index.pseudo_queries import catalog_fingerprint, views_from_rows
from lenscope.client.index.reader import scan_catalog
from lenscope.client.ranking.binding_file import BindingFile, binding_path_for, save_binding
from lenscope.client.ranking.calibration import CalibrationSet, load_calibration, parse_calibration, save_calibration
from lenscope.client.ranking.fusion import FusionWeights, load_weights, parse_weights, save_weights
from lenscope.client.ranking.fusion_fit import FittedFusion, fit_fusion, weights_without
from lenscope.client.ranking.metrics import Threshold
from lenscope.client.ranking.policy import FitBinding, binding_mismatch
from lenscope.client.ranking.pools import CandidatePool


@dataclass
class RankingSetup:
    calibration: CalibrationSet | None
    calibration_source: str
    weights: FusionWeights
    weights_no_heads: FusionWeights
    weights_source: str
    fitted: FittedFusion | None = None
    fit_seconds: float | None = None


def fit_on_split(stack: LiveStack, qset: QuerySet, split: str, *, max_per_type: int | None = None, seed: int = 0,
                 thresholds: Sequence[Threshold] = ("max", 2), method: CalibrationMethod = "platt"
                 ) -> tuple[FittedFusion, list[CandidatePool]]:
    """Index ``split``, run its labelled queries through the engine, fit calibration + weights."""
    queries = split_queries(qset, split, max_per_type, seed)
    if not queries:
        raise EvaluationError(f"no labelled queries of split {split!r} to fit on")
    ix = stack.index(split)
    prefetch(ix, qset, queries)
    t0 = time.perf_counter()
    pools = collect_pools(ix, qset, queries)
    fitted = fit_fusion(pools, thresholds=thresholds, method=method, use_heads=stack.manifest.heads_trained,
                        model_hash=stack.manifest.model_hash,
                        serving_pools=lambda cal: collect_pools(ix, qset, queries, cal))
    stack.log(f"fitted calibration + fusion on {len(queries)} {split} queries in {time.perf_counter() - t0:.1f} s "
              f"(relevant: grade >= {fitted.min_grade}; weights {fitted.weights.model_dump()})")
    return fitted, pools


def shipped_fit_applies(manifest: Any, engine: Any) -> tuple[bool, str]:
    """Whether serving applies the model's shipped fit to this index, by the same rule as the index
    build (``ranking.policy.binding_mismatch``: bound to this model AND this catalog), and why."""
    fit = manifest.ranking_fit
    if fit is None:
        return False, "the model ships no fit"
    policy = getattr(engine, "policy", None)
    fingerprint = policy.binding.catalog_fingerprint if policy is not None and policy.binding is not None else None
    if fingerprint is None:
        return False, "the index records no catalog fingerprint to check the shipped fit's binding against"
    binding = (FitBinding(model_hash=fit.model_hash, catalog_fingerprint=fit.catalog_fingerprint)
               if fit.model_hash and fit.catalog_fingerprint else None)
    why = binding_mismatch(binding, manifest.model_hash, fingerprint)
    return (True, f"bound to this model and catalog ({fit.source})") if why is None else (False, why)


def resolve_ranking(config: EvalConfig, stack: LiveStack, qset: QuerySet, engine: Any) -> RankingSetup:
    manifest = stack.manifest
    shipped = None
    if config.use_shipped and manifest.ranking_fit is not None:
        applies, why = shipped_fit_applies(manifest, engine)
        if applies:
            shipped = manifest.ranking_fit
        else:
            stack.log(f"the model's shipped fit is not applied, as serving would not apply it: {why}")
    cal_file, fus_file = config.calibration, config.fusion
    fitted = None
    fit_s = None
    if (cal_file is None or fus_file is None) and shipped is None and config.fit_split:
        t0 = time.perf_counter()
        try:
            fitted, _ = fit_on_split(stack, qset, config.fit_split, max_per_type=config.max_queries_per_type,
                                     seed=config.seed)
            fit_s = round(time.perf_counter() - t0, 1)
        except EvaluationError as err:
            stack.log(f"not fitting on {config.fit_split!r}: {err}")
    if cal_file is not None:
        calibration, cal_src = load_calibration(cal_file), f"file {cal_file}"
    elif shipped is not None:
        calibration = parse_calibration(shipped.calibration, f"calibration in the manifest ({shipped.source})")
        cal_src = f"the model manifest's fit ({shipped.source})"
    elif fitted is not None:
        calibration, cal_src = fitted.calibration, f"fitted on the {config.fit_split} split's labelled queries"
    else:
        calibration, cal_src = engine.calibration, "index bundle (fitted on the indexed catalog's own pairs)"
    if fus_file is not None or shipped is not None:
        if fus_file is not None:
            weights, w_src = load_weights(fus_file), f"file {fus_file}"
        else:
            weights = parse_weights(shipped.fusion, f"in the manifest ({shipped.source})")
            w_src = f"the model manifest's fit ({shipped.source})"
        no_heads = weights_without(weights, "attributes")
    elif fitted is not None:
        weights, no_heads = fitted.weights, fitted.weights_no_heads
        w_src = f"fitted on the {config.fit_split} split's labelled queries"
    else:
        weights, w_src = engine.weights, "index bundle (defaults)"
        no_heads = weights_without(weights, "attributes")
    if not manifest.heads_trained and weights.attributes > 0:
        weights = weights_without(weights, "attributes")
        w_src += "; attribute weight set to 0 (the model's heads are untrained)"
    return RankingSetup(calibration, cal_src, weights, no_heads, w_src, fitted, fit_s)


def fit_and_save(config: EvalConfig, out_fusion: Path, out_calibration: Path | None, *,
                 thresholds: Sequence[Threshold] = ("max", 2), method: CalibrationMethod = "platt",
                 log: Log = print) -> dict[str, Any]:
    """Fit calibration + fusion on ``config.split``'s labelled queries through the live stack and
    write the weights file (and the calibration file). Returns the fit summary."""
    catalog = read_catalog(config.catalog)
    qset = load_queries(config, catalog)
    with live_stack(config, log) as stack:
        fitted, pools = fit_on_split(stack, qset, config.split, max_per_type=config.max_queries_per_type,
                                     seed=config.seed, thresholds=thresholds, method=method)
        manifest = stack.manifest
    binding = catalog_binding(config.catalog, manifest.model_hash, config.split)
    out_fusion.parent.mkdir(parents=True, exist_ok=True)
    save_weights(fitted.weights, out_fusion)
    if out_calibration is not None:
        out_calibration.parent.mkdir(parents=True, exist_ok=True)
        save_calibration(fitted.calibration, out_calibration)
    binding_out = binding_path_for(out_fusion)
    save_binding(binding, binding_out)
    log(f"bound the fit to model {binding.model_hash} and catalog {binding.catalog_fingerprint} "
        f"({binding.products} products) -> {binding_out}: an index build applies it there and nowhere else")
    summary = fitted.summary()
    summary.update({"model": manifest.spec.name, "model_hash": manifest.model_hash, "split": config.split,
                    "queries": len(pools), "fusion_file": str(out_fusion),
                    "calibration_file": None if out_calibration is None else str(out_calibration),
                    "binding_file": str(binding_out), "binding": binding.model_dump()})
    return summary


def catalog_binding(catalog: Path, model_hash: str, split: str) -> BindingFile:
    """What a fit made on ``catalog`` is bound to: the model, and the fingerprint the index build
    computes for the whole catalog (every valid row; an index of a subset or of a catalog with rows
    whose images fail is another catalog, and the fit is not applied there)."""
    views = views_from_rows(scan_catalog(catalog).rows)
    return BindingFile(model_hash=model_hash, catalog_fingerprint=catalog_fingerprint(views), catalog=str(catalog),
                       products=len(views), fitted_on_split=split)

