"""Running the gRPC search service: ``lenscope.v1.SearchService`` in front of any :class:`SearchBackend`.

It owns the transport concerns and nothing else; ranking lives in the engine. ``serve`` wires the
servicer (``servicer``: deadlines and shedding; ``mapping``: validation and status codes) into a
grpc server with ``max_request_bytes`` as the transport's receive limit (larger messages are refused
with RESOURCE_EXHAUSTED before being parsed), optional TLS / mutual TLS, grpc.health.v1 (SERVING only
while ``backend.ready()``, re-checked in the background by ``health``), server reflection, and
Prometheus metrics on their own port and registry plus one JSON log line per request
(``observability``).
"""

from __future__ import annotations

import ssl
from concurrent import futures
from dataclasses import dataclass, field
from typing import IO, Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lenscope.client.api import search_pb2
from lenscope.client.service.health import HealthMonitor
from lenscope.client.service.observability import MetricsHTTPServer, ServiceMetrics, json_logger
from lenscope.client.service.servicer import SERVICE_NAME, SearchBackend, SearchServicer
from lenscope.client.service.settings import ServiceSettings


class _OnCallingThread(futures.ThreadPoolExecutor):
    """An "executor" that runs what it is given at once, on the thread that submits it, and never starts
    a thread. gRPC runs a method's behaviour on ``behavior.experimental_thread_pool`` when that is a
    ThreadPoolExecutor; for the shed handler this means gRPC's polling thread answers the call itself
    (a counter, a log line, the status), with no hand-off to a handler thread. Each hand-off waits for
    the GIL behind ``max_inflight`` engine threads: timestamped per call at 2.4x saturation, the
    hand-off was a shed answer's median cost (2-3 ms; 0.15 ms without it). Only for work that never
    blocks: the polling thread serves every call. If gRPC stops honouring the attribute, the shed
    handler runs on a handler thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> futures.Future:  # type: ignore[override]
        future: futures.Future = futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future, as a pool would
            future.set_exception(err)
        return future


class SearchHandlers(grpc.GenericRpcHandler):
    """The Search method's handler, chosen per call on gRPC's polling thread (where it looks methods up):
    the shed handler while every ``max_inflight`` slot is taken, else the one that admits, decodes and
    searches. The shed handler is request-streaming, so gRPC does not first receive the call's message,
    and runs on the polling thread itself (``_OnCallingThread``; see ``servicer``)."""

    def __init__(self, servicer: SearchServicer) -> None:
        self._method = f"/{SERVICE_NAME}/Search"
        serialize = search_pb2.SearchResponse.SerializeToString

        def shed(request_iterator: Any, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
            return servicer.ShedStream(request_iterator, context)

        shed.experimental_thread_pool = _OnCallingThread()  # type: ignore[attr-defined]
        self._search = grpc.unary_unary_rpc_method_handler(
            servicer.SearchBytes, request_deserializer=None, response_serializer=serialize)
        self._shed = grpc.stream_unary_rpc_method_handler(shed, request_deserializer=None, response_serializer=serialize)
        self._saturated = servicer.saturated

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != self._method:
            return None
        return self._shed if self._saturated() else self._search


class ServiceStartError(RuntimeError):
    """The service could not bind its ports or load its TLS material."""


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
    _metrics_server: MetricsHTTPServer = field(repr=False)
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
        # Shed before work: past this many concurrent RPCs gRPC answers RESOURCE_EXHAUSTED on its own
        # polling thread (no handler thread, no decoding); below it the servicer's max_inflight slots
        # decide, still before decoding. With no queue, no request waits for a handler thread.
        maximum_concurrent_rpcs=settings.handler_threads + settings.max_queued_rpcs,
    )
    server.add_generic_rpc_handlers((SearchHandlers(servicer),))
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
    monitor = HealthMonitor(backend, health_servicer, settings.health_check_interval_s, log)
    try:
        metrics_server = MetricsHTTPServer(settings.host, settings.metrics_port, metrics.registry,
                                           ready=lambda: monitor.serving)
    except OSError as err:
        server.stop(None)
        servicer.close()
        address = _address(settings.host, settings.metrics_port)
        raise ServiceStartError(f"cannot serve metrics on {address}: {err}") from err

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
