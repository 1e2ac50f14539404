"""Embedded FAISS backend: flat (exact) for small catalogs, HNSW or IVF-PQ for large ones.

Why the raw float32 vectors are kept beside the FAISS structure: approximate structures (graph walk,
product quantisation) only nominate candidates; every candidate is re-scored exactly against its stored
vector, so returned scores are true cosines (calibration depends on them) and PQ's coarse distances only
affect which candidates are looked at, never the ranking among them. On disk the vectors are a plain
`.npy` opened as a read-only memory map, so a large catalog is paged in by the OS rather than copied.

FAISS labels are row positions (0..n-1) in the raw-vector matrix, not product ids: re-scoring then
needs no id lookup, and the position -> product id mapping is one int64 array (`ids.npy`). That is what
an `IndexIDMap` would store, minus the second lookup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Self

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lenscope.client.vectors.contract import (
    IndexFormatError,
    SearchResult,
    VectorIndex,
    as_ids,
    as_unit_vectors,
    check_k,
    empty_result,
)
from lenscope.client.vectors.rescoring import GATHER_BYTES, keep_best, rescore_positions

SAVE_FORMAT_VERSION = 1
STATE_FILE = "faiss_index.json"
VECTORS_FILE = "vectors.npy"
IDS_FILE = "ids.npy"
FAISS_FILE = "index.faiss"
# Default re-score factor of IVF-PQ indexes, from the recall sweep (see FaissIndexConfig).
IVFPQ_RESCORE_FACTOR = 16


class HNSWConfig(BaseModel):
    """Graph index (faiss IndexHNSWFlat). Memory ~ (4*dim + 8*m) bytes per vector on top of the raw copy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    m: int = Field(32, ge=4, le=256, description="graph degree (faiss M)")
    ef_construction: int = Field(200, ge=8, le=4096, description="build-time beam width")
    ef_search: int = Field(64, ge=1, le=32768, description="query-time beam width (raised to k' if smaller)")


class IVFPQConfig(BaseModel):
    """Inverted lists over product-quantised codes (faiss IndexIVFPQ): m*nbits/8 bytes per vector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nlist: int = Field(1024, ge=1, le=1 << 20, description="number of coarse cells")
    nprobe: int = Field(16, ge=1, description="cells visited per query")
    m: int = Field(16, ge=1, le=1024, description="sub-quantisers; must divide the embedding dim")
    nbits: int = Field(8, ge=4, le=12, description="bits per sub-quantiser code")
    train_size: int | None = Field(
        None, ge=1, description="cap on training vectors sampled from the first add(); default 64 per centroid"
    )

    @model_validator(mode="after")
    def _nprobe_within_nlist(self) -> Self:
        if self.nprobe > self.nlist:
            raise ValueError(f"nprobe ({self.nprobe}) must be <= nlist ({self.nlist})")
        return self

    @property
    def min_train(self) -> int:
        """k-means needs at least one point per centroid, for both the coarse and the PQ codebooks."""
        return max(self.nlist, 1 << self.nbits)


class FaissIndexConfig(BaseModel):
    """Everything needed to rebuild the same index; search-time knobs can be changed after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["faiss"] = "faiss"
    kind: Literal["flat", "hnsw", "ivfpq"] = "flat"
    hnsw: HNSWConfig = HNSWConfig()
    ivfpq: IVFPQConfig = IVFPQConfig()
    rescore_factor: int = Field(
        4, ge=1, le=1000,
        description="ANN fetches k * rescore_factor candidates, re-scored exactly; default 4, and "
        f"{IVFPQ_RESCORE_FACTOR} for ivfpq",
    )
    filtered_exact_max: int = Field(
        50_000,
        ge=0,
        description="a candidate_ids set this small is brute-forced exactly instead of ANN with a selector",
    )

    @model_validator(mode="before")
    @classmethod
    def _rescore_default_by_kind(cls, data: object) -> object:
        # PQ's coarse distances nominate candidates; how many get an exact re-score decides recall.
        # Measured (benchmarks/reports/ann.md, 1M x 512, 64-byte codes): re-score 4x caps recall@10 at
        # ~0.89, 16x reaches 0.995 for ~25 % fewer QPS. HNSW and flat distances are exact: 4x stays.
        if isinstance(data, dict) and data.get("kind") == "ivfpq" and "rescore_factor" not in data:
            return {**data, "rescore_factor": IVFPQ_RESCORE_FACTOR}
        return data

    def check_dim(self, dim: int) -> None:
        """Checks that need the embedding dim, which the config alone does not know."""
        if self.kind == "ivfpq" and dim % self.ivfpq.m:
            raise ValueError(f"ivfpq.m ({self.ivfpq.m}) must divide the embedding dim ({dim})")


class _SavedState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    dim: int = Field(ge=1)
    ntotal: int = Field(ge=0)
    config: FaissIndexConfig


