"""The evaluation harness: labelled queries through the live stack -> Recall@K / nDCG@10 / MRR per
query type and ranking variant, modality gap, attribute heads, export fidelity -> Markdown + JSON + PNG.

This module runs the whole evaluation (``evaluate``); its steps live next to it: ``config`` (the
configuration and constants), ``stack`` (tritonserver + indexes + engines), ``queries`` (queries
through the engine, ranking variants), ``tables`` (metrics, heads), ``fidelity`` (Triton vs torch),
``fitting`` (calibration + fusion: resolve or fit; ``lenscope rerank fit``), ``report`` and
``plots`` (the files written).

The path is the production one: the model repository served by a real ``tritonserver``, an index
bundle built through it by ``indexing.build_index`` (the split under evaluation only), and
``search.SearchEngine.search`` for every query and every ranking variant (embed -> ANN retrieve ->
exact re-score -> calibrate -> fuse). Two things are test scaffolding and say so:

- each query is embedded through Triton once (in bulk, concurrently) and the engine's embedder
  answers its calls from those results (``PrefetchedEmbedder``): a variant changes ranking, not
  embeddings, and re-embedding the same photo seven times would only measure Triton again;
- ranking variants swap the engine's ``weights`` and ``calibration`` between runs:

  ``single:<signal>``  one similarity signal, raw cosine (calibration is monotone per pair, so this
                       is also the calibrated single-signal ranking). ``raw_ann`` in the tables is
                       the plain ANN answer: ``single:visual`` for photo queries,
                       ``single:text_image`` for text queries.
  ``raw_sum``          every similarity signal of the query, raw cosines, equal weights.
  ``calibrated``       the same signals calibrated (per modality pair), equal weights.
  ``fused_no_heads``   the fitted fusion with the attribute signal at weight 0 (heads off).
  ``fused``            the fitted fusion (heads on), for every query type.
  ``served``           the engine as the index build left it: what ``lenscope serve`` answers (the
                       bundle's calibration and weights, and per query type the build's decision:
                       fused, or its best raw signal where fused did not beat it held out).

Calibration and fusion weights come from (first that applies): files given by the caller; the fit
shipped with the model (``<stem>.calibration.json`` / ``<stem>.fusion.json``), only where its
binding (``<stem>.binding.json``) names this model and the indexed catalog, as serving does; a fit on the labelled queries of another split (``fit_split``,
default ``val``) through the same live stack (``fusion_fit``); the index bundle's own
(catalog-fitted calibration, default weights). The report names which one was used.

Export fidelity embeds the same products and queries with the torch model in-process (the torch
side, ``lenscope.export.fidelity``, is handed in by the caller as ``EvalConfig.torch_ranker``; so
is the exporter of a spec, ``EvalConfig.exporter``: this package never imports torch), ranks by the
same cosine, and compares Recall@10 with the Triton answer (``raw_ann``): they must agree within
``fidelity_tolerance_points`` percentage points. Without a torch ranker the check is skipped and
the report says so.

Works on any catalog in the documented format (``catalog.py``); queries with a ``split`` are
evaluated against an index of that split, queries without one against the whole catalog
(``split="all"``).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.eval.config import CURVE_KS, QUERY_TYPES, TOP_K, EvalConfig, EvaluationError, Log
from lenscope.client.eval.fidelity import fidelity_report
from lenscope.client.eval.fitting import resolve_ranking
from lenscope.client.eval.queries import collect_pools, load_queries, prefetch, run_variants, split_queries
from lenscope.client.eval.stack import live_stack
from lenscope.client.eval.tables import attribute_report, headline, metric_table
from lenscope.client.eval.thumbnail import VARIANT as THUMBNAIL_VARIANT, thumbnail_rankings
from lenscope.client.ranking.modality_gap import gap_samples, gap_table


def served_policy(engine: Any) -> dict[str, Any]:
    """What the ``served`` variant ranks each query type by: the index build's decisions."""
    policy = getattr(engine, "policy", None)
    if policy is None:
        return {"source": "legacy", "decisions": {}}
    return {"source": policy.source, "decisions": {
        t: {"ranked_by": d.ranked_by, "rule": d.rule, "reason": d.reason} for t, d in policy.decisions.items()}}


