"""The Triton side of the export-fidelity check: Recall@10 of the raw ANN ranking served through
Triton against the same ranking from the torch model in-process. The torch side comes from the
caller (``EvalConfig.torch_ranker``, e.g. ``lenscope.export.fidelity.TORCH_RANKER``): this package
never imports torch; without one the check is skipped and the report says so."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lenscope.client.catalog.rows import Catalog, Query, QuerySet
from lenscope.client.core.manifest import Manifest
from lenscope.client.eval.config import FIDELITY_TYPES, QUERY_TYPES, RAW_ANN, EvalConfig, Log
from lenscope.client.eval.stack import SplitIndex
from lenscope.client.ranking.metrics import recall_at_k


def fidelity_report(config: EvalConfig, manifest: Manifest, ix: SplitIndex, catalog: Catalog, qset: QuerySet,
                    queries: Sequence[Query], rankings: dict[str, dict[str, list[str]]], log: Log) -> dict[str, Any]:
    ranker = config.torch_ranker
    if ranker is None:
        log("export fidelity skipped: no torch ranker given")
        return {"checked": False, "reason": "skipped: no torch ranker given"}
    spec_path, why = ranker.find_spec(config, manifest)
    if spec_path is None:
        return {"checked": False, "reason": why}
    t0 = time.perf_counter()
    pids = [p.product_id for p in ix.engine.bundle.metadata.get(ix.engine.bundle.metadata.row_ids().tolist()) if p]
    torch_ranked = ranker.rankings(spec_path, pids, catalog, qset, queries, 10)
    out: dict[str, Any] = {"checked": True, "spec": str(spec_path), "why": why, "k": 10,
                           "tolerance_points": config.fidelity_tolerance_points, "types": {}}
    ok = True
    for t in QUERY_TYPES:
        v = RAW_ANN[t]
        of_type = [q for q in queries if q.type == t and q.query_id in rankings.get(v, {})]
        if not of_type:
            continue
        tri = float(np.mean([recall_at_k(rankings[v][q.query_id], q.relevance, 10, config.min_grade) for q in of_type]))
        tor = float(np.mean([recall_at_k(torch_ranked[q.query_id], q.relevance, 10, config.min_grade) for q in of_type]))
        same_top10 = float(np.mean([set(rankings[v][q.query_id][:10]) == set(torch_ranked[q.query_id][:10])
                                    for q in of_type]))
        diff = round(100 * (tri - tor), 3)
        within = abs(diff) <= config.fidelity_tolerance_points
        if t in FIDELITY_TYPES:
            ok &= within
        out["types"][t] = {"signal": v, "triton_R@10": round(tri, 4), "torch_R@10": round(tor, 4),
                           "diff_points": diff, "within_tolerance": within, "identical_top10_share": round(same_top10, 4),
                           "n": len(of_type), "in_verdict": t in FIDELITY_TYPES}
    out["ok"] = ok
    out["note"] = ("photo and text queries (one cosine over the whole index); photo+text rankings come from a "
                   "merged two-vector candidate pool and are shown for information")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"export fidelity: {'OK' if ok else 'FAILED'} " + ", ".join(
        f"{t}: triton {d['triton_R@10']:.4f} torch {d['torch_R@10']:.4f}" for t, d in out["types"].items()))
    return out
