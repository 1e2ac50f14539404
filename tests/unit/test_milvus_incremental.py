"""Incremental builds and fast removal through the Milvus backend (Milvus Lite in-process, the fake
model server of test_indexing): a changed catalog built into a Milvus root embeds only its new and
changed rows, takes the other vectors from the served collection, and lands in a NEW collection
behind the alias with vectors equal to a full build's; `index remove` publishes a new collection
without the products, with no model server at all. The served collection is never written to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from test_indexing import FakeEmbedder, _row  # noqa: E402

from lenscope.client.index.bundle_store import BundleStore  # noqa: E402
from lenscope.client.index.job import IndexBuildConfig, build_index  # noqa: E402
from lenscope.client.index.milvus_versions import LEDGER  # noqa: E402
from lenscope.client.index.removal import RemovalError, remove_products  # noqa: E402
from lenscope.client.vectors.milvus_config import MilvusIndexConfig, connect, disconnect  # noqa: E402

ALIAS = "lenscope_test"
N = 24


def _build(catalog: Path, root: Path, db: Path, embedder: FakeEmbedder, **kw):
    cfg = IndexBuildConfig(catalog=catalog, index_root=root, progress=False, vector_backend="milvus",
                           milvus_uri=str(db), milvus_alias=ALIAS, **kw)
    return build_index(cfg, embedder, sleep=lambda s: None)


def _client(db: Path):
    cfg = MilvusIndexConfig(uri=str(db))
    return connect(cfg), cfg


def _alias_and_collections(db: Path) -> tuple[str, set[str]]:
    client, cfg = _client(db)
    try:
        return client.describe_alias(ALIAS)["collection_name"], set(client.list_collections())
    finally:
        disconnect(client, cfg)


def _served(root: Path) -> tuple[list[str], np.ndarray, np.ndarray, str, int]:
    """(product ids by row id, image vectors, title vectors, collection, rows in it) of the current version."""
    with BundleStore(root).open_current(expected_model_hash="fake0001", fallback=False) as bundle:
        ids = bundle.metadata.row_ids()
        products = [p.product_id for p in bundle.metadata.get(ids)]
        return (products, bundle.index.get_vectors(ids), np.asarray(bundle.load_array("title_vectors")),
                bundle.index.collection, bundle.index.count())


def _catalog(folder: Path, numbers: list[int], name: str = "catalog.jsonl", **retitled: str) -> Path:
    """Products p<i> (no problem rows: every row is embedded or reused), images in the fake's format."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "photo").mkdir(exist_ok=True)
    rows = []
    for i in numbers:
        row = _row(i)
        pid = row["product_id"]
        (folder / "img" / f"{pid}.png").write_bytes(f"IMG:{pid}:catalog".encode())
        (folder / "photo" / f"{pid}.png").write_bytes(f"IMG:{pid}:photo".encode())
        row["title"] = retitled.get(pid, row["title"])
        rows.append(row)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _changed(folder: Path) -> Path:
    """p0000 retitled, p0001 withdrawn, p0100 new."""
    return _catalog(folder, [0, *range(2, N), 100], "changed.jsonl", p0000="Item p0000 in red (new edition)")


def test_incremental_milvus_build_reuses_the_served_collection_and_equals_a_full_build(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path / "cat", list(range(N)))
    root, db = tmp_path / "index", tmp_path / "milvus.db"
    first = _build(catalog, root, db, FakeEmbedder())
    assert first.indexed == N
    _, _, _, first_collection, _ = _served(root)
    changed = _changed(catalog.parent)

    embedder = FakeEmbedder()
    incr = _build(changed, root, db, embedder, refit_fraction=1.0)  # keep the fit: only the rows are embedded
    build = incr.info["build"]
    assert build["mode"] == "incremental" and build["previous"] == first.bundle_id, build
    assert (build["embedded"], build["changed"], build["added"], build["removed"]) == (2, 1, 1, 1), build
    assert build["reused"] == incr.indexed - 2 == N - 2
    assert embedder.inputs == 2 * 3, "image + photo + title of the two new rows, nothing else"

    products, image, title, collection, rows = _served(root)
    assert collection != first_collection and rows == len(products) == incr.indexed
    alias_target, collections = _alias_and_collections(db)
    assert alias_target == collection and first_collection in collections, "old version kept until prune"
    ledger = [e["collection"] for e in json.loads((root / LEDGER).read_text())]
    assert ledger == [first_collection, collection]
    assert "p0001" not in products and "p0100" in products

    full_root = tmp_path / "full"
    full = _build(changed, full_root, db, FakeEmbedder(), full=True)
    assert full.info["build"]["mode"] == "full"
    full_products, full_image, full_title, _, _ = _served(full_root)
    assert products == full_products
    np.testing.assert_allclose(image, full_image, atol=1e-6)
    np.testing.assert_allclose(title, full_title, atol=1e-6)
    with BundleStore(root).open_current(expected_model_hash="fake0001") as a, \
            BundleStore(full_root).open_current(expected_model_hash="fake0001") as b:
        queries = full_image[::3]
        ra, rb = a.index.search(queries, 10), b.index.search(queries, 10)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_allclose(ra.scores, rb.scores, atol=1e-5)
        color = a.index.search(queries[:1], 50, filters={"color": {"red"}})  # filter fields copied too
        hits = color.ids[0][color.ids[0] >= 0]
        assert hits.size and set(a.index.get_attributes(hits)["color"]) == {"red"}


def test_remove_publishes_a_new_collection_without_the_products_and_no_model_server(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path / "cat", list(range(N)))
    root, db = tmp_path / "index", tmp_path / "milvus.db"
    _build(catalog, root, db, FakeEmbedder())
    before, image_before, _, served_collection, _ = _served(root)
    gone = [before[2], before[10]]
    ids = tmp_path / "withdraw.txt"
    ids.write_text(f"# withdrawn\n{gone[0]}\n{gone[1]}\n")

    report = remove_products(root, ids, milvus_alias=ALIAS)  # takes no embedder: nothing can be embedded
    assert (report.removed, report.remaining) == (2, len(before) - 2)
    products, image, title, collection, rows = _served(root)
    assert collection != served_collection and rows == len(products) == len(before) - 2
    assert not set(gone) & set(products) and title.shape[0] == len(products)
    keep = [i for i, p in enumerate(before) if p not in gone]
    np.testing.assert_allclose(image, image_before[keep], atol=1e-7)
    alias_target, collections = _alias_and_collections(db)
    assert alias_target == collection and served_collection in collections
    with BundleStore(root).open_current(expected_model_hash="fake0001") as bundle:
        info = json.loads(bundle.read_attachment("index_info.json"))
        assert info["build"]["mode"] == "remove" and info["index_config"]["collection"] == collection
        color = bundle.index.get_attributes(np.asarray([0]))["color"][0]
        assert color == _row(int(products[0][1:]))["color"], "filter fields follow the renumbered rows"
        hit = bundle.index.search(image[:1], 1, filters={"color": {color}})
        assert hit.ids[0, 0] == 0

    bad = tmp_path / "typo.txt"
    bad.write_text(f"{products[0]}\nno-such-product\n")
    with pytest.raises(RemovalError, match=f"{bad}:2: 'no-such-product'"):
        remove_products(root, bad, milvus_alias=ALIAS)
    assert _served(root)[3] == collection, "nothing published on an unknown id"
