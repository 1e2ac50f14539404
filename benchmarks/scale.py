"""What a search call costs at catalog scale: 100k and 1M products behind ``lenscope serve search``.

    python benchmarks/scale.py                                   # 100k: flat, HNSW, IVF-PQ (~10 min, 2 cores)
    python benchmarks/scale.py --sizes 1000000 --kinds hnsw,ivfpq  # 1M (~30-40 min build + run, ~6 GiB RAM)
    python benchmarks/scale.py --sizes 20000 --queries 20 --recall-queries 50   # smoke size
    python benchmarks/scale.py --sizes 1000000 --kinds hnsw,ivfpq --build-only --keep   # build now (busy box)...
    python benchmarks/scale.py --sizes 1000000 --kinds hnsw,ivfpq --reuse --keep --profile  # ...measure when quiet

Bundles are synthetic (``scale_bundle.py``: clustered embeddings + metadata, no images) but written by
the project's own bundle writer under the exported default model's hash, so the service opens them
like any other; the query embedding is real: the default model in the real tritonserver. Per bundle:

1. build time (vectors into the index, metadata into SQLite) and bytes on disk per product;
2. recall@10 of the index's ``search`` against ``exact_search`` on held-out query vectors near the
   data (in this process, FAISS single-threaded like the service), and its batch-1 QPS;
3. ``lenscope serve search`` in its own process: ``--queries`` sequential calls per query type (text,
   photo, photo+text, and text filtered on category + colour), p50 / p99 of every stage the service
   reports (embed, retrieve, calibrate, fuse, facets, engine total) and of the client's round trip;
   the service's RSS per product after the run;
4. ``--profile``: the same queries through the engine in this process under cProfile (the top
   functions by cumulative time) on the ``--profile-kind`` bundle of the first size, to see what
   dominates the per-query path.

Flat search above ``--flat-max`` rows is skipped (1M flat is ~14 QPS: seconds per photo+text query),
and said so in the report. Everything is on 127.0.0.1; every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import open_loop  # noqa: E402
import reporting  # noqa: E402
import scale_bundle  # noqa: E402
import stack  # noqa: E402

from lenscope.client.api import search_pb2, search_pb2_grpc  # noqa: E402

STAGES = ("embed", "retrieve", "calibrate", "fuse", "facets", "total")
QUERY_TYPES = ("text", "photo", "photo+text", "filtered")


def query_requests(catalog_root: Path, labels: dict[str, list[str]], count: int, seed: int = 0
                   ) -> dict[str, list[search_pb2.SearchRequest]]:
    """``count`` requests per query type: shopper texts built from the label sets, real user photos
    from a generated catalog, both together, and texts filtered on the category and colour facets."""
    rng = np.random.default_rng(seed)
    photos = [r.image for _, r in open_loop.query_mix(catalog_root, {"image": 1.0}, count=count, seed=seed)]
    cats, colours = labels.get("category") or ["item"], labels.get("color") or [""]
    out: dict[str, list[search_pb2.SearchRequest]] = {k: [] for k in QUERY_TYPES}
    for i in range(count):
        cat, colour = cats[rng.integers(len(cats))], colours[rng.integers(len(colours))]
        text = f"{colour} {cat}".strip()
        out["text"].append(search_pb2.SearchRequest(text=text, top_k=10))
        out["photo"].append(search_pb2.SearchRequest(image=photos[i], top_k=10))
        out["photo+text"].append(search_pb2.SearchRequest(image=photos[i], text=colour or cat, top_k=10))
        filters = [search_pb2.Filter(facet="category", values=[cat])]
        if "color" in labels:
            filters.append(search_pb2.Filter(facet="color", values=[colour]))
        out["filtered"].append(search_pb2.SearchRequest(text=text, filters=filters, top_k=10))
    return out


def measure_service(address: str, requests: dict[str, list[search_pb2.SearchRequest]]) -> dict[str, Any]:
    """Sequential calls per query type: p50 / p99 of each reported stage and of the round trip."""
    results: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        for kind, reqs in requests.items():
            for r in reqs[:5]:  # warm-up
                stub.Search(r, timeout=30)
            samples: dict[str, list[float]] = {s: [] for s in (*STAGES, "client", "service_minus_embed")}
            hits = []
            for r in reqs:
                t0 = time.perf_counter()
                resp = stub.Search(r, timeout=30)
                client_ms = 1000 * (time.perf_counter() - t0)
                samples["client"].append(client_ms)
                for s in STAGES:
                    if s in resp.timings_ms:
                        samples[s].append(resp.timings_ms[s])
                samples["service_minus_embed"].append(client_ms - resp.timings_ms.get("embed", 0.0))
                hits.append(len(resp.hits))
            results[kind] = {s: reporting.percentiles(v, (50, 99)) for s, v in samples.items() if v}
            results[kind]["mean_hits"] = round(float(np.mean(hits)), 2)
    return results


def measure_recall(index_root: Path, gen: scale_bundle.Synthetic, count: int, k: int = 10) -> dict[str, Any]:
    """recall@k of the served index's search() against exact_search() on held-out vectors, batch 1."""
    import faiss

    from lenscope.client.index.bundle_store import BundleStore

    faiss.omp_set_num_threads(1)  # as the service runs it
    queries = gen.queries(count)
    with BundleStore(index_root).open_current(expected_model_hash=None) as bundle:
        index = bundle.index
        exact = index.exact_search(queries, k).ids
        t0 = time.perf_counter()
        approx = np.concatenate([index.search(q[None, :], k).ids for q in queries])
        seconds = time.perf_counter() - t0
    recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))
    return {"recall_at_10": round(recall, 4), "qps_batch1": round(count / seconds, 1), "queries": count}


