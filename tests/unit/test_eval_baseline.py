"""`lenscope eval`'s attribute label matching and its 16x16-thumbnail baseline (torch-free, real photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.catalog.rows import Query, QuerySet
from lenscope.client.core.modelspec import InputLimits
from lenscope.client.eval.labels import label_index, label_key, unmatched
from lenscope.client.eval.thumbnail import recall_at, thumbnail_rankings, thumbnail_vector

REAL = Path(__file__).resolve().parents[1] / "data" / "real-products" / "products.csv"


def test_labels_match_ignoring_case_and_spaces_and_misfits_are_named() -> None:
    labels = ("Bags", "Hoodies & Sweatshirts", "t-shirt")
    assert label_key(" hoodies  &  SWEATSHIRTS ") == label_key("Hoodies & Sweatshirts")
    assert label_index(labels)[label_key("BAGS")] == 0
    assert unmatched(["bags", "T-Shirt", "socks", "Socks ", "cap"], labels) == ["Socks ", "cap", "socks"]


def test_thumbnail_baseline_ranks_real_photos_and_is_a_unit_vector() -> None:
    cat = read_catalog(REAL)
    v = thumbnail_vector((cat.root / cat.rows[0].image).read_bytes(), InputLimits())
    assert v.shape == (768,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5
    photos = [(r, im.path) for r in cat.rows for im in r.images[1:]]
    queries = tuple(Query(query_id=f"q{i}", type="image", image=path, relevance={r.product_id: 2})
                    for i, (r, path) in enumerate(photos))
    qset = QuerySet(REAL, queries)
    ids = [r.product_id for r in cat.rows]
    ranked, note = thumbnail_rankings(ids, cat, qset, queries, InputLimits(), top_k=10)
    assert set(ranked) == {q.query_id for q in queries} and all(len(r) == 10 for r in ranked.values())
    assert "photo queries" in note
    hits = sum(next(iter(q.relevance)) in ranked[q.query_id][:10] for q in queries)
    assert hits >= len(queries) // 2  # the baseline is weak but not random on studio shots of one product


def test_an_image_outside_the_catalog_folder_leaves_the_baseline_out_saying_why(tmp_path: Path) -> None:
    cat = read_catalog(REAL)
    q = Query(query_id="q", type="image", image="/etc/hostname", relevance={cat.rows[0].product_id: 2})
    ranked, note = thumbnail_rankings([r.product_id for r in cat.rows], cat, QuerySet(REAL, (q,)), (q,),
                                      InputLimits(), top_k=10)
    assert ranked == {} and "left out" in note and "/etc/hostname" in note


def test_recall_at_is_per_query_exact_product() -> None:
    keys = np.eye(4, dtype=np.float32)
    assert recall_at(keys[[1, 2]], keys, np.array([1, 3]), ks=(1,)) == {"R@1": 0.5}
