"""Exact re-scoring and top-k selection for the vector index backends: pure numpy, no engine calls.

Why one module: the `VectorIndex` contract promises that every returned score is the exact inner product
of the query with the stored float32 vector, whatever approximate structure (FAISS HNSW / IVF-PQ, a
Milvus index) nominated the candidate. Both backends keep that promise with the functions here, and share
the block budget (`GATHER_BYTES`) and the partial selection (`keep_best`) used while merging blocks.

Two scorers remain, because they do not compute the same bits and each backend's results must stay
exactly what they were: `rescore_positions` (FAISS: batched `np.matmul` over rows of the in-memory
matrix, ties kept in candidate order) and `exact_scores` + `top_k` (Milvus: `np.einsum`, which gives the
same bits for a (query, product) pair wherever it sits in the batch, ties broken by id).
"""

from __future__ import annotations

import numpy as np

from lenscope.client.vectors.contract import SearchResult, empty_result

# Bytes of gathered float32 vectors materialised at once while re-scoring or brute-forcing a subset.
GATHER_BYTES = 64 << 20


def keep_best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """At most the k best (scores, ids) per row, in no set order (an argpartition): bounds a running
    best-so-far while candidates arrive block by block."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    return scores, ids


def best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first, ties in column order: exactly
    ``np.argsort(-scores, axis=1, kind="stable")[:, :k]``, without sorting every column when the row is
    much wider than k (an over-fetch re-scores k x rescore_factor candidates, e.g. 32,000, for k = 2,000):
    a partition finds each row's k-th best score, then only the columns above it, and the first columns
    equal to it, are sorted."""
    num_q, width = scores.shape
    if width <= 4 * k:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    out = np.empty((num_q, k), dtype=np.int64)
    for r in range(num_q):
        row = scores[r]
        better = np.flatnonzero(row > kth[r])
        tied = np.flatnonzero(row == kth[r])[: k - better.size]
        cand = np.sort(np.concatenate([better, tied]))
        out[r] = cand[np.argsort(-row[cand], kind="stable")]
    return out


def rescore_positions(
    vectors: np.ndarray, row_ids: np.ndarray, queries: np.ndarray, positions: np.ndarray, k: int
) -> SearchResult:
    """Exact inner products of each query with its candidate rows of `vectors`; top-k of those, best first.

    `positions` is [Q, W] row positions into `vectors` (-1 = no candidate); `row_ids` maps a position to
    its product id. Every score the FAISS backend returns comes from here, so all its paths (flat, HNSW,
    IVF-PQ, filtered) produce the same numbers for the same (query, product) pair.
    """
    num_q, width = positions.shape
    scores_out = np.full((num_q, k), -np.inf, dtype=np.float32)
    ids_out = np.full((num_q, k), -1, dtype=np.int64)
    step = max(1, GATHER_BYTES // (4 * vectors.shape[1] * max(width, 1)))
    for start in range(0, num_q, step):
        stop = min(start + step, num_q)
        pos = positions[start:stop]
        valid = pos >= 0
        gathered = vectors[np.where(valid, pos, 0)]  # [q, width, dim]
        scores = np.matmul(gathered, queries[start:stop, :, None])[..., 0]
        scores[~valid] = -np.inf
        order = best_first(scores, k)
        take = order.shape[1]
        top_s = np.take_along_axis(scores, order, axis=1)
        top_p = np.take_along_axis(pos, order, axis=1)
        hit = np.isfinite(top_s)
        scores_out[start:stop, :take] = np.where(hit, top_s, -np.inf)
        ids_out[start:stop, :take] = np.where(hit, row_ids[np.where(hit, top_p, 0)], -1)
    return SearchResult(scores_out, ids_out)


def exact_scores(gathered: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[Q, W] float32 inner products of each query with its W gathered [Q, W, dim] vectors.

    Every score the Milvus backend returns comes from here. einsum computes each dot product the same
    way wherever the pair sits in the batch (a BLAS matmul does not), so search, filtered search and
    exact_search give bit-identical scores for the same (query, product) pair.
    """
    return np.einsum("qwd,qd->qw", gathered, queries)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> SearchResult:
    """Best k per row of ([Q, M] scores, [Q, M] ids; id -1 = padding), best first (ties: smaller id
    first), padded to k."""
    num_q, width = scores.shape
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32, copy=False)
    take = min(k, width)
    scores, ids = keep_best(scores, ids, k)
    order = np.lexsort((ids, -scores), axis=1) if num_q else np.empty((0, take), dtype=np.int64)
    top_s = np.take_along_axis(scores, order, axis=1)
    top_i = np.take_along_axis(ids, order, axis=1)
    out = empty_result(num_q, k)
    hit = np.isfinite(top_s)
    out.scores[:, :take] = np.where(hit, top_s, -np.inf)
    out.ids[:, :take] = np.where(hit, top_i, -1)
    return out


def merge_top_k(a: SearchResult, b: SearchResult, k: int) -> SearchResult:
    """Best k of two results for the same queries (`top_k` of their concatenation)."""
    return top_k(np.concatenate([a.scores, b.scores], axis=1), np.concatenate([a.ids, b.ids], axis=1), k)


def exact_top_k(queries: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray) -> SearchResult:
    """Top-k of queries against one shared candidate matrix ([n] ids, [n, dim] vectors): chosen block by
    block with a matrix product, then scored by `exact_scores` like every other Milvus path."""
    num_q = queries.shape[0]
    best = empty_result(num_q, k)  # .ids hold positions into `vectors` until the end
    block = max(1, GATHER_BYTES // (4 * max(num_q, 1)))
    for start in range(0, ids.size, block):
        scores = queries @ vectors[start : start + block].T  # [Q, b]
        pos = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best = merge_top_k(best, top_k(scores, pos, k), k)
    if ids.size == 0:
        return best
    valid = best.ids >= 0
    pos = np.where(valid, best.ids, 0)
    scores = exact_scores(vectors[pos], queries)
    return top_k(scores, np.where(valid, ids[pos], -1), k)
