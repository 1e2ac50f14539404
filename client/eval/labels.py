"""Matching a catalog's free-text labels to a model's label sets: case- and whitespace-insensitively
(``" Hoodies  &  Sweatshirts"`` is ``hoodies & sweatshirts``), and saying which values match none.

Shared by `lenscope eval`'s attribute table and `lenscope model train`'s label sets, so the two never
disagree on whether a label "is" one of the model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def label_key(label: str) -> str:
    """The form labels are compared in: case-folded, runs of whitespace as one space, trimmed."""
    return " ".join(label.split()).casefold()


def label_index(labels: Sequence[str]) -> dict[str, int]:
    """label_key -> position in the model's label set."""
    return {label_key(lab): i for i, lab in enumerate(labels)}


def unmatched(values: Iterable[str], labels: Sequence[str]) -> list[str]:
    """Distinct catalog values (sorted) that match none of ``labels``."""
    index = label_index(labels)
    return sorted({v for v in values if label_key(v) not in index})
