"""The vectorised per-query path gives exactly what the per-row Python it replaced gave.

Each reference below is the replaced code, kept verbatim as the oracle; the fixtures are random but
seeded, with the awkward cases (duplicates across lists, uneven lengths, ties, selected values beyond
``max_values``) forced in.
"""

from __future__ import annotations

import numpy as np
import pytest

from lenscope.client.ranking.facets import AttributeTable, FilterSpec, facet_counts
from lenscope.client.search.engine import round_robin
from lenscope.client.vectors.cell_index import CellIndex


def round_robin_reference(lists: list[np.ndarray], k: int) -> np.ndarray:
    out: dict[int, None] = {}
    depth = max((len(x) for x in lists), default=0)
    for i in range(depth):
        for ids in lists:
            if i < len(ids):
                out.setdefault(int(ids[i]), None)
                if len(out) >= k:
                    return np.fromiter(out, np.int64, len(out))
    return np.fromiter(out, np.int64, len(out))


def facet_counts_reference(table: AttributeTable, filters: FilterSpec, facet_names, max_values):
    clause_masks = {f: table._clause_mask(f, v) for f, v in filters.clauses.items()}
    all_mask = np.ones(table.n, dtype=bool)
    for m in clause_masks.values():
        all_mask &= m
    out = {}
    for f in facet_names:
        if f in clause_masks:
            base = np.ones(table.n, dtype=bool)
            for g, m in clause_masks.items():
                if g != f:
                    base &= m
        else:
            base = all_mask
        col, vocab = table.codes[f], table.vocab[f]
        sel = col[base]
        counts = np.bincount(sel[sel >= 0], minlength=len(vocab))
        pairs = [(vocab[i], int(c)) for i, c in enumerate(counts) if c > 0]
        pairs.sort(key=lambda kv: (-kv[1], kv[0]))
        selected = filters.clauses.get(f, frozenset())
        if max_values is not None:
            pairs = [kv for i, kv in enumerate(pairs) if i < max_values or kv[0] in selected]
        result = dict(pairs)
        for v in sorted(selected):
            result.setdefault(v, 0)
        out[f] = result
    return out


@pytest.mark.parametrize("seed", range(20))
def test_round_robin_matches_the_loop_it_replaced(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lists = [rng.integers(0, 60, rng.integers(0, 50)) for _ in range(rng.integers(1, 5))]
    for k in (1, 5, 37, 200):
        assert round_robin(lists, k).tolist() == round_robin_reference(lists, k).tolist()


def test_round_robin_edge_cases() -> None:
    assert round_robin([], 3).size == 0
    assert round_robin([np.array([], dtype=np.int64)], 3).size == 0
    assert round_robin([np.array([5, 5, 5]), np.array([5, 1])], 10).tolist() == [5, 1]


@pytest.mark.parametrize("seed", range(12))
def test_facet_counts_match_the_loop_they_replaced(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    vocab_sizes = {"color": 12, "brand": 150, "size": 3}
    columns = {}
    for name, size in vocab_sizes.items():
        values = [f"{name}{i:03d}" for i in range(size)]
        col = [values[i] if rng.random() > 0.1 else None for i in rng.zipf(1.5, n) % size]
        columns[name] = col
    table = AttributeTable.from_columns(columns)
    rare = sorted({v for v in columns["brand"] if v})[-1]  # likely beyond max_values: kept when selected
    specs = [FilterSpec(), FilterSpec(clauses={"brand": frozenset({rare, "brand-unknown"})}),
             FilterSpec(clauses={"color": frozenset({"color001", "color002"}), "size": frozenset({"size000"})})]
    for spec in specs:
        for max_values in (None, 1, 5, 25):
            got = facet_counts(table, spec, list(vocab_sizes), max_values=max_values)
            want = facet_counts_reference(table, spec, list(vocab_sizes), max_values)
            assert got == want
            assert [list(v.items()) for v in got.values()] == [list(v.items()) for v in want.values()]  # order too


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_cell_index_probing_every_cell_is_the_exact_scan() -> None:
    vectors = _clustered(3000, 32, 20, seed=0)
    cells = CellIndex(vectors, nlist=16, nprobe=16)
    for q in _clustered(10, 32, 20, seed=1):
        scores = vectors @ q
        exact = np.lexsort((np.arange(scores.size), -scores))[:50]
        assert cells.search(q, 50).tolist() == exact.tolist()


def test_cell_index_recall_on_clustered_data_and_its_measurement() -> None:
    vectors = _clustered(5000, 32, 40, seed=2)
    queries = _clustered(30, 32, 40, seed=3)
    cells = CellIndex(vectors)
    assert cells.nprobe < cells.nlist  # really approximate at this size
    recall = cells.recall_at(queries, 10)
    assert 0.9 <= recall <= 1.0
    few = CellIndex(vectors, nlist=64, nprobe=1)
    assert few.recall_at(queries, 100) < recall  # fewer cells probed: lower recall, and it shows


def test_recall_samples_run_off_the_request_thread_and_are_skipped_while_busy() -> None:
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from lenscope.client.search.engine import SearchEngine, SearchSettings
    from lenscope.client.vectors.contract import RecallMonitor
    from lenscope.client.vectors.faiss_index import FaissIndex

    vectors = _clustered(500, 16, 5, seed=4)
    index = FaissIndex(16)
    index.add(np.arange(500, dtype=np.int64), vectors)
    started, release, threads = threading.Event(), threading.Event(), []

    class SlowMonitor(RecallMonitor):
        def observe(self, queries, ann_ids, candidate_ids=None):
            threads.append(threading.current_thread().name)
            started.set()
            release.wait(5)
            return super().observe(queries, ann_ids, candidate_ids)

    engine = SearchEngine.__new__(SearchEngine)  # only the recall sampling state: no Triton, no bundle
    engine.settings = SearchSettings(recall_sample_rate=1.0)
    engine.recall = SlowMonitor(index, k=10, sample_rate=1.0)
    engine._recall_rng = random.Random(0)
    engine._recall_idle = threading.Semaphore(1)
    engine._recall_worker = ThreadPoolExecutor(1, thread_name_prefix="lenscope-recall")
    q = vectors[:1]
    res = index.search(q, 10)
    engine._sample_recall(q, res)  # returns at once: measured on the recall thread
    assert started.wait(5)
    engine._sample_recall(q, res)  # busy: skipped, not queued
    release.set()
    engine._recall_worker.shutdown(wait=True)
    assert threads == ["lenscope-recall_0"]
    assert engine.recall.recall == 1.0 and engine.recall.total_sampled == 1


@pytest.mark.parametrize("seed", range(10))
def test_best_first_is_the_stable_argsort_it_replaced(seed: int) -> None:
    from lenscope.client.vectors.rescoring import best_first

    rng = np.random.default_rng(seed)
    scores = np.round(rng.standard_normal((3, 700)), 1).astype(np.float32)  # many exact ties
    scores[:, rng.integers(0, 700, 200)] = -np.inf  # padding, as re-scoring marks missing candidates
    scores[2, 5:] = -np.inf  # a row with fewer real candidates than k
    for k in (1, 10, 100, 175, 700):
        assert best_first(scores, k).tolist() == np.argsort(-scores, axis=1, kind="stable")[:, :k].tolist()
