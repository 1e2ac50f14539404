"""The Search RPC: admit (or shed) first, then validate, run the engine under the deadline, map the outcome.

One concurrency model, sized from ``max_inflight`` (``ServiceSettings``), owned here:

* **Admission before work.** A request takes one of ``max_inflight`` slots *before* its bytes are
  decoded; finding every slot taken it gets RESOURCE_EXHAUSTED at once (a counter, a log line, no
  parsing, no embedding), so past saturation the shed traffic costs almost nothing and goodput holds.
  The decision is made twice, cheaply: gRPC's polling thread asks :meth:`SearchServicer.saturated`
  when it looks the method up (``server.SearchHandlers``), and a call arriving with every slot taken
  gets the shed handler, which that same thread runs at once, without receiving the request message
  (each hand-off to a handler thread, and back for the message, waits for the GIL behind the engine
  threads: measured, that was a shed answer's median cost under overload); a call that passed that
  look finds its slot (or is shed) in ``_admit``.
  In front of that, gRPC itself admits at most ``max_inflight + spare_threads (+ max_queued_rpcs)``
  concurrent RPCs and rejects the rest on its polling thread, before any handler thread or request
  byte is touched ("Concurrent RPC limit exceeded!", also RESOURCE_EXHAUSTED; those rejections never
  reach this servicer, so they show in clients' status counts, not in ``lenscope_search_requests_total``).
* **Threads per request.** An admitted search holds one gRPC handler thread (waiting, for the
  deadline) and one engine thread (working); a photo+text query also holds one Triton client thread
  for the image embedding while the engine thread embeds the text. So every pool is sized from the
  same number: handler threads ``max_inflight + spare_threads`` (the spare ones answer calls shed in ``_admit``, invalid
  and health calls without waiting), engine threads ``max_inflight``, Triton client threads
  ``max_inflight`` (``ClientConfig.max_concurrency``, set by ``lenscope serve search``). No pool can
  queue behind admission. The engine has one thread of its own: the online recall sample, off the
  request path, skipped while busy.
* **Deadlines.** The caller's remaining time (``default_deadline_s`` if it sent none) bounds the
  request; the engine gets all of it as ``SearchQuery.deadline_s`` and hands Triton its
  ``triton_deadline_fraction`` (applied once, there: retrieval and fusion need the rest). The
  engine runs on its own thread so the handler waits at most the remaining time, and the caller gets
  DEADLINE_EXCEEDED on time even from an engine that ignores its deadline. A slot is released when
  the engine call *finishes*, not when the caller gave up on it, so work abandoned at its deadline
  still counts against capacity.

Also :class:`SearchBackend`, what the servicer serves. Request validation and status codes live in
``mapping``; starting the server around this servicer lives in ``server``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from concurrent import futures
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.search.models import DeadlineExceeded, SearchQuery, SearchResult
from lenscope.client.service.mapping import Cancelled, status_for, to_query, to_response
from lenscope.client.service.observability import ServiceMetrics
from lenscope.client.service.settings import ServiceSettings

SERVICE_NAME: str = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name  # lenscope.v1.SearchService
REQUEST_ID_KEY = "x-request-id"

# gRPC reports "no deadline" as a remaining time of centuries; anything beyond this is "none sent".
_NO_DEADLINE_S = 1e7
# Below this much remaining time the engine is not even started.
_MIN_USEFUL_S = 0.001
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


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


class _Slot:
    """One admitted search's share of ``max_inflight``: released exactly once, by the handler if the
    engine never got the work, else by the engine future when it finishes."""

    __slots__ = ("_release", "_handed_over", "_done")

    def __init__(self, release: Any) -> None:
        self._release = release
        self._handed_over = False
        self._done = False

    def hand_over(self, future: futures.Future[SearchResult]) -> None:
        self._handed_over = True
        future.add_done_callback(lambda _: self.release())

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._release()

    def release_unless_handed_over(self) -> None:
        if not self._handed_over:
            self.release()


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Search RPC: admit (or shed), validate, run the engine under the deadline, map the outcome."""

    def __init__(self, backend: SearchBackend, settings: ServiceSettings, metrics: ServiceMetrics, log: Any):
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._log = log
        self._slots = threading.BoundedSemaphore(settings.max_inflight)
        self._taken = 0  # slots held now; read without the lock by saturated() (a hint, re-checked in _admit)
        self._taken_lock = threading.Lock()
        self._busy_message = f"server busy: {settings.max_inflight} searches in flight; retry with backoff"
        # Exactly max_inflight workers: admission already bounds the work, so this pool never queues.
        self._engine = futures.ThreadPoolExecutor(settings.max_inflight, thread_name_prefix="lenscope-engine")

    def close(self) -> None:
        self._engine.shutdown(wait=False, cancel_futures=True)

    def SearchBytes(self, data: bytes, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        """Admit first, then parse the request ourselves: grpcio's own deserializer answers bad bytes
        (e.g. non-UTF-8 in a string field) with an opaque INTERNAL that the service never sees, logs
        or counts."""
        slot = self._admit(context)
        try:
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
            return self._search(request, context, slot)
        finally:
            slot.release_unless_handed_over()

    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        """The typed entry point (the server registers ``SearchBytes``): the same admission first."""
        slot = self._admit(context)
        try:
            return self._search(request, context, slot)
        finally:
            slot.release_unless_handed_over()

    def saturated(self) -> bool:
        """Every slot is taken right now (gRPC's polling thread asks, per call, before any hand-off)."""
        return self._taken >= self._settings.max_inflight

    def ShedStream(self, request_iterator: Any, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        """The Search handler of a call that arrived with every slot taken: registered request-streaming
        so that gRPC hands it over without first receiving the request message, which is never read."""
        self._shed(context)

    def _admit(self, context: grpc.ServicerContext) -> _Slot:
        """Take a slot or shed at once: no decoding, validation or engine work for a shed call."""
        if self._slots.acquire(blocking=False):
            with self._taken_lock:
                self._taken += 1
            self._metrics.inflight.inc()
            return _Slot(self._release)
        self._shed(context)

    def _shed(self, context: grpc.ServicerContext) -> NoReturn:
        request_id = _request_id(context)
        self._metrics.observe(grpc.StatusCode.RESOURCE_EXHAUSTED, None)
        self._log.warning("search", code="RESOURCE_EXHAUSTED", request_id=request_id, message=self._busy_message)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._busy_message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _search(
        self, request: search_pb2.SearchRequest, context: grpc.ServicerContext, slot: _Slot
    ) -> search_pb2.SearchResponse:
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
            query = to_query(request, self._settings, self._backend.facet_names(), remaining_s)
            result = self._run(query, deadline, remaining_s, context, slot)
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
        self, query: SearchQuery, deadline: float, budget_s: float, context: grpc.ServicerContext, slot: _Slot
    ) -> SearchResult:
        """Hand the admitted query to the engine and wait until `deadline` (time.monotonic) or a cancel."""
        future = self._engine.submit(self._backend.search, query)
        slot.hand_over(future)
        finished = threading.Event()
        future.add_done_callback(lambda _: finished.set())
        # wake up at once if the caller cancels; False: the call already ended (a cancel that landed while
        # the work was being handed over), and the callback will never run: do not wait for the deadline
        if not context.add_callback(finished.set):
            finished.set()
        finished.wait(max(deadline - time.monotonic(), 0.0))
        if future.done():
            return future.result()  # re-raises the engine's error
        if not context.is_active():
            raise Cancelled("the caller cancelled the request")
        raise DeadlineExceeded(f"search did not finish within the {budget_s * 1000:.0f} ms deadline")

    def _release(self) -> None:
        self._metrics.inflight.dec()
        with self._taken_lock:
            self._taken -= 1
        self._slots.release()


_WARN_CODES = frozenset({
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL,
})


def _remaining_s(context: grpc.ServicerContext, default_s: float | None) -> float | None:
    """The caller's remaining time, or ``default_s`` when it sent no deadline."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return default_s
    return remaining


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex[:16]
