"""Foreign catalogs: does the served ranking do no harm where the shipped fit was never made, and
does photo + text compose? (``python benchmarks/relevance.py --stages foreign``; issue 14.)

Two catalogs the shipped fit never saw, each indexed through a real tritonserver with the shipped
model (``use_shipped_fit``: its fit is applied only where it is bound, so here the index build fits
and self-checks its own):

``real-products``
    the vendored real studio photos (``tests/data/real-products``: 36 products, 44 photos, colour
    variants under ``variant_of``). Queries graded from the catalog's own columns (the integration
    test's ``labelled_queries``): another photo of a product; "<colour> <category>" and
    "<category>" texts; a photo + a colour of its variant family, split into **photo + own colour**
    and **photo + another variant's colour** (the composing query: the photo says which product, the
    text which variant). Reported over all products and over the self-check's held-out products
    only (queries whose photo's product the fit never saw).
``procedural seed 3``
    a generated catalog of another seed and size (300 products) than the shipped fit's. Queries
    for the self-check's held-out products only (``test_do_no_harm.labelled_queries``: the generator's
    own text queries and grades, the product's photo, photo + a brand/material text), plus
    **photo + another colour**: the product's photo + a colour it does not have -> the products of
    its category and pattern in that colour (2), of its category in that colour (1).

Every query type is ranked by: the served ranking (``SearchEngine.search``, what ``lenscope serve``
answers: the build's decision per query type), each raw similarity signal by exact cosine over the
whole catalog, a 16x16-thumbnail cosine (photo queries: the pixels alone), and random (50 draws).
R@10 is "the query's top-grade product in the top 10"; nDCG@10 is graded.

The query builders and ``build`` come from ``tests/integration`` (``no_harm.py`` and the two test
modules) so the benchmark measures exactly what the do-no-harm tests assert.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

REAL_CATALOG = REPO / "tests" / "data" / "real-products" / "products.csv"
PROCEDURAL_SEED, PROCEDURAL_N = 3, 300
RANDOM_DRAWS = 50
THUMB = 16


def thumbnail(data: bytes) -> np.ndarray:
    """The 16x16 RGB thumbnail as a centred unit vector: the trivial 'looks alike' baseline."""
    with Image.open(io.BytesIO(data)) as im:
        v = np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float64).ravel()
    v = v - v.mean()
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def real_queries(held_out: set[str]) -> list[dict]:
    """The integration test's queries, photo+text split into own colour / another variant's colour,
    and each photo query marked held-out when its product is in the self-check's held-out part."""
    import csv

    from test_real_catalog import labelled_queries

    with REAL_CATALOG.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    owner = {(REAL_CATALOG.parent / r["image"]).read_bytes(): r["product_id"] for r in rows}
    out = []
    for q in labelled_queries(REAL_CATALOG):
        group = q["type"]
        pid = owner.get(q["image"]) if q["image"] else None
        if group == "image+text":
            target = max(q["rel"], key=q["rel"].get)
            group = "photo + own colour" if target == pid else "photo + another variant's colour"
        out.append({**q, "group": group, "held_out": pid in held_out if pid else None})
    return out


def procedural_queries(catalog: Path) -> list[dict]:
    """The do-no-harm test's held-out queries, plus photo + another colour (compositional)."""
    from test_do_no_harm import labelled_queries

    from lenscope.client.catalog.reader import read_catalog
    from lenscope.client.index.pseudo_queries import HELD_OUT, split_parts, views_from_rows
    from lenscope.client.index.reader import SourceRow
    from lenscope.client.synth.products import make_product, product_rng

    # every query here is of a held-out product already: no separate held-out rows
    out = [{**q, "group": q["type"], "held_out": None} for q in labelled_queries(catalog)]
    cat = read_catalog(catalog)
    rows = [SourceRow(position=i, line=i + 1, row=r) for i, r in enumerate(cat.rows)]
    parts = split_parts(views_from_rows(rows), 0.3, 0)
    products = [make_product(PROCEDURAL_SEED, i) for i in range(PROCEDURAL_N)]
    for p in products:
        if parts[p.product_id] != HELD_OUT:
            continue
        others = sorted({q.color for q in products if q.category == p.category and q.pattern == p.pattern
                         and q.color != p.color})
        if not others:
            continue
        color = others[int(product_rng(PROCEDURAL_SEED, p.index, 77).integers(len(others)))]
        rel = {q.product_id: 2 if q.pattern == p.pattern else 1 for q in products
               if q.category == p.category and q.color == color}
        photo = cat.root / cat.get(p.product_id).photo
        out.append({"type": "image+text", "group": "photo + another colour", "text": color,
                    "image": photo.read_bytes(), "rel": rel, "held_out": None})
    return out


