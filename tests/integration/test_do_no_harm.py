"""Do no harm on a catalog the shipped fit never saw, through a real tritonserver.

A procedural catalog of another seed and size than the shipped fit used (seed 3, 300 products) is
indexed (1) with the shipped model, whose manifest carries a fit made on another catalog, and
(2) with a seeded model exported with no fit files at all. Labelled queries are made for the
products of the self-check's held-out part (the synth generator's own text queries and grades,
judged over the whole catalog, and the products' photos alone and with text). Per query type, the
served ranking's R@10 must reach the best single raw signal's R@10 (exact cosine over the whole
catalog) within 0.005; no similarity signal may be dropped; the build must report its decision.
The measured numbers are printed (pytest -s) and written to LENSCOPE_NO_HARM_REPORT when set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.core.manifest import load_manifest
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.job import IndexBuildConfig, build_index
from lenscope.client.index.pseudo_queries import HELD_OUT, split_parts, views_from_rows
from lenscope.client.index.reader import SourceRow
from lenscope.client.ranking.metrics import ndcg_at_k, recall_at_k
from lenscope.client.ranking.policy import TYPE_SIGNALS
from lenscope.client.search.engine import SearchEngine
from lenscope.client.search.models import SearchQuery
from lenscope.client.synth.catalog import generate_catalog
from lenscope.client.synth.products import MATERIALS, fill_template, make_product, pick, product_rng
from lenscope.client.synth.queries import PHOTO_TEXT_TEMPLATES, _image_relevance, _text_query
from lenscope.client.triton.client import ClientConfig, TritonEmbedder
from lenscope.client.triton.server import start_server

pytestmark = pytest.mark.integration

SEED, N = 3, 300
TOLERANCE = 0.005


@pytest.fixture(scope="module")
def other_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("other-seed"), N, seed=SEED, image_size=64).catalog


def labelled_queries(catalog_path: Path) -> list[dict]:
    """Queries for the held-out part's products, judged over the whole catalog (synth grades)."""
    catalog = read_catalog(catalog_path)
    rows = [SourceRow(position=i, line=i + 1, row=r) for i, r in enumerate(catalog.rows)]
    parts = split_parts(views_from_rows(rows), 0.3, 0)  # the self-check's split (its defaults)
    products = [make_product(SEED, i) for i in range(N)]
    out = []
    for p in products:
        if parts[p.product_id] != HELD_OUT:
            continue
        rng = product_rng(SEED, p.index, 99)
        photo = catalog.root / catalog.get(p.product_id).photo
        text, rel = _text_query(p, rng, products)
        img_rel = _image_relevance(p, products)
        mixed = fill_template(pick(rng, PHOTO_TEXT_TEMPLATES), {"b": p.brand, "m": pick(rng, MATERIALS[p.material])})
        out += [{"type": "text", "text": text, "image": None, "rel": rel},
                {"type": "image", "text": None, "image": photo.read_bytes(), "rel": img_rel},
                {"type": "image+text", "text": mixed.lower(), "image": photo.read_bytes(), "rel": img_rel}]
    return out


