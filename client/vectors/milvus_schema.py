"""The Milvus collection layout and its setup: field names, creating the collection with its indexes,
checking an existing one against a saved index, waiting for the vector index build, and validating
attribute columns against the VARCHAR fields.

Separate from `milvus_index` because this is the one place that knows how a collection is laid out
(the filter expressions and the index's queries only name its fields); the index calls these once per
build or load, never per query.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tenacity import RetryError, retry_if_result

from lenscope.client.core.retry import RetryPolicy
from lenscope.client.vectors.contract import IndexFormatError

if TYPE_CHECKING:
    from lenscope.client.vectors.milvus_config import MilvusIndexConfig

log = logging.getLogger(__name__)

ID_FIELD = "id"  # INT64 primary key = product row id
VECTOR_FIELD = "vector"  # FLOAT_VECTOR(dim), the stored float32 embedding
SEQ_FIELD = "seq"  # INT64 insertion ordinal 0..n-1: stored_ids() order and the fingerprint sample
RESERVED_FIELDS = frozenset({ID_FIELD, VECTOR_FIELD, SEQ_FIELD})


def create_collection(client: Any, cfg: MilvusIndexConfig, name: str, dim: int, drop_existing: bool) -> None:
    """Create collection `name` (fields, vector + scalar indexes, loaded); an existing one is refused
    unless `drop_existing`."""
    from pymilvus import DataType, MilvusClient  # noqa: PLC0415

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
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
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
    log.info("created Milvus collection %s at %s (%s, dim %d)", name, cfg.uri, cfg.index_type, dim)


def check_schema(client: Any, config: MilvusIndexConfig, name: str, dim: int, where: str) -> None:
    """The collection's fields match dim and attributes; IndexFormatError naming the difference."""
    desc = client.describe_collection(name, timeout=config.timeout_s)
    fields = {f["name"]: f for f in desc["fields"]}
    vector = fields.get(VECTOR_FIELD)
    stored = None if vector is None else int(vector.get("params", {}).get("dim", -1))
    if stored != dim:
        raise IndexFormatError(
            f"{where}: collection {name!r} has vector dim {stored}, expected {dim}"
        )
    expected = RESERVED_FIELDS | set(config.attributes)
    if set(fields) != expected:
        raise IndexFormatError(
            f"{where}: collection {name!r} has fields {sorted(fields)}, expected {sorted(expected)}"
        )


def wait_for_index(client: Any, config: MilvusIndexConfig, name: str) -> None:
    """Block until Milvus has indexed every flushed row (a cluster builds indexes in the background;
    searches meanwhile are correct but brute-force the unindexed segments)."""
    last: dict[str, Any] = {}

    def pending() -> bool:
        nonlocal last
        last = info = client.describe_index(name, VECTOR_FIELD, timeout=config.timeout_s)
        state = str(info.get("state", ""))
        if state == "Failed":
            raise RuntimeError(f"Milvus failed to build the vector index of {name!r}: {info}")
        return not (int(info.get("pending_index_rows", 0)) == 0 and state in ("Finished", ""))

    poll = RetryPolicy(attempts=None, base_delay_s=0.1, max_delay_s=4.0, budget_s=config.index_build_timeout_s)
    try:
        poll.retrying(retry_if_result(bool))(pending)
    except RetryError:
        raise TimeoutError(f"vector index of {name!r} not built after {config.index_build_timeout_s} s: {last}") from None


def attribute_columns(
    config: MilvusIndexConfig, attributes: Mapping[str, Sequence[str | None]], n: int
) -> dict[str, list]:
    """One list of n values (str or None) per declared attribute; undeclared or too long values refused."""
    declared = config.attributes
    unknown = sorted(set(attributes) - set(declared))
    if unknown:
        raise ValueError(
            f"attributes {unknown} are not declared in the config (attributes={list(declared)}); "
            "the collection schema is fixed when it is created"
        )
    limit = config.attribute_max_length
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
