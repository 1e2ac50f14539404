"""A ``SearchResponse`` turned into what the result templates show: cards with their score
breakdown, facet checkboxes that know whether they are checked, timings in pipeline order."""

from __future__ import annotations

from dataclasses import dataclass

from lenscope.client.api import search_pb2
from lenscope.client.search.models import ordered_timings
from lenscope.client.web.image_store import url_path
from lenscope.client.web.query import PageQuery


@dataclass(frozen=True)
class Signal:
    name: str
    contribution: float
    raw: float | None
    calibrated: float | None
    width: float  # percent of the card's score bar (positive contributions only)

    @property
    def hover(self) -> str:
        parts = [f"{self.name} {self.contribution:+.3f}"]
        if self.raw is not None:
            parts.append(f"raw {self.raw:.3f}")
        if self.calibrated is not None:
            parts.append(f"calibrated {self.calibrated:.3f}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Card:
    rank: int
    product_id: str
    title: str
    image: str
    image_url: str | None
    score: float
    signals: tuple[Signal, ...]
    attributes: tuple[tuple[str, str], ...]
    popularity: float

    @property
    def hover(self) -> str:
        return f"score {self.score:.3f} = " + " + ".join(f"{s.name} {s.contribution:.3f}" for s in self.signals)


@dataclass(frozen=True)
class FacetValue:
    value: str
    count: int
    checked: bool
    param: str  # the "f" parameter that selects it


@dataclass(frozen=True)
class Facet:
    name: str
    values: tuple[FacetValue, ...]


@dataclass(frozen=True)
class RankingNote:
    """How the service ranked this query (``SearchResponse.ranking``): the index build's decision
    for its query type, the rule that chose it and why; shown so a user sees a fallback to a raw
    cosine instead of guessing."""

    query_type: str
    ranked_by: str  # "fused" or a raw similarity signal
    label: str  # "fused ranking" / "raw text_image cosine"
    rule: str
    source: str
    reason: str
    raw_signals: tuple[str, ...]


@dataclass(frozen=True)
class Results:
    cards: tuple[Card, ...]
    facets: tuple[Facet, ...]
    timings: tuple[tuple[str, float], ...]  # stages in pipeline order, then the totals
    model_hash: str
    index_version: str
    request_id: str
    candidates: int
    filled: bool
    query_attributes: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]
    signal_names: tuple[str, ...]
    ranking: RankingNote | None = None  # None: a server older than the do-no-harm rule


def _ranking(response: search_pb2.SearchResponse) -> RankingNote | None:
    if not response.HasField("ranking"):
        return None
    r = response.ranking
    label = "fused ranking" if r.ranked_by == "fused" else f"raw {r.ranked_by} cosine"
    return RankingNote(query_type=r.query_type, ranked_by=r.ranked_by, label=label, rule=r.rule, source=r.source,
                       reason=r.reason, raw_signals=tuple(r.raw_signals))


def _signal_order(response: search_pb2.SearchResponse) -> list[str]:
    """Strongest signals first (summed |contribution| over the hits), the bias last."""
    weight: dict[str, float] = {}
    for hit in response.hits:
        for name, value in hit.breakdown.items():
            weight[name] = weight.get(name, 0.0) + abs(value)
    return sorted(weight, key=lambda name: (name == "bias", -weight[name], name))


def _card(rank: int, hit: search_pb2.Hit, order: list[str]) -> Card:
    positive = sum(v for v in hit.breakdown.values() if v > 0) or 1.0
    signals = tuple(
        Signal(name, hit.breakdown[name], hit.raw.get(name), hit.calibrated.get(name),
               round(100.0 * max(hit.breakdown[name], 0.0) / positive, 2))
        for name in order if name in hit.breakdown
    )
    return Card(rank=rank, product_id=hit.product_id, title=hit.title, image=hit.image,
                image_url=url_path(hit.image), score=hit.score, signals=signals,
                attributes=tuple(sorted(hit.attributes.items())), popularity=hit.popularity)


def _timings(timings: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(ordered_timings(timings))


def present(response: search_pb2.SearchResponse, query: PageQuery) -> Results:
    order = _signal_order(response)
    facets = tuple(
        Facet(f.facet, tuple(FacetValue(v.value, v.count, query.is_selected(f.facet, v.value), f"{f.facet}:{v.value}")
                             for v in f.values))
        for f in response.facets
    )
    query_attrs = tuple(
        (attr, tuple(sorted(probs.probabilities.items(), key=lambda kv: -kv[1])[:3]))
        for attr, probs in sorted(response.query_attributes.items())
    )
    return Results(
        cards=tuple(_card(i, h, order) for i, h in enumerate(response.hits, 1)),
        facets=facets,
        timings=_timings(dict(response.timings_ms)),
        model_hash=response.model_hash,
        index_version=response.index_version,
        request_id=response.request_id,
        candidates=response.over_fetch.candidates,
        filled=response.over_fetch.filled,
        query_attributes=query_attrs,
        signal_names=tuple(order),
        ranking=_ranking(response),
    )
