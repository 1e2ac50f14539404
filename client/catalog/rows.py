"""The catalog and queries file formats as typed rows (CatalogRow, Query), their containers
(Catalog, QuerySet) and the errors readers report (Problem, CatalogError).

Torch-free: the indexing job, the evaluation harness, the demo and training all read catalogs
as these types, so a real catalog only has to follow this format to replace the generated one.
Reading the files is ``reader.py``, writing them ``writer.py``.

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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CATALOG_COLUMNS",
    "Catalog",
    "CatalogError",
    "CatalogRow",
    "Problem",
    "Query",
    "QuerySet",
]

Split = Literal["train", "val", "test"]
QueryType = Literal["text", "image", "image+text"]

CATALOG_COLUMNS = (
    "product_id", "title", "image", "category", "color", "pattern", "material", "popularity", "photo", "split",
)
REQUIRED_COLUMNS = ("product_id", "title", "image", "category", "color", "pattern", "split")
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


class StrictRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class CatalogRow(StrictRow):
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


class Query(StrictRow):
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
