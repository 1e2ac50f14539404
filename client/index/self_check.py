"""The self-checked fit of one catalog, at index build: fit calibration + fusion weights on
pseudo-queries of the fit part, then keep the fused ranking for a query type only where it beats
the best single raw signal on the held-out part (``ranking.policy.decide``).

    views --pseudo_queries--> queries (fit / held-out parts)
          --embed (the build's embedder; extra photos reuse the vectors the build already has)-->
          --candidate pools: each query ranked among its own part's products, raw cosines-->
          fit part: ``fusion_fit.fit_fusion`` (calibration + weights, attribute heads off: the
          pseudo-queries carry no attribute probabilities)
          held-out part: nDCG@10 / R@10 of the fused ranking and of each raw signal
          both parts: nDCG@10 / R@10 of each raw signal (no fit involved) -> which raw signal
          -> decisions (``policy.decide``: fused only where it beat raw on the held-out part)

Returns what to store with the index (calibration, weights, the ranking policy) and a summary
of what the check saw, for the build log, the bundle and ``lenscope index inspect``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenscope.client.index.embedder import Embedder
from lenscope.client.index.pseudo_queries import FIT, HELD_OUT, ProductView, PseudoQuery, pseudo_queries
from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.fusion import FusionWeights, popularity_prior
from lenscope.client.ranking.fusion_fit import fit_fusion, rank_pool
from lenscope.client.ranking.metrics import ndcg_at_k, recall_at_k
from lenscope.client.ranking.policy import (
    FUSED,
    QUERY_TYPES,
    TYPE_SIGNALS,
    FitBinding,
    RankingPolicy,
    Score,
    decide,
)
from lenscope.client.ranking.pools import CandidatePool, FitError

# Each query's pool: the union of each raw signal's top products (like the engine's round-robin pool
# at its default rerank depth), so a single signal's top 10 is always in it and the fit sees the hard
# candidates the engine re-ranks, not the whole part.
MAX_CANDIDATES = 100
EMBED_BATCH = 64
# A pseudo-query kind's weight in a query type's score: its number of queries, at most this many.
KIND_WEIGHT_CAP = 20


@dataclass(frozen=True)
class CatalogVectors:
    """The build's vectors by row (view order): catalog image, title, popularity counts."""

    image: np.ndarray
    title: np.ndarray
    popularity: np.ndarray


@dataclass(frozen=True)
class SelfCheck:
    calibration: CalibrationSet | None
    weights: FusionWeights | None
    policy: RankingPolicy
    summary: dict[str, Any]