def measure(embedder: Any, index_root: Path, model_hash: str, queries: list[dict]) -> dict[str, Any]:
    """group -> ranking -> {r10, ndcg10}, the served ranking's decision and the query count."""
    from lenscope.client.index.bundle_store import BundleStore
    from lenscope.client.ranking.metrics import ndcg_at_k, recall_at_k
    from lenscope.client.ranking.policy import TYPE_SIGNALS
    from lenscope.client.search.engine import SearchEngine
    from lenscope.client.search.models import SearchQuery

    rng = np.random.default_rng(0)
    runs: dict[str, dict[str, list[float]]] = {}
    info: dict[str, dict[str, Any]] = {}
    with BundleStore(index_root).open_current(expected_model_hash=model_hash) as bundle:
        engine = SearchEngine(embedder, bundle)
        try:
            ids = np.asarray(bundle.metadata.row_ids(), dtype=np.int64)
            products = bundle.metadata.get(ids.tolist())
            pids = [p.product_id for p in products]
            image = bundle.index.get_vectors(ids).astype(np.float64)
            title = np.asarray(bundle.load_array("title_vectors"), dtype=np.float64)[ids]
            root = _catalog_root(bundle)
            thumbs = np.stack([thumbnail((root / p.image_path).read_bytes()) for p in products])
            for q in queries:
                res = engine.search(SearchQuery(image=q["image"], text=q["text"], top_k=10, deadline_s=60.0))
                iv = embedder.embed_images([q["image"]])[0].embedding if q["image"] else None
                tv = embedder.embed_texts([q["text"]])[0].embedding if q["text"] else None
                cos = {"visual": (image, iv), "image_title": (title, iv), "text_image": (image, tv),
                       "text_title": (title, tv)}
                ranked = {"served": [h.product_id for h in res.hits]}
                for s in TYPE_SIGNALS[q["type"]]:
                    vecs, v = cos[s]
                    ranked[s] = [pids[i] for i in np.argsort(-(vecs @ np.asarray(v, np.float64)), kind="stable")[:10]]
                if q["image"]:
                    ranked["thumbnail 16x16"] = [pids[i] for i in
                                                 np.argsort(-(thumbs @ thumbnail(q["image"])), kind="stable")[:10]]
                groups = [q["group"]] + ([f"{q['group']} (held-out products)"] if q.get("held_out") else [])
                for g in groups:
                    by = runs.setdefault(g, {})
                    for name, r in ranked.items():
                        by.setdefault(f"{name}:r10", []).append(recall_at_k(r, q["rel"], 10))
                        by.setdefault(f"{name}:ndcg10", []).append(ndcg_at_k(r, q["rel"], 10))
                    draws = [[pids[i] for i in rng.permutation(len(pids))[:10]] for _ in range(RANDOM_DRAWS)]
                    by.setdefault("random:r10", []).append(float(np.mean([recall_at_k(d, q["rel"], 10) for d in draws])))
                    by.setdefault("random:ndcg10", []).append(float(np.mean([ndcg_at_k(d, q["rel"], 10) for d in draws])))
                    info[g] = {"query_type": q["type"], "ranked_by": res.ranking.ranked_by if res.ranking else None,
                               "rule": res.ranking.rule if res.ranking else None}
        finally:
            engine.close()
    out: dict[str, Any] = {}
    for g, by in runs.items():
        n = len(by["served:r10"])
        rankings: dict[str, dict[str, float]] = {}
        for key, vals in by.items():
            name, metric = key.rsplit(":", 1)
            rankings.setdefault(name, {})[metric] = round(float(np.mean(vals)), 4)
        out[g] = {**info[g], "queries": n, "rankings": rankings}
    return out


def _catalog_root(bundle: Any) -> Path:
    import json

    return Path(json.loads(bundle.read_attachment("index_info.json"))["catalog"]["path"]).parent


