"""Indexing job, stage 1 (reader): catalog file -> source rows + rejects, and image bytes from disk.

`read_catalog` (catalog/reader.py) is strict: one bad row fails the whole file, which is right for
training and evaluation. An indexing job must instead index every good product and account for every
bad row, so `scan_catalog` builds products with the same code (`catalog.products.build_products`) and
reports each bad row as a `Reject` (line, product_id, reason, message). A rejected row whose product
is still indexed (a product's extra row that disagrees with its main row, a repeated image, a warning
such as an attribute value that differs between the rows of one product) is a `kept` reject: reported,
never silently dropped. Only problems that make *every* row unusable (missing or empty file, not UTF-8,
bad CSV header, unknown suffix, no rows) raise `CatalogError`, with one message naming the file.

The index embeds each product's main image (and a role-``photo`` image as the second view); the other
images are recorded in the metadata store. The reader knows nothing about embeddings or bundles:
swapping local files for an object store means replacing `load_image` (and `fingerprint`), nothing else.
Images are read through the one bounded, confined reader in `lenscope.client.inputs.image_files`.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenscope.client.catalog.products import (
    CONFLICTING_ATTRIBUTE,
    CONFLICTING_ROW,
    DUPLICATE_ROW,
    INVALID_ROW,
    UNKNOWN_VARIANT_OF,
    Issue,
    build_products,
)
from lenscope.client.catalog.records import catalog_records
from lenscope.client.core.durable_files import file_sha256
from lenscope.client.inputs.image_files import (  # noqa: F401 - re-exported reject reasons
    IMAGE_TOO_LARGE,
    MISSING_IMAGE,
    NOT_A_FILE,
    OUTSIDE_CATALOG,
    UNREADABLE_IMAGE,
    ImageFileError,
    read_catalog_image,
)
from lenscope.client.catalog.rows import CatalogError, CatalogRow, Problem

# Stable reject reasons (the rejects file and the summary count by these). The row reasons are the
# catalog's own (catalog/products.py); the image-file ones are the shared image reader's
# (lenscope.client.inputs.image_files), found here and in the embedder.
PHOTO_PREFIX = "photo_"  # the same file problems for the optional user photo: the row is kept
__all__ = ["CONFLICTING_ATTRIBUTE", "CONFLICTING_ROW", "DUPLICATE_ROW", "INVALID_ROW", "UNKNOWN_VARIANT_OF",
           "CatalogScan", "Reject", "SourceRow", "fingerprint", "load_image", "scan_catalog"]

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
        """Products and unusable rows found in the file: indexed candidates + rejected (not kept) +
        deliberately skipped. A product's extra rows count with their product."""
        return len(self.rows) + sum(not r.kept for r in self.rejects) + self.skipped


def _one_reject_per_line(issues: list[Issue]) -> list[Reject]:
    """The problems of one line (and reason) joined into one reject: the rejects file lists rows."""
    grouped: dict[tuple[int, str, bool], list[Issue]] = {}
    for i in issues:
        grouped.setdefault((i.line, i.reason, i.kept), []).append(i)
    return [Reject(line, group[0].product_id, reason,
                   "; ".join(f"{i.field}: {i.message}" if i.field else i.message for i in group), kept)
            for (line, reason, kept), group in grouped.items()]


def scan_catalog(path: str | Path, *, splits: Iterable[str] | None = None) -> CatalogScan:
    """Build every product; good ones (optionally only those of `splits`) in file order, bad rows as rejects."""
    path = Path(path)
    records = catalog_records(path)  # CatalogError for file-level problems, one message naming the file
    wanted = None if splits is None else frozenset(splits)
    built, issues = build_products(records)
    rejects = _one_reject_per_line(issues)
    rows: list[SourceRow] = []
    skipped = 0
    for b in built:
        if wanted is not None and b.row.split not in wanted:
            skipped += 1
            continue
        rows.append(SourceRow(len(rows), b.line, b.row))
    if not rows:
        why = (f"none of its {len(built)} product(s) is in the split(s) {sorted(wanted)}" if built and wanted
               else (f"every row was rejected ({dict(Counter(r.reason for r in rejects))}); first: "
                     f"line {rejects[0].line}: {rejects[0].message}") if rejects
               else "it has no product rows")
        raise CatalogError(str(path), [Problem(0, "", f"nothing to index: {why}")])
    return CatalogScan(path, file_sha256(path), tuple(rows), tuple(rejects), skipped)


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
