"""Eval's query photos are read like catalog images: regular files, bounded, confined to the queries
file's folder unless the user allowed outside paths; a refused one is a clear error naming the file,
the query, the field and the value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lenscope.client.catalog.rows import Query, QuerySet
from lenscope.client.eval.config import EvaluationError
from lenscope.client.eval.queries import query_image

REAL_IMAGES = Path(__file__).resolve().parents[1] / "data" / "real-products" / "images"


def _qset(tmp_path: Path, image: str) -> QuerySet:
    q = Query(query_id="q1", type="image", image=image, relevance={"p1": 2})
    return QuerySet(tmp_path / "queries.jsonl", (q,))


def test_a_query_photo_outside_the_folder_is_refused_by_default(tmp_path: Path) -> None:
    outside = str(sorted(p for p in REAL_IMAGES.rglob("*") if p.is_file())[0].resolve())
    qset = _qset(tmp_path, outside)
    with pytest.raises(EvaluationError) as err:
        query_image(qset, qset.queries[0])
    message = str(err.value)
    assert str(tmp_path / "queries.jsonl") in message and "query 'q1'" in message
    assert f"image={outside!r}" in message and "--allow-outside-images" in message
    allowed = dataclasses.replace(qset, allow_outside_images=True)
    assert query_image(allowed, allowed.queries[0]) == Path(outside).read_bytes()


@pytest.mark.parametrize("target", ["/dev/zero", "../escape.jpg"])
def test_special_or_escaping_query_photos_are_refused_even_when_outside_is_allowed(tmp_path: Path, target: str) -> None:
    inside = tmp_path / "q"
    inside.mkdir()
    (tmp_path / "escape.jpg").write_bytes(b"\xff\xd8not really")
    qset = _qset(inside, target)
    with pytest.raises(EvaluationError, match="query 'q1'"):
        query_image(qset, qset.queries[0])
    if target == "/dev/zero":  # not a regular file: refused whatever the user allowed
        allowed = dataclasses.replace(qset, allow_outside_images=True)
        with pytest.raises(EvaluationError, match="/dev/zero"):
            query_image(allowed, allowed.queries[0])
