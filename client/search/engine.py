"""The search facade: embed -> retrieve (adaptive over-fetch) -> exact re-score -> calibrate -> fuse
-> facets, under the caller's deadline.

Everything heavy is loaded once at start-up (index, title vectors and, above ``title_scan_max``
rows, their in-memory IVF from the layout the build stored), facet columns, popularity, calibration, fusion weights); a search touches
SQLite only for the final hits' titles. Longer than the ~400-line guide because the facade is one
pipeline whose stages share the per-query state; the pure pieces already live elsewhere (ranking/,
vectors/); the candidate merge (``round_robin``) and the online recall sampler are the next to move
out if it grows.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lenscope.client.core import contract
from lenscope.client.ranking.calibration import CalibrationSet
from lenscope.client.ranking.facets import AttributeTable, FacetError, FilterSpec, UnknownFacetError, apply_filters, facet_counts, over_fetch
from lenscope.client.index.bundle import IndexBundle, ModelVersionMismatch
from lenscope.client.core.manifest import Manifest, index_model_hash
from lenscope.client.ranking.fusion import FusionWeights, attribute_agreement, encode_labels, fuse, popularity_prior
from lenscope.client.ranking.policy import RankingPolicy, query_type_of
from lenscope.client.ranking.text_facets import text_facets_for
from lenscope.client.ranking.signals import prepare_signals
from lenscope.client.search.models import (
    BackendUnavailable,
    DeadlineExceeded,
    Hit,
    OverFetchInfo,
    QueryError,
    RankingInfo,
    SearchQuery,
    SearchResult,
)
from lenscope.client.triton.client import EmbedResult, TritonEmbedder, TritonError
from lenscope.client.vectors.cell_index import (ASSIGNMENT_ATTACHMENT, CENTROIDS_ATTACHMENT, SCAN_MAX_ROWS, CellIndex,
                                                LayoutMismatch)
from lenscope.client.vectors.contract import RecallMonitor

_log = structlog.get_logger("lenscope.search")

CALIBRATION_ATTACHMENT = "calibration.json"
FUSION_ATTACHMENT = "fusion.json"
POLICY_ATTACHMENT = "ranking_policy.json"
TITLE_VECTORS = "title_vectors"


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rerank_depth: int = Field(100, ge=1, le=10_000)  # filtered candidates re-ranked per query
    max_candidates: int = Field(2000, ge=10, le=100_000)  # over-fetch bound
    growth: float = Field(4.0, gt=1.0)
    default_deadline_s: float = Field(1.0, gt=0)
    # share of the remaining deadline handed to Triton, so the service can still answer in time
    triton_share: float = Field(0.8, gt=0, le=1)
    facet_max_values: int = Field(25, ge=1)
    recall_sample_rate: float = Field(0.02, ge=0, le=1)
    model_check_interval_s: float = Field(5.0, gt=0)
    # above this many title vectors, title retrieval uses an in-memory IVF-flat instead of a scan
    title_scan_max: int = Field(SCAN_MAX_ROWS, ge=0)


@dataclass
class _Embedded:
    image: np.ndarray | None
    text: np.ndarray | None
    attributes: dict[str, np.ndarray]


class SearchEngine:
    """Serves one index bundle with the Triton model that built it."""

    def __init__(self, embedder: TritonEmbedder, bundle: IndexBundle, settings: SearchSettings = SearchSettings()):
        self.embedder = embedder
        self.bundle = bundle
        self.settings = settings
        self.model = Manifest.model_validate(embedder.manifest())
        bundle.require_model(index_model_hash(self.model.model_dump(mode="json"))[0])  # fp16: only a gated one
        self._served_hash = self.model.model_hash
        self._checked_at = time.monotonic()
        self._lock = threading.Lock()

        self.calibration = _load_model(bundle, CALIBRATION_ATTACHMENT, CalibrationSet)
        self.weights = _load_model(bundle, FUSION_ATTACHMENT, FusionWeights) or FusionWeights()
        # per query type: fused, or ranked by one raw signal (the index build's held-out decision);
        # None (bundles built before it existed): every query type fused
        self.policy: RankingPolicy | None = _load_model(bundle, POLICY_ATTACHMENT, RankingPolicy)
        titles = bundle.load_array(TITLE_VECTORS)
        self.title_vectors = None if titles is None else np.asarray(titles, dtype=np.float32)
        # Title retrieval: an exact scan up to TITLE_SCAN_MAX rows; above, an IVF-flat built now
        # (exact scores, approximate choice of rows: see vectors/cell_index.py), since a scan of a
        # 1M x D matrix per query costs more than the whole search (benchmarks/reports/scale.md).
        self._title_cells: CellIndex | None = None
        if self.title_vectors is not None and self.title_vectors.shape[0] > settings.title_scan_max:
            self._title_cells = _title_cells(bundle, self.title_vectors)

        row_ids = np.asarray(bundle.metadata.row_ids(), dtype=np.int64)
        self._n = int(row_ids.max()) + 1 if row_ids.size else 0
        self._facets = tuple(sorted(bundle.metadata.attribute_names()))
        columns: dict[str, list[str | None]] = {f: [None] * self._n for f in self._facets}
        for f in self._facets:  # one table scan per facet (first value of each product, as a column)
            col = columns[f]
            for rid, value in zip(*bundle.metadata.first_values(f)):
                col[rid] = value
        self.attributes = AttributeTable.from_columns(columns)
        # label indices per model attribute, for attribute agreement with the heads' predictions
        self._label_codes = {
            a: encode_labels(columns[a], labels) for a, labels in self.model.labels.items() if a in columns
        }
        pop = np.zeros(self._n)
        pop_ids, pop_values = bundle.metadata.all_popularity()
        pop[pop_ids] = np.nan_to_num(pop_values)
        self.popularity = popularity_prior(pop, float(pop.max(initial=0.0)))
        # Online recall: a sampled query's exact search (a brute force over the catalog: ~100 ms at
        # 1M) runs on one background thread, never in the request path; samples arriving while it is
        # busy are skipped. The engine decides the sampling, the monitor measures every query given.
        self.recall = RecallMonitor(bundle.index, k=10, sample_rate=1.0)
        self._recall_rng = random.Random(0)
        self._recall_idle = threading.Semaphore(1)
        self._recall_worker = ThreadPoolExecutor(1, thread_name_prefix="lenscope-recall")

    # -- service protocol -----------------------------------------------------------------------
    @property
    def model_hash(self) -> str:
        return self.model.model_hash

    @property
    def index_version(self) -> str:
        return self.bundle.version

    def facet_names(self) -> list[str]:
        return list(self._facets)

    def ready(self) -> bool:
        """Triton ready and still serving the model this index was built with."""
        if not self.embedder.is_ready():
            return False
        self._refresh_model_hash(force=True)
        return self._served_hash == self.model.model_hash

    def ann_recall(self) -> float | None:
        return self.recall.recall

    def close(self) -> None:
        """The engine runs searches on its caller's thread (the service's concurrency model, see
        ``service/servicer.py``); it owns only the background recall thread."""
        self._recall_worker.shutdown(wait=False, cancel_futures=True)

    def _sample_recall(self, q: np.ndarray, res) -> None:
        if self.settings.recall_sample_rate <= 0 or self._recall_rng.random() >= self.settings.recall_sample_rate:
            return
        if not self._recall_idle.acquire(blocking=False):
            return  # the previous sample is still running: skip rather than queue work

        def measure() -> None:
            try:
                self.recall.observe(q, res)
            except Exception as err:  # noqa: BLE001 - monitoring must never fail a search
                _log.warning("recall_sample_failed", error=str(err))
            finally:
                self._recall_idle.release()

        try:
            self._recall_worker.submit(measure)
        except RuntimeError:  # closed
            self._recall_idle.release()

    # -- search ---------------------------------------------------------------------------------
    def search(self, q: SearchQuery) -> SearchResult:
        t0 = time.perf_counter()
        deadline = t0 + (q.deadline_s or self.settings.default_deadline_s)
        filters, facet_names = self._validate(q)
        self._refresh_model_hash(budget_s=(deadline - time.perf_counter()) * self.settings.triton_share)
        if self._served_hash != self.model.model_hash:
            raise ModelVersionMismatch(self.model.model_hash, self._served_hash, "Triton (query embeddings)")
        timings: dict[str, float] = {}

        emb = self._embed(q, deadline)
        t1 = time.perf_counter()
        timings["embed"] = 1000 * (t1 - t0)

        query_type = query_type_of(emb.image is not None, emb.text is not None)
        first = self.policy.ranked_by(query_type) if self.policy is not None else None
        target = max(q.top_k, self.settings.rerank_depth)
        of = over_fetch(
            lambda k: self._fetch(emb, k, first),
            lambda pool: apply_filters(self.attributes.take(pool), filters),
            target, max_candidates=max(self.settings.max_candidates, target),
            initial_k=target, growth=self.settings.growth,
        )
        pool = of.candidates
        matched = pool[of.mask]
        t2 = time.perf_counter()
        timings["retrieve"] = 1000 * (t2 - t1)
        _check_deadline(deadline, "retrieval")

        raw = self._raw_signals(emb, matched)
        prepared = prepare_signals(raw, self.calibration)  # the raw-cosine rule: no signal is dropped
        calibrated = {name: prepared.values[name] for name in prepared.calibrated}
        signals: dict[str, np.ndarray | None] = dict(prepared.values)
        if emb.attributes and self._label_codes and self.model.heads_trained:  # untrained heads: noise
            probs = {a: emb.attributes[contract.attribute_output(a)] for a in self._label_codes}
            signals["attributes"] = attribute_agreement(probs, {a: c[matched] for a, c in self._label_codes.items()})
        signals["popularity"] = self.popularity[matched]
        if emb.text is not None:  # the catalog facet values the query's words name (None: names none)
            signals["text_facets"] = text_facets_for(q.text, self.attributes.vocab,
                                                     {f: c[matched] for f, c in self.attributes.codes.items()})
        t3 = time.perf_counter()
        timings["calibrate"] = 1000 * (t3 - t2)

        ranking = self._ranking_info(query_type, prepared.calibrated, prepared.raw)
        weights = self.policy.weights_for(query_type, self.weights) if self.policy is not None else self.weights
        fused = fuse(signals, weights)
        order = fused.order(q.top_k)
        t4 = time.perf_counter()
        timings["fuse"] = 1000 * (t4 - t3)

        facets = facet_counts(self.attributes.take(pool), filters, facet_names, max_values=self.settings.facet_max_values)
        t5 = time.perf_counter()
        timings["facets"] = 1000 * (t5 - t4)

        hits = self._hits(matched, order, fused, raw, calibrated)
        timings["total"] = 1000 * (time.perf_counter() - t0)
        labels = self.model.labels
        query_attrs = {}
        if q.explain and emb.attributes:
            query_attrs = {a: dict(zip(labels[a], map(float, emb.attributes[contract.attribute_output(a)])))
                           for a in labels if contract.attribute_output(a) in emb.attributes}
        return SearchResult(
            hits=hits, facets=facets, timings_ms=timings, model_hash=self.model.model_hash,
            index_version=self.bundle.version, query_attributes=query_attrs,
            ranking=ranking,
            over_fetch=OverFetchInfo(candidates=int(pool.size), rounds=len(of.ks),
                                     filled=int(of.mask.sum()) >= q.top_k, hit_bound=of.hit_bound),
        )

    def _validate(self, q: SearchQuery) -> tuple[FilterSpec, list[str]]:
        if q.image is None and not (q.text and q.text.strip()):
            raise QueryError("empty query: send an image, a non-blank text, or both")
        try:
            filters = FilterSpec(clauses={k: frozenset(v) for k, v in q.filters.items()})
        except ValidationError as err:
            raise QueryError(f"invalid filter: {err.errors()[0]['msg']}") from None
        filters.check_known(self._facets)
        for f in q.facets:
            if f not in self._facets:
                raise UnknownFacetError(f, self._facets)
        return filters, list(q.facets) or list(self._facets)

    def _refresh_model_hash(self, force: bool = False, budget_s: float | None = None) -> None:
        """Re-read the served model's hash every model_check_interval_s, within the query's budget."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.settings.model_check_interval_s:
            return
        if budget_s is not None and budget_s <= 0:
            return
        with self._lock:
            self._checked_at = now
        try:
            self._served_hash = self.embedder.manifest(timeout_s=budget_s)["model_hash"]
        except TritonError:
            pass  # unreachable or slow now: the embed call reports it with the query's own deadline

    def _embed(self, q: SearchQuery, deadline: float) -> _Embedded:
        budget = (deadline - time.perf_counter()) * self.settings.triton_share
        if budget <= 0:
            raise DeadlineExceeded("deadline exhausted before embedding")
        has_text = bool(q.text and q.text.strip())
        img = txt = None
        if q.image is not None and has_text:
            img_r, txt_r = self.embedder.embed_image_and_text(q.image, q.text, budget)
            img, txt = _unwrap([img_r], "image"), _unwrap([txt_r], "text")
        elif q.image is not None:
            img = _unwrap(self.embedder.embed_images([q.image], budget), "image")
        elif has_text:
            txt = _unwrap(self.embedder.embed_texts([q.text], budget), "text")
        return _Embedded(image=None if img is None else img.embedding, text=None if txt is None else txt.embedding,
                         attributes={} if img is None else img.attributes)

    def _fetch(self, emb: _Embedded, k: int, first: str | None = None) -> np.ndarray:
        """The k candidates for the query: each similarity signal's own best products (ANN over the
        image index; exact over the title vectors, which are in memory), merged round-robin, so that
        the top of every signal is in the pool whichever signal ranks it (raw cosines of different
        modality pairs are not comparable, so they are not merged by score). ``first``: the signal
        the query type is ranked by leads the round-robin."""
        lists: list[tuple[str, np.ndarray]] = []
        for name, vec in (("visual", emb.image), ("text_image", emb.text)):
            if vec is not None:
                q = vec[None, :].astype(np.float32)
                res = self.bundle.index.search(q, k)
                self._sample_recall(q, res)
                lists.append((name, res.ids[0][res.ids[0] >= 0]))
        if self.title_vectors is not None and self.title_vectors.shape[0]:
            for name, vec in (("image_title", emb.image), ("text_title", emb.text)):
                if vec is None:
                    continue
                if self._title_cells is not None:
                    lists.append((name, self._title_cells.search(vec, k)))
                    continue
                scores = self.title_vectors @ vec.astype(np.float32)
                top = np.argpartition(-scores, min(k, scores.size) - 1)[:k]
                lists.append((name, top[np.argsort(-scores[top], kind="stable")].astype(np.int64)))
        lists.sort(key=lambda item: item[0] != first)
        return round_robin([ids for _, ids in lists], k)

    def _raw_signals(self, emb: _Embedded, ids: np.ndarray) -> dict[str, np.ndarray]:
        image_vecs = self.bundle.index.get_vectors(ids) if ids.size else np.zeros((0, self.model.embed_dim), np.float32)
        titles = self.title_vectors[ids] if self.title_vectors is not None else None
        raw = {}
        if emb.image is not None:
            raw["visual"] = image_vecs @ emb.image
            if titles is not None:
                raw["image_title"] = titles @ emb.image
        if emb.text is not None:
            raw["text_image"] = image_vecs @ emb.text
            if titles is not None:
                raw["text_title"] = titles @ emb.text
        return {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}

    def _ranking_info(self, query_type: str, calibrated: tuple[str, ...], raw: tuple[str, ...]) -> RankingInfo:
        """What ranked this query and why: the index build's decision for its query type."""
        if self.policy is None:
            return RankingInfo(query_type=query_type, ranked_by="fused", calibrated_signals=list(calibrated),
                               raw_signals=list(raw), source="legacy",
                               reason="index built before the held-out check: every query type fused",
                               rule="legacy")
        d = self.policy.decisions.get(query_type)
        return RankingInfo(
            query_type=query_type, ranked_by=self.policy.ranked_by(query_type), calibrated_signals=list(calibrated),
            raw_signals=list(raw), source=self.policy.source, reason=d.reason if d else "",
            held_out={k: v.model_dump() for k, v in d.held_out.items()} if d else {},
            rule=d.rule if d else "", pooled={k: v.model_dump() for k, v in d.pooled.items()} if d else {},
        )

    def _hits(self, ids: np.ndarray, order: np.ndarray, fused, raw: dict, calibrated: dict) -> list[Hit]:
        chosen = ids[order]
        products = self.bundle.metadata.get(chosen.tolist())
        hits = []
        for rank, (i, product) in enumerate(zip(order.tolist(), products)):
            if product is None:
                continue
            hits.append(Hit(
                product_id=product.product_id, title=product.title, image=product.image_path,
                score=float(fused.scores[i]), breakdown=fused.breakdown(i),
                raw={k: float(v[i]) for k, v in raw.items()},
                calibrated={k: float(v[i]) for k, v in calibrated.items()},
                attributes={k: v[0] for k, v in product.attributes.items() if v},
                popularity=float(product.popularity or 0.0),
            ))
        return hits


