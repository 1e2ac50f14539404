"""The gRPC search service over a real server and real channels, with a scripted fake engine.

The fake stands in for the search engine only: everything between the wire and ``backend.search``
(validation, deadlines, shedding, status mapping, health, reflection, metrics, logs, TLS) is the real
code. Waits are bounded polls or events, never fixed sleeps that hope something happened.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import typer
from PIL import Image
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.cli.search import search_command
from lenscope.client.ranking.facets import UnknownFacetError
from lenscope.client.index.bundle import ModelVersionMismatch
from lenscope.client.search.models import (
    BackendUnavailable,
    DeadlineExceeded,
    Hit,
    OverFetchInfo,
    Overloaded,
    QueryError,
    RankingInfo,
    SearchQuery,
    SearchResult,
)
from lenscope.client.service.observability import json_logger
from lenscope.client.service.server import RunningService, ServiceStartError, serve
from lenscope.client.service.servicer import SERVICE_NAME
from lenscope.client.service.settings import ServiceSettings

KiB = 1024
Code = grpc.StatusCode


class FakeEngine:
    """Returns a canned result; can be told to be slow, to raise, or to report not ready."""

    model_hash = "a1b2c3d4e5f6" * 4
    index_version = "bundle-20260101-0001"

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.error: BaseException | None = None
        self.is_ready = True
        self.recall: float | None = 0.97
        self.queries: list[SearchQuery] = []
        self.release = threading.Event()  # set at teardown: slow calls return at once
        self._lock = threading.Lock()
        self.running = 0
        self.max_running = 0

    def search(self, query: SearchQuery) -> SearchResult:
        with self._lock:
            self.queries.append(query)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.delay_s:
                self.release.wait(self.delay_s)
            if self.error is not None:
                raise self.error
            return canned_result()
        finally:
            with self._lock:
                self.running -= 1

    def facet_names(self) -> list[str]:
        return ["category", "color"]

    def ready(self) -> bool:
        if isinstance(self.is_ready, BaseException):
            raise self.is_ready
        return self.is_ready

    def ann_recall(self) -> float | None:
        return self.recall


def canned_result() -> SearchResult:
    return SearchResult(
        hits=[
            Hit(
                product_id="p-17", title="Red floral wrap dress", image="images/p-17.jpg", score=0.81,
                breakdown={"visual": 0.5, "text": 0.25, "attributes": 0.1, "bias": -0.04},
                raw={"visual": 0.31, "text": 0.27}, calibrated={"visual": 0.9, "text": 0.7},
                attributes={"color": "red", "category": "dress"}, popularity=0.4,
            ),
            Hit(product_id="p-3", title="Burgundy midi dress", image="images/p-3.jpg", score=0.62,
                breakdown={"visual": 0.4, "text": 0.22}),
        ],
        facets={"color": {"red": 12, "burgundy": 3, "blue": 0}, "category": {"dress": 15}},
        timings_ms={"embed": 4.0, "retrieve": 1.5, "calibrate": 0.1, "fuse": 0.2, "facets": 0.3, "total": 6.3},
        model_hash=FakeEngine.model_hash,
        index_version=FakeEngine.index_version,
        over_fetch=OverFetchInfo(candidates=200, rounds=2, filled=True, hit_bound=False),
        query_attributes={"color": {"red": 0.8, "pink": 0.15}},
        ranking=RankingInfo(query_type="image+text", ranked_by="visual", calibrated_signals=["visual"],
                            raw_signals=["text_image"], source="self-check", reason="fused did not beat visual",
                            held_out={"fused": {"ndcg10": 0.5, "r10": 0.9}, "visual": {"ndcg10": 0.6, "r10": 0.9}},
                            rule="raw-fused-lost-held-out", pooled={"visual": {"ndcg10": 0.55, "r10": 0.8}}),
    )


def settings(**overrides: object) -> ServiceSettings:
    base: dict[str, object] = dict(
        grpc_port=0, metrics_port=0, health_check_interval_s=0.05, shutdown_grace_s=0.0,
        max_request_bytes=64 * KiB, max_image_bytes=32 * KiB,
    )
    return ServiceSettings(**{**base, **overrides})


class Harness:
    def __init__(self, service: RunningService, engine: FakeEngine, log: io.StringIO):
        self.service = service
        self.engine = engine
        self.log = log
        self.target = f"127.0.0.1:{service.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = search_pb2_grpc.SearchServiceStub(self.channel)

    def search(self, timeout: float | None = 5.0, **fields: object) -> search_pb2.SearchResponse:
        return self.stub.Search(search_pb2.SearchRequest(**fields), timeout=timeout)

    def error(self, timeout: float | None = 5.0, **fields: object) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.search(timeout=timeout, **fields)
        return info.value

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
def start() -> Iterator[Callable[..., Harness]]:
    harnesses: list[Harness] = []

    def _start(engine: FakeEngine | None = None, **overrides: object) -> Harness:
        engine = engine or FakeEngine()
        log = io.StringIO()
        harness = Harness(serve(engine, settings(**overrides), log_stream=log), engine, log)
        harnesses.append(harness)
        return harness

    yield _start
    for h in harnesses:
        h.engine.release.set()
        h.channel.close()
        h.service.stop(grace_s=0)


@pytest.fixture
def svc(start: Callable[..., Harness]) -> Harness:
    return start()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------------------


def test_request_and_response_round_trip(svc: Harness) -> None:
    request = search_pb2.SearchRequest(
        image=b"\x89PNG fake bytes", text="  red floral dress ",
        filters=[
            search_pb2.Filter(facet="color", values=["red"]),
            search_pb2.Filter(facet="category", values=["dress"]),
            search_pb2.Filter(facet="color", values=["burgundy"]),  # repeated facet: values OR-ed
        ],
        facets=["color", "color"], top_k=5, explain=True,
    )
    response, call = svc.stub.Search.with_call(request, timeout=2.0, metadata=[("x-request-id", "req-42")])

    (query,) = svc.engine.queries
    assert query.image == b"\x89PNG fake bytes"
    assert query.text == "red floral dress"
    assert query.filters == {"category": ("dress",), "color": ("burgundy", "red")}
    assert query.facets == ("color",)
    assert query.top_k == 5 and query.explain
    # The engine gets the caller's remaining 2 s (it hands Triton the one deadline fraction itself,
    # so the share is never applied twice), never more.
    assert 1.6 < query.deadline_s <= 2.0

    hit = response.hits[0]
    assert (hit.product_id, hit.title, hit.image) == ("p-17", "Red floral wrap dress", "images/p-17.jpg")
    assert hit.score == pytest.approx(0.81)
    assert dict(hit.breakdown) == pytest.approx({"visual": 0.5, "text": 0.25, "attributes": 0.1, "bias": -0.04})
    assert sum(hit.breakdown.values()) == pytest.approx(hit.score)
    assert dict(hit.raw) == pytest.approx({"visual": 0.31, "text": 0.27})
    assert dict(hit.calibrated) == pytest.approx({"visual": 0.9, "text": 0.7})
    assert dict(hit.attributes) == {"color": "red", "category": "dress"}
    assert hit.popularity == pytest.approx(0.4)
    assert [h.product_id for h in response.hits] == ["p-17", "p-3"]
    r = response.ranking  # the index's decision for this query type, and which signals were calibrated
    assert (r.query_type, r.ranked_by, list(r.calibrated_signals), list(r.raw_signals)) == (
        "image+text", "visual", ["visual"], ["text_image"])
    assert r.source == "self-check" and r.held_out["visual"].ndcg10 == pytest.approx(0.6)
    assert r.rule == "raw-fused-lost-held-out" and r.pooled["visual"].r10 == pytest.approx(0.8)
    # Facet values keep the engine's order (count desc), zero-count selected values included.
    assert [(f.facet, [(v.value, v.count) for v in f.values]) for f in response.facets] == [
        ("color", [("red", 12), ("burgundy", 3), ("blue", 0)]),
        ("category", [("dress", 15)]),
    ]
    timings = dict(response.timings_ms)
    assert {"embed", "retrieve", "calibrate", "fuse", "facets", "engine_total", "total"} == set(timings)
    assert timings["engine_total"] == pytest.approx(6.3) and timings["total"] > 0
    assert response.model_hash == FakeEngine.model_hash
    assert response.index_version == FakeEngine.index_version
    assert (response.over_fetch.candidates, response.over_fetch.rounds) == (200, 2)
    assert response.over_fetch.filled and not response.over_fetch.hit_bound
    assert dict(response.query_attributes["color"].probabilities) == pytest.approx({"red": 0.8, "pink": 0.15})
    assert response.request_id == "req-42"
    assert dict(call.trailing_metadata())["x-request-id"] == "req-42"


def test_defaults_top_k_and_deadline_when_the_caller_sends_none(start: Callable[..., Harness]) -> None:
    h = start(default_deadline_s=0.5)
    response = h.search(timeout=None, text="dress")
    (query,) = h.engine.queries
    assert query.top_k == 10 and query.image is None and query.filters == {} and query.facets == ()
    assert 0.4 < query.deadline_s <= 0.5  # the 0.5 s default (Triton's share is taken by the engine)
    assert len(response.request_id) == 16  # generated when the caller sends none


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "empty query"),
        ({"text": "   "}, "empty query"),
        ({"image": b""}, "empty query"),
        ({"text": "x" * 1001}, "text is 1001 characters; the limit is 1000"),
        ({"image": b"\xff" * (32 * KiB + 1)}, "the limit is 32768 bytes"),
        ({"text": "dress", "top_k": 0}, "top_k must be between 1 and 100, got 0"),
        ({"text": "dress", "top_k": -3}, "top_k must be between 1 and 100, got -3"),
        ({"text": "dress", "top_k": 101}, "top_k must be between 1 and 100, got 101"),
        ({"text": "dress", "filters": [search_pb2.Filter(facet="colour", values=["red"])]},
         "unknown facet 'colour'; known facets: category, color"),
        ({"text": "dress", "filters": [search_pb2.Filter(facet="color")]}, "needs at least one value"),
        ({"text": "dress", "filters": [search_pb2.Filter(facet="color", values=["red", " "])]}, "no blank ones"),
        ({"text": "dress", "facets": ["size"]}, "unknown facet 'size'"),
    ],
    ids=["nothing", "blank-text", "empty-image", "long-text", "big-image", "top_k-0", "top_k-negative",
         "top_k-101", "unknown-filter", "filter-without-values", "blank-filter-value", "unknown-facet"],
)
def test_invalid_requests_are_invalid_argument_with_a_clear_message(svc: Harness, fields: dict, message: str) -> None:
    err = svc.error(**fields)
    assert err.code() == Code.INVALID_ARGUMENT
    assert message in err.details()
    assert svc.engine.queries == []  # rejected before reaching the engine


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (QueryError("image is not a decodable picture"), Code.INVALID_ARGUMENT),
        (UnknownFacetError("size", ["color"]), Code.INVALID_ARGUMENT),
        (Overloaded("triton queue full"), Code.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("embed took too long"), Code.DEADLINE_EXCEEDED),
        (BackendUnavailable("triton at 127.0.0.1:8001 unreachable"), Code.UNAVAILABLE),
        (ModelVersionMismatch("aaa", "bbb", "index bundle v1"), Code.FAILED_PRECONDITION),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_engine_errors_map_to_status_codes(svc: Harness, error: BaseException, code: grpc.StatusCode) -> None:
    svc.engine.error = error
    err = svc.error(text="dress")
    assert err.code() == code
    assert err.details() == str(error)


def test_unexpected_engine_error_is_internal_without_a_traceback(svc: Harness) -> None:
    svc.engine.error = KeyError("/srv/secret/path in a stack frame")
    err = svc.error(text="dress")
    request_id = dict(err.trailing_metadata())["x-request-id"]
    assert err.code() == Code.INTERNAL
    assert err.details() == f"internal error (request id {request_id}); see the server log"
    failure = next(line for line in svc.log_lines() if line["event"] == "search_failed")
    assert failure["request_id"] == request_id and "Traceback" in failure["exception"]


# --------------------------------------------------------------------------------------------------
# Latency discipline
# --------------------------------------------------------------------------------------------------


def test_caller_deadline_shorter_than_the_engine_is_deadline_exceeded_quickly(svc: Harness) -> None:
    svc.engine.delay_s = 5.0
    t0 = time.monotonic()
    err = svc.error(timeout=0.3, text="dress")
    assert err.code() == Code.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.0
    assert svc.engine.queries[0].deadline_s <= 0.3


def test_server_enforces_the_default_deadline_even_if_the_engine_ignores_it(start: Callable[..., Harness]) -> None:
    h = start(default_deadline_s=0.2)
    h.engine.delay_s = 5.0
    t0 = time.monotonic()
    err = h.error(timeout=None, text="dress")
    assert err.code() == Code.DEADLINE_EXCEEDED  # sent by the server: the client set no deadline
    assert "200 ms deadline" in err.details()
    assert time.monotonic() - t0 < 1.0


def test_burst_over_max_inflight_is_shed_fast(start: Callable[..., Harness]) -> None:
    h = start(max_inflight=2)
    h.engine.delay_s = 0.5
    request = search_pb2.SearchRequest(text="dress")
    outcomes: list[tuple[grpc.StatusCode, float]] = []
    lock = threading.Lock()

    def call() -> None:
        t0 = time.monotonic()
        try:
            h.stub.Search(request, timeout=5)
            code = Code.OK
        except grpc.RpcError as err:
            code = err.code()
            assert "2 searches in flight" in err.details()
        with lock:
            outcomes.append((code, time.monotonic() - t0))

    with futures.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(call) for _ in range(8)]:
            f.result()

    codes = [c for c, _ in outcomes]
    assert set(codes) == {Code.OK, Code.RESOURCE_EXHAUSTED}
    assert codes.count(Code.OK) >= 2 and codes.count(Code.RESOURCE_EXHAUSTED) >= 4
    assert all(t < 0.3 for c, t in outcomes if c == Code.RESOURCE_EXHAUSTED)  # shed at once, not queued
    assert h.engine.max_running == 2


def test_abandoned_work_keeps_its_slot_until_the_engine_finishes(start: Callable[..., Harness]) -> None:
    h = start(max_inflight=1, default_deadline_s=0.15)
    h.engine.delay_s = 10.0
    assert h.error(timeout=None, text="dress").code() == Code.DEADLINE_EXCEEDED
    # The engine is still busy with the abandoned call: capacity is really used, so shed.
    assert h.error(text="dress").code() == Code.RESOURCE_EXHAUSTED
    h.engine.delay_s = 0.0
    h.engine.release.set()
    wait_until(lambda: h.engine.running == 0)
    assert h.search(text="dress").hits


def test_a_shed_call_is_answered_before_its_bytes_are_decoded(start: Callable[..., Harness]) -> None:
    # Shed before work: with the only slot taken, even bytes that are not a SearchRequest get
    # RESOURCE_EXHAUSTED (admission runs first); once the slot is free they get INVALID_ARGUMENT.
    h = start(max_inflight=1)
    h.engine.delay_s = 10.0
    pending = h.stub.Search.future(search_pb2.SearchRequest(text="dress"), timeout=30)
    wait_until(lambda: h.engine.running == 1)
    raw = h.channel.unary_unary(f"/{SERVICE_NAME}/Search")  # identity serializers: send raw bytes
    garbage = b"\x12\x03\xff\xfe\xfd"  # field 2 (text, a string) holding invalid UTF-8
    with pytest.raises(grpc.RpcError) as shed:
        raw(garbage, timeout=5)
    assert shed.value.code() == Code.RESOURCE_EXHAUSTED
    assert "1 searches in flight" in shed.value.details()
    h.engine.release.set()
    assert pending.result().hits
    wait_until(lambda: h.engine.running == 0)
    with pytest.raises(grpc.RpcError) as invalid:
        raw(garbage, timeout=5)
    assert invalid.value.code() == Code.INVALID_ARGUMENT
    assert len(h.engine.queries) == 1
    lines = h.log_lines()
    assert [line["code"] for line in lines if line.get("event") == "search"].count("RESOURCE_EXHAUSTED") == 1


def test_a_call_arriving_with_every_slot_taken_is_shed_without_its_message(start: Callable[..., Harness]) -> None:
    # The polling thread picks the shed handler when every slot is taken: it answers without waiting
    # for the request message. A call whose message never comes (its request stream held open) still
    # gets RESOURCE_EXHAUSTED at once; the handler that reads the message would wait for the deadline.
    h = start(max_inflight=1)
    h.engine.delay_s = 10.0
    pending = h.stub.Search.future(search_pb2.SearchRequest(text="dress"), timeout=30)
    wait_until(lambda: h.engine.running == 1)
    no_message = threading.Event()

    def never_sends() -> Iterator[bytes]:
        no_message.wait(30)
        return
        yield  # pragma: no cover

    held_open = h.channel.stream_unary(f"/{SERVICE_NAME}/Search")
    try:
        with pytest.raises(grpc.RpcError) as shed:
            held_open(never_sends(), timeout=5)
    finally:
        no_message.set()
    assert shed.value.code() == Code.RESOURCE_EXHAUSTED
    assert "1 searches in flight" in shed.value.details()
    assert any(line.get("code") == "RESOURCE_EXHAUSTED" and line.get("request_id") for line in h.log_lines())
    h.engine.release.set()
    assert pending.result().hits
    assert len(h.engine.queries) == 1


@contextmanager
def every_handler_busy(h: Harness) -> Iterator[grpc.Future]:
    """With max_inflight 1 + spare 1: a slow search holds the only slot (its future is yielded) and a
    reflection stream whose requests never come holds the spare handler thread, until the block ends."""
    h.engine.delay_s = 10.0
    pending = h.stub.Search.future(search_pb2.SearchRequest(text="dress"), timeout=30)
    wait_until(lambda: h.engine.running == 1)
    requests_done = threading.Event()

    def no_requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        requests_done.wait(30)
        return
        yield  # pragma: no cover

    reflection = reflection_pb2_grpc.ServerReflectionStub(h.channel).ServerReflectionInfo(no_requests(), timeout=30)
    try:
        yield pending
    finally:
        requests_done.set()
        reflection.cancel()


def test_a_shed_answer_needs_no_handler_thread(start: Callable[..., Harness]) -> None:
    # Every handler thread busy (the only slot's search, and a reflection stream holding the spare one),
    # room in gRPC's queue: a search arriving now is shed by gRPC's polling thread itself, at once. A
    # shed handler run on a handler thread would wait in the queue until the stream ends.
    h = start(max_inflight=1, spare_threads=1, max_queued_rpcs=4)
    earlier = set(threading.enumerate())  # other tests' pools may still be winding down
    with every_handler_busy(h) as pending:
        # the pool starts a thread per submission while none is idle: two threads = both calls hold one
        wait_until(lambda: sum(t.name.startswith("lenscope-grpc") for t in set(threading.enumerate()) - earlier) == 2)
        with pytest.raises(grpc.RpcError) as shed:
            h.search(text="dress", timeout=5)
        assert shed.value.code() == Code.RESOURCE_EXHAUSTED
        assert "1 searches in flight" in shed.value.details()
    h.engine.release.set()
    assert pending.result().hits


def test_grpc_itself_rejects_rpcs_beyond_the_handler_threads(start: Callable[..., Harness]) -> None:
    # max_inflight 1 + spare 1 handler threads, no queue: a third concurrent call is refused by
    # gRPC on its polling thread (never reaching a handler), still as RESOURCE_EXHAUSTED.
    h = start(max_inflight=1, spare_threads=1, max_queued_rpcs=0)
    seen: list[tuple[grpc.StatusCode, str]] = []

    def refused_by_grpc() -> bool:  # polled until the stream holds its thread
        try:
            h.search(text="dress", timeout=5)
            seen.append((Code.OK, ""))
        except grpc.RpcError as err:
            seen.append((err.code(), err.details()))
        return "Concurrent RPC limit exceeded" in seen[-1][1]

    with every_handler_busy(h) as pending:
        wait_until(refused_by_grpc)
        assert {code for code, _ in seen} == {Code.RESOURCE_EXHAUSTED}, seen
        assert len(h.engine.queries) == 1  # only the first, slow search reached the engine
    h.engine.release.set()
    assert pending.result().hits


def test_cancelled_call_frees_its_handler_at_once(svc: Harness) -> None:
    svc.engine.delay_s = 10.0
    pending = svc.stub.Search.future(search_pb2.SearchRequest(text="dress"), timeout=30)
    wait_until(lambda: svc.engine.running == 1)
    pending.cancel()
    wait_until(lambda: any(line.get("code") == "CANCELLED" for line in svc.log_lines()), timeout_s=2.0)


def test_a_cancel_landing_before_the_handler_listens_does_not_wait_for_the_deadline() -> None:
    """The race CI once hit: the caller cancels between the hand-over to the engine and the handler's
    add_callback; gRPC then refuses the callback (returns False) and never runs it. The handler must
    not sleep until the deadline (30 s here) on an event nobody will set."""
    from lenscope.client.service.mapping import Cancelled
    from lenscope.client.service.observability import ServiceMetrics
    from lenscope.client.service.servicer import SearchServicer, _Slot

    class EndedContext:
        def add_callback(self, callback) -> bool:
            return False  # what grpc answers once the RPC has terminated

        def is_active(self) -> bool:
            return False

    engine = FakeEngine()
    engine.delay_s = 10.0
    servicer = SearchServicer(engine, settings(), ServiceMetrics(engine), json_logger(io.StringIO()))
    try:  # without the fix the handler waits for the engine (10 s) and returns its result instead
        with pytest.raises(Cancelled):
            servicer._run(SearchQuery(text="dress"), time.monotonic() + 30.0, 30.0, EndedContext(), _Slot(lambda: None))
    finally:
        engine.release.set()


def test_request_over_the_transport_cap_is_resource_exhausted(svc: Harness) -> None:
    # 64 KiB receive cap: gRPC refuses the message before it is parsed, so the handler never runs
    # and no validation message is possible; RESOURCE_EXHAUSTED is gRPC's code for this. Images
    # between max_image_bytes and the cap get INVALID_ARGUMENT with the limit (see above).
    err = svc.error(image=b"\xff" * (100 * KiB))
    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert "larger than max" in err.details()
    assert svc.engine.queries == []


def test_graceful_stop_lets_in_flight_requests_finish(svc: Harness) -> None:
    svc.engine.delay_s = 0.3
    pending = svc.stub.Search.future(search_pb2.SearchRequest(text="dress"), timeout=5)
    wait_until(lambda: svc.engine.running == 1)
    svc.service.stop(grace_s=3)
    assert pending.result().hits


def test_a_taken_port_fails_at_start_with_a_clear_error(svc: Harness) -> None:
    with pytest.raises(ServiceStartError, match=f"cannot listen on 127.0.0.1:{svc.service.port}"):
        serve(FakeEngine(), settings(grpc_port=svc.service.port), log_stream=io.StringIO())
    with pytest.raises(ServiceStartError, match="cannot serve metrics"):
        serve(FakeEngine(), settings(metrics_port=svc.service.metrics_port), log_stream=io.StringIO())


# --------------------------------------------------------------------------------------------------
# Health, reflection, metrics, logs
# --------------------------------------------------------------------------------------------------


def _health(h: Harness, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(h.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


def test_health_follows_backend_readiness(svc: Harness) -> None:
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert _health(svc, "") == SERVING
    assert _health(svc, SERVICE_NAME) == SERVING
    svc.engine.is_ready = False
    wait_until(lambda: _health(svc, "") == NOT_SERVING and _health(svc, SERVICE_NAME) == NOT_SERVING)
    svc.engine.is_ready = True
    wait_until(lambda: _health(svc, SERVICE_NAME) == SERVING)
    svc.engine.is_ready = RuntimeError("triton probe crashed")  # cannot tell -> not serving
    wait_until(lambda: _health(svc, SERVICE_NAME) == NOT_SERVING)


def _ready_http(h: Harness) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{h.service.metrics_port}/ready", timeout=2).status
    except urllib.error.HTTPError as err:
        return err.code


def test_http_ready_mirrors_the_grpc_health(svc: Harness) -> None:
    """The kubelet's readiness probe (k8s/base/search) reads /ready on the metrics port."""
    assert _ready_http(svc) == 200
    svc.engine.is_ready = False
    wait_until(lambda: _ready_http(svc) == 503)
    svc.engine.is_ready = True
    wait_until(lambda: _ready_http(svc) == 200)


