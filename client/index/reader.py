"""Indexing job, stage 1 (reader): catalog file -> source rows + rejects, and image bytes from disk.

`read_catalog` (catalog.py) is strict: one bad row fails the whole file, which is right for training
and evaluation. An indexing job must instead index every good row and account for every bad one, so
`scan_catalog` validates row by row with the same row model and reports each bad row as a `Reject`
(line, product_id, reason, message). Only problems that make *every* row unusable (missing file, bad
CSV header, unknown suffix) raise `CatalogError`.

The reader knows nothing about embeddings or bundles: swapping local files for an object store means
replacing `load_image` (and `fingerprint`), nothing else. Images are read through the one bounded,
confined reader in `lenscope.client.inputs.image_files`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lenscope.client.catalog.reader import (
    _csv_records,  # the record readers stay in one place; only validation differs here
    _jsonl_records,
    _problems,
)
from lenscope.client.catalog.rows import CatalogError, CatalogRow, Problem
from lenscope.client.inputs.image_files import (  # noqa: F401 - re-exported reject reasons
    IMAGE_TOO_LARGE,
    MISSING_IMAGE,
    NOT_A_FILE,
    OUTSIDE_CATALOG,
    UNREADABLE_IMAGE,
    ImageFileError,
    read_catalog_image,
)
from lenscope.client.inputs.text import control_character_problem, escape_controls

# Stable reject reasons (the rejects file and the summary count by these); the image-file ones are
# the shared image reader's (lenscope.client.inputs.image_files).
INVALID_ROW = "invalid_row"
DUPLICATE_ID = "duplicate_product_id"
PHOTO_PREFIX = "photo_"  # the same file problems for the optional user photo: the row is kept

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Reject:
    """One problem with one catalog row. `kept` is True for problems that did not drop the row
    (an unusable optional photo): they are still reported, never silently ignored."""

    line: int
    product_id: str | None
    reason: str
    message: str
    kept: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "product_id": self.product_id, "reason": self.reason,
                "message": self.message, "kept": self.kept}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Reject":
        return cls(int(d["line"]), d.get("product_id"), str(d["reason"]), str(d["message"]), bool(d.get("kept")))


@dataclass(frozen=True)
class SourceRow:
    """A valid catalog row, its line in the file and its position among the rows to index."""

    position: int
    line: int
    row: CatalogRow


@dataclass(frozen=True)
class CatalogScan:
    path: Path
    sha256: str
    rows: tuple[SourceRow, ...]
    rejects: tuple[Reject, ...]
    skipped: int  # valid rows left out on purpose (not in the selected splits)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def rows_read(self) -> int:
        """Rows found in the file: indexed candidates + rejected + deliberately skipped."""
        return len(self.rows) + len(self.rejects) + self.skipped


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path)
        return
    if path.suffix != ".csv":
        raise CatalogError(str(path), [Problem(0, "", "catalog must be a .jsonl or .csv file")])
    header: list[Problem] = []
    records = list(_csv_records(path, header))
    if header:  # unknown / missing columns: no row can be read correctly
        raise CatalogError(str(path), header)
    yield from records


def _raw_product_id(rec: Any) -> str | None:
    pid = rec.get("product_id") if isinstance(rec, dict) else None
    return escape_controls(pid.strip()[:128]) if isinstance(pid, str) and pid.strip() else None


def scan_catalog(path: str | Path, *, splits: Iterable[str] | None = None) -> CatalogScan:
    """Validate every row; good rows (optionally only those of `splits`) in file order, bad ones as rejects."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(str(path), [Problem(0, "", "file does not exist")])
    wanted = None if splits is None else frozenset(splits)
    sha = file_sha256(path)
    rows: list[SourceRow] = []
    rejects: list[Reject] = []
    seen: dict[str, int] = {}
    skipped = 0
    for line, rec in _records(path):
        if isinstance(rec, Problem):
            rejects.append(Reject(line, None, INVALID_ROW, rec.message))
            continue
        if not isinstance(rec, dict):
            rejects.append(Reject(line, None, INVALID_ROW, f"expected a JSON object, got {type(rec).__name__}"))
            continue
        if (problem := control_character_problem(rec)) is not None:  # before anything prints the row
            rejects.append(Reject(line, _raw_product_id(rec), INVALID_ROW, problem))
            continue
        try:
            row = CatalogRow.model_validate(rec)
        except ValidationError as err:
            message = "; ".join(str(p).removeprefix(f"line {line}: ") for p in _problems(err, line))
            rejects.append(Reject(line, _raw_product_id(rec), INVALID_ROW, message))
            continue
        if row.product_id in seen:
            rejects.append(Reject(line, row.product_id, DUPLICATE_ID,
                                  f"product_id {row.product_id!r} already on line {seen[row.product_id]}"))
            continue
        seen[row.product_id] = line
        if wanted is not None and row.split not in wanted:
            skipped += 1
            continue
        rows.append(SourceRow(len(rows), line, row))
    return CatalogScan(path, sha, tuple(rows), tuple(rejects), skipped)


# -- image files -----------------------------------------------------------------------------------


def image_file(scan_root: Path, rel: str) -> Path:
    return scan_root / rel  # for stat only (fingerprints); reading goes through `load_image`


def load_image(root: Path, rel: str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
               allow_outside: bool = False) -> tuple[bytes | None, str | None, str]:
    """(bytes, None, "") or (None, reason, message); never raises for a bad file.

    Through the shared bounded reader: regular files only, at most `max_bytes`, confined to the
    catalog's folder unless `allow_outside`."""
    try:
        return read_catalog_image(root, rel, max_bytes=max_bytes, allow_outside=allow_outside), None, ""
    except ImageFileError as err:
        return None, err.reason, err.message


def fingerprint(root: Path, rows: Iterable[SourceRow]) -> str:
    """Identity of the image files behind some rows (size + mtime, one stat per file).

    A checkpointed chunk is reused only if this still matches: an image replaced on disk after a
    crash is re-embedded instead of silently keeping the old vector.
    """
    h = hashlib.sha256()
    for s in rows:
        for rel in (s.row.image, s.row.photo):
            if rel is None:
                h.update(b"-|")
                continue
            try:
                st = os.stat(image_file(root, rel))
                h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}|".encode())
            except OSError:
                h.update(f"{rel}|absent|".encode())
    return h.hexdigest()
