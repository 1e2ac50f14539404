"""The evaluation harness: labelled queries through the live stack -> Recall@K / nDCG@10 / MRR per
query type and ranking variant, modality gap, attribute heads, export fidelity -> Markdown + JSON + PNG.

The path is the production one: the model repository served by a real ``tritonserver``, an index
bundle built through it by ``indexing.build_index`` (the split under evaluation only), and
``search.SearchEngine.search`` for every query and every ranking variant (embed -> ANN retrieve ->
exact re-score -> calibrate -> fuse). Two things are test scaffolding and say so:

- each query is embedded through Triton once (in bulk, concurrently) and the engine's embedder
  answers its calls from those results (``PrefetchedEmbedder``): a variant changes ranking, not
  embeddings, and re-embedding the same photo seven times would only measure Triton again;
- ranking variants swap the engine's ``weights`` and ``calibration`` between runs:

  ``single:<signal>``  one similarity signal, raw cosine (calibration is monotone per pair, so this
                       is also the calibrated single-signal ranking). ``raw_ann`` in the tables is
                       the plain ANN answer: ``single:visual`` for photo queries,
                       ``single:text_image`` for text queries.
  ``raw_sum``          every similarity signal of the query, raw cosines, equal weights.
  ``calibrated``       the same signals calibrated (per modality pair), equal weights.
  ``fused_no_heads``   the fitted fusion with the attribute signal at weight 0 (heads off).
  ``fused``            the fitted fusion: what production serves (heads on).

Calibration and fusion weights come from (first that applies): files given by the caller; the files
shipped next to the model's checkpoint (``<stem>.calibration.json`` / ``<stem>.fusion.json``,
matched by checkpoint sha256); a fit on the labelled queries of another split (``fit_split``,
default ``val``) through the same live stack (``fusion_fit``); the index bundle's own
(catalog-fitted calibration, default weights). The report names which one was used.

Export fidelity embeds the same products and queries with the torch model in-process (the export
package, imported only for this), ranks by the same cosine, and compares Recall@10 with the
Triton answer (``raw_ann``): they must agree within ``fidelity_tolerance_points`` percentage
points.

Works on any catalog in the documented format (``catalog.py``); queries with a ``split`` are
evaluated against an index of that split, queries without one against the whole catalog
(``split="all"``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lenscope.client.core import contract
from lenscope.client.ranking.calibration import CalibrationSet, load_calibration, save_calibration
from lenscope.client.catalog.format import Catalog, Query, QuerySet, read_catalog, read_queries
from lenscope.client.ranking.fusion_fit import (
    SIMILARITY_SIGNALS,
    CandidatePool,
    FittedFusion,
    fit_fusion,
    gap_samples,
    gap_table,
    shipped_fit_files,
    weights_without,
)
from lenscope.client.core.manifest import Manifest, load_manifest
from lenscope.client.ranking.metrics import Threshold, classification_scores, evaluate_rankings, recall_at_k
from lenscope.client.ranking.fusion import SIGNALS, FusionWeights, load_weights, save_weights

QUERY_TYPES: tuple[str, ...] = ("image", "text", "image+text")
TYPE_LABEL = {"image": "photo -> product", "text": "text -> product", "image+text": "photo+text -> product"}
TYPE_SIGNALS = {
    "image": ("visual", "image_title"),
    "text": ("text_image", "text_title"),
    "image+text": ("visual", "image_title", "text_image", "text_title"),
}
RAW_ANN = {"image": "single:visual", "text": "single:text_image", "image+text": "single:visual"}
# Query types whose raw ANN ranking is one cosine over the whole index, so torch can reproduce it
# exactly. A photo+text query's candidate pool merges both query vectors' ANN results, so its
# "single:visual" ranking is not a pure cosine ranking: reported, not part of the verdict.
FIDELITY_TYPES = ("image", "text")
COMBINED_VARIANTS: tuple[str, ...] = ("raw_sum", "calibrated", "fused_no_heads", "fused")
CURVE_VARIANTS: tuple[str, ...] = ("raw_ann", "calibrated", "fused_no_heads", "fused")
CURVE_KS: tuple[int, ...] = tuple(range(1, 51))
TOP_K = 100  # the most hits a SearchQuery may ask for: MRR is MRR@100

Log = Callable[[str], None]
CalibrationMethod = Literal["platt", "isotonic"]


class EvaluationError(RuntimeError):
    """The evaluation cannot run with these inputs; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    catalog: Path
    workdir: Path
    queries: Path | None = None  # default: queries.jsonl next to the catalog
    split: str = "test"  # "train" | "val" | "test" | "all" (queries without a split, whole catalog)
    repository: Path | None = None  # a model repository; or
    spec: Path | None = None  # a spec, exported into <workdir>/repository (and used for fidelity)
    fusion: Path | None = None  # fusion weights file
    calibration: Path | None = None  # calibration file
    use_shipped: bool = True  # the files shipped next to the model's checkpoint, if any
    fit_split: str | None = "val"  # fit calibration + weights on this split's queries when no file is given
    variants: tuple[str, ...] = ("single", *COMBINED_VARIANTS)
    min_grade: Threshold = "max"  # relevant for R@K / MRR: the query's top grade (exact-product variant)
    graded_min_grade: Threshold = 2  # for the recall fraction column
    max_queries_per_type: int | None = None  # subsample (seeded) for quick runs
    fidelity: bool = True
    fidelity_tolerance_points: float = 0.2
    plots: bool = True
    triton_ready_timeout_s: float = 180.0
    index_batch_size: int = 32
    index_concurrency: int = 2
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# The live stack
# --------------------------------------------------------------------------------------------------


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


