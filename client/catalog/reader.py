"""Reading catalog (``.jsonl`` / ``.csv``) and queries (``.jsonl``) files into the typed rows of
``rows.py``, strictly: every problem of the file is listed at once, each naming the line, the field
and the value, and any one of them fails the read (right for training and evaluation; the indexing
job's ``index.reader.scan_catalog`` instead rejects bad rows and indexes the rest).

Records come from ``records.py`` (UTF-8, CSV header, empty files), products from ``products.py``
(one product from its rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from lenscope.client.catalog.products import build_products, validation_problems
from lenscope.client.catalog.records import catalog_records, jsonl_records, read_text
from lenscope.client.catalog.rows import Catalog, CatalogError, Problem, Query, QuerySet

__all__ = ["read_catalog", "read_queries"]

log = structlog.get_logger(__name__)


def read_catalog(path: str | Path, *, check_images: bool = False) -> Catalog:
    """Read a ``.jsonl`` or ``.csv`` catalog (v1 or v2); raise CatalogError listing every problem.

    ``check_images`` also stats every image file (one syscall per file: cheap, but off by default so
    reading a catalog on a machine without its images still works). Warnings (rows of one product
    disagreeing on an attribute) do not fail the read: they are in ``Catalog.warnings``.
    """
    path = Path(path)
    built, issues = build_products(catalog_records(path))
    problems = [i.problem() for i in issues if i.error]
    catalog = Catalog(path, tuple(b.row for b in built), warnings=tuple(i.problem() for i in issues if not i.error),
                      lines={b.row.product_id: b.lines for b in built})
    if check_images and not problems:
        problems.extend(_missing_images(catalog))
    if problems:
        raise CatalogError(str(path), sorted(problems, key=lambda p: p.line))
    for w in catalog.warnings:  # kept in the Catalog too; logged so that no caller drops them silently
        log.warning("catalog_warning", file=str(path), line=w.line, field=w.field, message=w.message)
    return catalog


def _missing_images(catalog: Catalog) -> list[Problem]:
    out = []
    for row in catalog.rows:
        for im, line in zip(row.images, catalog.lines[row.product_id]):
            if not (catalog.root / im.path).is_file():
                field = "photo" if im.role == "photo" else "image"
                out.append(Problem(line, field, f"file {im.path!r} does not exist under {catalog.root}"))
    return out


def _validate_queries(records: Iterable[tuple[int, Any]], problems: list[Problem]) -> list[Query]:
    queries, seen = [], {}
    for line, rec in records:
        if isinstance(rec, Problem):
            problems.append(rec)
            continue
        if not isinstance(rec, dict):
            problems.append(Problem(line, "", f"expected a JSON object, got {type(rec).__name__}"))
            continue
        try:
            q = Query.model_validate(rec)
        except ValidationError as err:
            problems.extend(validation_problems(err, line))
            continue
        if q.query_id in seen:
            problems.append(Problem(line, "query_id", f"duplicate {q.query_id!r} (first on line {seen[q.query_id]})"))
            continue
        seen[q.query_id] = line
        queries.append(q)
    return queries


def read_queries(path: str | Path, catalog: Catalog | None = None) -> QuerySet:
    """Read a ``.jsonl`` queries file; with ``catalog``, judged product ids must exist in it."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise CatalogError(str(path), [Problem(0, "", "queries must be a .jsonl file")])
    problems: list[Problem] = []
    records = jsonl_records(path, read_text(path))
    queries = _validate_queries(records, problems)
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
