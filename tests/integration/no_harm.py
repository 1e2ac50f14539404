"""Shared do-no-harm measurement: index a catalog through a real tritonserver, rank labelled queries.

Used by test_do_no_harm.py (a procedural catalog of another seed) and test_real_catalog.py (the
vendored real-products catalog). Per query type it measures the served ranking (the search engine,
which ranks by the build's published decision) next to each raw signal's exact cosine ranking over
the whole catalog and a random ranking, and checks the rule: served R@10 >= best raw R@10 - 0.005,
no similarity signal dropped, the build's decision reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lenscope.client.core.manifest import load_manifest
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.job import IndexBuildConfig, build_index
from lenscope.client.ranking.metrics import ndcg_at_k, recall_at_k
from lenscope.client.ranking.policy import TYPE_SIGNALS
from lenscope.client.search.engine import SearchEngine
from lenscope.client.search.models import SearchQuery
from lenscope.client.triton.client import ClientConfig, TritonEmbedder
from lenscope.client.triton.server import start_server

TOLERANCE = 0.005
RANDOM_DRAWS = 50  # random rankings per query, averaged: the chance baseline


def measure(embedder: TritonEmbedder, index_root: Path, model_hash: str, queries: list[dict]) -> dict:
    """Per query type: served, each raw signal's and random R@10 / nDCG@10; asserts nothing is dropped."""
    rng = np.random.default_rng(0)
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
                by.setdefault("_random", []).append(
                    [[pids[i] for i in rng.permutation(len(pids))[:10]] for _ in range(RANDOM_DRAWS)])
                by.setdefault("_rel", []).append(q["rel"])
                by["_ranked_by"] = res.ranking.ranked_by
        finally:
            engine.close()
    out = {}
    for qtype, by in rankings.items():
        rels = by.pop("_rel")
        ranked_by = by.pop("_ranked_by")
        draws = by.pop("_random")
        out[qtype] = {"ranked_by": ranked_by, "queries": len(rels)}
        for name, rs in by.items():
            out[qtype][name] = {"r10": round(float(np.mean([recall_at_k(r, g, 10) for r, g in zip(rs, rels)])), 4),
                                "ndcg10": round(float(np.mean([ndcg_at_k(r, g, 10) for r, g in zip(rs, rels)])), 4)}
        out[qtype]["random"] = {
            "r10": round(float(np.mean([recall_at_k(r, g, 10) for d, g in zip(draws, rels) for r in d])), 4),
            "ndcg10": round(float(np.mean([ndcg_at_k(r, g, 10) for d, g in zip(draws, rels) for r in d])), 4)}
    return out


def check(numbers: dict, info: dict, label: str) -> None:
    report_numbers(numbers, info, label)
    for qtype in ("text", "image", "image+text"):
        check_type(numbers, info, label, qtype)


def report_numbers(numbers: dict, info: dict, label: str) -> None:
    """Print the numbers (pytest -s) and append them to LENSCOPE_NO_HARM_REPORT when set."""
    print(f"\n{label}: " + json.dumps(numbers, indent=1))
    report = os.environ.get("LENSCOPE_NO_HARM_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"label": label, "numbers": numbers, "decisions": info["ranking"]["decisions"]}) + "\n")


def check_type(numbers: dict, info: dict, label: str, qtype: str) -> None:
    """The do-no-harm rule for one query type, and the build's decision for it reported."""
    assert info["ranking"]["source"] == "self-check"
    n = numbers[qtype]
    best = max(v["r10"] for k, v in n.items() if k in TYPE_SIGNALS[qtype])
    assert n["served"]["r10"] >= best - TOLERANCE, (label, qtype, n)
    d = info["ranking"]["decisions"][qtype]
    assert d["ranked_by"] == n["ranked_by"] and d["reason"] and d["rule"] and (d["held_out"] or d["pooled"]), d


def build(catalog: Path, root: Path, url: str, n: int) -> tuple[str, dict]:
    """Index the catalog (shipped fit allowed, applied only if bound to it); all n products indexed."""
    with TritonEmbedder(ClientConfig(url=url, timeout_s=30.0, max_concurrency=16)) as emb:
        report = build_index(IndexBuildConfig(catalog=catalog, index_root=root, batch_size=32, concurrency=2,
                                              progress=False, use_shipped_fit=True), emb)
    assert report.indexed == n, report
    return report.model_hash, report.info


@contextmanager
def seeded_server(tmp_path: Path) -> Iterator[str]:
    """A tritonserver serving the default spec with seeded weights, exported with no fit files: its gRPC url."""
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
        yield server.grpc_url
    finally:
        assert server.stop() == 0
