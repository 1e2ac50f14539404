"""Labelled queries through the engine: load and split them, embed them through Triton once
(``prefetch``), collect each query's candidate pool with its raw signals (what fusion is fitted
on), and run every ranking variant by swapping the engine's weights and calibration."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lenscope.client.catalog.reader import read_queries
from lenscope.client.catalog.rows import Catalog, Query, QuerySet
from lenscope.client.core.modelspec import InputLimits
from lenscope.client.eval.config import QUERY_TYPES, TOP_K, TYPE_SIGNALS, EvalConfig, EvaluationError, Log
from lenscope.client.eval.stack import SplitIndex
from lenscope.client.inputs.image_files import OUTSIDE_CATALOG, ImageFileError, read_catalog_image
from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.fusion import SIGNALS, FusionWeights
from lenscope.client.ranking.pools import SIMILARITY_SIGNALS, CandidatePool


def load_queries(config: EvalConfig, catalog: Catalog) -> QuerySet:
    path = config.queries or catalog.root / "queries.jsonl"
    if not Path(path).is_file():
        raise EvaluationError(f"no queries file {path}; pass one in the documented format (catalog.py)")
    qset = read_queries(path, catalog)
    return dataclasses.replace(qset, allow_outside_images=config.allow_outside_images)


def split_queries(qset: QuerySet, split: str, max_per_type: int | None, seed: int) -> list[Query]:
    chosen = [q for q in qset if (q.split is None if split == "all" else q.split == split)]
    if max_per_type is None:
        return chosen
    rng = np.random.default_rng(seed)
    out: list[Query] = []
    for t in QUERY_TYPES:
        of_type = [q for q in chosen if q.type == t]
        if len(of_type) > max_per_type:
            keep = set(rng.choice(len(of_type), max_per_type, replace=False).tolist())
            of_type = [q for i, q in enumerate(of_type) if i in keep]
        out.extend(of_type)
    return out


def query_image(qset: QuerySet, q: Query) -> bytes | None:
    """A query's photo through the shared bounded reader: regular files only, confined to the queries
    file's folder unless the user allowed outside paths (`lenscope eval --allow-outside-images`)."""
    if q.image is None:
        return None
    try:
        return read_catalog_image(qset.root, q.image, max_bytes=InputLimits().max_image_bytes,
                                  allow_outside=qset.allow_outside_images)
    except ImageFileError as err:
        hint = " (lenscope eval --allow-outside-images)" if err.reason == OUTSIDE_CATALOG else ""
        raise EvaluationError(f"{qset.path}: query {q.query_id!r}: image={q.image!r}: {err}{hint}") from None


def prefetch(ix: SplitIndex, qset: QuerySet, queries: Sequence[Query]) -> None:
    images = [b for q in queries if (b := query_image(qset, q)) is not None]
    texts = [q.text for q in queries if q.text]
    ix.embedder.prefetch(images, texts)


PROBE_WEIGHTS = FusionWeights(bias=0.0, **{s: 1.0 for s in SIGNALS})


def _search(engine: Any, qset: QuerySet, q: Query, top_k: int = TOP_K):
    from lenscope.client.search.models import SearchQuery

    return engine.search(SearchQuery(image=query_image(qset, q), text=q.text, top_k=top_k, deadline_s=60.0))


@contextmanager
def _engine_state(engine: Any, weights: FusionWeights | None, calibration: CalibrationSet | None) -> Iterator[None]:
    # the variant's weights rank every query type (the bundle's per-type policy is set aside);
    # weights None: the engine as the index build left it (weights, calibration, policy): "served"
    if weights is None:
        yield
        return
    saved = engine.weights, engine.calibration, getattr(engine, "policy", None)
    engine.weights, engine.calibration, engine.policy = weights, calibration, None
    try:
        yield
    finally:
        engine.weights, engine.calibration, engine.policy = saved


def signal_values(hit: Any, weights: FusionWeights) -> dict[str, float]:
    """A hit's fused signal values, recovered from its breakdown: ``fuse`` reports contribution =
    value * w * scale with scale = sum(w) / sum(w of present signals); with every weight > 0
    (``PROBE_WEIGHTS``) that inverts exactly."""
    present = [s for s in hit.breakdown if s != "bias"]
    w = {s: getattr(weights, s) for s in SIGNALS}
    w_present = sum(w[s] for s in present)
    scale = sum(w.values()) / w_present if w_present > 0 else 0.0
    return {s: hit.breakdown[s] / (w[s] * scale) for s in present if w[s] > 0 and scale > 0}