def run(repository: Path, workdir: Path, log: Any = print) -> dict[str, Any]:
    """Index both catalogs with the model in ``repository`` and measure (module docstring)."""
    from no_harm import build

    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.index.pseudo_queries import HELD_OUT
    from lenscope.client.synth.catalog import generate_catalog
    from lenscope.client.triton.client import ClientConfig, TritonEmbedder
    from lenscope.client.triton.server import start_server

    manifest = load_manifest(repository)
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_server(repository, log_path=workdir / "tritonserver.log", ready_timeout=180)
    out: dict[str, Any] = {"model": {"name": manifest.spec.name, "model_hash": manifest.model_hash}, "catalogs": {}}
    try:
        with TritonEmbedder(ClientConfig(url=server.grpc_url, timeout_s=60.0)) as emb:
            gen = workdir / f"procedural-{PROCEDURAL_SEED}-{PROCEDURAL_N}"
            if not (gen / "catalog.jsonl").is_file() and not any(gen.glob("catalog.*")):
                generate_catalog(gen, PROCEDURAL_N, seed=PROCEDURAL_SEED, image_size=64)
            procedural = next(gen.glob("catalog.*"))
            for name, catalog, n in (("real-products", REAL_CATALOG, 36),
                                     (f"procedural seed {PROCEDURAL_SEED}, {PROCEDURAL_N} products", procedural,
                                      PROCEDURAL_N)):
                t0 = time.perf_counter()
                root = workdir / ("index-real" if catalog == REAL_CATALOG else "index-procedural")
                model_hash, info = build(catalog, root, server.grpc_url, n)
                ranking = info["ranking"]
                decisions = {t: {k: d[k] for k in ("ranked_by", "rule", "reason", "n_queries", "n_pooled")}
                             for t, d in ranking["decisions"].items()}
                if name == "real-products":
                    from lenscope.client.index.pseudo_queries import split_parts, views_from_rows
                    from lenscope.client.index.reader import scan_catalog

                    parts = split_parts(views_from_rows(scan_catalog(catalog).rows), 0.3, 0)
                    queries = real_queries({p for p, part in parts.items() if part == HELD_OUT})
                else:
                    queries = procedural_queries(catalog)
                numbers = measure(emb, root, model_hash, queries)
                out["catalogs"][name] = {"decisions": decisions, "shipped_fit": ranking.get("shipped_fit"),
                                         "self_check": {k: ranking["self_check"].get(k) for k in
                                                        ("products", "queries", "raw_by_kind")},
                                         "groups": numbers, "seconds": round(time.perf_counter() - t0, 1)}
                log(f"foreign catalog {name}: {len(queries)} queries in {time.perf_counter() - t0:.0f} s")
    finally:
        server.stop()
    return out


def render(report: dict[str, Any]) -> str:
    """Markdown: per catalog, the build's decisions and per query group served vs raw vs baselines."""
    lines = [f"# Foreign catalogs: served ranking vs raw signals ({report['model']['name']}, "
             f"model `{report['model']['model_hash']}`)", "",
             "R@10: the query's top-grade product in the top 10; nDCG@10 graded. `served` is what `lenscope serve` "
             "answers (the index build's decision per query type); raw signals rank by exact cosine over the whole "
             "catalog; `thumbnail 16x16` is the pixel baseline; `random` the mean of 50 random top-10s.", ""]
    order = ["served", "visual", "image_title", "text_image", "text_title", "thumbnail 16x16", "random"]
    for name, cat in report["catalogs"].items():
        lines += [f"## {name}", ""]
        sf = cat.get("shipped_fit")
        if sf:
            lines += [f"Shipped fit not applied: {sf['reason']}.", ""]
        lines += ["| query type | ranked by | rule | reason |", "|---|---|---|---|"]
        lines += [f"| {t} | {d['ranked_by']} | {d['rule']} | {d['reason']} |" for t, d in cat["decisions"].items()]
        lines += ["", "| queries | n | " + " | ".join(order) + " |", "|---|---|" + "---|" * len(order)]
        for g, m in cat["groups"].items():
            cells = []
            for r in order:
                v = m["rankings"].get(r)
                cells.append("-" if v is None else f"{v['r10']:.3f} / {v['ndcg10']:.3f}")
            lines.append(f"| {g} (ranked by {m['ranked_by']}) | {m['queries']} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: R@10 / nDCG@10.", ""]
    return "\n".join(lines) + "\n"
