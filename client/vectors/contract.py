"""The contract every vector index backend implements, and the online recall monitor built on it.

Why one interface: the search service, the bundle writer and the tests only talk to `VectorIndex`, so a
catalog that outgrows one machine can move from the embedded FAISS backend to a distributed engine
(Milvus) without touching them. The contract is deliberately small and numpy-shaped:

* vectors are float32, L2-normalised, so the inner product IS the cosine similarity;
* ids are int64 product row ids (the metadata store's primary key), never backend-internal positions;
* every score a backend returns is the exact inner product against the stored float32 vector, whatever
  approximate structure found the candidate, so scores are comparable across backends and index kinds
  (calibration and fusion downstream depend on that);
* `exact_search` is the oracle (brute force over the stored vectors), used by the recall monitor and
  by the tests in the faiss-contrib style "approximate vs exact with a stated tolerance".
"""

from __future__ import annotations

import random
import threading
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import ClassVar, NamedTuple, Self

import numpy as np
from pydantic import BaseModel

# Embeddings come out of an fp32 (or fp16/int8-quantised) graph that L2-normalises them; anything
# further from unit length than this was not normalised at all.
NORM_TOLERANCE = 1e-3


class IndexFormatError(ValueError):
    """Saved index files that cannot be used together; the message names the file and the field."""


class SearchResult(NamedTuple):
    """Top-k per query, best first. Rows with fewer than k hits are padded with id -1, score -inf."""

    scores: np.ndarray  # [Q, k] float32, exact inner products (= cosine)
    ids: np.ndarray  # [Q, k] int64 product row ids


def empty_result(num_queries: int, k: int) -> SearchResult:
    """All-padding result, for an empty index or an empty candidate set."""
    return SearchResult(
        np.full((num_queries, k), -np.inf, dtype=np.float32), np.full((num_queries, k), -1, dtype=np.int64)
    )


