"""Live catalog changes through the Milvus backend, on the real stack: tritonserver, indexes built
through it into Milvus Lite, the gRPC service following its index root (each version = a bundle
naming its own collection; the alias moves on publish).

- An incremental build of a changed catalog (a new collection from the served collection's vectors
  plus the embedded changes) is served while queries run: 0 failed queries, every response's hits
  belong to the version it names, and the build ranks exactly like a full build of the same catalog.
- `index remove` publishes a collection without a product; it is gone from results within 10 s.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from lenscope.client.api import search_pb2, search_pb2_grpc  # noqa: E402
from lenscope.client.catalog.reader import read_catalog  # noqa: E402
from lenscope.client.index.bundle_store import BundleStore  # noqa: E402
from lenscope.client.index.job import IndexBuildConfig, build_index  # noqa: E402
from lenscope.client.index.removal import remove_products  # noqa: E402
from lenscope.client.search.engine import SearchEngine, SearchSettings, open_engine  # noqa: E402
from lenscope.client.search.live import LiveEngine  # noqa: E402
from lenscope.client.search.models import SearchQuery  # noqa: E402
from lenscope.client.service.server import serve  # noqa: E402
from lenscope.client.service.settings import ServiceSettings  # noqa: E402
from lenscope.client.triton.client import ClientConfig, TritonEmbedder  # noqa: E402

pytestmark = pytest.mark.integration

N = 40
POLL_S = 0.2
ALIAS = "lenscope_serving"


def _build(catalog: Path, root: Path, db: Path, url: str, **kw):
    with TritonEmbedder(ClientConfig(url=url, timeout_s=30.0, max_concurrency=16)) as emb:
        return build_index(IndexBuildConfig(catalog=catalog, index_root=root, batch_size=16, concurrency=2,
                                            progress=False, vector_backend="milvus", milvus_uri=str(db),
                                            milvus_alias=ALIAS, **kw), emb)


@pytest.fixture()
def milvus_root(make_index, triton, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(catalog, index root, Milvus Lite db) serving a Milvus version of the session's 40-product catalog.

    Made the way a shop would move to Milvus: a build with `--backend milvus` into a copy of the
    FAISS root, which reuses every stored vector (nothing embedded) into a new collection."""
    catalog, faiss_root = make_index(N, 21)  # the same build as test_live_index.py (session cache)
    root, db = tmp_path / "index", tmp_path / "milvus.db"
    shutil.copytree(faiss_root, root, symlinks=True)
    report = _build(catalog, root, db, triton.grpc_url)
    build = report.info["build"]
    assert report.indexed == N and build["mode"] == "incremental" and (build["reused"], build["embedded"]) == (N, 0)
    with BundleStore(root).open_current(expected_model_hash=None, index_options={"milvus": {"uri": str(db)}}) as b:
        assert b.manifest.index_backend == "milvus"
    return catalog, root, db


def _changed(catalog: Path, drop: set[str], retitle: set[str]) -> Path:
    out = catalog.parent / "milvus-changed.jsonl"
    rows = []
    for line in catalog.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["product_id"] in drop:
            continue
        if row["product_id"] in retitle:
            row["title"] += " (new edition)"
        rows.append(json.dumps(row) + "\n")
    out.write_text("".join(rows), encoding="utf-8")
    return out


def _live_service(triton, root: Path, db: Path):
    options = {"milvus": {"uri": str(db)}}
    engine = open_engine(triton.grpc_url, str(root), SearchSettings(default_deadline_s=10.0), triton_timeout_s=10.0,
                         vector_backend="milvus", index_options=options)
    live = LiveEngine(engine, str(root), poll_s=POLL_S, index_options=options, vector_backend="milvus").start()
    running = serve(live, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0))
    return live, running


def _collection(root: Path, version: str) -> str:
    state = json.loads((root / "versions" / version / "index" / "milvus_index.json").read_text())
    return state["config"]["collection"]


def _engine(url: str, root: Path, db: Path) -> SearchEngine:
    bundle = BundleStore(root).open_current(expected_model_hash=None, index_options={"milvus": {"uri": str(db)}})
    return SearchEngine(TritonEmbedder(ClientConfig(url=url, timeout_s=30.0)), bundle,
                        SearchSettings(default_deadline_s=30.0))


