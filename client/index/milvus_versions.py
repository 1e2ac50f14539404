"""Milvus collections of an index root: one per build, an alias switched for blue-green, pruning.

A FAISS bundle owns its vectors; a Milvus bundle points at a collection in the engine
(`vectors/milvus_state.py` says why). So that a Milvus root versions like a FAISS one:

* every build writes a NEW collection, named after the model hash and the build time
  (`lenscope_<model16>_<utc>_<hex>`), recorded in `<root>/milvus_collections.json` *before* the first
  row is inserted (a crashed build's collection is known, and pruned later);
* after the bundle is published (`current` switched), the alias (default `lenscope_serving`) is moved
  to the new collection in one Milvus call (`alter_alias` is atomic), for tools that read "the live
  collection" by name. The search service itself reads the collection its bundle records: the bundle's
  metadata and row ids belong to that build, so a service keeps answering from the old collection
  until it opens the new bundle, and the old collection stays until it is pruned;
* `prune` drops the recorded collections that no bundle version under the root still references and
  that the alias does not point at. It takes the root's publish lock (never during a publish) and
  leaves collections younger than `min_age_s` alone (a build between creating its collection and
  publishing holds no lock yet).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from lenscope.client.core.durable_files import atomic_write, try_lock, unlock
from lenscope.client.index.bundle import BundleError, INDEX_DIR
from lenscope.client.index.bundle_store import LOCK_FILE, BundleStore
from lenscope.client.vectors.milvus_config import MilvusIndexConfig, bundle_collection_name, connect, disconnect
from lenscope.client.vectors.milvus_filters import check_attribute_name
from lenscope.client.vectors.milvus_state import STATE_FILE, read_state

log = logging.getLogger(__name__)

LEDGER = "milvus_collections.json"
DEFAULT_ALIAS = "lenscope_serving"


def filterable_attributes(names: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """(catalog attributes Milvus can store as filter fields, those it cannot: named in the build log)."""
    ok, skipped = [], []
    for name in sorted(set(names)):
        try:
            ok.append(check_attribute_name(name))
        except ValueError:
            skipped.append(name)
    return tuple(ok), skipped


def build_config(index_root: Path, model_hash: str, uri: str, attributes: Sequence[str], *,
                 index_type: str = "HNSW", db_name: str = "") -> MilvusIndexConfig:
    """The config of a new build's collection, recorded in the root's ledger before any row is written."""
    config = MilvusIndexConfig(uri=uri, db_name=db_name, collection=bundle_collection_name(model_hash),
                               index_type=index_type, attributes=tuple(attributes))  # type: ignore[arg-type]
    return _record(index_root, config)


def next_config(index_root: Path, previous: MilvusIndexConfig, model_hash: str, *,
                uri: str | None = None) -> MilvusIndexConfig:
    """The config of a version derived from `previous` without new embeddings (`index remove`): the
    same index type, parameters and filter fields in a NEW collection, recorded in the ledger first.

    `uri` reaches that Milvus from here when the recorded address is not reachable from this host."""
    data = {**previous.model_dump(), "collection": bundle_collection_name(model_hash)}
    if uri is not None:
        data["uri"] = uri
    return _record(index_root, MilvusIndexConfig.model_validate(data))


def _record(index_root: Path, config: MilvusIndexConfig) -> MilvusIndexConfig:
    ledger = _read_ledger(index_root)
    ledger.append({"uri": config.uri, "db_name": config.db_name, "collection": config.collection,
                   "created": time.time()})
    index_root.mkdir(parents=True, exist_ok=True)
    atomic_write(index_root / LEDGER, (json.dumps(ledger, indent=2) + "\n").encode())
    return config


def publish_alias(index: Any, alias: str) -> str | None:
    """After a version was published: move `alias` to its collection (blue-green for tools reading the
    alias); the previous collection is kept until `prune`. Returns the collection it pointed at before."""
    previous = switch_alias(index.client, alias, index.collection, index.config.timeout_s)
    structlog.get_logger("lenscope.index").info(
        "milvus_alias_switched", alias=alias, collection=index.collection, previous=previous,
        note="the previous collection is kept until `lenscope index prune`")
    return previous


def switch_alias(client: Any, alias: str, collection: str, timeout_s: float | None = None) -> str | None:
    """Point `alias` at `collection` atomically; returns the collection it pointed at before (or None)."""
    try:
        previous = client.describe_alias(alias, timeout=timeout_s).get("collection_name")
    except Exception:  # noqa: BLE001 - pymilvus raises a generic MilvusException for "alias not found"
        previous = None
    if previous is None:
        client.create_alias(collection, alias, timeout=timeout_s)
    elif previous != collection:
        client.alter_alias(collection, alias, timeout=timeout_s)
    return previous


def referenced_collections(store: BundleStore) -> set[str]:
    """Collections named by the Milvus bundles published under the root (any version still on disk)."""
    names = set()
    for version in store.versions():
        state_path = store.versions_dir / version / INDEX_DIR / STATE_FILE
        if state_path.is_file():
            names.add(read_state(state_path).config.collection)
    return names


@dataclass
class PruneReport:
    dropped: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # collection -> why


def prune(index_root: Path, *, alias: str = DEFAULT_ALIAS, uri: str | None = None, token: str | None = None,
          min_age_s: float = 600.0, dry_run: bool = False) -> PruneReport:
    """Drop this root's recorded collections that no published version references and the alias does
    not serve; `uri` reaches the Milvus the collections were built in from here (default: as recorded)."""
    index_root = Path(index_root)
    lock = try_lock(index_root / LOCK_FILE)
    if lock is None:
        raise BundleError(f"an index publish holds {index_root / LOCK_FILE}; prune after it finishes")
    try:
        return _prune_locked(index_root, alias, uri, token, min_age_s, dry_run)
    finally:
        unlock(lock)


def _prune_locked(root: Path, alias: str, uri: str | None, token: str | None, min_age_s: float,
                  dry_run: bool) -> PruneReport:
    report = PruneReport()
    ledger = _read_ledger(root)
    if not ledger:
        return report
    referenced = referenced_collections(BundleStore(root))
    remaining = []
    clients: dict[tuple[str, str], tuple[Any, MilvusIndexConfig]] = {}
    try:
        for entry in ledger:
            name = entry["collection"]
            config = MilvusIndexConfig(uri=uri or entry["uri"], db_name=entry.get("db_name", ""), collection=name)
            key = (config.uri, config.db_name)
            if key not in clients:
                clients[key] = (connect(config, token), config)
            client = clients[key][0]
            why = _keep_reason(client, entry, alias, referenced, min_age_s)
            if why:
                report.kept[name] = why
                remaining.append(entry)
                continue
            if not dry_run:
                if client.has_collection(name):
                    client.drop_collection(name)
                log.info("dropped Milvus collection %s (no published version references it)", name)
            else:
                remaining.append(entry)
            report.dropped.append(name)
        if not dry_run:
            atomic_write(root / LEDGER, (json.dumps(remaining, indent=2) + "\n").encode())
    finally:
        for client, config in clients.values():
            disconnect(client, config)
    return report


def _keep_reason(client: Any, entry: dict, alias: str, referenced: set[str], min_age_s: float) -> str:
    name = entry["collection"]
    if name in referenced:
        return "a published version uses it"
    try:
        if client.describe_alias(alias).get("collection_name") == name:
            return f"alias {alias} points at it"
    except Exception:  # noqa: BLE001 - no such alias
        pass
    if time.time() - float(entry.get("created", 0)) < min_age_s:
        return f"younger than {min_age_s:.0f} s (a build may still be writing it)"
    return ""


def _read_ledger(root: Path) -> list[dict]:
    path = Path(root) / LEDGER
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: unreadable ({err}); it lists the Milvus collections this root built") from err
    if not isinstance(data, list):
        raise BundleError(f"{path}: expected a JSON list of collections")
    return data
