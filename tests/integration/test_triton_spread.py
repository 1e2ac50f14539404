"""Triton replicas share the load: one search service dialling two real tritonservers (a comma list of
addresses, gRPC round-robin) spreads its calls over both (counted by each server's own metrics), and
when one is killed every later call goes to the other, with no failure after the deadline window.

Slow tier: two extra tritonservers and a few hundred searches.
"""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.search.engine import SearchSettings, open_engine
from lenscope.client.service.server import serve
from lenscope.client.service.settings import ServiceSettings
from lenscope.client.triton.client import ClientConfig
from lenscope.client.triton.server import start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 5.0
MODEL = "embed_text"


def _served(metrics_url: str) -> int:
    """Successful requests of the text ensemble, from the server's own Prometheus metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    m = re.search(r'^nv_inference_request_success\{model="%s",version="1"\} (\S+)$' % MODEL, text, re.M)
    return int(float(m.group(1))) if m else 0


@pytest.fixture
def two_tritons(exported_repo: Path, tmp_path: Path):
    servers = [start_server(exported_repo, log_path=tmp_path / f"triton-{i}.log", ready_timeout=120) for i in range(2)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_calls_spread_over_replicas_and_move_when_one_dies(two_tritons, make_index) -> None:
    _, index_root = make_index(40, 3)
    a, b = two_tritons
    url = f"{a.grpc_url},{b.grpc_url}"
    engine = open_engine(url, str(index_root), SearchSettings(default_deadline_s=DEADLINE_S),
                         client_config=ClientConfig(url=url, timeout_s=DEADLINE_S * 0.8, max_connection_age_s=30))
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=DEADLINE_S))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = search_pb2_grpc.SearchServiceStub(channel)
    counter = iter(range(10**6))

    def search(_: int = 0) -> tuple[float, str]:
        started = time.monotonic()
        try:  # a distinct text each time: every search is one Triton call
            stub.Search(search_pb2.SearchRequest(text=f"red summer dress {next(counter)}", top_k=3), timeout=DEADLINE_S)
            return started, "OK"
        except grpc.RpcError as err:
            return started, err.code().name

    try:
        with ThreadPoolExecutor(4) as pool:
            assert all(code == "OK" for _, code in pool.map(search, range(8)))  # warm-up: both connections up
            before = (_served(a.metrics_url), _served(b.metrics_url))
            results = list(pool.map(search, range(200)))
            after = (_served(a.metrics_url), _served(b.metrics_url))
            assert all(code == "OK" for _, code in results), {code for _, code in results}
            share_a = (after[0] - before[0]) / sum(after[i] - before[i] for i in range(2))
            print(f"split over two replicas: a {share_a:.1%}, b {1 - share_a:.1%} of {len(results)} searches")
            assert 0.3 <= share_a <= 0.7, f"replica a took {share_a:.1%} of the calls"

            survivor_before = _served(a.metrics_url)
            load = [pool.submit(search) for _ in range(40)]  # in flight while b dies
            time.sleep(0.2)
            killed_at = time.monotonic()
            b.kill()
            after_kill = [f.result() for f in load] + list(pool.map(search, range(120)))
        late_failures = [(round(t - killed_at, 2), code) for t, code in after_kill
                         if code != "OK" and t > killed_at + DEADLINE_S]
        failed = [code for _, code in after_kill if code != "OK"]
        print(f"after the kill: {len(failed)} failed of {len(after_kill)} ({failed}), none later than the deadline")
        assert not late_failures, late_failures
        moved = _served(a.metrics_url) - survivor_before
        ok_after = sum(1 for t, code in after_kill if code == "OK" and t > killed_at)
        assert moved >= ok_after, f"the survivor served {moved} calls, {ok_after} searches succeeded after the kill"
    finally:
        channel.close()
        running.stop(0.5)
        engine.close()
