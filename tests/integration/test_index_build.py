"""`lenscope index build` through a real tritonserver: a generated catalog with a few broken rows and
images is indexed, every row is accounted for, and the published bundle serves the model it was built
with (self-retrieval, calibration, title vectors)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lenscope.client.cli import index as index_cli
from lenscope.client.ranking.calibration import load_calibration
from lenscope.client.synth.catalog import generate_catalog
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.job import IndexBuildConfig, build_index
from lenscope.client.core.manifest import Manifest
from lenscope.client.triton.client import ClientConfig, TritonEmbedder

pytestmark = pytest.mark.integration

N = 60


@pytest.fixture(scope="module")
def broken_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 generated products; 2 corrupt catalog images, 1 missing, and one bad row appended."""
    root = tmp_path_factory.mktemp("catalog")
    paths = generate_catalog(root, N, seed=3, image_size=64)
    png = (root / "images/catalog/p000004.png").read_bytes()
    (root / "images/catalog/p000004.png").write_bytes(png[: len(png) // 2])  # truncated PNG
    (root / "images/catalog/p000009.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # PNG magic, no image
    (root / "images/catalog/p000014.png").unlink()
    with open(paths.catalog, "a", encoding="utf-8") as f:
        f.write(json.dumps({"product_id": "bad-row", "title": "x", "image": "images/catalog/p000000.png",
                            "category": "mug", "color": "red", "pattern": "solid", "split": "holdout"}) + "\n")
    return paths.catalog


@pytest.fixture(scope="module")
def built(broken_catalog: Path, triton, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("index")
    with TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0, max_concurrency=32)) as emb:
        report = build_index(IndexBuildConfig(catalog=broken_catalog, index_root=root, batch_size=16, concurrency=2,
                                              progress=False), emb)
    return root, report


def test_counts_and_rejects(built) -> None:
    _, report = built
    assert report.rows_read == N + 1
    assert report.indexed == N - 3
    assert report.rejected_by_reason == {"image_rejected": 2, "invalid_row": 1, "missing_image": 1}
    assert report.photos_skipped_by_reason == {}
    rejects = [json.loads(t) for t in report.rejects_path.read_text().splitlines()]
    by_pid = {r["product_id"]: r for r in rejects}
    assert set(by_pid) == {"p000004", "p000009", "p000014", "bad-row"}
    assert "corrupt" in by_pid["p000004"]["message"] and by_pid["p000004"]["reason"] == "image_rejected"
    assert by_pid["p000014"]["reason"] == "missing_image" and by_pid["bad-row"]["line"] == N + 1
    assert "split" in by_pid["bad-row"]["message"]
    assert report.rows_per_s > 0
    print(f"\nindexing throughput through Triton: {report.rows_per_s:.1f} rows/s "
          f"({report.indexed} rows, image + photo + title each, embed {report.seconds['embed']:.2f}s)")


def test_bundle_serves_the_model_that_built_it(built, embedder: TritonEmbedder, manifest: Manifest,
                                               broken_catalog: Path) -> None:
    root, report = built
    assert report.model_hash == manifest.model_hash == embedder.manifest()["model_hash"]
    with BundleStore(root).open_current(expected_model_hash=manifest.model_hash) as b:
        ids = b.metadata.row_ids()
        products = b.metadata.get(ids)
        assert ids.tolist() == list(range(N - 3))
        assert [p.product_id for p in products][:5] == ["p000000", "p000001", "p000002", "p000003", "p000005"]
        # a catalog image, embedded again, finds its own product first
        for rid in (0, 20, N - 4):
            image = (broken_catalog.parent / products[rid].image_path).read_bytes()
            (res,) = embedder.embed_images([image])
            hit = b.index.search(res.embedding[None].astype(np.float32), 3)
            assert hit.ids[0, 0] == rid and hit.scores[0, 0] > 0.999
        titles = b.load_array("title_vectors")
        (t,) = embedder.embed_texts([products[7].title])
        np.testing.assert_allclose(titles[7], t.embedding, atol=1e-5)
        photos = b.load_array("photo_vectors")
        assert photos.shape == titles.shape == (N - 3, manifest.embed_dim) and np.isfinite(photos).all()
        for name, labels in manifest.labels.items():
            probs = b.load_array(f"attr_probs_{name}")
            assert probs.shape == (N - 3, len(labels))
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)

        cal = load_calibration(b.attachment_path("calibration.json"))
        assert cal.model_hash == manifest.model_hash
        assert set(cal.pairs) == {"text_image", "image_title", "image_image", "text_title"}  # the self-check's fit
        xs = np.linspace(-1, 1, 401)
        for pair in cal.pairs:
            assert np.all(np.diff(cal.apply(pair, xs)) >= 0), pair
        info = json.loads(b.read_attachment("index_info.json"))
        assert info["counts"]["indexed"] == N - 3 and set(info["calibration"]["notes"]) == set(cal.pairs)
        assert info["ranking"]["source"] == "self-check" and b.read_attachment("ranking_policy.json") is not None
        assert "modality_gap_vs_image_image" in info["calibration"]
        assert info["catalog"]["path"] == str(broken_catalog.resolve())
        assert b.read_attachment("fusion.json") is not None


def test_cli_stops_with_exit_3_when_triton_is_unreachable(broken_catalog: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = typer.Typer()
    app.command()(index_cli.index_build_command)
    res = CliRunner().invoke(app, ["--catalog", str(broken_catalog), "--index-root", str(tmp_path / "idx"),
                                   "--triton", f"127.0.0.1:{port}", "--timeout", "1", "--no-progress"])
    assert res.exit_code == 3, res.output
    assert "UNAVAILABLE" in res.output and "resume" in res.output
    assert BundleStore(tmp_path / "idx").current_version() is None


def test_shipped_fit_is_not_applied_to_a_catalog_it_was_not_fitted_on(triton, tmp_path: Path) -> None:
    """The default model ships fusion weights + calibration fitted on the procedural catalog of its
    training run, with no catalog binding: an index of another catalog does not apply them, says why
    in its info and log, and serves its own self-checked fit instead."""
    import lenscope.export

    weights = Path(lenscope.export.__file__).parent / "weights"
    catalog = generate_catalog(tmp_path / "cat", 20, seed=4, image_size=64).catalog
    with TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0)) as emb:
        report = build_index(IndexBuildConfig(catalog=catalog, index_root=tmp_path / "idx", progress=False,
                                              use_shipped_fit=True), emb)
    ranking = report.info["ranking"]
    assert ranking["shipped_fit"]["applied"] is False and "applied nowhere else" in ranking["shipped_fit"]["reason"]
    assert ranking["source"] == "self-check" and set(ranking["decisions"]) == {"text", "image", "image+text"}
    with BundleStore(tmp_path / "idx").open_current(expected_model_hash=report.model_hash) as b:
        assert json.loads(b.read_attachment("fusion.json")) != json.loads((weights / "lenscope-tiny.fusion.json").read_text())
        policy = json.loads(b.read_attachment("ranking_policy.json"))
    assert policy["source"] == "self-check" and "applied nowhere else" in policy["notes"]["shipped_fit"]


