"""The embedded tritonserver launcher against the real server from nvidia-pytriton (CPU).

Talks HTTP/JSON with urllib on purpose: tritonclient belongs to lenscope.client.triton.client only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from lenscope.client.triton import install as ti
from lenscope.client.triton import server as ts
from lenscope.client.triton.errors import TritonNotInstalledError, TritonServerError
from lenscope.client.triton.ports import free_port, free_ports
from lenscope.client.triton.server import TritonServer, TritonServerConfig, start_server

pytestmark = pytest.mark.integration

try:
    INSTALL = ti.locate_triton()
except TritonNotInstalledError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"tritonserver not available: {exc}", allow_module_level=True)

READY_TIMEOUT = 60.0

CONFIG_PBTXT = """\
name: "{name}"
backend: "python"
max_batch_size: 8
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

# numpy lives only in the venv: a working model proves the stub runs on the venv's python.
ADD_ONE_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1.0).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

BROKEN_PY = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("lenscope-test: initialize deliberately broken")
"""


def write_model(repository: Path, name: str, model_py: str) -> Path:
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(CONFIG_PBTXT.format(name=name))
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(model_py))
    return repository


@pytest.fixture(scope="module")
def backend_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lenscope-cache")


@pytest.fixture(scope="module")
def add_one_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("repo-ok"), "add_one", ADD_ONE_PY)


def post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------------------------------------
# Server lifecycle
# ---------------------------------------------------------------------------------------------


def test_serves_inference_and_metrics_then_stops_cleanly(
    add_one_repository: Path, backend_cache: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "triton.log"
    t0 = time.monotonic()
    server = start_server(
        add_one_repository, ready_timeout=READY_TIMEOUT, exit_timeout_secs=5,
        log_path=log_path, cache_dir=backend_cache,
    )
    try:
        assert server.is_ready()
        startup_s = time.monotonic() - t0
        assert set(server.urls) == {"grpc", "http", "metrics"}
        assert server.grpc_url == f"127.0.0.1:{server.config.grpc_port}"

        result = post_json(
            f"{server.http_url}/v2/models/add_one/infer",
            {"inputs": [{"name": "INPUT0", "shape": [2, 3], "datatype": "FP32",
                         "data": [0.0, 1.5, -2.0, 10.0, 20.0, 30.0]}]},
        )
        (output,) = result["outputs"]
        assert output["name"] == "OUTPUT0" and output["shape"] == [2, 3]
        assert output["data"] == pytest.approx([1.0, 2.5, -1.0, 11.0, 21.0, 31.0])

        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        assert 'nv_inference_request_success{model="add_one",version="1"} 1' in metrics
    finally:
        t_stop = time.monotonic()
        code = server.stop(timeout=15.0)
        stop_s = time.monotonic() - t_stop

    assert code == 0
    assert stop_s < 15.0
    assert not server.is_running()
    assert "successfully loaded 'add_one'" in log_path.read_text()
    print(f"startup {startup_s:.2f}s (ready after {server.ready_after_s:.2f}s), stop {stop_s:.2f}s")


def test_broken_model_fails_fast_with_log_tail(backend_cache: Path, tmp_path: Path) -> None:
    repository = write_model(tmp_path / "repo", "broken", BROKEN_PY)
    started = time.monotonic()
    with pytest.raises(TritonServerError) as info:
        start_server(repository, ready_timeout=READY_TIMEOUT, cache_dir=backend_cache,
                     log_path=tmp_path / "triton.log")
    message = str(info.value)
    assert "exited with code" in message and "before becoming ready" in message
    assert "lenscope-test: initialize deliberately broken" in message
    assert time.monotonic() - started < READY_TIMEOUT / 2  # exit-on-error, not the timeout


def test_start_server_retries_when_a_port_is_taken(
    add_one_repository: Path, backend_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_ports = free_ports
    calls: list[list[int]] = []

    def first_time_clash(count: int, host: str = "127.0.0.1") -> list[int]:
        ports = real_free_ports(count, host)
        if not calls:
            ports[1] = taken  # the gRPC port
        calls.append(ports)
        return ports

    monkeypatch.setattr(ts, "free_ports", first_time_clash)
    try:
        with start_server(add_one_repository, ready_timeout=READY_TIMEOUT,
                          exit_timeout_secs=5, cache_dir=backend_cache,
                          log_path=tmp_path / "triton.log") as server:
            assert server.is_ready()
            assert server.config.grpc_port != taken
    finally:
        squatter.close()
    assert len(calls) == 2
    assert server.returncode == 0
    assert "already in use" in (tmp_path / "triton.log").read_text()  # the first attempt's clash


def test_context_manager_stops_server_and_tidies_its_temp_log(
    add_one_repository: Path, backend_cache: Path
) -> None:
    config = TritonServerConfig(
        add_one_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        exit_timeout_secs=5,
    )
    with TritonServer(config, cache_dir=backend_cache) as server:
        server.wait_ready(READY_TIMEOUT)
        pid = server.pid
        temp_log = server.log_path
        assert temp_log is not None and temp_log.exists()
    assert server.returncode == 0
    assert not temp_log.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ---------------------------------------------------------------------------------------------
# CLI: `serve triton` under a process supervisor
# ---------------------------------------------------------------------------------------------


def _line_reader(stream) -> "queue.Queue[str | None]":  # type: ignore[no-untyped-def]
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_cli_serve_triton_stops_cleanly_on_signal(
    add_one_repository: Path, backend_cache: Path, signum: signal.Signals, tmp_path: Path
) -> None:
    http, grpc, metrics = free_ports(3)
    cli = subprocess.Popen(
        [sys.executable, "-c", "from lenscope.client.cli.serve import serve_app; serve_app()",
         "triton", "--model-repository", str(add_one_repository), "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--log-file", str(tmp_path / "triton.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, ti.CACHE_ENV: str(backend_cache)},
    )
    output: list[str] = []
    try:
        lines = _line_reader(cli.stdout)
        deadline = time.monotonic() + READY_TIMEOUT
        while not any(f"metrics http://127.0.0.1:{metrics}/metrics" in l for l in output):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "CLI exited before ready:\n" + "".join(output)
            output.append(line)
        text = "".join(output)
        assert f"grpc    127.0.0.1:{grpc}" in text
        assert "Started GRPCInferenceService" in text  # the server log is streamed to stdout
        server_pid = int(text.split("tritonserver ready in")[1].split("(pid ")[1].split(",")[0])

        cli.send_signal(signum)
        code = cli.wait(timeout=20)
        while (line := lines.get(timeout=5)) is not None:
            output.append(line)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    text = "".join(output)
    assert code == 0, text
    assert f"{signal.Signals(signum).name} received, stopping tritonserver" in text
    assert "Signal (15) received" in text  # forwarded to tritonserver as SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
    assert "Started HTTPService" in (tmp_path / "triton.log").read_text()


def test_ready_is_never_another_servers(add_one_repository: Path, backend_cache: Path, tmp_path: Path) -> None:
    """A second server on the first one's ports fails to bind: it must fail, not borrow the first's "ready"."""
    with start_server(add_one_repository, ready_timeout=READY_TIMEOUT, exit_timeout_secs=5,
                      cache_dir=backend_cache) as first:
        clash = TritonServer(dataclasses.replace(first.config), log_path=tmp_path / "clash.log",
                             cache_dir=backend_cache).start()
        try:
            with pytest.raises(TritonServerError, match="before becoming ready"):
                clash.wait_ready(READY_TIMEOUT)
        finally:
            clash.stop()
        assert first.is_ready()


def _reap(parent: subprocess.Popen, server_pid: int | None) -> None:
    """Test cleanup whatever happened: the launching process and the server's whole process group."""
    if parent.poll() is None:
        parent.kill()
        parent.wait()
    if server_pid is not None:
        try:
            os.killpg(server_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)  # the server's process group: tritonserver and its python-backend stubs
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_kill_9_of_serve_triton_leaves_no_server_or_stub(
    add_one_repository: Path, backend_cache: Path, tmp_path: Path
) -> None:
    http, grpc, metrics = free_ports(3)
    cli = subprocess.Popen(
        [sys.executable, "-c", "from lenscope.client.cli.serve import serve_app; serve_app()",
         "triton", "--model-repository", str(add_one_repository), "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--exit-timeout-secs", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, ti.CACHE_ENV: str(backend_cache)},
    )
    output: list[str] = []
    server_pid = None
    try:
        lines = _line_reader(cli.stdout)
        deadline = time.monotonic() + READY_TIMEOUT
        while "tritonserver ready in" not in "".join(output):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "CLI exited before ready:\n" + "".join(output)
            output.append(line)
        server_pid = int("".join(output).split("tritonserver ready in")[1].split("(pid ")[1].split(",")[0])
        stubs = subprocess.run(["pgrep", "-g", str(server_pid)], capture_output=True, text=True).stdout.split()
        assert len(stubs) >= 2, stubs  # tritonserver + the add_one model's stub
        cli.kill()  # SIGKILL: no handler runs, only the parent-death signal can stop the server
        cli.wait()
        assert _gone(server_pid, 60.0), "tritonserver or a stub outlived `serve triton` killed with SIGKILL"
    finally:
        _reap(cli, server_pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_dying_start_server_caller_takes_its_server_along(
    add_one_repository: Path, backend_cache: Path, signum: signal.Signals
) -> None:
    """What `lenscope demo` (and the eval harness) do: start_server in the main thread; the process then
    dies from a signal it does not handle, so no `finally` or atexit runs."""
    script = ("import sys, time; from pathlib import Path; from lenscope.client.triton.server import start_server; "
              "s = start_server(Path(sys.argv[1]), ready_timeout=60.0, exit_timeout_secs=5); "
              "print('SERVER_PID', s.pid, flush=True); time.sleep(600)")
    caller = subprocess.Popen([sys.executable, "-c", script, str(add_one_repository)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env={**os.environ, ti.CACHE_ENV: str(backend_cache)})
    server_pid = None
    try:
        lines = _line_reader(caller.stdout)
        deadline = time.monotonic() + READY_TIMEOUT + 10
        while server_pid is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "the caller exited before its server was ready"
            if line.startswith("SERVER_PID "):
                server_pid = int(line.split()[1])
        os.kill(caller.pid, signum)
        caller.wait()
        assert _gone(server_pid, 60.0), f"tritonserver outlived its caller killed by {signal.Signals(signum).name}"
    finally:
        _reap(caller, server_pid)


# ---------------------------------------------------------------------------------------------
# Pieces that need no running server
# ---------------------------------------------------------------------------------------------


def test_backend_directory_is_built_once_and_race_free(tmp_path: Path) -> None:
    barrier = threading.Barrier(4)
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            barrier.wait()
            results.append(ti.prepare_backend_directory(INSTALL, tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    backend = results[0]
    stub = backend / "python" / "triton_python_backend_stub"
    assert stub.is_file() and os.access(stub, os.X_OK)
    assert (backend / "python" / "libtriton_python.so").is_file()
    assert [p.name for p in (tmp_path / "triton-backends").iterdir()] == [backend.name]
    mtime = stub.stat().st_mtime_ns
    assert ti.prepare_backend_directory(INSTALL, tmp_path) == backend
    assert stub.stat().st_mtime_ns == mtime


def test_server_environment_puts_venv_and_libs_first() -> None:
    env = ti.server_environment(INSTALL, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert str(INSTALL.libs_dir) in libs and libs[-1] == "/opt/x"


def test_missing_installation_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(name: str):  # type: ignore[no-untyped-def]
        raise ti.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ti.importlib.metadata, "distribution", not_found)
    monkeypatch.setattr(ti.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TritonNotInstalledError, match="pip install nvidia-pytriton==0.7.0"):
        ti.locate_triton()


def test_config_validation_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_repository"):
        TritonServerConfig(tmp_path / "missing")
    with pytest.raises(ValueError, match="must differ"):
        TritonServerConfig(tmp_path, http_port=9000, grpc_port=9000, metrics_port=9002)
    with pytest.raises(ValueError, match="grpc_restricted_protocol"):
        TritonServerConfig(tmp_path, grpc_restricted_protocol="model-repository")
    with pytest.raises(ValueError, match="load_models"):
        TritonServerConfig(tmp_path, load_models=("a",))
    args = TritonServerConfig(
        tmp_path, host="0.0.0.0", model_control_mode="explicit", load_models=("a",),
        grpc_restricted_protocol="model-repository,shared-memory:admin-key=s3cret",
    ).arguments(Path("/b"))
    assert "--exit-on-error=true" in args and "--strict-readiness=true" in args
    assert "--load-model=a" in args and "--http-address=0.0.0.0" in args
    assert "--grpc-restricted-protocol=model-repository,shared-memory:admin-key=s3cret" in args
    server = TritonServer(TritonServerConfig(tmp_path, host="0.0.0.0"))
    assert server.http_url == "http://127.0.0.1:8000"