def round_robin(lists: list[np.ndarray], k: int) -> np.ndarray:
    """At most k distinct ids taking each list's next best in turn (first list first).

    Vectorised (the pool is up to ``max_candidates`` ids from up to four lists): interleave the
    lists rank by rank, keep each id's first occurrence, in order. Same ids, same order as the loop
    it replaced (``tests/unit/test_search_fast_path.py`` checks both on random lists).
    """
    lists = [np.asarray(x, dtype=np.int64).ravel() for x in lists]
    depth = max((x.size for x in lists), default=0)
    if depth == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    grid = np.full((depth, len(lists)), -1, dtype=np.int64)  # row = rank, column = list
    present = np.zeros((depth, len(lists)), dtype=bool)
    for j, ids in enumerate(lists):
        grid[: ids.size, j] = ids
        present[: ids.size, j] = True
    seq = grid[present]  # row-major: rank 0 of every list, then rank 1, ...
    _, first = np.unique(seq, return_index=True)
    return seq[np.sort(first)[:k]]


def _check_deadline(deadline: float, stage: str) -> None:
    if time.perf_counter() > deadline:
        raise DeadlineExceeded(f"deadline exceeded during {stage}")


def _unwrap(results: list[EmbedResult], what: str) -> EmbedResult:
    r = results[0]
    if r.ok:
        return r
    err = r.error
    if err.status == "DEADLINE_EXCEEDED":
        raise DeadlineExceeded(f"embedding the {what} query took longer than the deadline allows")
    if err.status == "INVALID_ARGUMENT":
        raise QueryError(f"{what} rejected: {err.message}")
    # The raw gRPC error names Triton's address: log it, tell the caller only what failed.
    _log.warning("triton_embed_failed", what=what, status=err.status, error=err.message)
    raise BackendUnavailable(f"Triton could not embed the {what} query ({err.status}); the embedding backend is unreachable or failing")


