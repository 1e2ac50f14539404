"""Pseudo-queries made from a catalog alone: kinds, relevance, the product-level split, fingerprint."""

from __future__ import annotations

from lenscope.client.catalog.rows import CatalogRow
from lenscope.client.index.pseudo_queries import (
    FIT,
    HELD_OUT,
    ProductView,
    catalog_fingerprint,
    pseudo_queries,
    split_parts,
    views_from_rows,
)
from lenscope.client.index.reader import SourceRow

VIEWS = [
    ProductView("d1", "Cherry cotton dress by Ostara", {"category": "dress", "color": "red"}, ("ph/d1.png",)),
    ProductView("d2", "Scarlet linen dress by Kestrel", {"category": "dress", "color": "red"}, ("ph/d2.png",)),
    ProductView("d3", "Navy silk dress by Zephyr", {"category": "dress", "color": "blue"}),
    ProductView("s1", "Cherry wool slacks by Oakhaven", {"category": "trousers", "color": "red"}, ("ph/s1.png",)),
    ProductView("m1", "Mug", {"category": "mug"}),
]


def test_every_kind_with_its_relevance() -> None:
    qs, parts = pseudo_queries(VIEWS, held_out_fraction=0.0)
    assert set(parts.values()) == {FIT}
    by = {q.query_id: q for q in qs}
    phrase = by["fit:phrase:red dress"]
    assert phrase.query_type == "text" and phrase.relevance == {"d1": 1, "d2": 1}  # every red dress
    assert by["fit:phrase:red"].relevance == {"d1": 1, "d2": 1, "s1": 1}
    assert "fit:phrase:dress red" not in by
    title = by["fit:title:d1"]
    assert title.relevance == {"d1": 1} and title.text != VIEWS[0].title and len(title.text.split()) == 4
    assert "fit:title:m1" not in by  # a one-word title would be the very text of its title vector
    photo = by["fit:photo:d1:0"]
    assert photo.query_type == "image" and photo.image == "ph/d1.png" and photo.relevance == {"d1": 2, "d2": 1}
    mixed = by["fit:photo+phrase:s1:0"]
    assert mixed.query_type == "image+text" and mixed.text in ("red", "trousers") and mixed.relevance["s1"] == 2
    worded = by["fit:photo+title:d1:0"]  # photo + a title word that names no attribute
    assert worded.query_type == "image+text" and worded.text in ("cherry", "cotton", "ostara")  # not "dress", "by"
    # other products whose titles have the word and that share an attribute value: "Cherry ... slacks" (red)
    assert worded.relevance == ({"d1": 2, "s1": 1} if worded.text == "cherry" else {"d1": 2})
    assert all(q.relevance for q in qs)
    # a phrase every product has ranks nothing and is not made
    assert not any(q.kind == "phrase" and len(q.relevance) == len(VIEWS) for q in qs)


def test_split_is_by_product_and_queries_stay_inside_their_part() -> None:
    views = [ProductView(f"p{i}", f"Red cotton dress number {i}", {"category": "dress", "color": ("red", "blue")[i % 2]},
                         (f"ph/{i}.png",)) for i in range(60)]
    qs, parts = pseudo_queries(views, held_out_fraction=0.3, seed=1)
    held = {p for p, part in parts.items() if part == HELD_OUT}
    assert 8 <= len(held) <= 30
    for q in qs:
        assert all((pid in held) == (q.part == HELD_OUT) for pid in q.relevance), q
    assert split_parts(views, 0.3, 1) == parts  # seeded, deterministic
    assert split_parts(views[:30], 0.3, 1) == {k: v for k, v in parts.items() if k in {v.product_id for v in views[:30]}}
    again, _ = pseudo_queries(views, held_out_fraction=0.3, seed=1)
    assert again == qs
    capped, _ = pseudo_queries(views, held_out_fraction=0.3, seed=1, max_per_kind=3)
    assert max(sum(1 for q in capped if q.kind == k and q.part == FIT) for k in ("title", "photo")) == 3


def test_adapter_and_fingerprint() -> None:
    row = CatalogRow(product_id="a1", title="Red dress", image="i.png", category="dress", color="red",
                     pattern="solid", photo="p.png", split="test")
    (v,) = views_from_rows([SourceRow(position=0, line=1, row=row)])
    assert v == ProductView("a1", "Red dress", {"category": "dress", "color": "red", "pattern": "solid"}, ("p.png",))
    fp = catalog_fingerprint(VIEWS)
    assert fp == catalog_fingerprint(list(reversed(VIEWS)))  # order-free
    changed = [ProductView("d1", "Cherry cotton dress by Ostara", {"category": "dress", "color": "pink"}), *VIEWS[1:]]
    assert catalog_fingerprint(changed) != fp and len(fp) == 16
