"""Metric tables of an evaluation: Recall@K / nDCG@10 / MRR per query type and ranking variant,
Recall@K curves, the headline deltas, and the attribute heads' accuracy and macro-F1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lenscope.client.catalog.rows import Catalog, Query, QuerySet
from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest
from lenscope.client.eval.labels import label_index, label_key, unmatched
from lenscope.client.eval.config import COMBINED_VARIANTS, CURVE_KS, CURVE_VARIANTS, QUERY_TYPES, RAW_ANN, EvalConfig
from lenscope.client.eval.queries import query_image
from lenscope.client.eval.stack import SplitIndex
from lenscope.client.ranking.metrics import classification_scores, evaluate_rankings, recall_at_k


def metric_table(rankings: dict[str, dict[str, list[str]]], queries: Sequence[Query], config: EvalConfig
                 ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, list[float]]]]:
    """(type -> variant -> metrics, type -> variant -> Recall@K curve over CURVE_KS)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for t in QUERY_TYPES:
        of_type = [q for q in queries if q.type == t]
        if not of_type:
            continue
        for v, ranked in rankings.items():
            if not all(q.query_id in ranked for q in of_type):
                continue
            rs = [ranked[q.query_id] for q in of_type]
            rels = [q.relevance for q in of_type]
            s = evaluate_rankings(rs, rels, ks=(1, 5, 10), min_grade=config.min_grade,
                                  min_grade_graded=config.graded_min_grade)
            table.setdefault(t, {})[v] = {k: (x if k == "n" else round(float(x), 4)) for k, x in s.as_dict().items()}
        for name in CURVE_VARIANTS:
            v = RAW_ANN[t] if name == "raw_ann" else name
            if v in rankings and all(q.query_id in rankings[v] for q in of_type):
                curves.setdefault(t, {})[name] = [
                    round(float(np.mean([recall_at_k(rankings[v][q.query_id], q.relevance, k, config.min_grade)
                                         for q in of_type])), 4) for k in CURVE_KS]
    return table, curves


