"""Milvus boolean filter expressions: the attribute-name rule, string-literal escaping, and the `in` / `and`
clauses the Milvus backend pushes down.

Separate from `milvus_index` because this is the injection boundary: every filter value a caller sends
reaches Milvus only through `milvus_string_literal`, which escapes it so no value can leave its string
literal, and every attribute name through `check_attribute_name`. Semantics match
`facets.apply_filters`: OR within a facet, AND across facets, a product without a value never matches.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import numpy as np

from lenscope.client.vectors.milvus_schema import ID_FIELD, RESERVED_FIELDS

# Words of the Milvus expression grammar; a field so named would make filters ambiguous.
EXPRESSION_KEYWORDS = frozenset({"and", "or", "not", "in", "like", "is", "null", "exists", "true", "false"})
ATTRIBUTE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"  # = facets.FACET_NAME_PATTERN

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def milvus_string_literal(value: str) -> str:
    """`value` as a double-quoted Milvus expression string literal.

    Backslash and double quote are escaped (so nothing can close the literal early), as are newline,
    carriage return and tab; other control characters have no escape both Milvus and Milvus Lite
    accept, and never occur in catalog attributes, so they are refused.
    """
    if not isinstance(value, str):
        raise TypeError(f"filter values must be strings; got {type(value).__name__} {value!r}")
    if bad := _FORBIDDEN_CHARS.search(value):
        raise ValueError(f"filter value {value!r} contains control character {bad.group()!r}")
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def check_attribute_name(name: object) -> str:
    if not isinstance(name, str) or not re.fullmatch(ATTRIBUTE_NAME_PATTERN, name):
        raise ValueError(f"attribute name {name!r} must match {ATTRIBUTE_NAME_PATTERN}")
    if name in RESERVED_FIELDS or name in EXPRESSION_KEYWORDS:
        raise ValueError(
            f"attribute name {name!r} is reserved (fields {sorted(RESERVED_FIELDS)}, expression keywords "
            f"{sorted(EXPRESSION_KEYWORDS)})"
        )
    return name


def milvus_filter_expression(filters: Mapping[str, Collection[str]] | None) -> str:
    """`{"category": {"dress"}, "color": {"red", "blue"}}` -> `category in ["dress"] and color in ["blue", "red"]`.

    Facets are AND-ed, values within a facet OR-ed (an `in` list), output is deterministic (sorted).
    Names must be plain attribute names (checked, never escaped: they are identifiers, not data);
    values are escaped by `milvus_string_literal`. No filters -> "" (Milvus: no filtering). A facet
    with no values is refused rather than silently matching nothing, as `facets.FilterSpec` does.
    """
    if not filters:
        return ""
    clauses = []
    for name in sorted(filters):
        check_attribute_name(name)
        values = filters[name]
        if isinstance(values, str):
            raise TypeError(f"filter {name!r}: give a set of values, not the string {values!r}")
        if not values:
            raise ValueError(f"filter {name!r} needs at least one value")
        literals = ", ".join(milvus_string_literal(v) for v in sorted(values))
        clauses.append(f"{name} in [{literals}]")
    return " and ".join(clauses)


def ids_clause(ids: np.ndarray) -> str:
    """`id in [...]`: the rows whose primary key is one of `ids`."""
    return f"{ID_FIELD} in [{', '.join(str(int(i)) for i in ids)}]"


def conjunction(*parts: str) -> str:
    """The non-empty expressions AND-ed, each parenthesised when there are several ("" when none)."""
    parts = tuple(p for p in parts if p)
    return " and ".join(f"({p})" for p in parts) if len(parts) > 1 else (parts[0] if parts else "")
