"""Filters, facet counts and the adaptive over-fetch planner for filtered search.

Facets are whatever attributes the catalog has (catalog format v2, docs/catalog.md: any extra column
becomes one, its name made a plain word matching ``FACET_NAME_PATTERN``); nothing here names a facet.

Filter semantics (standard e-commerce): values within one facet are OR-ed, facets are AND-ed:
``color=red,burgundy`` + ``category=dress`` keeps red-or-burgundy dresses. Attributes are
single-valued per product; a product with no value for a filtered facet never matches that filter.

Unknown facet *names* are errors (``UnknownFacetError``, listing the known facets; the service maps it
to INVALID_ARGUMENT): a misspelt facet would otherwise silently filter everything out. Unknown
*values* of a known facet are allowed and match nothing: facet values come from the catalog, which
changes between index versions, so a frontend holding a stale value gets an empty, explainable
result (the value is echoed in the facet counts with count 0) instead of a failed request.

Everything here is pure; the over-fetch planner takes the ANN search as an injected function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

FACET_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


class FacetError(ValueError):
    """A filter or facet request the caller must fix (INVALID_ARGUMENT at the service)."""


class FilterSyntaxError(FacetError):
    """A filter expression that does not parse."""


class UnknownFacetError(FacetError):
    """A facet name that the catalog does not have; lists the ones it does."""

    def __init__(self, facet: str, known: Collection[str]):
        self.facet = facet
        self.known = tuple(sorted(known))
        super().__init__(f"unknown facet {facet!r}; known facets: {', '.join(self.known) or '(none)'}")


# --------------------------------------------------------------------------------------------------
# FilterSpec
# --------------------------------------------------------------------------------------------------


class FilterSpec(BaseModel):
    """facet -> allowed values (OR within a facet, AND across facets); empty = no filtering."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clauses: dict[str, frozenset[str]] = {}

    @field_validator("clauses")
    @classmethod
    def _clauses_ok(cls, v: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
        for name, values in v.items():
            if not re.fullmatch(FACET_NAME_PATTERN, name):
                raise ValueError(f"facet name {name!r} must match {FACET_NAME_PATTERN}")
            if not values:
                raise ValueError(f"facet {name!r} needs at least one value")
            if any(not val.strip() or val != val.strip() for val in values):
                raise ValueError(f"facet {name!r}: values must be non-empty and not padded with spaces")
        return v

    @field_serializer("clauses")
    def _sorted(self, v: dict[str, frozenset[str]]) -> dict[str, list[str]]:
        # Deterministic JSON (set order varies between processes).
        return {k: sorted(vals) for k, vals in sorted(v.items())}

    @classmethod
    def parse(cls, exprs: str | Iterable[str], known_facets: Collection[str]) -> "FilterSpec":
        """Parse ``"color=red,burgundy"``-style expressions; repeats of one facet are OR-ed together.

        Values are case-sensitive and may not contain ',' or '='. Raises ``FilterSyntaxError`` for a
        malformed expression and ``UnknownFacetError`` for a facet not in ``known_facets``.
        """
        if isinstance(exprs, str):
            exprs = [exprs]
        clauses: dict[str, set[str]] = {}
        for expr in exprs:
            name, sep, rhs = expr.partition("=")
            name = name.strip()
            if not sep or not name:
                raise FilterSyntaxError(f"filter {expr!r} must look like 'facet=value[,value...]'")
            if "=" in rhs:
                raise FilterSyntaxError(f"filter {expr!r}: values may not contain '='")
            values = [v.strip() for v in rhs.split(",")]
            if any(not v for v in values):
                raise FilterSyntaxError(f"filter {expr!r}: empty value (write 'facet=a,b', no empty items)")
            if name not in known_facets:
                raise UnknownFacetError(name, known_facets)
            clauses.setdefault(name, set()).update(values)
        return cls(clauses={k: frozenset(v) for k, v in clauses.items()})

    def without(self, facet: str) -> "FilterSpec":
        return FilterSpec(clauses={k: v for k, v in self.clauses.items() if k != facet})

    def check_known(self, known_facets: Collection[str]) -> None:
        """Raise ``UnknownFacetError`` for the first facet not in ``known_facets``."""
        for name in sorted(self.clauses):
            if name not in known_facets:
                raise UnknownFacetError(name, known_facets)

    def __str__(self) -> str:
        return "; ".join(f"{k}={','.join(sorted(v))}" for k, v in sorted(self.clauses.items()))


# --------------------------------------------------------------------------------------------------
# Candidate attributes, columnar and integer-coded
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeTable:
    """Candidates' facet values, one integer-coded column per facet (-1 = no value).

    Coding once lets filtering and counting run as numpy ops over the candidate pool.
    """

    n: int
    codes: Mapping[str, np.ndarray]
    vocab: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[str | None]]) -> "AttributeTable":
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"attribute columns differ in length: {lengths}")
        n = next(iter(lengths.values()), 0)
        codes, vocab = {}, {}
        for name, col in columns.items():
            labels = tuple(sorted({v for v in col if v is not None}))
            index = {v: i for i, v in enumerate(labels)}
            codes[name] = np.fromiter((-1 if v is None else index[v] for v in col), np.int64, n)
            vocab[name] = labels
        return cls(n=n, codes=codes, vocab=vocab)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, str | None]], facets: Sequence[str]) -> "AttributeTable":
        return cls.from_columns({f: [r.get(f) for r in rows] for f in facets})

    @property
    def facets(self) -> tuple[str, ...]:
        return tuple(self.codes)

    def take(self, idx: np.ndarray) -> "AttributeTable":
        idx = np.asarray(idx, dtype=np.int64)
        return AttributeTable(n=len(idx), codes={k: c[idx] for k, c in self.codes.items()}, vocab=self.vocab)

    def _column(self, facet: str) -> np.ndarray:
        try:
            return self.codes[facet]
        except KeyError:
            raise UnknownFacetError(facet, self.codes) from None

    def _clause_mask(self, facet: str, values: Collection[str]) -> np.ndarray:
        col = self._column(facet)
        index = {v: i for i, v in enumerate(self.vocab[facet])}
        allowed = [index[v] for v in values if v in index]  # unknown values match nothing
        return np.isin(col, allowed) if allowed else np.zeros(self.n, dtype=bool)


