"""Incremental builds and fast removal through a real tritonserver: a changed catalog built into a
root that already serves a version embeds only new and changed rows, and the result ranks exactly
like a full build of the same catalog; `index remove` publishes a version without some products
from the stored vectors alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lenscope.client.cli.app import app
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.embedder import ModelInfo
from lenscope.client.index.incremental import load_previous
from lenscope.client.index.job import IndexBuildConfig, build_index
from lenscope.client.search.engine import SearchSettings, SearchEngine
from lenscope.client.search.models import SearchQuery
from lenscope.client.synth.catalog import generate_catalog
from lenscope.client.triton.client import ClientConfig, TritonEmbedder

pytestmark = pytest.mark.integration


def _build(catalog: Path, root: Path, embedder, **kw):
    return build_index(IndexBuildConfig(catalog=catalog, index_root=root, batch_size=16, concurrency=2,
                                        progress=False, **kw), embedder)


@pytest.fixture(scope="module")
def setup(triton, tmp_path_factory):
    """A 58-product catalog built in full, then changed: 2 products gone, 4 new, 2 retitled, 1 new photo."""
    base = tmp_path_factory.mktemp("incr")
    paths = generate_catalog(base / "catalog", 62, seed=31, image_size=64)
    lines = paths.catalog.read_text(encoding="utf-8").splitlines(keepends=True)
    first = paths.catalog.parent / "v1.jsonl"
    first.write_text("".join(lines[:58]), encoding="utf-8")
    embedder = TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0, max_concurrency=16))
    root = base / "index"  # each test works on its own copy (see _fresh): order and selection do not matter
    v1 = _build(first, root, embedder)
    changed = []
    for i, line in enumerate(lines[2:], start=2):
        row = json.loads(line)
        if i in (10, 11):
            row["title"] = row["title"] + " (new edition)"
        changed.append(json.dumps(row) + "\n")
    second = paths.catalog.parent / "v2.jsonl"
    second.write_text("".join(changed), encoding="utf-8")
    img20 = json.loads(lines[20])["image"]
    shutil.copy(paths.catalog.parent / json.loads(lines[61])["image"], paths.catalog.parent / img20)
    yield paths.catalog.parent, root, v1, second, embedder
    embedder.close()


def _fresh(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(root, copy, symlinks=True)
    return copy


def _engine(embedder, root: Path) -> SearchEngine:
    bundle = BundleStore(root).open_current(expected_model_hash=None)
    return SearchEngine(embedder, bundle, SearchSettings(default_deadline_s=30.0))


@pytest.mark.slow  # two builds through Triton (~1 min on 2 busy cores)
def test_incremental_build_embeds_only_changes_and_ranks_like_a_full_build(setup, tmp_path: Path) -> None:
    folder, root, v1, second, embedder = setup
    root = _fresh(root, tmp_path)
    incr = _build(second, root, embedder, refit_fraction=0.0)  # refit, so the fit is a full build's too
    build = incr.info["build"]
    assert build["mode"] == "incremental" and build["previous"] == v1.bundle_id, build
    assert (build["reused"], build["embedded"], build["removed"], build["changed"], build["added"]) == (53, 7, 2, 3, 4), build
    assert "ranking refitted" in build["ranking"]
    full = _build(second, tmp_path / "full", embedder, full=True)
    assert full.info["build"]["mode"] == "full" and full.indexed == incr.indexed == 60

    a, b = _engine(embedder, root), _engine(embedder, tmp_path / "full")
    try:
        ids_a = [p.product_id for p in a.bundle.metadata.get(a.bundle.metadata.row_ids())]
        ids_b = [p.product_id for p in b.bundle.metadata.get(b.bundle.metadata.row_ids())]
        assert ids_a == ids_b
        n = len(ids_a)
        np.testing.assert_allclose(a.bundle.index.get_vectors(np.arange(n)), b.bundle.index.get_vectors(np.arange(n)),
                                   atol=1e-5)
        np.testing.assert_allclose(a.title_vectors, b.title_vectors, atol=1e-5)
        rows = [json.loads(line) for line in second.read_text().splitlines()]
        queries = [SearchQuery(text=r["title"], top_k=10) for r in rows[::6]]
        queries += [SearchQuery(image=(folder / r["image"]).read_bytes(), top_k=10) for r in rows[3::9]]
        for q in queries:
            ra, rb = a.search(q), b.search(q)
            assert [h.product_id for h in ra.hits] == [h.product_id for h in rb.hits], q.text
            np.testing.assert_allclose([h.score for h in ra.hits], [h.score for h in rb.hits], atol=1e-4)
    finally:
        for e in (a, b):
            e.close()
            e.bundle.close()


def test_small_change_keeps_the_fit_and_model_change_means_full(setup, tmp_path: Path) -> None:
    folder, root, v1, _, embedder = setup
    root = _fresh(root, tmp_path)
    before = BundleStore(root).current_version()
    rows = (folder / "v1.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(rows[5])
    row["title"] += " blue"
    third = folder / "v3.jsonl"  # beside the images; product 20's image was replaced after v1 was built
    third.write_text("".join(rows[:5] + [json.dumps(row) + "\n"] + rows[6:]))
    report = _build(third, root, embedder)
    build = report.info["build"]
    assert (build["embedded"], build["changed"], build["removed"]) == (2, 2, 0) and build["previous"] == before, build
    assert "previous fit kept" in build["ranking"], build
    old = BundleStore(root).versions_dir / before / "attachments"
    new = report.bundle_path / "attachments"
    for name in ("fusion.json", "ranking_policy.json"):
        assert (old / name).read_bytes() == (new / name).read_bytes(), name
    info = json.loads((new / "index_info.json").read_text())
    assert info["ranking"]["kept_from"] == before

    model = ModelInfo.from_manifest(embedder.manifest())
    prev, why = load_previous(root, dataclasses.replace(model, model_hash="another-model"))
    assert prev is None and "another model" in why


def test_remove_publishes_without_the_products_and_checks_the_ids(setup, tmp_path: Path) -> None:
    _, root, _, _, _ = setup
    root = _fresh(root, tmp_path)
    store = BundleStore(root)
    with store.open_current(expected_model_hash=None) as bundle:
        products = bundle.metadata.get(bundle.metadata.row_ids())
    gone = [products[3].product_id, products[40].product_id]
    ids = tmp_path / "withdraw.txt"
    ids.write_text(f"# withdrawn today\n{gone[0]}\n\n{gone[1]}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["index", "remove", "--index-root", str(root), "--ids", str(ids)])
    assert result.exit_code == 0, result.output
    assert "removed 2 product(s)" in result.output
    with store.open_current(expected_model_hash=None) as bundle:
        left = [p.product_id for p in bundle.metadata.get(bundle.metadata.row_ids())]
        assert len(left) == len(products) - 2 and not set(gone) & set(left)
        assert bundle.metadata.row_ids().tolist() == list(range(len(left)))
        vectors = bundle.index.get_vectors(np.arange(len(left)))
        assert bundle.load_array("title_vectors").shape[0] == len(left)
        hit = bundle.index.search(vectors[:1], 1)
        assert hit.ids[0, 0] == 0
        assert json.loads(bundle.read_attachment("index_info.json"))["build"]["mode"] == "remove"

    bad = tmp_path / "typo.txt"
    bad.write_text(f"{left[0]}\nno-such-product\n")
    result = runner.invoke(app, ["index", "remove", "--index-root", str(root), "--ids", str(bad)])
    assert result.exit_code == 2, result.output
    assert f"{bad}:2: 'no-such-product'" in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
