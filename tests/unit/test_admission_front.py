"""The admission front (client/service/front.py) over real gRPC: forwards unchanged, sheds without forwarding.

The service behind it is a stand-in gRPC server (a generic handler that records what reached it), since
the front's logic does not depend on what the service computes; the real service behind the front is
measured by benchmarks/load.py.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lenscope.client.service.front import SEARCH, serve_front
from lenscope.client.service.servicer import REQUEST_ID_KEY


class StandIn(grpc.GenericRpcHandler):
    """Search: echoes the request bytes reversed; b"slow" waits for ``release``; b"bad" is refused."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.release = threading.Event()
        self.deadlines: list[float | None] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != SEARCH:
            return None

        def search(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.seen.append(request)
            self.deadlines.append(context.time_remaining())
            ids = [v for k, v in context.invocation_metadata() if k == REQUEST_ID_KEY]
            context.set_trailing_metadata(((REQUEST_ID_KEY, ids[0] if ids else "none"),))
            if request == b"bad":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "top_k: must be positive")
            if request == b"slow":
                self.release.wait(10)
            return request[::-1]

        return grpc.unary_unary_rpc_method_handler(search)


@pytest.fixture()
def stack():
    stand_in = StandIn()
    backend = grpc.server(futures.ThreadPoolExecutor(8), handlers=(stand_in,))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, backend)
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    backend.start()
    server, port, front = serve_front(f"127.0.0.1:{backend_port}", "127.0.0.1", 0, max_inflight=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield stand_in, channel, front
    finally:
        stand_in.release.set()
        channel.close()
        server.stop(None)
        backend.stop(None)


def test_an_admitted_call_is_forwarded_unchanged(stack) -> None:
    stand_in, channel, front = stack
    search = channel.unary_unary(SEARCH)
    response, call = search.with_call(b"abc", timeout=5, metadata=((REQUEST_ID_KEY, "req-1"),))
    assert response == b"cba"
    assert (REQUEST_ID_KEY, "req-1") in tuple(call.trailing_metadata())
    assert stand_in.seen == [b"abc"]
    assert 0 < stand_in.deadlines[0] <= 5  # the caller's deadline travels with the call
    assert front.inflight == 0


def test_the_services_refusal_comes_back_unchanged(stack) -> None:
    _, channel, front = stack
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(SEARCH)(b"bad", timeout=5, metadata=((REQUEST_ID_KEY, "req-2"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "top_k: must be positive"
    assert (REQUEST_ID_KEY, "req-2") in tuple(err.value.trailing_metadata())
    assert front.inflight == 0  # the slot is given back on an error too


def test_with_every_slot_taken_a_call_is_shed_without_reaching_the_service(stack) -> None:
    stand_in, channel, front = stack
    search = channel.unary_unary(SEARCH)
    slow = [search.future(b"slow", timeout=10) for _ in range(2)]
    deadline = time.monotonic() + 5
    while len(stand_in.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(stand_in.seen) == 2 and front.inflight == 2
    with pytest.raises(grpc.RpcError) as err:
        search(b"third", timeout=5, metadata=((REQUEST_ID_KEY, "req-3"),))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 searches in flight" in err.value.details()
    assert (REQUEST_ID_KEY, "req-3") in tuple(err.value.trailing_metadata())
    assert stand_in.seen == [b"slow", b"slow"]  # never forwarded
    assert front.shed_count == 1
    stand_in.release.set()
    assert [f.result(timeout=10) for f in slow] == [b"wols", b"wols"]
    assert search(b"next", timeout=5) == b"txen"  # the slots came back
    assert front.inflight == 0


def test_health_is_forwarded_and_never_shed(stack) -> None:
    stand_in, channel, _ = stack
    search = channel.unary_unary(SEARCH)
    slow = [search.future(b"slow", timeout=10) for _ in range(2)]
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    finally:
        stand_in.release.set()
        for f in slow:
            f.result(timeout=10)


def test_a_taken_port_is_a_clear_error_not_a_traceback(capsys) -> None:
    import socket

    from lenscope.client.service.front import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        assert main(["--backend", "127.0.0.1:1", "--listen", f"127.0.0.1:{port}", "--max-inflight", "2"]) == 2
    finally:
        taken.close()
    assert f"error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--backend", "127.0.0.1:1", "--max-inflight", "0"])
    assert exit_.value.code == 2


def test_looking_a_call_up_takes_no_slot(stack) -> None:
    """gRPC may refuse a call after the look-up (its concurrent-RPC limit) or never run its handler (the
    caller left before its message came): a slot taken at look-up would never come back."""
    _, channel, front = stack
    details = SimpleNamespace(method=SEARCH, invocation_metadata=())  # what gRPC passes at look-up
    handlers = {id(front.service(details)) for _ in range(10)}
    assert front.inflight == 0 and len(handlers) == 1  # the forwarding handler every time, never the shed one
    assert channel.unary_unary(SEARCH)(b"abc", timeout=5) == b"cba"