def test_health_starts_not_serving_when_the_backend_is_not_ready(start: Callable[..., Harness]) -> None:
    engine = FakeEngine()
    engine.is_ready = False
    h = start(engine)
    assert _health(h, "") == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_describes_the_search_service(svc: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(svc.channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2)
    names = {s.name for s in answer.list_services_response.service}
    assert {"lenscope.v1.SearchService", "grpc.health.v1.Health"} <= names
    # What `grpcurl describe` does: resolve the service and its messages from the server alone.
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(svc.channel))
    method = pool.FindServiceByName("lenscope.v1.SearchService").methods_by_name["Search"]
    assert method.input_type.full_name == "lenscope.v1.SearchRequest"
    assert "breakdown" in pool.FindMessageTypeByName("lenscope.v1.Hit").fields_by_name


def _scrape(h: Harness) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{h.service.metrics_port}/metrics", timeout=2).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_metrics_count_the_calls_made(start: Callable[..., Harness]) -> None:
    h = start()
    other = start()  # a second server in the same process has its own registry
    for _ in range(3):
        h.search(text="dress")
    h.error(text="")
    h.engine.error = BackendUnavailable("triton down")
    h.error(text="dress")
    other.search(text="dress")

    m = _scrape(h)
    assert m[("lenscope_search_requests_total", (("code", "OK"),))] == 3
    assert m[("lenscope_search_requests_total", (("code", "INVALID_ARGUMENT"),))] == 1
    assert m[("lenscope_search_requests_total", (("code", "UNAVAILABLE"),))] == 1
    assert m[("lenscope_search_requests_total", (("code", "RESOURCE_EXHAUSTED"),))] == 0
    for stage in ("embed", "retrieve", "fuse", "engine_total", "total"):
        assert m[("lenscope_search_stage_seconds_count", (("stage", stage),))] == 3
    assert m[("lenscope_search_stage_seconds_sum", (("stage", "embed"),))] == pytest.approx(3 * 0.004)
    assert m[("lenscope_search_inflight_requests", ())] == 0
    assert m[("lenscope_ann_recall_at_k", ())] == pytest.approx(0.97)
    assert _scrape(other)[("lenscope_search_requests_total", (("code", "OK"),))] == 1


