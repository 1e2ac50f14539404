"""The index build's self-check on a sample of the catalog vs on the whole: does the sample flip a decision?

    python benchmarks/self_check_sample.py                          # seeds 0 and 3, 300 products
    python benchmarks/self_check_sample.py --caps 200,150,100 --seeds 3 --products 300

Why: a large catalog's self-check runs on a stable sample of at most ``self_check.MAX_PRODUCTS``
products (pseudo_queries.sample_products). Whether a sample is enough is measured here on catalogs
small enough to check whole: per catalog (generated, seed S, --products), each cap's fit (calibration
+ per-type weights, fitted on the sample's fit part) is scored on the held-out pseudo-queries of the
WHOLE catalog (the sample's held-out part is a subset of the whole's: the split hashes the family id
either way, so no product the fit saw is scored), next to the whole catalog's own fit and each raw
signal on the same queries. Reported per cap and query type: the decision the capped check made (on
its own held-out part), and nDCG@10 / R@10 of its fused ranking on the whole held-out part.

Vectors come from one index build per catalog through the real tritonserver, with default fusion
weights supplied (so that build runs no self-check of its own). A benchmark: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reporting  # noqa: E402
import stack  # noqa: E402


def catalog_vectors(catalog: Path, root: Path, embedder: Any, work: Path):  # noqa: ANN201
    """(views, vectors, known photo vectors, binding, heads) of the catalog, from one default-weights build."""
    from lenscope.client.catalog.reader import read_catalog
    from lenscope.client.index.incremental import load_previous
    from lenscope.client.index.job import IndexBuildConfig, _served_model, build_index
    from lenscope.client.index.pseudo_queries import catalog_fingerprint
    from lenscope.client.index.ranking_setup import trained_heads, views_and_vectors
    from lenscope.client.index.reader import SourceRow
    from lenscope.client.index.writer import Assembled
    from lenscope.client.ranking.fusion import FusionWeights, save_weights
    from lenscope.client.ranking.policy import FitBinding

    weights = save_weights(FusionWeights(), work / "default.fusion.json")
    build_index(IndexBuildConfig(catalog=catalog, index_root=root, progress=False, full=True, fusion_weights=weights),
                embedder)
    model = _served_model(embedder)
    prev, why = load_previous(root, model)
    if prev is None:
        raise SystemExit(f"cannot read the build back: {why}")
    by_id = {r.product_id: r for r in read_catalog(catalog).rows}
    rows = [SourceRow(position=i, line=i + 1, row=by_id[pid]) for i, pid in enumerate(prev.product_ids)]
    a = Assembled(rows=rows, image=prev.image, title=prev.title, photo=prev.photo, attributes=prev.attributes)
    views, vectors, known = views_and_vectors(a)
    manifest = embedder.manifest()
    binding = FitBinding(model_hash=model.model_hash, catalog_fingerprint=catalog_fingerprint(views))
    return views, vectors, known, binding, trained_heads(manifest)


def whole_held_out_pools(views, vectors, known, heads, embedder, root: Path):  # noqa: ANN001, ANN201
    """The whole catalog's held-out pools (self_check's own steps, no cap): the common yardstick."""
    from lenscope.client.index.pseudo_queries import HELD_OUT, pseudo_queries
    from lenscope.client.index.self_check import CatalogFacets, build_pools, embed_queries

    queries, parts = pseudo_queries(views)
    held = [q for q in queries if q.part == HELD_OUT]
    facets = CatalogFacets.of(views, heads)
    outputs = {} if facets.label_codes else None
    tv, iv, _ = embed_queries(held, embedder, root, {} if outputs is not None else known, outputs)
    return build_pools(held, [v.product_id for v in views], parts, vectors, tv, iv, facets, outputs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,3")
    p.add_argument("--products", type=int, default=300)
    p.add_argument("--caps", default="200,150", help="comma-separated sample sizes (products) next to the whole")
    reporting.add_output_options(p)
    args = p.parse_args(argv)
    args.out = reporting.output_dir(args.out, args.publish)
    from lenscope.client.core.manifest import load_manifest  # noqa: F401 - fail early without the client
    from lenscope.client.index.self_check import held_out_scores, self_check
    from lenscope.client.ranking.fusion import FusionWeights
    from lenscope.client.triton.client import ClientConfig, TritonEmbedder
    from lenscope.client.triton.server import start_server

    report = reporting.Report("self_check_sample", args.out, argv)
    work = reporting.WORK / "self_check_sample"
    work.mkdir(parents=True, exist_ok=True)
    repo = stack.export_base(reporting.WORK / "repo-base")
    triton = start_server(repo, log_path=work / "tritonserver.log", ready_timeout=180)
    embedder = TritonEmbedder(ClientConfig(url=triton.grpc_url, timeout_s=60.0))
    caps: list[int | None] = [None, *(int(c) for c in args.caps.split(","))]
    results: list[dict[str, Any]] = []
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            catalog = stack.ensure_catalog(work / f"catalog-{args.products}-seed{seed}", args.products, seed=seed)
            root = work / f"index-{args.products}-seed{seed}"
            views, vectors, known, binding, heads = catalog_vectors(catalog, root, embedder, work)
            yardstick = whole_held_out_pools(views, vectors, known, heads, embedder, catalog.parent)
            for cap in caps:
                t0 = time.perf_counter()
                check = self_check(views, vectors, embedder, catalog.parent, binding=binding, known_images=known,
                                   heads=heads, max_products=cap)
                seconds = round(time.perf_counter() - t0, 1)
                fit = check.summary.get("fit", {})
                by_type = {t: FusionWeights.model_validate(w) for t, w in (fit.get("weights_by_type") or {}).items()}
                scores = held_out_scores(yardstick, check.calibration, by_type)
                row = {"seed": seed, "cap": cap, "seconds": seconds, "sample": check.summary["sample"],
                       "decisions": {t: d.ranked_by for t, d in check.policy.decisions.items()},
                       "own_held_out": {t: {k: s.model_dump() for k, s in d.held_out.items()}
                                        for t, d in check.policy.decisions.items()},
                       "whole_held_out": {t: {k: s.model_dump() for k, s in v.items()} for t, v in scores.items()}}
                results.append(row)
                print(f"seed {seed} cap {cap}: {seconds} s {row['decisions']} "
                      f"fused on whole held-out {({t: v.get('fused') for t, v in row['whole_held_out'].items()})}",
                      flush=True)
    finally:
        embedder.close()
        triton.stop()
    report.data["results"] = results
    lines = []
    for r in results:
        for t, sc in r["whole_held_out"].items():
            raw = {k: v for k, v in sc.items() if k != "fused"}
            best = max(raw, key=lambda k: raw[k]["ndcg10"]) if raw else None
            fused = sc.get("fused")
            lines.append([r["seed"], "whole" if r["cap"] is None else r["cap"],
                          f"{r['sample']['products']} / {r['sample']['queries']} of {r['sample']['queries_possible']}",
                          t, r["decisions"].get(t), fused and f"{fused['ndcg10']:.3f} / {fused['r10']:.3f}",
                          best and f"{best} {raw[best]['ndcg10']:.3f} / {raw[best]['r10']:.3f}", r["seconds"]])
    report.add(f"Self-check on a sample vs the whole catalog ({args.products} generated products, seeds {args.seeds}): "
               "decision = what the check published for the type (on its own held-out part); the scores are on "
               "the WHOLE catalog's held-out pseudo-queries for every row, so the rows of one seed compare directly.")
    report.add(reporting.table(["seed", "sample cap", "products / queries used of possible", "query type",
                                "decision", "fused nDCG@10 / R@10 (whole held-out)",
                                "best raw signal (whole held-out)", "check s"], lines))
    report.add("The box is shared: seconds are noisy. The fit itself is deterministic given the sample.")
    paths = report.write()
    print(f"wrote {paths['md']}")


if __name__ == "__main__":
    main()