def embed_queries(queries: Sequence[PseudoQuery], embedder: Embedder, root: Path,
                  known_images: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Text and image vectors of the queries (by text / image path), and the embed calls made and
    inputs that failed (their queries are left out)."""
    texts = sorted({q.text for q in queries if q.text})
    images = sorted({q.image for q in queries if q.image and q.image not in known_images})
    failed = calls = 0
    text_vecs: dict[str, np.ndarray] = {}
    for i in range(0, len(texts), EMBED_BATCH):
        batch = texts[i:i + EMBED_BATCH]
        calls += 1
        for t, r in zip(batch, embedder.embed_texts(batch)):
            if getattr(r, "error", None) is None and r.embedding is not None:
                text_vecs[t] = np.asarray(r.embedding, dtype=np.float64)
            else:
                failed += 1
    image_vecs = {k: np.asarray(v, dtype=np.float64) for k, v in known_images.items()}
    for i in range(0, len(images), EMBED_BATCH):
        batch = images[i:i + EMBED_BATCH]
        calls += 1
        data = []
        for p in batch:
            try:
                data.append((root / p).read_bytes())
            except OSError:
                data.append(b"")
        for p, r in zip(batch, embedder.embed_images(data)):
            if getattr(r, "error", None) is None and r.embedding is not None:
                image_vecs[p] = np.asarray(r.embedding, dtype=np.float64)
            else:
                failed += 1
    return text_vecs, image_vecs, {"embed_calls": calls, "inputs_not_embedded": failed}


def build_pools(queries: Sequence[PseudoQuery], ids: Sequence[str], parts: Mapping[str, str], vectors: CatalogVectors,
                text_vecs: Mapping[str, np.ndarray], image_vecs: Mapping[str, np.ndarray]) -> list[CandidatePool]:
    """Each query's candidates (its part's products) with raw cosines and the popularity prior."""
    members = {part: np.array([i for i, pid in enumerate(ids) if parts[pid] == part], dtype=np.int64)
               for part in (FIT, HELD_OUT)}
    pop = popularity_prior(vectors.popularity, float(np.nanmax(vectors.popularity, initial=0.0)))
    pools = []
    for q in queries:
        tv = text_vecs.get(q.text) if q.text else None
        iv = image_vecs.get(q.image) if q.image else None
        if (q.text and tv is None) or (q.image and iv is None):
            continue  # its input could not be embedded
        cand = members[q.part]
        raw: dict[str, np.ndarray] = {}
        if iv is not None:
            raw["visual"] = vectors.image[cand] @ iv
            raw["image_title"] = vectors.title[cand] @ iv
        if tv is not None:
            raw["text_image"] = vectors.image[cand] @ tv
            raw["text_title"] = vectors.title[cand] @ tv
        if cand.size > MAX_CANDIDATES:
            per = -(-MAX_CANDIDATES // len(raw))
            keep = np.unique(np.concatenate([np.argsort(-v, kind="stable")[:per] for v in raw.values()]))
            cand = cand[keep]
            raw = {k: v[keep] for k, v in raw.items()}
        pids = tuple(ids[i] for i in cand)
        grades = np.array([q.relevance.get(pid, 0) for pid in pids], dtype=np.int64)
        if not grades.any():
            continue
        pools.append(CandidatePool(q.query_id, q.query_type, pids, {**raw, "popularity": pop[cand]}, grades,
                                   dict(q.relevance)))
    return pools


def held_out_scores(pools: Sequence[CandidatePool], calibration: CalibrationSet | None,
                    weights: FusionWeights | None) -> dict[str, dict[str, Score]]:
    """query type -> ranking ("fused", each raw signal) -> nDCG@10 and R@10 on these pools: over the
    type's pseudo-query kinds, the mean of each kind's mean weighted by the kind's number of queries
    capped at ``KIND_WEIGHT_CAP`` (so that 150 attribute phrases do not outvote 25 titles of the same
    type, and one lone query of a kind does not weigh as much as twenty of another)."""
    out: dict[str, dict[str, Score]] = {}
    for qtype in QUERY_TYPES:
        mine = [p for p in pools if p.query_type == qtype]
        if not mine:
            continue
        kinds = sorted({_kind(p) for p in mine})
        rankings: dict[str, Callable[[CandidatePool], list[str]]] = {
            s: (lambda p, s=s: [p.product_ids[i] for i in np.argsort(-p.signals[s], kind="stable")])
            for s in TYPE_SIGNALS[qtype]}
        if weights is not None:
            rankings[FUSED] = lambda p: rank_pool(p, calibration, weights)
        out[qtype] = {}
        for name, rank in rankings.items():
            ranked = [rank(p) for p in mine]
            nd = {k: [] for k in kinds}
            r10 = {k: [] for k in kinds}
            for r, p in zip(ranked, mine):
                nd[_kind(p)].append(ndcg_at_k(r, p.relevance, 10))
                r10[_kind(p)].append(recall_at_k(r, p.relevance, 10))
            w = np.array([min(len(nd[k]), KIND_WEIGHT_CAP) for k in kinds], dtype=np.float64)
            out[qtype][name] = Score(ndcg10=round(float(np.average([np.mean(nd[k]) for k in kinds], weights=w)), 4),
                                     r10=round(float(np.average([np.mean(r10[k]) for k in kinds], weights=w)), 4))
    return out


def raw_scores_by_kind(pools: Sequence[CandidatePool]) -> dict[str, dict[str, Score]]:
    """pseudo-query kind -> raw signal -> mean nDCG@10 / R@10: what each kind of query favours (the
    build log and ``index inspect`` show it, so a user sees what the decision was made on)."""
    out: dict[str, dict[str, Score]] = {}
    for kind in sorted({_kind(p) for p in pools}):
        mine = [p for p in pools if _kind(p) == kind]
        out[kind] = {}
        for s in TYPE_SIGNALS[mine[0].query_type]:
            ranked = [[p.product_ids[i] for i in np.argsort(-p.signals[s], kind="stable")] for p in mine]
            out[kind][s] = Score(
                ndcg10=round(float(np.mean([ndcg_at_k(r, p.relevance, 10) for r, p in zip(ranked, mine)])), 4),
                r10=round(float(np.mean([recall_at_k(r, p.relevance, 10) for r, p in zip(ranked, mine)])), 4))
    return out


def _kind(pool: CandidatePool) -> str:
    return pool.query_id.split(":")[1]  # "<part>:<kind>:..." (pseudo_queries' ids)


def self_check(views: Sequence[ProductView], vectors: CatalogVectors, embedder: Embedder, root: Path, *,
               binding: FitBinding, known_images: Mapping[str, np.ndarray] | None = None, seed: int = 0,
               held_out_fraction: float = 0.3, min_queries: int = 10, notes: Mapping[str, str] | None = None
               ) -> SelfCheck:
    """Fit on the catalog's fit part, decide per query type on its held-out part (module docstring)."""
    queries, parts = pseudo_queries(views, held_out_fraction=held_out_fraction, seed=seed)
    text_vecs, image_vecs, embed_stats = embed_queries(queries, embedder, root, known_images or {})
    ids = [v.product_id for v in views]
    pools = build_pools(queries, ids, parts, vectors, text_vecs, image_vecs)
    fit_pools = [p for p in pools if p.query_id.startswith(FIT)]
    held = [p for p in pools if p.query_id.startswith(HELD_OUT)]
    summary: dict[str, Any] = {
        "held_out_fraction": held_out_fraction, "seed": seed, "min_queries": min_queries,
        "products": {part: sum(1 for v in parts.values() if v == part) for part in (FIT, HELD_OUT)},
        "queries": {part: _count_kinds([q for q in queries if q.part == part]) for part in (FIT, HELD_OUT)},
        **embed_stats,
        "pools": {part: {t: sum(1 for p in pools if p.query_id.startswith(part) and p.query_type == t)
                         for t in QUERY_TYPES} for part in (FIT, HELD_OUT)},
    }
    calibration = weights = None
    try:
        # pointwise objective at the top grade, polished by coordinate ascent on nDCG@10: the lambda
        # objective costs ~10x the time for no held-out gain on these small pools
        fitted = fit_fusion(fit_pools, thresholds=("max",), objectives=("pointwise",), use_heads=False,
                            model_hash=binding.model_hash, seed=seed)
        calibration, weights = fitted.calibration, fitted.weights
        summary["fit"] = {"objective": fitted.objective, "min_grade": fitted.min_grade,
                          "weights": weights.model_dump(), "calibration_notes": fitted.calibration_notes}
    except (FitError, ValueError) as err:
        summary["fit"] = {"error": f"no fit: {err}"}
    scores = held_out_scores(held, calibration, weights)
    pooled = held_out_scores(pools, None, None)  # raw signals only: nothing was fitted to any pool
    summary["raw_by_kind"] = {k: {s: sc.model_dump() for s, sc in v.items()} for k, v in raw_scores_by_kind(pools).items()}
    decisions = {}
    for qtype in QUERY_TYPES:
        n = sum(1 for p in held if p.query_type == qtype)
        decisions[qtype] = decide(qtype, scores.get(qtype, {}), n, pooled=pooled.get(qtype, {}),
                                  n_pooled=sum(1 for p in pools if p.query_type == qtype),
                                  fitted=weights is not None, min_queries=min_queries)
    policy = RankingPolicy(source="self-check", binding=binding, decisions=decisions, notes=dict(notes or {}))
    return SelfCheck(calibration=calibration, weights=weights, policy=policy, summary=summary)


def _count_kinds(queries: Sequence[PseudoQuery]) -> dict[str, int]:
    out: dict[str, int] = {}
    for q in queries:
        out[q.kind] = out.get(q.kind, 0) + 1
    return out
