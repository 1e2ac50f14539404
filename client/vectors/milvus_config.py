"""Milvus backend settings and connections: the pydantic configs stored in the bundle, the per-build
collection name, and connecting to / disconnecting from Milvus (server or Milvus Lite).

Separate from `milvus_index` because none of it touches a collection: a config is built and validated
without pymilvus (imported only when connecting), and the Milvus Lite reference count (one in-process
server per `.db` path) is shared by every index of the process.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lenscope.client.vectors.milvus_filters import check_attribute_name

COLLECTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"  # Milvus' own rule

MAX_TOPK = 16_384  # Milvus' limit on `limit` per search
MAX_EF = 32_768  # Milvus' limit on HNSW ef


class MilvusConnectionError(ConnectionError):
    """Milvus could not be reached or refused the credentials; names the uri and the token variable."""


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
        "LENSCOPE_MILVUS_TOKEN",
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


# -- connections -----------------------------------------------------------------------------------

# Milvus Lite runs one in-process server per .db path (keyed by absolute path) that keeps the directory
# open and locked; it is released when the last MilvusIndex of this process using that path closes.
_lite_users: Counter[str] = Counter()
_lite_lock = threading.Lock()


def connect(config: MilvusIndexConfig, token: str | None = None) -> Any:
    """A MilvusClient for `config`; the token is `token` when given, else `$config.token_env`."""
    from pymilvus import MilvusClient  # noqa: PLC0415 - only deployments using this backend need pymilvus
    from pymilvus.exceptions import MilvusException  # noqa: PLC0415

    if token is None:
        token = os.environ.get(config.token_env, "") if config.token_env else ""
    if config.is_lite:
        Path(config.uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = MilvusClient(uri=config.uri, token=token, db_name=config.db_name, timeout=config.timeout_s)
    except MilvusException as err:
        where = "with a token" if token else "no token"
        raise MilvusConnectionError(f"cannot connect to Milvus at {config.uri} ({where}): {err.message}") from err
    if config.is_lite:
        with _lite_lock:
            _lite_users[config.uri] += 1
    return client


def disconnect(client: Any, config: MilvusIndexConfig) -> None:
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