def measure(embedder: TritonEmbedder, index_root: Path, model_hash: str, queries: list[dict]) -> dict:
    """Per query type: served and each raw signal's R@10 / nDCG@10; asserts nothing is dropped."""
    with BundleStore(index_root).open_current(expected_model_hash=model_hash) as bundle:
        engine = SearchEngine(embedder, bundle)
        try:
            ids = np.asarray(bundle.metadata.row_ids(), dtype=np.int64)
            pids = [p.product_id for p in bundle.metadata.get(ids.tolist())]
            image = bundle.index.get_vectors(ids).astype(np.float64)
            title = np.asarray(bundle.load_array("title_vectors"), dtype=np.float64)[ids]
            rankings: dict[str, dict[str, list]] = {}
            for q in queries:
                res = engine.search(SearchQuery(image=q["image"], text=q["text"], top_k=10, deadline_s=60.0))
                signals = set(TYPE_SIGNALS[q["type"]])
                assert res.ranking is not None and res.ranking.query_type == q["type"]
                assert set(res.ranking.calibrated_signals) | set(res.ranking.raw_signals) == signals
                for h in res.hits:  # every similarity signal reaches fusion, even at weight 0
                    assert signals <= set(h.breakdown), h.breakdown
                by = rankings.setdefault(q["type"], {})
                by.setdefault("served", []).append([h.product_id for h in res.hits])
                iv = embedder.embed_images([q["image"]])[0].embedding if q["image"] else None
                tv = embedder.embed_texts([q["text"]])[0].embedding if q["text"] else None
                raw = {"visual": (image, iv), "image_title": (title, iv), "text_image": (image, tv),
                       "text_title": (title, tv)}
                for s in signals:
                    vecs, v = raw[s]
                    order = np.argsort(-(vecs @ np.asarray(v, dtype=np.float64)), kind="stable")[:10]
                    by.setdefault(s, []).append([pids[i] for i in order])
                by.setdefault("_rel", []).append(q["rel"])
                by["_ranked_by"] = res.ranking.ranked_by
        finally:
            engine.close()
    out = {}
    for qtype, by in rankings.items():
        rels = by.pop("_rel")
        ranked_by = by.pop("_ranked_by")
        out[qtype] = {"ranked_by": ranked_by, "queries": len(rels)}
        for name, rs in by.items():
            out[qtype][name] = {"r10": round(float(np.mean([recall_at_k(r, g, 10) for r, g in zip(rs, rels)])), 4),
                                "ndcg10": round(float(np.mean([ndcg_at_k(r, g, 10) for r, g in zip(rs, rels)])), 4)}
    return out


def check(numbers: dict, info: dict, label: str) -> None:
    print(f"\n{label}: " + json.dumps(numbers, indent=1))
    report = os.environ.get("LENSCOPE_NO_HARM_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"label": label, "numbers": numbers, "decisions": info["ranking"]["decisions"]}) + "\n")
    assert info["ranking"]["source"] == "self-check"
    for qtype in ("text", "image", "image+text"):
        n = numbers[qtype]
        best = max(v["r10"] for k, v in n.items() if k in TYPE_SIGNALS[qtype])
        assert n["served"]["r10"] >= best - TOLERANCE, (label, qtype, n)
        d = info["ranking"]["decisions"][qtype]
        assert d["ranked_by"] == n["ranked_by"] and d["reason"] and d["held_out"], d


def build(catalog: Path, root: Path, url: str) -> tuple[str, dict]:
    with TritonEmbedder(ClientConfig(url=url, timeout_s=30.0, max_concurrency=16)) as emb:
        report = build_index(IndexBuildConfig(catalog=catalog, index_root=root, batch_size=32, concurrency=2,
                                              progress=False, use_shipped_fit=True), emb)
    assert report.indexed == N
    return report.model_hash, report.info


def test_shipped_model_does_no_harm_on_another_seed(triton, embedder, other_catalog: Path, tmp_path: Path) -> None:
    model_hash, info = build(other_catalog, tmp_path / "idx", triton.grpc_url)
    # the shipped fit was made on another catalog: not applied, and the build says why
    assert info["ranking"]["shipped_fit"]["applied"] is False
    assert "catalog" in info["ranking"]["shipped_fit"]["reason"]
    check(measure(embedder, tmp_path / "idx", model_hash, labelled_queries(other_catalog)), info, "shipped model")


def test_model_without_fit_files_does_no_harm(other_catalog: Path, tmp_path: Path) -> None:
    from lenscope.export.pipeline import DEFAULT_SPEC, export_model

    spec = json.loads(DEFAULT_SPEC.read_text())
    spec["checkpoint"] = None
    (tmp_path / "seeded.json").write_text(json.dumps(spec))
    repo = tmp_path / "repo"
    export_model(tmp_path / "seeded.json", out=repo, log=lambda _m: None)
    manifest = load_manifest(repo)
    assert manifest.ranking_fit is None and manifest.weights == "seeded-init"
    server = start_server(repo, log_path=tmp_path / "triton.log", ready_timeout=120)
    try:
        model_hash, info = build(other_catalog, tmp_path / "idx", server.grpc_url)
        assert "shipped_fit" not in info["ranking"]
        with TritonEmbedder(ClientConfig(url=server.grpc_url, timeout_s=30.0)) as emb:
            numbers = measure(emb, tmp_path / "idx", model_hash, labelled_queries(other_catalog))
        check(numbers, info, "seeded model, no fit files")
    finally:
        assert server.stop() == 0
