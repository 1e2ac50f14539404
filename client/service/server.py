"""The gRPC search service: ``lenscope.v1.SearchService`` in front of any :class:`SearchBackend`.

It owns the transport concerns and nothing else; ranking lives in the engine. Latency discipline:

* **Deadlines.** The caller's remaining time (``default_deadline_s`` if it sent none) bounds the
  request; the engine gets ``triton_deadline_fraction`` of it as ``SearchQuery.deadline_s``. The
  engine runs on its own thread pool and the handler waits at most the remaining time, so the caller
  gets DEADLINE_EXCEEDED on time even from an engine that ignores its deadline.
* **Shedding.** At most ``max_inflight`` searches run in the engine; a request finding every slot taken
  gets RESOURCE_EXHAUSTED at once instead of a place in an unbounded queue. A slot is released when
  the engine call *finishes*, not when the caller gave up on it, so work abandoned at its deadline still
  counts against capacity.
* **Input caps.** ``max_request_bytes`` is the transport's receive limit (larger messages are refused
  with RESOURCE_EXHAUSTED before being parsed); images, text, top_k and facet names are validated
  here with INVALID_ARGUMENT and a message that says what to fix.

Status codes: QueryError / FacetError (unknown facet) -> INVALID_ARGUMENT, Overloaded ->
RESOURCE_EXHAUSTED, DeadlineExceeded -> DEADLINE_EXCEEDED, BackendUnavailable -> UNAVAILABLE,
ModelVersionMismatch -> FAILED_PRECONDITION, anything else -> INTERNAL with only the request id
(the traceback goes to the server log, never to the client).

Alongside: grpc.health.v1 (SERVING only while ``backend.ready()``, re-checked in the background),
server reflection, Prometheus metrics on their own port and registry, one JSON log line per request.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import IO, Any, Protocol
import ssl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from pydantic import ValidationError

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.ranking.facets import FacetError, UnknownFacetError
from lenscope.client.search.models import (
    BackendUnavailable,
    DeadlineExceeded,
    Overloaded,
    QueryError,
    SearchQuery,
    SearchResult,
)
from lenscope.client.service.settings import MiB, ServiceSettings

SERVICE_NAME: str = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name  # lenscope.v1.SearchService
REQUEST_ID_KEY = "x-request-id"

# gRPC reports "no deadline" as a remaining time of centuries; anything beyond this is "none sent".
_NO_DEADLINE_S = 1e7
# Below this much remaining time the engine is not even started.
_MIN_USEFUL_S = 0.001
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class SearchBackend(Protocol):
    """What the service serves: the search engine facade (or a fake in tests).

    Optionally also ``ann_recall() -> float | None``: the online recall monitor's latest recall@K,
    exported as the ``lenscope_ann_recall_at_k`` gauge.
    """

    @property
    def model_hash(self) -> str: ...

    @property
    def index_version(self) -> str: ...

    def search(self, query: SearchQuery) -> SearchResult:
        """Run one query within ``query.deadline_s``; raise the search_models errors."""
        ...

    def facet_names(self) -> list[str]:
        """Facets the served index knows (filter and facet names are checked against these)."""
        ...

    def ready(self) -> bool:
        """Triton and the index are usable (drives the health status)."""
        ...


class ServiceStartError(RuntimeError):
    """The service could not bind its ports or load its TLS material."""


class _Cancelled(Exception):
    """The caller cancelled (or its connection went away) while the engine was working."""


# --------------------------------------------------------------------------------------------------
# Request -> SearchQuery, SearchResult -> response, error -> status
# --------------------------------------------------------------------------------------------------


def to_query(
    request: search_pb2.SearchRequest, settings: ServiceSettings, known_facets: list[str], deadline_s: float
) -> SearchQuery:
    """Validate a request against the service limits and the index's facets; raise QueryError / FacetError."""
    image = request.image if request.HasField("image") and request.image else None
    text = request.text.strip() if request.HasField("text") else ""
    if image is None and not text:
        raise QueryError("empty query: send an image, a non-blank text, or both")
    if image is not None and len(image) > settings.max_image_bytes:
        raise QueryError(
            f"image is {len(image) / MiB:.2f} MiB ({len(image)} bytes); the limit is "
            f"{settings.max_image_bytes} bytes: send a smaller JPEG/PNG"
        )
    if len(text) > settings.max_text_chars:
        raise QueryError(f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
    top_k = request.top_k if request.HasField("top_k") else settings.default_top_k
    if not 1 <= top_k <= settings.max_top_k:
        raise QueryError(f"top_k must be between 1 and {settings.max_top_k}, got {top_k}")

    known = set(known_facets)
    filters: dict[str, set[str]] = {}
    for clause in request.filters:
        if clause.facet not in known:
            raise UnknownFacetError(clause.facet, known)
        values = [v.strip() for v in clause.values]
        if not values or not all(values):
            raise QueryError(f"filter on {clause.facet!r} needs at least one value, and no blank ones")
        filters.setdefault(clause.facet, set()).update(values)  # repeating a facet adds values (OR)
    facets = tuple(dict.fromkeys(request.facets))
    for name in facets:
        if name not in known:
            raise UnknownFacetError(name, known)

    return SearchQuery(
        image=image,
        text=text or None,
        filters={name: tuple(sorted(values)) for name, values in sorted(filters.items())},
        facets=facets,
        top_k=top_k,
        deadline_s=deadline_s,
        explain=request.explain,
    )


def to_response(result: SearchResult, request_id: str, total_ms: float) -> search_pb2.SearchResponse:
    """Map a SearchResult onto the wire; the engine's own "total" becomes "engine_total"."""
    timings = {("engine_total" if stage == "total" else stage): ms for stage, ms in result.timings_ms.items()}
    timings["total"] = total_ms
    return search_pb2.SearchResponse(
        hits=[
            search_pb2.Hit(
                product_id=h.product_id,
                title=h.title,
                image=h.image,
                score=h.score,
                breakdown=h.breakdown,
                raw=h.raw,
                calibrated=h.calibrated,
                attributes=h.attributes,
                popularity=h.popularity,
            )
            for h in result.hits
        ],
        facets=[
            search_pb2.FacetCount(
                facet=name,
                values=[search_pb2.FacetValueCount(value=v, count=c) for v, c in counts.items()],
            )
            for name, counts in result.facets.items()
        ],
        timings_ms=timings,
        model_hash=result.model_hash,
        index_version=result.index_version,
        over_fetch=search_pb2.OverFetch(**result.over_fetch.model_dump()),
        query_attributes={
            attr: search_pb2.AttributeProbabilities(probabilities=probs)
            for attr, probs in result.query_attributes.items()
        },
        request_id=request_id,
    )


def _is_model_mismatch(err: BaseException) -> bool:
    # Looked up, not imported: index_bundle pulls in the index stack, and if it was never imported
    # nothing can have raised its error.
    module = sys.modules.get("lenscope.client.index.bundle")
    mismatch = getattr(module, "ModelVersionMismatch", None)
    return mismatch is not None and isinstance(err, mismatch)


def _validation_message(err: ValidationError) -> str:
    # Never str(err): it echoes input values, which may be the query image.
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in err.errors())


