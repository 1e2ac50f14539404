"""Does an incremental build rank like a full build of the same catalog? (for ``incremental.py``)

A full build of the changed catalog refits the ranking on its own pseudo-query split, while an
incremental build below the refit share keeps the previous version's fit by design
(docs/live-index.md). So "rankings equal" is reported in three parts, on a fixed query set (every
k-th row of the changed catalog: its title as a text query, its image as an image query):

1. raw: per similarity signal (visual, image_title for a photo; text_image, text_title for a
   text), the exact top 10 by cosine over each version's stored vectors: the vectors and the row
   order of the two versions, with no fit involved. Plus the largest difference between the two
   versions' vectors of one product (reused vs embedded anew by the same model).
2. served, same fit: the search engine over each version, both with the incremental version's
   calibration, weights and policy: the served top 10 of everything but the fit.
3. served, as published: each version with its own fit, and whether the fits' per-type decisions
   differ (a refit on a catalog that moved by 1 % may decide otherwise near a threshold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SIGNALS = {"image": (("visual", "image"), ("image_title", "title")),
           "text": (("text_image", "image"), ("text_title", "title"))}


def _queries(catalog: Path, n: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in catalog.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(1, len(rows) // max(1, n // 2))
    picked = rows[::step][: max(1, n // 2)]
    out = [{"text": r["title"]} for r in picked]
    out += [{"image": (catalog.parent / r["image"]).read_bytes()} for r in picked]
    return out


def _top(matrix: np.ndarray, q: np.ndarray, ids: list[str], k: int = 10) -> list[str]:
    scores = matrix @ q
    order = np.lexsort((np.arange(scores.size), -scores))[:k]  # ties: lower row first, in both versions
    return [ids[i] for i in order]


def compare(incremental_root: Path, full_root: Path, catalog: Path, embedder: Any, n_queries: int) -> dict[str, Any]:
    """The three comparisons (module docstring) over ``n_queries`` queries (half text, half photo)."""
    from lenscope.client.index.bundle_store import BundleStore
    from lenscope.client.search.engine import SearchEngine, SearchSettings
    from lenscope.client.search.models import SearchQuery

    engines = [SearchEngine(embedder, BundleStore(r).open_current(expected_model_hash=None),
                            SearchSettings(default_deadline_s=60.0)) for r in (incremental_root, full_root)]
    a, b = engines
    try:
        ids = [[p.product_id for p in e.bundle.metadata.get(e.bundle.metadata.row_ids())] for e in engines]
        vecs = [{"image": np.asarray(e.bundle.index.get_vectors(np.arange(len(i))), np.float64),
                 "title": np.asarray(e.title_vectors, np.float64)} for e, i in zip(engines, ids)]
        same_rows = ids[0] == ids[1]
        diff = (max(float(np.abs(vecs[0][k] - vecs[1][k]).max()) for k in ("image", "title"))
                if same_rows and ids[0] else None)
        queries = _queries(catalog, n_queries)
        texts = [q["text"] for q in queries if "text" in q]
        images = [q["image"] for q in queries if "image" in q]
        qv = {"text": [np.asarray(r.embedding, np.float64) for r in embedder.embed_texts(texts)],
              "image": [np.asarray(r.embedding, np.float64) for r in embedder.embed_images(images)]}
        raw = {s: [0, 0] for kind in SIGNALS.values() for s, _ in kind}
        for kind, vs in qv.items():
            for v in vs:
                for signal, matrix in SIGNALS[kind]:
                    same = _top(vecs[0][matrix], v, ids[0]) == _top(vecs[1][matrix], v, ids[1])
                    raw[signal][0] += int(same)
                    raw[signal][1] += 1
        search = [SearchQuery(text=t, top_k=10) for t in texts] + [SearchQuery(image=i, top_k=10) for i in images]

        def served() -> tuple[int, list[str]]:
            same, differ = 0, []
            for q in search:
                ha, hb = ([h.product_id for h in e.search(q).hits] for e in engines)
                if ha == hb:
                    same += 1
                else:
                    differ.append(q.text or "<photo>")
            return same, differ[:5]

        own_same, own_differ = served()
        decisions = [{t: d.ranked_by for t, d in e.policy.decisions.items()} if e.policy else None for e in engines]
        fit_same = (a.weights == b.weights and a.policy == b.policy
                    and (a.calibration.model_dump() if a.calibration else None)
                    == (b.calibration.model_dump() if b.calibration else None))
        b.calibration, b.weights, b.policy = a.calibration, a.weights, a.policy  # the incremental version's fit
        same_fit_same, same_fit_differ = served()
    finally:
        for e in engines:
            e.close()
            e.bundle.close()
    return {"queries": len(search), "same_rows": same_rows, "max_vector_diff": diff,
            "raw_top10_identical": {s: f"{x}/{n}" for s, (x, n) in raw.items()},
            "served_same_fit_top10_identical": f"{same_fit_same}/{len(search)}", "same_fit_differ": same_fit_differ,
            "served_own_fit_top10_identical": f"{own_same}/{len(search)}", "own_fit_differ": own_differ,
            "fit_identical": fit_same, "decisions": {"incremental": decisions[0], "full": decisions[1]}}
