"""The catalog and queries file formats as typed rows (CatalogRow, ImageRef, Query), their
containers (Catalog, QuerySet) and the errors readers report (Problem, CatalogError).

Torch-free: the indexing job, the evaluation harness, the demo and training all read catalogs as
these types, so a real catalog only has to follow this format to replace the generated one. The
format (v2, which still reads every v1 file) is documented for users in ``docs/catalog.md``. Reading
the files is ``reader.py`` (records: ``records.py``, one product from several rows: ``products.py``),
writing them ``writer.py``, the rules for single values ``fields.py``.

A product (``CatalogRow``) has a title, one or more images with roles (the first is the main image,
the one the index embeds), free attributes (name -> one value; an absent value is absent, never
"unknown"), an optional ``variant_of`` (the product it is a colour/size variant of), an optional
popularity and an optional split. v1's fixed columns survive as read-only properties (``image``,
``photo``, ``category``, ``color``, ``pattern``, ``material``), and the v1 keyword form
(``CatalogRow(image=..., photo=..., color=...)``) still constructs a row.

Queries file (``.jsonl`` only, because ``relevance`` is nested), one object per line:
``query_id``; ``type``: ``text`` | ``image`` | ``image+text``; ``text`` (required for text and
image+text, forbidden for image); ``image`` (path relative to the queries file; required for image
and image+text, forbidden for text); ``relevance``: ``{product_id: grade}`` with integer grades
>= 0 (absent products are grade 0; graded, so nDCG can use it); optional ``split``: the catalog
split whose products were judged (index that split when evaluating the query).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lenscope.client.catalog.fields import KNOWN_COLUMNS, PHOTO_ROLE, check_id, check_one_line, check_path, facet_name
from lenscope.client.catalog.shape import structure_record

__all__ = [
    "CATALOG_COLUMNS",
    "MAIN_ROLE",
    "PHOTO_ROLE",
    "Catalog",
    "CatalogError",
    "CatalogRow",
    "ImageRef",
    "Problem",
    "Query",
    "QuerySet",
    "clean_attributes",
]

Split = Literal["train", "val", "test"]
QueryType = Literal["text", "image", "image+text"]

# The v1 columns, in the v1 order (v1 files are still read; the writer uses them where they fit).
CATALOG_COLUMNS = (
    "product_id", "title", "image", "category", "color", "pattern", "material", "popularity", "photo", "split",
)
V1_ATTRIBUTES = ("category", "color", "pattern", "material")
MAIN_ROLE = "main"
ALT_ROLE = "alt"  # an image given without a role that is not the main one
_MAX_LISTED = 25


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


class StrictRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def clean_attributes(v: Mapping[str, Any]) -> dict[str, str]:
    """Attribute name -> value as stored: facet names, trimmed one-line values, absent ones dropped.

    Shared by a product's attributes and an image's own (the same names and the same rules)."""
    out: dict[str, str] = {}
    for raw, value in v.items():
        name = facet_name(str(raw))
        if name in out:
            raise ValueError(f"attribute {raw!r} is given twice (as {name!r})")
        if name in KNOWN_COLUMNS:
            raise ValueError(f"attribute name {name!r} is a known column")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"attribute {name!r}: a value must be text (one value); got {type(value).__name__} "
                             f"{value!r}")
        value = str(value).strip()
        if not value:
            continue  # absent, never "unknown"
        if len(value) > 200:
            raise ValueError(f"attribute {name!r}: value is {len(value)} characters long; at most 200")
        try:
            out[name] = check_one_line(value)
        except ValueError as err:
            raise ValueError(f"attribute {name!r}: {err}") from None
    return out


class ImageRef(StrictRow):
    """One image of a product: its path (relative to the catalog file), its role, and its own labels.

    ``role`` is free text (``main``, ``alt1``, ``back``, ``variant``, ``photo``...); ``None`` only on
    input, where it means "not given": the row then makes it ``main`` or ``alt``.

    ``attributes``: what this image shows where it differs from its product (a product photographed
    in several colours: the ``red`` shot of a ``black`` cap). They are labels, not facets: the
    product's attributes still decide filters and facet counts, while `lenscope eval` scores the
    heads on this image against them and `lenscope model train` learns them for this image.
    """

    path: str
    role: str | None = Field(None, min_length=1, max_length=64)
    attributes: dict[str, str] = {}

    @field_validator("path")
    @classmethod
    def _local_path(cls, v: str) -> str:
        return check_path(v)  # type: ignore[return-value]

    @field_validator("role")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        return v if v is None else check_one_line(v)

    @field_validator("attributes", mode="before")
    @classmethod
    def _own_attributes(cls, v: Any) -> Any:
        if v is None:
            return {}  # absent, as a product's null attribute is
        if not isinstance(v, Mapping):
            raise ValueError(f"must be an object of name -> value; got {type(v).__name__} {v!r}")
        return clean_attributes(v)


def _default_roles(images: list[Any] | tuple[Any, ...]) -> list[Any]:
    """The main image (role ``main``, else the first) first; images without a role get ``main`` (the
    first) or ``alt``. Items that are not images are left for validation to name."""
    items = [{"path": im} if isinstance(im, str) else
             {"path": im.path, "role": im.role, "attributes": im.attributes} if isinstance(im, ImageRef) else im
             for im in images]
    roles = [im.get("role") if isinstance(im, Mapping) else None for im in items]
    first = roles.index(MAIN_ROLE) if MAIN_ROLE in roles else 0
    order = [first, *(i for i in range(len(items)) if i != first)]
    out = []
    for k, i in enumerate(order):
        im = items[i]
        if isinstance(im, Mapping) and im.get("role") is None:
            im = {**im, "role": MAIN_ROLE if k == 0 else ALT_ROLE}
        out.append(im)
    return out


class CatalogRow(StrictRow):
    """One product: a title, its images (``images[0]`` is the main one), attributes, variant link."""

    product_id: str
    title: str = Field(max_length=1000)
    images: tuple[ImageRef, ...] = Field(min_length=1)
    attributes: dict[str, str] = {}
    variant_of: str | None = None
    popularity: float | None = Field(None, ge=0, allow_inf_nan=False)
    split: Split | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, data: Any) -> Any:
        """Accept the flat record form (v1 keywords such as ``image=``, ``color=``, or a file's row),
        and give images without a role theirs (the main one first)."""
        if not isinstance(data, Mapping):
            return data
        if not ("images" in data and data.keys() <= cls.model_fields.keys()):
            data, problems = structure_record(data)
            if problems:
                raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
        images = data.get("images")
        if isinstance(images, (list, tuple)) and images:
            data = {**data, "images": _default_roles(images)}
        return data

    @field_validator("product_id", "variant_of")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        return v if v is None else check_id(v)

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        if not v:
            raise ValueError("empty value; every product needs a title")
        return check_one_line(v)

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, str]) -> dict[str, str]:
        return clean_attributes(v)

    @model_validator(mode="after")
    def _one_main_each_image_once(self) -> "CatalogRow":
        mains = sum(im.role == MAIN_ROLE for im in self.images)
        if mains > 1:
            raise ValueError(f"{mains} images have role 'main'; a product has one main image")
        paths = [im.path for im in self.images]
        if len(set(paths)) != len(paths):
            twice = sorted({p for p in paths if paths.count(p) > 1})
            raise ValueError(f"image(s) {twice} listed twice for this product")
        if self.variant_of == self.product_id:
            raise ValueError(f"variant_of: product {self.product_id!r} cannot be a variant of itself")
        return self

    # -- v1 accessors, read-only -----------------------------------------------------------------

    @property
    def image(self) -> str:
        """The main image (the one the index embeds)."""
        return self.images[0].path

    @property
    def photo(self) -> str | None:
        """The first image with role ``photo`` (v1's second view), if any."""
        return next((im.path for im in self.images if im.role == PHOTO_ROLE), None)

    @property
    def category(self) -> str | None:
        return self.attributes.get("category")

    @property
    def color(self) -> str | None:
        return self.attributes.get("color")

    @property
    def pattern(self) -> str | None:
        return self.attributes.get("pattern")

    @property
    def material(self) -> str | None:
        return self.attributes.get("material")

    def images_with_role(self, role: str) -> list[str]:
        return [im.path for im in self.images if im.role == role]

    def image_labels(self, k: int = 0) -> dict[str, str]:
        """What image ``k`` shows: the product's attributes, overridden by the image's own."""
        own = self.images[k].attributes
        return {**self.attributes, **own} if own else self.attributes

    def image_values(self, name: str) -> set[str]:
        """Every value of one attribute on this product or any of its images (label sets)."""
        values = {v for im in self.images if (v := im.attributes.get(name)) is not None}
        if (v := self.attributes.get(name)) is not None:
            values.add(v)
        return values


class Query(StrictRow):
    """One evaluation query with graded relevance over catalog products."""

    query_id: str
    type: QueryType
    text: str | None = Field(None, min_length=1, max_length=1000)
    image: str | None = None
    relevance: dict[str, int]
    split: Split | None = None

    @field_validator("image")
    @classmethod
    def _local_path(cls, v: str | None) -> str | None:
        return check_path(v)

    @field_validator("query_id")
    @classmethod
    def _query_id(cls, v: str) -> str:
        return check_id(v)

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
    # Problems that did not stop the read (e.g. rows of one product disagreeing on an attribute:
    # the main image's row wins); shown by the callers, never dropped.
    warnings: tuple[Problem, ...] = ()
    # product_id -> file line of each of its images (aligned with row.images), for later messages.
    lines: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
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

    def labels(self, name: str) -> list[str]:
        """Sorted distinct values of an attribute (absent values left out)."""
        return sorted({v for r in self.rows if (v := r.attributes.get(name)) is not None})

    def attribute_names(self) -> list[str]:
        """Every attribute name some product has, in order of first appearance (the catalog's facets)."""
        return list(dict.fromkeys(name for r in self.rows for name in r.attributes))


@dataclass(frozen=True)
class QuerySet:
    path: Path
    queries: tuple[Query, ...]
    # Query photos outside the queries file's folder are read only when the user allowed it
    # (`--allow-outside-images`), as catalog images are.
    allow_outside_images: bool = False

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
