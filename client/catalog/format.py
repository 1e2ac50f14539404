"""The catalog and queries file formats: typed rows, a strict reader, an atomic writer.

Torch-free: the indexing job, the evaluation harness, the demo and training all read catalogs
through this module, so a real catalog only has to follow this format to replace the generated one.

Catalog file (``.jsonl``: one JSON object per line; or ``.csv``: a header row, then one row per
product). Columns:

==============  ========  ==================================================================
column          required  meaning
==============  ========  ==================================================================
product_id      yes       unique id, ``[A-Za-z0-9][A-Za-z0-9_.:-]*`` (<= 128 chars)
title           yes       the product title, one line
image           yes       catalog image, path relative to the catalog file (or absolute)
category        yes       attribute label, free text (training checks it against a model spec)
color           yes       attribute label
pattern         yes       attribute label
material        no        attribute label
popularity      no        number >= 0 (re-ranking prior); empty / absent = unknown
photo           no        a second, differently shot image of the same product (e.g. a user photo);
                          training uses it as a second view
split           yes       ``train`` | ``val`` | ``test``; splits are by product
==============  ========  ==================================================================

Unknown columns are errors (a typo such as ``colour`` must not silently drop data). In CSV files an
empty cell of an optional column means "absent". Images are never fetched: URLs are rejected.

Queries file (``.jsonl`` only, because ``relevance`` is nested), one object per line:
``query_id``; ``type``: ``text`` | ``image`` | ``image+text``; ``text`` (required for text and
image+text, forbidden for image); ``image`` (path relative to the queries file; required for image
and image+text, forbidden for text); ``relevance``: ``{product_id: grade}`` with integer grades
>= 0 (absent products are grade 0; graded, so nDCG can use it); optional ``split``: the catalog
split whose products were judged (index that split when evaluating the query).

Every reader error names the file and the line; all bad rows are reported at once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "CATALOG_COLUMNS",
    "Catalog",
    "CatalogError",
    "CatalogRow",
    "Problem",
    "Query",
    "QuerySet",
    "read_catalog",
    "read_queries",
    "write_catalog",
    "write_queries",
]

Split = Literal["train", "val", "test"]
QueryType = Literal["text", "image", "image+text"]

CATALOG_COLUMNS = (
    "product_id", "title", "image", "category", "color", "pattern", "material", "popularity", "photo", "split",
)
_REQUIRED = ("product_id", "title", "image", "category", "color", "pattern", "split")
_MAX_LISTED = 25
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


@dataclass(frozen=True)
class Problem:
    """One bad row (or header): where it is and what is wrong with which field."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class CatalogError(ValueError):
    """A catalog or queries file that cannot be used as a whole; lists every bad row."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        super().__init__(f"{source}: {len(problems)} problem(s):\n{shown}{more}")


def _check_path(v: str | None) -> str | None:
    if v is None:
        return None
    if not v.strip():
        raise ValueError("must be a non-empty path")
    if "://" in v:
        raise ValueError("must be a local path (nothing is downloaded)")
    return v


def _one_line(v: str) -> str:
    if "\n" in v or "\r" in v:
        raise ValueError("must be a single line")
    return v


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class CatalogRow(_Row):
    """One product."""

    product_id: str = Field(pattern=_ID_PATTERN)
    title: str = Field(min_length=1, max_length=1000)
    image: str
    category: str = Field(min_length=1, max_length=200)
    color: str = Field(min_length=1, max_length=200)
    pattern: str = Field(min_length=1, max_length=200)
    material: str | None = Field(None, min_length=1, max_length=200)
    popularity: float | None = Field(None, ge=0, allow_inf_nan=False)
    photo: str | None = None
    split: Split

    @field_validator("image", "photo")
    @classmethod
    def _local_path(cls, v: str | None) -> str | None:
        return _check_path(v)

    @field_validator("title", "category", "color", "pattern", "material")
    @classmethod
    def _single_line(cls, v: str | None) -> str | None:
        return v if v is None else _one_line(v)


class Query(_Row):
    """One evaluation query with graded relevance over catalog products."""

    query_id: str = Field(pattern=_ID_PATTERN)
    type: QueryType
    text: str | None = Field(None, min_length=1, max_length=1000)
    image: str | None = None
    relevance: dict[str, int]
    split: Split | None = None

    @field_validator("image")
    @classmethod
    def _local_path(cls, v: str | None) -> str | None:
        return _check_path(v)

    @field_validator("relevance")
    @classmethod
    def _grades(cls, v: dict[str, int]) -> dict[str, int]:
        if not v:
            raise ValueError("needs at least one judged product")
        if any(g < 0 for g in v.values()):
            raise ValueError("grades must be >= 0")
        if max(v.values()) == 0:
            raise ValueError("needs at least one product with grade > 0")
        return v

    @model_validator(mode="after")
    def _inputs_match_type(self) -> "Query":
        wants_text = self.type in ("text", "image+text")
        wants_image = self.type in ("image", "image+text")
        if wants_text != (self.text is not None):
            raise ValueError(f"a {self.type!r} query {'needs' if wants_text else 'must not have'} 'text'")
        if wants_image != (self.image is not None):
            raise ValueError(f"a {self.type!r} query {'needs' if wants_image else 'must not have'} 'image'")
        return self


@dataclass(frozen=True)
class Catalog:
    """Rows of one catalog file; image paths resolve against the file's directory."""

    path: Path
    rows: tuple[CatalogRow, ...]
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({r.product_id: i for i, r in enumerate(self.rows)})

    @property
    def root(self) -> Path:
        return self.path.parent

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[CatalogRow]:
        return iter(self.rows)

    def get(self, product_id: str) -> CatalogRow:
        return self.rows[self._index[product_id]]

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._index

    def split(self, name: Split) -> list[CatalogRow]:
        return [r for r in self.rows if r.split == name]

    def image_path(self, row: CatalogRow) -> Path:
        return self.root / row.image

    def photo_path(self, row: CatalogRow) -> Path | None:
        return None if row.photo is None else self.root / row.photo

    def labels(self, column: str) -> list[str]:
        """Sorted distinct values of an attribute column (absent values left out)."""
        return sorted({v for r in self.rows if (v := getattr(r, column)) is not None})