def status_for(err: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an error raised while serving a request."""
    if isinstance(err, (QueryError, FacetError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, _validation_message(err)
    if isinstance(err, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)
    if isinstance(err, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(err)
    if isinstance(err, BackendUnavailable):
        return grpc.StatusCode.UNAVAILABLE, str(err)
    if _is_model_mismatch(err):
        return grpc.StatusCode.FAILED_PRECONDITION, str(err)
    if isinstance(err, _Cancelled):
        return grpc.StatusCode.CANCELLED, str(err)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); see the server log"


# --------------------------------------------------------------------------------------------------
# Metrics, logs, health
# --------------------------------------------------------------------------------------------------


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


class _MetricsHTTPServer(ThreadingMixIn, WSGIServer):
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


class HealthMonitor:
    """Re-checks ``backend.ready()`` in the background and publishes it as the gRPC health status."""

    def __init__(self, backend: SearchBackend, servicer: health.HealthServicer, interval_s: float, log: Any):
        self._backend = backend
        self._servicer = servicer
        self._interval_s = interval_s
        self._log = log
        self._stop = threading.Event()
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="lenscope-health", daemon=True)

    def check(self) -> bool:
        try:
            ready = bool(self._backend.ready())
        except Exception as err:  # "cannot tell" is not ready
            self._log.warning("backend_ready_failed", error=repr(err))
            ready = False
        if ready != self._serving:
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in ("", SERVICE_NAME):
                self._servicer.set(service, status)
            self._log.info("health", serving=ready)
            self._serving = ready
        return ready

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.check()


# --------------------------------------------------------------------------------------------------
# The servicer
# --------------------------------------------------------------------------------------------------


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Search RPC: validate, admit (or shed), run the engine under the deadline, map the outcome."""

    def __init__(self, backend: SearchBackend, settings: ServiceSettings, metrics: ServiceMetrics, log: Any):
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._log = log
        self._slots = threading.BoundedSemaphore(settings.max_inflight)
        # Exactly max_inflight workers: admission already bounds the work, so this pool never queues.
        self._engine = futures.ThreadPoolExecutor(settings.max_inflight, thread_name_prefix="lenscope-engine")

    def close(self) -> None:
        self._engine.shutdown(wait=False, cancel_futures=True)

    def SearchBytes(self, data: bytes, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        """Parse the request ourselves: grpcio's own deserializer answers bad bytes (e.g. non-UTF-8
        in a string field) with an opaque INTERNAL that the service never sees, logs or counts."""
        try:
            request = search_pb2.SearchRequest.FromString(data)
        except DecodeError as err:
            request_id = _request_id(context)
            message = (f"request is not a valid {SERVICE_NAME.rsplit('.', 1)[0]}.SearchRequest "
                       f"(string fields must be UTF-8): {err}")
            self._metrics.observe(grpc.StatusCode.INVALID_ARGUMENT, None)
            self._log.warning("search", code="INVALID_ARGUMENT", request_id=request_id, image_bytes=None,
                              text_chars=None, message=message)
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return self.Search(request, context)

    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        started = time.perf_counter()
        request_id = _request_id(context)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        fields: dict[str, Any] = {
            "request_id": request_id,
            "image_bytes": len(request.image),  # sizes only: never the image or the query text
            "text_chars": len(request.text),
            "top_k": request.top_k if request.HasField("top_k") else None,
            "filters": sorted({f.facet for f in request.filters}),
        }
        response: search_pb2.SearchResponse | None = None
        code, message, timings = grpc.StatusCode.OK, "", None
        try:
            remaining_s = _remaining_s(context, self._settings.default_deadline_s)
            if remaining_s < _MIN_USEFUL_S:
                raise DeadlineExceeded("the deadline had already passed when the request arrived")
            deadline = time.monotonic() + remaining_s
            engine_deadline_s = remaining_s * self._settings.triton_deadline_fraction
            query = to_query(request, self._settings, self._backend.facet_names(), engine_deadline_s)
            result = self._run(query, deadline, remaining_s, context)
            response = to_response(result, request_id, (time.perf_counter() - started) * 1000.0)
            timings = dict(response.timings_ms)
            fields.update(hits=len(result.hits), model_hash=result.model_hash, index_version=result.index_version)
        except Exception as err:
            code, message = status_for(err, request_id)
            if code is grpc.StatusCode.INTERNAL:
                self._log.error("search_failed", request_id=request_id, exc_info=err)

        latency_ms = (time.perf_counter() - started) * 1000.0
        self._metrics.observe(code, timings)
        log = self._log.warning if code in _WARN_CODES else self._log.info
        if message:
            fields["message"] = message
        log("search", code=code.name, latency_ms=round(latency_ms, 3), **fields)
        if response is None:
            context.abort(code, message)
        return response

    def _run(
        self, query: SearchQuery, deadline: float, budget_s: float, context: grpc.ServicerContext
    ) -> SearchResult:
        """Admit or shed, then wait for the engine until `deadline` (time.monotonic) or a cancel."""
        if not self._slots.acquire(blocking=False):
            raise Overloaded(
                f"server busy: {self._settings.max_inflight} searches in flight; retry with backoff"
            )
        self._metrics.inflight.inc()
        try:
            future = self._engine.submit(self._backend.search, query)
        except BaseException:
            self._release(None)
            raise
        finished = threading.Event()
        future.add_done_callback(self._release)
        future.add_done_callback(lambda _: finished.set())
        context.add_callback(finished.set)  # wake up at once if the caller cancels
        finished.wait(max(deadline - time.monotonic(), 0.0))
        if future.done():
            return future.result()  # re-raises the engine's error
        if not context.is_active():
            raise _Cancelled("the caller cancelled the request")
        raise DeadlineExceeded(f"search did not finish within the {budget_s * 1000:.0f} ms deadline")

    def _release(self, _future: futures.Future[SearchResult] | None) -> None:
        self._metrics.inflight.dec()
        self._slots.release()


_WARN_CODES = frozenset({
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL,
})


def _remaining_s(context: grpc.ServicerContext, default_s: float) -> float:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return default_s
    return remaining


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex[:16]


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


@dataclass
class RunningService:
    """A started service: its bound ports, and how to stop it."""

    port: int
    metrics_port: int
    server: grpc.Server
    settings: ServiceSettings
    _handlers: futures.ThreadPoolExecutor = field(repr=False)
    _servicer: SearchServicer = field(repr=False)
    _health: health.HealthServicer = field(repr=False)
    _monitor: HealthMonitor = field(repr=False)
    _metrics_server: _MetricsHTTPServer = field(repr=False)
    metrics: ServiceMetrics = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight requests finish for the grace period, release the ports."""
        if self._stopped:
            return
        self._stopped = True
        self._monitor.stop()
        self._health.enter_graceful_shutdown()
        self.server.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s).wait()
        self._handlers.shutdown(wait=False)
        self._servicer.close()
        self._metrics_server.stop()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout_s)

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials:
    assert settings.tls_cert is not None and settings.tls_key is not None
    try:
        key, cert = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
        ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as err:
        raise ServiceStartError(f"cannot read TLS material: {err}") from err
    try:  # grpc reports a bad pair only as "Failed to bind": check it here, with a useful message
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, ValueError) as err:
        raise ServiceStartError(
            f"TLS certificate {settings.tls_cert} and key {settings.tls_key} are unusable or do not match: {err}"
        ) from err
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def serve(
    backend: SearchBackend, settings: ServiceSettings | None = None, *, log_stream: IO[str] | None = None
) -> RunningService:
    """Start the service in this process (threads, not a subprocess) and return once it is listening."""
    settings = settings or ServiceSettings()
    log = json_logger(log_stream)
    metrics = ServiceMetrics(backend)
    servicer = SearchServicer(backend, settings, metrics, log)
    handlers = futures.ThreadPoolExecutor(settings.handler_threads, thread_name_prefix="lenscope-grpc")
    server = grpc.server(
        handlers,
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ],
        maximum_concurrent_rpcs=settings.handler_threads + settings.max_queued_rpcs,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Search": grpc.unary_unary_rpc_method_handler(
            servicer.SearchBytes, request_deserializer=None,
            response_serializer=search_pb2.SearchResponse.SerializeToString),
    }),))
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(1, thread_name_prefix="lenscope-health-watch"),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    address = _address(settings.host, settings.grpc_port)
    try:
        if settings.tls:
            port = server.add_secure_port(address, _server_credentials(settings))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as err:
        servicer.close()
        raise ServiceStartError(f"cannot listen on {address}: {err}") from err
    if port == 0:
        servicer.close()
        raise ServiceStartError(f"cannot listen on {address}")
    try:
        metrics_server = _MetricsHTTPServer(settings.host, settings.metrics_port, metrics.registry)
    except OSError as err:
        server.stop(None)
        servicer.close()
        address = _address(settings.host, settings.metrics_port)
        raise ServiceStartError(f"cannot serve metrics on {address}: {err}") from err

    monitor = HealthMonitor(backend, health_servicer, settings.health_check_interval_s, log)
    monitor.start()
    server.start()
    log.info(
        "service_started", port=port, metrics_port=metrics_server.server_port, tls=settings.tls,
        mutual_tls=settings.tls_client_ca is not None, max_inflight=settings.max_inflight,
        model_hash=_safe_attr(backend, "model_hash"), index_version=_safe_attr(backend, "index_version"),
    )
    return RunningService(
        port=port,
        metrics_port=metrics_server.server_port,
        server=server,
        settings=settings,
        _handlers=handlers,
        _servicer=servicer,
        _health=health_servicer,
        _monitor=monitor,
        _metrics_server=metrics_server,
        metrics=metrics,
    )


def _safe_attr(backend: SearchBackend, name: str) -> str | None:
    try:
        return str(getattr(backend, name))
    except Exception:  # a backend not yet loaded may not know its versions
        return None
