"""Writing catalog (``.jsonl`` / ``.csv``) and queries (``.jsonl``) files, atomically.

Separate from ``reader.py``: the generators (``lenscope.client.synth``) only write, the indexing
job and evaluation only read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lenscope.client.catalog.fields import PHOTO_ROLE
from lenscope.client.catalog.rows import CATALOG_COLUMNS, V1_ATTRIBUTES, CatalogRow, Query

__all__ = ["write_catalog", "write_queries"]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def _jsonl(rows: Iterable[BaseModel]) -> str:
    return "".join(json.dumps(r.model_dump(exclude_none=True), ensure_ascii=False) + "\n" for r in rows)


def _v1_shaped(r: CatalogRow) -> bool:
    """One main image (+ at most a role-``photo`` image), nothing v1 could not say."""
    extra = r.images[1:]
    return ((len(extra) == 0 or (len(extra) == 1 and extra[0].role == PHOTO_ROLE)) and r.variant_of is None
            and not any(im.attributes for im in r.images))


def _image_record(im: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"path": im.path, "role": im.role}
    if im.attributes:
        rec["attributes"] = dict(im.attributes)
    return rec


def row_record(r: CatalogRow) -> dict[str, Any]:
    """A row as one flat JSON object: v1's field order (so v1 catalogs are written as before), with
    ``images`` instead of ``image``/``photo`` when the product has more than v1 could hold."""
    rec: dict[str, Any] = {"product_id": r.product_id, "title": r.title}
    if _v1_shaped(r):
        rec["image"] = r.image
    else:
        rec["images"] = [_image_record(im) for im in r.images]
    rec.update(r.attributes)
    if r.variant_of is not None:
        rec["variant_of"] = r.variant_of
    if r.popularity is not None:
        rec["popularity"] = r.popularity
    if _v1_shaped(r) and r.photo is not None:
        rec["photo"] = r.photo
    if r.split is not None:
        rec["split"] = r.split
    return rec


def _csv(rows: list[CatalogRow]) -> str:
    """v1 columns when every row fits them; else one line per image with a ``role`` column, each
    line's attribute cells the product's values overridden by that image's own (the reader makes a
    non-main line's differing value its image's label again). The main image's line gives the
    product's values: an own label of the main image cannot be written to a CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if all(_v1_shaped(r) and set(r.attributes) <= set(V1_ATTRIBUTES) for r in rows):
        writer.writerow(CATALOG_COLUMNS)
        for r in rows:
            d = {**row_record(r), **{a: r.attributes.get(a) for a in V1_ATTRIBUTES}}
            writer.writerow(["" if d.get(c) is None else d[c] for c in CATALOG_COLUMNS])
        return buf.getvalue()
    names = list(dict.fromkeys(n for r in rows for n in [*r.attributes, *(a for im in r.images for a in im.attributes)]))
    columns = ["product_id", "title", "image", "role", "variant_of", "popularity", "split", *names]
    writer.writerow(columns)
    for r in rows:
        product = [r.product_id, r.title]
        fields = [r.variant_of, r.popularity, r.split]
        for k, im in enumerate(r.images):
            labels = r.attributes if k == 0 else r.image_labels(k)
            cells = (*product, im.path, im.role, *fields, *(labels.get(n) for n in names))
            writer.writerow(["" if v is None else v for v in cells])
    return buf.getvalue()


def write_catalog(path: str | Path, rows: Iterable[CatalogRow]) -> Path:
    """Write rows as ``.jsonl`` or ``.csv`` (by suffix), atomically; returns the path."""
    path = Path(path)
    rows = list(rows)
    if path.suffix == ".jsonl":
        _atomic_write(path, "".join(json.dumps(row_record(r), ensure_ascii=False) + "\n" for r in rows))
    elif path.suffix == ".csv":
        _atomic_write(path, _csv(rows))
    else:
        raise ValueError(f"catalog path {path} must end in .jsonl or .csv")
    return path


def write_queries(path: str | Path, queries: Iterable[Query]) -> Path:
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"queries path {path} must end in .jsonl")
    _atomic_write(path, _jsonl(queries))
    return path