def collect_pools(ix: SplitIndex, qset: QuerySet, queries: Sequence[Query],
                  calibration: CalibrationSet | None = None) -> list[CandidatePool]:
    """Each query's candidate pool with raw similarity cosines, attribute agreement and popularity,
    from one engine search per query with ``calibration`` installed (it decides the pool: the
    engine merges the query vectors' ANN results on the calibrated scale) and every weight 1 (so
    the breakdown inverts; the weights do not change the pool)."""
    pools = []
    with _engine_state(ix.engine, PROBE_WEIGHTS, calibration):
        for q in queries:
            res = _search(ix.engine, qset, q)
            ids = tuple(h.product_id for h in res.hits)
            n = len(ids)
            signals: dict[str, np.ndarray] = {}
            for s in SIMILARITY_SIGNALS:
                vals = [h.raw.get(s, math.nan) for h in res.hits]
                if n and np.isfinite(vals).any():
                    signals[s] = np.asarray(vals, dtype=np.float64)
            recovered = [signal_values(h, PROBE_WEIGHTS) for h in res.hits]
            for s in ("attributes", "popularity", "text_facets"):
                vals = [r.get(s, math.nan) for r in recovered]
                if n and np.isfinite(vals).any():
                    signals[s] = np.asarray(vals, dtype=np.float64)
            grades = np.asarray([q.relevance.get(pid, 0) for pid in ids], dtype=np.int64)
            pools.append(CandidatePool(q.query_id, q.type, ids, signals, grades, dict(q.relevance)))
    return pools


def _variant_weights(variant: str, fused: FusionWeights, fused_no_heads: FusionWeights
                     ) -> tuple[FusionWeights | None, bool]:
    """(weights, use calibration) of a variant name; (None, True) for ``served``, the engine as built."""
    if variant == "served":
        return None, True
    if variant.startswith("single:"):
        sig = variant.split(":", 1)[1]
        return FusionWeights(bias=0.0, **{s: (1.0 if s == sig else 0.0) for s in SIGNALS}), False
    equal = FusionWeights(bias=0.0, **{s: (1.0 if s in SIMILARITY_SIGNALS else 0.0) for s in SIGNALS})
    if variant == "raw_sum":
        return equal, False
    if variant == "calibrated":
        return equal, True
    if variant == "fused_no_heads":
        return fused_no_heads, True
    if variant == "fused":
        return fused, True
    raise EvaluationError(f"unknown ranking variant {variant!r}")


def variants_for(query_type: str, config_variants: Sequence[str], has_titles: bool) -> list[str]:
    out: list[str] = []
    for v in config_variants:
        if v == "single":
            out.extend(f"single:{s}" for s in TYPE_SIGNALS[query_type] if has_titles or not s.endswith("title"))
        elif v == "fused_no_heads" and query_type == "text":
            continue  # text queries have no attribute signal: identical to fused (copied below)
        else:
            out.append(v)
    return out


def run_variants(ix: SplitIndex, qset: QuerySet, queries: Sequence[Query], variants: Sequence[str],
                 calibration: CalibrationSet | None, fused: FusionWeights, fused_no_heads: FusionWeights,
                 log: Log) -> dict[str, dict[str, list[str]]]:
    """variant -> query_id -> ranked product ids, every ranking from ``engine.search``."""
    has_titles = ix.engine.title_vectors is not None
    out: dict[str, dict[str, list[str]]] = {}
    for t in QUERY_TYPES:
        of_type = [q for q in queries if q.type == t]
        if not of_type:
            continue
        for v in variants_for(t, variants, has_titles):
            weights, calibrated = _variant_weights(v, fused, fused_no_heads)
            t0 = time.perf_counter()
            with _engine_state(ix.engine, weights, calibration if calibrated else None):
                ranked = {q.query_id: [h.product_id for h in _search(ix.engine, qset, q).hits] for q in of_type}
            out.setdefault(v, {}).update(ranked)
            if v == "fused" and t == "text" and "fused_no_heads" in variants:
                out.setdefault("fused_no_heads", {}).update(ranked)
            log(f"  {t:<10} {v:<18} {len(of_type)} queries in {time.perf_counter() - t0:.1f} s")
    return out