class PrefetchedEmbedder:
    """The engine's embedder, answering from embeddings fetched through Triton beforehand.

    ``prefetch`` embeds many inputs with one concurrent fan-out (Triton batches them); ``embed_*``
    return the stored ``EmbedResult`` of an input seen before and forward anything else to Triton.
    Server state (``manifest``, ``is_ready``) always goes to Triton.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self._images: dict[bytes, Any] = {}
        self._texts: dict[str, Any] = {}

    def prefetch(self, images: Sequence[bytes] = (), texts: Sequence[str] = (), timeout_s: float = 60.0,
                 chunk: int = 256) -> None:
        todo_i = list({_sha1(b): b for b in images if _sha1(b) not in self._images}.items())
        for i in range(0, len(todo_i), chunk):
            part = todo_i[i:i + chunk]
            for (key, _), res in zip(part, self.inner.embed_images([b for _, b in part], timeout_s)):
                if not res.ok:
                    raise EvaluationError(f"Triton could not embed a query image: {res.error}")
                self._images[key] = res
        todo_t = sorted({t for t in texts if t not in self._texts})
        for i in range(0, len(todo_t), chunk):
            part = todo_t[i:i + chunk]
            for text, res in zip(part, self.inner.embed_texts(part, timeout_s)):
                if not res.ok:
                    raise EvaluationError(f"Triton could not embed query text {text!r}: {res.error}")
                self._texts[text] = res

    def image_result(self, image: bytes) -> Any | None:
        return self._images.get(_sha1(image))

    def embed_images(self, images: list[bytes], timeout_s: float | None = None) -> list[Any]:
        hits = [self._images.get(_sha1(b)) for b in images]
        if all(h is not None for h in hits):
            return hits
        return self.inner.embed_images(images, timeout_s)

    def embed_texts(self, texts: list[str], timeout_s: float | None = None) -> list[Any]:
        hits = [self._texts.get(t) for t in texts]
        if all(h is not None for h in hits):
            return hits
        return self.inner.embed_texts(texts, timeout_s)

    def manifest(self) -> dict:
        return self.inner.manifest()

    def is_ready(self) -> bool:
        return self.inner.is_ready()

    def attribute_outputs(self) -> list[str]:
        return self.inner.attribute_outputs()

    def close(self) -> None:
        self.inner.close()


@dataclass
class SplitIndex:
    """One split of the catalog indexed through Triton, with a search engine over it."""

    split: str
    index_root: Path
    engine: Any  # SearchEngine
    embedder: PrefetchedEmbedder
    build_seconds: float
    indexed: int


@dataclass
class LiveStack:
    repository: Path
    manifest: Manifest
    server: Any  # TritonServer
    workdir: Path
    catalog: Path
    log: Log
    indexes: dict[str, SplitIndex] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    config: EvalConfig | None = None

    def index(self, split: str, fusion_weights: Path | None = None) -> SplitIndex:
        """Build (once) an index of ``split`` through Triton and open a search engine over it."""
        if split in self.indexes:
            return self.indexes[split]
        from lenscope.client.index.job import IndexBuildConfig, build_index
        from lenscope.client.search.engine import SearchSettings, open_engine
        from lenscope.client.triton.client import ClientConfig, TritonEmbedder

        cfg = self.config
        root = self.workdir / f"index-{split}"
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        batch = cfg.index_batch_size if cfg else 32
        conc = cfg.index_concurrency if cfg else 2
        with TritonEmbedder(ClientConfig(url=self.server.grpc_url, timeout_s=60.0,
                                         max_concurrency=min(64, batch * conc))) as emb:
            report = build_index(IndexBuildConfig(
                catalog=self.catalog, index_root=root, splits=None if split == "all" else (split,),
                batch_size=batch, concurrency=conc, fusion_weights=fusion_weights, progress=False), emb)
        seconds = time.perf_counter() - t0
        self.log(f"indexed {report.indexed} products of split {split!r} through Triton in {seconds:.1f} s "
                 f"({report.rejected} rejected)")
        engine = open_engine(self.server.grpc_url, str(root), SearchSettings(
            rerank_depth=TOP_K, default_deadline_s=60.0, recall_sample_rate=0.0, model_check_interval_s=3600.0),
            triton_timeout_s=60.0)
        embedder = PrefetchedEmbedder(engine.embedder)
        engine.embedder = embedder
        self.indexes[split] = SplitIndex(split, root, engine, embedder, seconds, report.indexed)
        return self.indexes[split]

    def close(self) -> None:
        for ix in self.indexes.values():
            ix.engine.close()
            ix.embedder.close()
        self.indexes.clear()


def resolve_repository(config: EvalConfig, log: Log) -> Path:
    """The repository to serve: the given one, or the spec exported into the workdir."""
    if config.repository is not None:
        if not (config.repository / contract.MANIFEST_FILE).is_file():
            raise EvaluationError(f"{config.repository} is not a model repository (no {contract.MANIFEST_FILE})")
        return config.repository
    if config.spec is None:
        raise EvaluationError("give a model repository or a model spec to export")
    from lenscope.export.pipeline import export_model  # torch only when exporting

    out = config.workdir / "repository"
    if out.exists():
        shutil.rmtree(out)
    export_model(Path(config.spec), out, log=log)
    return out


@contextmanager
def live_stack(config: EvalConfig, log: Log = print) -> Iterator[LiveStack]:
    from lenscope.client.triton.server import start_server

    config.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    repository = resolve_repository(config, log)
    t1 = time.perf_counter()
    manifest = load_manifest(repository)
    log(f"starting tritonserver on {repository} (model {manifest.spec.name}, hash {manifest.model_hash})")
    server = start_server(repository, log_path=config.workdir / "tritonserver.log",
                          ready_timeout=config.triton_ready_timeout_s)
    stack = LiveStack(repository, manifest, server, config.workdir, config.catalog, log, config=config)
    stack.timings.update({"export_s": round(t1 - t0, 1), "triton_start_s": round(time.perf_counter() - t1, 1)})
    try:
        yield stack
    finally:
        stack.close()
        code = server.stop()
        if code not in (0, None):
            log(f"tritonserver exited {code}; log tail:\n{server.log_tail(20)}")


# --------------------------------------------------------------------------------------------------
# Queries through the engine
# --------------------------------------------------------------------------------------------------


def load_queries(config: EvalConfig, catalog: Catalog) -> QuerySet:
    path = config.queries or catalog.root / "queries.jsonl"
    if not Path(path).is_file():
        raise EvaluationError(f"no queries file {path}; pass one in the documented format (catalog.py)")
    return read_queries(path, catalog)


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


def _query_image(qset: QuerySet, q: Query) -> bytes | None:
    p = qset.image_path(q)
    return None if p is None else p.read_bytes()


def prefetch(ix: SplitIndex, qset: QuerySet, queries: Sequence[Query]) -> None:
    images = [b for q in queries if (b := _query_image(qset, q)) is not None]
    texts = [q.text for q in queries if q.text]
    ix.embedder.prefetch(images, texts)


PROBE_WEIGHTS = FusionWeights(bias=0.0, **{s: 1.0 for s in SIGNALS})


def _search(engine: Any, qset: QuerySet, q: Query, top_k: int = TOP_K):
    from lenscope.client.search.models import SearchQuery

    return engine.search(SearchQuery(image=_query_image(qset, q), text=q.text, top_k=top_k, deadline_s=60.0))


@contextmanager
def _engine_state(engine: Any, weights: FusionWeights, calibration: CalibrationSet | None) -> Iterator[None]:
    saved = engine.weights, engine.calibration
    engine.weights, engine.calibration = weights, calibration
    try:
        yield
    finally:
        engine.weights, engine.calibration = saved


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
            for s in ("attributes", "popularity"):
                vals = [r.get(s, math.nan) for r in recovered]
                if n and np.isfinite(vals).any():
                    signals[s] = np.asarray(vals, dtype=np.float64)
            grades = np.asarray([q.relevance.get(pid, 0) for pid in ids], dtype=np.int64)
            pools.append(CandidatePool(q.query_id, q.type, ids, signals, grades, dict(q.relevance)))
    return pools


def _variant_weights(variant: str, fused: FusionWeights, fused_no_heads: FusionWeights
                     ) -> tuple[FusionWeights, bool]:
    """(weights, use calibration) of a variant name."""
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


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def metric_table(rankings: dict[str, dict[str, list[str]]], queries: Sequence[Query], config: EvalConfig
                 ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, list[float]]]]:
    """(type -> variant -> metrics, type -> variant -> Recall@K curve over CURVE_KS)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for t in QUERY_TYPES:
        of_type = [q for q in queries if q.type == t]
        if not of_type:
            continue
        for v, ranked in rankings.items():
            if not all(q.query_id in ranked for q in of_type):
                continue
            rs = [ranked[q.query_id] for q in of_type]
            rels = [q.relevance for q in of_type]
            s = evaluate_rankings(rs, rels, ks=(1, 5, 10), min_grade=config.min_grade,
                                  min_grade_graded=config.graded_min_grade)
            table.setdefault(t, {})[v] = {k: (x if k == "n" else round(float(x), 4)) for k, x in s.as_dict().items()}
        for name in CURVE_VARIANTS:
            v = RAW_ANN[t] if name == "raw_ann" else name
            if v in rankings and all(q.query_id in rankings[v] for q in of_type):
                curves.setdefault(t, {})[name] = [
                    round(float(np.mean([recall_at_k(rankings[v][q.query_id], q.relevance, k, config.min_grade)
                                         for q in of_type])), 4) for k in CURVE_KS]
    return table, curves


