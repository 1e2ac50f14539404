"""The service's observability: Prometheus metrics in a registry of their own, the HTTP server that
exports them on the metrics port, and the JSON logger that writes one line per request.

Separate from the servicer so that what is measured and logged can be read (and checked by the deploy
tests) without the request path; the gRPC health status lives in ``health``.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import IO, TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from lenscope.client.service.servicer import SearchBackend

_STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of their own (several servers per process in tests)."""

    def __init__(self, backend: SearchBackend) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "lenscope_search_stage_seconds",
            "Search latency per stage (engine stages; 'total' is measured by the service), successful requests",
            ["stage"],
            buckets=_STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.requests = Counter(
            "lenscope_search_requests_total", "Search requests answered, by gRPC status code", ["code"],
            registry=self.registry,
        )
        for code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL"):
            self.requests.labels(code)  # export zeros so rate() and alerts work from the start
        self.inflight = Gauge(
            "lenscope_search_inflight_requests", "Searches running in the engine", registry=self.registry
        )
        self.ann_recall = Gauge(
            "lenscope_ann_recall_at_k", "Online ANN recall@K vs exact search (NaN until measured)",
            registry=self.registry,
        )
        recall = getattr(backend, "ann_recall", None)
        self.ann_recall.set_function(lambda: _call_recall(recall))
        self.registry.register(_IndexCollector(backend))

    def observe(self, code: grpc.StatusCode, timings_ms: dict[str, float] | None) -> None:
        self.requests.labels(code.name).inc()
        for stage, ms in (timings_ms or {}).items():
            self.stage_seconds.labels(stage).observe(ms / 1000.0)


def _call_recall(recall: Callable[[], float | None] | None) -> float:
    if not callable(recall):
        return float("nan")
    try:
        value = recall()
    except Exception:  # a broken monitor must not break /metrics
        return float("nan")
    return float("nan") if value is None else float(value)


class _IndexCollector:
    """The served index version (read at scrape time, so a live switch shows at once) and, for a
    backend that follows its index root (``index_status()``, search/live.py), its switch counts."""

    def __init__(self, backend: SearchBackend) -> None:
        self._backend = backend

    def describe(self) -> list:
        return []  # unchecked collector: its label values change at run time

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        try:
            version = str(self._backend.index_version)
        except Exception:  # a backend that cannot tell must not break /metrics
            version = ""
        info = GaugeMetricFamily("lenscope_index_version_info", "The index version answering queries (value 1)",
                                 labels=["version"])
        info.add_metric([version], 1.0)
        yield info
        status_of = getattr(self._backend, "index_status", None)
        status = status_of() if callable(status_of) else None  # None: a backend that never switches
        switches = CounterMetricFamily("lenscope_index_switches", "Live index version changes, by outcome "
                                       "(rejected: a published version was unusable; the old one kept serving)",
                                       labels=["outcome"])
        switches.add_metric(["switched"], status.switched if status else 0)
        switches.add_metric(["rejected"], status.rejected if status else 0)
        yield switches


class MetricsHTTPServer(ThreadingMixIn, WSGIServer):
    """prometheus_client's start_http_server, but stoppable in 0.1 s instead of its 0.5 s poll."""

    daemon_threads = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]  # IPv6 hosts need AF_INET6 before the socket is made
        super().__init__((host, port), _QuietHandler)
        self.set_app(make_wsgi_app(registry))
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="lenscope-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
        pass


def json_logger(stream: IO[str] | None = None) -> Any:
    """A structlog logger writing one JSON object per line, independent of global logging config."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    ).bind(logger="lenscope.service")
