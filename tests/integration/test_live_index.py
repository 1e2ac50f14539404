"""Live index versions through the real stack: tritonserver, an index built through it, the gRPC
service following its index root. A new version published while queries run is served without a
restart and without one failed query; a damaged new version is refused and the old one kept."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.catalog.reader import read_catalog
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.job import IndexBuildConfig, build_index
from lenscope.client.search.engine import SearchSettings, open_engine
from lenscope.client.search.live import LiveEngine
from lenscope.client.service.server import serve
from lenscope.client.service.settings import ServiceSettings
from lenscope.client.triton.client import ClientConfig, TritonEmbedder

pytestmark = pytest.mark.integration

N = 40
POLL_S = 0.2


@pytest.fixture()
def root(make_index, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of a built index root (each test publishes into its own)."""
    catalog, index_root = make_index(N, 21)
    copy = tmp_path / "index"
    shutil.copytree(index_root, copy, symlinks=True)
    return catalog, copy


def _live_service(triton, index_root: Path):
    engine = open_engine(triton.grpc_url, str(index_root), SearchSettings(default_deadline_s=10.0), triton_timeout_s=10.0)
    live = LiveEngine(engine, str(index_root), poll_s=POLL_S).start()
    running = serve(live, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0))
    return live, running


def _subset_catalog(catalog: Path, drop: set[str], name: str) -> Path:
    """The catalog without the rows of `drop`, written beside it (image paths stay valid)."""
    out = catalog.parent / name
    lines = catalog.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(line for line in lines if not any(f'"{pid}"' in line for pid in drop)), encoding="utf-8")
    return out


def _metric(port: int, name: str) -> str:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_switch_under_load_fails_no_query(triton, root) -> None:
    catalog, index_root = root
    rows = read_catalog(catalog).rows
    dropped = {r.product_id for r in rows[:6]}
    texts = [r.title for r in rows[:6]]
    live, running = _live_service(triton, index_root)
    old_version = live.index_version
    results: list[tuple[str, set[str]]] = []
    failures: list[str] = []
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

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        while len(results) < 5 and not failures:
            time.sleep(0.05)
        with TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0)) as emb:
            report = build_index(IndexBuildConfig(catalog=_subset_catalog(catalog, dropped, "smaller.jsonl"),
                                                  index_root=index_root, batch_size=16, concurrency=2,
                                                  progress=False), emb)
        published = time.monotonic()
        while live.index_version != report.bundle_id and time.monotonic() - published < 30:
            time.sleep(0.05)
        served_after_s = time.monotonic() - published
        before = len(results)
        while len(results) < before + 10 and not failures and time.monotonic() - published < 60:
            time.sleep(0.05)
        assert live.index_version == report.bundle_id, f"still serving {live.index_version} {served_after_s:.1f}s after publishing"
        print(f"new version served {served_after_s:.2f}s after publishing (poll {POLL_S}s)")
        metric = _metric(running.metrics_port, "lenscope_index_version_info")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        running.stop(0.5)
        live.close()

    assert not failures, failures[:5]
    versions = {v for v, _ in results}
    assert versions == {old_version, report.bundle_id}, versions
    for version, ids in results:  # every response is one version's: the new one never names a dropped product
        if version == report.bundle_id:
            assert not ids & dropped, (version, ids & dropped)
    assert any(ids & dropped for v, ids in results if v == old_version), "the old version never showed a dropped product"
    assert f'version="{report.bundle_id}"' in metric, metric