REAL_PRODUCTS = Path(__file__).resolve().parents[1] / "data" / "real-products" / "products.csv"


def test_real_products_catalog_indexes_as_is(triton, embedder: TritonEmbedder, tmp_path: Path) -> None:
    """The vendored real-products CSV (catalog format v2: one row per image, roles in `view`, colour
    variants, attributes only where known) through the real Triton with the shipped model."""
    from lenscope.client.ranking.facets import AttributeTable, FilterSpec, facet_counts

    report = build_index(IndexBuildConfig(catalog=REAL_PRODUCTS, index_root=tmp_path / "idx", batch_size=8,
                                          concurrency=2, progress=False), embedder)
    assert (report.rows_read, report.indexed, report.rejected) == (36, 36, 0)
    assert report.photos_skipped_by_reason == {"conflicting_attribute": 1}  # the bottle's alt photo says "white"
    with BundleStore(tmp_path / "idx").open_current(expected_model_hash=report.model_hash) as b:
        ids = b.metadata.row_ids()
        products = {p.product_id: p for p in b.metadata.get(ids)}
        cap = products["solidus-cap"]
        assert cap.image_path == "images/solidus/solidus_cap_black_1.jpg"
        assert [role for _, role in cap.images] == ["main", "alt1", "back"]
        assert products["solidus-cap-red"].variant_of == "solidus-cap"
        # the index embeds the main image: embedded again, it finds its own product first
        (res,) = embedder.embed_images([(REAL_PRODUCTS.parent / cap.image_path).read_bytes()])
        hit = b.index.search(res.embedding[None].astype(np.float32), 1)
        assert hit.ids[0, 0] == cap.row_id and hit.scores[0, 0] > 0.999
        assert b.load_array("photo_vectors") is None  # no image has role "photo"

        names = b.metadata.attribute_names()
        assert names == sorted(["category", "color", "gender", "source", "title_source"])
        columns = b.metadata.attribute_values(ids, names)
        table = AttributeTable.from_columns({n: [v[0] if v else None for v in col] for n, col in columns.items()})
        counts = facet_counts(table, FilterSpec(), names)
    assert "unknown" not in counts["color"] and "" not in counts["color"]
    assert sum(counts["color"].values()) == 36
    assert counts["gender"] == {"man": 7, "woman": 7}  # the 22 products without a gender are absent, not "unknown"
    assert counts["category"]["cap"] == 7
