"""The self-checked fit of one catalog, at index build: fit calibration + fusion weights on
pseudo-queries of the fit part, then keep the fused ranking for a query type only where it beats
the best single raw signal on the held-out part (``ranking.policy.decide``).

    views --pseudo_queries--> queries (fit / held-out parts)
          --embed (the build's embedder; extra photos reuse the vectors the build already has)-->
          --candidate pools: each query ranked among its own part's products, raw cosines-->
          fit part: the calibration (``pools.fit_pool_calibration``), then one set of fusion
          weights per query type (``fusion_fit.fit_type_weights``) over the signals the engine
          gives that type: the similarity cosines, popularity, ``text_facets`` (the catalog facet
          values a query's words name) for queries with text, and the attribute heads' agreement
          for queries with a photo when the model's heads are trained (the photos are embedded for
          their head outputs then)
          held-out part: nDCG@10 / R@10 of the type's fused ranking and of each raw signal
          both parts: nDCG@10 / R@10 of each raw signal (no fit involved) -> which raw signal
          -> decisions (``policy.decide``: fused only where it beat raw on the held-out part)

A catalog of more than ``MAX_PRODUCTS`` products is checked on a stable sample of that many
(``pseudo_queries.sample_products``): the sampled products are the parts, the queries and what each
query is ranked among, so the check costs about the same at 20,000 products as at 1,000. The
summary (and a note in the ranking policy) says how many products and queries were used of how
many.

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
from lenscope.client.index.pseudo_queries import (
    FIT,
    HELD_OUT,
    MAX_PER_KIND,
    ProductView,
    PseudoQuery,
    pseudo_queries,
    sample_products,
)
from lenscope.client.core import contract
from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.facets import AttributeTable
from lenscope.client.ranking.fusion import FusionWeights, attribute_agreement, encode_labels, popularity_prior
from lenscope.client.ranking.fusion_fit import fit_type_weights, rank_pool
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
from lenscope.client.ranking.pools import CandidatePool, FitError, fit_pool_calibration
from lenscope.client.ranking.text_facets import text_facets_for

# Each query's pool: the union of each raw signal's top products (like the engine's round-robin pool
# at its default rerank depth), so a single signal's top 10 is always in it and the fit sees the hard
# candidates the engine re-ranks, not the whole part.
MAX_CANDIDATES = 100
EMBED_BATCH = 64
# A pseudo-query kind's weight in a query type's score: its number of queries, at most this many.
KIND_WEIGHT_CAP = 20
# Products a self-check uses, at most (a stable seeded sample beyond): 1,000 products already give
# MAX_PER_KIND queries of every kind in the fit part and about that many held out, while making
# them costs ~O(products^2) (pseudo_queries' docstring). Whether a sample flips a decision is
# measured by benchmarks/self_check_sample.py (benchmarks/README.md, "Self-check on a sample").
MAX_PRODUCTS = 1000


@dataclass(frozen=True)
class CatalogVectors:
    """The build's vectors by row (view order): catalog image, title, popularity counts.
    ``popularity_max``: the whole catalog's largest count (the engine's prior divides by it), when
    these rows are a sample of it (None: these rows' own)."""

    image: np.ndarray
    title: np.ndarray
    popularity: np.ndarray
    popularity_max: float | None = None

    def take(self, rows: Sequence[int]) -> "CatalogVectors":
        """These rows only, the prior still scaled by the whole catalog's largest count."""
        idx = np.asarray(rows, dtype=np.int64)
        return CatalogVectors(image=self.image[idx], title=self.title[idx], popularity=self.popularity[idx],
                              popularity_max=self.pop_max())

    def pop_max(self) -> float:
        if self.popularity_max is not None:
            return self.popularity_max
        return float(np.nanmax(self.popularity, initial=0.0))


@dataclass(frozen=True)
class CatalogFacets:
    """What the non-cosine signals compare a query with, by row (view order), as the engine has
    them: the facet values (``text_facets``) and, for trained heads, each model attribute's label
    index per row (``attributes``; empty: heads untrained or no attribute in common)."""

    table: AttributeTable
    label_codes: Mapping[str, np.ndarray]

    @classmethod
    def of(cls, views: Sequence[ProductView], heads: Mapping[str, Sequence[str]] | None = None) -> "CatalogFacets":
        names = sorted({a for v in views for a in v.attributes})
        columns = {a: [v.attributes.get(a) for v in views] for a in names}
        codes = {a: encode_labels(columns[a], labels) for a, labels in (heads or {}).items() if a in columns}
        return cls(table=AttributeTable.from_columns(columns) if names else AttributeTable(len(views), {}, {}),
                   label_codes={a: c for a, c in codes.items() if (c >= 0).any()})


# The signals each query type's fusion may weigh (the engine's, for that kind of query).
FIT_SIGNALS: dict[str, tuple[str, ...]] = {
    "text": ("text_image", "text_title", "popularity", "text_facets"),
    "image": ("visual", "image_title", "popularity", "attributes"),
    "image+text": ("visual", "image_title", "text_image", "text_title", "popularity", "text_facets", "attributes"),
}


@dataclass(frozen=True)
class SelfCheck:
    calibration: CalibrationSet | None
    weights: FusionWeights | None
    policy: RankingPolicy
    summary: dict[str, Any]


def embed_queries(queries: Sequence[PseudoQuery], embedder: Embedder, root: Path,
                  known_images: Mapping[str, np.ndarray], head_outputs: dict[str, dict[str, np.ndarray]] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Text and image vectors of the queries (by text / image path), and the embed calls made and
    inputs that failed (their queries are left out). ``head_outputs``, when given, receives each
    embedded image's attribute head outputs (by image path)."""
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
                if head_outputs is not None:
                    head_outputs[p] = {k: np.asarray(v, dtype=np.float64) for k, v in (r.attributes or {}).items()}
            else:
                failed += 1
    return text_vecs, image_vecs, {"embed_calls": calls, "inputs_not_embedded": failed}


def build_pools(queries: Sequence[PseudoQuery], ids: Sequence[str], parts: Mapping[str, str], vectors: CatalogVectors,
                text_vecs: Mapping[str, np.ndarray], image_vecs: Mapping[str, np.ndarray],
                facets: CatalogFacets | None = None, head_outputs: Mapping[str, Mapping[str, np.ndarray]] | None = None
                ) -> list[CandidatePool]:
    """Each query's candidates (its part's products) with raw cosines and the popularity prior, and
    with ``facets``: ``text_facets`` for a text naming facet values and the heads' ``attributes``
    agreement for a photo whose head outputs are in ``head_outputs`` (computed as the engine does)."""
    members = {part: np.array([i for i, pid in enumerate(ids) if parts[pid] == part], dtype=np.int64)
               for part in (FIT, HELD_OUT)}
    pop = popularity_prior(vectors.popularity, vectors.pop_max())
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
        signals = {**raw, "popularity": pop[cand], **_facet_signals(q, cand, facets, head_outputs)}
        pools.append(CandidatePool(q.query_id, q.query_type, pids, signals, grades, dict(q.relevance)))
    return pools


def _facet_signals(q: PseudoQuery, cand: np.ndarray, facets: CatalogFacets | None,
                   head_outputs: Mapping[str, Mapping[str, np.ndarray]] | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if facets is None:
        return out
    if q.text:
        tf = text_facets_for(q.text, facets.table.vocab, {f: c[cand] for f, c in facets.table.codes.items()})
        if tf is not None:
            out["text_facets"] = tf
    outputs = (head_outputs or {}).get(q.image or "")
    if outputs and facets.label_codes:
        probs = {a: outputs[contract.attribute_output(a)] for a in facets.label_codes
                 if contract.attribute_output(a) in outputs}
        if probs:
            agree = attribute_agreement(probs, {a: facets.label_codes[a][cand] for a in probs})
            if np.isfinite(agree).any():
                out["attributes"] = agree
    return out


def held_out_scores(pools: Sequence[CandidatePool], calibration: CalibrationSet | None,
                    weights: FusionWeights | Mapping[str, FusionWeights] | None) -> dict[str, dict[str, Score]]:
    """query type -> ranking ("fused", each raw signal) -> nDCG@10 and R@10 on these pools: over the
    type's pseudo-query kinds, the mean of each kind's mean weighted by the kind's number of queries
    capped at ``KIND_WEIGHT_CAP`` (so that 150 attribute phrases do not outvote 25 titles of the same
    type, and one lone query of a kind does not weigh as much as twenty of another). ``weights``:
    one set for every type, or per type (a type without its own has no fused score)."""
    out: dict[str, dict[str, Score]] = {}
    for qtype in QUERY_TYPES:
        mine = [p for p in pools if p.query_type == qtype]
        if not mine:
            continue
        kinds = sorted({_kind(p) for p in mine})
        rankings: dict[str, Callable[[CandidatePool], list[str]]] = {
            s: (lambda p, s=s: [p.product_ids[i] for i in np.argsort(-p.signals[s], kind="stable")])
            for s in TYPE_SIGNALS[qtype]}
        w = weights.get(qtype) if isinstance(weights, Mapping) else weights
        if w is not None:
            rankings[FUSED] = lambda p, w=w: rank_pool(p, calibration, w)
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
               held_out_fraction: float = 0.3, min_queries: int = 10, notes: Mapping[str, str] | None = None,
               heads: Mapping[str, Sequence[str]] | None = None, max_products: int | None = MAX_PRODUCTS,
               max_per_kind: int = MAX_PER_KIND) -> SelfCheck:
    """Fit on the catalog's fit part, decide per query type on its held-out part (module docstring).
    ``heads``: the model's attribute labels when its heads are trained (None: no ``attributes`` signal).
    ``max_products``: check a stable sample of at most this many products (None: every product)."""
    sample = sample_products(views, max_products, seed)
    n_catalog = len(views)
    if len(sample) < n_catalog:
        views, vectors = [views[i] for i in sample], vectors.take(sample)
    made: dict[str, dict[str, int]] = {}
    queries, parts = pseudo_queries(views, held_out_fraction=held_out_fraction, seed=seed,
                                    max_per_kind=max_per_kind, made=made)
    facets = CatalogFacets.of(views, heads)
    outputs: dict[str, dict[str, np.ndarray]] | None = {} if facets.label_codes else None
    # with trained heads every photo is embedded (for its head outputs), not only the unknown ones
    text_vecs, image_vecs, embed_stats = embed_queries(queries, embedder, root,
                                                       {} if outputs is not None else (known_images or {}), outputs)
    ids = [v.product_id for v in views]
    pools = build_pools(queries, ids, parts, vectors, text_vecs, image_vecs, facets, outputs)
    fit_pools = [p for p in pools if p.query_id.startswith(FIT)]
    held = [p for p in pools if p.query_id.startswith(HELD_OUT)]
    summary: dict[str, Any] = {
        "held_out_fraction": held_out_fraction, "seed": seed, "min_queries": min_queries,
        "products": {part: sum(1 for v in parts.values() if v == part) for part in (FIT, HELD_OUT)},
        "sample": {"products": len(views), "of": n_catalog, "max_products": max_products,
                   "max_per_kind": max_per_kind, "queries": len(queries),
                   "queries_possible": sum(n for part in made.values() for n in part.values())},
        "queries": {part: _count_kinds([q for q in queries if q.part == part]) for part in (FIT, HELD_OUT)},
        "queries_possible": made,
        **embed_stats,
        "pools": {part: {t: sum(1 for p in pools if p.query_id.startswith(part) and p.query_type == t)
                         for t in QUERY_TYPES} for part in (FIT, HELD_OUT)},
        "signals": {t: [s for s in FIT_SIGNALS[t] if s != "attributes" or facets.label_codes] for t in QUERY_TYPES},
    }
    calibration: CalibrationSet | None = None
    by_type: dict[str, FusionWeights] = {}
    try:
        # calibration on the top grade; then each type's weights on its own pools: pointwise,
        # polished by coordinate ascent on nDCG@10 (the lambda objective cost ~10x the time for no
        # held-out gain on these small pools)
        calibration, cal_notes = fit_pool_calibration(fit_pools, min_grade="max", model_hash=binding.model_hash)
        by_type = fit_type_weights(fit_pools, calibration, summary["signals"])
        if not by_type:
            raise FitError("no query type's weights could be fitted")
        summary["fit"] = {"objective": "pointwise + coordinate ascent, per query type", "min_grade": "max",
                          "weights": _shared(by_type).model_dump(),
                          "weights_by_type": {t: w.model_dump() for t, w in by_type.items()},
                          "calibration_notes": cal_notes}
    except (FitError, ValueError) as err:
        calibration, by_type = None, {}
        summary["fit"] = {"error": f"no fit: {err}"}
    scores = held_out_scores(held, calibration, by_type)
    pooled = held_out_scores(pools, None, None)  # raw signals only: nothing was fitted to any pool
    summary["raw_by_kind"] = {k: {s: sc.model_dump() for s, sc in v.items()} for k, v in raw_scores_by_kind(pools).items()}
    decisions = {}
    for qtype in QUERY_TYPES:
        n = sum(1 for p in held if p.query_type == qtype)
        d = decide(qtype, scores.get(qtype, {}), n, pooled=pooled.get(qtype, {}),
                   n_pooled=sum(1 for p in pools if p.query_type == qtype),
                   fitted=qtype in by_type, min_queries=min_queries)
        decisions[qtype] = d.model_copy(update={"weights": by_type[qtype]}) if d.ranked_by == FUSED else d
    policy = RankingPolicy(source="self-check", binding=binding, decisions=decisions,
                           notes={**(notes or {}), "self_check_sample": sample_note(summary["sample"])})
    return SelfCheck(calibration=calibration, weights=_shared(by_type) if by_type else None, policy=policy,
                     summary=summary)


def sample_note(sample: Mapping[str, Any]) -> str:
    """One line for the build log and ``ranking_policy.json``: what the check used of what was there."""
    products = (f"all {sample['of']:,} products" if sample["products"] == sample["of"] else
                f"{sample['products']:,} of {sample['of']:,} products (a stable seeded sample, at most "
                f"{sample['max_products']:,})")
    return (f"{products}; {sample['queries']:,} of {sample['queries_possible']:,} pseudo-queries they give "
            f"(at most {sample['max_per_kind']} per kind and part)")


def _shared(by_type: Mapping[str, FusionWeights]) -> FusionWeights:
    """The index's one weights file (``fusion.json``, read by tools that know no per-type weights):
    the weights of the type that weighs the most signals (photo+text: every one), else any."""
    for qtype in ("image+text", "text", "image"):
        if qtype in by_type:
            return by_type[qtype]
    return next(iter(by_type.values()))


def _count_kinds(queries: Sequence[PseudoQuery]) -> dict[str, int]:
    out: dict[str, int] = {}
    for q in queries:
        out[q.kind] = out.get(q.kind, 0) + 1
    return out
