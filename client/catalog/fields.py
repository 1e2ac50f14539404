"""The rules for single catalog values: product ids, one-line texts, image paths, attribute names.

Separate from ``rows.py`` (the row models) because the readers apply the same rules to raw cells
and headers before any row exists (a CSV header names attributes; a JSONL key does too).

Every message shows the offending value (``repr``, so invisible characters are visible) and says
what would be accepted, because the user has to find it in their file.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "KNOWN_COLUMNS",
    "MAX_ID_LENGTH",
    "PHOTO_ROLE",
    "ROLE_COLUMNS",
    "check_id",
    "check_one_line",
    "check_path",
    "facet_name",
]

MAX_ID_LENGTH = 256
MAX_ATTRIBUTE_NAME = 32
# Columns (CSV) / keys (JSONL) with a meaning of their own; every other one is an attribute.
# `photo` is the v1 second image (role "photo"); `view` and `role` both give an image's role.
KNOWN_COLUMNS = ("product_id", "title", "image", "images", "role", "view", "photo", "variant_of", "popularity",
                 "split", "attributes")
ROLE_COLUMNS = ("role", "view")
PHOTO_ROLE = "photo"  # v1's second image: a differently shot photo the index embeds as a second view

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def _control_char(v: str) -> str | None:
    m = _CONTROL.search(v)
    return None if m is None else f"contains a control character (U+{ord(m.group()):04X}) at position {m.start()}"


def _shown(v: str, limit: int = 80) -> str:
    return repr(v if len(v) <= limit else v[:limit] + "...")


def check_id(v: str) -> str:
    """Any text is an id except an empty one, an over-long one or one with control characters
    (the message follows the field name: ``product_id: 'a\\x07b' contains a control character...``)."""
    if not v:
        raise ValueError("empty value; every row needs an id")
    if len(v) > MAX_ID_LENGTH:
        raise ValueError(f"{_shown(v)} is {len(v)} characters long; at most {MAX_ID_LENGTH} are allowed")
    if problem := _control_char(v):
        raise ValueError(f"{_shown(v)} {problem}")
    return v


def check_one_line(v: str) -> str:
    """Titles, roles and attribute values: one line, no control characters (they would reach terminals)."""
    if problem := _control_char(v):
        raise ValueError(f"value {_shown(v)} {problem}")
    return v


def check_path(v: str | None) -> str | None:
    if v is None:
        return None
    if not v.strip():
        raise ValueError("must be a non-empty path")
    if "://" in v:
        raise ValueError(f"{_shown(v)} must be a local path (nothing is downloaded)")
    if problem := _control_char(v):
        raise ValueError(f"path {_shown(v)} {problem}")
    return v


@lru_cache(maxsize=4096)  # a catalog repeats the same few names on every row
def facet_name(raw: str) -> str:
    """A column or attribute name as the facet name it becomes: lower case, every run of other
    characters than a-z and 0-9 turned into one ``_`` (``"Sleeve Length"`` -> ``sleeve_length``).

    Facet names are what ``--filter name=value`` and the search API use, so they must be plain words.
    """
    name = _NOT_NAME.sub("_", raw.strip().lower()).strip("_")
    if not name:
        raise ValueError(f"name {_shown(raw)} has no letter or digit to make a facet name from")
    if not name[0].isalpha():
        raise ValueError(f"name {_shown(raw)} must start with a letter (it becomes the facet name {name!r})")
    if len(name) > MAX_ATTRIBUTE_NAME:
        raise ValueError(f"name {_shown(raw)} is longer than {MAX_ATTRIBUTE_NAME} characters as a facet name")
    return name
