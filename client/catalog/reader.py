"""Reading catalog (``.jsonl`` / ``.csv``) and queries (``.jsonl``) files into the typed rows of
``rows.py``, strictly.

Every reader error names the file and the line; all bad rows are reported at once. The record
readers (``_jsonl_records``, ``_csv_records``) and ``_problems`` are shared with the indexing job's
reader (``lenscope.client.index.reader``), which validates rows its own way.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lenscope.client.catalog.rows import (
    CATALOG_COLUMNS,
    REQUIRED_COLUMNS,
    Catalog,
    CatalogError,
    CatalogRow,
    Problem,
    Query,
    QuerySet,
    StrictRow,
)

__all__ = ["read_catalog", "read_queries"]


def _problems(err: ValidationError, line: int) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        out.append(Problem(line, loc, msg))
    return out


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as err:
                yield n, Problem(n, "", f"not valid JSON: {err.msg} (column {err.colno})")


def _csv_records(path: Path, problems: list[Problem]) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in CATALOG_COLUMNS]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if unknown:
            problems.append(Problem(1, "header", f"unknown column(s) {unknown}; known: {list(CATALOG_COLUMNS)}"))
        if missing:
            problems.append(Problem(1, "header", f"missing required column(s) {missing}"))
        if unknown or missing:
            return
        for rec in reader:
            line = reader.line_num  # the record's last line: exact for one-line rows
            if None in rec:  # more cells than header columns
                yield line, Problem(line, "", f"{len(rec[None])} more cell(s) than header columns")
            else:
                yield line, {k: v for k, v in rec.items() if v is not None and v != ""}


def _validate(path: Path, records: Iterable[tuple[int, Any]], model: type[StrictRow], problems: list[Problem]) -> list:
    rows, seen = [], {}
    id_field = "product_id" if model is CatalogRow else "query_id"
    for line, rec in records:
        if isinstance(rec, Problem):
            problems.append(rec)
            continue
        if not isinstance(rec, dict):
            problems.append(Problem(line, "", f"expected a JSON object, got {type(rec).__name__}"))
            continue
        try:
            row = model.model_validate(rec)
        except ValidationError as err:
            problems.extend(_problems(err, line))
            continue
        key = getattr(row, id_field)
        if key in seen:
            problems.append(Problem(line, id_field, f"duplicate {key!r} (first on line {seen[key]})"))
            continue
        seen[key] = line
        rows.append(row)
    return rows


def read_catalog(path: str | Path, *, check_images: bool = False) -> Catalog:
    """Read a ``.jsonl`` or ``.csv`` catalog; raise CatalogError listing every bad row.

    ``check_images`` also stats every image/photo file (one syscall per file: cheap, but off by
    default so reading a catalog on a machine without its images still works).
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(str(path), [Problem(0, "", "file does not exist")])
    problems: list[Problem] = []
    if path.suffix == ".jsonl":
        records: Iterable[tuple[int, Any]] = _jsonl_records(path)
    elif path.suffix == ".csv":
        records = _csv_records(path, problems)
    else:
        raise CatalogError(str(path), [Problem(0, "", "catalog must be a .jsonl or .csv file")])
    rows = _validate(path, records, CatalogRow, problems)
    if not rows and not problems:
        problems.append(Problem(0, "", "catalog has no rows"))
    catalog = Catalog(path, tuple(rows))
    if check_images and not problems:
        problems.extend(_missing_images(catalog, path))
    if problems:
        raise CatalogError(str(path), sorted(problems, key=lambda p: p.line))
    return catalog


def _missing_images(catalog: Catalog, path: Path) -> list[Problem]:
    """Line numbers are recomputed by position (one row per line in both formats)."""
    lines = _row_lines(path)
    out = []
    for i, row in enumerate(catalog.rows):
        for col in ("image", "photo"):
            rel = getattr(row, col)
            if rel is not None and not (catalog.root / rel).is_file():
                out.append(Problem(lines[i], col, f"file {rel!r} does not exist under {catalog.root}"))
    return out


def _row_lines(path: Path) -> list[int]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [n for n, t in enumerate(f, start=1) if t.strip()]
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        return [reader.line_num for row in reader if row]


def read_queries(path: str | Path, catalog: Catalog | None = None) -> QuerySet:
    """Read a ``.jsonl`` queries file; with ``catalog``, judged product ids must exist in it."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(str(path), [Problem(0, "", "file does not exist")])
    if path.suffix != ".jsonl":
        raise CatalogError(str(path), [Problem(0, "", "queries must be a .jsonl file")])
    problems: list[Problem] = []
    records = list(_jsonl_records(path))
    queries = _validate(path, records, Query, problems)
    if catalog is not None:
        line_of = {rec.get("query_id"): n for n, rec in records if isinstance(rec, dict)}
        for q in queries:
            unknown = [pid for pid in q.relevance if pid not in catalog]
            if unknown:
                problems.append(Problem(line_of.get(q.query_id, 0), "relevance",
                                        f"{len(unknown)} product id(s) not in the catalog, e.g. {unknown[:3]}"))
    if problems:
        raise CatalogError(str(path), sorted(problems, key=lambda p: p.line))
    return QuerySet(path, tuple(queries))
