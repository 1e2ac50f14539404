"""Filters, facet counts (against a brute-force oracle) and the adaptive over-fetch planner."""

from __future__ import annotations

import numpy as np
import pytest

from lenscope.client.ranking.facets import (
    AttributeTable,
    FilterSpec,
    FilterSyntaxError,
    UnknownFacetError,
    apply_filters,
    facet_counts,
    over_fetch,
)

KNOWN = {
    "color": ["red", "burgundy", "blue", "green", "black"],
    "category": ["dress", "shirt", "shoe"],
    "size": ["s", "m", "l"],
}


def random_rows(n: int, seed: int) -> list[dict[str, str | None]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row: dict[str, str | None] = {}
        for facet, values in KNOWN.items():
            row[facet] = None if rng.random() < 0.1 else str(rng.choice(values))
        rows.append(row)
    return rows


def row_matches(row, clauses, skip=None) -> bool:
    return all(row[f] in vals for f, vals in clauses.items() if f != skip)


def brute_counts(rows, clauses, facet, disjunctive):
    counts: dict[str, int] = {}
    for row in rows:
        if row_matches(row, clauses, skip=facet if disjunctive else None) and row[facet] is not None:
            counts[row[facet]] = counts.get(row[facet], 0) + 1
    return counts


# ---- parsing ------------------------------------------------------------------------------------


def test_parse_filters():
    spec = FilterSpec.parse(["color=red, burgundy", "category=dress", "color=blue"], KNOWN)
    assert spec.clauses == {"color": frozenset({"red", "burgundy", "blue"}), "category": frozenset({"dress"})}
    assert str(spec) == "category=dress; color=blue,burgundy,red"
    assert FilterSpec.parse("size=m", KNOWN).clauses == {"size": frozenset({"m"})}
    assert FilterSpec.parse([], KNOWN).clauses == {}


def test_unknown_facet_error_lists_known_facets():
    with pytest.raises(UnknownFacetError) as err:
        FilterSpec.parse(["colour=red"], KNOWN)
    assert err.value.facet == "colour"
    assert err.value.known == ("category", "color", "size")
    assert "category, color, size" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("expr", ["color", "=red", "color=", "color=red,,blue", "color=a=b"])
def test_malformed_filter_is_syntax_error(expr):
    with pytest.raises(FilterSyntaxError):
        FilterSpec.parse([expr], KNOWN)


def test_filterspec_validates_when_built_directly():
    with pytest.raises(ValueError, match="needs at least one value"):
        FilterSpec(clauses={"color": frozenset()})
    with pytest.raises(ValueError, match="must match"):
        FilterSpec(clauses={"Color!": frozenset({"red"})})


def test_filterspec_json_is_deterministic():
    spec = FilterSpec.parse(["color=red,burgundy,blue"], KNOWN)
    assert spec.model_dump_json() == '{"clauses":{"color":["blue","burgundy","red"]}}'
    assert FilterSpec.model_validate_json(spec.model_dump_json()) == spec


# ---- filtering and counts -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_filters_and_counts_equal_brute_force(seed):
    rows = random_rows(400, seed)
    table = AttributeTable.from_rows(rows, list(KNOWN))
    rng = np.random.default_rng(100 + seed)
    clauses = {}
    for facet, values in KNOWN.items():
        if rng.random() < 0.7:
            clauses[facet] = frozenset(rng.choice(values, size=rng.integers(1, 3), replace=False).tolist())
    spec = FilterSpec(clauses=clauses)

    mask = apply_filters(table, spec)
    assert mask.tolist() == [row_matches(r, clauses) for r in rows]

    for disjunctive in (True, False):
        mode = "disjunctive" if disjunctive else "conjunctive"
        got = facet_counts(table, spec, list(KNOWN), mode=mode)
        for facet in KNOWN:
            want = brute_counts(rows, clauses, facet, disjunctive)
            nonzero = {v: c for v, c in got[facet].items() if c > 0}
            assert nonzero == want, (facet, mode)
            # Counts come ordered by count, then value.
            items = list(nonzero.items())
            assert items == sorted(items, key=lambda kv: (-kv[1], kv[0]))


def test_disjunctive_semantics():
    cols = {
        "color": ["red", "red", "blue", "blue", "green", "red"],
        "category": ["dress", "shirt", "dress", "dress", "dress", "dress"],
    }
    spec = FilterSpec(clauses={"color": frozenset({"red"}), "category": frozenset({"dress"})})
    counts = facet_counts(cols, spec, ["color", "category"])
    # color counted over dresses of any colour: choosing blue too would add 2.
    assert counts["color"] == {"blue": 2, "red": 2, "green": 1}
    # category counted over red items of any category.
    assert counts["category"] == {"dress": 2, "shirt": 1}
    plain = facet_counts(cols, spec, ["color", "category"], mode="conjunctive")
    assert plain == {"color": {"red": 2}, "category": {"dress": 2}}
    # The filtered set is what plain counts describe.
    assert apply_filters(cols, spec).sum() == 2


def test_unknown_value_matches_nothing_and_is_echoed():
    cols = {"color": ["red", "blue"], "category": ["dress", "dress"]}
    spec = FilterSpec(clauses={"color": frozenset({"teal"})})
    assert not apply_filters(cols, spec).any()
    counts = facet_counts(cols, spec, ["color", "category"])
    assert counts["color"] == {"blue": 1, "red": 1, "teal": 0}
    assert counts["category"] == {}


def test_unknown_facet_in_counts_or_filters_raises():
    cols = {"color": ["red"], "category": ["dress"]}
    with pytest.raises(UnknownFacetError, match="known facets: category, color"):
        facet_counts(cols, FilterSpec(), ["brand"])
    with pytest.raises(UnknownFacetError, match="'size'"):
        apply_filters(cols, FilterSpec(clauses={"size": frozenset({"m"})}))


def test_max_values_keeps_selected():
    cols = {"color": ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"]}
    spec = FilterSpec(clauses={"color": frozenset({"d"})})
    counts = facet_counts(cols, spec, ["color"], max_values=2)
    assert counts["color"] == {"a": 5, "b": 4, "d": 1}


# ---- over-fetch ---------------------------------------------------------------------------------


class FakeIndex:
    """Candidates in ANN order; only every `stride`-th one passes the filter."""

    def __init__(self, size: int, stride: int):
        self.matching = np.arange(size) % stride == 0
        self.size = size
        self.calls: list[int] = []

    def fetch(self, k: int) -> np.ndarray:
        self.calls.append(k)
        return np.arange(min(k, self.size))

    def matches(self, pool: np.ndarray) -> np.ndarray:
        return self.matching[pool]


def test_over_fetch_fills_top_k_with_selective_filter():
    idx = FakeIndex(size=100_000, stride=50)  # 2% of candidates pass
    res = over_fetch(idx.fetch, idx.matches, top_k=10, max_candidates=10_000)
    assert res.stop == "filled" and res.filled and not res.hit_bound
    assert len(res.hits) == 10
    assert np.all(res.mask[res.hits])
    # Hits are the first 10 matches in ANN order: positions 0, 50, ..., 450.
    assert res.candidates[res.hits].tolist() == list(range(0, 500, 50))
    assert res.ks == tuple(idx.calls)
    assert res.ks[0] == 10 and all(b > a for a, b in zip(res.ks, res.ks[1:]))
    # The match-rate jump gets there in few rounds, far below the bound.
    assert len(res.ks) <= 3 and res.k < 2_000


def test_over_fetch_without_filter_is_one_round():
    idx = FakeIndex(size=1000, stride=1)
    res = over_fetch(idx.fetch, idx.matches, top_k=20, max_candidates=500)
    assert res.ks == (20,) and res.filled


def test_over_fetch_reports_hitting_the_bound():
    idx = FakeIndex(size=100_000, stride=1000)
    res = over_fetch(idx.fetch, idx.matches, top_k=10, max_candidates=3000, growth=2.0)
    assert res.stop == "bound" and res.hit_bound and not res.filled
    assert res.k == 3000 and max(idx.calls) == 3000
    assert len(res.hits) == 3  # matches at 0, 1000, 2000


def test_over_fetch_reports_exhausted_index():
    idx = FakeIndex(size=120, stride=40)
    res = over_fetch(idx.fetch, idx.matches, top_k=10, max_candidates=10_000)
    assert res.stop == "exhausted" and not res.filled and not res.hit_bound
    assert len(res.hits) == 3
    assert res.k < 10_000


def test_over_fetch_validates_arguments():
    idx = FakeIndex(size=10, stride=1)
    with pytest.raises(ValueError, match="max_candidates"):
        over_fetch(idx.fetch, idx.matches, top_k=10, max_candidates=5)
    with pytest.raises(ValueError, match="growth"):
        over_fetch(idx.fetch, idx.matches, top_k=1, max_candidates=5, growth=1.0)
    with pytest.raises(ValueError, match="more than asked"):
        over_fetch(lambda k: np.arange(k + 1), lambda p: np.ones(len(p), bool), top_k=1, max_candidates=5)
