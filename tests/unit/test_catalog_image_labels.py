"""An image's own labels (``ImageRef.attributes``): read from CSV and JSONL, written back, refused with
file/line/field/value, and used by `lenscope eval` to score a photo against what it shows rather than
against its product's labels (the white shot of a gray/white bottle is scored as white)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.catalog.rows import CatalogError, ImageRef, Query, QuerySet
from lenscope.client.catalog.writer import write_catalog
from lenscope.client.core import contract
from lenscope.client.eval.tables import attribute_report, catalog_image_labels
from lenscope.client.index.metadata import MetadataStore, Product

REAL = Path(__file__).resolve().parents[1] / "data" / "real-products" / "products.csv"


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def _problems(path: Path) -> list:
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    assert str(path) in str(info.value)
    return info.value.problems


def test_a_csv_row_whose_value_differs_gives_its_image_that_label_and_the_product_keeps_its_own() -> None:
    cat = read_catalog(REAL)
    bottle = cat.get("solidus-water-bottle")
    assert bottle.color == "gray/white"  # the product (its facet) keeps the main row's value
    assert bottle.images[0].attributes == {} and bottle.images[1].attributes == {"color": "white"}
    assert bottle.image_labels(0)["color"] == "gray/white" and bottle.image_labels(1)["color"] == "white"
    assert bottle.image_labels(1)["category"] == "bottle"  # what the image does not say comes from the product
    assert bottle.image_values("color") == {"gray/white", "white"}
    [w] = cat.warnings
    assert (w.line, w.field) == (24, "color") and "this row's image keeps 'white' as its own label" in w.message
    # every other image of the catalog agrees with its product: no own labels
    assert sum(bool(im.attributes) for r in cat for im in r.images) == 1


def test_jsonl_images_carry_their_own_attributes_and_v1_lines_still_read(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [
        {"product_id": "cap", "title": "Cap", "color": "black", "images": [
            {"path": "cap/black.jpg", "role": "main"},
            {"path": "cap/red.jpg", "role": "alt", "attributes": {"Color": "red", "note": 3}}]},
        {"product_id": "p1", "title": "Red tee", "image": "img/p1.png", "photo": "photos/p1.png", "color": "red"},
    ])
    cat = read_catalog(path)
    cap = cat.get("cap")
    assert cap.images[1] == ImageRef(path="cap/red.jpg", role="alt", attributes={"color": "red", "note": "3"})
    assert cap.color == "black" and cap.image_labels(1)["color"] == "red"
    tee = cat.get("p1")
    assert [im.attributes for im in tee.images] == [{}, {}] and tee.image_labels(1) == tee.attributes


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_own_labels_round_trip_through_the_writer(tmp_path: Path, suffix: str) -> None:
    cat = read_catalog(_jsonl(tmp_path / "c.jsonl", [
        {"product_id": "cap", "title": "Cap", "color": "black", "category": "cap", "images": [
            {"path": "cap/black.jpg", "role": "main"}, {"path": "cap/back.jpg", "role": "back"},
            {"path": "cap/red.jpg", "role": "alt", "attributes": {"color": "red"}}]},
        {"product_id": "p1", "title": "Red tee", "image": "img/p1.png", "color": "red"}]))
    again = read_catalog(write_catalog(tmp_path / f"out{suffix}", cat.rows))
    assert again.rows == cat.rows


@pytest.mark.parametrize(("image", "field", "expected"), [
    ({"path": "a.jpg", "attributes": {"color": "re\x07d"}}, "images.0.attributes",
     "attribute 'color': value 're\\x07d' contains a control character"),
    ({"path": "a.jpg", "attributes": {"color": ["red", "blue"]}}, "images.0.attributes",
     "attribute 'color': a value must be text (one value); got list ['red', 'blue']"),
    ({"path": "a.jpg", "attributes": "red"}, "images.0.attributes", "must be an object of name -> value; got str 'red'"),
    ({"path": "a.jpg", "colour": "red"}, "images.0.colour", "unknown key 'colour' (value 'red')"),
])
def test_a_bad_own_label_names_the_line_field_and_value(tmp_path: Path, image: dict, field: str,
                                                         expected: str) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"product_id": "ok", "title": "T", "image": "b.jpg"},
                                         {"product_id": "p", "title": "T", "images": [image]}])
    [p] = _problems(path)
    assert (p.line, p.field) == (2, field) and expected in p.message, p


# ---------------------------------------------------------------------------- lenscope eval's attribute table


def _png(path: Path, rgb: tuple[int, int, int]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_eval_scores_a_photo_against_its_own_labels_where_the_catalog_gives_them(tmp_path: Path) -> None:
    """A cap shot in black (its product's colour) and in red (that image's own label), and a photo the
    catalog does not list. The heads (faked: the model's outputs are not under test) answer "red" for
    the red shot and "black" for the others, so every answer is right only if the truth is per image."""
    colors = ("black", "red")
    images = {"cap/black.png": (0, 0, 0), "cap/red.png": (255, 0, 0), "photos/street.png": (1, 1, 1)}
    predicted = {_png(tmp_path / p, rgb): colors.index("red" if "red" in p else "black") for p, rgb in images.items()}
    cat = read_catalog(_jsonl(tmp_path / "catalog.jsonl", [
        {"product_id": "cap", "title": "Cap", "color": "black", "images": [
            {"path": "cap/black.png", "role": "main"}, {"path": "cap/red.png", "attributes": {"color": "red"}}]}]))
    queries = tuple(Query(query_id=f"q{i}", type="image", image=p, relevance={"cap": 2}) for i, p in enumerate(images))
    qset = QuerySet(tmp_path / "queries.jsonl", queries)
    assert set(catalog_image_labels(cat)) == {(tmp_path / "cap/red.png").resolve()}

    with MetadataStore.create(tmp_path / "meta.sqlite") as store:
        store.insert_many([Product(row_id=0, product_id="cap", title="Cap", image_path="cap/black.png",
                                   attributes={"color": ("black",)})])

        def result(data: bytes) -> SimpleNamespace:
            probs = np.eye(len(colors), dtype=np.float32)[predicted[data]]
            return SimpleNamespace(attributes={contract.attribute_output("color"): probs})

        bundle = SimpleNamespace(metadata=store, load_array=lambda name: np.eye(len(colors), dtype=np.float32)[[0]])
        ix = SimpleNamespace(engine=SimpleNamespace(bundle=bundle), embedder=SimpleNamespace(image_result=result))
        manifest = SimpleNamespace(labels={"color": colors}, heads_trained=True)
        report = attribute_report(ix, manifest, qset, queries, cat)
    assert report["own_image_labels"] == {"catalog_images": 0, "query_photos": 1}
    assert report["query_photos"]["color"]["accuracy"] == 1.0  # against the product's colour: 2 of 3
    assert report["catalog_images"]["color"]["accuracy"] == 1.0
