"""Index bundles: round trip, model-version refusal, corruption detection with fallback, and blue-green
publishing that survives a writer killed (SIGKILL) at several points of a build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest

from lenscope.client.vectors.faiss_index import FaissIndex, FaissIndexConfig
from lenscope.client.index.bundle import (
    BundleCorrupt,
    BundleError,
    ModelVersionMismatch,
    open_bundle,
)
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.metadata import Product

DIM = 32
MODEL = "sha256:1111aaaa"
OTHER_MODEL = "sha256:2222bbbb"
CONFIG = FaissIndexConfig(kind="hnsw", hnsw={"m": 16, "ef_construction": 64, "ef_search": 64})


@pytest.fixture(autouse=True, scope="module")
def _single_faiss_thread():
    """One OpenMP thread: on a shared 2-core box, OpenMP barriers under oversubscription turn a 1 s
    HNSW build into 30 s and batch-1 search 10x slower; results are identical either way."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.7 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(n: int, seed: int) -> tuple[FaissIndex, list[Product], np.ndarray, np.ndarray]:
    vectors = unit_vectors(n, seed)
    ids = np.arange(n, dtype=np.int64) * 2 + 100
    index = FaissIndex(DIM, CONFIG)
    index.add(ids, vectors)
    products = [
        Product(
            row_id=int(i), product_id=f"s{seed}-{i}", title=f"item {i}", attributes={"color": ["red", "blue"][i % 2]}
        )
        for i in ids
    ]
    return index, products, ids, vectors


def publish(store: BundleStore, n: int, seed: int, model: str = MODEL) -> str:
    index, products, _, _ = build(n, seed)
    return store.publish(model_manifest_hash=model, index=index, products=products)


def assert_serves(store: BundleStore, n: int, seed: int) -> None:
    """`current` opens and answers as the build (n, seed) would: own vector is the top hit, exact score."""
    _, _, ids, vectors = build(n, seed)
    with store.open_current(expected_model_hash=MODEL) as bundle:
        assert bundle.fallback_reason is None
        assert bundle.manifest.counts.vectors == n
        result = bundle.index.search(vectors[:50], 5)
        assert (result.ids[:, 0] == ids[:50]).mean() >= 0.95
        np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5, rtol=0)
        assert bundle.metadata.get(ids[:1])[0].product_id == f"s{seed}-{ids[0]}"


def test_round_trip(tmp_path):
    store = BundleStore(tmp_path)
    index, products, ids, vectors = build(600, seed=1)
    version = store.publish(model_manifest_hash=MODEL, index=index, products=products)
    assert store.current_version() == version and store.versions() == [version]
    assert os.readlink(tmp_path / "current") == f"versions/{version}"
    with store.open_current(expected_model_hash=MODEL) as bundle:
        m = bundle.manifest
        assert (m.model_manifest_hash, m.embedding_dim, m.counts.vectors, m.counts.products) == (MODEL, DIM, 600, 600)
        assert m.index_backend == "faiss" and FaissIndexConfig.model_validate(m.index_config) == CONFIG
        assert set(m.files) == {
            "metadata.sqlite",
            "index/faiss_index.json",
            "index/vectors.npy",
            "index/ids.npy",
            "index/index.faiss",
        }
        expected = index.search(vectors[:20], 10)
        got = bundle.index.search(vectors[:20], 10)
        np.testing.assert_array_equal(got.ids, expected.ids)
        np.testing.assert_array_equal(got.scores, expected.scores)
        assert [p.product_id for p in bundle.metadata.get(got.ids[0, :3])] == [f"s1-{i}" for i in got.ids[0, :3]]
        bundle.require_model(MODEL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".publish.lock", "current", "versions"]


def test_model_version_mismatch_is_refused_not_fallen_back(tmp_path):
    store = BundleStore(tmp_path)
    publish(store, 300, seed=1, model=OTHER_MODEL)
    publish(store, 300, seed=2, model=MODEL)
    publish(store, 300, seed=3, model=OTHER_MODEL)
    with pytest.raises(ModelVersionMismatch) as info:
        store.open_current(expected_model_hash=MODEL)  # an older MODEL version exists; still refused
    message = str(info.value)
    assert OTHER_MODEL in message and MODEL in message and "not comparable" in message
    with pytest.raises(ModelVersionMismatch, match="2222bbbb"):
        open_bundle(store.versions_dir / store.current_version(), expected_model_hash=MODEL)
    with store.open_current(expected_model_hash=OTHER_MODEL) as bundle:
        with pytest.raises(ModelVersionMismatch, match="1111aaaa"):
            bundle.require_model(MODEL)