def _new_faiss_index(dim: int, config: FaissIndexConfig) -> faiss.Index | None:
    if config.kind == "flat":
        return None  # brute force runs directly over the raw vectors: no second copy
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw.ef_construction
        return index
    p = config.ivfpq
    return faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, p.nlist, p.m, p.nbits, faiss.METRIC_INNER_PRODUCT)


class FaissIndex(VectorIndex):
    """`VectorIndex` over FAISS with exact re-scoring. Not safe for concurrent add(); search is."""

    backend = "faiss"

    def __init__(self, dim: int, config: FaissIndexConfig | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer; got {dim!r}")
        self._config = config or FaissIndexConfig()
        self._config.check_dim(dim)
        self._dim = dim
        self._faiss = _new_faiss_index(dim, self._config)
        self._buf = np.empty((0, dim), dtype=np.float32)  # grows by doubling; rows [0, n) are live
        self._ids = np.empty(0, dtype=np.int64)
        self._n = 0
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, their positions)

    # -- properties --------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def config(self) -> FaissIndexConfig:
        return self._config

    @property
    def _vectors(self) -> np.ndarray:
        return self._buf[: self._n]

    def set_search_params(
        self,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        rescore_factor: int | None = None,
        filtered_exact_max: int | None = None,
    ) -> None:
        """Change query-time knobs (validated like the config); no rebuild needed."""
        data = self._config.model_dump()
        if filtered_exact_max is not None:
            data["filtered_exact_max"] = filtered_exact_max
        if ef_search is not None:
            data["hnsw"]["ef_search"] = ef_search
        if nprobe is not None:
            data["ivfpq"]["nprobe"] = nprobe
        if rescore_factor is not None:
            data["rescore_factor"] = rescore_factor
        self._config = FaissIndexConfig.model_validate(data)

    # -- writing -----------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = as_unit_vectors(vectors, self._dim, what="vectors")
        ids = as_ids(ids, vectors.shape[0])
        if ids.size == 0:
            return
        _, found = self._positions(ids)
        if found.any():
            raise ValueError(f"ids already in the index: {ids[found][:5].tolist()}")
        if self._faiss is not None:
            if not self._faiss.is_trained:
                self._train(vectors)
            self._faiss.add(vectors)  # labels are positions n..n+N-1
            if self._faiss.ntotal != self._n + len(ids):
                raise RuntimeError("faiss index and raw vectors out of step")  # pragma: no cover
        self._append(ids, vectors)

    def _train(self, vectors: np.ndarray) -> None:
        p = self._config.ivfpq
        if vectors.shape[0] < p.min_train:
            raise ValueError(
                f"ivfpq trains on the first add(): it needs at least max(ivfpq.nlist, 2**ivfpq.nbits) = "
                f"{p.min_train} vectors, got {vectors.shape[0]}; add a larger first batch or lower nlist/nbits"
            )
        cap = p.train_size or 64 * p.min_train
        sample = vectors
        if vectors.shape[0] > cap:
            pick = np.random.default_rng(0).choice(vectors.shape[0], size=cap, replace=False)
            sample = vectors[np.sort(pick)]
        self._faiss.train(sample)

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        need = self._n + len(ids)
        if need > self._buf.shape[0] or not self._buf.flags.writeable:
            grown = np.empty((max(need, 2 * self._buf.shape[0], 1024), self._dim), dtype=np.float32)
            grown[: self._n] = self._vectors
            self._buf = grown
        self._buf[self._n : need] = vectors
        self._ids = np.concatenate([self._ids[: self._n], ids])
        self._n = need
        self._lookup = None

    # -- id <-> position -----------------------------------------------------------------------------

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of `ids` (garbage where not found) and the found mask."""
        if self._n == 0:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        if self._lookup is None:
            order = np.argsort(self._ids, kind="stable")
            self._lookup = (self._ids[order], order)
        sorted_ids, order = self._lookup
        slot = np.minimum(np.searchsorted(sorted_ids, ids), self._n - 1)
        return order[slot], sorted_ids[slot] == ids

    def stored_ids(self) -> np.ndarray:
        return self._ids[: self._n].copy()

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos, found = self._positions(ids)
        if not found.all():
            raise KeyError(f"ids not in the index: {ids[~found][:5].tolist()}")
        return np.array(self._vectors[pos], dtype=np.float32)

    # -- searching ---------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, candidate_ids: np.ndarray | None = None) -> SearchResult:
        queries = as_unit_vectors(queries, self._dim, what="queries")
        k = check_k(k)
        if self._n == 0 or queries.shape[0] == 0:
            return empty_result(queries.shape[0], k)
        positions = None if candidate_ids is None else self._candidate_positions(candidate_ids)
        if positions is not None and positions.size == 0:
            return empty_result(queries.shape[0], k)
        exact_is_cheap = positions is not None and positions.size <= self._config.filtered_exact_max
        if self._faiss is None or exact_is_cheap:
            return self._exact(queries, k, positions)
        fetch = min(k * self._config.rescore_factor, self._n if positions is None else positions.size)
        selector = None if positions is None else faiss.IDSelectorBatch(positions)
        if self._config.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self._config.hnsw.ef_search, fetch), sel=selector)
        else:
            params = faiss.SearchParametersIVF(nprobe=self._config.ivfpq.nprobe, sel=selector)
        _, cand = self._faiss.search(queries, fetch, params=params)
        return rescore_positions(self._vectors, self._ids, queries, cand, k)

    def exact_search(self, queries: np.ndarray, k: int, candidate_ids: np.ndarray | None = None) -> SearchResult:
        queries = as_unit_vectors(queries, self._dim, what="queries")
        k = check_k(k)
        if self._n == 0 or queries.shape[0] == 0:
            return empty_result(queries.shape[0], k)
        positions = None if candidate_ids is None else self._candidate_positions(candidate_ids)
        if positions is not None and positions.size == 0:
            return empty_result(queries.shape[0], k)
        return self._exact(queries, k, positions)

    def _candidate_positions(self, candidate_ids: np.ndarray) -> np.ndarray:
        ids = np.unique(np.asarray(candidate_ids, dtype=np.int64).reshape(-1))
        pos, found = self._positions(ids)
        return np.sort(pos[found])

    def _exact(self, queries: np.ndarray, k: int, positions: np.ndarray | None) -> SearchResult:
        """Brute force over all rows (positions None) or a subset, block by block, then re-score."""
        total = self._n if positions is None else positions.size
        block = max(1, GATHER_BYTES // (4 * self._dim))
        best_s = np.empty((queries.shape[0], 0), dtype=np.float32)
        best_p = np.empty((queries.shape[0], 0), dtype=np.int64)
        for start in range(0, total, block):
            stop = min(start + block, total)
            if positions is None:
                rows, base = np.arange(start, stop), self._vectors[start:stop]
            else:
                rows = positions[start:stop]
                base = np.ascontiguousarray(self._vectors[rows])
            scores, local = faiss.knn(queries, base, min(k, stop - start), metric=faiss.METRIC_INNER_PRODUCT)
            best_s = np.concatenate([best_s, scores], axis=1)
            best_p = np.concatenate([best_p, np.where(local >= 0, rows[np.maximum(local, 0)], -1)], axis=1)
            best_s, best_p = keep_best(best_s, best_p, k)
        return rescore_positions(self._vectors, self._ids, queries, best_p, k)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / VECTORS_FILE, np.ascontiguousarray(self._vectors))
        np.save(directory / IDS_FILE, self._ids[: self._n])
        if self._faiss is not None:
            faiss.write_index(self._faiss, str(directory / FAISS_FILE))
        state = _SavedState(format_version=SAVE_FORMAT_VERSION, dim=self._dim, ntotal=self._n, config=self._config)
        (directory / STATE_FILE).write_text(json.dumps(state.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, *, mmap: bool = True) -> Self:
        """Open a saved index; with `mmap` the raw vectors stay on disk (read-only, paged in on demand)."""
        directory = Path(directory)
        state_path = directory / STATE_FILE
        try:
            raw = json.loads(state_path.read_text())
        except (OSError, ValueError) as err:
            raise IndexFormatError(f"{state_path}: cannot read the index state: {err}") from err
        if raw.get("format_version") != SAVE_FORMAT_VERSION:
            raise IndexFormatError(
                f"{state_path}: format_version {raw.get('format_version')!r} is not the supported {SAVE_FORMAT_VERSION}"
            )
        try:
            state = _SavedState.model_validate(raw)
        except ValidationError as err:
            raise IndexFormatError(f"{state_path}: {err}") from err
        index = cls(state.dim, state.config)
        try:
            vectors = np.load(directory / VECTORS_FILE, mmap_mode="r" if mmap else None)
            ids = np.load(directory / IDS_FILE)
        except (OSError, ValueError) as err:
            raise IndexFormatError(f"{directory}: cannot read {VECTORS_FILE} / {IDS_FILE}: {err}") from err
        if vectors.dtype != np.float32 or vectors.shape != (state.ntotal, state.dim):
            raise IndexFormatError(
                f"{directory / VECTORS_FILE}: expected float32 {[state.ntotal, state.dim]} (ntotal, dim from "
                f"{STATE_FILE}); got {vectors.dtype} {list(vectors.shape)}"
            )
        if ids.dtype != np.int64 or ids.shape != (state.ntotal,):
            raise IndexFormatError(
                f"{directory / IDS_FILE}: expected int64 [{state.ntotal}]; got {ids.dtype} {list(ids.shape)}"
            )
        if state.config.kind != "flat":
            try:
                index._faiss = faiss.read_index(str(directory / FAISS_FILE))
            except RuntimeError as err:
                raise IndexFormatError(f"{directory / FAISS_FILE}: {err}") from err
            if index._faiss.ntotal != state.ntotal or index._faiss.d != state.dim:
                raise IndexFormatError(
                    f"{directory / FAISS_FILE}: holds {index._faiss.ntotal} x {index._faiss.d}, "
                    f"but {STATE_FILE} says {state.ntotal} x {state.dim}"
                )
        index._buf, index._ids, index._n = vectors, ids, state.ntotal
        return index
