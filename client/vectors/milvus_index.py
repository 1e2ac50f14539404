"""Milvus backend: the `VectorIndex` contract on a Milvus collection, for catalogs that outgrow one machine.

The same `MilvusClient` API talks to a Milvus cluster (`uri="http://host:19530"`) and to Milvus Lite, an
in-process engine on a local directory (`uri="/path/catalog.db"`) used by the tests and for local
development. `docs/milvus.md` says how to run it against a cluster.

Why the data is *not* inside the bundle (the "external engine" mode): a FAISS bundle owns its vectors,
so checksumming every file under `<bundle>/index/` proves what will be served. A Milvus collection lives
in the engine: on a cluster the files are segments in object storage that Milvus compacts and rewrites
on its own schedule, and even Milvus Lite keeps its `.db` directory open and locked by one process (an
in-process server keyed by the absolute path), which does not survive the bundle writer renaming the
build directory, nor several serving replicas opening the same bundle. So `save()` writes one small JSON
file (connection info without secrets, collection name, dim, row count, and a *content fingerprint*:
the SHA-256 of a few evenly spaced stored rows); the bundle checksums that file, and `load()` re-checks
the collection against it (schema, exact row count, fingerprint). That plays the role the file
checksums play for FAISS: a dropped, refilled or foreign collection is refused, not served. Each build
writes a NEW collection (`bundle_collection_name`), so blue-green publishing still holds: the served
bundle's collection is never written to; deleting collections of collected bundles is the operator's
(or a GC job's) call, `MilvusIndex.drop()`.

Exact scores, as the contract demands: Milvus (HNSW, IVF_FLAT, AUTOINDEX, even FLAT) only nominates
candidates; each search asks for `k * rescore_factor` of them *with their stored float32 vectors*
(`output_fields=["vector"]`: Milvus fetches them by primary key, one round trip instead of two) and
re-scores them in numpy. Small candidate sets (`candidate_ids`) are fetched by id and brute-forced.

Filters are pushed down as Milvus boolean expressions over scalar VARCHAR attribute fields declared in
the config (`attributes`), built by `milvus_filter_expression`, which escapes every value so no value
can leave its string literal. Semantics match `facets.apply_filters`: OR within a facet, AND across
facets, a product without a value never matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lenscope.client.vectors.contract import (
    IndexFormatError,
    SearchResult,
    VectorIndex,
    as_ids,
    as_unit_vectors,
    check_k,
    empty_result,
)

log = logging.getLogger(__name__)

SAVE_FORMAT_VERSION = 1
STATE_FILE = "milvus_index.json"

ID_FIELD = "id"  # INT64 primary key = product row id
VECTOR_FIELD = "vector"  # FLOAT_VECTOR(dim), the stored float32 embedding
SEQ_FIELD = "seq"  # INT64 insertion ordinal 0..n-1: stored_ids() order and the fingerprint sample
RESERVED_FIELDS = frozenset({ID_FIELD, VECTOR_FIELD, SEQ_FIELD})
# Words of the Milvus expression grammar; a field so named would make filters ambiguous.
EXPRESSION_KEYWORDS = frozenset({"and", "or", "not", "in", "like", "is", "null", "exists", "true", "false"})
ATTRIBUTE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"  # = facets.FACET_NAME_PATTERN
COLLECTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"  # Milvus' own rule

MAX_TOPK = 16_384  # Milvus' limit on `limit` per search
MAX_EF = 32_768  # Milvus' limit on HNSW ef
FINGERPRINT_ROWS = 16
_ID_CHUNK = 4096  # ids per `id in [...]` query
_SCAN_BATCH = 2048  # rows per scan page (a `seq` range)
_GATHER_BYTES = 64 << 20


class MilvusConnectionError(ConnectionError):
    """Milvus could not be reached or refused the credentials; names the uri and the token variable."""


# -- filter expressions ----------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def milvus_string_literal(value: str) -> str:
    """`value` as a double-quoted Milvus expression string literal.

    Backslash and double quote are escaped (so nothing can close the literal early), as are newline,
    carriage return and tab; other control characters have no escape both Milvus and Milvus Lite
    accept, and never occur in catalog attributes, so they are refused.
    """
    if not isinstance(value, str):
        raise TypeError(f"filter values must be strings; got {type(value).__name__} {value!r}")
    if bad := _FORBIDDEN_CHARS.search(value):
        raise ValueError(f"filter value {value!r} contains control character {bad.group()!r}")
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def check_attribute_name(name: object) -> str:
    if not isinstance(name, str) or not re.fullmatch(ATTRIBUTE_NAME_PATTERN, name):
        raise ValueError(f"attribute name {name!r} must match {ATTRIBUTE_NAME_PATTERN}")
    if name in RESERVED_FIELDS or name in EXPRESSION_KEYWORDS:
        raise ValueError(
            f"attribute name {name!r} is reserved (fields {sorted(RESERVED_FIELDS)}, expression keywords "
            f"{sorted(EXPRESSION_KEYWORDS)})"
        )
    return name


def milvus_filter_expression(filters: Mapping[str, Collection[str]] | None) -> str:
    """`{"category": {"dress"}, "color": {"red", "blue"}}` -> `category in ["dress"] and color in ["blue", "red"]`.

    Facets are AND-ed, values within a facet OR-ed (an `in` list), output is deterministic (sorted).
    Names must be plain attribute names (checked, never escaped: they are identifiers, not data);
    values are escaped by `milvus_string_literal`. No filters -> "" (Milvus: no filtering). A facet
    with no values is refused rather than silently matching nothing, as `facets.FilterSpec` does.
    """
    if not filters:
        return ""
    clauses = []
    for name in sorted(filters):
        check_attribute_name(name)
        values = filters[name]
        if isinstance(values, str):
            raise TypeError(f"filter {name!r}: give a set of values, not the string {values!r}")
        if not values:
            raise ValueError(f"filter {name!r} needs at least one value")
        literals = ", ".join(milvus_string_literal(v) for v in sorted(values))
        clauses.append(f"{name} in [{literals}]")
    return " and ".join(clauses)


def _ids_expression(ids: np.ndarray) -> str:
    return f"{ID_FIELD} in [{', '.join(str(int(i)) for i in ids)}]"


def _and(*parts: str) -> str:
    parts = tuple(p for p in parts if p)
    return " and ".join(f"({p})" for p in parts) if len(parts) > 1 else (parts[0] if parts else "")


# -- config ----------------------------------------------------------------------------------------


class MilvusHNSWParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    m: int = Field(16, ge=2, le=2048, description="graph degree (Milvus M)")
    ef_construction: int = Field(200, ge=1, le=65_536, description="build-time beam width (efConstruction)")
    ef: int = Field(64, ge=1, le=32_768, description="query-time beam width, raised to the candidate count")


class MilvusIVFParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    nlist: int = Field(1024, ge=1, le=65_536, description="coarse cells per segment")
    nprobe: int = Field(16, ge=1, le=65_536, description="cells visited per query")

    @model_validator(mode="after")
    def _nprobe_le_nlist(self) -> Self:
        if self.nprobe > self.nlist:
            raise ValueError(f"nprobe ({self.nprobe}) must be <= nlist ({self.nlist})")
        return self


def is_lite_uri(uri: str) -> bool:
    """A local Milvus Lite database (a `.db` directory) rather than a server address."""
    return uri.endswith(".db")


class MilvusIndexConfig(BaseModel):
    """Where the collection lives and how it is indexed and searched. Stored in the bundle: no secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["milvus"] = "milvus"
    uri: str = Field(
        "./lenscope-milvus.db",
        description="http(s)://host:19530 for a Milvus server, or a path ending in .db for Milvus Lite "
        "(made absolute when the config is created)",
        validate_default=True,
    )
    token_env: str | None = Field(
        "MILVUS_TOKEN",
        description="name of the environment variable holding the token ('user:password' or an API key); "
        "read when connecting, never stored. Unset or empty variable = no authentication.",
    )
    db_name: str = Field("", description="Milvus database ('' = the server's default)")
    collection: str | None = Field(
        None, description="collection name; None = a fresh generated name (every build writes a new one)"
    )
    index_type: Literal["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"] = "HNSW"
    hnsw: MilvusHNSWParams = MilvusHNSWParams()
    ivf: MilvusIVFParams = MilvusIVFParams()
    metric: Literal["IP"] = Field("IP", description="inner product = cosine on the unit vectors")
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = Field(
        "Strong", description="passed on every search/query; published collections are immutable, so "
        "'Bounded' is safe for serving and cheaper on a cluster"
    )
    attributes: tuple[str, ...] = Field((), description="scalar VARCHAR fields stored per row for filter push-down")
    attribute_max_length: int = Field(256, ge=1, le=65_535, description="max UTF-8 bytes of an attribute value")
    scalar_indexes: bool = Field(
        True, description="INVERTED indexes on `seq` (paged scans) and the attributes (filter push-down)"
    )
    rescore_factor: int = Field(4, ge=1, le=1000, description="ANN fetches k * rescore_factor candidates")
    filtered_exact_max: int = Field(
        2048,
        ge=0,
        le=MAX_TOPK,
        description="a restriction (candidate_ids and/or filters) matching at most this many rows is fetched "
        "and brute-forced exactly (capped by Milvus' 16,384-row query window)",
    )
    insert_batch: int = Field(5000, ge=1, le=100_000, description="rows per insert call")
    timeout_s: float | None = Field(60.0, gt=0, description="per-RPC timeout")
    index_build_timeout_s: float = Field(3600.0, gt=0, description="how long save() waits for the index build")

    @field_validator("uri")
    @classmethod
    def _uri_ok(cls, uri: str) -> str:
        if is_lite_uri(uri):
            return str(Path(uri).expanduser().resolve())
        parsed = urlparse(uri)
        if parsed.scheme not in ("http", "https", "tcp") or not parsed.hostname:
            raise ValueError(f"uri {uri!r} must be http(s)://host:port (a Milvus server) or a path ending in .db")
        if parsed.username or parsed.password:
            raise ValueError(
                "uri must not carry credentials (it is written to the bundle): put them in the environment "
                "variable named by token_env"
            )
        return uri

    @field_validator("token_env")
    @classmethod
    def _token_env_ok(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"token_env {name!r} must be an environment variable NAME (the token is never stored)")
        return name

    @field_validator("collection")
    @classmethod
    def _collection_ok(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(COLLECTION_NAME_PATTERN, name):
            raise ValueError(f"collection {name!r} must match {COLLECTION_NAME_PATTERN}")
        return name

    @field_validator("attributes")
    @classmethod
    def _attributes_ok(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            check_attribute_name(name)
        if len(set(names)) != len(names):
            raise ValueError(f"attributes contain duplicates: {list(names)}")
        return names

    @property
    def is_lite(self) -> bool:
        return is_lite_uri(self.uri)

    def index_params(self) -> dict[str, Any]:
        if self.index_type == "HNSW":
            return {"M": self.hnsw.m, "efConstruction": self.hnsw.ef_construction}
        if self.index_type == "IVF_FLAT":
            return {"nlist": self.ivf.nlist}
        return {}

    def search_params(self, limit: int, fraction: float = 1.0) -> dict[str, Any]:
        """Per-search params; `fraction` (0, 1] of rows matching a pushed-down filter widens the search."""
        params: dict[str, Any] = {}
        widen = 1.0 / min(max(fraction, 1e-9), 1.0)
        if self.index_type == "HNSW":
            params = {"ef": min(math.ceil(max(self.hnsw.ef, limit) * widen), MAX_EF)}
        elif self.index_type == "IVF_FLAT":
            params = {"nprobe": min(math.ceil(self.ivf.nprobe * widen), self.ivf.nlist)}
        return {"metric_type": self.metric, "params": params}


def bundle_collection_name(model_manifest_hash: str, prefix: str = "lenscope") -> str:
    """A fresh collection name per build: prefix, model hash, UTC time, random suffix.

    Readable in `list_collections` (which model, when) and unique, so a build never writes into the
    collection a published bundle serves.
    """
    model = re.sub(r"[^A-Za-z0-9]", "", model_manifest_hash)[:16] or "model"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}_{model}_{stamp}_{secrets.token_hex(3)}"


class _Fingerprint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seqs: list[int]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _SavedState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    dim: int = Field(ge=1)
    ntotal: int = Field(ge=0)
    config: MilvusIndexConfig
    fingerprint: _Fingerprint


# -- connections -----------------------------------------------------------------------------------

# Milvus Lite runs one in-process server per .db path (keyed by absolute path) that keeps the directory
# open and locked; it is released when the last MilvusIndex of this process using that path closes.
_lite_users: Counter[str] = Counter()
_lite_lock = threading.Lock()


def _connect(config: MilvusIndexConfig) -> Any:
    from pymilvus import MilvusClient  # noqa: PLC0415 - only deployments using this backend need pymilvus
    from pymilvus.exceptions import MilvusException  # noqa: PLC0415

    token = os.environ.get(config.token_env, "") if config.token_env else ""
    if config.is_lite:
        Path(config.uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = MilvusClient(uri=config.uri, token=token, db_name=config.db_name, timeout=config.timeout_s)
    except MilvusException as err:
        where = f"token from ${config.token_env}" if token else "no token"
        raise MilvusConnectionError(f"cannot connect to Milvus at {config.uri} ({where}): {err.message}") from err
    if config.is_lite:
        with _lite_lock:
            _lite_users[config.uri] += 1
    return client


def _disconnect(client: Any, config: MilvusIndexConfig) -> None:
    client.close()
    if not config.is_lite:
        return
    with _lite_lock:
        _lite_users[config.uri] -= 1
        last = _lite_users[config.uri] <= 0
        if last:
            del _lite_users[config.uri]
    if last:
        from milvus_lite.server_manager import server_manager_instance  # noqa: PLC0415

        server_manager_instance.release_server(config.uri)


# -- the index -------------------------------------------------------------------------------------


class MilvusIndex(VectorIndex):
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
        self._client = _connect(config)
        try:
            self._create_collection(drop_existing)
        except BaseException:
            self.close()
            raise

    @classmethod
    def _attach(cls, dim: int, config: MilvusIndexConfig, ntotal: int) -> Self:
        index = cls.__new__(cls)
        index._dim, index._config, index._n = dim, config, ntotal
        index._client = _connect(config)
        return index

    # -- properties --------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def config(self) -> MilvusIndexConfig:
        return self._config

    @property
    def collection(self) -> str:
        assert self._config.collection is not None
        return self._config.collection

    @property
    def client(self) -> Any:
        """The underlying `pymilvus.MilvusClient` (for operations this class does not wrap)."""
        return self._client

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

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            _disconnect(client, self._config)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop(self) -> None:
        """Delete the collection and its data (e.g. for a bundle version that was garbage-collected)."""
        self._live.drop_collection(self.collection, timeout=self._config.timeout_s)
        log.info("dropped Milvus collection %s at %s", self.collection, self._config.uri)
        self._n = 0

    @property
    def _live(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"MilvusIndex for collection {self.collection!r} is closed")
        return self._client

    # -- schema ------------------------------------------------------------------------------------

    def _create_collection(self, drop_existing: bool) -> None:
        from pymilvus import DataType, MilvusClient  # noqa: PLC0415

        client, cfg, name = self._live, self._config, self.collection
        if client.has_collection(name, timeout=cfg.timeout_s):
            if not drop_existing:
                raise ValueError(
                    f"collection {name!r} already exists at {cfg.uri}: every build writes a new collection "
                    "(the served one must not change under it); pick another name, or pass drop_existing=True, "
                    "or re-attach to a saved index with MilvusIndex.load()"
                )
            client.drop_collection(name, timeout=cfg.timeout_s)
            log.info("dropped existing Milvus collection %s at %s", name, cfg.uri)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self._dim)
        schema.add_field(SEQ_FIELD, DataType.INT64)
        for attr in cfg.attributes:
            schema.add_field(attr, DataType.VARCHAR, max_length=cfg.attribute_max_length, nullable=True)
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name=VECTOR_FIELD, index_type=cfg.index_type, metric_type=cfg.metric, params=cfg.index_params()
        )
        if cfg.scalar_indexes:
            for field in (SEQ_FIELD, *cfg.attributes):
                index_params.add_index(field_name=field, index_type="INVERTED")
        client.create_collection(name, schema=schema, consistency_level=cfg.consistency_level, timeout=cfg.timeout_s)
        # sync=False: pymilvus would otherwise poll each index with a fixed 0.5 s sleep (2 s for four
        # indexes on an empty collection); save() waits once for the vector index instead.
        client.create_index(name, index_params, timeout=cfg.timeout_s, sync=False)
        client.load_collection(name, timeout=cfg.timeout_s)
        log.info("created Milvus collection %s at %s (%s, dim %d)", name, cfg.uri, cfg.index_type, self._dim)

    def _check_schema(self, where: str) -> None:
        """The collection's fields match dim and attributes; IndexFormatError naming the difference."""
        desc = self._live.describe_collection(self.collection, timeout=self._config.timeout_s)
        fields = {f["name"]: f for f in desc["fields"]}
        vector = fields.get(VECTOR_FIELD)
        dim = None if vector is None else int(vector.get("params", {}).get("dim", -1))
        if dim != self._dim:
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} has vector dim {dim}, expected {self._dim}"
            )
        expected = RESERVED_FIELDS | set(self._config.attributes)
        if set(fields) != expected:
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} has fields {sorted(fields)}, expected {sorted(expected)}"
            )

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
        columns = self._attribute_columns(attributes or {}, ids.size)
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

    def _attribute_columns(self, attributes: Mapping[str, Sequence[str | None]], n: int) -> dict[str, list]:
        declared = self._config.attributes
        unknown = sorted(set(attributes) - set(declared))
        if unknown:
            raise ValueError(
                f"attributes {unknown} are not declared in the config (attributes={list(declared)}); "
                "the collection schema is fixed when it is created"
            )
        limit = self._config.attribute_max_length
        columns: dict[str, list] = {}
        for name in declared:
            values = list(attributes.get(name, [None] * n))
            if len(values) != n:
                raise ValueError(f"attribute {name!r} has {len(values)} values for {n} rows")
            for row, value in enumerate(values):
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise ValueError(f"attribute {name!r} row {row}: values must be str or None; got {value!r}")
                if len(value.encode()) > limit:
                    raise ValueError(
                        f"attribute {name!r} row {row}: value longer than attribute_max_length ({limit} bytes)"
                    )
            columns[name] = values
        return columns

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        found = []
        for rows in self._query_ids(np.unique(ids), [ID_FIELD]):
            found.extend(r[ID_FIELD] for r in rows)
        return np.sort(np.asarray(found, dtype=np.int64))

    # -- reading -----------------------------------------------------------------------------------

    def _query(self, expr: str, fields: list[str], limit: int | None = None) -> list[dict]:
        kwargs: dict[str, Any] = {} if limit is None else {"limit": limit}
        return self._live.query(
            self.collection,
            filter=expr,
            output_fields=fields,
            timeout=self._config.timeout_s,
            consistency_level=self._config.consistency_level,
            **kwargs,
        )

    def _query_ids(self, ids: np.ndarray, fields: list[str], extra: str = "") -> Iterator[list[dict]]:
        for start in range(0, ids.size, _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            yield self._query(_and(_ids_expression(chunk), extra), fields)

    def _scan(self, fields: list[str], expr: str = "") -> Iterator[list[dict]]:
        """Every row matching `expr`, page by page over `seq` ranges.

        Rather than query_iterator: the pages are deterministic, each is bounded (no 16k result cap),
        the same code runs on Milvus Lite (whose iterator falls back to client-side timestamps, logging
        errors) and a cluster, and the INVERTED index on `seq` makes each page an index range lookup.
        """
        for start in range(0, self._n, _SCAN_BATCH):
            page = f"{SEQ_FIELD} >= {start} and {SEQ_FIELD} < {start + _SCAN_BATCH}"
            yield self._query(_and(page, expr), fields)

    def _fetch(self, ids: np.ndarray, extra: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(ids, [n, dim] vectors) of the given ids that exist (and match `extra`), in no set order."""
        got_ids: list[int] = []
        got_vecs: list[Any] = []
        for rows in self._query_ids(ids, [ID_FIELD, VECTOR_FIELD], extra):
            for r in rows:
                got_ids.append(r[ID_FIELD])
                got_vecs.append(r[VECTOR_FIELD])
        return self._as_arrays(got_ids, got_vecs)

    def _rows_as_arrays(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        return self._as_arrays([r[ID_FIELD] for r in rows], [r[VECTOR_FIELD] for r in rows])

    def _as_arrays(self, ids: list[int], vectors: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        if not ids:
            return np.empty(0, dtype=np.int64), np.empty((0, self._dim), dtype=np.float32)
        return np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32).reshape(len(ids), self._dim)

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

    def count(self, expr: str = "") -> int:
        """Rows in the collection (matching a Milvus expression), asked of Milvus; ntotal is this
        object's own count."""
        rows = self._query(expr, ["count(*)"])
        return int(rows[0]["count(*)"])

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
                return self._exact_over(queries, k, *self._fetch(candidates, expr))
        if expr:
            matches = self.count(_and(_ids_expression(candidates), expr) if candidates is not None else expr)
            if matches == 0:
                return empty_result(queries.shape[0], k)
            if matches <= self._config.filtered_exact_max:
                rows = self._query(expr, [ID_FIELD, VECTOR_FIELD], limit=matches) if candidates is None else None
                found = self._fetch(candidates, expr) if rows is None else self._rows_as_arrays(rows)
                return self._exact_over(queries, k, *found)
        if candidates is not None:
            expr = _and(_ids_expression(candidates), expr)
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
            return self._exact_over(queries, k, *self._fetch(candidates, expr))
        best = empty_result(queries.shape[0], k)
        for rows in self._scan([ID_FIELD, VECTOR_FIELD], expr):
            best = _merge(best, self._exact_over(queries, k, *self._rows_as_arrays(rows)), k)
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

    def _exact_over(self, queries: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray) -> SearchResult:
        """Top-k of queries against one shared candidate matrix: chosen block by block with a matrix
        product, then scored by `_exact_scores` like every other path."""
        num_q = queries.shape[0]
        best = empty_result(num_q, k)  # .ids hold positions into `vectors` until the end
        block = max(1, _GATHER_BYTES // (4 * max(num_q, 1)))
        for start in range(0, ids.size, block):
            scores = queries @ vectors[start : start + block].T  # [Q, b]
            pos = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
            best = _merge(best, _top_k(scores, pos, k), k)
        if ids.size == 0:
            return best
        valid = best.ids >= 0
        pos = np.where(valid, best.ids, 0)
        scores = _exact_scores(vectors[pos], queries)
        return _top_k(scores, np.where(valid, ids[pos], -1), k)

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
        return _top_k(_exact_scores(gathered, queries), cand, k)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Flush the collection (durable, sealed) and write the JSON that `load` re-attaches with."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.flush()
        state = _SavedState(
            format_version=SAVE_FORMAT_VERSION,
            dim=self._dim,
            ntotal=self._n,
            config=self._config,
            fingerprint=self._fingerprint(),
        )
        (directory / STATE_FILE).write_text(json.dumps(state.model_dump(mode="json"), indent=2) + "\n")

    def flush(self) -> None:
        """Seal what was inserted and wait for its index: durable, and searched through the index rather
        than row by row (Milvus Lite: 5k unflushed rows answer batch-1 in ~35 ms, flushed in ~4 ms)."""
        self._live.flush(self.collection, timeout=self._config.timeout_s)
        self._wait_for_index()

    def _wait_for_index(self) -> None:
        """Block until Milvus has indexed every flushed row (a cluster builds indexes in the background;
        searches meanwhile are correct but brute-force the unindexed segments)."""
        deadline = time.monotonic() + self._config.index_build_timeout_s
        delay = 0.05
        while True:
            info = self._live.describe_index(self.collection, VECTOR_FIELD, timeout=self._config.timeout_s)
            state = str(info.get("state", ""))
            if state == "Failed":
                raise RuntimeError(f"Milvus failed to build the vector index of {self.collection!r}: {info}")
            if int(info.get("pending_index_rows", 0)) == 0 and state in ("Finished", ""):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"vector index of {self.collection!r} not built after "
                    f"{self._config.index_build_timeout_s} s: {info}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _fingerprint(self, seqs: list[int] | None = None) -> _Fingerprint:
        """SHA-256 over (seq, id, vector bytes) of evenly spaced rows: detects a collection whose content
        is not what was saved (refilled, or another build's) at the cost of one small query."""
        if seqs is None:
            seqs = sorted({int(s) for s in np.linspace(0, self._n - 1, num=min(FINGERPRINT_ROWS, self._n))})
        digest = hashlib.sha256()
        if seqs:
            rows = self._query(f"{SEQ_FIELD} in [{', '.join(map(str, seqs))}]", [ID_FIELD, SEQ_FIELD, VECTOR_FIELD])
            for r in sorted(rows, key=lambda r: (r[SEQ_FIELD], r[ID_FIELD])):
                digest.update(np.asarray([r[SEQ_FIELD], r[ID_FIELD]], dtype="<i8").tobytes())
                digest.update(np.asarray(r[VECTOR_FIELD], dtype="<f4").tobytes())
        return _Fingerprint(seqs=seqs, sha256=digest.hexdigest())

    @classmethod
    def load(cls, directory: Path, *, load_collection: bool = True) -> Self:
        """Re-attach to the saved collection and check it is the one that was saved.

        Raises IndexFormatError when the state file is unreadable or the collection is missing or differs
        (schema, row count, fingerprint), MilvusConnectionError when Milvus cannot be reached.
        """
        from pymilvus.exceptions import MilvusException  # noqa: PLC0415

        directory = Path(directory)
        state_path = directory / STATE_FILE
        try:
            raw = json.loads(state_path.read_text())
        except (OSError, ValueError) as err:
            raise IndexFormatError(f"{state_path}: cannot read the index state: {err}") from err
        if not isinstance(raw, dict) or raw.get("format_version") != SAVE_FORMAT_VERSION:
            version = raw.get("format_version") if isinstance(raw, dict) else None
            raise IndexFormatError(
                f"{state_path}: format_version {version!r} is not the supported {SAVE_FORMAT_VERSION}"
            )
        try:
            state = _SavedState.model_validate(raw)
        except ValidationError as err:
            raise IndexFormatError(f"{state_path}: {err}") from err
        if state.config.collection is None:
            raise IndexFormatError(f"{state_path}: config.collection is missing")
        index = cls._attach(state.dim, state.config, state.ntotal)
        try:
            index._verify_attached(state, str(state_path), load_collection)
        except MilvusException as err:
            index.close()
            raise IndexFormatError(f"{state_path}: collection {index.collection!r}: {err.message}") from err
        except BaseException:
            index.close()
            raise
        return index

    def _verify_attached(self, state: _SavedState, where: str, load_collection: bool) -> None:
        cfg = self._config
        if not self._live.has_collection(self.collection, timeout=cfg.timeout_s):
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} does not exist at {cfg.uri}"
                f"{' (database ' + cfg.db_name + ')' if cfg.db_name else ''}: dropped, or the wrong Milvus?"
            )
        self._check_schema(where)
        if load_collection:
            self._live.load_collection(self.collection, timeout=cfg.timeout_s)
        rows = self.count()
        if rows != state.ntotal:
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} holds {rows} rows, saved with {state.ntotal}"
            )
        actual = self._fingerprint(state.fingerprint.seqs)
        if actual.sha256 != state.fingerprint.sha256:
            raise IndexFormatError(
                f"{where}: collection {self.collection!r} content differs from what was saved (fingerprint of "
                f"{len(state.fingerprint.seqs)} sampled rows: {actual.sha256[:16]}... vs saved "
                f"{state.fingerprint.sha256[:16]}...)"
            )


