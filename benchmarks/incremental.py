"""Full vs incremental index builds: how long a catalog change takes to publish.

    python benchmarks/incremental.py                       # 20,000 products, 1 % and 10 % changes
    python benchmarks/incremental.py --products 2000 --changes 0.01

Method: generate the catalog, start tritonserver with the default model, build the index in full
(`build_index(full=True)`, what every build did before incremental builds). Then, per change size
f, on a fresh copy of that root: a catalog in which f of the rows changed (half retitled, a quarter
withdrawn, a quarter new products), built incrementally into the copy; then `index remove` of 1 %
of the products on it. Reported per build: wall seconds by stage (read, row keys, embed, ranking
fit, write), rows reused / embedded / removed, what happened to the ranking fit (kept below the
refit share, refitted above it: the refit embeds the self-check's pseudo-queries, which a small
change does not pay). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reporting  # noqa: E402
import stack  # noqa: E402


def changed_catalog(catalog: Path, fraction: float, out: Path) -> dict[str, int]:
    """Write a changed copy of `catalog` beside it: half retitled, a quarter removed, a quarter added."""
    lines = catalog.read_text(encoding="utf-8").splitlines()
    n = len(lines)
    k = max(4, int(round(n * fraction)))
    retitle, remove, add = k // 2, k // 4, k - k // 2 - k // 4
    step = max(1, n // k)
    picked = list(range(0, n, step))[:k]
    retitled, removed = set(picked[:retitle]), set(picked[retitle:retitle + remove])
    rows = []
    for i, line in enumerate(lines):
        if i in removed:
            continue
        row = json.loads(line)
        if i in retitled:
            row["title"] += " (new edition)"
        rows.append(row)
    for j in range(add):  # new products reuse an existing image under a new id and title
        row = json.loads(lines[picked[retitle + remove + j] if retitle + remove + j < len(picked) else j])
        row["product_id"] = f"new-{j:06d}"
        row["title"] = f"new arrival {j} " + row["title"]
        rows.append(row)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"retitled": retitle, "removed": remove, "added": add, "rows": len(rows)}


def build(catalog: Path, root: Path, url: str, full: bool) -> dict[str, Any]:
    from lenscope.client.index.job import IndexBuildConfig, build_index
    from lenscope.client.triton.client import ClientConfig, TritonEmbedder

    t0 = time.perf_counter()
    with TritonEmbedder(ClientConfig(url=url, timeout_s=60.0, max_concurrency=64)) as emb:
        report = build_index(IndexBuildConfig(catalog=catalog, index_root=root, batch_size=32, concurrency=4,
                                              progress=False, full=full), emb)
    return {"wall_s": round(time.perf_counter() - t0, 2), "seconds": report.seconds, "build": report.info["build"],
            "indexed": report.indexed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--products", type=int, default=20_000)
    p.add_argument("--changes", default="0.01,0.1", help="comma-separated change fractions")
    reporting.add_output_options(p)
    args = p.parse_args(argv)
    args.out = reporting.output_dir(args.out, args.publish)
    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.index.removal import remove_products
    from lenscope.client.triton.server import start_server

    report = reporting.Report("incremental", args.out, argv)
    work = reporting.WORK / "incremental"
    work.mkdir(parents=True, exist_ok=True)
    repo = stack.export_base(reporting.WORK / "repo-base")
    catalog = stack.ensure_catalog(reporting.WORK / f"catalog-{args.products}", args.products, seed=0)
    triton = start_server(repo, log_path=work / "tritonserver.log", ready_timeout=180)
    results: dict[str, Any] = {"products": args.products, "model_hash": load_manifest(repo).model_hash}
    try:
        base = work / f"index-full-{args.products}"
        shutil.rmtree(base, ignore_errors=True)
        print(f"full build of {args.products} products ...", flush=True)
        results["full"] = full = build(catalog, base, triton.grpc_url, full=True)
        print(f"  {full['wall_s']} s {full['seconds']}", flush=True)
        results["changes"] = []
        for f in (float(x) for x in args.changes.split(",")):
            changed = catalog.parent / f"changed-{f:g}.jsonl"
            what = changed_catalog(catalog, f, changed)
            root = work / f"index-incr-{args.products}-{f:g}"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(base, root, symlinks=True)
            print(f"incremental build, {f:.0%} changed {what} ...", flush=True)
            incr = build(changed, root, triton.grpc_url, full=False)
            print(f"  {incr['wall_s']} s {incr['seconds']} {incr['build']}", flush=True)
            ids = work / f"remove-{f:g}.txt"
            rows = [json.loads(line)["product_id"] for line in changed.read_text().splitlines()]
            ids.write_text("".join(pid + "\n" for pid in rows[:: 100][: max(1, len(rows) // 100)]))
            t0 = time.perf_counter()
            removal = remove_products(root, ids)
            removal_s = round(time.perf_counter() - t0, 2)
            print(f"  index remove of {removal.removed}: {removal_s} s", flush=True)
            results["changes"].append({"fraction": f, "catalog": what, "incremental": incr,
                                       "remove": {"removed": removal.removed, "wall_s": removal_s}})
    finally:
        triton.stop()

    report.data["results"] = results
    rows = [["full", args.products, "-", "-", "-", full["wall_s"], full["seconds"].get("embed"),
             full["seconds"].get("ranking_fit"), 1.0, "fitted"]]
    for c in results["changes"]:
        b, s = c["incremental"]["build"], c["incremental"]["seconds"]
        rows.append([f"incremental, {c['fraction']:.0%} changed", c["catalog"]["rows"], b["reused"], b["embedded"],
                     b["removed"], c["incremental"]["wall_s"], s.get("embed"), s.get("ranking_fit"),
                     reporting.ratio(c["incremental"]["wall_s"], full["wall_s"]), b["ranking"]])
    for c in results["changes"]:
        rows.append([f"index remove after the {c['fraction']:.0%} build ({c['remove']['removed']} products)", "-", "-", 0, c["remove"]["removed"],
                     c["remove"]["wall_s"], 0, 0, reporting.ratio(c["remove"]["wall_s"], full["wall_s"]), "kept"])
    report.add(reporting.table(["build", "rows", "reused", "embedded", "removed", "wall s", "embed s", "fit s",
                                "x full", "ranking fit"], rows))
    report.add("Every build publishes a verified version (checksums, probe search). Wall seconds include "
               "reading the catalog and hashing every image (row keys). The box is shared: absolute seconds "
               "move by tens of percent; the ratio to the full build is what to read.")
    paths = report.write()
    print(f"wrote {paths['md']}")


if __name__ == "__main__":
    main()
