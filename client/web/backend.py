"""The web app's side of the gRPC search API: one channel, a deadline on every call, and each
failure turned into what a person should read (and the HTTP status the page is served with).

The channel's reconnect backoff is capped (like the Triton client's) so that once the service is
back, the next search finds it within about a second instead of after gRPC's default backoff of up
to two minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lenscope.client.api import search_pb2, search_pb2_grpc

REQUEST_ID_KEY = "x-request-id"
SERVICE_NAME = "lenscope.v1.SearchService"

CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


@dataclass(eq=False)
class SearchFailure(Exception):
    """A search that produced no results: what to tell the person, and how."""

    http_status: int
    title: str
    message: str
    code: str = ""  # the gRPC status name, or a local reason ("too_large", "not_an_image", ...)
    request_id: str | None = None

    def __str__(self) -> str:
        return f"{self.title}: {self.message}"


def failure_from_rpc(err: grpc.RpcError, target: str, deadline_s: float) -> SearchFailure:
    """Map a gRPC status onto an HTTP status and a message that says what happened and what to do."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or ""
    try:
        request_id = dict(err.trailing_metadata() or ()).get(REQUEST_ID_KEY)
    except Exception:  # noqa: BLE001 - a channel-level error has no trailing metadata
        request_id = None
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return SearchFailure(400, "The search service rejected this query", details or "invalid query", name, request_id)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return SearchFailure(429, "The search service is busy",
                             f"{details} — try again in a moment." if details else "Try again in a moment.",
                             name, request_id)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SearchFailure(504, "The search took too long",
                             f"No answer within {deadline_s:g} s. Try again, or a smaller photo.", name, request_id)
    if code == grpc.StatusCode.UNAVAILABLE:
        why = f" ({details})" if details else ""
        return SearchFailure(503, "The search service is unavailable",
                             f"Could not reach it at {target}{why}. Check that it is running; this page will "
                             "work again as soon as it is back.", name, request_id)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return SearchFailure(503, "The search service is not ready", details or "failed precondition", name, request_id)
    return SearchFailure(502, "The search failed", f"{name}: {details}" if details else name, name, request_id)


class SearchBackend:
    """A gRPC client of ``lenscope.v1.SearchService`` shared by all requests (thread-safe)."""

    def __init__(self, target: str, deadline_s: float):
        self.target = target
        self.deadline_s = deadline_s
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        """Run one search; raises :class:`SearchFailure` for every error status."""
        try:
            return self._stub.Search(request, timeout=self.deadline_s)
        except grpc.RpcError as err:
            raise failure_from_rpc(err, self.target, self.deadline_s) from None

    def health(self, timeout_s: float = 1.0) -> str:
        """The service's grpc.health.v1 status name, or the gRPC error code name when unreachable."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout_s)
        except grpc.RpcError as err:
            return err.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def close(self) -> None:
        self._channel.close()