# -- top-k helpers ---------------------------------------------------------------------------------


def _exact_scores(gathered: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[Q, W] float32 inner products of each query with its W gathered [Q, W, dim] vectors.

    Every returned score comes from here. einsum computes each dot product the same way wherever the
    pair sits in the batch (a BLAS matmul does not), so search, filtered search and exact_search give
    bit-identical scores for the same (query, product) pair.
    """
    return np.einsum("qwd,qd->qw", gathered, queries)


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> SearchResult:
    """Best k per row of ([Q, M] scores, [Q, M] ids; id -1 = padding), best first, padded to k."""
    num_q, width = scores.shape
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32, copy=False)
    take = min(k, width)
    if width > take:
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((ids, -scores), axis=1) if num_q else np.empty((0, take), dtype=np.int64)
    top_s = np.take_along_axis(scores, order, axis=1)
    top_i = np.take_along_axis(ids, order, axis=1)
    out = empty_result(num_q, k)
    hit = np.isfinite(top_s)
    out.scores[:, :take] = np.where(hit, top_s, -np.inf)
    out.ids[:, :take] = np.where(hit, top_i, -1)
    return out


def _merge(a: SearchResult, b: SearchResult, k: int) -> SearchResult:
    return _top_k(np.concatenate([a.scores, b.scores], axis=1), np.concatenate([a.ids, b.ids], axis=1), k)
