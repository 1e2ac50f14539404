"""Typed search requests, results and errors: what the search engine, the gRPC service, the CLI
and the web demo exchange. Transport-free, so each layer maps them to its own wire format.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


# The engine's stages in pipeline order, then the totals; what the CLI and the web page display.
STAGE_ORDER = ("embed", "retrieve", "calibrate", "fuse", "facets")
TOTALS = ("engine_total", "total")


def ordered_timings(timings: dict[str, float]) -> list[tuple[str, float]]:
    """Per-stage timings in pipeline order; stages this build does not know go before the totals."""
    rank = {stage: i for i, stage in enumerate((*STAGE_ORDER, *TOTALS))}
    return [(s, timings[s]) for s in sorted(timings, key=lambda s: (rank.get(s, len(STAGE_ORDER) - 0.5), s))]


class QueryError(ValueError):
    """The caller's request is invalid (INVALID_ARGUMENT); the message says what to fix."""


class Overloaded(RuntimeError):
    """Too many requests in flight: shed instead of queueing (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(TimeoutError):
    """The caller's deadline ran out before the search finished (DEADLINE_EXCEEDED)."""


class BackendUnavailable(RuntimeError):
    """Triton (or the vector engine) cannot be reached (UNAVAILABLE); retried already."""


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: bytes | None = None
    text: str | None = None
    # facet -> allowed values (OR within a facet, AND across facets)
    filters: dict[str, tuple[str, ...]] = {}
    facets: tuple[str, ...] = ()  # facet names to count; empty = all known facets
    top_k: int = Field(10, ge=1, le=100)
    # seconds the caller allows; None = the service default
    deadline_s: float | None = Field(None, gt=0)
    # return attribute probabilities predicted for an image query
    explain: bool = False


class Hit(BaseModel):
    product_id: str
    title: str
    image: str
    score: float
    # signal -> contribution to `score` (bias included as "bias"); sums to `score`
    breakdown: dict[str, float]
    # raw cosine and calibrated value per signal, for debugging and the web demo
    raw: dict[str, float] = {}
    calibrated: dict[str, float] = {}
    attributes: dict[str, str] = {}
    popularity: float = 0.0


class OverFetchInfo(BaseModel):
    candidates: int  # candidates retrieved from the ANN index
    rounds: int  # how many times the search widened
    filled: bool  # top_k filtered hits found
    hit_bound: bool  # stopped at the configured maximum before filling


class RankingInfo(BaseModel):
    """How the query was ranked: its type, the index's decision for that type and the signals'
    calibration state (a signal without a fit for this model and catalog fuses as its raw cosine)."""

    query_type: str  # text | image | image+text
    ranked_by: str  # "fused" or the similarity signal whose raw cosine ranks this query type
    calibrated_signals: list[str] = []
    raw_signals: list[str] = []  # similarity signals that reached fusion as raw cosines
    source: str = ""  # self-check | bound fit | supplied files | legacy
    reason: str = ""
    held_out: dict[str, dict[str, float]] = {}  # ranking -> {"ndcg10", "r10"} on held-out pseudo-queries
    rule: str = ""  # which rule of the do-no-harm policy chose ranked_by (ranking.policy.RULES)
    pooled: dict[str, dict[str, float]] = {}  # raw signal -> {"ndcg10", "r10"} on all pseudo-queries


class SearchResult(BaseModel):
    hits: list[Hit]
    facets: dict[str, dict[str, int]]
    timings_ms: dict[str, float]  # stage -> milliseconds (embed, retrieve, calibrate, fuse, facets, total)
    model_hash: str
    index_version: str
    over_fetch: OverFetchInfo
    ranking: RankingInfo | None = None
    query_attributes: dict[str, dict[str, float]] = {}
