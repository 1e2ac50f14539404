"""Indexing job, stage 3 (writer): embedded chunks -> one published index bundle.

Row ids are dense, 0..N-1, in catalog order among the accepted rows; they depend only on the
catalog and each row's outcome (both checkpointed), so a resumed build assigns the same ids as an
uninterrupted one. The bundle (see index/bundle_store.py) holds:

- the vector index over catalog image embeddings (row id -> vector), kind from the settings;
- metadata: product_id, title, main image path (as written in the catalog), every image with its role,
  variant_of, the catalog's attributes (whatever names it has; absent values are absent), popularity
  (0 when unknown);
- attachments, all by row id:
    ``title_vectors.npy``          float32 [N, D]  title embeddings
    ``photo_vectors.npy``          float32 [N, D]  user-photo embeddings, NaN rows where none (only
                                                  when the catalog has photos)
    ``attr_probs_<name>.npy``      float32 [N, L]  attribute head probabilities of the catalog image,
                                                  columns in the order of the model's labels
    ``calibration.json``           CalibrationSet in force (see index/ranking_setup.py), when any
    ``fusion.json``                FusionWeights in force (the caller's file, a bound fit, the self-check's)
    ``ranking_policy.json``        RankingPolicy: per query type fused or one raw signal, with the
                                   held-out numbers it was decided on (ranking/policy.py)
    ``rejects.jsonl``              every rejected row / skipped photo (line, product_id, reason, message, kept)
    ``row_keys.json``              per row, the content key of its vectors (index/incremental.py)
    ``file_digests.json``          image files' stat + SHA-256, so the next build's keys skip unchanged
                                   files (index/file_digests.py)
    ``index_info.json``            catalog path + sha256, counts, rejects by reason, model, timings,
                                   calibration notes and gap report, head agreement with catalog labels,
                                   ``ranking``: the fit's source, binding, self-check summary, decisions

Swapping FAISS for another `VectorIndex` backend means changing `make_index`, nothing upstream.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np
import structlog

from lenscope.client.vectors.cell_index import ASSIGNMENT_ATTACHMENT, CENTROIDS_ATTACHMENT, SCAN_MAX_ROWS, CellIndex
from lenscope.client.vectors.faiss_index import FaissIndex, FaissIndexConfig, IVFPQConfig
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.calibration import gap_summary
from lenscope.client.index.embedder import EmbeddedChunk, ModelInfo
from lenscope.client.index.file_digests import FILE_DIGESTS
from lenscope.client.index.reader import Reject, SourceRow
from lenscope.client.index.metadata import Product
from lenscope.client.ranking.fusion import FusionWeights

if TYPE_CHECKING:
    from lenscope.client.index.ranking_setup import RankingSetup

_log = structlog.get_logger("lenscope.index")

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
FLAT_MAX_ROWS = 50_000  # "auto": exact search below this, HNSW above

TITLE_VECTORS = "title_vectors"
PHOTO_VECTORS = "photo_vectors"
ATTR_PROBS_PREFIX = "attr_probs_"
CALIBRATION = "calibration.json"
FUSION = "fusion.json"
RANKING_POLICY = "ranking_policy.json"
REJECTS = "rejects.jsonl"
INDEX_INFO = "index_info.json"
ROW_KEYS = "row_keys.json"  # per row id, the content key of its vectors (index/incremental.py)


@dataclass
class Assembled:
    """All accepted rows in catalog order, with their vectors (row id = list index)."""

    rows: list[SourceRow]
    image: np.ndarray
    title: np.ndarray
    photo: np.ndarray
    attributes: dict[str, np.ndarray]
    rejects: list[Reject] = field(default_factory=list)
    keys: list[str] | None = None  # content key per row (stored so the next build can reuse the vectors)
    file_digests: bytes | None = None  # index/file_digests.py: image files hashed, for the next build's keys
    # an incremental build's previous title cell layout: (centroids, cell per row, -1 for rows embedded anew)
    title_cells_hint: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.rows)


def assemble(chunks: Iterable[EmbeddedChunk], rows: Sequence[SourceRow], model: ModelInfo) -> Assembled:
    """Merge chunks into catalog (position) order; refuses a position given twice.

    Chunks of a full build are consecutive; an incremental build adds one chunk of reused rows whose
    positions interleave with the embedded ones."""
    parts = sorted(chunks, key=lambda c: c.index)
    positions = np.concatenate([c.positions for c in parts]) if parts else np.empty(0, np.int64)
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    if positions.size and np.any(np.diff(positions) <= 0):
        raise ValueError("embedded chunks overlap")
    d = model.embed_dim

    def cat(get, width: int) -> np.ndarray:
        arrays = [get(c) for c in parts]
        return np.concatenate(arrays).astype(np.float32)[order] if arrays else np.empty((0, width), np.float32)

    return Assembled(
        rows=[rows[int(p)] for p in positions],
        image=cat(lambda c: c.image, d),
        title=cat(lambda c: c.title, d),
        photo=cat(lambda c: c.photo, d),
        attributes={a: cat(lambda c, a=a: c.attributes[a], len(labels)) for a, labels in model.attributes.items()},
        rejects=[r for c in parts for r in c.rejects],
    )


def make_index(kind: IndexKind, n: int, dim: int) -> FaissIndex:
    if kind == "auto":
        kind = "flat" if n < FLAT_MAX_ROWS else "hnsw"
    if kind == "ivfpq":
        # k-means needs >= 1 training point per centroid (and 2**nbits for the PQ codebooks); aim for ~39.
        nbits = 8
        if n < 1 << nbits:
            raise ValueError(f"ivfpq needs at least {1 << nbits} indexed rows to train; this build has {n}: "
                             "use --index-kind flat")
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39, 65_536))
        m = next(m for m in (16, 8, 4, 2, 1) if dim % m == 0)
        cfg = FaissIndexConfig(kind="ivfpq", ivfpq=IVFPQConfig(nlist=nlist, nprobe=min(16, nlist), m=m, nbits=nbits))
    else:
        cfg = FaissIndexConfig(kind=kind)
    return FaissIndex(dim, cfg)


def product_of(row_id: int, s: SourceRow) -> Product:
    r = s.row
    return Product(row_id=row_id, product_id=r.product_id, title=r.title, image_path=r.image,
                   attributes=dict(r.attributes), popularity=0.0 if r.popularity is None else float(r.popularity),
                   images=tuple((im.path, im.role or "") for im in r.images), variant_of=r.variant_of)


def head_agreement(a: Assembled, model: ModelInfo) -> dict[str, float | None]:
    """Share of products whose catalog label is the attribute head's top prediction (None: no comparable rows)."""
    out: dict[str, float | None] = {}
    for name, labels in model.attributes.items():
        index = {lab: i for i, lab in enumerate(labels)}
        truth = np.array([index.get(s.row.attributes.get(name), -1) for s in a.rows], dtype=np.int64)
        known = truth >= 0
        if not known.any():
            out[name] = None
            continue
        pred = np.argmax(a.attributes[name], axis=1)
        out[name] = round(float(np.mean(pred[known] == truth[known])), 4)
    return out


