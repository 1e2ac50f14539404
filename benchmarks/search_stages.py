"""Per-stage latency of the search service on the demo stack: p50 / p99 of each stage the service
reports (embed, retrieve, calibrate, fuse, facets, total) for text, photo and photo+text queries.

    python benchmarks/search_stages.py [--queries 300] [--out DIR | --publish]

Loopback only, bounded: a fixed number of sequential queries. Writes search_stages.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console

import sys as _sys

_sys.path.insert(0, str(Path(__file__).resolve().parent))
import reporting  # noqa: E402

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.catalog.reader import read_catalog
from lenscope.client.cli.demo import ensure_catalog, ensure_repository
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.job import IndexBuildConfig, build_index
from lenscope.client.core.manifest import load_manifest
from lenscope.client.search.engine import SearchSettings, open_engine
from lenscope.client.service.server import serve
from lenscope.client.service.settings import ServiceSettings
from lenscope.client.triton.client import ClientConfig, TritonEmbedder
from lenscope.client.triton.server import start_server

STAGES = ("embed", "retrieve", "calibrate", "fuse", "facets", "total")


def requests(catalog: Path, n: int) -> dict[str, list[search_pb2.SearchRequest]]:
    rows = [r for r in read_catalog(catalog).rows if r.photo]
    rng = np.random.default_rng(0)
    picks = [rows[i] for i in rng.integers(0, len(rows), n)]
    photos = {r.product_id: (catalog.parent / r.photo).read_bytes() for r in picks}
    return {
        "text": [search_pb2.SearchRequest(text=f"{r.color} {r.category}", top_k=10) for r in picks],
        "photo": [search_pb2.SearchRequest(image=photos[r.product_id], top_k=10) for r in picks],
        "photo+text": [search_pb2.SearchRequest(image=photos[r.product_id], text=r.pattern, top_k=10) for r in picks],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=300, help="queries per type")
    ap.add_argument("--workdir", type=Path, default=Path(".lenscope/demo"))
    ap.add_argument("--repository", type=Path, default=Path("model_repository/cpu"))
    reporting.add_output_options(ap)
    args = ap.parse_args()
    args.out = reporting.output_dir(args.out, args.publish)
    console = Console(width=150)
    ensure_repository(args.repository, False, console)
    manifest = load_manifest(args.repository)
    catalog = ensure_catalog(args.workdir, console)
    index_root = args.workdir / "index"
    results: dict[str, dict[str, dict[str, float]]] = {}
    with start_server(args.repository, log_path=args.workdir / "tritonserver.log") as server:
        store = BundleStore(index_root)
        try:
            store.open_current(expected_model_hash=manifest.model_hash).close()
        except Exception:  # noqa: BLE001 - missing or stale: rebuild
            with TritonEmbedder(ClientConfig(url=server.grpc_url, timeout_s=30.0)) as emb:
                build_index(IndexBuildConfig(catalog=catalog, index_root=index_root, progress=False), emb)
        engine = open_engine(server.grpc_url, str(index_root), SearchSettings(default_deadline_s=5.0), triton_timeout_s=5.0)
        running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=5.0),
                        log_stream=open(args.workdir / "search-service.log", "a"))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = search_pb2_grpc.SearchServiceStub(channel)
                for kind, reqs in requests(catalog, args.queries).items():
                    for r in reqs[:10]:  # warm-up
                        stub.Search(r, timeout=10)
                    samples: dict[str, list[float]] = {s: [] for s in (*STAGES, "client")}
                    for r in reqs:
                        t0 = time.perf_counter()
                        resp = stub.Search(r, timeout=10)
                        samples["client"].append(1000 * (time.perf_counter() - t0))
                        for s in STAGES:
                            if s in resp.timings_ms:
                                samples[s].append(resp.timings_ms[s])
                    results[kind] = {s: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "n": len(v)}
                                     for s, v in samples.items() if v}
        finally:
            running.stop(0.5)
            engine.close()
    report = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, no GPU",
              "model_hash": manifest.model_hash, "catalog_products": len(read_catalog(catalog).rows),
              "queries_per_type": args.queries, "results_ms": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_stages.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Search service latency per stage (ms, p50 / p99)", "",
             f"{args.queries} sequential queries per type over gRPC on loopback; model {manifest.model_hash}; "
             f"{report['catalog_products']} products (flat index); {report['machine']}.", "",
             "| query | " + " | ".join([*STAGES, "client"]) + " |", "|---|" + "---|" * (len(STAGES) + 1)]
    for kind, stages in results.items():
        lines.append(f"| {kind} | " + " | ".join(
            f"{stages[s]['p50']:.2f} / {stages[s]['p99']:.2f}" if s in stages else "-" for s in (*STAGES, "client")) + " |")
    (args.out / "search_stages.md").write_text("\n".join(lines) + "\n")
    console.print("\n".join(lines))


if __name__ == "__main__":
    main()
