"""Catalog and queries files -> raw records ``(line, dict | Problem)``, with the file-level checks
every reader shares: the file exists, has a known suffix, is UTF-8 text, has a usable CSV header
and at least one row.

A file-level problem raises ``CatalogError`` naming the file, the line and what is wrong (never a
bare ``'utf-8' codec can't decode``); a bad row is yielded as a ``Problem`` so that the strict reader
can list them all and the indexing job can reject just those rows.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lenscope.client.catalog.fields import KNOWN_COLUMNS, facet_name
from lenscope.client.catalog.rows import CatalogError, Problem

__all__ = ["Record", "catalog_records", "jsonl_records", "read_text"]

Record = tuple[int, Any]  # (line, parsed record or Problem)
REQUIRED_CSV_COLUMNS = ("product_id", "title", "image")
SUFFIXES = (".jsonl", ".csv")


def read_text(path: Path) -> str:
    """The file as text; CatalogError naming the line and byte if it is not UTF-8 (or is binary)."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CatalogError(str(path), [Problem(0, "", f"{what}; expected a catalog file")])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise CatalogError(str(path), [Problem(line, "encoding", (
            f"not UTF-8: byte 0x{data[start]:02x} at column {column} ({err.reason}). Catalogs must be UTF-8 "
            "text; a file saved as Latin-1 / Windows-1252 (e.g. by a spreadsheet) can be converted with "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`"))]) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise CatalogError(str(path), [Problem(line, "encoding", "contains NUL bytes: this is a binary file, "
                                               "not a UTF-8 text catalog")])
    return text


def jsonl_records(path: Path, text: str) -> list[Record]:
    out: list[Record] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as err:
            out.append((n, Problem(n, "", f"not valid JSON: {err.msg} (column {err.colno})")))
    return out


def _check_header(header: list[str]) -> list[Problem]:
    problems, seen = [], {}
    for i, raw in enumerate(header, start=1):
        try:
            name = raw if raw in KNOWN_COLUMNS else facet_name(raw)
        except ValueError as err:
            problems.append(Problem(1, "header", f"column {i}: {err}"))
            continue
        if name in seen:
            problems.append(Problem(1, "header", f"columns {seen[name]} and {i} are both {name!r} "
                                                 f"({header[seen[name] - 1]!r}, {raw!r})"))
        seen.setdefault(name, i)
    if "images" in seen or "attributes" in seen:
        problems.append(Problem(1, "header", "'images' and 'attributes' are JSONL fields; in a CSV write one row "
                                             "per image (an 'image' column) and one column per attribute"))
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in seen]
    if missing:
        problems.append(Problem(1, "header", f"missing required column(s) {missing}; the header has {header}"))
    return problems


def csv_records(path: Path, text: str) -> list[Record]:
    """Rows as {header name: cell} (empty cells are absent values); header problems raise (no row is readable)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out: list[Record] = []
    try:
        header = next(reader, None)
        if header is None:
            return out
        header = [h.strip() for h in header]
        if problems := _check_header(header):
            raise CatalogError(str(path), problems)
        for cells in reader:
            line = reader.line_num  # the record's last line: exact for one-line rows
            if not cells or not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                more_or_less = "more" if len(cells) > len(header) else "fewer"
                out.append((line, Problem(line, "", f"{len(cells)} cells, {more_or_less} than the header's "
                                                    f"{len(header)} columns")))
                continue
            out.append((line, dict(zip(header, cells))))
    except csv.Error as err:
        raise CatalogError(str(path), [Problem(reader.line_num, "", f"not readable as CSV: {err}")]) from None
    return out


def catalog_records(path: str | Path) -> list[Record]:
    """Every record of a ``.jsonl`` / ``.csv`` catalog; CatalogError for a file with no rows at all."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise CatalogError(str(path), [Problem(0, "", f"catalog must be a .jsonl or .csv file, not {path.suffix!r}")])
    text = read_text(path)
    if not text.strip():
        need = ("a header row naming at least product_id, title, image, then one row per product (or per image)"
                if path.suffix == ".csv" else "one JSON object per line with at least product_id, title and image")
        raise CatalogError(str(path), [Problem(0, "", f"the file is empty; a catalog needs {need}")])
    records = jsonl_records(path, text) if path.suffix == ".jsonl" else csv_records(path, text)
    if not records:
        raise CatalogError(str(path), [Problem(1, "", "the file has a header but no product rows; add one row per "
                                                      "product (or per image) under the header")])
    return records
