"""An inverted-file (IVF-flat) index built in memory at load time over a float32 matrix the caller
already holds (the search engine's title vectors), for catalogs too large to brute-force per query.

Why it exists: the engine retrieves each similarity signal's own best products; the title signals are
not in the bundle's ANN index, and an exact scan of the title matrix costs O(N) per query: ~1 ms at
20k rows, tens of ms at 1M, more than the whole budget of a search. IVF-flat keeps full vectors, so
the scores it returns are exact inner products; only which rows get scored is approximate (the
``nprobe`` cells whose centroids are closest to the query). Building it is a k-means on a sample plus
one assignment pass (seconds at 1M on 2 cores), so nothing new is stored in the bundle.
``recall_at`` measures it against the exact scan on given queries, so a caller can report it.
"""

from __future__ import annotations

import math

import faiss
import numpy as np


class CellIndex:
    """IVF-flat over ``vectors`` (rows = ids 0..n-1); ``search`` returns ids best first."""

    def __init__(self, vectors: np.ndarray, *, nlist: int | None = None, nprobe: int | None = None,
                 seed: int = 0) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        self.nlist = nlist or max(1, min(int(math.sqrt(n)), n // 39))
        # ~3 % of the cells: on clustered embeddings this keeps recall@100 high (scale.py reports it)
        self.nprobe = nprobe or min(self.nlist, max(8, self.nlist // 32))
        quantizer = faiss.IndexFlatIP(dim)
        self._index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self._index.cp.seed = seed
        self._index.cp.niter = 10
        sample = vectors
        if n > 64 * self.nlist:
            pick = np.random.default_rng(seed).choice(n, size=64 * self.nlist, replace=False)
            sample = vectors[np.sort(pick)]
        self._index.train(sample)
        self._index.add(vectors)
        self._index.nprobe = self.nprobe
        self._vectors = vectors
        self.ntotal = n

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """The (at most) k best row ids for one query vector, best first (ties: lower id first)."""
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        scores, ids = self._index.search(q, min(k, self.ntotal))
        keep = ids[0] >= 0
        ids, scores = ids[0][keep], scores[0][keep]
        return ids[np.lexsort((ids, -scores))].astype(np.int64)

    def recall_at(self, queries: np.ndarray, k: int) -> float:
        """Mean share of the exact top-k (a full scan) that ``search`` finds, over ``queries``."""
        queries = np.asarray(queries, dtype=np.float32)
        _, exact = faiss.knn(queries, self._vectors, min(k, self.ntotal), metric=faiss.METRIC_INNER_PRODUCT)
        found = [len(set(self.search(q, k).tolist()) & set(e.tolist())) / max(1, len(e)) for q, e in zip(queries, exact)]
        return float(np.mean(found)) if found else float("nan")
