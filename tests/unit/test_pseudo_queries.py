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
    # graded by shared values: itself 3 (two attributes + 1), d2 both (2), d3 the category, s1 the colour (1)
    assert photo.query_type == "image" and photo.image == "ph/d1.png"
    assert photo.relevance == {"d1": 3, "d2": 2, "d3": 1, "s1": 1}
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


def test_photo_plus_another_variants_value_composes() -> None:
    """A photo of the black cap + "red" -> the red variant of that cap (2), other red caps (1); a
    photo of a product without variants + another value -> its look-alikes with that value."""
    views = [
        ProductView("cap", "Solidus cap", {"category": "cap", "color": "black"}, ("cap-2.jpg", "cap-3.jpg")),
        ProductView("cap-red", "Solidus cap", {"category": "cap", "color": "red"}, ("red-2.jpg",), family="cap"),
        ProductView("cap-gray", "Solidus cap", {"category": "cap", "color": "gray"}, (), family="cap"),
        ProductView("beanie", "Knitted red beanie", {"category": "cap", "color": "red"}),
        ProductView("tee", "Red tee", {"category": "t-shirt", "color": "red"}, ("tee-2.jpg",)),
        ProductView("tee-b", "Black tee", {"category": "t-shirt", "color": "black"}),
    ]
    qs, _ = pseudo_queries(views, held_out_fraction=0.0)
    by = {q.query_id: q for q in qs if q.kind == "photo+variant"}
    red = by["fit:photo+variant:cap:0:cap-red"]
    assert red.query_type == "image+text" and red.image == "cap-2.jpg" and red.text == "red"
    assert red.relevance == {"cap-red": 2, "beanie": 1}
    assert by["fit:photo+variant:cap:1:cap-gray"].relevance == {"cap-gray": 2}
    assert by["fit:photo+variant:cap-red:0:cap"].relevance == {"cap": 2}  # back to the base colour
    assert by["fit:photo+variant:cap-red:0:cap-gray"].text == "gray"
    # no variants: another value with a look-alike that has it (the black tee), or the other category
    (tee,) = [q for q in by.values() if q.image == "tee-2.jpg"]
    assert (tee.text, tee.relevance) in [("black", {"tee-b": 2}), ("cap", {"beanie": 2, "cap-red": 2})]


def test_variants_share_a_part() -> None:
    views = [ProductView(f"p{i}", f"Cap {i}", {"color": str(i % 5)}, (), family=f"p{i - i % 3}" if i % 3 else None)
             for i in range(90)]
    parts = split_parts(views, 0.3, 0)
    for v in views:
        assert parts[v.product_id] == parts[v.family_id]
    assert 10 <= sum(p == HELD_OUT for p in parts.values()) <= 50


def test_adapter_follows_variant_of_to_the_family_root() -> None:
    rows = [CatalogRow(product_id=pid, title="Cap", image=f"{pid}.png", color=c, variant_of=parent)
            for pid, c, parent in (("a", "black", None), ("b", "red", "a"), ("c", "gray", "b"), ("d", "blue", None))]
    views = views_from_rows([SourceRow(position=i, line=i + 2, row=r) for i, r in enumerate(rows)])
    assert [v.family for v in views] == [None, "a", "a", None]
    assert [v.family_id for v in views] == ["a", "a", "a", "d"]
