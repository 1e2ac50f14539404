"""ANN benchmark: recall@10 vs queries/s for the FAISS backend (flat, HNSW, IVF-PQ, each with the exact
re-scoring the search service uses), memory per vector and build time; on synthetic clustered 512-d
vectors and on the real embeddings of a generated catalog; Milvus Lite on a smaller set for reference.

    python benchmarks/ann.py                    # 1M x 512 synthetic + 6,000-product catalog, ~4-7 min on 2 cores
    python benchmarks/ann.py --n 500000         # half the size, ~4 min
    python benchmarks/ann.py --n 20000 --catalog-products 300 --queries 200 --milvus-n 2000   # smoke size

Budget: on the 2-core reference machine (shared with other jobs) the default run took 4.3-6.5 min, peak RSS
~6.5 GB: 1M x 512 float32 is 2 GB, FaissIndex keeps its own copy for exact re-scoring and HNSW-Flat a
third. HNSW insertion dominates (75-175 s for 1M at efConstruction 40); the shipped efConstruction 200 would
take ~5x that, so the benchmark builds with 40 (``--ef-construction`` changes it) and its HNSW recall is a
lower bound for what the shipped setting reaches.

Measured the way the search service queries: batch 1, FAISS single-threaded (``open_engine`` sets one
OpenMP thread: the service parallelises across requests), through ``FaissIndex.search`` (validation,
ANN candidates ``k * rescore_factor``, exact re-scoring against the stored float32 vectors). Recall@10 is
against exact brute force over the same vectors. Builds use every core.

Synthetic data (see ``clustered``): ``n / 400`` clusters of skewed sizes under ``n / 10,000``
super-categories, all leaning towards one shared direction (the narrow cone of real embedding spaces:
mean cosine between unrelated vectors ~0.2), each a 48-dimensional subspace around its centre (real
embeddings have a low intrinsic dimension) plus isotropic noise, L2-normalised. Queries come from the same
distribution and are not in the database. Uniform random vectors would be a worst case no embedding model
produces; well-separated orthogonal clusters would flatter IVF.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reporting  # noqa: E402
import stack  # noqa: E402

K = 10


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def clustered(n: int, d: int, n_queries: int, seed: int = 0, subspace: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(database [n, d], queries [n_queries, d]) float32 unit vectors; see the module docstring.

    Shaped like embeddings rather than like a textbook mixture: every vector leans towards one shared
    direction (embedding spaces are a narrow cone: unrelated items still have cosine ~0.2-0.3); cluster
    centres are grouped under super-categories, so clusters overlap instead of being orthogonal; cluster
    sizes are skewed (Dirichlet weights); a point is its centre + spread x a direction in the cluster's
    48-d subspace + isotropic noise. Cluster count (n / 400) is unrelated to any IVF nlist, so cells cut
    across clusters as they would on real data."""
    rng = np.random.default_rng(seed)
    n_clusters = max(16, n // 400)
    n_super = max(4, n_clusters // 25)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    shared = unit(rng.standard_normal(d).astype(np.float32))
    supers = unit(rng.standard_normal((n_super, d), dtype=np.float32))
    parent = rng.integers(0, n_super, n_clusters)
    centres = unit(supers[parent] + 0.9 * unit(rng.standard_normal((n_clusters, d), dtype=np.float32)))
    centres = unit(0.45 * shared + centres)
    spread = rng.uniform(0.4, 0.9, n_clusters).astype(np.float32)
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    bases: list[np.ndarray | None] = [None] * n_clusters  # drawn lazily: [subspace, d], N(0, 1/d) entries

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, d), dtype=np.float32)
        where = rng.permutation(count)  # clusters interleaved: any prefix is a fair sample
        sizes = rng.multinomial(count, weights)
        offset = 0
        for c, size in enumerate(sizes):
            if size == 0:
                continue
            if bases[c] is None:
                bases[c] = rng.standard_normal((subspace, d), dtype=np.float32) / np.float32(math.sqrt(d))
            z = rng.standard_normal((size, subspace), dtype=np.float32) / np.float32(math.sqrt(subspace))
            x = centres[c] + spread[c] * (z @ bases[c])
            x += rng.standard_normal((size, d), dtype=np.float32) * np.float32(0.15 / math.sqrt(d))
            out[where[offset:offset + size]] = unit(x)
            offset += size
        return out

    return draw(n), draw(n_queries)


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ground_truth(database: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(CORES)
    _, ids = faiss.knn(queries, database, k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


# ------------------------------------------------------------------------------------------------
# Measuring one index
# ------------------------------------------------------------------------------------------------


def batch1(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray,
           max_seconds: float) -> dict[str, Any]:
    """Queries one at a time until all are done or ``max_seconds`` passed; recall over those answered."""
    found, t0 = [], time.perf_counter()
    latencies = []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q[None]))
        latencies.append((time.perf_counter() - t) * 1000.0)
        if time.perf_counter() - t0 > max_seconds:
            break
    elapsed = time.perf_counter() - t0
    answered = len(found)
    ids = np.vstack(found)
    return {"queries": answered, "qps": round(answered / elapsed, 1),
            f"recall@{K}": round(recall_at_k(ids, truth[:answered]), 4),
            "p50_ms": reporting.percentiles(latencies)["p50"], "p99_ms": reporting.percentiles(latencies)["p99"]}