def test_structured_log_line_per_request_without_query_content(svc: Harness) -> None:
    secret_text = "my very private query"
    svc.search(image=b"IMAGEBYTES" * 10, text=secret_text)
    svc.error(text="dress", top_k=0)
    lines = [line for line in svc.log_lines() if line["event"] == "search"]
    assert [line["code"] for line in lines] == ["OK", "INVALID_ARGUMENT"]
    ok, bad = lines
    assert ok["hits"] == 2 and ok["image_bytes"] == 100 and ok["text_chars"] == len(secret_text)
    assert ok["latency_ms"] > 0 and len(ok["request_id"]) == 16 and ok["level"] == "info"
    assert "top_k" in bad["message"]
    assert "IMAGEBYTES" not in svc.log.getvalue() and secret_text not in svc.log.getvalue()


# --------------------------------------------------------------------------------------------------
# CLI and TLS
# --------------------------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("search")(search_command)
    app.command("noop")(lambda: None)  # two commands, so "search" is a subcommand as under `lenscope`
    return app


def test_cli_prints_hits_breakdown_facets_and_timings(svc: Harness, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 40)).save(buf, format="JPEG")
    photo.write_bytes(buf.getvalue())  # a real header: the CLI checks it before sending
    result = CliRunner().invoke(_cli(), [
        "search", "--image", str(photo), "--text", "red floral dress", "--filter", "color=red,burgundy",
        "--filter", "category=dress", "--facet", "color", "--top-k", "5", "--target", svc.target,
        "--timeout", "2",
    ], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("Red floral wrap dress", "p-17", "0.8100", "visual", "+0.5000", "red (12)", "total", "embed 4.0"):
        assert text in result.output
    (query,) = svc.engine.queries
    assert query.image == buf.getvalue()
    assert query.filters == {"category": ("dress",), "color": ("burgundy", "red")}


def test_cli_reports_the_status_and_exits_non_zero(svc: Harness) -> None:
    # a query the service refuses as invalid is bad input: exit 2, the service's status and message shown
    result = CliRunner().invoke(_cli(), ["search", "--text", "dress", "--filter", "colour=red", "--target", svc.target])
    assert result.exit_code == 2
    assert "INVALID_ARGUMENT" in result.output and "unknown facet 'colour'" in result.output
    bad = CliRunner().invoke(_cli(), ["search", "--text", "dress", "--filter", "colour", "--target", svc.target])
    assert bad.exit_code == 2


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca", "-days", "1", cwd=d)
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_mutual_tls(start: Callable[..., Harness], pki: Path) -> None:
    h = start(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem")
    ca = (pki / "ca.pem").read_bytes()
    with_cert = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes())
    with grpc.secure_channel(h.target, with_cert) as channel:
        response = search_pb2_grpc.SearchServiceStub(channel).Search(search_pb2.SearchRequest(text="dress"), timeout=5)
        assert response.hits
    with grpc.secure_channel(h.target, grpc.ssl_channel_credentials(ca)) as channel:  # no client certificate
        with pytest.raises(grpc.RpcError) as info:
            search_pb2_grpc.SearchServiceStub(channel).Search(search_pb2.SearchRequest(text="dress"), timeout=2)
        assert info.value.code() == Code.UNAVAILABLE
    cli = CliRunner().invoke(_cli(), [
        "search", "--text", "dress", "--target", h.target, "--tls-ca", str(pki / "ca.pem"),
        "--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key"),
    ], env={"COLUMNS": "200"})
    assert cli.exit_code == 0, cli.output
    assert "p-17" in cli.output