def headline(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per query type: raw ANN, the best single signal, calibrated, fused (heads on/off) and deltas."""
    out: dict[str, dict[str, Any]] = {}
    for t, rows in table.items():
        singles = {v: m for v, m in rows.items() if v.startswith("single:")}
        entry: dict[str, Any] = {}
        if RAW_ANN[t] in rows:
            entry["raw_ann"] = {"variant": RAW_ANN[t], **rows[RAW_ANN[t]]}
        if singles:
            best = max(singles, key=lambda v: singles[v]["nDCG@10"])
            entry["best_single"] = {"variant": best, **singles[best]}
        for v in COMBINED_VARIANTS:
            if v in rows:
                entry[v] = rows[v]
        if "fused" in rows and singles:
            entry["fused_minus_best_single_ndcg10_points"] = round(
                100 * (rows["fused"]["nDCG@10"] - entry["best_single"]["nDCG@10"]), 2)
        if "fused" in rows and "fused_no_heads" in rows:
            entry["heads_on_minus_off_R@10_points"] = round(
                100 * (rows["fused"]["R@10"] - rows["fused_no_heads"]["R@10"]), 2)
            entry["heads_on_minus_off_ndcg10_points"] = round(
                100 * (rows["fused"]["nDCG@10"] - rows["fused_no_heads"]["nDCG@10"]), 2)
        out[t] = entry
    return out


def attribute_report(ix: SplitIndex, manifest: Manifest, qset: QuerySet, queries: Sequence[Query],
                     catalog: Catalog) -> dict[str, Any]:
    """Per-attribute accuracy and macro-F1 of the heads, all outputs from Triton: on the indexed
    catalog images (the bundle's attr_probs attachments) and on user-photo queries (the query's
    single top-graded product gives the truth)."""
    bundle = ix.engine.bundle
    labels = manifest.labels
    out: dict[str, Any] = {"heads_trained": manifest.heads_trained, "catalog_images": {}, "query_photos": {}}
    row_ids = np.asarray(bundle.metadata.row_ids(), dtype=np.int64)
    values = bundle.metadata.attribute_values(row_ids.tolist(), list(labels))
    for attr, labs in labels.items():
        probs = bundle.load_array(f"attr_probs_{attr}")
        if probs is None:
            continue
        index = {lab: i for i, lab in enumerate(labs)}
        truth = np.array([index.get(v[0], -1) if v else -1 for v in values[attr]], dtype=np.int64)
        pred = np.argmax(np.asarray(probs)[row_ids], axis=1)
        known = truth >= 0
        out["catalog_images"][attr] = classification_scores(truth[known].tolist(), pred[known].tolist())
    photo_truth: dict[str, list[int]] = {a: [] for a in labels}
    photo_pred: dict[str, list[int]] = {a: [] for a in labels}
    for q in queries:
        if q.type != "image":
            continue
        top = max(q.relevance.values())
        exact = [pid for pid, g in q.relevance.items() if g == top]
        res = ix.embedder.image_result(_query_image(qset, q) or b"")
        if len(exact) != 1 or res is None or exact[0] not in catalog:
            continue
        row = catalog.get(exact[0])
        for attr, labs in labels.items():
            value = getattr(row, attr, None)
            out_name = contract.attribute_output(attr)
            if value in labs and out_name in res.attributes:
                photo_truth[attr].append(labs.index(value))
                photo_pred[attr].append(int(np.argmax(res.attributes[out_name])))
    for attr in labels:
        if photo_truth[attr]:
            out["query_photos"][attr] = classification_scores(photo_truth[attr], photo_pred[attr])
    return out


# --------------------------------------------------------------------------------------------------
# Export fidelity (torch in-process vs Triton)
# --------------------------------------------------------------------------------------------------


def torch_rankings(spec_path: Path, product_ids: Sequence[str], catalog: Catalog, qset: QuerySet,
                   queries: Sequence[Query], k: int = 10) -> dict[str, list[str]]:
    """query_id -> top-k product ids by cosine, every embedding from the torch model in-process."""
    import torch

    from lenscope.client.core.modelspec import load_spec
    from lenscope.client.inputs.preprocess import preprocess_bytes
    from lenscope.export.model import build_model, open_clip_tokenize

    spec = load_spec(spec_path)
    model = build_model(spec, Path(spec_path).parent)
    image_tower, text_tower, _ = model.towers()

    def images(blobs: list[bytes]) -> torch.Tensor:
        out = []
        for i in range(0, len(blobs), 256):
            x = torch.stack([torch.from_numpy(preprocess_bytes(b, spec.preprocess, spec.limits))
                             for b in blobs[i:i + 256]])
            with torch.no_grad():
                out.append(image_tower(x).float())
        return torch.cat(out) if out else torch.zeros((0, spec.embed_dim))

    def texts(items: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(items), 512):
            with torch.no_grad():
                out.append(text_tower(open_clip_tokenize(spec, items[i:i + 512])).float())
        return torch.cat(out) if out else torch.zeros((0, spec.embed_dim))

    keys = images([catalog.image_path(catalog.get(pid)).read_bytes() for pid in product_ids])
    img_q = [q for q in queries if q.type in ("image", "image+text")]
    txt_q = [q for q in queries if q.type == "text"]
    ranked: dict[str, list[str]] = {}
    for qs, emb in ((img_q, lambda: images([_query_image(qset, q) or b"" for q in img_q])),
                    (txt_q, lambda: texts([q.text or "" for q in txt_q]))):
        if not qs:
            continue
        sims = emb() @ keys.T
        top = torch.topk(sims, min(k, len(product_ids)), dim=1).indices.numpy()
        for q, row in zip(qs, top):
            ranked[q.query_id] = [product_ids[j] for j in row]
    return ranked


def fidelity_spec(config: EvalConfig, manifest: Manifest) -> tuple[Path | None, str]:
    """The spec whose torch model the repository was exported from, or why there is none."""
    if config.spec is not None:
        return Path(config.spec), "the spec the repository was exported from"
    from lenscope.client.core.modelspec import load_spec, resolve_checkpoint

    try:
        import lenscope.export as export_pkg  # the package __init__ is torch-free
    except ImportError:
        return None, "the export package is not installed"
    default = Path(export_pkg.__file__).parent / "specs" / "lenscope-tiny.json"
    if not default.is_file() or manifest.checkpoint is None:
        return None, "no spec given and the repository is not the shipped default"
    spec = load_spec(default)
    ckpt = resolve_checkpoint(spec, default.parent)
    if ckpt is None or hashlib.sha256(ckpt.read_bytes()).hexdigest() != manifest.checkpoint.sha256:
        return None, "no spec given and the repository's checkpoint is not the shipped default's"
    return default, "the shipped default spec (checkpoint sha256 matches the manifest)"


def fidelity_report(config: EvalConfig, manifest: Manifest, ix: SplitIndex, catalog: Catalog, qset: QuerySet,
                    queries: Sequence[Query], rankings: dict[str, dict[str, list[str]]], log: Log) -> dict[str, Any]:
    spec_path, why = fidelity_spec(config, manifest)
    if spec_path is None:
        return {"checked": False, "reason": why}
    t0 = time.perf_counter()
    pids = [p.product_id for p in ix.engine.bundle.metadata.get(ix.engine.bundle.metadata.row_ids().tolist()) if p]
    torch_ranked = torch_rankings(spec_path, pids, catalog, qset, queries, k=10)
    out: dict[str, Any] = {"checked": True, "spec": str(spec_path), "why": why, "k": 10,
                           "tolerance_points": config.fidelity_tolerance_points, "types": {}}
    ok = True
    for t in QUERY_TYPES:
        v = RAW_ANN[t]
        of_type = [q for q in queries if q.type == t and q.query_id in rankings.get(v, {})]
        if not of_type:
            continue
        tri = float(np.mean([recall_at_k(rankings[v][q.query_id], q.relevance, 10, config.min_grade) for q in of_type]))
        tor = float(np.mean([recall_at_k(torch_ranked[q.query_id], q.relevance, 10, config.min_grade) for q in of_type]))
        same_top10 = float(np.mean([set(rankings[v][q.query_id][:10]) == set(torch_ranked[q.query_id][:10])
                                    for q in of_type]))
        diff = round(100 * (tri - tor), 3)
        within = abs(diff) <= config.fidelity_tolerance_points
        if t in FIDELITY_TYPES:
            ok &= within
        out["types"][t] = {"signal": v, "triton_R@10": round(tri, 4), "torch_R@10": round(tor, 4),
                           "diff_points": diff, "within_tolerance": within, "identical_top10_share": round(same_top10, 4),
                           "n": len(of_type), "in_verdict": t in FIDELITY_TYPES}
    out["ok"] = ok
    out["note"] = ("photo and text queries (one cosine over the whole index); photo+text rankings come from a "
                   "merged two-vector candidate pool and are shown for information")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"export fidelity: {'OK' if ok else 'FAILED'} " + ", ".join(
        f"{t}: triton {d['triton_R@10']:.4f} torch {d['torch_R@10']:.4f}" for t, d in out["types"].items()))
    return out


# --------------------------------------------------------------------------------------------------
# Calibration + fusion: resolve or fit
# --------------------------------------------------------------------------------------------------


@dataclass
class RankingSetup:
    calibration: CalibrationSet | None
    calibration_source: str
    weights: FusionWeights
    weights_no_heads: FusionWeights
    weights_source: str
    fitted: FittedFusion | None = None
    fit_seconds: float | None = None


def _export_weights_dir() -> Path | None:
    try:
        import lenscope.export as export_pkg
    except ImportError:
        return None
    return Path(export_pkg.__file__).parent / "weights"


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


def resolve_ranking(config: EvalConfig, stack: LiveStack, qset: QuerySet, engine: Any) -> RankingSetup:
    manifest = stack.manifest
    shipped: dict[str, Path | None] = {"fusion": None, "calibration": None}
    wdir = _export_weights_dir()
    if config.use_shipped and manifest.checkpoint is not None and wdir is not None:
        shipped = shipped_fit_files(manifest.checkpoint.file, manifest.checkpoint.sha256, wdir)
    cal_file = config.calibration or shipped["calibration"]
    fus_file = config.fusion or shipped["fusion"]
    fitted = None
    fit_s = None
    if (cal_file is None or fus_file is None) and config.fit_split:
        t0 = time.perf_counter()
        try:
            fitted, _ = fit_on_split(stack, qset, config.fit_split, max_per_type=config.max_queries_per_type,
                                     seed=config.seed)
            fit_s = round(time.perf_counter() - t0, 1)
        except EvaluationError as err:
            stack.log(f"not fitting on {config.fit_split!r}: {err}")
    if cal_file is not None:
        calibration, cal_src = load_calibration(cal_file), f"file {cal_file}"
    elif fitted is not None:
        calibration, cal_src = fitted.calibration, f"fitted on the {config.fit_split} split's labelled queries"
    else:
        calibration, cal_src = engine.calibration, "index bundle (fitted on the indexed catalog's own pairs)"
    if fus_file is not None:
        weights, w_src = load_weights(fus_file), f"file {fus_file}"
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


# --------------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------------


def evaluate(config: EvalConfig, log: Log = print) -> dict[str, Any]:
    """Run the harness and return the report dict (``write_report`` renders it)."""
    t_start = time.perf_counter()
    catalog = read_catalog(config.catalog)
    qset = load_queries(config, catalog)
    queries = split_queries(qset, config.split, config.max_queries_per_type, config.seed)
    if not queries:
        raise EvaluationError(f"{qset.path}: no queries of split {config.split!r}")
    with live_stack(config, log) as stack:
        manifest = stack.manifest
        ix = stack.index(config.split)
        setup = resolve_ranking(config, stack, qset, ix.engine)
        t0 = time.perf_counter()
        prefetch(ix, qset, queries)
        embed_s = time.perf_counter() - t0
        log(f"embedded {len(queries)} {config.split} queries through Triton in {embed_s:.1f} s")
        t1 = time.perf_counter()
        pools = collect_pools(ix, qset, queries, setup.calibration)
        rankings = run_variants(ix, qset, queries, config.variants, setup.calibration, setup.weights,
                                setup.weights_no_heads, log)
        search_s = time.perf_counter() - t1
        n_searches = len(queries) + sum(len(r) for r in rankings.values())
        table, curves = metric_table(rankings, queries, config)
        attrs = attribute_report(ix, manifest, qset, queries, catalog)
        fidelity = (fidelity_report(config, manifest, ix, catalog, qset, queries, rankings, log)
                    if config.fidelity else {"checked": False, "reason": "disabled"})
        gap_raw = gap_samples(pools, setup.calibration, config.min_grade)
        report: dict[str, Any] = {
            "schema_version": 1,
            "model": {"name": manifest.spec.name, "model_hash": manifest.model_hash,
                      "heads_trained": manifest.heads_trained, "weights": manifest.weights,
                      "checkpoint": manifest.checkpoint.model_dump() if manifest.checkpoint else None,
                      "repository": str(stack.repository)},
            "catalog": {"path": str(catalog.path), "sha256": hashlib.sha256(catalog.path.read_bytes()).hexdigest(),
                        "split": config.split, "indexed": ix.indexed},
            "queries": {"path": str(qset.path), "n": len(queries),
                        "by_type": {t: sum(q.type == t for q in queries) for t in QUERY_TYPES}},
            "definitions": {
                "R@K": f"share of queries with a relevant product (grade >= {config.min_grade}) in the top K",
                "nDCG@10": "graded, gain 2^g - 1, log2 discount, ideal from all judged products",
                "MRR": f"reciprocal rank of the first relevant product within the top {TOP_K} hits",
                "Rfrac@10": f"fraction of products with grade >= {config.graded_min_grade} found in the top 10",
                "variants": {"raw_ann": "the ANN answer: one raw cosine (photo: image->image, text: text->image)",
                             "single:<signal>": "one similarity signal, raw cosine",
                             "raw_sum": "all similarity signals of the query, raw cosines, equal weights",
                             "calibrated": "the same signals calibrated per modality pair, equal weights",
                             "fused_no_heads": "fitted fusion weights with the attribute signal at 0 (heads off)",
                             "fused": "fitted fusion weights (production; heads on)"},
            },
            "ranking": {"calibration_source": setup.calibration_source, "weights_source": setup.weights_source,
                        "weights": setup.weights.model_dump(), "weights_no_heads": setup.weights_no_heads.model_dump(),
                        "fit": setup.fitted.summary() if setup.fitted else None, "fit_seconds": setup.fit_seconds},
            "metrics": table,
            "headline": headline(table),
            "recall_curves": {"ks": list(CURVE_KS), "types": curves},
            "modality_gap": {
                "calibration": gap_table(setup.calibration) if setup.calibration else None,
                "candidates": {pair: {k: {"mean": round(float(np.mean(v)), 4) if v.size else None, "n": int(v.size)}
                                      for k, v in d.items()} for pair, d in gap_raw.items()},
                "note": ("calibration: statistics of the data the calibration was fitted on; candidates: the "
                         "evaluated queries' candidate pools (matched = relevant, unmatched = grade 0)"),
            },
            "attributes": attrs,
            "fidelity": fidelity,
            "timings_s": {**stack.timings, "index_build_s": round(ix.build_seconds, 1),
                          "query_embedding_s": round(embed_s, 1), "searches_s": round(search_s, 1),
                          "searches": n_searches, "ms_per_search": round(1000 * search_s / max(n_searches, 1), 2),
                          "total_s": round(time.perf_counter() - t_start, 1)},
        }
    report["_gap_samples"] = gap_raw  # numpy arrays for the plots; dropped from the JSON
    return report


# --------------------------------------------------------------------------------------------------
# Report: JSON + Markdown + PNG
# --------------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def metrics_markdown(table: dict[str, dict[str, dict[str, float]]], variants: Sequence[str] | None = None) -> str:
    lines = []
    for t in QUERY_TYPES:
        rows = table.get(t)
        if not rows:
            continue
        lines.append(f"**{TYPE_LABEL[t]}** ({next(iter(rows.values()))['n']} queries)\n")
        lines.append("| ranking | R@1 | R@5 | R@10 | nDCG@10 | MRR | Rfrac@10 |")
        lines.append("|---|---|---|---|---|---|---|")
        order = sorted(rows, key=lambda v: (not v.startswith("single:"), COMBINED_VARIANTS.index(v)
                                            if v in COMBINED_VARIANTS else 0, v))
        for v in order:
            if variants is not None and v not in variants:
                continue
            m = rows[v]
            name = f"{v} (raw ANN)" if v == RAW_ANN[t] else v
            lines.append(f"| {name} | {_fmt(m['R@1'])} | {_fmt(m['R@5'])} | {_fmt(m['R@10'])} | "
                         f"{_fmt(m['nDCG@10'])} | {_fmt(m['MRR'])} | {_fmt(m['Rfrac@10'])} |")
        lines.append("")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    m, r = report["model"], report["ranking"]
    out = [f"# Evaluation: {m['name']} on {Path(report['catalog']['path']).name} ({report['catalog']['split']} split)",
           "",
           f"Model hash `{m['model_hash']}`, heads {'trained' if m['heads_trained'] else 'untrained'}; "
           f"{report['catalog']['indexed']} products indexed through Triton; {report['queries']['n']} queries "
           f"({', '.join(f'{n} {t}' for t, n in report['queries']['by_type'].items())}).",
           "",
           f"- calibration: {r['calibration_source']}",
           f"- fusion weights: {r['weights_source']}: "
           + ", ".join(f"{k} {v:.3g}" for k, v in r["weights"].items() if k != "schema_version"),
           "", "Definitions: " + "; ".join(f"**{k}** {v}" for k, v in report["definitions"].items() if k != "variants"),
           "", "Variants: " + "; ".join(f"`{k}` {v}" for k, v in report["definitions"]["variants"].items()), "",
           "## Headline", "",
           "| query type | raw ANN R@10 | best single signal nDCG@10 | fused nDCG@10 | fused - best single (pt) | "
           "fused R@10 | heads on - off R@10 (pt) |",
           "|---|---|---|---|---|---|---|"]
    for t, h in report["headline"].items():
        bs = h.get("best_single", {})
        out.append(f"| {TYPE_LABEL[t]} | {_fmt(h.get('raw_ann', {}).get('R@10'))} | "
                   f"{_fmt(bs.get('nDCG@10'))} ({bs.get('variant', '-')}) | {_fmt(h.get('fused', {}).get('nDCG@10'))} | "
                   f"{_fmt(h.get('fused_minus_best_single_ndcg10_points'), 2)} | {_fmt(h.get('fused', {}).get('R@10'))} | "
                   f"{_fmt(h.get('heads_on_minus_off_R@10_points'), 2)} |")
    out += ["", "## All rankings", "", metrics_markdown(report["metrics"])]
    if "recall_curves" in plots:
        out += [f"![Recall@K]({plots['recall_curves']})", ""]
    gap = report["modality_gap"]
    if gap.get("calibration"):
        out += ["## Modality gap", "",
                "Mean raw cosine of matched (relevant) and unmatched candidates per modality pair on the data the "
                "calibration was fitted on, the calibrated value at those means, and the gap of each pair's matched "
                "mean to image->image, before and after calibration.", "",
                "| pair | raw matched | raw unmatched | calibrated @ matched | calibrated @ unmatched | gap raw | gap calibrated |",
                "|---|---|---|---|---|---|---|"]
        for pair, g in gap["calibration"].items():
            out.append(f"| {pair} | {_fmt(g['raw_matched'])} | {_fmt(g['raw_unmatched'])} | "
                       f"{_fmt(g['calibrated_at_matched_mean'])} | {_fmt(g['calibrated_at_unmatched_mean'])} | "
                       f"{_fmt(g.get('gap_to_image_image_raw'))} | {_fmt(g.get('gap_to_image_image_calibrated'))} |")
        out.append("")
    cand = gap.get("candidates") or {}
    if cand:
        out += ["On the evaluated split's candidate pools (matched = relevant, unmatched = grade 0; partially "
                "relevant left out), mean raw cosine and mean calibrated value:", "",
                "| pair | raw matched | raw unmatched | calibrated matched | calibrated unmatched |",
                "|---|---|---|---|---|"]
        for pair, d in cand.items():
            means = [_fmt((d.get(k) or {}).get("mean")) for k in ("raw_matched", "raw_unmatched", "calibrated_matched",
                                                                  "calibrated_unmatched")]
            out.append(f"| {pair} | " + " | ".join(means) + " |")
        out.append("")
    if "gap_histograms" in plots:
        out += [f"![modality gap]({plots['gap_histograms']})", ""]
    a = report["attributes"]
    if a.get("catalog_images") or a.get("query_photos"):
        out += ["## Attribute heads", "", f"Heads {'trained' if a['heads_trained'] else 'untrained (seeded init)'}; "
                "outputs from Triton.", "", "| attribute | catalog images acc | macro-F1 | user photos acc | macro-F1 |",
                "|---|---|---|---|---|"]
        for attr in sorted(set(a["catalog_images"]) | set(a["query_photos"])):
            c, p = a["catalog_images"].get(attr, {}), a["query_photos"].get(attr, {})
            out.append(f"| {attr} | {_fmt(c.get('accuracy'))} | {_fmt(c.get('macro_f1'))} | "
                       f"{_fmt(p.get('accuracy'))} | {_fmt(p.get('macro_f1'))} |")
        out.append("")
    f = report["fidelity"]
    out += ["## Export fidelity", ""]
    if f.get("checked"):
        out += [f"Recall@10 of the raw ANN ranking through Triton (ONNX) vs the torch model in-process "
                f"({f['why']}); tolerance {f['tolerance_points']} points: **{'OK' if f['ok'] else 'FAILED'}**.", "",
                "| query type | Triton R@10 | torch R@10 | diff (pt) | identical top-10 |", "|---|---|---|---|---|"]
        for t, d in f["types"].items():
            label = TYPE_LABEL[t] + ("" if d.get("in_verdict", True) else " (information)")
            out.append(f"| {label} | {_fmt(d['triton_R@10'], 4)} | {_fmt(d['torch_R@10'], 4)} | "
                       f"{_fmt(d['diff_points'], 2)} | {_fmt(d['identical_top10_share'], 3)} |")
        if f.get("note"):
            out += ["", f"The verdict covers {f['note']}."]
    else:
        out.append(f"Not checked: {f.get('reason')}.")
    ts = report["timings_s"]
    out += ["", "## Timings", "", ", ".join(f"{k} {v}" for k, v in ts.items()), ""]
    return "\n".join(out)


def plot_recall_curves(curves: dict[str, dict[str, list[float]]], ks: Sequence[int], path: Path,
                       title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = [t for t in QUERY_TYPES if t in curves]
    fig, axes = plt.subplots(1, max(len(types), 1), figsize=(4.2 * max(len(types), 1), 3.4), squeeze=False)
    for ax, t in zip(axes[0], types):
        for name, ys in curves[t].items():
            ax.plot(list(ks)[:len(ys)], ys, label=name, linewidth=1.6)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.set_ylim(0, 1.01)
        ax.set_title(TYPE_LABEL[t])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gap_histograms(samples: dict[str, dict[str, np.ndarray]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p for p in ("image_image", "image_title", "text_image", "text_title") if p in samples]
    if not pairs:
        return
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.6 * len(pairs), 5.4), squeeze=False)
    for j, pair in enumerate(pairs):
        d = samples[pair]
        ax = axes[0][j]
        bins = np.linspace(-0.2, 1.0, 49)
        ax.hist(d["raw_unmatched"], bins=bins, alpha=0.6, density=True, label=f"unmatched ({d['raw_unmatched'].size})")
        ax.hist(d["raw_matched"], bins=bins, alpha=0.6, density=True, label=f"matched ({d['raw_matched'].size})")
        ax.set_title(f"{pair}: raw cosine", fontsize=9)
        ax.legend(fontsize=7)
        ax2 = axes[1][j]
        if "calibrated_matched" in d:
            cb = np.linspace(0, 1, 41)
            ax2.hist(d["calibrated_unmatched"], bins=cb, alpha=0.6, density=True, label="unmatched")
            ax2.hist(d["calibrated_matched"], bins=cb, alpha=0.6, density=True, label="matched")
            ax2.set_title(f"{pair}: calibrated", fontsize=9)
            ax2.legend(fontsize=7)
        else:
            ax2.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(report: dict[str, Any], out_dir: Path, name: str = "eval", plots: bool = True) -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>_recall.png`` / ``<name>_gap.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rel: dict[str, str] = {}
    if plots:
        p = out_dir / f"{name}_recall.png"
        plot_recall_curves(report["recall_curves"]["types"], report["recall_curves"]["ks"], p,
                           f"{report['model']['name']}: Recall@K ({report['catalog']['split']} split)")
        files["recall_curves"], rel["recall_curves"] = p, p.name
        if report.get("_gap_samples"):
            p = out_dir / f"{name}_gap.png"
            plot_gap_histograms(report["_gap_samples"], p, f"{report['model']['name']}: matched vs unmatched "
                                "candidates per modality pair, before (top) and after (bottom) calibration")
            files["gap_histograms"], rel["gap_histograms"] = p, p.name
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    md = out_dir / f"{name}.md"
    md.write_text(render_markdown(report, rel), encoding="utf-8")
    files.update({"json": js, "markdown": md})
    return files


# --------------------------------------------------------------------------------------------------
# Fitting command body (lenscope rerank fit)
# --------------------------------------------------------------------------------------------------


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
    out_fusion.parent.mkdir(parents=True, exist_ok=True)
    save_weights(fitted.weights, out_fusion)
    if out_calibration is not None:
        out_calibration.parent.mkdir(parents=True, exist_ok=True)
        save_calibration(fitted.calibration, out_calibration)
    summary = fitted.summary()
    summary.update({"model": manifest.spec.name, "model_hash": manifest.model_hash, "split": config.split,
                    "queries": len(pools), "fusion_file": str(out_fusion),
                    "calibration_file": None if out_calibration is None else str(out_calibration)})
    return summary