def test_damaged_new_version_keeps_the_old_one(triton, root) -> None:
    catalog, index_root = root
    live, running = _live_service(triton, index_root)
    try:
        old_version = live.index_version
        store = BundleStore(index_root)
        # a newer version whose vectors were damaged after publishing: same size, different bytes
        damaged = old_version[:-6] + "ffffff"
        shutil.copytree(store.versions_dir / old_version, store.versions_dir / damaged)
        vectors = next((store.versions_dir / damaged / "index").glob("vectors*.npy"))
        data = bytearray(vectors.read_bytes())
        data[-5] ^= 0xFF
        vectors.write_bytes(bytes(data))
        store._switch_current(damaged)
        live.reload_now()
        deadline = time.monotonic() + 20
        while live.index_status().rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = live.index_status()
        assert status.rejected == 1 and damaged in status.last_rejected, status
        assert "checksum mismatch" in status.last_rejected[damaged] and str(vectors) in status.last_rejected[damaged]
        assert live.index_version == old_version and live.ready()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            resp = search_pb2_grpc.SearchServiceStub(channel).Search(search_pb2.SearchRequest(text="mug", top_k=3), timeout=30)
        assert resp.index_version == old_version and resp.hits
        assert 'outcome="rejected"} 1.0' in _metric(running.metrics_port, "lenscope_index_switches")
        time.sleep(3 * POLL_S)
        assert live.index_status().rejected == 1, "a rejected version is retried on every poll"
    finally:
        running.stop(0.5)
        live.close()


def test_removed_product_leaves_results_within_seconds(triton, root) -> None:
    """`index remove` (no Triton involved: it only reads the stored version) is served by the running
    service within 10 s; the product's own title no longer finds it."""
    from typer.testing import CliRunner

    from lenscope.client.cli.app import app

    catalog, index_root = root
    row = read_catalog(catalog).rows[7]
    live, running = _live_service(triton, index_root)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)

            def found() -> tuple[str, bool]:
                resp = stub.Search(search_pb2.SearchRequest(text=row.title, top_k=5), timeout=30)
                return resp.index_version, row.product_id in {h.product_id for h in resp.hits}

            old_version, present = found()
            assert present, "the product's own title should find it before the removal"
            ids = index_root.parent / "withdraw.txt"
            ids.write_text(row.product_id + "\n")
            started = time.monotonic()
            result = CliRunner().invoke(app, ["index", "remove", "--index-root", str(index_root), "--ids", str(ids)])
            assert result.exit_code == 0, result.output
            version, present = found()
            while (present or version == old_version) and time.monotonic() - started < 10:
                time.sleep(0.1)
                version, present = found()
            gone_after_s = time.monotonic() - started
        assert not present and version != old_version, f"still served {gone_after_s:.1f}s after index remove started"
        print(f"removed product gone from results {gone_after_s:.2f}s after 'index remove' started")
    finally:
        running.stop(0.5)
        live.close()


@pytest.mark.slow  # a service subprocess: ~25 s on 2 busy cores
def test_serve_search_switches_on_sighup(triton, root) -> None:
    """`lenscope serve search --index-poll-s 0` never looks by itself; SIGHUP makes it switch."""
    import os
    import signal
    import subprocess
    import sys

    from lenscope.client.index.removal import remove_products
    from lenscope.client.triton.ports import free_ports

    catalog, index_root = root
    row = read_catalog(catalog).rows[2]
    port, metrics = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lenscope.client.cli", "serve", "search", "--index-root", str(index_root),
         "--triton", triton.grpc_url, "--grpc-port", str(port), "--metrics-port", str(metrics),
         "--index-poll-s", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=120)
            except grpc.FutureTimeoutError:
                proc.kill()
                pytest.fail(f"the service did not start: {proc.communicate()[0][-3000:]}")
            stub = search_pb2_grpc.SearchServiceStub(channel)

            def version() -> str:
                return stub.Search(search_pb2.SearchRequest(text=row.title, top_k=3), timeout=30).index_version

            old = version()
            ids = index_root.parent / "sighup.txt"
            ids.write_text(row.product_id + "\n")
            new = remove_products(index_root, ids).bundle_id
            time.sleep(1.0)
            assert version() == old, "switched with polling off and no SIGHUP"
            os.kill(proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while version() != new and time.monotonic() < deadline:
                time.sleep(0.1)
            assert version() == new
            assert proc.poll() is None, "SIGHUP stopped the service"
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "index_switched" in out, out[-2000:]
