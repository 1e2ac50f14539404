"""The `VectorIndex` contract as reusable checks, run against every backend (faiss-contrib style: the
answer of an index is compared with a numpy float64 oracle with a stated tolerance).

Each check takes an index already filled with `ContractData` (or a factory for an empty one), so a
backend's test module decides how to build, configure and reopen its indexes and then calls the same
checks as every other backend. Not a test module itself (no `test_` prefix): pytest does not collect it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from lenscope.client.vectors.contract import RecallMonitor, SearchResult, VectorIndex, recall_at_k

SCORE_ATOL = 1e-5  # returned scores vs the float64 inner product
MIN_RECALL = 0.95  # ANN recall@k vs the exact oracle on clustered data


def clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int, noise: float = 0.7) -> np.ndarray:
    """Gaussian blobs around random centres, L2-normalised: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class ContractData:
    ids: np.ndarray  # [N] int64, sorted, deliberately not 0..N-1 (catches id/position mix-ups)
    base: np.ndarray  # [N, dim] float32 unit vectors
    queries: np.ndarray  # [Q, dim] float32 unit vectors, not in the base

    @property
    def dim(self) -> int:
        return self.base.shape[1]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, ids)

    def oracle(self, k: int, allowed: np.ndarray | None = None, queries: np.ndarray | None = None) -> SearchResult:
        """Exact top-k by numpy in float64 over all rows or the `allowed` ids."""
        queries = self.queries if queries is None else queries
        ids = self.ids if allowed is None else np.sort(allowed)
        scores = queries.astype(np.float64) @ self.base[self.rows(ids)].astype(np.float64).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return SearchResult(np.take_along_axis(scores, top, axis=1), ids[top])

    def exact_scores(self, result_ids: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
        queries = self.queries if queries is None else queries
        vectors = self.base[self.rows(np.maximum(result_ids, 0))].astype(np.float64)
        return np.einsum("qd,qkd->qk", queries.astype(np.float64), vectors)


def make_data(n: int = 5000, dim: int = 64, num_queries: int = 100, clusters: int = 50, seed: int = 0) -> ContractData:
    x = clustered_unit_vectors(n + num_queries, dim, clusters=clusters, seed=seed)
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    return ContractData(ids=ids, base=x[:n], queries=x[n:])


# -- checks ----------------------------------------------------------------------------------------


def check_result_shape(result: SearchResult, num_queries: int, k: int) -> None:
    assert result.scores.shape == result.ids.shape == (num_queries, k)
    assert result.scores.dtype == np.float32 and result.ids.dtype == np.int64


def check_search_matches_oracle(index: VectorIndex, data: ContractData, k: int = 10, *, exact: bool) -> float:
    """Top-k vs the oracle: identical ids for an exact index, recall >= MIN_RECALL for an ANN one;
    either way every score is the exact inner product, sorted best first. Returns the recall."""
    result = index.search(data.queries, k)
    truth = data.oracle(k)
    check_result_shape(result, len(data.queries), k)
    assert (result.ids >= 0).all()
    recall = float(recall_at_k(result.ids, truth.ids).mean())
    if exact:
        np.testing.assert_array_equal(result.ids, truth.ids)
        np.testing.assert_allclose(result.scores, truth.scores, atol=SCORE_ATOL)
    else:
        assert recall >= MIN_RECALL, f"recall@{k} {recall:.3f} < {MIN_RECALL}"
    np.testing.assert_allclose(result.scores, data.exact_scores(result.ids), atol=SCORE_ATOL)
    assert (np.diff(result.scores, axis=1) <= 0).all(), "hits must be sorted best first"
    return recall


def check_exact_search_is_the_oracle(index: VectorIndex, data: ContractData, k: int = 10) -> None:
    result = index.exact_search(data.queries, k)
    truth = data.oracle(k)
    check_result_shape(result, len(data.queries), k)
    np.testing.assert_array_equal(result.ids, truth.ids)
    np.testing.assert_allclose(result.scores, truth.scores, atol=SCORE_ATOL)


def check_candidate_ids_restrict_results(
    index: VectorIndex, data: ContractData, *, exact_path: bool, k: int = 10, size: int = 1500, seed: int = 1
) -> None:
    """Only allowed ids come back; ids the index does not hold are ignored. `exact_path`: the backend
    brute-forces small candidate sets (recall 1); otherwise the ANN runs with the restriction pushed
    down (recall >= MIN_RECALL). The caller sets the backend's threshold to pick the path."""
    rng = np.random.default_rng(seed)
    allowed = np.sort(rng.choice(data.ids, size=size, replace=False))
    candidates = np.concatenate([allowed, [10**12, -5]])
    result = index.search(data.queries, k, candidate_ids=candidates)
    check_result_shape(result, len(data.queries), k)
    assert np.isin(result.ids, allowed).all()
    truth = data.oracle(k, allowed=allowed)
    recall = recall_at_k(result.ids, truth.ids).mean()
    assert recall >= (0.999 if exact_path else MIN_RECALL), recall
    np.testing.assert_allclose(result.scores, data.exact_scores(result.ids), atol=SCORE_ATOL)
    exact = index.exact_search(data.queries, k, candidate_ids=candidates)
    np.testing.assert_array_equal(exact.ids, truth.ids)


def check_padding(new_index: Callable[[], VectorIndex], data: ContractData) -> None:
    """k beyond ntotal, an empty candidate set and an empty index pad with id -1 and score -inf."""
    empty = new_index()
    assert empty.ntotal == 0
    assert (empty.search(data.queries[:1], 3).ids == -1).all()
    assert (empty.exact_search(data.queries[:1], 3).ids == -1).all()
    index = new_index()
    index.add(data.ids[:3], data.base[:3])
    for search in (index.search, index.exact_search):
        scores, got = search(data.queries[:2], 5)
        assert (got[:, :3] >= 0).all() and (got[:, 3:] == -1).all()
        assert np.isfinite(scores[:, :3]).all() and np.isneginf(scores[:, 3:]).all()
        scores, got = search(data.queries[:2], 5, candidate_ids=np.array([123456789]))
        assert (got == -1).all() and np.isneginf(scores).all()
        scores, got = search(data.queries[:2], 5, candidate_ids=np.array([], dtype=np.int64))
        assert (got == -1).all()
    assert index.search(data.queries[:0], 5).ids.shape == (0, 5)


def check_get_vectors_and_stored_ids(index: VectorIndex, data: ContractData, inserted_order: np.ndarray) -> None:
    pick = data.ids[[5, 0, 9, 5]]
    np.testing.assert_array_equal(index.get_vectors(pick), data.base[[5, 0, 9, 5]])
    with pytest.raises(KeyError, match="123456789"):
        index.get_vectors(np.array([data.ids[1], 123456789]))
    np.testing.assert_array_equal(index.stored_ids(), inserted_order)
    assert index.ntotal == inserted_order.size


def check_round_trip(before: VectorIndex, reopen: Callable[[], VectorIndex], data: ContractData, k: int = 10) -> None:
    """What `reopen()` returns (save + load; the backend may close `before` first, as a process restart
    would) answers exactly like the index that was saved, and still accepts additions."""
    shape = (before.dim, before.ntotal, before.config)
    expected = before.search(data.queries, k)
    expected_order = before.stored_ids()
    after = reopen()
    assert (after.dim, after.ntotal, after.config) == shape
    got = after.search(data.queries, k)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(after.get_vectors(data.ids[[5, 0, 9]]), data.base[[5, 0, 9]])
    np.testing.assert_array_equal(after.stored_ids(), expected_order)
    new_vec = data.queries[:1]
    after.add(np.array([1]), new_vec)
    assert after.ntotal == shape[1] + 1
    assert after.search(new_vec, 1).ids[0, 0] == 1


def check_input_validation(new_index: Callable[[], VectorIndex], data: ContractData) -> None:
    index = new_index()
    with pytest.raises(ValueError, match="L2 norm"):
        index.add(data.ids[:2], data.base[:2] * 3)
    with pytest.raises(ValueError, match=rf"shape \[N, {data.dim}\]"):
        index.add(data.ids[:2], data.base[:2, :8])
    with pytest.raises(ValueError, match="duplicates"):
        index.add(np.array([1, 1]), data.base[:2])
    with pytest.raises(ValueError, match=">= 0"):
        index.add(np.array([-1, 2]), data.base[:2])
    index.add(data.ids[:2], data.base[:2])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(data.ids[1:3], data.base[1:3])
    assert index.ntotal == 2
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(data.base[:1], bad_k)
    with pytest.raises(ValueError, match="L2 norm"):
        index.search(data.base[:1] * 2, 1)


def check_recall_monitor(exact_index: VectorIndex, data: ContractData, k: int = 10) -> None:
    """The online monitor measures recall 1 for an exact index (any backend's exact_search works)."""
    monitor = RecallMonitor(exact_index, k=k, sample_rate=1.0, seed=0)
    queries = data.queries[:20]
    assert monitor.observe(queries, exact_index.search(queries, k)) == len(queries)
    assert monitor.value() == 1.0