def evaluate(config: EvalConfig, log: Log = print) -> dict[str, Any]:
    """Run the harness and return the report dict (``write_report`` renders it)."""
    t_start = time.perf_counter()
    catalog = read_catalog(config.catalog)
    qset = load_queries(config, catalog)
    queries = split_queries(qset, config.split, config.max_queries_per_type, config.seed)
    if not queries:
        raise EvaluationError(f"{qset.path}: no queries of split {config.split!r}")
    with live_stack(config, log) as stack:
        manifest = stack.manifest
        ix = stack.index(config.split)
        setup = resolve_ranking(config, stack, qset, ix.engine)
        t0 = time.perf_counter()
        prefetch(ix, qset, queries)
        embed_s = time.perf_counter() - t0
        log(f"embedded {len(queries)} {config.split} queries through Triton in {embed_s:.1f} s")
        t1 = time.perf_counter()
        pools = collect_pools(ix, qset, queries, setup.calibration)
        rankings = run_variants(ix, qset, queries, config.variants, setup.calibration, setup.weights,
                                setup.weights_no_heads, log)
        search_s = time.perf_counter() - t1
        n_searches = len(queries) + sum(len(r) for r in rankings.values())
        # the trivial visual baseline beside the model (not a search: not counted above)
        products = [p.product_id for p in ix.engine.bundle.metadata.get(ix.engine.bundle.metadata.row_ids()) if p]
        thumbs, thumb_note = thumbnail_rankings(products, catalog, qset, queries, manifest.spec.limits, TOP_K,
                                                allow_outside=config.allow_outside_images)
        if thumbs:
            rankings[THUMBNAIL_VARIANT] = thumbs
        log(f"  image      {THUMBNAIL_VARIANT}: {thumb_note}")
        table, curves = metric_table(rankings, queries, config)
        attrs = attribute_report(ix, manifest, qset, queries, catalog)
        fidelity = (fidelity_report(config, manifest, ix, catalog, qset, queries, rankings, log)
                    if config.fidelity else {"checked": False, "reason": "disabled"})
        gap_raw = gap_samples(pools, setup.calibration, config.min_grade)
        report: dict[str, Any] = {
            "schema_version": 1,
            "model": {"name": manifest.spec.name, "model_hash": manifest.model_hash,
                      "heads_trained": manifest.heads_trained, "weights": manifest.weights,
                      "checkpoint": manifest.checkpoint.model_dump() if manifest.checkpoint else None,
                      "repository": str(stack.repository)},
            "catalog": {"path": str(catalog.path), "sha256": hashlib.sha256(catalog.path.read_bytes()).hexdigest(),
                        "split": config.split, "indexed": ix.indexed},
            "queries": {"path": str(qset.path), "n": len(queries),
                        "by_type": {t: sum(q.type == t for q in queries) for t in QUERY_TYPES}},
            "definitions": {
                "R@K": f"share of queries with a relevant product (grade >= {config.min_grade}) in the top K",
                "nDCG@10": "graded, gain 2^g - 1, log2 discount, ideal from all judged products",
                "MRR": f"reciprocal rank of the first relevant product within the top {TOP_K} hits",
                "Rfrac@10": f"fraction of products with grade >= {config.graded_min_grade} found in the top 10",
                "variants": {"raw_ann": "the ANN answer: one raw cosine (photo: image->image, text: text->image)",
                             "single:<signal>": "one similarity signal, raw cosine",
                             "raw_sum": "all similarity signals of the query, raw cosines, equal weights",
                             "calibrated": "the same signals calibrated per modality pair, equal weights",
                             "fused_no_heads": "fitted fusion weights with the attribute signal at 0 (heads off)",
                             "fused": "fitted fusion weights (heads on), every query type",
                             "served": "what serving ranks: the index bundle's calibration, weights and per-type "
                                       "decision (fused or its best raw signal, the do-no-harm rule)"},
            },
            "ranking": {"calibration_source": setup.calibration_source, "weights_source": setup.weights_source,
                        "weights": setup.weights.model_dump(), "weights_no_heads": setup.weights_no_heads.model_dump(),
                        "fit": setup.fitted.summary() if setup.fitted else None, "fit_seconds": setup.fit_seconds,
                        "served": served_policy(ix.engine)},
            "metrics": table,
            "headline": headline(table),
            "recall_curves": {"ks": list(CURVE_KS), "types": curves},
            "modality_gap": {
                "calibration": gap_table(setup.calibration) if setup.calibration else None,
                "candidates": {pair: {k: {"mean": round(float(np.mean(v)), 4) if v.size else None, "n": int(v.size)}
                                      for k, v in d.items()} for pair, d in gap_raw.items()},
                "note": ("calibration: statistics of the data the calibration was fitted on; candidates: the "
                         "evaluated queries' candidate pools (matched = relevant, unmatched = grade 0)"),
            },
            "attributes": attrs,
            "fidelity": fidelity,
            "timings_s": {**stack.timings, "index_build_s": round(ix.build_seconds, 1),
                          "query_embedding_s": round(embed_s, 1), "searches_s": round(search_s, 1),
                          "searches": n_searches, "ms_per_search": round(1000 * search_s / max(n_searches, 1), 2),
                          "total_s": round(time.perf_counter() - t_start, 1)},
        }
    report["_gap_samples"] = gap_raw  # numpy arrays for the plots; dropped from the JSON
    return report
