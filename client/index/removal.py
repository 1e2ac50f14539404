"""Fast removal: publish the served version without some products, from its stored vectors.

`lenscope index remove --ids FILE` is how a shop withdraws products urgently: no catalog rebuild,
no model server. The served version is opened (checksums verified), the rows of the listed
products are left out, row ids are renumbered densely, the ANN structure is rebuilt from the
stored vectors, every per-row attachment is sliced the same way, the ranking files are kept as
they were (removing a few rows does not change what they were fitted on), and the result is
published atomically like any build; a running `serve search` switches to it (search/live.py).

Milvus versions (index/milvus_versions.py) are handled the same way: the kept rows' stored vectors
and filter fields go into a NEW collection (same index type and parameters), recorded in the root's
ledger, the version is published, then the alias is moved; the served collection is never written
to, so a query is still answered by one version (docs/live-index.md says why not a delete in place).

The ids file is one product id per line; blank lines and lines starting with `#` are skipped. An
id the served version does not hold is an error naming the file, line and value (nothing is
published), so a typo never passes silently as "removed".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lenscope.client.index.bundle import BundleError, IndexBundle
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.file_digests import FILE_DIGESTS
from lenscope.client.index.reader import Reject
from lenscope.client.index.writer import (ATTR_PROBS_PREFIX, CALIBRATION, FUSION, INDEX_INFO, PHOTO_VECTORS,
                                          RANKING_POLICY, REJECTS, ROW_KEYS, TITLE_VECTORS, rejects_jsonl)
from lenscope.client.vectors.cell_index import ASSIGNMENT_ATTACHMENT, CENTROIDS_ATTACHMENT
from lenscope.client.vectors.faiss_index import FaissIndex, FaissIndexConfig

MAX_SHOWN = 5


class RemovalError(ValueError):
    """The ids file or the served version does not allow the removal; the message names file/line/value."""


@dataclass
class RemovalReport:
    previous: str
    bundle_id: str
    removed: int
    remaining: int
    seconds: dict[str, float]


def read_ids(path: Path) -> list[tuple[int, str]]:
    """(line, product id) for every id in the file, in order; refuses an unreadable or empty file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise RemovalError(f"{path}: cannot read the ids file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        line = text_line(Path(path).read_bytes(), err.start)
        raise RemovalError(f"{path}:{line}: not UTF-8 text (byte {err.object[err.start]:#04x}); "
                           "the ids file is one product id per line") from err
    ids = []
    for n, raw in enumerate(text.splitlines(), start=1):
        value = raw.strip()
        if not value or value.startswith("#"):
            continue
        if any(ord(c) < 32 for c in value):
            raise RemovalError(f"{path}:{n}: product id {value!r} contains a control character")
        ids.append((n, value))
    if not ids:
        raise RemovalError(f"{path}: no product id in the file (one per line; '#' starts a comment)")
    return ids


def text_line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def remove_products(index_root: Path, ids_file: Path, *, milvus_uri: str | None = None,
                    milvus_alias: str = "lenscope_serving") -> RemovalReport:
    """Publish the served version without the listed products; returns what was done.

    For a Milvus version, `milvus_uri` reaches its Milvus from here (default: the address recorded
    at build time) and `milvus_alias` is moved to the new collection once it is published."""
    t0 = time.perf_counter()
    wanted = read_ids(ids_file)
    store = BundleStore(index_root)
    options = {"milvus": {"uri": milvus_uri}} if milvus_uri else None
    with store.open_current(expected_model_hash=None, fallback=False, index_options=options) as bundle:
        if bundle.manifest.index_backend not in ("faiss", "milvus"):
            raise RemovalError(f"index remove supports the faiss and milvus backends; {bundle.path} uses "
                               f"{bundle.manifest.index_backend!r}")
        ids = bundle.metadata.row_ids()
        products = bundle.metadata.get(ids)
        row_of: dict[str, list[int]] = {}
        for p in products:
            if p is not None:
                row_of.setdefault(p.product_id, []).append(p.row_id)
        unknown = [(n, pid) for n, pid in wanted if pid not in row_of]
        if unknown:
            shown = "; ".join(f"{ids_file}:{n}: {pid!r}" for n, pid in unknown[:MAX_SHOWN])
            more = f" (and {len(unknown) - MAX_SHOWN} more)" if len(unknown) > MAX_SHOWN else ""
            raise RemovalError(f"{len(unknown)} product id(s) are not in the served index {bundle.version}: "
                               f"{shown}{more}; nothing was removed")
        drop = {pid for _, pid in wanted}
        keep = np.asarray([p.row_id for p in products if p is not None and p.product_id not in drop], np.int64)
        if keep.size == 0:
            raise RemovalError(f"{ids_file}: removing these would leave the index {bundle.version} empty; "
                               "build a new catalog instead")
        t_read = time.perf_counter()
        bundle_id = _publish_subset(store, bundle, keep, products, drop, str(ids_file), milvus_alias)
        previous = bundle.version
    seconds = {"read": round(t_read - t0, 3), "publish": round(time.perf_counter() - t_read, 3),
               "total": round(time.perf_counter() - t0, 3)}
    return RemovalReport(previous=previous, bundle_id=bundle_id, removed=int(ids.size - keep.size),
                         remaining=int(keep.size), seconds=seconds)


def _publish_subset(store: BundleStore, bundle: IndexBundle, keep: np.ndarray, products: list, drop: set[str],
                    source: str, milvus_alias: str) -> str:
    """A new version holding rows `keep` of `bundle` (renumbered 0..n-1), everything else copied."""
    vectors = np.asarray(bundle.index.get_vectors(keep), dtype=np.float32)
    by_row = {p.row_id: p for p in products if p is not None}
    if bundle.manifest.index_backend == "milvus":
        index = _milvus_subset(store.root, bundle, keep, vectors)
        try:
            bundle_id = _write_subset(store, bundle, keep, by_row, drop, source, index)
            from lenscope.client.index.milvus_versions import publish_alias  # noqa: PLC0415

            publish_alias(index, milvus_alias)
        finally:
            index.close()
        return bundle_id
    config = FaissIndexConfig.model_validate(bundle.manifest.index_config)
    index = FaissIndex(bundle.manifest.embedding_dim, config)
    index.add(np.arange(keep.size, dtype=np.int64), vectors)
    return _write_subset(store, bundle, keep, by_row, drop, source, index)


def _milvus_subset(root: Path, bundle: IndexBundle, keep: np.ndarray, vectors: np.ndarray):  # noqa: ANN202
    """The kept rows in a new collection like the served one (recorded in the ledger before any insert)."""
    from lenscope.client.index import milvus_versions  # noqa: PLC0415 - pymilvus only for Milvus roots
    from lenscope.client.vectors.milvus_index import MilvusIndex  # noqa: PLC0415

    served = bundle.index.config  # as opened: the uri this process reaches the served collection at
    config = milvus_versions.next_config(root, served, bundle.model_manifest_hash)
    index = MilvusIndex(bundle.manifest.embedding_dim, config)
    try:
        columns = bundle.index.get_attributes(keep)  # the filter values as the served collection holds them
        index.add(np.arange(keep.size, dtype=np.int64), vectors, attributes=columns)
    except BaseException:
        index.close()
        raise
    return index


def _write_subset(store: BundleStore, bundle: IndexBundle, keep: np.ndarray, by_row: dict, drop: set[str],
                  source: str, index) -> str:  # noqa: ANN001
    position = {int(r): i for i, r in enumerate(keep.tolist())}
    info = json.loads(bundle.read_attachment(INDEX_INFO) or b"{}")
    removed_rows = int(len(by_row) - keep.size)
    info["counts"] = {**info.get("counts", {}), "indexed": int(keep.size)}
    info["index_config"] = index.config.model_dump(mode="json")  # a Milvus version names its new collection
    info["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    info["build"] = {"mode": "remove", "previous": bundle.version, "removed": removed_rows, "ids_file": source,
                     "ranking": "kept from the previous version (rows removed only)"}
    with store.writer(model_manifest_hash=bundle.model_manifest_hash, index=index) as w:
        w.metadata.insert_many(by_row[int(r)].model_copy(update={"row_id": position[int(r)]}) for r in keep.tolist())
        # per-row arrays, renumbered like the rows; the title cells keep their centroids (a removal moves no row
        # to another cell), so a pod that loads this version still skips the title k-means
        for name in (TITLE_VECTORS, PHOTO_VECTORS, ASSIGNMENT_ATTACHMENT, *_attr_arrays(bundle)):
            array = bundle.load_array(name)
            if array is not None:
                w.attach_array(name, np.asarray(array)[keep])
        centroids = bundle.load_array(CENTROIDS_ATTACHMENT)
        if centroids is not None:
            w.attach_array(CENTROIDS_ATTACHMENT, np.asarray(centroids))
        for name in (CALIBRATION, FUSION, RANKING_POLICY, FILE_DIGESTS):
            data = bundle.read_attachment(name)
            if data is not None:
                w.attach(name, data)
        kept_rejects = [r for r in _rejects(bundle) if r.product_id not in drop]
        w.attach(REJECTS, rejects_jsonl(kept_rejects))
        keys = bundle.read_attachment(ROW_KEYS)
        if keys is not None:
            all_keys = json.loads(keys)
            w.attach(ROW_KEYS, (json.dumps([all_keys[int(r)] for r in keep.tolist()]) + "\n").encode())
        w.attach(INDEX_INFO, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    assert w.bundle_id is not None
    return w.bundle_id


def _attr_arrays(bundle: IndexBundle) -> list[str]:
    folder = bundle.path / "attachments"
    return sorted(p.name[: -len(".npy")] for p in folder.glob(f"{ATTR_PROBS_PREFIX}*.npy"))


def _rejects(bundle: IndexBundle) -> list[Reject]:
    text = (bundle.read_attachment(REJECTS) or b"").decode()
    return [Reject.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]


__all__ = ["BundleError", "RemovalError", "RemovalReport", "read_ids", "remove_products"]
