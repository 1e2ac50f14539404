"""A flat catalog record (a CSV row, a JSONL object; v1 or v2) -> the structured fields of a row.

Separate from ``rows.py`` because the readers need it before a row exists: they report each
problem with the key the user wrote (``Colour``), not the name it becomes (``colour``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lenscope.client.catalog.fields import KNOWN_COLUMNS, PHOTO_ROLE, ROLE_COLUMNS, facet_name

__all__ = ["present", "structure_record"]

_REQUIRED = ("product_id", "title")
IMAGE_KEYS = ("path", "role", "attributes")  # one image of a JSONL `images` list


def present(v: Any) -> bool:
    """Empty cells and nulls are absent values."""
    return v is not None and not (isinstance(v, str) and not v.strip())


def structure_record(rec: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A flat catalog record (a CSV row, a JSONL object, v1 or v2) -> the row's structured fields.

    Known keys keep their meaning (``image`` + ``role``/``view`` -> one image, ``photo`` -> an image
    with role ``photo``, ``images`` -> a list of them); every other key is an attribute, named by
    ``fields.facet_name``. Empty values are absent. Returns ``(fields, [(field, message), ...])``.
    """
    out: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    known: dict[str, Any] = {}
    for key, value in rec.items():
        if not isinstance(key, str):
            problems.append((str(key), "field names must be text"))
            continue
        try:
            name = key if key in KNOWN_COLUMNS else facet_name(key)
        except ValueError as err:
            problems.append((key, str(err)))
            continue
        if name in seen:
            problems.append((key, f"is the same field as {seen[name]!r} (both are {name!r})"))
            continue
        seen[name] = key
        if name in KNOWN_COLUMNS:
            known[name] = value
        else:
            attrs[name] = (key, value)
    nested = known.pop("attributes", None)
    if isinstance(nested, Mapping):
        for key, value in nested.items():
            try:
                name = facet_name(str(key))
            except ValueError as err:
                problems.append((f"attributes.{key}", str(err)))
                continue
            if name in attrs or name in KNOWN_COLUMNS:
                problems.append((f"attributes.{key}", f"attribute {name!r} is given twice (or is a known column)"))
                continue
            attrs[name] = (f"attributes.{key}", value)
    elif nested is not None:
        problems.append(("attributes", f"must be an object of name -> value; got {type(nested).__name__}"))
    roles = [known.pop(c) for c in ROLE_COLUMNS if present(known.get(c))]
    for c in ROLE_COLUMNS:
        known.pop(c, None)
    if len(roles) > 1 and roles[0] != roles[1]:
        problems.append(("role", f"'role' and 'view' disagree: {roles[0]!r} vs {roles[1]!r}"))
    images: list[Any] = []
    if present(known.get("image")):
        images.append({"path": known.pop("image"), "role": roles[0] if roles else None})
    elif roles:
        problems.append(("role", "a role needs an 'image' on the same row"))
    known.pop("image", None)
    if present(known.get("images")):
        given = known.pop("images")
        if images:
            problems.append(("images", "give either 'image' or 'images', not both"))
        elif isinstance(given, list):
            for i, g in enumerate(given):
                if isinstance(g, Mapping) and (unknown := [k for k in g if k not in IMAGE_KEYS]):
                    problems.append((f"images.{i}.{unknown[0]}", (
                        f"unknown key {unknown[0]!r} (value {g[unknown[0]]!r}); an image is "
                        "{\"path\", \"role\", \"attributes\"}: put what this image shows in its \"attributes\", "
                        'e.g. {"path": "cap/red.jpg", "attributes": {"color": "red"}}')))
            images.extend({"path": g} if isinstance(g, str) else g for g in given)
        else:
            problems.append(("images", "must be a list of paths or {path, role} objects; "
                                       f"got {type(given).__name__}"))
    known.pop("images", None)
    if present(known.get("photo")):
        images.append({"path": known.pop("photo"), "role": PHOTO_ROLE})
    known.pop("photo", None)
    for k in ("product_id", "variant_of"):  # JSON exports often have numeric ids
        if isinstance(known.get(k), int) and not isinstance(known[k], bool):
            known[k] = str(known[k])
    # An empty id or title is reported as such ("empty value"), not as a missing field.
    out.update({k: v for k, v in known.items() if present(v) or (k in _REQUIRED and isinstance(v, str))})
    if not images and not any(f in ("role", "images") for f, _ in problems):
        problems.append(("image", "missing: every row needs an image (a path relative to the catalog file)"))
    out["images"] = images
    values: dict[str, str] = {}
    for name, (key, value) in attrs.items():
        if not present(value):
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problems.append((key, f"an attribute value must be text (one value); got {type(value).__name__} {value!r}"))
            continue
        values[name] = value if isinstance(value, str) else str(value)
    out["attributes"] = values
    return out, problems
