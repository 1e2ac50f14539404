"""An inverted-file (IVF-flat) index built in memory at load time over a float32 matrix the caller
already holds (the search engine's title vectors), for catalogs too large to brute-force per query.

Why it exists: the engine retrieves each similarity signal's own best products; the title signals are
not in the bundle's ANN index, and an exact scan of the title matrix costs O(N) per query: ~1 ms at
20k rows, tens of ms at 1M, more than the whole budget of a search. IVF-flat keeps full vectors, so
the scores it returns are exact inner products; only which rows get scored is approximate (the
``nprobe`` cells whose centroids are closest to the query). Building it is a k-means on a sample plus
one assignment pass: seconds at 100k, but over a minute at 1M on 2 cores, which a search pod would pay
at every start and every live index switch. So the index build stores its *layout* (the centroids and
each row's cell: 4 bytes a row, not a second copy of the vectors) with the bundle
(``LAYOUT_ATTACHMENTS``), and ``from_layout`` refills the cells from it without k-means or assignment.
``recall_at`` measures it against the exact scan on given queries, so a caller can report it.
"""

from __future__ import annotations

import math

import faiss
import numpy as np


# Bundle attachment names (arrays) of a stored layout: centroids (nlist x dim float32), cell of each row (int32).
CENTROIDS_ATTACHMENT = "title_cells_centroids"
ASSIGNMENT_ATTACHMENT = "title_cells_assignment"
LAYOUT_ATTACHMENTS = (CENTROIDS_ATTACHMENT, ASSIGNMENT_ATTACHMENT)
# Above this many title vectors the engine searches titles through a CellIndex instead of a scan (the
# default of SearchSettings.title_scan_max), so index builds store the layout above it.
SCAN_MAX_ROWS = 50_000


class LayoutMismatch(ValueError):
    """A stored layout that does not fit the vectors it is meant for (other row count, dim or cells)."""


class CellIndex:
    """IVF-flat over ``vectors`` (rows = ids 0..n-1); ``search`` returns ids best first."""

    def __init__(self, vectors: np.ndarray, *, nlist: int | None = None, nprobe: int | None = None,
                 seed: int = 0, _layout: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        if _layout is not None:
            nlist = int(_layout[0].shape[0])
        self.nlist = nlist or max(1, min(int(math.sqrt(n)), n // 39))
        # ~3 % of the cells: on clustered embeddings this keeps recall@100 high (scale.py reports it)
        self.nprobe = nprobe or min(self.nlist, max(8, self.nlist // 32))
        quantizer = faiss.IndexFlatIP(dim)
        self._index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        if _layout is None:
            self._index.cp.seed = seed
            self._index.cp.niter = 10
            sample = vectors
            if n > 64 * self.nlist:
                pick = np.random.default_rng(seed).choice(n, size=64 * self.nlist, replace=False)
                sample = vectors[np.sort(pick)]
            self._index.train(sample)
            self._index.add(vectors)
        else:  # the stored centroids and cells: no k-means, no assignment pass
            centroids, cells = _layout
            quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            self._index.is_trained = True
            cells = np.ascontiguousarray(cells, dtype=np.int64)
            self._index.add_core(n, faiss.swig_ptr(vectors), None, faiss.swig_ptr(cells))
        self._index.nprobe = self.nprobe
        self._vectors = vectors
        self.ntotal = n

    @classmethod
    def from_layout(cls, vectors: np.ndarray, centroids: np.ndarray, cells: np.ndarray,
                    *, nprobe: int | None = None) -> "CellIndex":
        """The index a ``layout()`` describes, over the same ``vectors``; LayoutMismatch if it cannot be theirs."""
        centroids, cells = np.asarray(centroids), np.asarray(cells)
        n, dim = np.shape(vectors)
        if centroids.ndim != 2 or centroids.shape[1] != dim or centroids.shape[0] < 1:
            raise LayoutMismatch(f"centroids of shape {centroids.shape} for {dim}-d vectors")
        if cells.shape != (n,):
            raise LayoutMismatch(f"{cells.shape[0] if cells.ndim == 1 else cells.shape} cell ids for {n} rows")
        if n and (int(cells.min()) < 0 or int(cells.max()) >= centroids.shape[0]):
            raise LayoutMismatch(f"cell ids outside 0..{centroids.shape[0] - 1}")
        return cls(vectors, nprobe=nprobe, _layout=(centroids, cells))

    def layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(centroids, cell of each row): what ``from_layout`` needs to rebuild this index without training."""
        centroids = self._index.quantizer.reconstruct_n(0, self.nlist)
        cells = np.full(self.ntotal, -1, dtype=np.int32)
        lists = self._index.invlists
        for cell in range(self.nlist):
            size = lists.list_size(cell)
            if size:
                ids = faiss.rev_swig_ptr(lists.get_ids(cell), size)
                cells[np.asarray(ids, dtype=np.int64)] = cell
        return np.asarray(centroids, dtype=np.float32), cells

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
