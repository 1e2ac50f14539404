"""Do no harm on the vendored real-products catalog (tests/data/real-products), through a real tritonserver.

Issue 14's acceptance on a foreign catalog: 36 products (44 studio/lifestyle photos, colour variants
grouped with ``variant_of``) are indexed (1) with the shipped model, whose fit was made on the
procedural catalog and so must not be applied here, and (2) with a seeded model exported with no fit
files. Labelled queries come from the catalog itself, judged over the whole catalog:

- image:      each non-main photo -> its product (grade 2), that product's colour variants (1);
- text:       "<color> <category>" -> every product with both values, and "<category>" -> every
              product of that category (grade 1);
- image+text: a non-main photo of a product with colour variants + a colour -> the variant of that
              colour (2), other products of that category and colour (1).

Only the main image of each product is indexed, so no photo query is ranked against itself. Per
query type the served R@10 must reach the best single raw signal's R@10 within 0.005, no signal may
be dropped, and the build must report its decision. The table is printed (pytest -s).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest
from no_harm import build, check_type, measure, report_numbers, seeded_server

from lenscope.client.triton.client import ClientConfig, TritonEmbedder

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).resolve().parents[1] / "data" / "real-products" / "products.csv"
N = 36


def labelled_queries(catalog_path: Path = CATALOG) -> list[dict]:
    """Photo, generic text and photo+colour queries with grades read off the catalog's own columns."""
    with catalog_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    main = {r["product_id"]: r for r in rows if r["view"] == "main"}
    colors = {pid: set(r["color"].split("/")) for pid, r in main.items()}
    category = {pid: r["category"] for pid, r in main.items()}
    family: dict[str, set[str]] = defaultdict(set)
    for pid, r in main.items():
        family[r["variant_of"] or pid].add(pid)
    family_of = {pid: family[r["variant_of"] or pid] for pid, r in main.items()}

    def photo(r: dict) -> bytes:
        return (catalog_path.parent / r["image"]).read_bytes()

    out = []
    for r in rows:
        if r["view"] == "main":
            continue
        pid = r["product_id"]
        out.append({"type": "image", "text": None, "image": photo(r),
                    "rel": {**{m: 1 for m in family_of[pid]}, pid: 2}})
        for m in sorted(family_of[pid]) if len(family_of[pid]) > 1 else ():
            (c,) = colors[m]
            rel = {p: 1 for p in main if category[p] == category[pid] and c in colors[p]}
            out.append({"type": "image+text", "text": c, "image": photo(r), "rel": {**rel, m: 2}})
    pairs = sorted({(c, category[p]) for p in main for c in colors[p]})
    for c, cat in pairs:
        out.append({"type": "text", "text": f"{c} {cat}", "image": None,
                    "rel": {p: 1 for p in main if category[p] == cat and c in colors[p]}})
    for cat in sorted(set(category.values())):
        out.append({"type": "text", "text": cat, "image": None, "rel": {p: 1 for p in main if category[p] == cat}})
    return out


def test_queries_cover_every_type() -> None:
    queries = labelled_queries()
    counts = {t: sum(q["type"] == t for q in queries) for t in ("text", "image", "image+text")}
    assert counts["image"] == 44 - N and counts["image+text"] == 6 * 3 + 1 * 2 and counts["text"] > 11, counts
    assert all(q["rel"] and max(q["rel"].values()) >= 1 for q in queries)


@pytest.fixture(scope="module")
def shipped(triton, embedder, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The real catalog indexed with the shipped model: (numbers, build info)."""
    root = tmp_path_factory.mktemp("real-shipped") / "idx"
    model_hash, info = build(CATALOG, root, triton.grpc_url, N)
    numbers = measure(embedder, root, model_hash, labelled_queries())
    report_numbers(numbers, info, "real-products, shipped model")
    return numbers, info


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The real catalog indexed with a seeded model exported with no fit files: (numbers, build info)."""
    tmp = tmp_path_factory.mktemp("real-seeded")
    with seeded_server(tmp) as url:
        model_hash, info = build(CATALOG, tmp / "idx", url, N)
        with TritonEmbedder(ClientConfig(url=url, timeout_s=30.0)) as emb:
            numbers = measure(emb, tmp / "idx", model_hash, labelled_queries())
    report_numbers(numbers, info, "real-products, seeded model, no fit files")
    return numbers, info


def decisions_reported(info: dict) -> None:
    assert info["ranking"]["source"] == "self-check"
    for qtype, d in info["ranking"]["decisions"].items():
        # the numbers it was chosen on: held-out ones, or (too few held out) those of all pseudo-queries
        assert d["ranked_by"] and d["reason"] and d["rule"] and (d["held_out"] or d["pooled"]), (qtype, d)
    assert set(info["ranking"]["decisions"]) == {"text", "image", "image+text"}


def test_shipped_model_build_reports_its_decision(shipped: tuple[dict, dict]) -> None:
    numbers, info = shipped
    # the shipped fit was made on the procedural catalog: not applied here, and the build says why
    assert info["ranking"]["shipped_fit"]["applied"] is False
    assert "catalog" in info["ranking"]["shipped_fit"]["reason"]
    decisions_reported(info)
    assert all(numbers[t]["ranked_by"] == info["ranking"]["decisions"][t]["ranked_by"] for t in numbers)


# image+text on this catalog (measured 2026-12-05, shipped lenscope-tiny, CPU tritonserver): no held-out
# pseudo-query of that type (the held-out part's families have no extra photos), so fused is not
# published and the raw signal that all 22 pseudo-queries favour ranks (rule raw-too-few-held-out):
# text_image, R@10 0.70 on these queries, visual 0.60, text_title 0.65. Its photo+variant
# pseudo-queries (a photo + a sibling variant's colour) are what the visual cosine loses.
@pytest.mark.parametrize("qtype", ["text", "image", "image+text"])
def test_shipped_model_does_no_harm_on_real_products(shipped: tuple[dict, dict], qtype: str) -> None:
    check_type(*shipped, "real-products, shipped model", qtype)


def test_seeded_model_build_reports_its_decision(seeded: tuple[dict, dict]) -> None:
    _numbers, info = seeded
    assert "shipped_fit" not in info["ranking"]
    decisions_reported(info)


@pytest.mark.parametrize("qtype", ["text", "image", "image+text"])
def test_model_without_fit_files_does_no_harm_on_real_products(seeded: tuple[dict, dict], qtype: str) -> None:
    check_type(*seeded, "real-products, seeded model, no fit files", qtype)