@dataclass(frozen=True)
class QuerySet:
    path: Path
    queries: tuple[Query, ...]

    @property
    def root(self) -> Path:
        return self.path.parent

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    def image_path(self, query: Query) -> Path | None:
        return None if query.image is None else self.root / query.image

    def of_type(self, kind: QueryType) -> list[Query]:
        return [q for q in self.queries if q.type == kind]


# ---------------------------------------------------------------------------------------------- read


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
        missing = [c for c in _REQUIRED if c not in header]
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


def _validate(path: Path, records: Iterable[tuple[int, Any]], model: type[_Row], problems: list[Problem]) -> list:
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


# --------------------------------------------------------------------------------------------- write


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def _jsonl(rows: Iterable[BaseModel]) -> str:
    return "".join(json.dumps(r.model_dump(exclude_none=True), ensure_ascii=False) + "\n" for r in rows)


def write_catalog(path: str | Path, rows: Iterable[CatalogRow]) -> Path:
    """Write rows as ``.jsonl`` or ``.csv`` (by suffix), atomically; returns the path."""
    path = Path(path)
    rows = list(rows)
    if path.suffix == ".jsonl":
        _atomic_write(path, _jsonl(rows))
    elif path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CATALOG_COLUMNS)
        for r in rows:
            d = r.model_dump()
            writer.writerow(["" if d[c] is None else d[c] for c in CATALOG_COLUMNS])
        _atomic_write(path, buf.getvalue())
    else:
        raise ValueError(f"catalog path {path} must end in .jsonl or .csv")
    return path


def write_queries(path: str | Path, queries: Iterable[Query]) -> Path:
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"queries path {path} must end in .jsonl")
    _atomic_write(path, _jsonl(queries))
    return path