def profile_engine(triton_url: str, index_root: Path, requests: dict[str, list[search_pb2.SearchRequest]],
                   top: int = 25) -> dict[str, Any]:
    """The queries through the engine in this process under cProfile: what dominates per query."""
    from lenscope.client.search.engine import SearchSettings, open_engine
    from lenscope.client.search.models import SearchQuery

    engine = open_engine(triton_url, str(index_root), SearchSettings(default_deadline_s=30.0), triton_timeout_s=30.0)
    try:
        queries = []
        for kind, reqs in requests.items():
            for r in reqs:
                filters = {f.facet: tuple(f.values) for f in r.filters}
                queries.append(SearchQuery(image=r.image if r.HasField("image") else None,
                                           text=r.text if r.HasField("text") else None, filters=filters, top_k=10,
                                           deadline_s=30.0))
        for q in queries[:5]:
            engine.search(q)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for q in queries:
            engine.search(q)
        prof.disable()
        seconds = time.perf_counter() - t0
    finally:
        engine.close()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return {"queries": len(queries), "ms_per_query": round(1000 * seconds / len(queries), 3),
            "top_cumulative": buf.getvalue()}


def run(args: argparse.Namespace, report: reporting.Report) -> dict[str, Any]:
    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.triton.server import start_server

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    repo = stack.export_base(reporting.WORK / "repo-base", spec=args.spec)
    manifest = load_manifest(repo)
    labels = {k: list(v) for k, v in manifest.labels.items()}
    catalog_root = work / "photos-60"
    stack.ensure_catalog(catalog_root, 60, seed=0)
    requests = query_requests(catalog_root, labels, args.queries)
    rows: list[dict[str, Any]] = []
    profile = None
    triton = start_server(repo, log_path=work / "tritonserver.log", ready_timeout=180)
    try:
        for n in args.sizes:
            for kind in args.kinds:
                row: dict[str, Any] = {"products": n, "kind": kind}
                rows.append(row)
                if kind == "flat" and n > args.flat_max:
                    row["skipped"] = f"flat above --flat-max {args.flat_max:,} rows (exact search over every row per query)"
                    print(f"{n:,} {kind}: skipped ({row['skipped']})")
                    continue
                index_root = work / f"index-{n}-{kind}"
                gen = scale_bundle.Synthetic(n, manifest.embed_dim, labels, seed=args.seed)
                record = index_root / BUILD_RECORD
                kept = _kept_build(record, n, kind, args.seed, manifest.model_hash) if args.reuse else None
                if kept is not None:
                    row["build"] = {**kept, "reused": True}
                    print(f"{n:,} {kind}: reusing the kept bundle (its build time measured when it was built)")
                else:
                    print(f"{n:,} {kind}: building the bundle")
                    if index_root.exists():
                        import shutil

                        shutil.rmtree(index_root)  # ours (a scratch dir under WORK): rebuilt so build time is measured
                    row["build"] = scale_bundle.build(index_root, n, kind, model_hash=manifest.model_hash,
                                                      dim=manifest.embed_dim, labels=labels, seed=args.seed,
                                                      log=lambda m: None)
                    record.write_text(json.dumps({"products": n, "kind": kind, "seed": args.seed,
                                                  "model_hash": manifest.model_hash, "build": row["build"],
                                                  "load_average": list(os.getloadavg())}))
                parts = scale_bundle.bundle_bytes(index_root)
                row["disk_bytes_per_product"] = {k: round(v / n, 1) for k, v in parts.items()}
                row["disk_bytes_per_product"]["total"] = round(sum(parts.values()) / n, 1)
                print(f"  built in {row['build']['timings_s']['total_s']} s; {row['disk_bytes_per_product']['total']} B/product")
                if args.build_only:
                    print(f"  kept in {index_root} (--build-only): measure it with --reuse")
                    continue
                row["ann"] = measure_recall(index_root, gen, args.recall_queries)
                print(f"  recall@10 {row['ann']['recall_at_10']} at {row['ann']['qps_batch1']} QPS (batch 1, in-process)")
                t0 = time.perf_counter()
                service = stack.ServiceProcess.start(index_root, triton.grpc_url, work / f"service-{n}-{kind}.log",
                                                     ready_timeout_s=600.0)
                row["service_start_s"] = round(time.perf_counter() - t0, 1)
                try:
                    row["service"] = measure_service(service.address, requests)
                    row["service_rss_bytes_per_product"] = round(stack.rss_bytes(service.pid) / n, 1)
                finally:
                    service.stop()
                for q in QUERY_TYPES:
                    s = row["service"][q]
                    print(f"  {q:10s} client p50 {s['client']['p50']:.2f} p99 {s['client']['p99']:.2f} ms; "
                          f"retrieve p99 {s['retrieve']['p99']:.2f}, embed p99 {s['embed']['p99']:.2f}")
                if args.profile and profile is None and kind == args.profile_kind:
                    profile = {"products": n, "kind": kind, **profile_engine(triton.grpc_url, index_root, requests)}
                if not args.keep:
                    import shutil

                    shutil.rmtree(index_root)
                _write_partial(report, args, {"model_hash": manifest.model_hash, "embed_dim": manifest.embed_dim,
                                              "rows": rows, "profile": profile})
    finally:
        triton.stop()
    return {"model_hash": manifest.model_hash, "embed_dim": manifest.embed_dim, "rows": rows, "profile": profile}


