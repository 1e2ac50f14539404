"""The Milvus path end to end, through the CLI and the environment Kubernetes would give the pod:
`lenscope index build --backend milvus` (real Triton), then `lenscope serve search` started from the
rendered gpu overlay's environment (ConfigMap + Secret reference; only addresses and ports rewritten
to this machine), queried over gRPC and with `lenscope search`. Against Milvus Lite in-process, and against `milvus-lite server`
in its own process reached over the network as a cluster is, with a blue-green switch (new build,
alias moved, a second service on the new version, traffic moved, the old one stopped) while queries
run: 0 failed queries; then `lenscope index prune` drops only the collection no version uses.

Slow tier: two or three index builds through Triton and several service processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from lenscope.client.api import search_pb2, search_pb2_grpc  # noqa: E402
from lenscope.client.index.bundle_store import BundleStore  # noqa: E402
from lenscope.client.index.milvus_versions import LEDGER  # noqa: E402
from lenscope.client.synth.catalog import generate_catalog  # noqa: E402
from lenscope.client.triton.ports import free_ports  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "root:Milvus"  # what the Secret lenscope-milvus would hold
ALIAS = "lenscope_serving"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lenscope.client.cli", *args], capture_output=True, text=True,
                          env=env or _base_env(), timeout=timeout)
    assert proc.returncode == 0, f"lenscope {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _base_env() -> dict[str, str]:
    """This process's environment without LENSCOPE_* settings (the pod gets only the rendered ones)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENSCOPE_")}
    env["LENSCOPE_MILVUS_TOKEN"] = TOKEN
    return env


