"""The search service on top of a test Triton and index, as the integration tests start it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc

from lenscope.client.search.engine import SearchEngine, SearchSettings, open_engine
from lenscope.client.service.server import RunningService, serve
from lenscope.client.service.settings import ServiceSettings


@contextmanager
def running_service(triton_url: str, index_root: Path, deadline_s: float = 10.0,
                    **settings) -> Iterator[tuple[SearchEngine, RunningService, grpc.Channel]]:
    """(engine, running service, insecure channel to it); everything stopped on exit."""
    engine = open_engine(triton_url, str(index_root), SearchSettings(default_deadline_s=deadline_s),
                         triton_timeout_s=deadline_s)
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=deadline_s, **settings))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield engine, running, channel
    finally:
        channel.close()
        running.stop(0.5)
        engine.close()
