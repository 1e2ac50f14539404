"""Writing catalog (``.jsonl`` / ``.csv``) and queries (``.jsonl``) files, atomically.

Separate from ``reader.py``: the generators (``lenscope.client.synth``) only write, the indexing
job and evaluation only read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from lenscope.client.catalog.rows import CATALOG_COLUMNS, CatalogRow, Query

__all__ = ["write_catalog", "write_queries"]


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