def headline(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per query type: raw ANN, the best single signal, calibrated, fused (heads on/off) and deltas."""
    out: dict[str, dict[str, Any]] = {}
    for t, rows in table.items():
        singles = {v: m for v, m in rows.items() if v.startswith("single:")}
        entry: dict[str, Any] = {}
        if RAW_ANN[t] in rows:
            entry["raw_ann"] = {"variant": RAW_ANN[t], **rows[RAW_ANN[t]]}
        if singles:
            best = max(singles, key=lambda v: singles[v]["nDCG@10"])
            entry["best_single"] = {"variant": best, **singles[best]}
        for v in COMBINED_VARIANTS:
            if v in rows:
                entry[v] = rows[v]
        if "fused" in rows and singles:
            entry["fused_minus_best_single_ndcg10_points"] = round(
                100 * (rows["fused"]["nDCG@10"] - entry["best_single"]["nDCG@10"]), 2)
        if "fused" in rows and "fused_no_heads" in rows:
            entry["heads_on_minus_off_R@10_points"] = round(
                100 * (rows["fused"]["R@10"] - rows["fused_no_heads"]["R@10"]), 2)
            entry["heads_on_minus_off_ndcg10_points"] = round(
                100 * (rows["fused"]["nDCG@10"] - rows["fused_no_heads"]["nDCG@10"]), 2)
        out[t] = entry
    return out


def attribute_report(ix: SplitIndex, manifest: Manifest, qset: QuerySet, queries: Sequence[Query],
                     catalog: Catalog) -> dict[str, Any]:
    """Per-attribute accuracy and macro-F1 of the heads, all outputs from Triton: on the indexed
    catalog images (the bundle's attr_probs attachments) and on user-photo queries. The truth is
    what the image shows: its own labels where the catalog gives them (``ImageRef.attributes``: the
    red shot of a black cap is scored as red), else its product's; a query photo that is not one of
    the catalog's images takes its single top-graded product's."""
    bundle = ix.engine.bundle
    labels = manifest.labels
    out: dict[str, Any] = {"heads_trained": manifest.heads_trained, "catalog_images": {}, "query_photos": {},
                           "label_notes": {}, "own_image_labels": {"catalog_images": 0, "query_photos": 0}}
    row_ids = np.asarray(bundle.metadata.row_ids(), dtype=np.int64)
    values = bundle.metadata.attribute_values(row_ids.tolist(), list(labels))
    main_own = _main_image_labels(bundle, row_ids, catalog)
    out["own_image_labels"]["catalog_images"] = sum(bool(o) for o in main_own)
    for attr, labs in labels.items():
        probs = bundle.load_array(f"attr_probs_{attr}")
        if probs is None:
            continue
        index = label_index(labs)
        vals = [[own[attr]] if attr in own else v for own, v in zip(main_own, values[attr])]
        truth = np.array([index.get(label_key(v[0]), -1) if v else -1 for v in vals], dtype=np.int64)
        pred = np.argmax(np.asarray(probs)[row_ids], axis=1)
        known = truth >= 0
        missing = unmatched((v[0] for v in vals if v), labs)
        if missing:  # the catalog's labels differ from the model's: say so instead of a bare "-"
            out["label_notes"][attr] = (
                f"{len(missing)} catalog value(s) match none of the model's {len(labs)} labels (compared ignoring "
                f"case and spaces), e.g. {missing[:5]}; {int(known.sum())} of {len(truth)} products scored")
        if known.any():
            out["catalog_images"][attr] = classification_scores(truth[known].tolist(), pred[known].tolist())
    photo_truth: dict[str, list[int]] = {a: [] for a in labels}
    photo_pred: dict[str, list[int]] = {a: [] for a in labels}
    own_labels = catalog_image_labels(catalog)
    for q in queries:
        if q.type != "image":
            continue
        top = max(q.relevance.values())
        exact = [pid for pid, g in q.relevance.items() if g == top]
        res = ix.embedder.image_result(query_image(qset, q) or b"")
        if len(exact) != 1 or res is None or exact[0] not in catalog:
            continue
        row = catalog.get(exact[0])
        own = own_labels.get(_resolved(qset.image_path(q)), {})
        out["own_image_labels"]["query_photos"] += bool(own)
        for attr, labs in labels.items():
            value = own.get(attr, row.attributes.get(attr))
            out_name = contract.attribute_output(attr)
            k = None if value is None else label_index(labs).get(label_key(value))
            if k is not None and out_name in res.attributes:
                photo_truth[attr].append(k)
                photo_pred[attr].append(int(np.argmax(res.attributes[out_name])))
    for attr in labels:
        if photo_truth[attr]:
            out["query_photos"][attr] = classification_scores(photo_truth[attr], photo_pred[attr])
    return out


def _resolved(path: Path | None) -> Path | None:
    try:
        return None if path is None else path.resolve()
    except OSError:
        return None


def catalog_image_labels(catalog: Catalog) -> dict[Path, dict[str, str]]:
    """Resolved path of each catalog image with labels of its own -> those labels (a query photo
    that is one of them is scored against them, not against its product's)."""
    out: dict[Path, dict[str, str]] = {}
    for row in catalog:
        for im in row.images:
            if im.attributes and (path := _resolved(catalog.root / im.path)) is not None:
                out[path] = dict(im.attributes)
    return out


def _main_image_labels(bundle: Any, row_ids: np.ndarray, catalog: Catalog) -> list[dict[str, str]]:
    """Per indexed row: the own labels of the product's main image (the image the index embedded)."""
    if not any(r.images[0].attributes for r in catalog):
        return [{} for _ in row_ids]
    products = bundle.metadata.get(row_ids.tolist())
    return [dict(catalog.get(p.product_id).images[0].attributes)
            if p is not None and p.product_id in catalog else {} for p in products]