def _threads(n: int | None) -> None:
    import faiss

    faiss.omp_set_num_threads(n if n else CORES)


def faiss_memory(index: Any) -> dict[str, float]:
    """Bytes per vector: the FAISS structure, and in total with the raw float32 copy kept for re-scoring."""
    import faiss

    n, d = index.ntotal, index.dim
    raw = 4 * d + 8  # float32 vector + int64 id (ids.npy)
    inner = index._faiss  # noqa: SLF001 - measuring, not using
    if inner is None:
        structure = 0.0
    elif isinstance(inner, faiss.IndexHNSW):
        links = inner.hnsw.neighbors.size() * 4 + inner.hnsw.offsets.size() * 8 + inner.hnsw.levels.size() * 4
        structure = (links + 4 * d * n) / n  # graph + its own flat storage
    else:
        structure = len(faiss.serialize_index(inner)) / n
    return {"faiss_bytes_per_vector": round(structure, 1), "raw_bytes_per_vector": raw,
            "total_bytes_per_vector": round(structure + raw, 1)}


def bench_faiss(name: str, database: np.ndarray, queries: np.ndarray, truth: np.ndarray, config: Any,
                sweep: list[dict[str, int]], max_seconds: float, log: Callable[[str], None],
                rounds: int = 1) -> dict[str, Any]:
    from lenscope.client.vectors.faiss_index import FaissIndex

    _threads(None)  # build on every core
    index = FaissIndex(database.shape[1], config)
    t0 = time.perf_counter()
    index.add(np.arange(database.shape[0], dtype=np.int64), database)
    build_s = time.perf_counter() - t0
    log(f"  {name}: built {index.ntotal:,} in {build_s:.1f} s")
    _threads(1)  # query like the service
    points: list[dict[str, Any]] = [{} for _ in sweep]
    for _round in range(rounds):  # best of `rounds` sweeps: other tenants of a shared box only slow a run down
        for i, params in enumerate(sweep):
            if params:
                index.set_search_params(**params)
            point = batch1(lambda q: index.search(q, K).ids, queries, truth, max_seconds)
            if point["qps"] > points[i].get("qps", 0):
                points[i] = {**params, **point}
    for point in points:
        log(f"  {name} {({k: point[k] for k in ('ef_search', 'nprobe', 'rescore_factor') if k in point}) or ''}: "
            f"recall@{K} {point[f'recall@{K}']:.4f} at {point['qps']:,.0f} QPS ({point['queries']} queries)")
    result = {"kind": name, "n": index.ntotal, "dim": index.dim, "build_seconds": round(build_s, 2),
              "build_threads": _omp_max(), "config": config.model_dump(), **faiss_memory(index), "points": points}
    del index
    gc.collect()
    return result