def _as_table(attrs: AttributeTable | Mapping[str, Sequence[str | None]]) -> AttributeTable:
    return attrs if isinstance(attrs, AttributeTable) else AttributeTable.from_columns(attrs)


def apply_filters(attrs: AttributeTable | Mapping[str, Sequence[str | None]], filters: FilterSpec) -> np.ndarray:
    """Boolean mask over candidates: True where every clause of ``filters`` matches."""
    table = _as_table(attrs)
    mask = np.ones(table.n, dtype=bool)
    for facet, values in filters.clauses.items():
        mask &= table._clause_mask(facet, values)
    return mask


def facet_counts(
    attrs: AttributeTable | Mapping[str, Sequence[str | None]],
    filters: FilterSpec,
    facet_names: Sequence[str],
    *,
    mode: Literal["disjunctive", "conjunctive"] = "disjunctive",
    max_values: int | None = None,
) -> dict[str, dict[str, int]]:
    """Per facet, value -> number of candidates; ordered by count desc, then value.

    ``disjunctive`` (the default, what shoppers expect): facet F is counted over candidates that match
    every clause except the one on F, so selecting ``color=red`` still shows how many blue items
    there are (the count you would get by adding blue), while other facets' counts shrink to red
    items. ``conjunctive``: every facet counted over candidates matching all clauses ("plain"
    counts). Values with count 0 are left out, except selected values, which always appear so the
    UI can show them as checked. ``max_values`` keeps the top values per facet (selected ones kept).

    Counts describe the candidate pool they are given (for search: the over-fetched ANN pool), not
    the whole catalog.
    """
    table = _as_table(attrs)
    for f in facet_names:
        table._column(f)
    clause_masks = {f: table._clause_mask(f, v) for f, v in filters.clauses.items()}
    all_mask = np.ones(table.n, dtype=bool)
    for m in clause_masks.values():
        all_mask &= m

    out: dict[str, dict[str, int]] = {}
    for f in facet_names:
        if mode == "disjunctive" and f in clause_masks:
            base = np.ones(table.n, dtype=bool)
            for g, m in clause_masks.items():
                if g != f:
                    base &= m
        else:
            base = all_mask
        col = table.codes[f]
        vocab = table.vocab[f]
        sel = col[base]
        counts = np.bincount(sel[sel >= 0], minlength=len(vocab))
        # Only the values present, ordered by (count desc, value): vocab is sorted, so its index
        # orders values. No Python work per vocabulary entry (a facet may have 100k values).
        nz = np.flatnonzero(counts)
        nz = nz[np.lexsort((nz, -counts[nz]))]
        selected = filters.clauses.get(f, frozenset())
        if max_values is not None:
            keep = nz[:max_values]
            chosen = {vocab[i] for i in keep.tolist()}
            extra = [i for i in nz[max_values:].tolist() if vocab[i] in selected] if selected - chosen else []
            nz = np.concatenate([keep, np.asarray(extra, dtype=np.int64)]) if extra else keep
        pairs = [(vocab[i], int(counts[i])) for i in nz.tolist()]
        result = dict(pairs)
        for v in sorted(selected):
            result.setdefault(v, 0)
        out[f] = result
    return out


