"""The Search RPC: validate, admit (or shed), run the engine under the deadline, map the outcome.

Latency discipline, enforced here:

* **Deadlines.** The caller's remaining time (``default_deadline_s`` if it sent none) bounds the
  request; the engine gets all of it as ``SearchQuery.deadline_s`` and hands Triton its
  ``triton_deadline_fraction`` (applied once, there: retrieval and fusion need the rest). The
  engine runs on its own thread pool and the handler waits at most the remaining time, so the caller
  gets DEADLINE_EXCEEDED on time even from an engine that ignores its deadline.
* **Shedding.** At most ``max_inflight`` searches run in the engine; a request finding every slot taken
  gets RESOURCE_EXHAUSTED at once instead of a place in an unbounded queue. A slot is released when
  the engine call *finishes*, not when the caller gave up on it, so work abandoned at its deadline still
  counts against capacity.

Also :class:`SearchBackend`, what the servicer serves. Request validation and status codes live in
``mapping``; starting the server around this servicer lives in ``server``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from concurrent import futures
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.search.models import DeadlineExceeded, Overloaded, SearchQuery, SearchResult
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
            query = to_query(request, self._settings, self._backend.facet_names(), remaining_s)
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
            raise Cancelled("the caller cancelled the request")
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