@dataclass(frozen=True)
class WriterSettings:
    index_kind: IndexKind = "auto"
    # where the vectors go: a FAISS index inside the bundle, or a new Milvus collection per build
    # (index/milvus_versions.py: ledger, alias, prune); the token is LENSCOPE_MILVUS_TOKEN
    vector_backend: Literal["faiss", "milvus"] = "faiss"
    milvus_uri: str | None = None
    milvus_alias: str = "lenscope_serving"
    # calibration + weights + per-query-type policy chosen by index/ranking_setup.py; None: the
    # default weights, no calibration (raw cosines), every query type fused
    ranking: "RankingSetup | None" = None
    calibration_method: Literal["platt", "isotonic"] = "platt"
    seed: int = 0


def rejects_jsonl(rejects: Iterable[Reject]) -> bytes:
    return "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rejects).encode()


def write_bundle(index_root: Path, a: Assembled, all_rejects: Sequence[Reject], model: ModelInfo,
                 settings: WriterSettings, info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Build index + metadata + attachments and publish atomically; returns (bundle id, index_info)."""
    n, dim = len(a), model.embed_dim
    if n == 0:
        counts = dict(Counter(r.reason for r in all_rejects if not r.kept))
        first = next((f"; first: line {r.line}: {r.message}" for r in all_rejects if not r.kept), "")
        raise ValueError(f"no row was accepted: nothing to index ({sum(counts.values())} rejected: {counts}{first})")
    index = _build_vectors(index_root, a, model, settings)
    try:
        bundle_id, info = _publish(index_root, a, all_rejects, model, settings, info, index)
    finally:
        if settings.vector_backend == "milvus":
            index.close()
    return bundle_id, info


def _build_vectors(index_root: Path, a: Assembled, model: ModelInfo, settings: WriterSettings):  # noqa: ANN202
    """The image vectors in a FAISS index, or in this build's own Milvus collection with the catalog's
    attributes as filter fields (attribute names Milvus cannot hold are named in the log and skipped)."""
    n, dim = len(a), model.embed_dim
    if settings.vector_backend == "faiss":
        index = make_index(settings.index_kind, n, dim)
        index.add(np.arange(n, dtype=np.int64), a.image)
        return index
    from lenscope.client.index import milvus_versions  # noqa: PLC0415 - pymilvus only for Milvus builds
    from lenscope.client.vectors.milvus_index import MilvusIndex  # noqa: PLC0415

    if settings.milvus_uri is None:
        raise ValueError("the milvus backend needs --milvus-uri (http://host:19530, or a path ending in .db)")
    kinds = {"flat": "FLAT", "hnsw": "HNSW", "auto": "FLAT" if n < FLAT_MAX_ROWS else "HNSW"}
    if settings.index_kind not in kinds:
        raise ValueError(f"--index-kind {settings.index_kind} is a FAISS index; with Milvus use auto, flat or hnsw")
    names = sorted({k for s in a.rows for k in s.row.attributes})
    attributes, skipped = milvus_versions.filterable_attributes(names)
    if skipped:
        _log.warning("milvus_attributes_skipped", attributes=skipped,
                     reason="not valid Milvus field names; still facets, just not pushed down as filters")
    config = milvus_versions.build_config(index_root, model.model_hash, settings.milvus_uri, attributes,
                                          index_type=kinds[settings.index_kind])
    index = MilvusIndex(dim, config)
    try:
        columns = {name: [s.row.attributes.get(name) for s in a.rows] for name in attributes}
        index.add(np.arange(n, dtype=np.int64), a.image, attributes=columns)
    except BaseException:
        index.close()
        raise
    return index


def _publish(index_root: Path, a: Assembled, all_rejects: Sequence[Reject], model: ModelInfo,
             settings: WriterSettings, info: dict[str, Any], index: Any) -> tuple[str, dict[str, Any]]:
    n, dim = len(a), model.embed_dim

    ranking = settings.ranking
    cal = ranking.calibration if ranking else None
    fusion = ranking.fusion if ranking else FusionWeights()
    notes = dict((ranking.info.get("self_check") or {}).get("fit", {}).get("calibration_notes") or {}) if ranking else {}
    if ranking is not None and ranking.info.get("source") != "self-check":
        notes = {"source": ranking.info.get("note", "")}
    has_photos = bool(np.isfinite(a.photo).all(axis=1).any())
    info = {
        **info,
        "model_hash": model.model_hash,
        "embedding_dim": dim,
        "index_config": index.config.model_dump(mode="json"),
        "attachments": {
            "title_vectors": f"{TITLE_VECTORS}.npy", "photo_vectors": f"{PHOTO_VECTORS}.npy" if has_photos else None,
            "attribute_probabilities": {name: f"{ATTR_PROBS_PREFIX}{name}.npy" for name in model.attributes},
            "calibration": CALIBRATION if cal is not None else None, "fusion": FUSION, "rejects": REJECTS,
            "ranking_policy": RANKING_POLICY if ranking else None,
        },
        "attribute_labels": {k: list(v) for k, v in model.attributes.items()},
        "attribute_head_agreement": head_agreement(a, model),
        "calibration": {"method": settings.calibration_method, "seed": settings.seed, "notes": notes,
                        **gap_summary(cal)},
        "ranking": ranking.info if ranking else None,
    }
    title_cells = title_cell_layout(a.title, previous=a.title_cells_hint)
    if title_cells is not None:
        info["attachments"]["title_cells"] = [CENTROIDS_ATTACHMENT + ".npy", ASSIGNMENT_ATTACHMENT + ".npy"]
    store = BundleStore(index_root)
    with store.writer(model_manifest_hash=model.model_hash, index=index) as w:
        w.metadata.insert_many(product_of(i, s) for i, s in enumerate(a.rows))
        w.attach_array(TITLE_VECTORS, a.title)
        if title_cells is not None:
            w.attach_array(CENTROIDS_ATTACHMENT, title_cells[0])
            w.attach_array(ASSIGNMENT_ATTACHMENT, title_cells[1])
        if has_photos:
            w.attach_array(PHOTO_VECTORS, a.photo)
        for name, probs in a.attributes.items():
            w.attach_array(ATTR_PROBS_PREFIX + name, probs)
        if cal is not None:
            w.attach(CALIBRATION, (cal.model_dump_json(indent=2) + "\n").encode())
        w.attach(FUSION, (fusion.model_dump_json(indent=2) + "\n").encode())
        if ranking is not None:
            w.attach(RANKING_POLICY, (ranking.policy.model_dump_json(indent=2) + "\n").encode())
        w.attach(REJECTS, rejects_jsonl(all_rejects))
        if a.keys is not None:
            w.attach(ROW_KEYS, (json.dumps(a.keys) + "\n").encode())
        if a.file_digests is not None:
            w.attach(FILE_DIGESTS, a.file_digests)
        w.attach(INDEX_INFO, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    assert w.bundle_id is not None
    if settings.vector_backend == "milvus":  # published: now the alias follows (blue-green)
        from lenscope.client.index.milvus_versions import publish_alias  # noqa: PLC0415

        publish_alias(index, settings.milvus_alias)
    return w.bundle_id, info


# an incremental build keeps the previous centroids while at most this share of its rows is new
TITLE_CELLS_REUSE_MAX_NEW = 0.2


def title_cell_layout(titles: np.ndarray, min_rows: int | None = None, *,
                      previous: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The title CellIndex's layout (centroids, cell per row) for a catalog large enough that the engine
    searches titles through one, so a search pod loads it instead of running k-means at every start
    (15-70 s at 1M rows on 2 cores). None up to ``min_rows`` (default: the engine's scan threshold).

    ``previous`` (an incremental build: the served version's centroids and each row's cell there, -1
    for rows embedded anew) keeps those centroids and only assigns the new rows to their nearest one,
    while they are at most TITLE_CELLS_REUSE_MAX_NEW of the rows; past that the cells are fitted anew."""
    titles = np.asarray(titles, dtype=np.float32)
    min_rows = SCAN_MAX_ROWS if min_rows is None else min_rows
    if titles.ndim != 2 or titles.shape[0] <= min_rows:
        return None
    t = time.perf_counter()
    if previous is not None:
        centroids, cells = np.asarray(previous[0], dtype=np.float32), np.asarray(previous[1], dtype=np.int64)
        new = np.flatnonzero(cells < 0)
        if (centroids.ndim == 2 and centroids.shape[1] == titles.shape[1] and cells.shape == (titles.shape[0],)
                and new.size <= TITLE_CELLS_REUSE_MAX_NEW * titles.shape[0]):
            cells = cells.copy()
            if new.size:
                _, nearest = faiss.knn(np.ascontiguousarray(titles[new]), centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)
                cells[new] = nearest[:, 0]
            _log.info("title_cell_layout_reused", rows=titles.shape[0], cells=centroids.shape[0], assigned=int(new.size),
                      seconds=round(time.perf_counter() - t, 1))
            return centroids, cells.astype(np.int32)
    layout = CellIndex(titles).layout()
    _log.info("title_cell_layout_built", rows=titles.shape[0], cells=layout[0].shape[0],
              seconds=round(time.perf_counter() - t, 1))
    return layout