@pytest.mark.parametrize("damaged", ["index/vectors.npy", "metadata.sqlite", "index/index.faiss"])
def test_corruption_detected_and_previous_version_served(tmp_path, damaged):
    store = BundleStore(tmp_path)
    publish(store, 400, seed=1)
    newest = publish(store, 500, seed=2)
    file = store.versions_dir / newest / damaged
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content: only the checksum can tell
    file.write_bytes(bytes(raw))

    with pytest.raises(BundleCorrupt, match=f"{Path(damaged).name}: checksum mismatch"):
        open_bundle(store.versions_dir / newest, expected_model_hash=MODEL)
    with pytest.raises(BundleCorrupt):
        store.open_current(expected_model_hash=MODEL, fallback=False)
    with store.open_current(expected_model_hash=MODEL) as bundle:
        assert bundle.manifest.counts.vectors == 400  # the previous version
        assert newest in bundle.fallback_reason and "checksum mismatch" in bundle.fallback_reason
        _, _, ids, vectors = build(400, seed=1)
        assert (bundle.index.search(vectors[:20], 1).ids[:, 0] == ids[:20]).mean() >= 0.95


def test_missing_or_unreadable_files_are_bundle_errors(tmp_path):
    store = BundleStore(tmp_path)
    version = publish(store, 300, seed=1)
    path = store.versions_dir / version
    (path / "index" / "ids.npy").unlink()
    with pytest.raises(BundleError, match=r"index/ids\.npy is missing"):
        open_bundle(path, expected_model_hash=MODEL)
    (path / "bundle.json").write_text("{ truncated")
    with pytest.raises(BundleError, match="bundle.json: unreadable"):
        open_bundle(path, expected_model_hash=MODEL)
    with pytest.raises(BundleError, match="no older version is usable"):
        store.open_current(expected_model_hash=MODEL)
    with pytest.raises(BundleError, match="nothing published yet"):
        BundleStore(tmp_path / "empty").open_current(expected_model_hash=MODEL)


def test_inconsistent_build_is_never_published(tmp_path):
    store = BundleStore(tmp_path)
    good = publish(store, 300, seed=1)
    index, products, _, _ = build(300, seed=2)
    with pytest.raises(BundleError, match="300 vectors but metadata has 299 products"):
        store.publish(model_manifest_hash=MODEL, index=index, products=products[:-1])
    shifted = [p.model_copy(update={"row_id": p.row_id + 1}) for p in products]
    with pytest.raises(BundleError, match="indexed ids have no metadata row"):
        store.publish(model_manifest_hash=MODEL, index=index, products=shifted)
    with pytest.raises(BundleError, match="refusing to publish an empty index"):
        store.publish(model_manifest_hash=MODEL, index=FaissIndex(DIM), products=[])
    assert store.current_version() == good and store.versions() == [good]
    assert not any(p.name.endswith(".tmp") for p in store.versions_dir.iterdir())
    assert_serves(store, 300, seed=1)


def test_old_versions_are_collected(tmp_path):
    store = BundleStore(tmp_path, keep_versions=2)
    published = [publish(store, 200, seed=s) for s in range(4)]
    assert store.versions() == published[-2:]
    assert store.current_version() == published[-1]


def test_one_writer_at_a_time(tmp_path):
    store = BundleStore(tmp_path)
    with store.writer(model_manifest_hash=MODEL, index=FaissIndex(DIM), allow_empty=True) as first:
        with pytest.raises(BundleError, match="another index publish holds"):
            store.writer(model_manifest_hash=MODEL, index=FaissIndex(DIM))
        assert first.path.name.endswith(".tmp") and first.path.is_dir()
    assert store.current_version() == first.bundle_id  # the first one published (allow_empty)