def _load_model(bundle: IndexBundle, name: str, cls):
    data = bundle.read_attachment(name)
    if data is None:
        return None
    return cls.model_validate(json.loads(data))


__all__ = ["SearchEngine", "SearchSettings", "FacetError"]


def require_backend(bundle: IndexBundle, vector_backend: str, index_root: str) -> None:
    """Refuse a bundle built with another vector backend than the service is set to (auto: any)."""
    from lenscope.client.index.bundle import BundleError

    built_with = bundle.manifest.index_backend
    if vector_backend not in ("auto", built_with):
        raise BundleError(f"the index published under {index_root} ({bundle.version}) was built with the "
                          f"{built_with} backend, but the service is set to vector_backend={vector_backend}: "
                          f"rebuild with --backend {vector_backend} or set LENSCOPE_VECTOR_BACKEND=auto")


def _title_cells(bundle: IndexBundle, titles: np.ndarray) -> CellIndex:
    """The title CellIndex from the layout the index build stored (no k-means), else built now, saying why."""
    t = time.perf_counter()
    centroids, cells = (bundle.load_array(name) for name in (CENTROIDS_ATTACHMENT, ASSIGNMENT_ATTACHMENT))
    reason = "this bundle stores no title cell layout (built below the layout threshold or by an older version)"
    if centroids is not None and cells is not None:
        try:
            index = CellIndex.from_layout(titles, centroids, cells)
        except LayoutMismatch as err:
            reason = f"the stored title cell layout does not fit the title vectors ({err})"
        else:
            _log.info("title_cell_index_loaded", rows=titles.shape[0], nlist=index.nlist, nprobe=index.nprobe,
                      seconds=round(time.perf_counter() - t, 1))
            return index
    index = CellIndex(titles)
    _log.info("title_cell_index_built", rows=titles.shape[0], nlist=index.nlist, nprobe=index.nprobe,
              seconds=round(time.perf_counter() - t, 1), why=reason)
    return index