def rendered_search_env(overlay: str = "gpu") -> dict[str, object]:
    """The search container's environment as `kubectl kustomize` renders it (ConfigMap + env)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "lenscope-search")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "search")
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def pod_env(triton_url: str, milvus_uri: str) -> dict[str, str]:
    """The rendered environment with cluster addresses replaced by this machine's; everything else as
    rendered (an unknown variable would stop the service: the settings refuse it)."""
    rendered = rendered_search_env()
    assert rendered["LENSCOPE_VECTOR_BACKEND"] == "milvus"
    assert rendered["LENSCOPE_MILVUS_TOKEN"] == {"secretKeyRef": {"name": "lenscope-milvus", "key": "token"}}
    assert str(rendered["LENSCOPE_TRITON_URL"]).startswith("dns:///")
    grpc_port, metrics_port = free_ports(2)
    env = _base_env()
    env.update({k: str(v) for k, v in rendered.items() if isinstance(v, str)})
    env.update({
        "LENSCOPE_TRITON_URL": "dns:///" + triton_url,  # same resolver path as dns:///triton-headless:8001
        "LENSCOPE_MILVUS_URI": milvus_uri,
        "LENSCOPE_MILVUS_TOKEN": TOKEN,  # the Secret's value
        "LENSCOPE_HOST": "127.0.0.1",
        "LENSCOPE_GRPC_PORT": str(grpc_port),
        "LENSCOPE_METRICS_PORT": str(metrics_port),
        "HOME": str(env.get("HOME", "/tmp")),
    })
    return env


class Service:
    """`lenscope serve search` in its own process, from a pod environment."""

    def __init__(self, index_root: Path, env: dict[str, str], log: Path):
        self.port = int(env["LENSCOPE_GRPC_PORT"])
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lenscope.client.cli", "serve", "search",
                                      "--index-root", str(index_root)], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.log = log
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = search_pb2_grpc.SearchServiceStub(self.channel)

    def wait_serving(self, timeout: float = 120) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"service exited {self.proc.returncode}:\n{self.log.read_text()}"
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service="lenscope.v1.SearchService"), timeout=2)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"service not serving after {timeout}s:\n{self.log.read_text()}")

    def search(self, text: str, **filters: str) -> search_pb2.SearchResponse:
        request = search_pb2.SearchRequest(text=text, top_k=5, filters=[
            search_pb2.Filter(facet=k, values=[v]) for k, v in filters.items()])
        return self.stub.Search(request, timeout=10)

    def cli_search(self, text: str, *filters: str) -> dict:
        """The same query through the CLI a user types: `lenscope search --json` against this service."""
        args = ["search", "--text", text, "--top-k", "5", "--target", f"127.0.0.1:{self.port}", "--timeout", "10",
                "--json"]
        for f in filters:
            args += ["--filter", f]
        return json.loads(_cli(*args).stdout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.channel.close()
        self._log.close()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("milvus-catalog"), 40, seed=5, image_size=64).catalog


def _build(catalog: Path, root: Path, triton_url: str, milvus_uri: str) -> str:
    _cli("index", "build", "--catalog", str(catalog), "--index-root", str(root), "--triton", triton_url,
         "--backend", "milvus", "--milvus-uri", milvus_uri, "--no-progress", "--batch-size", "16")
    version = BundleStore(root).current_version()
    assert version is not None
    return version


def _collection(root: Path, version: str) -> str:
    state = json.loads((root / "versions" / version / "index" / "milvus_index.json").read_text())
    return state["config"]["collection"]


def test_milvus_lite_through_the_cli_and_the_rendered_pod_environment(triton, catalog: Path, tmp_path: Path) -> None:
    root, db = tmp_path / "index", tmp_path / "milvus.db"
    version = _build(catalog, root, triton.grpc_url, str(db))
    service = Service(root, pod_env(triton.grpc_url, str(db)), tmp_path / "service.log")
    try:
        service.wait_serving()
        response = service.search("red dress")
        assert response.index_version == version and len(response.hits) == 5
        first = response.hits[0]
        color = dict(first.attributes).get("color")
        if color:  # a filter on a catalog attribute: answered from the same collection
            filtered = service.search("dress", color=color)
            assert filtered.hits and all(dict(h.attributes)["color"] == color for h in filtered.hits)
        by_cli = service.cli_search("red dress")  # the same search through `lenscope search`
        assert by_cli["index_version"] == version
        assert [h["product_id"] for h in by_cli["hits"]] == [h.product_id for h in response.hits]
        if color:
            by_cli = service.cli_search("dress", f"color={color}")
            assert by_cli["hits"] and all(h["attributes"]["color"] == color for h in by_cli["hits"])
    finally:
        service.stop()
    assert "(milvus)" in service.log.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def milvus_server(tmp_path: Path):
    """`milvus-lite server` in its own process: reached over the network like a Milvus cluster."""
    port = _free_port()
    log = open(tmp_path / "milvus.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
                             str(tmp_path / "server.db"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "milvus.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < end, "milvus-lite server did not listen"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_milvus_server_blue_green_with_queries_running_then_prune(triton, catalog: Path, tmp_path: Path,
                                                                  milvus_server: str) -> None:
    root = tmp_path / "index"
    blue_version = _build(catalog, root, triton.grpc_url, milvus_server)
    blue = Service(root, pod_env(triton.grpc_url, milvus_server), tmp_path / "blue.log")
    green = None
    target = {"service": blue}
    outcomes: list[tuple[str, str]] = []  # (index version or status code, which service)
    stop = threading.Event()

    def query_loop() -> None:
        i = 0
        while not stop.is_set():
            service = target["service"]
            try:
                response = service.search(f"blue shirt {i}")
                outcomes.append((response.index_version, "ok"))
            except grpc.RpcError as err:
                outcomes.append((err.code().name, "failed"))
            i += 1

    thread = threading.Thread(target=query_loop, daemon=True)
    try:
        blue.wait_serving()
        thread.start()
        green_version = _build(catalog, root, triton.grpc_url, milvus_server)  # new collection, alias moved
        assert green_version != blue_version
        green = Service(root, pod_env(triton.grpc_url, milvus_server), tmp_path / "green.log")
        green.wait_serving()
        target["service"] = green  # traffic moves once green serves; blue stops after
        assert green.cli_search("blue shirt")["index_version"] == green_version  # and through `lenscope search`
        time.sleep(2.0)
        blue.stop()
        time.sleep(1.0)
        stop.set()
        thread.join(30)
    finally:
        stop.set()
        for s in (blue, green):
            if s is not None:
                s.stop()
    failed = [o for o in outcomes if o[1] == "failed"]
    served = {v for v, kind in outcomes if kind == "ok"}
    print(f"blue-green: {len(outcomes)} queries, {len(failed)} failed, versions served {sorted(served)}")
    assert not failed, failed[:5]
    assert served == {blue_version, green_version}

    blue_collection, green_collection = _collection(root, blue_version), _collection(root, green_version)
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server, token=TOKEN)
    try:
        assert client.describe_alias(ALIAS)["collection_name"] == green_collection
        assert client.has_collection(blue_collection), "the old version is kept until pruned"
        out = _cli("index", "prune", "--index-root", str(root), "--min-age", "0", "--milvus-uri", milvus_server).stdout
        assert "dropped" not in out and client.has_collection(blue_collection)  # both versions published
        shutil.rmtree(root / "versions" / blue_version)  # the old version collected from disk
        out = _cli("index", "prune", "--index-root", str(root), "--min-age", "0", "--milvus-uri", milvus_server).stdout
        assert f"dropped {blue_collection}" in out
        assert not client.has_collection(blue_collection) and client.has_collection(green_collection)
        assert [e["collection"] for e in json.loads((root / LEDGER).read_text())] == [green_collection]
    finally:
        client.close()
