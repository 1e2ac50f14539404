"""A real tritonserver on free local ports, serving a freshly exported default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from lenscope.client.core.manifest import Manifest, load_manifest
from lenscope.client.triton.client import ClientConfig, TritonEmbedder
from lenscope.client.triton.server import TritonServer, start_server


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


@pytest.fixture(scope="session")
def make_index(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory):
    """Factory: a generated catalog of n products (seed) indexed through the session's Triton.

    Cached per (n, seed, batch_size), so modules that need the same catalog share one build.
    """
    from lenscope.client.synth.catalog import generate_catalog
    from lenscope.client.index.job import IndexBuildConfig, build_index

    built: dict[tuple[int, int, int], tuple[Path, Path]] = {}

    def make(n: int, seed: int, batch_size: int = 16) -> tuple[Path, Path]:
        key = (n, seed, batch_size)
        if key not in built:
            root = tmp_path_factory.mktemp(f"stack-{n}-{seed}")
            catalog = generate_catalog(root / "catalog", n, seed=seed, image_size=64).catalog
            with TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=30.0, max_concurrency=16)) as emb:
                report = build_index(IndexBuildConfig(catalog=catalog, index_root=root / "index", batch_size=batch_size,
                                                      concurrency=2, progress=False), emb)
            assert report.indexed == n, report
            built[key] = (catalog, root / "index")
        return built[key]

    return make
