"""The service's wire mapping: SearchRequest -> SearchQuery, SearchResult -> SearchResponse, error -> status.

Separate from the servicer because it is pure translation (no threads, no deadlines): the input caps
are enforced here with INVALID_ARGUMENT and a message that says what to fix (images, text, top_k and
facet names), and every error raised while serving maps to one status code:
QueryError / FacetError (unknown facet) -> INVALID_ARGUMENT, Overloaded -> RESOURCE_EXHAUSTED,
DeadlineExceeded -> DEADLINE_EXCEEDED, BackendUnavailable -> UNAVAILABLE, ModelVersionMismatch ->
FAILED_PRECONDITION, anything else -> INTERNAL with only the request id (the traceback goes to the
server log, never to the client).
"""

from __future__ import annotations

import sys

import grpc
from pydantic import ValidationError

from lenscope.client.api import search_pb2
from lenscope.client.ranking.facets import FacetError, UnknownFacetError
from lenscope.client.search.models import (
    BackendUnavailable,
    DeadlineExceeded,
    Overloaded,
    QueryError,
    RankingInfo,
    SearchQuery,
    SearchResult,
)
from lenscope.client.service.settings import MiB, ServiceSettings


class Cancelled(Exception):
    """The caller cancelled (or its connection went away) while the engine was working."""


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
        ranking=_ranking(result.ranking),
    )


def _ranking(info: RankingInfo | None) -> search_pb2.RankingInfo | None:
    if info is None:
        return None
    return search_pb2.RankingInfo(
        query_type=info.query_type, ranked_by=info.ranked_by, calibrated_signals=info.calibrated_signals,
        raw_signals=info.raw_signals, source=info.source, reason=info.reason,
        held_out={k: search_pb2.HeldOutScore(ndcg10=v.get("ndcg10", 0.0), r10=v.get("r10", 0.0))
                  for k, v in info.held_out.items()},
        rule=info.rule,
        pooled={k: search_pb2.HeldOutScore(ndcg10=v.get("ndcg10", 0.0), r10=v.get("r10", 0.0))
                for k, v in info.pooled.items()},
    )


def _is_model_mismatch(err: BaseException) -> bool:
    # Looked up, not imported: index.bundle pulls in the index stack, and if it was never imported
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
    if isinstance(err, Cancelled):
        return grpc.StatusCode.CANCELLED, str(err)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); see the server log"
