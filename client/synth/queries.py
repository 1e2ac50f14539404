"""Queries for the generated catalog's val and test splits, with graded relevance, and the
seeded split of products into train/val/test.

Queries (``queries.jsonl``) are made for the val and test splits, judged against the products of
the same split (index that split to evaluate):

- ``image``: a product's user photo. Grade 3: that product; 2: same category and colour; 1: same
  category.
- ``image+text``: the user photo plus text naming what the photo cannot show (brand, material).
  Grades as for ``image``.
- ``text``: a natural-language query generated from a product; it always names a category and a
  colour and sometimes a pattern, material or brand, using synonyms drawn independently of the
  product's own title. Grade 3: every product matching *all* attributes the query names; 2: same
  category and colour; 1: same category.

Separate from ``catalog.py``: judging relevance is the evaluation side of the generator.
"""

from __future__ import annotations

import numpy as np

from lenscope.client.catalog.rows import Query
from lenscope.client.synth.products import (
    CATEGORIES,
    COLORS,
    MATERIALS,
    PATTERNS,
    STREAM_TEXT,
    Product,
    fill_template,
    pick,
    product_rng,
)

QUERY_TEMPLATES = (  # (template, names pattern, names material, names brand)
    ("{c} {k}", False, False, False),
    ("{c} {p} {k}", True, False, False),
    ("{p} {k} in {c}", True, False, False),
    ("looking for a {c} {k}", False, False, False),
    ("{k} {c} {p}", True, False, False),
    ("{c} {m} {k}", False, True, False),
    ("{b} {k} in {c}", False, False, True),
    ("i want {c} {p} {m} {k}", True, True, False),
    ("{b} {c} {p} {k}", True, False, True),
)
PHOTO_TEXT_TEMPLATES = ("from {b}", "the {b} one", "{m}, by {b}", "{b} {m}", "made by {b}", "in {m}")

GRADE_EXACT, GRADE_CATEGORY_COLOR, GRADE_CATEGORY = 3, 2, 1


def _text_query(p: Product, rng: np.random.Generator, pool: list[Product]) -> tuple[str, dict[str, int]]:
    template, names_pattern, names_material, names_brand = QUERY_TEMPLATES[int(rng.integers(len(QUERY_TEMPLATES)))]
    words = {"c": pick(rng, COLORS[p.color]), "k": pick(rng, CATEGORIES[p.category]),
             "p": pick(rng, PATTERNS[p.pattern]), "m": pick(rng, MATERIALS[p.material]), "b": p.brand}
    text = template.format(**words).lower()
    rel = {}
    for q in pool:
        if q.category != p.category:
            continue
        exact = (q.color == p.color and (not names_pattern or q.pattern == p.pattern)
                 and (not names_material or q.material == p.material) and (not names_brand or q.brand == p.brand))
        rel[q.product_id] = GRADE_EXACT if exact else GRADE_CATEGORY_COLOR if q.color == p.color else GRADE_CATEGORY
    return text, rel


def _image_relevance(p: Product, pool: list[Product]) -> dict[str, int]:
    rel = {}
    for q in pool:
        if q.category == p.category:
            rel[q.product_id] = (GRADE_EXACT if q.product_id == p.product_id
                                 else GRADE_CATEGORY_COLOR if q.color == p.color else GRADE_CATEGORY)
    return rel


def make_queries(products: list[Product], splits: dict[str, str], seed: int, photo_rel: dict[str, str]) -> list[Query]:
    out: list[Query] = []
    for split in ("val", "test"):
        pool = [p for p in products if splits[p.product_id] == split]
        for p in pool:
            rng = product_rng(seed, p.index, STREAM_TEXT + 10)
            img_rel = _image_relevance(p, pool)
            out.append(Query(query_id=f"img-{p.product_id}", type="image", image=photo_rel[p.product_id],
                             relevance=img_rel, split=split))
            text = fill_template(pick(rng, PHOTO_TEXT_TEMPLATES),
                         {"b": p.brand, "m": pick(rng, MATERIALS[p.material])}).lower()
            out.append(Query(query_id=f"imgtxt-{p.product_id}", type="image+text", image=photo_rel[p.product_id],
                             text=text, relevance=img_rel, split=split))
            text, rel = _text_query(p, rng, pool)
            out.append(Query(query_id=f"txt-{p.product_id}", type="text", text=text, relevance=rel, split=split))
    return out


def assign_splits(n: int, seed: int, fractions: tuple[float, float, float]) -> list[str]:
    """Split by product: a seeded permutation cut at the fractions (train, val, test)."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng([seed, 1_000_003]).permutation(n)
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1]))
    out = [""] * n
    for rank, i in enumerate(order):
        out[i] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out