def as_unit_vectors(vectors: object, dim: int, *, what: str) -> np.ndarray:
    """Validate a [N, dim] batch of L2-normalised vectors; return it float32 and C-contiguous.

    Refusing unnormalised input here is what keeps "inner product == cosine" true for every caller.
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have shape [N, {dim}] (embedding dim {dim}); got {list(arr.shape)}")
    if arr.dtype != np.float32:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{what} must be float32; got {arr.dtype}")
        arr = arr.astype(np.float32)
    arr = np.ascontiguousarray(arr)
    if arr.shape[0] == 0:
        return arr
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{what} row {row} contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"{what} row {row} has L2 norm {norms[row]:.4f} ({bad.size} rows off unit length): the index "
            "scores cosine similarity as an inner product, so L2-normalise embeddings first"
        )
    return arr


def as_ids(ids: object, count: int, *, what: str = "ids") -> np.ndarray:
    """Validate a 1-D batch of `count` unique non-negative int64 ids (-1 is reserved for padding)."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != count:
        raise ValueError(f"{what} must be a 1-D array of {count} ids (one per vector); got shape {list(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers (product row ids); got {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} must be >= 0 (-1 marks padding in results); got {int(arr.min())}")
    if np.unique(arr).size != arr.size:
        values, counts = np.unique(arr, return_counts=True)
        raise ValueError(f"{what} contain duplicates, e.g. {values[counts > 1][:5].tolist()}")
    return arr


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    return int(k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> np.ndarray:
    """Per-query recall: |approx ∩ exact| / |exact|, ignoring -1 padding. The faiss-contrib oracle metric.

    Queries whose exact answer is empty (no candidates) count as recall 1: nothing could be missed.
    """
    approx_ids = np.asarray(approx_ids)
    exact_ids = np.asarray(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(f"approx has {approx_ids.shape[0]} queries, exact has {exact_ids.shape[0]}")
    out = np.empty(exact_ids.shape[0], dtype=np.float64)
    for row, (approx, exact) in enumerate(zip(approx_ids, exact_ids, strict=True)):
        truth = exact[exact >= 0]
        out[row] = 1.0 if truth.size == 0 else np.isin(truth, approx[approx >= 0]).sum() / truth.size
    return out


class VectorIndex(ABC):
    """A searchable set of (product row id, unit vector) pairs with exact scores and persistence.

    Backends register under `backend` (the bundle manifest records it, and loads the matching class).
    """

    backend: ClassVar[str]

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    @abstractmethod
    def ntotal(self) -> int: ...

    @property
    @abstractmethod
    def config(self) -> BaseModel:
        """The backend's typed config; stored in the bundle manifest so a rebuild can reproduce it."""

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add [N] int64 ids (unique, not yet present) with their [N, dim] float32 unit vectors."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, candidate_ids: np.ndarray | None = None) -> SearchResult:
        """Approximate top-k by inner product, re-scored exactly. `candidate_ids` restricts the search
        to those ids (filter push-down; ids the index does not hold are ignored)."""

    @abstractmethod
    def exact_search(self, queries: np.ndarray, k: int, candidate_ids: np.ndarray | None = None) -> SearchResult:
        """Brute-force top-k over the stored vectors: the oracle for recall measurement."""

    @abstractmethod
    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored [N, dim] float32 vectors of `ids`, in order; KeyError names a missing id."""

    @abstractmethod
    def stored_ids(self) -> np.ndarray:
        """Every id the index holds (int64), in insertion order."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write everything needed by `load` into `directory` (which should be new or empty)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Self:
        """Open what `save` wrote; raises IndexFormatError when the files disagree with each other."""


class RecallMonitor:
    """Online recall@k of an index's `search` against its `exact_search`, on a sample of live queries.

    Why: ANN recall depends on the data, and catalogs and query mixes drift after the offline benchmark;
    sampling a small fraction of real traffic and re-running it exactly measures what users actually get.
    The cost is one brute-force search per sampled query, so keep `sample_rate` small in production (or
    call `observe` after the response has been sent). `value` is a plain zero-argument callable, e.g.
    `Gauge("lenscope_ann_recall_at_10", ...).set_function(monitor.value)`; this module stays free of
    any metrics library.
    """

    def __init__(
        self,
        index: VectorIndex,
        *,
        k: int = 10,
        sample_rate: float = 0.01,
        window: int = 1000,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1]; got {sample_rate}")
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window}")
        self.index = index
        self.k = check_k(k)
        self.sample_rate = sample_rate
        self._recalls: deque[float] = deque(maxlen=window)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.total_sampled = 0

    def observe(
        self, queries: np.ndarray, ann_ids: np.ndarray | SearchResult, candidate_ids: np.ndarray | None = None
    ) -> int:
        """Sample some of `queries`, compare their ANN ids with exact search; return how many were sampled.

        `ann_ids` is the [Q, >=1] id matrix (or the SearchResult) the index returned for `queries`, with
        the same `candidate_ids` restriction; recall is measured at min(k, its width).
        """
        ids = ann_ids.ids if isinstance(ann_ids, SearchResult) else np.asarray(ann_ids)
        queries = np.asarray(queries)
        if ids.ndim != 2 or queries.ndim != 2 or ids.shape[0] != queries.shape[0]:
            raise ValueError(
                f"ann_ids must be [Q, k] for the Q={queries.shape[0] if queries.ndim else '?'} queries; "
                f"got {list(ids.shape)}"
            )
        with self._lock:
            rows = [r for r in range(queries.shape[0]) if self._rng.random() < self.sample_rate]
        if not rows:
            return 0
        k = min(self.k, ids.shape[1])
        exact = self.index.exact_search(queries[rows], k, candidate_ids)
        recalls = recall_at_k(ids[rows, :k], exact.ids)
        with self._lock:
            self._recalls.extend(recalls.tolist())
            self.total_sampled += len(rows)
        return len(rows)

    @property
    def recall(self) -> float | None:
        """Mean recall@k over the rolling window; None before the first sample."""
        with self._lock:
            return float(np.mean(self._recalls)) if self._recalls else None

    @property
    def samples(self) -> int:
        """How many sampled queries the rolling window currently holds."""
        with self._lock:
            return len(self._recalls)

    def value(self) -> float:
        """`recall` for a gauge callback: NaN (Prometheus' "no data") before the first sample."""
        recall = self.recall
        return float("nan") if recall is None else recall

    def reset(self) -> None:
        """Forget the window, e.g. after a new index version is published."""
        with self._lock:
            self._recalls.clear()
