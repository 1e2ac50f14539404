"""The title CellIndex layout stored with a bundle: a pod rebuilds the same index from it without k-means,
refuses a layout that does not fit its vectors (and builds instead, saying why), and a removal keeps it."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.removal import remove_products
from lenscope.client.index.writer import title_cell_layout
from lenscope.client.search.engine import _title_cells
from lenscope.client.vectors.cell_index import (ASSIGNMENT_ATTACHMENT, CENTROIDS_ATTACHMENT, CellIndex,
                                                LayoutMismatch)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_layout_round_trip_gives_the_same_index() -> None:
    x = _clustered(4000)
    built = CellIndex(x)
    centroids, cells = built.layout()
    assert centroids.shape == (built.nlist, 16) and cells.shape == (4000,) and cells.min() >= 0
    loaded = CellIndex.from_layout(x, centroids, cells)
    assert (loaded.nlist, loaded.nprobe, loaded.ntotal) == (built.nlist, built.nprobe, built.ntotal)
    for q in _clustered(30, seed=1):
        assert built.search(q, 20).tolist() == loaded.search(q, 20).tolist()


@pytest.mark.parametrize("change, message", [
    (lambda c, a: (c, a[:-1]), "cell ids for 4000 rows"),
    (lambda c, a: (c[:, :8], a), "for 16-d vectors"),
    (lambda c, a: (c[:5], a), "cell ids outside 0..4"),
    (lambda c, a: (c, np.where(a == 0, -1, a)), "cell ids outside"),
])
def test_a_layout_that_does_not_fit_is_refused(change, message: str) -> None:
    x = _clustered(4000)
    centroids, cells = CellIndex(x).layout()
    with pytest.raises(LayoutMismatch, match=message):
        CellIndex.from_layout(x, *change(centroids, cells))


def test_the_build_stores_a_layout_only_above_the_scan_threshold() -> None:
    x = _clustered(3000)
    assert title_cell_layout(x, min_rows=3000) is None
    centroids, cells = title_cell_layout(x, min_rows=2999)
    assert cells.shape == (3000,) and centroids.shape[1] == 16


class _Bundle:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays = arrays

    def load_array(self, name: str):
        return self._arrays.get(name)


def test_the_engine_loads_a_stored_layout_and_otherwise_builds_saying_why() -> None:
    x = _clustered(3000)
    centroids, cells = CellIndex(x).layout()
    with capture_logs() as logs:
        _title_cells(_Bundle({CENTROIDS_ATTACHMENT: centroids, ASSIGNMENT_ATTACHMENT: cells}), x)
        _title_cells(_Bundle({}), x)
        _title_cells(_Bundle({CENTROIDS_ATTACHMENT: centroids, ASSIGNMENT_ATTACHMENT: cells[:10]}), x)
    events = [(e["event"], e.get("why", "")) for e in logs]
    assert events[0] == ("title_cell_index_loaded", "")
    assert events[1][0] == "title_cell_index_built" and "stores no title cell layout" in events[1][1]
    assert events[2][0] == "title_cell_index_built" and "does not fit the title vectors" in events[2][1]


def test_a_removal_keeps_the_layout_of_the_remaining_rows(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import scale_bundle
    finally:
        sys.path.remove(str(BENCHMARKS))
    # the synthetic bundle writer stores the layout as `index build` does; a small threshold keeps this fast
    monkeypatch.setattr(scale_bundle, "title_cell_layout", functools.partial(title_cell_layout, min_rows=500))
    root = tmp_path / "index"
    scale_bundle.build(root, 1500, "flat", model_hash="m" * 16, dim=16, labels={"category": ["a", "b"]}, seed=0,
                       log=lambda m: None)
    with BundleStore(root).open_current(expected_model_hash=None) as before:
        old_cells = np.asarray(before.load_array(ASSIGNMENT_ATTACHMENT)).copy()
        old_centroids = np.asarray(before.load_array(CENTROIDS_ATTACHMENT)).copy()
        old_titles = np.asarray(before.load_array("title_vectors")).copy()
    ids = tmp_path / "ids.txt"
    ids.write_text("syn-0000000\nsyn-0000700\n")
    remove_products(root, ids)
    keep = np.setdiff1d(np.arange(1500), [0, 700])
    with BundleStore(root).open_current(expected_model_hash=None) as after:
        cells = np.asarray(after.load_array(ASSIGNMENT_ATTACHMENT))
        centroids = np.asarray(after.load_array(CENTROIDS_ATTACHMENT))
        titles = np.asarray(after.load_array("title_vectors"), dtype=np.float32)
        assert np.array_equal(cells, old_cells[keep]) and np.array_equal(centroids, old_centroids)
        assert np.array_equal(titles, old_titles[keep])
        with capture_logs() as logs:
            _title_cells(after, titles)
    assert logs[0]["event"] == "title_cell_index_loaded"


def test_new_rows_join_the_previous_cells_and_many_new_rows_refit_them() -> None:
    x = _clustered(3000)
    centroids, cells = CellIndex(x).layout()
    hint = cells.astype(np.int64)
    hint[:100] = -1  # 100 rows embedded anew: assigned to their nearest stored centroid
    kept_centroids, kept_cells = title_cell_layout(x, min_rows=10, previous=(centroids, hint))
    assert np.array_equal(kept_centroids, centroids) and np.array_equal(kept_cells[100:], cells[100:])
    nearest = np.argmax(x[:100] @ centroids.T, axis=1)
    assert np.array_equal(kept_cells[:100], nearest)
    hint[:1000] = -1  # a third of the rows new: fitted anew (k-means on this catalog)
    with capture_logs() as logs:
        refit = title_cell_layout(x, min_rows=10, previous=(centroids, hint))
    assert [e["event"] for e in logs] == ["title_cell_layout_built"] and refit[1].min() >= 0
    wrong_dim = (centroids[:, :8], cells.astype(np.int64))
    with capture_logs() as logs:
        title_cell_layout(x, min_rows=10, previous=wrong_dim)
    assert [e["event"] for e in logs] == ["title_cell_layout_built"]


def test_an_incremental_build_keeps_the_stored_cells(tmp_path: Path, monkeypatch) -> None:
    from test_indexing import FakeEmbedder
    from test_milvus_incremental import N, _catalog, _changed

    from lenscope.client.index import writer
    from lenscope.client.index.job import IndexBuildConfig, build_index

    monkeypatch.setattr(writer, "SCAN_MAX_ROWS", 10)  # store a layout for this small catalog
    catalog = _catalog(tmp_path / "cat", list(range(N)))
    root = tmp_path / "index"

    def build(path: Path):
        cfg = IndexBuildConfig(catalog=path, index_root=root, progress=False, refit_fraction=1.0)
        return build_index(cfg, FakeEmbedder(), sleep=lambda s: None)

    def layout() -> tuple[np.ndarray, np.ndarray, list[str]]:
        with BundleStore(root).open_current(expected_model_hash=None) as b:
            ids = [p.product_id for p in b.metadata.get(b.metadata.row_ids())]
            return (np.asarray(b.load_array(CENTROIDS_ATTACHMENT)), np.asarray(b.load_array(ASSIGNMENT_ATTACHMENT)),
                    ids)

    build(catalog)
    centroids, cells, ids = layout()
    with capture_logs() as logs:
        incr = build(_changed(catalog.parent))
    assert incr.info["build"]["mode"] == "incremental"
    reused = [e for e in logs if e["event"] == "title_cell_layout_reused"]
    assert len(reused) == 1 and reused[0]["assigned"] == 2, [e["event"] for e in logs]  # p0000 retitled, p0100 new
    new_centroids, new_cells, new_ids = layout()
    assert np.array_equal(new_centroids, centroids)
    old_cell = dict(zip(ids, cells.tolist()))
    assert all(c == old_cell[p] for p, c in zip(new_ids, new_cells.tolist()) if p not in ("p0000", "p0100"))
