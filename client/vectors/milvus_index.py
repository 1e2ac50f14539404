"""Milvus backend: the `VectorIndex` contract on a Milvus collection, for catalogs that outgrow one machine.

The same `MilvusClient` API talks to a Milvus cluster (`uri="http://host:19530"`) and to Milvus Lite, an
in-process engine on a local directory (`uri="/path/catalog.db"`) used by the tests and for local
development. `docs/milvus.md` says how to run it against a cluster.

The collection lives in the engine, not in the bundle: `save()` writes one small JSON file that `load()`
re-checks the collection against (`milvus_state` says why). The backend's other modules: `milvus_config`
(settings, collection naming, connections), `milvus_schema` (fields, collection setup), `milvus_filters`
(filter expressions), `milvus_collection` (the connection's lifecycle and row reads this class inherits),
`rescoring` (the exact scores, shared with FAISS).

Exact scores, as the contract demands: Milvus (HNSW, IVF_FLAT, AUTOINDEX, even FLAT) only nominates
candidates; each search asks for `k * rescore_factor` of them *with their stored float32 vectors*
(`output_fields=["vector"]`: Milvus fetches them by primary key, one round trip instead of two) and
re-scores them in numpy. Small candidate sets (`candidate_ids`) are fetched by id and brute-forced.

Filters are pushed down as Milvus boolean expressions over scalar VARCHAR attribute fields declared in
the config (`attributes`), built by `milvus_filters.milvus_filter_expression`, which escapes every value.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from lenscope.client.vectors.contract import (
    IndexFormatError,
    SearchResult,
    VectorIndex,
    as_ids,
    as_unit_vectors,
    check_k,
    empty_result,
)
from lenscope.client.vectors.milvus_collection import MilvusCollection
from lenscope.client.vectors.milvus_config import MAX_TOPK, MilvusIndexConfig, bundle_collection_name, connect
from lenscope.client.vectors.milvus_filters import conjunction, ids_clause, milvus_filter_expression
from lenscope.client.vectors.milvus_schema import (
    ID_FIELD,
    SEQ_FIELD,
    VECTOR_FIELD,
    attribute_columns,
    check_schema,
    create_collection,
)
from lenscope.client.vectors.milvus_state import (
    SAVE_FORMAT_VERSION,
    STATE_FILE,
    SavedState,
    collection_fingerprint,
    read_state,
)
from lenscope.client.vectors.rescoring import exact_scores, exact_top_k, merge_top_k, top_k


class MilvusIndex(MilvusCollection, VectorIndex):
    """`VectorIndex` over one Milvus collection, with exact re-scoring and attribute filter push-down.

    `MilvusIndex(dim, config)` creates the collection (refusing an existing one unless
    `drop_existing`); `MilvusIndex.load(dir)` re-attaches to the collection a `save()` described.
    Close it (or use it as a context manager) to release the connection. Not safe for concurrent add();
    search is.
    """

    backend = "milvus"

    def __init__(self, dim: int, config: MilvusIndexConfig | None = None, *, drop_existing: bool = False) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer; got {dim!r}")
        config = config or MilvusIndexConfig()
        if config.collection is None:
            config = config.model_copy(update={"collection": bundle_collection_name("index")})
        self._dim = dim
        self._config = config
        self._n = 0
        self._client = connect(config)
        try:
            create_collection(self._live, config, self.collection, dim, drop_existing)
        except BaseException:
            self.close()
            raise

    @classmethod
    def _attach(cls, dim: int, config: MilvusIndexConfig, ntotal: int, token: str | None = None) -> Self:
        index = cls.__new__(cls)
        index._dim, index._config, index._n = dim, config, ntotal
        index._client = connect(config, token)
        return index

    def set_search_params(
        self,
        *,
        ef: int | None = None,
        nprobe: int | None = None,
        rescore_factor: int | None = None,
        filtered_exact_max: int | None = None,
        consistency_level: str | None = None,
    ) -> None:
        """Change query-time knobs (validated like the config); the collection is untouched."""
        data = self._config.model_dump()
        if ef is not None:
            data["hnsw"]["ef"] = ef
        if nprobe is not None:
            data["ivf"]["nprobe"] = nprobe
        for key, value in (
            ("rescore_factor", rescore_factor),
            ("filtered_exact_max", filtered_exact_max),
            ("consistency_level", consistency_level),
        ):
            if value is not None:
                data[key] = value
        self._config = MilvusIndexConfig.model_validate(data)

    # -- writing -----------------------------------------------------------------------------------

    def add(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        attributes: Mapping[str, Sequence[str | None]] | None = None,
    ) -> None:
        """Add rows; `attributes` maps declared attribute names to one value (or None) per row."""
        vectors = as_unit_vectors(vectors, self._dim, what="vectors")
        ids = as_ids(ids, vectors.shape[0])
        columns = attribute_columns(self._config, attributes or {}, ids.size)
        if ids.size == 0:
            return
        present = self._existing(ids)
        if present.size:
            raise ValueError(f"ids already in the index: {present[:5].tolist()}")
        cfg = self._config
        names = list(columns)
        for start in range(0, ids.size, cfg.insert_batch):
            stop = min(start + cfg.insert_batch, ids.size)
            rows = []
            for row in range(start, stop):
                record: dict[str, Any] = {
                    ID_FIELD: int(ids[row]),
                    VECTOR_FIELD: vectors[row],
                    SEQ_FIELD: self._n + row - start,
                }
                for name in names:
                    record[name] = columns[name][row]
                rows.append(record)
            result = self._live.insert(self.collection, rows, timeout=cfg.timeout_s)
            inserted = int(result["insert_count"])
            self._n += inserted
            if inserted != stop - start:  # pragma: no cover - Milvus reports errors by raising
                raise RuntimeError(f"Milvus inserted {inserted} of {stop - start} rows")

    # -- reading -----------------------------------------------------------------------------------

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        got_ids, got_vecs = self._fetch(np.unique(ids))
        order = np.argsort(got_ids)
        got_ids, got_vecs = got_ids[order], got_vecs[order]
        slot = np.minimum(np.searchsorted(got_ids, ids), max(got_ids.size - 1, 0))
        found = (got_ids[slot] == ids) if got_ids.size else np.zeros(ids.size, dtype=bool)
        if not found.all():
            raise KeyError(f"ids not in the index: {ids[~found][:5].tolist()}")
        return np.ascontiguousarray(got_vecs[slot], dtype=np.float32)

    def get_attributes(self, ids: np.ndarray) -> dict[str, list[str | None]]:
        """The stored attribute values of `ids`, one column per declared attribute, in order."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        names = list(self._config.attributes)
        by_id: dict[int, dict] = {}
        for rows in self._query_ids(np.unique(ids), [ID_FIELD, *names]):
            by_id.update((r[ID_FIELD], r) for r in rows)
        missing = [int(i) for i in ids if int(i) not in by_id]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        return {name: [by_id[int(i)].get(name) for i in ids] for name in names}

    def stored_ids(self) -> np.ndarray:
        ids: list[int] = []
        seqs: list[int] = []
        for rows in self._scan([ID_FIELD, SEQ_FIELD]):
            ids.extend(r[ID_FIELD] for r in rows)
            seqs.extend(r[SEQ_FIELD] for r in rows)
        ids_arr = np.asarray(ids, dtype=np.int64)
        return ids_arr[np.argsort(np.asarray(seqs, dtype=np.int64), kind="stable")]

    # -- searching ---------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        candidate_ids: np.ndarray | None = None,
        *,
        filters: Mapping[str, Collection[str]] | None = None,
    ) -> SearchResult:
        """ANN top-k re-scored exactly; `candidate_ids` and attribute `filters` are pushed down to Milvus.

        A restriction matching at most `filtered_exact_max` rows is answered exactly (those rows are
        fetched and brute-forced). A wider one runs the ANN with the expression, its beam (HNSW ef) or
        probes (IVF nprobe) scaled by 1 / the matching fraction: a graph walk that skips non-matching
        nodes otherwise fills its beam with them (Milvus Lite HNSW at 20% selectivity: recall@10 0.74
        with ef 64, >= 0.95 scaled). The fraction costs one count(*) when `filters` are given.
        """
        queries, k, expr, candidates = self._prepare(queries, k, candidate_ids, filters)
        if (candidates is not None and candidates.size == 0) or self._n == 0 or queries.shape[0] == 0:
            return empty_result(queries.shape[0], k)
        matches = self._n
        if candidates is not None:
            matches = min(candidates.size, self._n)
            if matches <= self._config.filtered_exact_max:
                return exact_top_k(queries, k, *self._fetch(candidates, expr))
        if expr:
            matches = self.count(conjunction(ids_clause(candidates), expr) if candidates is not None else expr)
            if matches == 0:
                return empty_result(queries.shape[0], k)
            if matches <= self._config.filtered_exact_max:
                rows = self._query(expr, [ID_FIELD, VECTOR_FIELD], limit=matches) if candidates is None else None
                found = self._fetch(candidates, expr) if rows is None else self._rows_as_arrays(rows)
                return exact_top_k(queries, k, *found)
        if candidates is not None:
            expr = conjunction(ids_clause(candidates), expr)
        limit = min(k * self._config.rescore_factor, MAX_TOPK, self._n)
        hits = self._live.search(
            self.collection,
            data=queries,
            limit=limit,
            filter=expr,
            output_fields=[VECTOR_FIELD],
            search_params=self._config.search_params(limit, matches / self._n),
            anns_field=VECTOR_FIELD,
            timeout=self._config.timeout_s,
            consistency_level=self._config.consistency_level,
        )
        return self._rescore(queries, hits, k)

    def exact_search(
        self,
        queries: np.ndarray,
        k: int,
        candidate_ids: np.ndarray | None = None,
        *,
        filters: Mapping[str, Collection[str]] | None = None,
    ) -> SearchResult:
        """Brute force in numpy over the stored vectors (all of them are streamed out of Milvus when
        `candidate_ids` is None: O(ntotal) transfer, so sample sparingly with the RecallMonitor)."""
        queries, k, expr, candidates = self._prepare(queries, k, candidate_ids, filters)
        if (candidates is not None and candidates.size == 0) or self._n == 0 or queries.shape[0] == 0:
            return empty_result(queries.shape[0], k)
        if candidates is not None:
            return exact_top_k(queries, k, *self._fetch(candidates, expr))
        best = empty_result(queries.shape[0], k)
        for rows in self._scan([ID_FIELD, VECTOR_FIELD], expr):
            best = merge_top_k(best, exact_top_k(queries, k, *self._rows_as_arrays(rows)), k)
        return best

    def _prepare(
        self,
        queries: np.ndarray,
        k: int,
        candidate_ids: np.ndarray | None,
        filters: Mapping[str, Collection[str]] | None,
    ) -> tuple[np.ndarray, int, str, np.ndarray | None]:
        queries = as_unit_vectors(queries, self._dim, what="queries")
        k = check_k(k)
        if filters:
            unknown = sorted(set(filters) - set(self._config.attributes))
            if unknown:
                raise ValueError(
                    f"unknown filter attributes {unknown}; this index stores {list(self._config.attributes)}"
                )
        expr = milvus_filter_expression(filters)
        candidates = None
        if candidate_ids is not None:
            candidates = np.unique(np.asarray(candidate_ids, dtype=np.int64).reshape(-1))
            candidates = candidates[candidates >= 0]  # ids the index cannot hold are ignored
        return queries, k, expr, candidates

    def _rescore(self, queries: np.ndarray, hits: Sequence[Sequence[Any]], k: int) -> SearchResult:
        """Exact inner products of each query with its own candidates' stored vectors; top-k of those."""
        width = max((len(h) for h in hits), default=0)
        num_q = queries.shape[0]
        if width == 0:
            return empty_result(num_q, k)
        cand = np.full((num_q, width), -1, dtype=np.int64)
        gathered = np.zeros((num_q, width, self._dim), dtype=np.float32)
        for row, row_hits in enumerate(hits):
            for col, hit in enumerate(row_hits):
                cand[row, col] = hit["id"]
                gathered[row, col] = hit["entity"][VECTOR_FIELD]
        return top_k(exact_scores(gathered, queries), cand, k)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Flush the collection (durable, sealed) and write the JSON that `load` re-attaches with."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.flush()
        state = SavedState(
            format_version=SAVE_FORMAT_VERSION,
            dim=self._dim,
            ntotal=self._n,
            config=self._config,
            fingerprint=collection_fingerprint(self._query, self._n),
        )
        (directory / STATE_FILE).write_text(json.dumps(state.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, *, load_collection: bool = True, uri: str | None = None,
             token: str | None = None) -> Self:
        """Re-attach to the saved collection and check it is the one that was saved.

        `uri` reads the collection from another address of the same Milvus than the build used (a
        service inside the cluster vs a build job outside it); `token` replaces `$token_env`.

        Raises IndexFormatError when the state file is unreadable or the collection is missing or differs
        (schema, row count, fingerprint), MilvusConnectionError when Milvus cannot be reached.
        """
        from pymilvus.exceptions import MilvusException  # noqa: PLC0415

        directory = Path(directory)
        state_path = directory / STATE_FILE
        state = read_state(state_path)
        config = state.config
        if uri is not None and uri != config.uri:
            config = MilvusIndexConfig.model_validate({**config.model_dump(), "uri": uri})
        index = cls._attach(state.dim, config, state.ntotal, token)
        try:
            index._verify_attached(state, str(state_path), load_collection)
        except MilvusException as err:
            index.close()
            raise IndexFormatError(f"{state_path}: collection {index.collection!r}: {err.message}") from err
        except BaseException:
            index.close()
            raise
        return index

    def _verify_attached(self, state: SavedState, where: str, load_collection: bool) -> None:
        cfg = self._config
        if not self._live.has_collection(self.collection, timeout=cfg.timeout_s):
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} does not exist at {cfg.uri}"
                f"{' (database ' + cfg.db_name + ')' if cfg.db_name else ''}: dropped, or the wrong Milvus?"
            )
        check_schema(self._live, cfg, self.collection, self._dim, where)
        if load_collection:
            self._live.load_collection(self.collection, timeout=cfg.timeout_s)
        rows = self.count()
        if rows != state.ntotal:
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} holds {rows} rows, saved with {state.ntotal}"
            )
        actual = collection_fingerprint(self._query, self._n, state.fingerprint.seqs)
        if actual.sha256 != state.fingerprint.sha256:
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} content differs from what was saved (fingerprint of "
                f"{len(state.fingerprint.seqs)} sampled rows: {actual.sha256[:16]}... vs saved "
                f"{state.fingerprint.sha256[:16]}...)"
            )