def open_engine(triton_url: str, index_root: str, settings: SearchSettings = SearchSettings(),
                triton_timeout_s: float = 2.0, faiss_threads: int = 1,
                client_config: "ClientConfig | None" = None, *, vector_backend: str = "auto",
                index_options: "dict[str, dict] | None" = None) -> SearchEngine:
    """Connect to Triton, open the published index bundle built by Triton's model, build the engine.

    FAISS runs single-threaded: the service parallelises across requests, and OpenMP threads
    fighting over a few cores made batch-1 search ~10x slower in measurements. `vector_backend`
    (auto | faiss | milvus) refuses a bundle of the other kind; `index_options` holds per-backend
    options for opening it (e.g. {"milvus": {"uri": ..., "token": ...}}).
    """
    import faiss

    from lenscope.client.index.bundle import BundleError
    from lenscope.client.index.bundle_store import BundleStore
    from lenscope.client.triton.client import ClientConfig

    faiss.omp_set_num_threads(faiss_threads)
    # client_config carries TLS / mutual-TLS material for the channel to Triton
    embedder = TritonEmbedder(client_config or ClientConfig(url=triton_url, timeout_s=triton_timeout_s))
    try:  # at start-up no caller waits: allow a busy Triton longer than a query's share
        served, why = index_model_hash(embedder.manifest(timeout_s=max(embedder.config.timeout_s, 10.0)))
        if why:
            _log.info("index_model_variant", reason=why)
    except TritonError as err:
        embedder.close()
        raise BackendUnavailable(f"Triton at {triton_url} did not answer: {err}") from err
    try:
        bundle = BundleStore(index_root).open_current(expected_model_hash=served, index_options=index_options)
    except BaseException:
        embedder.close()
        raise
    try:
        require_backend(bundle, vector_backend, index_root)
        return SearchEngine(embedder, bundle, settings)
    except BaseException:
        bundle.close()
        embedder.close()
        raise
