"""SQLite metadata store: order-preserving batch reads, and filters checked against a brute-force oracle."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from pydantic import ValidationError

from lenscope.client.index.metadata import MetadataStore, MetadataStoreError, Product

COLORS = ["red", "burgundy", "blue", "white", "black"]
CATEGORIES = ["dress", "shirt", "shoe"]


def catalog(n: int = 1500, seed: int = 0) -> list[Product]:
    rng = np.random.default_rng(seed)
    products = []
    for i in range(n):
        colors = list(rng.choice(COLORS, size=int(rng.integers(1, 3)), replace=False))
        attrs: dict[str, object] = {"color": colors, "category": str(rng.choice(CATEGORIES))}
        if i % 5 == 0:
            attrs["pattern"] = "floral"  # a sparse attribute: most products lack it
        products.append(
            Product(
                row_id=i * 3 + 1,
                product_id=f"SKU-{i:05d}",
                title=f"product {i}",
                image_path=f"images/{i}.jpg",
                attributes=attrs,
                popularity=float(rng.random()),
            )
        )
    return products


@pytest.fixture(scope="module")
def products() -> list[Product]:
    return catalog()


@pytest.fixture(scope="module")
def store(products, tmp_path_factory) -> MetadataStore:
    path = tmp_path_factory.mktemp("meta") / "metadata.sqlite"
    with MetadataStore.create(path) as writer:
        assert writer.insert_many(products, batch_size=400) == len(products)
    readonly = MetadataStore.open(path)
    yield readonly
    readonly.close()


def test_get_preserves_order_duplicates_and_unknowns(store, products):
    by_id = {p.row_id: p for p in products}
    rng = np.random.default_rng(1)
    wanted = list(rng.choice(list(by_id), size=1200))  # > one IN-chunk, with repeats
    wanted[3:3] = [-1, 999_999]  # padding id and an unknown id
    got = store.get(np.array(wanted))
    assert len(got) == len(wanted)
    assert got[3] is None and got[4] is None
    for row_id, product in zip(wanted, got, strict=True):
        if row_id in by_id:
            assert product == by_id[row_id]
    assert store.count() == len(products)
    np.testing.assert_array_equal(store.row_ids(), sorted(by_id))


def test_attributes_are_normalised_sorted_and_deduplicated():
    p = Product(row_id=1, product_id="a", attributes={"color": ["red", "blue", "red"], "category": "dress"})
    assert p.attributes == {"color": ("blue", "red"), "category": ("dress",)}
    with pytest.raises(ValidationError, match="must match"):
        Product(row_id=1, product_id="a", attributes={"Color": "red"})
    with pytest.raises(ValidationError, match="empty values"):
        Product(row_id=1, product_id="a", attributes={"color": [""]})
    with pytest.raises(ValidationError, match="popularity must be finite"):
        Product(row_id=1, product_id="a", popularity=float("nan"))
    with pytest.raises(ValidationError, match="row_id"):
        Product(row_id=-1, product_id="a")


def test_attribute_values_aligned_with_ids(store, products):
    ids = [products[7].row_id, 424242, products[0].row_id, products[7].row_id]
    values = store.attribute_values(ids, ["pattern", "color"])
    assert list(values) == ["pattern", "color"]
    assert values["color"] == [products[7].attributes["color"], (), products[0].attributes["color"]] + [
        products[7].attributes["color"]
    ]
    assert values["pattern"] == [(), (), ("floral",), ()]  # product 0 has it, product 7 does not
    everything = store.attribute_values([products[0].row_id])
    assert set(everything) == {"category", "color", "pattern"}


@pytest.mark.parametrize(
    "filters",
    [
        {"color": {"red", "burgundy"}},
        {"color": {"red", "burgundy"}, "category": {"dress"}},
        {"category": "shoe", "pattern": ["floral"]},
        {"color": {"red"}, "category": {"nothing"}},
        {},
    ],
)
def test_matching_ids_equal_brute_force(store, products, filters):
    def matches(p: Product) -> bool:
        return all(
            set(p.attributes.get(name, ())) & ({vals} if isinstance(vals, str) else set(vals))
            for name, vals in filters.items()
        )

    expected = sorted(p.row_id for p in products if matches(p))
    got = store.matching_ids(filters)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_matching_ids_edge_cases(store):
    assert store.matching_ids({"color": []}).size == 0
    assert store.matching_ids({"no_such_attribute": {"x"}}).size == 0


def test_distinct_values_and_names(store):
    assert store.attribute_names() == ["category", "color", "pattern"]
    assert store.distinct_values("color") == sorted(COLORS)
    assert store.distinct_values("category") == sorted(CATEGORIES)
    assert store.distinct_values("no_such_attribute") == []


def test_popularity_aligned(store, products):
    got = store.popularity([products[2].row_id, 77777, products[1].row_id])
    assert got[0] == products[2].popularity and got[2] == products[1].popularity and np.isnan(got[1])


def test_duplicates_are_named(tmp_path):
    with MetadataStore.create(tmp_path / "m.sqlite") as store:
        store.insert_many([{"row_id": 1, "product_id": "A"}, {"row_id": 2, "product_id": "B"}])
        with pytest.raises(MetadataStoreError, match=r"product_id already stored: \['A'\]"):
            store.insert_many([{"row_id": 3, "product_id": "A"}])
        with pytest.raises(MetadataStoreError, match=r"duplicate row_id within the batch: \[7\]"):
            store.insert_many([{"row_id": 7, "product_id": "C"}, {"row_id": 7, "product_id": "D"}])
        assert store.count() == 2  # the failed batches left nothing behind
        assert store.get([1, 2, 3, 7])[2:] == [None, None]


def test_readonly_store_is_not_modified(store, tmp_path):
    digest = hashlib.sha256(store.path.read_bytes()).hexdigest()
    store.get([1, 4]), store.matching_ids({"color": {"red"}}), store.distinct_values("color")
    with pytest.raises(MetadataStoreError, match="read-only"):
        store.insert_many([{"row_id": 10**9, "product_id": "new"}])
    assert hashlib.sha256(store.path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["metadata.sqlite"]  # no journal files


def test_create_and_open_refuse_bad_paths(tmp_path):
    (tmp_path / "exists.sqlite").write_bytes(b"")
    with pytest.raises(MetadataStoreError, match="already exists"):
        MetadataStore.create(tmp_path / "exists.sqlite")
    with pytest.raises(MetadataStoreError, match="no such metadata store"):
        MetadataStore.open(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(MetadataStoreError, match="not a readable SQLite"):
        MetadataStore.open(tmp_path / "junk.sqlite")


def test_iterables_stream_in_batches(tmp_path):
    rows = ({"row_id": i, "product_id": f"p{i}", "attributes": {"size": ["s", "m"][i % 2]}} for i in range(2500))
    with MetadataStore.create(tmp_path / "m.sqlite") as store:
        assert store.insert_many(rows, batch_size=1000) == 2500
        assert store.distinct_values("size") == ["m", "s"]
        counts = {v: store.matching_ids({"size": v}).size for v in ("m", "s")}
    assert counts == {"m": 1250, "s": 1250}


def test_bulk_column_reads_match_the_per_row_reads(tmp_path) -> None:
    # The engine's start-up reads (one scan per facet) give what the per-row-id reads give.
    from lenscope.client.index.metadata import MetadataStore, Product

    products = [
        Product(row_id=0, product_id="a", attributes={"color": ["red", "blue"], "size": "m"}, popularity=3.0),
        Product(row_id=2, product_id="b", attributes={"color": "green"}, popularity=0.0),
        Product(row_id=5, product_id="c", attributes={"size": "s"}, popularity=7.5),
    ]
    with MetadataStore.create(tmp_path / "m.sqlite") as store:
        store.insert_many(products)
    with MetadataStore.open(tmp_path / "m.sqlite") as store:
        ids = store.row_ids().tolist()
        per_row = store.attribute_values(ids, ["color", "size"])
        for name in ("color", "size"):
            rows, values = store.first_values(name)
            expected = [(i, v[0]) for i, v in zip(ids, per_row[name]) if v]
            assert list(zip(rows.tolist(), values)) == expected
        assert store.first_values("nope")[0].size == 0
        pop_ids, pop = store.all_popularity()
        assert pop_ids.tolist() == ids and pop.tolist() == store.popularity(ids).tolist()
