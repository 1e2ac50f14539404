"""Raw records -> products: each record validated on its own line, then the records of one
``product_id`` (one row per image) merged into one ``CatalogRow``.

Shared by the strict reader (every problem fails the file) and the indexing job's scan (a bad row
is rejected, the rest indexed), which is why the outcome is a list of ``Built`` products and
``Issue``s rather than an exception.

Merge rules (documented for users in docs/catalog.md): the product's fields come from its main
image's row (role ``main``, else its first row). Another row of the product must give the same
title, variant_of, popularity and split (else an error naming both lines, and that row is left
out); it may leave attributes empty, or add ones the main row lacks; an attribute value that
differs from the main row's is a warning naming both lines and values: the product keeps the main
row's value (facets and filters are per product) and that row's image keeps its own as its label
(``ImageRef.attributes``: what evaluation scores and training learns for that image). The same image listed twice, or a second ``main`` image, is an error naming both lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lenscope.client.catalog.fields import MAX_ID_LENGTH
from lenscope.client.catalog.records import Record
from lenscope.client.catalog.rows import MAIN_ROLE, CatalogRow, Problem
from lenscope.client.catalog.shape import structure_record

__all__ = ["Built", "Issue", "build_products", "validation_problems"]

# Stable reasons (the indexing job's rejects file counts by these).
INVALID_ROW = "invalid_row"
DUPLICATE_ROW = "duplicate_row"  # the same image listed twice for one product
CONFLICTING_ROW = "conflicting_row"  # a row disagreeing with its product's main row on title/variant_of/...
CONFLICTING_ATTRIBUTE = "conflicting_attribute"  # a warning: the main row's value is kept
UNKNOWN_VARIANT_OF = "unknown_variant_of"  # variant_of names no product of the catalog (the product is kept)
_PRODUCT_FIELDS = ("title", "variant_of", "popularity", "split")


@dataclass(frozen=True)
class Built:
    """One product, the line of its main row and the line of each of its images."""

    line: int
    row: CatalogRow
    lines: tuple[int, ...]


@dataclass(frozen=True)
class Issue:
    """A problem with one line. ``kept``: its product is still built (only this line, or nothing, was
    left out); ``error``: the strict reader fails on it (warnings only inform)."""

    line: int
    product_id: str | None
    reason: str
    field: str
    message: str
    kept: bool = False
    error: bool = True

    def problem(self) -> Problem:
        return Problem(self.line, self.field, self.message)


def validation_problems(err: ValidationError, line: int) -> list[Problem]:
    out = []
    errors = err.errors()
    bad_image = any(len(e["loc"]) > 1 and e["loc"][0] == "images" for e in errors)
    for e in errors:
        loc = [str(p) for p in e["loc"]]
        if bad_image and loc == ["images"] and e["type"] == "too_short":
            continue  # the image itself was named already
        field = loc[1] if len(loc) > 1 and loc[0] == "attributes" else ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] != "value_error" and isinstance(value, (str, int, float)) and repr(value) not in msg:
            msg += f" (got {value!r})"  # pydantic's own messages do not show the value
        out.append(Problem(line, field, msg))
    return out


def _raw_id(rec: Any) -> str | None:
    pid = rec.get("product_id") if isinstance(rec, dict) else None
    return pid.strip()[:MAX_ID_LENGTH] if isinstance(pid, str) and pid.strip() else None


def _parse(line: int, rec: Any) -> tuple[dict[str, Any], CatalogRow] | list[Issue]:
    if isinstance(rec, Problem):
        return [Issue(line, None, INVALID_ROW, rec.field, rec.message)]
    if not isinstance(rec, dict):
        return [Issue(line, None, INVALID_ROW, "", f"expected a JSON object, got {type(rec).__name__}")]
    fields, problems = structure_record(rec)
    if problems:
        return [Issue(line, _raw_id(rec), INVALID_ROW, f, m) for f, m in problems]
    try:
        return fields, CatalogRow.model_validate(fields)
    except ValidationError as err:
        return [Issue(line, _raw_id(rec), INVALID_ROW, p.field, p.message) for p in validation_problems(err, line)]


def _merge(pid: str, parts: list[tuple[int, dict[str, Any], CatalogRow]]) -> tuple[Built | None, list[Issue]]:
    if len(parts) == 1:  # one row per product (every v1 catalog): nothing to merge
        line, _, row = parts[0]
        return Built(line, row, (line,) * len(row.images)), []
    explicit_main = [p for p in parts if any(im.get("role") == MAIN_ROLE for im in p[1]["images"])]
    base = explicit_main[0] if explicit_main else parts[0]
    b_line, b_fields, b_row = base
    images = list(b_fields["images"])
    image_line = {im.path: b_line for im in b_row.images}
    attrs, attr_line = dict(b_row.attributes), {k: b_line for k in b_row.attributes}
    issues: list[Issue] = []
    for line, fields, row in parts:
        if line == b_line:
            continue
        differs = [f for f in _PRODUCT_FIELDS if getattr(row, f) != getattr(b_row, f)]
        if differs:
            f = differs[0]
            issues.append(Issue(line, pid, CONFLICTING_ROW, f, (
                f"{getattr(row, f)!r} differs from {getattr(b_row, f)!r} on line {b_line}, the main row of product "
                f"{pid!r}; the rows of one product must agree (this row is left out)"), kept=True))
            continue
        seen = [im.path for im in row.images if im.path in image_line]
        if seen:
            issues.append(Issue(line, pid, DUPLICATE_ROW, "image", (
                f"image {seen[0]!r} of product {pid!r} is already on line {image_line[seen[0]]} "
                "(this row is left out)"), kept=True))
            continue
        if any(im.get("role") == MAIN_ROLE for im in fields["images"]):
            issues.append(Issue(line, pid, CONFLICTING_ROW, "role", (
                f"a second 'main' image for product {pid!r} (the first is on line {b_line}; this row is left out)"),
                kept=True))
            continue
        own: dict[str, str] = {}
        for name, value in row.attributes.items():
            if name not in attrs:
                attrs[name], attr_line[name] = value, line
            elif attrs[name] != value:
                own[name] = value
                issues.append(Issue(line, pid, CONFLICTING_ATTRIBUTE, name, (
                    f"{value!r} differs from {attrs[name]!r} on line {attr_line[name]} for product {pid!r}; "
                    f"the product keeps {attrs[name]!r} (its facet value), this row's image keeps {value!r} as "
                    "its own label"), kept=True, error=False))
        images.extend(_with_own(fields["images"], own))
        image_line.update({im.path: line for im in row.images})
    merged = {**{k: v for k, v in b_fields.items() if k != "images"}, "images": images, "attributes": attrs}
    try:
        row = CatalogRow.model_validate(merged)
    except ValidationError as err:  # e.g. several images without role after merging: name the main line
        return None, [*issues, Issue(b_line, pid, INVALID_ROW, "", "; ".join(
            p.message for p in validation_problems(err, b_line)))]
    return Built(b_line, row, tuple(image_line[im.path] for im in row.images)), issues


def _with_own(images: list[Any], own: dict[str, str]) -> list[Any]:
    """A row's images carrying the values where the row differs from its product's main row (an
    image's own ``attributes``, given explicitly in JSONL, win over the row's)."""
    if not own:
        return images
    return [{**im, "attributes": {**own, **(im.get("attributes") or {})}} if isinstance(im, dict) else im
            for im in images]


def build_products(records: Iterable[Record]) -> tuple[list[Built], list[Issue]]:
    """Products in order of their first line, and every issue (errors, rejected rows, warnings)."""
    groups: dict[str, list[tuple[int, dict[str, Any], CatalogRow]]] = {}
    issues: list[Issue] = []
    for line, rec in records:
        parsed = _parse(line, rec)
        if isinstance(parsed, list):
            issues.extend(parsed)
            continue
        fields, row = parsed
        groups.setdefault(row.product_id, []).append((line, fields, row))
    built: list[Built] = []
    for pid, parts in groups.items():
        product, found = _merge(pid, parts)
        issues.extend(found)
        if product is not None:
            built.append(product)
    built.sort(key=lambda b: b.line)
    for b in built:
        if b.row.variant_of is not None and b.row.variant_of not in groups:
            issues.append(Issue(b.line, b.row.product_id, UNKNOWN_VARIANT_OF, "variant_of", (
                f"{b.row.variant_of!r} is not a product_id of this catalog"), kept=True))
    return built, sorted(issues, key=lambda i: (i.line, i.kept))