def _omp_max() -> int:
    return CORES


def bench_milvus(database: np.ndarray, queries: np.ndarray, truth: np.ndarray, workdir: Path, efs: list[int],
                 max_seconds: float, log: Callable[[str], None], rounds: int = 1) -> dict[str, Any]:
    """Milvus Lite HNSW through ``MilvusIndex`` (exact re-scoring included), if the backend is installed."""
    try:
        from lenscope.client.vectors.milvus_config import MilvusIndexConfig
        from lenscope.client.vectors.milvus_index import MilvusIndex
    except Exception as err:  # noqa: BLE001 - optional backend
        return {"skipped": f"lenscope.client.vectors.milvus_index not importable: {type(err).__name__}: {err}"}
    import shutil

    db = workdir / "milvus-bench.db"
    shutil.rmtree(db, ignore_errors=True)
    try:
        config = MilvusIndexConfig(uri=str(db), index_type="HNSW", token_env=None)
        index = MilvusIndex(database.shape[1], config)
        try:
            t0 = time.perf_counter()
            index.add(np.arange(database.shape[0], dtype=np.int64), database)
            insert_s = time.perf_counter() - t0
            index.flush()
            build_s = time.perf_counter() - t0
            log(f"  milvus-lite hnsw: inserted {database.shape[0]:,} in {insert_s:.1f} s, indexed after {build_s:.1f} s")
            points = []
            for ef in efs:
                index.set_search_params(ef=ef)
                point = max((batch1(lambda q: index.search(q, K).ids, queries, truth, max_seconds)
                             for _ in range(rounds)), key=lambda p: p["qps"])
                points.append({"ef": ef, **point})
                log(f"  milvus-lite ef={ef}: recall@{K} {point[f'recall@{K}']:.4f} at {point['qps']:,.0f} QPS")
            return {"kind": "milvus-lite-hnsw", "n": database.shape[0], "dim": database.shape[1],
                    "insert_seconds": round(insert_s, 2), "build_seconds": round(build_s, 2),
                    "config": config.model_dump(mode="json"), "points": points}
        finally:
            try:
                index.drop()
            finally:
                index.close()
    except Exception as err:  # noqa: BLE001 - a reference run must not sink the FAISS results
        return {"skipped": f"Milvus Lite run failed: {type(err).__name__}: {err}"}
    finally:
        shutil.rmtree(db, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Real catalog embeddings
# ------------------------------------------------------------------------------------------------


def catalog_embeddings(workdir: Path, n_products: int, n_queries: int, spec: Path | None,
                       log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """Catalog image embeddings (database) and photo + text query embeddings, through the exported ONNX
    graphs in-process (the same graphs Triton serves; their parity is tested)."""
    import onnxruntime as ort

    from lenscope.client.core import contract
    from lenscope.client.catalog.reader import read_catalog, read_queries
    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.inputs.preprocess import preprocess_bytes
    from lenscope.client.inputs.tokenizer import ClipTokenizer

    t0 = time.perf_counter()
    repo = stack.export_base(reporting.WORK / "repo-base", spec=spec, log=log)
    root = workdir / f"catalog-{n_products}"
    stack.ensure_catalog(root, n_products, seed=0)
    gen_s = time.perf_counter() - t0
    manifest = load_manifest(repo)
    graphs = stack.onnx_paths(repo)
    opts = ort.SessionOptions()
    image = ort.InferenceSession(str(graphs[contract.IMAGE_ENCODER]), opts, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(graphs[contract.TEXT_ENCODER]), opts, providers=["CPUExecutionProvider"])
    tok = ClipTokenizer(stack.vocab_path(repo), context_length=manifest.spec.context_length)
    pre, limits = manifest.spec.preprocess, manifest.spec.limits

    def images(paths: list[Path]) -> np.ndarray:
        out = []
        for start in range(0, len(paths), 64):
            pixels = np.stack([preprocess_bytes(p.read_bytes(), pre, limits) for p in paths[start:start + 64]])
            out.append(image.run([contract.EMBEDDING], {contract.PIXEL_VALUES: pixels.astype(np.float32)})[0])
        return np.vstack(out)

    def texts(items: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(items), 256):
            ids = tok.encode_batch(items[start:start + 256]).astype(np.int64)
            out.append(text.run([contract.EMBEDDING], {contract.INPUT_IDS: ids})[0])
        return np.vstack(out)

    catalog = read_catalog(root / "catalog.jsonl")
    database = images([root / r.image for r in catalog.rows])
    queries = read_queries(root / "queries.jsonl").queries
    photos = [root / q.image for q in queries if q.type == "image" and q.image][: n_queries // 2]
    words = [q.text for q in queries if q.type == "text" and q.text][: n_queries - len(photos)]
    q = np.vstack([images(photos), texts(words)])
    kinds = ["photo"] * len(photos) + ["text"] * len(words)
    info = {"products": len(catalog.rows), "dim": int(database.shape[1]), "model": manifest.spec.name,
            "model_hash": manifest.model_hash, "photo_queries": len(photos), "text_queries": len(words),
            "generate_seconds": round(gen_s, 1), "embed_seconds": round(time.perf_counter() - t0 - gen_s, 1)}
    log(f"  catalog: {len(catalog.rows):,} products x {database.shape[1]} (model {manifest.spec.name}), "
        f"{len(photos)} photo + {len(words)} text queries")
    return np.ascontiguousarray(database, dtype=np.float32), np.ascontiguousarray(q, dtype=np.float32), kinds, info


# ------------------------------------------------------------------------------------------------
# One dataset: flat, HNSW sweep, IVF-PQ sweep
# ------------------------------------------------------------------------------------------------


def run_dataset(label: str, database: np.ndarray, queries: np.ndarray, args: argparse.Namespace,
                nlist: int, pq_m: int, log: Callable[[str], None], nbits: int = 8) -> dict[str, Any]:
    from lenscope.client.vectors.faiss_index import FaissIndexConfig, HNSWConfig, IVFPQConfig

    n, d = database.shape
    t0 = time.perf_counter()
    truth = ground_truth(database, queries)
    gt_s = time.perf_counter() - t0
    log(f"{label}: {n:,} x {d}, {len(queries)} queries; exact ground truth in {gt_s:.1f} s")
    indexes = [bench_faiss("flat", database, queries, truth, FaissIndexConfig(kind="flat"), [{}],
                           args.flat_seconds, log, args.rounds)]
    ef_sweep = [{"ef_search": ef, "rescore_factor": max(1, min(4, ef // K))} for ef in args.ef_search]
    indexes.append(bench_faiss(
        "hnsw", database, queries, truth,
        FaissIndexConfig(kind="hnsw", hnsw=HNSWConfig(m=args.hnsw_m, ef_construction=args.ef_construction)),
        ef_sweep, args.point_seconds, log, args.rounds))
    ivf_sweep = [{"nprobe": p, "rescore_factor": rf} for rf in args.rescore for p in args.nprobe if p <= nlist]
    indexes.append(bench_faiss(
        "ivfpq", database, queries, truth,
        FaissIndexConfig(kind="ivfpq", ivfpq=IVFPQConfig(nlist=nlist, m=pq_m, nbits=nbits, nprobe=min(16, nlist))),
        ivf_sweep, args.point_seconds, log, args.rounds))
    return {"label": label, "n": n, "dim": d, "queries": len(queries), "ground_truth_seconds": round(gt_s, 1),
            "indexes": indexes, "_truth": truth}


def best_at(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The fastest point reaching ``target`` recall."""
    ok = [p for p in points if p[f"recall@{K}"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def summarise(dataset: dict[str, Any]) -> list[dict[str, Any]]:
    flat = dataset["indexes"][0]["points"][0]
    rows = []
    for idx in dataset["indexes"]:
        for target in (0.95, 0.99):
            best = best_at(idx["points"], target)
            rows.append({"dataset": dataset["label"], "kind": idx["kind"], "target_recall": target,
                         "point": {k: v for k, v in (best or {}).items() if k in ("ef_search", "nprobe", "rescore_factor")},
                         f"recall@{K}": best[f"recall@{K}"] if best else None, "qps": best["qps"] if best else None,
                         "speedup_vs_flat": reporting.ratio(best["qps"], flat["qps"], 1) if best else None,
                         "build_seconds": idx["build_seconds"], "total_bytes_per_vector": idx["total_bytes_per_vector"]})
    return rows


def plot(datasets: list[dict[str, Any]], milvus: dict[str, Any]):
    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for idx in ds["indexes"]:
            pts = idx["points"]
            if idx["kind"] == "ivfpq":
                for rf in sorted({p["rescore_factor"] for p in pts}):
                    sub = [p for p in pts if p["rescore_factor"] == rf]
                    ax.plot([p[f"recall@{K}"] for p in sub], [p["qps"] for p in sub], "o-",
                            label=f"IVF-PQ (nprobe sweep, re-score {rf}x)")
                    for p in sub:
                        ax.annotate(str(p["nprobe"]), (p[f"recall@{K}"], p["qps"]), fontsize=7,
                                    textcoords="offset points", xytext=(3, 3))
            elif idx["kind"] == "hnsw":
                ax.plot([p[f"recall@{K}"] for p in pts], [p["qps"] for p in pts], "s-", label="HNSW (efSearch sweep)")
                for p in pts:
                    ax.annotate(str(p["ef_search"]), (p[f"recall@{K}"], p["qps"]), fontsize=7,
                                textcoords="offset points", xytext=(3, -9))
            else:
                ax.plot([pts[0][f"recall@{K}"]], [pts[0]["qps"]], "k*", markersize=12, label="flat (exact)")
        if ds is datasets[0] and milvus.get("points"):
            pts = milvus["points"]
            ax.plot([p[f"recall@{K}"] for p in pts], [p["qps"] for p in pts], "^--",
                    label=f"Milvus Lite HNSW ({milvus['n']:,} vectors only)")
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{K} (vs exact)")
        ax.set_ylabel("queries/s (batch 1, 1 thread)")
        ax.set_title(f"{ds['label']}: {ds['n']:,} x {ds['dim']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def markdown(report: reporting.Report, data: dict[str, Any]) -> None:
    s = data["settings"]
    report.add(f"Batch-1 queries through `FaissIndex.search` (exact re-scoring of `k x rescore_factor` candidates), "
               f"FAISS on 1 thread like the service; builds on {data['datasets'][0]['indexes'][0]['build_threads']} "
               f"threads. k = {K}. HNSW M {s['hnsw_m']}, efConstruction {s['ef_construction']} (the shipped config "
               f"uses 200; see the module docstring for why the benchmark builds with less), rescore factor "
               f"min(4, efSearch / k). IVF-PQ 8-bit codes, nprobe x rescore-factor sweep. "
               f"Points capped at {s['point_seconds']} s each (flat at {s['flat_seconds']} s): "
               f"`queries` says how many were answered; QPS is the best of {s['rounds']} sweeps (the box is shared). "
               f"Memory: FAISS structure per vector plus the raw float32 copy + int64 id the re-scoring reads "
               f"(memory-mapped from the bundle when served).\n")
    report.add("## Fastest setting reaching a recall target\n")
    report.add(reporting.table(
        ["dataset", "index", "target", "setting", f"recall@{K}", "QPS", "x flat QPS", "build s", "bytes/vector"],
        [(r["dataset"], r["kind"], r["target_recall"], ", ".join(f"{k} {v}" for k, v in r["point"].items()) or "—",
          r[f"recall@{K}"], r["qps"], r["speedup_vs_flat"], r["build_seconds"], r["total_bytes_per_vector"])
         for r in data["summary"]], digits=3))
    for ds in data["datasets"]:
        report.add(f"\n## {ds['label']}: {ds['n']:,} x {ds['dim']}, {ds['queries']} queries\n")
        if ds.get("info"):
            info = ds["info"]
            report.add(f"Model `{info['model']}` ({info['model_hash']}); {info['photo_queries']} user-photo queries "
                       f"and {info['text_queries']} text queries (text -> image crosses the modality gap).\n")
        rows = []
        for idx in ds["indexes"]:
            mem = (f"{idx['total_bytes_per_vector']:.0f} (FAISS {idx['faiss_bytes_per_vector']:.0f} + raw "
                   f"{idx['raw_bytes_per_vector']})")
            for p in idx["points"]:
                setting = ", ".join(f"{k} {p[k]}" for k in ("ef_search", "nprobe", "rescore_factor") if k in p)
                per_kind = ""
                if "recall_photo" in p:
                    per_kind = f"{p['recall_photo']:.3f} / {p['recall_text']:.3f}"
                rows.append((idx["kind"], setting or "exact", p[f"recall@{K}"], per_kind, p["qps"], p["p50_ms"],
                             p["p99_ms"], p["queries"], idx["build_seconds"], mem))
        report.add(reporting.table(["index", "setting", f"recall@{K}", "photo / text", "QPS", "p50 ms", "p99 ms",
                                    "queries", "build s", "bytes/vector"], rows, digits=3))
    m = data["milvus"]
    report.add("\n## Milvus Lite (reference)\n")
    if m.get("skipped"):
        report.add(f"Not run: {m['skipped']}\n")
    else:
        report.add(f"{m['n']:,} of the synthetic vectors, HNSW (M {m['config']['hnsw']['m']}, efConstruction "
                   f"{m['config']['hnsw']['ef_construction']}), through `MilvusIndex` (same exact re-scoring). Insert "
                   f"{m['insert_seconds']} s, indexed after {m['build_seconds']} s. Milvus Lite is a local dev/test "
                   "engine (pure Python around FAISS); its per-query overhead says nothing about a Milvus cluster.\n")
        report.add(reporting.table(["ef", f"recall@{K}", "QPS", "p50 ms", "p99 ms", "queries"],
                                   [(p["ef"], p[f"recall@{K}"], p["qps"], p["p50_ms"], p["p99_ms"], p["queries"])
                                    for p in m["points"]], digits=3))
        if m.get("faiss_same_subset"):
            f = m["faiss_same_subset"]
            report.add(f"\nSame {m['n']:,} vectors in FAISS HNSW (M {data['settings']['hnsw_m']}, efSearch 64): "
                       f"recall@{K} {f[f'recall@{K}']:.3f} at {f['qps']:,.0f} QPS.\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic database size")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=ints, default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--nlist", type=int, default=1024, help="IVF-PQ cells (synthetic set)")
    p.add_argument("--pq-m", type=int, default=64, help="PQ sub-quantisers (synthetic set; bytes per code)")
    p.add_argument("--nprobe", type=ints, default=[2, 4, 8, 16, 32, 64])
    p.add_argument("--rescore", type=ints, default=[4, 16], help="IVF-PQ rescore factors to sweep")
    p.add_argument("--point-seconds", type=float, default=6.0, help="time cap per sweep point")
    p.add_argument("--flat-seconds", type=float, default=10.0, help="time cap for the flat (exact) point")
    p.add_argument("--rounds", type=int, default=2, help="sweeps per index; QPS is the best round's")
    p.add_argument("--report-name", default="ann", help="report file stem (ann.json/.md/.png)")
    p.add_argument("--catalog-products", type=int, default=6000, help="real-embedding dataset size (0 = skip)")
    p.add_argument("--milvus-n", type=int, default=20_000, help="Milvus Lite reference size (0 = skip)")
    p.add_argument("--milvus-ef", type=ints, default=[64, 128])
    p.add_argument("--spec", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=reporting.WORK / "ann")
    reporting.add_output_options(p)
    args = p.parse_args(argv)
    args.out = reporting.output_dir(args.out, args.publish)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = reporting.Report(args.report_name, args.out, argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    datasets = []

    t0 = time.perf_counter()
    database, queries = clustered(args.n, args.dim, args.queries)
    log(f"synthetic: {args.n:,} x {args.dim} generated in {time.perf_counter() - t0:.1f} s")
    synthetic = run_dataset("synthetic clustered", database, queries, args, args.nlist, args.pq_m, log)
    synthetic["generator"] = {"clusters": max(16, args.n // 400), "super_clusters": max(4, max(16, args.n // 400) // 25),
                              "subspace_dim": 48, "shared_direction_weight": 0.45, "seed": 0,
                              "generate_seconds": round(time.perf_counter() - t0, 1)}
    datasets.append(synthetic)

    milvus: dict[str, Any] = {"skipped": "--milvus-n 0"}
    if args.milvus_n:
        sub = database[: args.milvus_n]
        sub_truth = ground_truth(sub, queries)
        milvus = bench_milvus(sub, queries, sub_truth, args.workdir, args.milvus_ef, args.point_seconds, log, args.rounds)
        if not milvus.get("skipped"):
            from lenscope.client.vectors.faiss_index import FaissIndexConfig, HNSWConfig

            same = bench_faiss("hnsw", sub, queries, sub_truth,
                               FaissIndexConfig(kind="hnsw", hnsw=HNSWConfig(m=args.hnsw_m, ef_construction=args.ef_construction)),
                               [{"ef_search": 64}], args.point_seconds, lambda _m: None, args.rounds)
            milvus["faiss_same_subset"] = same["points"][0]
        else:
            log(f"  milvus: {milvus['skipped']}")
    del database
    gc.collect()

    if args.catalog_products:
        db, q, kinds, info = catalog_embeddings(args.workdir, args.catalog_products, args.queries, args.spec, log)
        n = db.shape[0]
        nlist = max(8, min(1024, n // 64))
        pq_m = 16 if db.shape[1] % 16 == 0 else 8
        # 8-bit codebooks want >= 39 x 256 training vectors; a small catalog gets 6-bit ones
        real = run_dataset("catalog embeddings", db, q, args, nlist, pq_m, log, nbits=8 if n >= 10_000 else 6)
        real["info"] = info
        kinds_arr = np.asarray(kinds)
        # recall per query type, re-measured cheaply from the stored points is not possible (ids are not
        # kept), so recompute it for each point with one batched pass per setting.
        _per_kind_recall(real, db, q, kinds_arr, args)
        datasets.append(real)

    for ds in datasets:
        ds.pop("_truth", None)
    summary = [row for ds in datasets for row in summarise(ds)]
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    report.data.update({
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "k": K,
        "datasets": datasets,
        "milvus": milvus,
        "summary": summary,
        "peak_rss_gib": round(peak_rss_gib, 2),
    })
    markdown(report, report.data)
    report.add(f"\nPeak RSS of the benchmark process: {peak_rss_gib:.1f} GiB.\n")
    paths = report.write(plot(datasets, milvus))
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return report.data


def _per_kind_recall(ds: dict[str, Any], db: np.ndarray, q: np.ndarray, kinds: np.ndarray,
                     args: argparse.Namespace) -> None:
    """Photo vs text recall for every point of the real dataset (batched search: recall does not depend on
    batching)."""
    from lenscope.client.vectors.faiss_index import FaissIndex, FaissIndexConfig

    truth = ds["_truth"]
    photo, text = kinds == "photo", kinds == "text"
    _threads(None)
    for idx in ds["indexes"]:
        index = FaissIndex(db.shape[1], FaissIndexConfig.model_validate(idx["config"]))
        index.add(np.arange(db.shape[0], dtype=np.int64), db)
        for p in idx["points"]:
            params = {k: p[k] for k in ("ef_search", "nprobe", "rescore_factor") if k in p}
            if params:
                index.set_search_params(**params)
            found = index.search(q, K).ids
            p["recall_photo"] = round(recall_at_k(found[photo], truth[photo]), 4) if photo.any() else None
            p["recall_text"] = round(recall_at_k(found[text], truth[text]), 4) if text.any() else None


if __name__ == "__main__":
    main()
