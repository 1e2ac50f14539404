"""Synthetic index bundles at catalog scale (100k, 1M products) for ``scale.py``: no images, no Triton.

Why synthetic: embedding a million product images through the tiny CPU model would take hours and
measure the indexing job, not search. What search cost depends on is the shape of the data, so the
vectors are *clustered* like real embeddings (uniform random vectors are a worst case for every ANN:
no neighbourhood structure, ``benchmarks/ann.py`` shows the gap): ``clusters`` unit centres, each
product a centre plus Gaussian noise (cosine to its centre ~0.85), its title vector the image vector
plus more noise (~0.8), as a CLIP image/title pair. Facets follow the clusters the way categories and
colours do in a real catalog: a cluster has one category and a dominant colour (70 %), the model's
attribute label sets are used so attribute agreement runs on the served path, plus a 200-value
``brand`` facet for facet counting over a wide vocabulary. Popularity is heavy-tailed (log-normal).

The bundle is written with the project's own ``BundleStore`` writer and ``index.writer.make_index``
(the shipped index configs), under the served model's hash, so ``lenscope serve search`` opens it like
any other. Deterministic for a seed; generated in chunks so memory stays ~2x the vectors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.metadata import Product
from lenscope.client.index.writer import make_index, title_cell_layout
from lenscope.client.ranking.fusion import FusionWeights
from lenscope.client.vectors.cell_index import ASSIGNMENT_ATTACHMENT, CENTROIDS_ATTACHMENT

CHUNK = 100_000
BRANDS = 200
QUERY_NOISE = 0.5  # held-out queries: a product's vector plus this much noise (cosine ~0.9 to it)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Synthetic:
    """The generator: cluster centres and per-cluster facets, then products chunk by chunk."""

    def __init__(self, n: int, dim: int, labels: dict[str, Sequence[str]], seed: int = 0,
                 clusters: int | None = None) -> None:
        self.n, self.dim, self.seed = n, dim, seed
        rng = np.random.default_rng(seed)
        self.k = clusters or max(16, min(4096, n // 250))
        self.centres = _unit(rng.standard_normal((self.k, dim)))
        self.labels = {name: list(values) for name, values in labels.items() if values}
        self.cluster_value = {name: rng.integers(0, len(values), self.k) for name, values in self.labels.items()}
        self.cluster_of = rng.integers(0, self.k, n)

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[Product]]]:
        for start in range(0, self.n, CHUNK):
            stop = min(self.n, start + CHUNK)
            rng = np.random.default_rng([self.seed, start])
            cl = self.cluster_of[start:stop]
            scale = 1.0 / np.sqrt(self.dim)
            image = _unit(self.centres[cl] + 0.6 * scale * rng.standard_normal((stop - start, self.dim)))
            title = _unit(image + 0.75 * scale * rng.standard_normal((stop - start, self.dim)))
            values: dict[str, np.ndarray] = {}
            for name, per_cluster in self.cluster_value.items():
                own = per_cluster[cl]
                other = rng.integers(0, len(self.labels[name]), stop - start)
                keep = rng.random(stop - start) < (1.0 if name == "category" else 0.7)
                values[name] = np.where(keep, own, other)
            brand = rng.integers(0, BRANDS, stop - start)
            popularity = np.floor(rng.lognormal(1.0, 1.5, stop - start))
            products = []
            for i in range(stop - start):
                row = start + i
                attrs = {name: (self.labels[name][int(values[name][i])],) for name in self.labels}
                attrs["brand"] = (f"brand{int(brand[i]):03d}",)
                words = " ".join(attrs[name][0] for name in sorted(self.labels))
                products.append(Product.model_construct(
                    row_id=row, product_id=f"syn-{row:07d}", title=f"{words} item {row}", image_path="",
                    attributes=attrs, popularity=float(popularity[i]), images=(), variant_of=None))
            yield start, image, title, products

    def queries(self, count: int, seed: int = 1) -> np.ndarray:
        """Held-out query vectors near the data: a random product's cluster point plus noise."""
        rng = np.random.default_rng([self.seed, seed, 7])
        cl = self.cluster_of[rng.integers(0, self.n, count)]
        scale = 1.0 / np.sqrt(self.dim)
        point = _unit(self.centres[cl] + 0.6 * scale * rng.standard_normal((count, self.dim)))
        return _unit(point + QUERY_NOISE * scale * rng.standard_normal((count, self.dim)))


def build(index_root: Path, n: int, kind: str, *, model_hash: str, dim: int, labels: dict[str, Sequence[str]],
          seed: int = 0, log=print) -> dict[str, Any]:
    """Write a synthetic bundle of ``n`` products with a ``kind`` index; returns its build figures."""
    gen = Synthetic(n, dim, labels, seed)
    index = make_index(kind, n, dim)  # the shipped configs, as `lenscope index build` makes them
    title_all = np.empty((n, dim), dtype=np.float32)
    t0 = time.perf_counter()
    timings = {"index_add_s": 0.0, "metadata_s": 0.0}
    store = BundleStore(index_root)
    with store.writer(model_manifest_hash=model_hash, index=index) as w:
        for start, image, title, products in gen.chunks():
            t = time.perf_counter()
            title_all[start:start + len(products)] = title
            # IVF-PQ trains on the first add(): chunk 0 is a uniform sample of the clusters
            index.add(np.arange(start, start + len(products), dtype=np.int64), image)
            timings["index_add_s"] += time.perf_counter() - t
            t = time.perf_counter()
            w.metadata.insert_many(products, batch_size=20_000)
            timings["metadata_s"] += time.perf_counter() - t
            log(f"    {start + len(products):,} / {n:,} products")
        t = time.perf_counter()
        w.attach_array("title_vectors", title_all)
        timings["attachments_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cells = title_cell_layout(title_all)  # as `lenscope index build` stores it: pods skip the title k-means
        if cells is not None:
            w.attach_array(CENTROIDS_ATTACHMENT, cells[0])
            w.attach_array(ASSIGNMENT_ATTACHMENT, cells[1])
        timings["title_cells_s"] = time.perf_counter() - t
        t = time.perf_counter()
        w.attach("fusion.json", (FusionWeights().model_dump_json(indent=2) + "\n").encode())
        w.attach("index_info.json", (json.dumps({
            "synthetic": {"products": n, "dim": dim, "clusters": gen.k, "seed": seed},
            "model_hash": model_hash, "index_config": index.config.model_dump(mode="json")}, indent=2) + "\n").encode())
        timings["attachments_s"] += time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return {"products": n, "kind": kind, "clusters": gen.k, "index_config": index.config.model_dump(mode="json"),
            "bundle": w.bundle_id, "timings_s": {k: round(v, 2) for k, v in timings.items()}}


def bundle_bytes(index_root: Path) -> dict[str, int]:
    """Bytes on disk of the current bundle, by part (raw vectors, FAISS structure, metadata, attachments)."""
    store = BundleStore(index_root)
    root = store.versions_dir / str(store.current_version())
    parts: dict[str, int] = {}
    for path in root.rglob("*"):
        if path.is_file():
            name = path.name
            key = ("raw_vectors" if name == "vectors.npy" else "faiss" if name.endswith(".faiss")
                   else "metadata" if name.endswith(".sqlite") else "title_vectors" if "title_vectors" in name
                   else "other")
            parts[key] = parts.get(key, 0) + path.stat().st_size
    return parts
