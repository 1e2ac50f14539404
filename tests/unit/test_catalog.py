"""The catalog and queries formats: round trips, and every bad row reported with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lenscope.client.catalog.reader import read_catalog, read_queries
from lenscope.client.catalog.rows import CATALOG_COLUMNS, CatalogError, CatalogRow, Query
from lenscope.client.catalog.writer import write_catalog, write_queries


def row(pid: str = "p1", **kw) -> dict:
    base = {"product_id": pid, "title": "Red tee", "image": f"img/{pid}.png", "category": "t-shirt",
            "color": "red", "pattern": "solid", "split": "train"}
    return {**base, **kw}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip_keeps_every_field(tmp_path: Path, suffix: str) -> None:
    rows = [CatalogRow(**row("p1", material="cotton", popularity=0.25, photo="ph/p1.png")),
            CatalogRow(**row("p2", title='Tee, "quoted" | 2', split="test"))]
    path = write_catalog(tmp_path / f"cat{suffix}", rows)
    cat = read_catalog(path)
    assert cat.rows == tuple(rows)
    assert cat.image_path(cat.get("p1")) == tmp_path / "img/p1.png"
    assert cat.photo_path(cat.get("p2")) is None
    assert [r.product_id for r in cat.split("test")] == ["p2"]
    assert cat.labels("material") == ["cotton"]


def test_csv_header_is_the_documented_column_order(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.csv", [CatalogRow(**row())])
    assert path.read_text().splitlines()[0] == ",".join(CATALOG_COLUMNS)


def test_jsonl_bad_rows_are_all_reported_with_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [
        row("p1"),
        row("p2", split="training"),          # line 2: bad enum
        "",                                   # line 3: blank, skipped
        "{not json",                          # line 4
        {k: v for k, v in row("p5").items() if k != "color"},  # line 5: missing
        row("p1"),                            # line 6: duplicate of line 1
        row("p7", popularity=-1),             # line 7
        row("p8", colour="red"),              # line 8: unknown column (typo)
        row("bad id"),                        # line 9
        row("p10", image="https://x/y.png"),  # line 10: nothing is downloaded
        "[1, 2]",                             # line 11
    ])
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    found = {(p.line, p.field.split(".")[0]) for p in info.value.problems}
    assert found == {(2, "split"), (4, ""), (5, "color"), (6, "product_id"), (7, "popularity"), (8, "colour"),
                     (9, "product_id"), (10, "image"), (11, "")}
    msg = str(info.value)
    assert "line 6: product_id: duplicate 'p1' (first on line 1)" in msg
    assert "line 4: not valid JSON" in msg
    assert str(path) in msg


def test_csv_bad_rows_use_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    header = ",".join(CATALOG_COLUMNS)
    good = "p1,Red tee,a.png,t-shirt,red,solid,,,,train"
    path.write_text("\n".join([
        header,
        good,
        "p2,Tee,b.png,t-shirt,red,solid,,lots,,train",   # line 3: popularity not a number
        "p3,,c.png,t-shirt,red,solid,,,,val",            # line 4: empty title
        "p4,Tee,d.png,t-shirt,red,solid,,,,val,extra",  # line 5: too many cells
        "p5,Tee,e.png",                                  # line 6: too few cells
    ]) + "\n")
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    lines = sorted({p.line for p in info.value.problems})
    assert lines == [3, 4, 5, 6]
    fields = {p.line: p.field for p in info.value.problems}
    assert fields[3] == "popularity" and fields[4] == "title"


def test_csv_header_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("product_id,title,image,category,colour,pattern,split\np1,t,a.png,x,red,solid,train\n")
    with pytest.raises(CatalogError, match=r"line 1: header: unknown column\(s\) \['colour'\]") as info:
        read_catalog(path)
    assert any("missing required column(s) ['color']" in p.message for p in info.value.problems)


def test_missing_images_are_reported_when_asked(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p1.png").write_bytes(b"x")
    path = write_jsonl(tmp_path / "c.jsonl", [row("p1"), row("p2", photo="img/p2-photo.png")])
    read_catalog(path)  # not checked by default
    with pytest.raises(CatalogError) as info:
        read_catalog(path, check_images=True)
    assert {(p.line, p.field) for p in info.value.problems} == {(2, "image"), (2, "photo")}


def test_empty_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no rows"):
        read_catalog(write_jsonl(tmp_path / "c.jsonl", []))
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(CatalogError, match=".jsonl or .csv"):
        read_catalog(tmp_path / "c.txt")
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "nope.jsonl")


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
