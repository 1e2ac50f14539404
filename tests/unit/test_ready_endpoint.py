"""GET /ready on the metrics port mirrors the published gRPC health status (200 / 503), so a kubelet
readiness probe works while the gRPC port speaks TLS; /metrics is unchanged."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from lenscope.client.service.observability import READY_PATH, MetricsHTTPServer


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_ready_follows_the_health_status_and_metrics_still_served() -> None:
    registry = CollectorRegistry()
    Counter("lenscope_probe_test", "a counter", registry=registry).inc()
    state = {"serving": False}
    server = MetricsHTTPServer("127.0.0.1", 0, registry, ready=lambda: state["serving"])
    try:
        port = server.server_port
        assert _get(port, READY_PATH) == (503, b"NOT_SERVING\n")
        state["serving"] = True
        assert _get(port, READY_PATH) == (200, b"SERVING\n")
        status, body = _get(port, "/metrics")
        assert status == 200 and b"lenscope_probe_test_total 1.0" in body
    finally:
        server.stop()


def test_without_a_ready_callable_the_path_is_just_metrics() -> None:
    server = MetricsHTTPServer("127.0.0.1", 0, CollectorRegistry())
    try:
        status, _ = _get(server.server_port, READY_PATH)
        assert status == 200  # prometheus' app answers any path
    finally:
        server.stop()
