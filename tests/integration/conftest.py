"""A real tritonserver on free local ports, serving a freshly exported default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from lenscope.client.manifest import Manifest, load_manifest
from lenscope.client.triton import ClientConfig, TritonEmbedder
from lenscope.client.tritonserver import TritonServer, start_server


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default spec exported (and verified) once per session."""
    from lenscope.export.pipeline import export_model

    out = tmp_path_factory.mktemp("repo") / "cpu"
    export_model(out=out, log=lambda _msg: None)
    return out


@pytest.fixture(scope="session")
def manifest(exported_repo: Path) -> Manifest:
    return load_manifest(exported_repo)


@pytest.fixture(scope="session")
def triton(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    server = start_server(exported_repo, log_path=log, ready_timeout=120)
    yield server
    code = server.stop()
    assert code == 0, f"tritonserver exited {code}; log tail:\n{server.log_tail(40)}"


@pytest.fixture(scope="session")
def embedder(triton: TritonServer) -> TritonEmbedder:
    client = TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0))
    yield client
    client.close()
