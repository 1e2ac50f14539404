"""The catalog (format v2, still reading v1) and queries formats: round trips, one product from several
rows, and every message naming the file, line, field and value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lenscope.client.catalog.reader import read_catalog, read_queries
from lenscope.client.catalog.rows import CATALOG_COLUMNS, CatalogError, CatalogRow, ImageRef, Query
from lenscope.client.catalog.writer import write_catalog, write_queries
from lenscope.client.index.reader import scan_catalog

REAL = Path(__file__).resolve().parents[1] / "data" / "real-products"


def row(pid: str = "p1", **kw) -> dict:
    base = {"product_id": pid, "title": "Red tee", "image": f"img/{pid}.png", "category": "t-shirt",
            "color": "red", "pattern": "solid", "split": "train"}
    return {**base, **kw}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def problems_of(path: Path, **kw) -> list:
    with pytest.raises(CatalogError) as info:
        read_catalog(path, **kw)
    assert str(path) in str(info.value)
    return info.value.problems


# -- v1 files read as before -----------------------------------------------------------------------------


V1_JSONL = [
    {"product_id": "p000000", "title": "Navy Booties - Kestrel", "image": "images/catalog/p000000.png",
     "category": "boot", "color": "navy", "pattern": "floral", "material": "leather", "popularity": 0.0279,
     "photo": "images/photos/p000000.png", "split": "train"},
    {"product_id": "p000001", "title": "Red Mug", "image": "images/catalog/p000001.png", "category": "mug",
     "color": "red", "pattern": "solid", "split": "test"},
]


def test_v1_jsonl_reads_the_same_rows_and_writes_back_byte_identical(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "catalog.jsonl", V1_JSONL)
    cat = read_catalog(path)
    for r, raw in zip(cat.rows, V1_JSONL, strict=True):
        for key, value in raw.items():
            assert getattr(r, key) == value, key
    boot = cat.get("p000000")
    assert boot.images == (ImageRef(path="images/catalog/p000000.png", role="main"),
                           ImageRef(path="images/photos/p000000.png", role="photo"))
    assert boot.attributes == {"category": "boot", "color": "navy", "pattern": "floral", "material": "leather"}
    assert cat.get("p000001").material is None and "material" not in cat.get("p000001").attributes
    assert cat.get("p000001").photo is None and cat.photo_path(cat.get("p000001")) is None
    assert write_catalog(tmp_path / "again.jsonl", cat.rows).read_text() == path.read_text()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_v1_round_trip_keeps_every_field(tmp_path: Path, suffix: str) -> None:
    rows = [CatalogRow(**row("p1", material="cotton", popularity=0.25, photo="ph/p1.png")),
            CatalogRow(**row("p2", title='Tee, "quoted" | 2', split="test"))]
    path = write_catalog(tmp_path / f"cat{suffix}", rows)
    cat = read_catalog(path)
    assert cat.rows == tuple(rows)
    assert cat.image_path(cat.get("p1")) == tmp_path / "img/p1.png"
    assert [r.product_id for r in cat.split("test")] == ["p2"]
    assert cat.labels("material") == ["cotton"]
    if suffix == ".csv":
        assert path.read_text().splitlines()[0] == ",".join(CATALOG_COLUMNS)  # v1 rows are written as v1


def test_v1_csv_with_empty_optional_cells(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(",".join(CATALOG_COLUMNS) + "\np1,Red tee,a.png,t-shirt,red,solid,,,,train\n")
    r = read_catalog(path).get("p1")
    assert (r.image, r.photo, r.material, r.popularity, r.split) == ("a.png", None, None, None, "train")


# -- v2: images with roles, free attributes, variants -------------------------------------------------------


def test_v2_jsonl_images_attributes_and_variants_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"product_id": "Cap 01", "title": "Black cap",
         "images": [{"path": "cap/back.jpg", "role": "back"}, {"path": "cap/front.jpg", "role": "main"},
                    "cap/side.jpg"],
         "attributes": {"Colour": "black", "Sleeve Length": "n/a"}, "brand": "Acme", "size": 42},
        {"product_id": "Cap 01 red", "title": "Red cap", "image": "cap/red.jpg", "variant_of": "Cap 01",
         "colour": "red"},
    ])
    cat = read_catalog(path)
    cap = cat.get("Cap 01")
    assert [(im.path, im.role) for im in cap.images] == [("cap/front.jpg", "main"), ("cap/back.jpg", "back"),
                                                         ("cap/side.jpg", "alt")]
    assert cap.image == "cap/front.jpg" and cap.photo is None and cap.split is None
    assert cap.attributes == {"colour": "black", "sleeve_length": "n/a", "brand": "Acme", "size": "42"}
    assert cat.get("Cap 01 red").variant_of == "Cap 01"
    assert set(cat.attribute_names()) == {"brand", "size", "colour", "sleeve_length"}
    for suffix in (".jsonl", ".csv"):
        again = read_catalog(write_catalog(tmp_path / f"again{suffix}", cat.rows))
        assert again.rows == cat.rows, suffix


def test_csv_one_row_per_image_makes_one_product(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("image,product_id,title,color,view,gender\n"
                    "b/2.jpg,bottle,Bottle,white,alt1,\n"       # line 2: before its main row
                    "b/1.jpg,bottle,Bottle,white,main,\n"
                    "t/1.jpg,tee,Tee,,main,woman\n"             # line 4: no colour: absent, not "unknown"
                    "t/2.jpg,tee,Tee,,,\n")                     # line 5: no role: "alt"
    cat = read_catalog(path)
    assert len(cat) == 2
    bottle, tee = cat.get("bottle"), cat.get("tee")
    assert [(im.path, im.role) for im in bottle.images] == [("b/1.jpg", "main"), ("b/2.jpg", "alt1")]
    assert cat.lines["bottle"] == (3, 2)
    assert [(im.path, im.role) for im in tee.images] == [("t/1.jpg", "main"), ("t/2.jpg", "alt")]
    assert tee.attributes == {"gender": "woman"} and tee.color is None
    assert cat.labels("color") == ["white"]  # the tee is absent from the colour facet


def test_rows_of_one_product_must_agree_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("product_id,title,image,role\n"
                    "p1,Red tee,a.jpg,main\n"
                    "p1,Blue tee,b.jpg,back\n"    # line 3: another title
                    "p1,Red tee,a.jpg,alt\n"      # line 4: the same image again
                    "p1,Red tee,c.jpg,main\n")    # line 5: a second main image
    found = {(p.line, p.field): p.message for p in problems_of(path)}
    assert "'Blue tee' differs from 'Red tee' on line 2" in found[(3, "title")]
    assert "image 'a.jpg' of product 'p1' is already on line 2" in found[(4, "image")]
    assert "a second 'main' image for product 'p1' (the first is on line 2" in found[(5, "role")]


def test_an_attribute_that_differs_between_rows_is_a_warning_and_the_main_row_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("product_id,title,image,view,color\np1,Bottle,a.jpg,main,gray/white\np1,Bottle,b.jpg,alt1,white\n")
    cat = read_catalog(path)
    assert cat.get("p1").color == "gray/white"
    [w] = cat.warnings
    assert (w.line, w.field) == (3, "color")
    assert "'white' differs from 'gray/white' on line 2 for product 'p1'; the product keeps 'gray/white'" in w.message
    scan = scan_catalog(path)  # the index keeps the product and reports the warning
    assert [(r.line, r.reason, r.kept) for r in scan.rejects] == [(3, "conflicting_attribute", True)]
    assert len(scan.rows) == 1 and scan.rows_read == 1


def test_unknown_variant_of_names_the_value(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [row("p1"), row("p2", variant_of="p9")])
    [p] = problems_of(path)
    assert (p.line, p.field) == (2, "variant_of") and "'p9' is not a product_id of this catalog" in p.message


# -- product ids ----------------------------------------------------------------------------------------


def test_any_product_id_except_empty_overlong_or_control_characters(tmp_path: Path) -> None:
    long_id = "x" * 300
    path = write_jsonl(tmp_path / "c.jsonl", [
        row("Red Tee / size M #1"),   # spaces, slashes, hash: fine
        row("ünïcødé-ÄÖ"),            # fine
        row("   "),                   # line 3: empty after trimming
        row(long_id),                 # line 4
        row("bell\x07id", image="a.png"),  # line 5
    ])
    found = {p.line: p for p in problems_of(path)}
    assert set(found) == {3, 4, 5} and all(p.field == "product_id" for p in found.values())
    assert "empty value" in found[3].message
    assert "'xxxxxxxx" in found[4].message and "300 characters long; at most 256" in found[4].message
    assert "'bell\\x07id'" in found[5].message and "control character (U+0007) at position 4" in found[5].message
    cat = read_catalog(write_jsonl(tmp_path / "ok.jsonl", [row("Red Tee / size M #1"), row("ünïcødé-ÄÖ")]))
    assert "Red Tee / size M #1" in cat


# -- bad rows, bad files -----------------------------------------------------------------------------------


def test_jsonl_bad_rows_are_all_reported_with_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [
        row("p1"),
        row("p2", split="training"),          # line 2: bad enum
        "",                                   # line 3: blank, skipped
        "{not json",                          # line 4
        {k: v for k, v in row("p5").items() if k != "title"},  # line 5: missing
        row("p1"),                            # line 6: the same row (and image) again
        row("p7", popularity=-1),             # line 7
        row("p8", colours=["red", "blue"]),   # line 8: one value per attribute
        row("p10", image="https://x/y.png"),  # line 9: nothing is downloaded
        "[1, 2]",                             # line 10
        row("p11", title="Tee\x1b[2J"),       # line 11: terminal escape codes
    ])
    found = {(p.line, p.field.split(".")[0]) for p in problems_of(path)}
    assert found == {(2, "split"), (4, ""), (5, "title"), (6, "image"), (7, "popularity"), (8, "colours"),
                     (9, "images"), (10, ""), (11, "title")}
    msg = str(pytest.raises(CatalogError, read_catalog, path).value)
    assert "line 6: image: image 'img/p1.png' of product 'p1' is already on line 1" in msg
    assert "line 4: not valid JSON" in msg
    assert "line 2: split: Input should be 'train', 'val' or 'test' (got 'training')" in msg
    assert "line 7: popularity: Input should be greater than or equal to 0 (got -1)" in msg
    assert "line 8: colours: an attribute value must be text (one value); got list ['red', 'blue']" in msg
    assert "'https://x/y.png' must be a local path" in msg
    assert "control character (U+001B)" in msg


@pytest.mark.parametrize("field,value,code,where", [
    ("title", "\x1b]0;pwned\x07Red mug", "U+001B", "line 1: title:"),
    ("color", "red\x9b2J", "U+009B", "line 1: attributes: attribute 'color'"),
    ("title", "clear\x7f", "U+007F", "line 1: title:")])
def test_c0_c1_and_del_are_refused_with_the_value_escaped(tmp_path: Path, field: str, value: str, code: str,
                                                          where: str) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [row("p1", **{field: value})])
    msg = str(pytest.raises(CatalogError, read_catalog, path).value)
    assert where in msg and f"control character ({code})" in msg
    assert not any(ch in msg for ch in "\x1b\x07\x9b\x7f")  # the message itself is safe to print


def test_csv_bad_rows_use_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("\n".join([
        ",".join(CATALOG_COLUMNS),
        "p1,Red tee,a.png,t-shirt,red,solid,,,,train",
        "p2,Tee,b.png,t-shirt,red,solid,,lots,,train",   # line 3: popularity not a number
        "p3,,c.png,t-shirt,red,solid,,,,val",            # line 4: empty title
        "p4,Tee,d.png,t-shirt,red,solid,,,,val,extra",  # line 5: too many cells
        "p5,Tee,e.png",                                  # line 6: too few cells
    ]) + "\n")
    found = {p.line: p for p in problems_of(path)}
    assert sorted(found) == [3, 4, 5, 6]
    assert found[3].field == "popularity" and "(got 'lots')" in found[3].message
    assert found[4].field == "title" and "empty value" in found[4].message
    assert "11 cells, more than the header's 10 columns" in found[5].message
    assert "3 cells, fewer than the header's 10 columns" in found[6].message


def test_csv_header_problems_name_the_column(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("product_id,title,picture,Colour,colour,2nd tone,!!!\np1,t,a.png,red,red,x,y\n")
    msgs = [str(p) for p in problems_of(path)]
    assert any("line 1: header: columns 4 and 5 are both 'colour' ('Colour', 'colour')" in m for m in msgs)
    assert any("column 6: name '2nd tone' must start with a letter" in m for m in msgs)
    assert any("column 7: name '!!!' has no letter or digit" in m for m in msgs)
    assert any("missing required column(s) ['image']" in m for m in msgs)


def test_extra_csv_columns_become_attributes_with_facet_names(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("Product ID,Title,Image,Sleeve Length,Colour Name\np1,Tee,a.png,short,Dark Red\n")
    r = read_catalog(path).get("p1")
    assert r.attributes == {"sleeve_length": "short", "colour_name": "Dark Red"}


def test_latin1_csv_names_file_line_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("product_id,title,image\np1,Tee,a.png\np2,Café crème,b.png\n".encode("latin-1"))
    for read in (read_catalog, scan_catalog):
        with pytest.raises(CatalogError) as info:
            read(path)
        msg = str(info.value)
        assert str(path) in msg and "codec can't decode" not in msg
        [p] = info.value.problems
        assert (p.line, p.field) == (3, "encoding")
        assert "not UTF-8: byte 0xe9 at column 7" in p.message and "Latin-1" in p.message


def test_binary_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(json.dumps(row("p1")).encode() + b"\n\x00\x01\x02binary\n")
    [p] = problems_of(path)
    assert (p.line, p.field) == (2, "encoding") and "NUL bytes" in p.message
    path.write_bytes(b"\xff\xfe\x00garbage")
    [p] = problems_of(path)
    assert p.line == 1 and "not UTF-8: byte 0xff at column 1" in p.message


@pytest.mark.parametrize("content, expected", [
    ("product_id,title,image\n", "the file has a header but no product rows"),
    ("product_id,title,image\n\n\n", "the file has a header but no product rows"),
    ("", "the file is empty; a catalog needs a header row naming at least product_id, title, image"),
])
def test_a_catalog_without_rows_says_what_is_missing(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(content)
    for read in (read_catalog, scan_catalog):
        with pytest.raises(CatalogError) as info:
            read(path)
        assert str(path) in str(info.value) and expected in str(info.value)
        assert "rejects" not in str(info.value)
        assert len(info.value.problems) == 1


def test_empty_jsonl_and_wrong_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="the file is empty; a catalog needs one JSON object per line"):
        read_catalog(write_jsonl(tmp_path / "c.jsonl", ["", " "]))
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(CatalogError, match=r"\.jsonl or \.csv file, not '\.txt'"):
        read_catalog(tmp_path / "c.txt")
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "nope.jsonl")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(CatalogError, match="is a directory"):
        read_catalog(tmp_path / "dir.csv")


def test_a_scan_where_every_row_is_rejected_says_why(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [row("p1", split="x"), row("p2", title="")])
    with pytest.raises(CatalogError) as info:
        scan_catalog(path)
    msg = str(info.value)
    assert "nothing to index: every row was rejected ({'invalid_row': 2}); first: line 1: split" in msg
    with pytest.raises(CatalogError, match=r"none of its 1 product\(s\) is in the split\(s\) \['val'\]"):
        scan_catalog(write_jsonl(tmp_path / "d.jsonl", [row("p1")]), splits=["val"])


def test_missing_images_are_reported_when_asked(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p1.png").write_bytes(b"x")
    path = write_jsonl(tmp_path / "c.jsonl", [row("p1"), row("p2", photo="img/p2-photo.png")])
    read_catalog(path)  # not checked by default
    found = {(p.line, p.field) for p in problems_of(path, check_images=True)}
    assert found == {(2, "image"), (2, "photo")}


# -- the real-products catalog (tests/data/real-products, MIT + BSD-3, see its LICENSES) -----------------


def test_real_products_csv_reads_as_is() -> None:
    cat = read_catalog(REAL / "products.csv", check_images=True)
    assert len(cat) == 36 and sum(len(r.images) for r in cat) == 44
    assert cat.attribute_names() == ["source", "title_source", "category", "color", "gender"]
    cap = cat.get("solidus-cap")
    assert [im.role for im in cap.images] == ["main", "alt1", "back"]
    assert cap.image == "images/solidus/solidus_cap_black_1.jpg" and cap.photo is None
    assert {r.product_id: r.variant_of for r in cat if r.variant_of} == {
        "solidus-cap-gray": "solidus-cap", "solidus-cap-red": "solidus-cap", "solidus-hoodie-red": "solidus-hoodie"}
    with_gender = [r for r in cat if "gender" in r.attributes]
    assert len(with_gender) == 14 and all(r.product_id.startswith("sylius-") for r in with_gender)
    assert all("unknown" not in r.attributes.values() for r in cat)
    assert [(w.line, w.field) for w in cat.warnings] == [(24, "color")]  # the bottle's alt photo says "white"


def test_real_products_scan_keeps_every_product() -> None:
    scan = scan_catalog(REAL / "products.csv")
    assert len(scan.rows) == 36 and scan.rows_read == 36
    assert [(r.reason, r.product_id, r.kept) for r in scan.rejects] == [
        ("conflicting_attribute", "solidus-water-bottle", True)]


# -- queries --------------------------------------------------------------------------------------------


def test_queries_round_trip_and_validation(tmp_path: Path) -> None:
    qs = [Query(query_id="q1", type="text", text="red tee", relevance={"p1": 3, "p2": 1}, split="test"),
          Query(query_id="q2", type="image", image="ph/p1.png", relevance={"p1": 3}),
          Query(query_id="q3", type="image+text", image="ph/p1.png", text="from acme", relevance={"p1": 3})]
    path = write_queries(tmp_path / "q.jsonl", qs)
    got = read_queries(path)
    assert got.queries == tuple(qs)
    assert got.image_path(qs[1]) == tmp_path / "ph/p1.png"
    assert [q.query_id for q in got.of_type("image+text")] == ["q3"]


def test_bad_queries_are_reported_with_line_numbers(tmp_path: Path) -> None:
    cat = read_catalog(write_jsonl(tmp_path / "c.jsonl", [row("p1"), row("p2")]))
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"query_id": "q1", "type": "text", "text": "red", "relevance": {"p1": 3}},
        {"query_id": "q2", "type": "text", "image": "a.png", "relevance": {"p1": 3}},        # needs text
        {"query_id": "q3", "type": "image", "image": "a.png", "text": "x", "relevance": {"p1": 3}},  # no text
        {"query_id": "q4", "type": "text", "text": "red", "relevance": {}},                  # empty
        {"query_id": "q5", "type": "text", "text": "red", "relevance": {"p1": 0}},           # nothing relevant
        {"query_id": "q6", "type": "audio", "text": "red", "relevance": {"p1": 3}},
        {"query_id": "q7", "type": "text", "text": "red", "relevance": {"p9": 3, "p1": 1}},  # unknown product
        {"query_id": "q1", "type": "text", "text": "red", "relevance": {"p1": 3}},           # duplicate
    ])
    with pytest.raises(CatalogError) as info:
        read_queries(path, catalog=cat)
    assert sorted({p.line for p in info.value.problems}) == [2, 3, 4, 5, 6, 7, 8]
    assert any(p.line == 7 and "not in the catalog" in p.message for p in info.value.problems)


def test_writer_refuses_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=".jsonl or .csv"):
        write_catalog(tmp_path / "c.parquet", [CatalogRow(**row())])


def test_metadata_store_keeps_images_and_variants_and_still_opens_schema_1(tmp_path: Path) -> None:
    import sqlite3

    from lenscope.client.index.metadata import MetadataStore, Product

    with MetadataStore.create(tmp_path / "v2.sqlite") as store:
        store.insert_many([Product(row_id=0, product_id="cap red", title="Red cap", image_path="a.jpg",
                                   images=(("a.jpg", "main"), ("b.jpg", "back")), variant_of="cap",
                                   attributes={"color": "red"})])
    with MetadataStore.open(tmp_path / "v2.sqlite") as store:
        [p] = store.get([0])
        assert (p.images, p.variant_of, p.attributes) == ((("a.jpg", "main"), ("b.jpg", "back")), "cap",
                                                          {"color": ("red",)})
    old = sqlite3.connect(tmp_path / "v1.sqlite")  # a store written before catalog format v2
    old.executescript("CREATE TABLE products (row_id INTEGER PRIMARY KEY, product_id TEXT NOT NULL UNIQUE, "
                      "title TEXT NOT NULL, image_path TEXT NOT NULL, popularity REAL NOT NULL, "
                      "attributes TEXT NOT NULL);"
                      "CREATE TABLE product_attributes (name TEXT NOT NULL, value TEXT NOT NULL, "
                      "row_id INTEGER NOT NULL, PRIMARY KEY (name, value, row_id)) WITHOUT ROWID;"
                      "CREATE INDEX product_attributes_by_row ON product_attributes(row_id, name);"
                      "INSERT INTO products VALUES (0, 'p1', 'Tee', 'img/p1.png', 0.5, '{\"color\": [\"red\"]}');"
                      "PRAGMA user_version=1;")
    old.close()
    with MetadataStore.open(tmp_path / "v1.sqlite") as store:
        [p] = store.get([0])
        assert (p.product_id, p.images, p.variant_of) == ("p1", (("img/p1.png", "main"),), None)


def test_a_row_without_an_image_says_so(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"product_id": "p1", "title": "Tee", "color": "red"}])
    [p] = problems_of(path)
    assert (p.line, p.field) == (1, "image") and "missing: every row needs an image" in p.message


def test_numeric_ids_are_text_and_odd_json_values_are_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"product_id": 123, "title": "Mug", "image": "m.png"}])
    assert "123" in read_catalog(path)
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"product_id": "p1", "title": "Mug", "image": "m.png", "role": ["main"], "view": "main"},
        {"product_id": "p2", "title": "Mug", "images": "m.png"},
        {"product_id": "p3", "title": "Mug", "image": "m.png", "attributes": ["red"]},
    ])
    found = {p.line: str(p) for p in problems_of(path)}
    assert "line 1: role: 'role' and 'view' disagree: ['main'] vs 'main'" == found[1]
    assert "line 2: images: must be a list of paths or {path, role} objects; got str" == found[2]
    assert "line 3: attributes: must be an object of name -> value; got list" == found[3]
