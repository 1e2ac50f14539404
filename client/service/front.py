"""Admission front: a light gRPC process in front of the search service that sheds before the service sees a call.

Why a second process: a call shed by the service itself is answered by gRPC's polling thread, which must
take the service process's GIL, held in turns by ``max_inflight`` engine threads (re-scoring, fusion,
protobuf) and pre-empted with them on a busy box. Measured at 2.4x saturation on 2 cores
(benchmarks/reports/load.md, row "admission front"), the shed answer's tail is that wait. This process
holds no engine: its threads only wait on the service, so its GIL is free when a call arrives, and a call
arriving with every slot taken is answered on its polling thread (``server._OnCallingThread``) without
reading the request. Admitted calls, and every other method (health, reflection), are forwarded as bytes,
with the caller's deadline and ``x-*`` metadata, and the service's status, details and trailing metadata
come back unchanged.

The slots are the service's own ``max_inflight``: the front admits at most that many Search calls, so the
service behind it never sheds (its own admission stays as the second guard). Start it with
``python -m lenscope.client.service.front --backend HOST:PORT --listen HOST:PORT --max-inflight N``; it
prints ``ready <port>`` once listening. Not yet wired into ``lenscope serve search`` or the k8s manifests
(there it would be a sidecar container): TLS is not terminated here, so it listens on plain gRPC only.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from typing import Any, Callable, Iterator

import grpc

from lenscope.client.service.observability import json_logger
from lenscope.client.service.server import _address, _OnCallingThread
from lenscope.client.service.servicer import REQUEST_ID_KEY, SERVICE_NAME, _remaining_s, _request_id

SEARCH = f"/{SERVICE_NAME}/Search"
# Methods whose requests or responses stream; every other method is forwarded as unary-unary (an unknown
# one comes back from the service as UNIMPLEMENTED).
_SERVER_STREAMING = {"/grpc.health.v1.Health/Watch"}
_BIDI_STREAMING = {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                   "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}


class AdmissionFront(grpc.GenericRpcHandler):
    """Chooses each call's handler on gRPC's polling thread: shed, or forward to ``channel``."""

    def __init__(self, channel: grpc.Channel, max_inflight: int, log: Any) -> None:
        self._channel = channel
        self._max = max_inflight
        self._taken = 0
        self._lock = threading.Lock()
        self._log = log
        self._busy = f"server busy: {max_inflight} searches in flight; retry with backoff"
        self.shed_count = 0

        def shed(request_iterator: Any, context: grpc.ServicerContext) -> bytes:
            self._shed_now(context)

        shed.experimental_thread_pool = _OnCallingThread()  # type: ignore[attr-defined]
        # request-streaming, so that gRPC hands the call over without first receiving its message
        self._shed = grpc.stream_unary_rpc_method_handler(shed)
        self._search = self._search_handler()
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    @property
    def inflight(self) -> int:
        return self._taken

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """Only a look at the count: a slot is taken by the handler itself, since gRPC may still refuse
        the call after this (its concurrent-RPC limit) or never run the handler (the caller left before
        its message came), and a slot taken here would then never come back."""
        method = handler_call_details.method
        if method == SEARCH:
            return self._shed if self._taken >= self._max else self._search
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._handlers.setdefault(method, self._forwarding_handler(method))
        return handler

    def _shed_now(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.shed_count += 1
        request_id = _request_id(context)
        self._log.warning("search", code="RESOURCE_EXHAUSTED", request_id=request_id, message=self._busy,
                          shed_by="admission_front")
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._busy)

    def _search_handler(self) -> grpc.RpcMethodHandler:
        call = self._channel.unary_unary(SEARCH)  # bytes in, bytes out

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:  # the polling thread only looked; another call may have taken the last slot
                admitted = self._taken < self._max
                self._taken += admitted
            if not admitted:
                self._shed_now(context)
            try:
                return _unary(call, request, context)
            finally:
                with self._lock:
                    self._taken -= 1

        return grpc.unary_unary_rpc_method_handler(forward)

    def _forwarding_handler(self, method: str) -> grpc.RpcMethodHandler:
        if method in _SERVER_STREAMING:
            stream = self._channel.unary_stream(method)
            return grpc.unary_stream_rpc_method_handler(lambda request, context: _streamed(stream, request, context))
        if method in _BIDI_STREAMING:
            bidi = self._channel.stream_stream(method)
            return grpc.stream_stream_rpc_method_handler(lambda requests, context: _streamed(bidi, requests, context))
        call = self._channel.unary_unary(method)
        return grpc.unary_unary_rpc_method_handler(lambda request, context: _unary(call, request, context))


def _call_options(context: grpc.ServicerContext) -> dict[str, Any]:
    metadata = tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k.startswith("x-"))
    return {"timeout": _remaining_s(context, None), "metadata": metadata}  # None: the caller sent no deadline


def _unary(call: Callable, request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
        response, outcome = call.with_call(request, **_call_options(context))
    except grpc.RpcError as err:
        _pass_back(context, err)
    context.set_trailing_metadata(outcome.trailing_metadata() or ())
    return response


def _streamed(call: Callable, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
    responses = call(request, **_call_options(context))
    context.add_callback(responses.cancel)  # the caller went away: stop the call behind it
    try:
        yield from responses
    except grpc.RpcError as err:
        _pass_back(context, err)


def _pass_back(context: grpc.ServicerContext, err: grpc.RpcError) -> None:
    """The service's status, details and trailing metadata, unchanged, to the caller."""
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    if trailing:
        context.set_trailing_metadata(trailing)
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNAVAILABLE
    context.abort(code, (err.details() if hasattr(err, "details") else None) or str(code))


def serve_front(backend: str, host: str, port: int, max_inflight: int, *, spare_threads: int = 8,
                log: Any = None) -> tuple[grpc.Server, int, AdmissionFront]:
    """Start the front in this process; return the server, its bound port and the handler."""
    channel = grpc.insecure_channel(backend)
    front = AdmissionFront(channel, max_inflight, log or json_logger())
    threads = max_inflight + spare_threads  # admitted calls wait on the service; spares forward health
    server = grpc.server(futures.ThreadPoolExecutor(threads, thread_name_prefix="lenscope-front"),
                         handlers=(front,), maximum_concurrent_rpcs=threads,
                         options=[("grpc.so_reuseport", 0)])
    try:
        bound = server.add_insecure_port(_address(host, port))
    except RuntimeError:  # grpc's "Failed to bind", e.g. a port already taken
        bound = 0
    if bound == 0:
        channel.close()
        raise OSError(f"cannot listen on {_address(host, port)}")
    server.start()
    return server, bound, front


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lenscope.client.service.front", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=True, help="the search service, HOST:PORT (plain gRPC)")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any free port)")
    p.add_argument("--max-inflight", type=int, required=True, help="the service's LENSCOPE_MAX_INFLIGHT")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if args.max_inflight < 1 or not port.isdigit():
        p.error(f"--max-inflight must be >= 1 and --listen HOST:PORT; got {args.max_inflight}, {args.listen!r}")
    try:
        server, bound, _ = serve_front(args.backend, host.strip("[]") or "127.0.0.1", int(port), args.max_inflight)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ready {bound}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
