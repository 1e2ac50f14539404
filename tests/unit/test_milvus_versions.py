"""Milvus builds version like FAISS bundles (Milvus Lite in-process, the fake model server of
test_indexing): one collection per build, recorded in the root's ledger; the alias follows the
published version; the previous collection is kept until `prune`, which never drops what a published
version or the alias uses; a bundle re-attaches at another uri with an explicit token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from test_indexing import FakeEmbedder, make_catalog  # noqa: E402

from lenscope.client.index.bundle_store import BundleStore  # noqa: E402
from lenscope.client.index.job import IndexBuildConfig, build_index  # noqa: E402
from lenscope.client.index.milvus_versions import LEDGER, prune, referenced_collections  # noqa: E402
from lenscope.client.vectors.milvus_config import MilvusIndexConfig, connect, disconnect  # noqa: E402


def _build(catalog: Path, root: Path, db: Path, **kw):
    cfg = IndexBuildConfig(catalog=catalog, index_root=root, progress=False, vector_backend="milvus",
                           milvus_uri=str(db), milvus_alias="lenscope_test", **kw)
    return build_index(cfg, FakeEmbedder(), sleep=lambda s: None)


def _alias_target(db: Path, alias: str) -> str:
    cfg = MilvusIndexConfig(uri=str(db))
    client = connect(cfg)
    try:
        return client.describe_alias(alias)["collection_name"]
    finally:
        disconnect(client, cfg)


def test_milvus_builds_are_versioned_switched_by_alias_and_pruned(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path / "cat")[0]
    root, db = tmp_path / "index", tmp_path / "milvus.db"
    first = _build(catalog, root, db)
    second = _build(catalog, root, db)
    store = BundleStore(root)
    assert store.current_version() == second.bundle_id
    ledger = [e["collection"] for e in json.loads((root / LEDGER).read_text())]
    assert len(ledger) == 2 and ledger[0] != ledger[1]
    assert all(name.startswith("lenscope_fake0001_") for name in ledger)  # model hash in the name
    assert _alias_target(db, "lenscope_test") == ledger[1]
    assert referenced_collections(store) == set(ledger)

    with store.open_current(expected_model_hash="fake0001") as bundle:
        assert bundle.manifest.index_backend == "milvus"
        assert bundle.index.config.collection == ledger[1]
        ids = bundle.metadata.row_ids()
        assert bundle.index.ntotal == len(ids) == second.indexed
        # the catalog's attributes are filter fields of the collection, pushed down by the search
        q = bundle.index.get_vectors(np.asarray(ids[:1]))
        red = bundle.index.search(q, 50, filters={"color": {"red"}})
        got = bundle.index.get_attributes(red.ids[0][red.ids[0] >= 0])
        assert got["color"] and set(got["color"]) == {"red"}

    # both versions are published: nothing to drop, whatever the age
    assert prune(root, alias="lenscope_test", min_age_s=0).dropped == []
    # the old version collected from disk: its collection goes; the served one stays
    shutil.rmtree(store.versions_dir / first.bundle_id)
    young = prune(root, alias="lenscope_test", min_age_s=3600)
    assert young.dropped == [] and "younger" in young.kept[ledger[0]]
    assert prune(root, alias="lenscope_test", min_age_s=0, dry_run=True).dropped == [ledger[0]]
    report = prune(root, alias="lenscope_test", min_age_s=0)
    assert report.dropped == [ledger[0]] and "published" in report.kept[ledger[1]]
    cfg = MilvusIndexConfig(uri=str(db))
    client = connect(cfg)
    try:
        assert not client.has_collection(ledger[0]) and client.has_collection(ledger[1])
    finally:
        disconnect(client, cfg)
    assert [e["collection"] for e in json.loads((root / LEDGER).read_text())] == [ledger[1]]


def test_the_alias_target_is_kept_even_without_a_version(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path / "cat", n=12)[0]
    root, db = tmp_path / "index", tmp_path / "milvus.db"
    build = _build(catalog, root, db)
    shutil.rmtree(BundleStore(root).versions_dir / build.bundle_id)
    report = prune(root, alias="lenscope_test", min_age_s=0)
    assert report.dropped == [] and "alias" in next(iter(report.kept.values()))


def test_serving_reads_the_collection_at_the_uri_it_is_given(tmp_path: Path) -> None:
    """The uri a service is given replaces the build's (a cluster address vs a build host's): proven
    by giving it another, empty Milvus, which must be refused by name, never silently served."""
    from lenscope.client.index.bundle import BundleError

    catalog = make_catalog(tmp_path / "cat", n=12)[0]
    root, db = tmp_path / "index", tmp_path / "milvus.db"
    _build(catalog, root, db)
    other = tmp_path / "other.db"
    opts = {"milvus": {"uri": str(other), "token": ""}}
    with pytest.raises(BundleError, match=f"does not exist at {other}"):
        BundleStore(root).open_current(expected_model_hash="fake0001", index_options=opts, fallback=False)
    with BundleStore(root).open_current(expected_model_hash="fake0001", index_options={"milvus": {"uri": str(db)}}) as b:
        assert b.index.ntotal > 0