BUILD_RECORD = "scale_build.json"


def _kept_build(record: Path, n: int, kind: str, seed: int, model_hash: str) -> dict[str, Any] | None:
    """The build record of a bundle kept by an earlier ``--keep`` run of the same size, kind, seed and
    model, or None (then it is rebuilt). Lets the slow 1M builds run on a busy box and the queries later
    on a quiet one."""
    try:
        kept = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if (kept.get("products"), kept.get("kind"), kept.get("seed"), kept.get("model_hash")) != (n, kind, seed, model_hash):
        return None
    return {**kept["build"], "load_average_at_build": kept.get("load_average")}


def plot(data: dict[str, Any]):
    """Client round trip p50 (bar) and p99 (tick) per bundle and query type."""
    plt = reporting.pyplot()
    rows = [r for r in data["rows"] if r.get("service")]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(1, len(QUERY_TYPES))
    for j, q in enumerate(QUERY_TYPES):
        xs = [i + j * width for i in range(len(rows))]
        p50 = [r["service"][q]["client"]["p50"] for r in rows]
        p99 = [r["service"][q]["client"]["p99"] for r in rows]
        ax.bar(xs, p50, width, label=f"{q} p50")
        ax.scatter(xs, p99, marker="_", s=200, color="black")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r['products']:,} {r['kind']}" for r in rows])
    ax.set_ylabel("client round trip, ms (bar p50, tick p99)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def _write_partial(report: reporting.Report, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Rewrite the report after every bundle, so a long 1M run that is stopped still leaves its rows."""
    report.data.update({"settings": _settings(args), **results})
    report.markdown = []
    markdown(report, report.data)
    report.write(plot(report.data))


def _build_cell(build: dict[str, Any]) -> str:
    total = build.get("timings_s", {}).get("total_s", "—")
    if not build.get("reused"):
        return str(total)
    load = build.get("load_average_at_build") or []
    return f"{total} (kept from an earlier run; load average then {load[0]:.1f})" if load else f"{total} (kept)"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def markdown(report: reporting.Report, data: dict[str, Any]) -> None:
    s = data["settings"]
    report.add(f"Synthetic clustered catalogs (embedding dim {data['embed_dim']}, the default model's) behind "
               f"`lenscope serve search` (own process, shipped settings), query embeddings from the default model "
               f"in tritonserver; {s['queries']} sequential queries per type; recall on {s['recall_queries']} "
               "held-out vectors near the data. Times in ms, p50 / p99.\n")
    report.add("## Build, memory, recall\n")
    report.add(reporting.table(
        ["products", "index", "build s", "disk B/product", "service RSS B/product", "recall@10", "ANN QPS (batch 1)",
         "service start s"],
        [(r["products"], r["kind"], _build_cell(r.get("build", {})),
          r.get("disk_bytes_per_product", {}).get("total", "—"), r.get("service_rss_bytes_per_product", "—"),
          r.get("ann", {}).get("recall_at_10", r.get("skipped", "—")), r.get("ann", {}).get("qps_batch1", "—"),
          r.get("service_start_s", "—"))
         for r in data["rows"]]))
    report.add("\n## Per stage, through the service\n")
    table_rows = []
    for r in data["rows"]:
        for q in QUERY_TYPES:
            st = (r.get("service") or {}).get(q)
            if not st:
                continue
            cell = lambda name: (f"{st[name]['p50']:.2f} / {st[name]['p99']:.2f}" if name in st else "—")  # noqa: E731
            table_rows.append((r["products"], r["kind"], q, *(cell(x) for x in (*STAGES, "client", "service_minus_embed"))))
    report.add(reporting.table(["products", "index", "query", *STAGES, "client round trip", "round trip - embed"],
                               table_rows))
    report.add("\n`total` is the engine's own time; the client round trip adds gRPC, request mapping and the "
               "response. `round trip - embed` is what the service adds to the model server's time.\n")
    if data.get("profile"):
        p = data["profile"]
        report.add(f"\n## Profile: {p['queries']} queries through the engine in-process, {p['products']:,} products, "
                   f"{p['kind']} ({p['ms_per_query']} ms/query under cProfile)\n")
        report.add("```\n" + p["top_cumulative"].strip() + "\n```\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ints = lambda s: [int(float(x)) for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=ints, default=[100_000], help="catalog sizes (products), e.g. 100000,1000000")
    p.add_argument("--kinds", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   default=["flat", "hnsw", "ivfpq"], help="index kinds (the shipped configs of each)")
    p.add_argument("--flat-max", type=int, default=200_000, help="skip flat above this many products")
    p.add_argument("--queries", type=int, default=200, help="sequential service queries per query type")
    p.add_argument("--recall-queries", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="cProfile the engine in-process on one bundle")
    p.add_argument("--profile-kind", default=None, help="which index kind to profile (default: ivfpq if measured)")
    p.add_argument("--keep", action="store_true", help="keep the bundles (several GiB at 1M)")
    p.add_argument("--reuse", action="store_true",
                   help="serve bundles kept by an earlier --keep run of the same size/kind/seed/model instead of "
                        "rebuilding them (the report shows the build time measured then)")
    p.add_argument("--build-only", action="store_true",
                   help="build (and keep) the bundles, measure nothing else: pair with a later --reuse run")
    p.add_argument("--spec", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=reporting.WORK / "scale")
    reporting.add_output_options(p)
    args = p.parse_args(argv)
    for kind in args.kinds:
        if kind not in ("flat", "hnsw", "ivfpq"):
            p.error(f"--kinds: {kind!r} is not one of flat, hnsw, ivfpq")
    if args.profile_kind is None:
        args.profile_kind = "ivfpq" if "ivfpq" in args.kinds else args.kinds[0]
    args.out = reporting.output_dir(args.out, args.publish)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = reporting.Report("scale", args.out, argv)
    results = run(args, report)
    if args.build_only:  # nothing measured: no report (it would replace a measured one with empty rows)
        print("--build-only: bundles built and kept; run again with --reuse to measure them")
        return results
    report.data.update({"settings": _settings(args), **results})
    report.markdown = []
    report.publish(markdown, plot)
    return report.data


if __name__ == "__main__":
    main()