@pytest.mark.slow  # three builds through Triton into Milvus Lite and a service under load (~1 min on 2 busy cores)
def test_incremental_milvus_build_switches_under_load_and_ranks_like_a_full_build(triton, milvus_root,
                                                                                 tmp_path: Path) -> None:
    catalog, root, db = milvus_root
    rows = read_catalog(catalog).rows
    dropped = {r.product_id for r in rows[:5]}
    retitled = {rows[7].product_id, rows[8].product_id}
    texts = [r.title for r in rows[:5]]
    changed = _changed(catalog, dropped, retitled)
    live, running = _live_service(triton, root, db)
    old_version = live.index_version
    results: list[tuple[str, set[str]]] = []
    failures: list[str] = []
    not_ready: list[float] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            i = worker
            while not stop.is_set():
                try:
                    resp = stub.Search(search_pb2.SearchRequest(text=texts[i % len(texts)], top_k=N), timeout=30)
                    results.append((resp.index_version, {h.product_id for h in resp.hits}))
                except grpc.RpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")
                i += 1

    def health() -> None:  # what a readiness probe sees, every 0.2 s through the switch
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service="lenscope.v1.SearchService"), timeout=10)
                    serving = status.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    serving = False
                if not serving:
                    not_ready.append(time.monotonic())
                time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)] + [threading.Thread(target=health)]
    try:
        for t in threads:
            t.start()
        while len(results) < 5 and not failures:
            time.sleep(0.05)
        incr = _build(changed, root, db, triton.grpc_url, refit_fraction=0.0)  # refit: same fit as a full build
        published = time.monotonic()
        while live.index_version != incr.bundle_id and time.monotonic() - published < 30:
            time.sleep(0.05)
        served_after_s = time.monotonic() - published
        before = len(results)
        while len(results) < before + 10 and not failures and time.monotonic() - published < 60:
            time.sleep(0.05)
        assert live.index_version == incr.bundle_id, f"still serving {live.index_version} {served_after_s:.1f}s later"
        print(f"Milvus: new version served {served_after_s:.2f}s after publishing (poll {POLL_S}s)")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        running.stop(0.5)
        live.close()

    build = incr.info["build"]
    assert build["mode"] == "incremental" and build["previous"] == old_version, build
    assert (build["embedded"], build["removed"], build["reused"]) == (2, 5, N - 7), build
    assert _collection(root, incr.bundle_id) != _collection(root, old_version)
    assert not failures, failures[:5]
    assert not not_ready, "readiness dropped during the switch"
    versions = {v for v, _ in results}
    assert versions == {old_version, incr.bundle_id}, versions
    for version, ids in results:  # every response is one version's
        if version == incr.bundle_id:
            assert not ids & dropped, (version, ids & dropped)
    assert any(ids & dropped for v, ids in results if v == old_version), "the old version never showed a dropped product"

    full = _build(changed, tmp_path / "full", db, triton.grpc_url, full=True)
    assert full.info["build"]["mode"] == "full" and full.indexed == incr.indexed == N - 5
    a, b = _engine(triton.grpc_url, root, db), _engine(triton.grpc_url, tmp_path / "full", db)
    try:
        ids = np.arange(incr.indexed)
        assert ([p.product_id for p in a.bundle.metadata.get(ids)] == [p.product_id for p in b.bundle.metadata.get(ids)])
        np.testing.assert_allclose(a.bundle.index.get_vectors(ids), b.bundle.index.get_vectors(ids), atol=1e-5)
        queries = [SearchQuery(text=r.title, top_k=10) for r in read_catalog(changed).rows[::5]]
        queries += [SearchQuery(image=(catalog.parent / r.image).read_bytes(), top_k=10)
                    for r in read_catalog(changed).rows[2::9]]
        for q in queries:
            ra, rb = a.search(q), b.search(q)
            assert [h.product_id for h in ra.hits] == [h.product_id for h in rb.hits], q.text
            np.testing.assert_allclose([h.score for h in ra.hits], [h.score for h in rb.hits], atol=1e-4)
    finally:
        for e in (a, b):
            e.close()
            e.bundle.close()
            e.embedder.close()


def test_milvus_removed_product_leaves_results_within_seconds(triton, milvus_root, tmp_path: Path) -> None:
    """`index remove` on a Milvus root (no Triton call: it reads only the served collection and bundle)
    publishes a new collection; the running service serves it and the product's own title no longer
    finds it within 10 s."""
    catalog, root, db = milvus_root
    row = read_catalog(catalog).rows[7]
    live, running = _live_service(triton, root, db)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)

            def found() -> tuple[str, bool]:
                resp = stub.Search(search_pb2.SearchRequest(text=row.title, top_k=5), timeout=30)
                return resp.index_version, row.product_id in {h.product_id for h in resp.hits}

            old_version, present = found()
            assert present, "the product's own title should find it before the removal"
            ids = tmp_path / "withdraw.txt"
            ids.write_text(row.product_id + "\n")
            started = time.monotonic()
            report = remove_products(root, ids, milvus_alias=ALIAS)
            removal_s = time.monotonic() - started
            version, present = found()
            while (present or version == old_version) and time.monotonic() - started < 10:
                time.sleep(0.1)
                version, present = found()
            gone_after_s = time.monotonic() - started
        assert not present and version == report.bundle_id, f"still served {gone_after_s:.1f}s after index remove started"
        assert _collection(root, version) != _collection(root, old_version)
        print(f"Milvus: index remove took {removal_s:.2f}s; product gone from results {gone_after_s:.2f}s after it started")
    finally:
        running.stop(0.5)
        live.close()
