"""`serve triton` and the launcher refuse what would give a false "ready", without starting Triton:
taken ports (named), an empty model repository; and the parent-death signal is armed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lenscope.client.cli.serve import serve_app
from lenscope.client.triton import server as ts
from lenscope.client.triton.errors import TritonServerError
from lenscope.client.triton.lifetime import with_parent_death_signal
from lenscope.client.triton.ports import free_ports, taken_ports
from lenscope.client.triton.server import TritonServer, TritonServerConfig


def _repository(root: Path, *names: str) -> Path:
    for name in names:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    return root


def test_taken_ports_are_named() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        free = free_ports(1)[0]
        assert taken_ports("127.0.0.1", {"grpc_port": taken, "http_port": free}) == [
            f"--grpc-port {taken} on 127.0.0.1 (already in use)"]
    assert taken_ports("127.0.0.1", {"grpc_port": taken}) == []


def test_serve_triton_refuses_a_taken_port_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list = []
    monkeypatch.setattr(ts.TritonServer, "start", lambda self: started.append(self))
    repo = _repository(tmp_path / "repo", "embed_text")
    http, metrics = free_ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        grpc = squatter.getsockname()[1]
        res = CliRunner().invoke(serve_app, ["triton", "--model-repository", str(repo), "--http-port", str(http),
                                             "--grpc-port", str(grpc), "--metrics-port", str(metrics)])
    assert res.exit_code == 2, res.output
    assert f"--grpc-port {grpc} on 127.0.0.1 (already in use)" in res.output
    assert "tritonserver ready" not in res.output and not started and "Traceback" not in res.output


def test_log_file_is_appended_only_to_an_earlier_tritonserver_log(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--log-file appends: a user's file there is refused before anything starts; an earlier run's log is reused."""
    started: list = []
    monkeypatch.setattr(ts.TritonServer, "start", lambda self: started.append(self) or (_ for _ in ()).throw(
        TritonServerError("stop here")))
    repo = _repository(tmp_path / "repo", "embed_text")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    ports = [str(p) for p in free_ports(3)]
    args = ["serve", "triton", "--model-repository", str(repo), "--http-port", ports[0], "--grpc-port", ports[1],
            "--metrics-port", ports[2], "--log-file"]
    from lenscope.client.cli.app import app  # with its error boundary, as a user runs it

    res = CliRunner().invoke(app, [*args, str(notes)])
    assert res.exit_code == 2 and not started, res.output
    assert "is not a tritonserver log" in " ".join(res.output.split()) and "Traceback" not in res.output
    assert notes.read_text() == "my notes\n"

    earlier = tmp_path / "triton.log"
    earlier.write_text('I1205 20:22:52.938392 6258 pinned_memory_manager.cc:283] "Pinned memory pool disabled"\n')
    res = CliRunner().invoke(app, [*args, str(earlier)])
    assert len(started) == 1 and "stop here" in " ".join(res.output.split()), res.output


def test_an_empty_repository_is_refused_not_served(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TritonServerError, match="holds no models"):
        TritonServer(TritonServerConfig(tmp_path / "empty")).start()


def test_expected_models_follow_the_control_mode(tmp_path: Path) -> None:
    repo = _repository(tmp_path, "embed_image", "embed_text")
    (tmp_path / "notes").mkdir()  # no config.pbtxt: not a model
    assert TritonServerConfig(repo).expected_models() == ("embed_image", "embed_text")
    assert TritonServerConfig(repo, model_control_mode="explicit", load_models=("*",)).expected_models() == (
        "embed_image", "embed_text")
    assert TritonServerConfig(repo, model_control_mode="explicit", load_models=("embed_text",)).expected_models() == (
        "embed_text",)
    assert TritonServerConfig(repo, model_control_mode="explicit").expected_models() is None


def test_parent_death_signal_is_armed_from_the_main_thread_only() -> None:
    import subprocess
    import sys
    import threading

    wrapped = with_parent_death_signal([sys.executable, "-c", "print('child ran')"])
    assert wrapped[:4] == [sys.executable, "-I", "-S", "-c"]
    out = subprocess.run(wrapped, capture_output=True, text=True, check=True).stdout
    assert out == "child ran\n"  # the trampoline execs the real command with its arguments
    seen: list = []
    worker = threading.Thread(target=lambda: seen.append(with_parent_death_signal(["x"])))
    worker.start()
    worker.join()
    assert seen == [["x"]]


def _flags(cfg: TritonServerConfig) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in cfg.arguments(Path("/b")) if a.startswith("--") and "restricted" in a)


def test_admin_apis_are_locked_by_default_with_a_fresh_key(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "r", "m")
    ports = dict(http_port=8000, grpc_port=8001, metrics_port=8002)
    a, b = TritonServerConfig(model_repository=repo, **ports), TritonServerConfig(model_repository=repo, **ports)
    assert a.admin_key and b.admin_key and a.admin_key != b.admin_key  # nobody can guess it
    lock = f"model-repository,logging,trace,shared-memory:{ts.ADMIN_HEADER}={a.admin_key}"
    assert _flags(a) == {"grpc-restricted-protocol": lock, "http-restricted-api": lock}
    assert TritonServer(a).admin_headers("http") == {ts.ADMIN_HEADER: a.admin_key}
    assert TritonServer(a).admin_headers() == {f"triton-grpc-protocol-{ts.ADMIN_HEADER}": a.admin_key}
    assert "inference" not in lock and "health" not in lock and "statistics" not in lock  # search + perf stay open
    given = TritonServerConfig(model_repository=repo, admin_key="op-key-123", **ports)
    assert _flags(given)["http-restricted-api"].endswith("=op-key-123")
    opened = TritonServerConfig(model_repository=repo, open_admin=True, **ports)
    assert _flags(opened) == {} and TritonServer(opened).admin_headers() == {}
    with pytest.raises(ValueError, match="admin_key"):
        TritonServerConfig(model_repository=repo, admin_key="short", **ports)
    own = TritonServerConfig(model_repository=repo, grpc_restricted_protocol="trace:k=v", **ports)
    assert _flags(own)["grpc-restricted-protocol"] == "trace:k=v"  # the caller's gRPC lock replaces ours
