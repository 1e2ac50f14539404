"""The committed protobuf / gRPC code is what ``search.proto`` generates (so the two cannot drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lenscope.client.api import generate as api_generate
from lenscope.client.api import search_pb2, search_pb2_grpc

API_DIR = Path(api_generate.__file__).parent


def test_committed_code_is_regenerated_byte_for_byte(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (requirements.lock) generates the API code")
    written = api_generate.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(api_generate.GENERATED_FILES)
    for path in written:
        committed = API_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python -m lenscope.client.api.generate` and commit the result"
        )


def test_generated_code_uses_the_installed_package_name() -> None:
    # grpc code must import its messages as lenscope.client.api.search_pb2, not as a top-level module.
    assert "from lenscope.client.api import search_pb2 " in Path(search_pb2_grpc.__file__).read_text()
    assert search_pb2.DESCRIPTOR.name == "lenscope/client/api/search.proto"
    assert search_pb2.DESCRIPTOR.package == "lenscope.v1"
    service = search_pb2.DESCRIPTOR.services_by_name["SearchService"]
    assert [m.name for m in service.methods] == ["Search"]