# --------------------------------------------------------------------------------------------------
# Adaptive over-fetch
# --------------------------------------------------------------------------------------------------

C = TypeVar("C")


@dataclass(frozen=True)
class OverFetch(Generic[C]):
    """What the planner fetched and why it stopped.

    stop: ``filled`` (top_k matches found), ``exhausted`` (the index returned fewer candidates than
    asked: there are no more to find), or ``bound`` (max_candidates reached with fewer than top_k
    matches). The service reports anything but ``filled`` so the caller knows top_k was not met.
    """

    candidates: C  # the last (widest) pool fetch returned
    mask: np.ndarray  # filter match per candidate in the pool
    hits: np.ndarray  # positions in the pool of the first top_k matches, in fetch order
    ks: tuple[int, ...]  # k requested in each round
    stop: Literal["filled", "exhausted", "bound"]

    @property
    def k(self) -> int:
        return self.ks[-1]

    @property
    def filled(self) -> bool:
        return self.stop == "filled"

    @property
    def hit_bound(self) -> bool:
        return self.stop == "bound"


def over_fetch(
    fetch: Callable[[int], C],
    matches: Callable[[C], np.ndarray],
    top_k: int,
    *,
    max_candidates: int,
    initial_k: int | None = None,
    growth: float = 4.0,
) -> OverFetch[C]:
    """Widen the ANN search until ``top_k`` candidates pass the filter or a bound is reached.

    ``fetch(k)`` returns the k best candidates (a fresh search; ANN indexes cannot resume),
    ``matches(pool)`` the filter mask over them. k grows geometrically by ``growth``, or jumps
    straight to the k the observed match rate predicts (x1.25 margin) when that is larger, so a
    selective filter needs two or three rounds instead of many. k never exceeds ``max_candidates``.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if max_candidates < top_k:
        raise ValueError(f"max_candidates ({max_candidates}) must be >= top_k ({top_k})")
    if growth <= 1.0:
        raise ValueError(f"growth must be > 1, got {growth}")
    k = min(max_candidates, max(top_k, initial_k or top_k))
    ks: list[int] = []
    while True:
        ks.append(k)
        pool = fetch(k)
        mask = np.asarray(matches(pool), dtype=bool).ravel()
        if mask.size > k:
            raise ValueError(f"fetch({k}) returned {mask.size} candidates, more than asked")
        matched = np.flatnonzero(mask)
        if matched.size >= top_k:
            stop = "filled"
        elif mask.size < k:
            stop = "exhausted"
        elif k >= max_candidates:
            stop = "bound"
        else:
            grown = math.ceil(k * growth)
            if matched.size:
                grown = max(grown, math.ceil(1.25 * top_k * k / matched.size))
            k = min(max_candidates, grown)
            continue
        return OverFetch(candidates=pool, mask=mask, hits=matched[:top_k], ks=tuple(ks), stop=stop)