# -- crash safety: a writer in a subprocess, killed with SIGKILL at chosen points ---------------------

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from test_index_bundle import MODEL, build
    from lenscope.client.index.bundle_store import BundleStore

    root, stage = sys.argv[1], sys.argv[2]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_rename, real_replace = os.rename, os.replace
    if stage == "before_rename":  # built, fsynced and verified, not yet renamed into versions/
        os.rename = lambda src, dst: die() if str(src).endswith(".tmp") else real_rename(src, dst)
    if stage == "before_swap":  # renamed into versions/, temp symlink made, `current` not yet replaced
        os.replace = lambda src, dst: die() if os.path.basename(dst) == "current" else real_replace(src, dst)

    index, products, ids, vectors = build(900, seed=7)
    writer = BundleStore(root).writer(model_manifest_hash=MODEL, index=type(index)(index.dim, index.config))
    writer.index.add(ids[:400], vectors[:400])
    writer.metadata.insert_many(products[:400])
    if stage == "mid_build":  # the parent kills us while we wait here
        print("BUILDING", writer.path, flush=True)
        sys.stdin.readline()
    writer.index.add(ids[400:], vectors[400:])
    writer.metadata.insert_many(products[400:])
    writer.commit()
    print("PUBLISHED", flush=True)
    """
)


@pytest.mark.parametrize("stage", ["mid_build", "before_rename", "before_swap"])
def test_writer_killed_mid_publish_leaves_current_serving(tmp_path, stage):
    store = BundleStore(tmp_path / "root")
    old = publish(store, 300, seed=1)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store.root), stage, str(Path(__file__).parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        if stage == "mid_build":
            line = proc.stdout.readline()
            assert line.startswith("BUILDING"), (line, proc.stderr.read())
            assert Path(line.split(maxsplit=1)[1].strip()).is_dir()
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, err
    assert "PUBLISHED" not in out

    # The served version is untouched and still answers correctly.
    assert store.current_version() == old
    assert_serves(store, 300, seed=1)
    leftovers = sorted(p.name for p in store.versions_dir.iterdir() if p.name != old)
    if stage == "before_swap":
        # Complete and verified but never switched to: listed, not served; its temp link is debris.
        assert len(leftovers) == 1 and not leftovers[0].endswith(".tmp")
        assert [p.name for p in store.root.glob(".current.*")]
    else:
        assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")
        assert store.versions() == [old]  # .tmp builds are never listed

    # The next publish clears the debris and switches cleanly.
    new = publish(store, 500, seed=2)
    assert store.current_version() == new
    assert not any(p.name.endswith(".tmp") for p in store.versions_dir.iterdir())
    assert not list(store.root.glob(".current.*"))
    with store.open_current(expected_model_hash=MODEL) as bundle:
        assert bundle.version == new and bundle.manifest.counts.vectors == 500
    manifest = json.loads((store.versions_dir / new / "bundle.json").read_text())
    assert manifest["counts"] == {"vectors": 500, "products": 500}


def test_attachments_are_published_and_checksummed(tmp_path: Path) -> None:
    from lenscope.client.vectors.faiss_index import FaissIndex

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(20, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = BundleStore(tmp_path / "root")
    index = FaissIndex(8)
    index.add(np.arange(20), vecs)
    with store.writer(model_manifest_hash="m1", index=index) as w:
        w.metadata.insert_many([{"row_id": i, "product_id": f"p{i}", "title": f"t{i}", "image_path": f"{i}.png"} for i in range(20)])
        w.attach("calibration.json", b'{"x": 1}')
        w.attach_array("title_vectors", vecs[::-1])
        with pytest.raises(ValueError, match="attachment name"):
            w.attach("../escape", b"")
    with store.open_current(expected_model_hash="m1") as bundle:
        assert bundle.read_attachment("calibration.json") == b'{"x": 1}'
        np.testing.assert_array_equal(bundle.load_array("title_vectors"), vecs[::-1])
        assert bundle.read_attachment("absent.json") is None and bundle.load_array("absent") is None
        path = bundle.attachment_path("calibration.json")
    path.chmod(0o644)
    path.write_bytes(b'{"x": 2}')
    with pytest.raises(BundleError, match="calibration.json"):
        store.open_current(expected_model_hash="m1", fallback=False)


def test_damaged_faiss_file_behind_a_rewritten_manifest_is_a_user_error_naming_it(tmp_path) -> None:
    """A FAISS file damaged in a way the checksums cannot show (the manifest was rewritten after the
    damage) fails as a BundleError naming the file, and `index inspect` exits 2 with one line."""
    import json as _json

    import numpy as _np
    from typer.testing import CliRunner

    from lenscope.client.cli.app import app
    from lenscope.client.index.bundle import BundleError, file_sha256, open_bundle
    from lenscope.client.index.bundle_store import BundleStore
    from lenscope.client.vectors.faiss_index import FaissIndex, FaissIndexConfig

    rng = _np.random.default_rng(0)
    v = rng.normal(size=(300, 16)).astype(_np.float32)
    v /= _np.linalg.norm(v, axis=1, keepdims=True)
    index = FaissIndex(16, FaissIndexConfig(kind="hnsw"))
    index.add(_np.arange(300), v)
    root = tmp_path / "root"
    version = BundleStore(root).publish(model_manifest_hash="m", index=index,
                                        products=[{"row_id": i, "product_id": f"p{i}"} for i in range(300)])
    path = root / "versions" / version
    faiss_file = path / "index" / "index.faiss"
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    manifest = _json.loads((path / "bundle.json").read_text())
    manifest["files"]["index/index.faiss"] = {"sha256": file_sha256(faiss_file), "size": faiss_file.stat().st_size}
    (path / "bundle.json").write_text(_json.dumps(manifest))
    with pytest.raises(BundleError, match="index.faiss"):
        open_bundle(path, expected_model_hash="m")
    result = CliRunner().invoke(app, ["index", "inspect", "--index-root", str(root)])
    assert result.exit_code == 2, result.output
    assert "index.faiss" in result.output and "Traceback" not in result.output
