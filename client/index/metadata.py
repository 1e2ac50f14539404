"""Product metadata in SQLite: what a hit shows (title, image, attributes, popularity) and what filters
and facets are computed from.

Why SQLite: one file that travels inside the index bundle (checksummed with it), real indexes for
filtering, no server, readable by any tool. Attributes are stored twice on purpose: as a JSON column so
a product comes back in one row read, and as a (name, value, row_id) table whose primary key makes
"which products have color in {red, burgundy}" and "which colours exist" index lookups instead of scans.
Attributes are multi-valued (a dress can be red and white); values are kept sorted and de-duplicated
so every read path returns them in the same order.

Attribute names are whatever the catalog has (catalog format v2: any column that is not a known one);
a product without a value for an attribute simply has no entry for it, so it is absent from that
facet (never counted as "unknown"). Each product also keeps all its images with their roles (the
main one is the one the vector index embeds; the others are recorded for later use) and the
product it is a variant of. Stores of schema version 1 (before images / variant_of) still open.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
ATTRIBUTE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
_CHUNK = 500  # ids per "IN (...)" query, well under SQLite's bound-parameter limit

_SCHEMA = """
CREATE TABLE products (
    row_id      INTEGER PRIMARY KEY,
    product_id  TEXT NOT NULL UNIQUE,
    title       TEXT NOT NULL,
    image_path  TEXT NOT NULL,
    popularity  REAL NOT NULL,
    attributes  TEXT NOT NULL,
    images      TEXT NOT NULL,
    variant_of  TEXT
);
CREATE TABLE product_attributes (
    name    TEXT NOT NULL,
    value   TEXT NOT NULL,
    row_id  INTEGER NOT NULL REFERENCES products(row_id),
    PRIMARY KEY (name, value, row_id)
) WITHOUT ROWID;
CREATE INDEX product_attributes_by_row ON product_attributes(row_id, name);
"""


class MetadataStoreError(RuntimeError):
    """The store cannot do what was asked; the message names the product or file concerned."""


class Product(BaseModel):
    """One catalog product. `row_id` is the id the vector index returns for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    row_id: int = Field(ge=0, le=2**63 - 1)
    product_id: str = Field(min_length=1, max_length=256)
    title: str = ""
    image_path: str = ""
    attributes: dict[str, tuple[str, ...]] = {}
    popularity: float = 0.0
    images: tuple[tuple[str, str], ...] = ()  # (path, role) of every image; the first is the main one
    variant_of: str | None = None

    @field_validator("attributes", mode="before")
    @classmethod
    def _normalise_attributes(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, tuple[str, ...]] = {}
        for name, values in value.items():
            if isinstance(values, str):
                values = (values,)
            if not isinstance(values, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"attribute {name!r}: values must be a string or a list of strings")
            if any(not v for v in values):
                raise ValueError(f"attribute {name!r}: empty values are not allowed (omit the attribute)")
            out[name] = tuple(sorted(set(values)))
        return out

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name in value:
            if not re.fullmatch(ATTRIBUTE_NAME_PATTERN, name):
                raise ValueError(f"attribute name {name!r} must match {ATTRIBUTE_NAME_PATTERN} (like facet names)")
        return value

    @field_validator("popularity")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("popularity must be finite")
        return value


class MetadataStore:
    """A SQLite product table. `create` builds a new file; `open` serves a finished one read-only.

    Thread-safe: one connection guarded by a lock (the search service calls it from a thread pool).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool, version: int = SCHEMA_VERSION) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self.version = version
        # Version 1 stores have no images / variant_of columns: read them as "main image only".
        self._v2_columns = "images, variant_of" if version >= 2 else "json_array(json_array(image_path, 'main')), NULL"
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path | str) -> Self:
        """A new, empty store at `path` (which must not exist), tuned for bulk loading.

        Durability is left to the caller (the bundle writer fsyncs the finished file); a crash mid-build
        leaves a file that nobody serves.
        """
        path = Path(path)
        if path.exists():
            raise MetadataStoreError(f"{path} already exists; a metadata store is built once, into a new file")
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=MEMORY")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return cls(conn, path, readonly=False)

    @classmethod
    def open(cls, path: Path | str) -> Self:
        """Open a finished store read-only (it is part of a checksummed bundle and must not change)."""
        path = Path(path)
        if not path.is_file():
            raise MetadataStoreError(f"{path}: no such metadata store")
        try:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise MetadataStoreError(f"{path}: not a readable SQLite metadata store: {err}") from err
        if version not in READABLE_VERSIONS:
            conn.close()
            raise MetadataStoreError(f"{path}: schema version {version}, this reader supports {READABLE_VERSIONS}")
        return cls(conn, path, readonly=True, version=version)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------

    def insert_many(self, products: Iterable[Product | Mapping[str, Any]], *, batch_size: int = 2000) -> int:
        """Insert products (validated if given as mappings), committing every `batch_size`; return count.

        A duplicate row_id or product_id fails its batch with a message naming the offenders; earlier
        batches stay committed (the bundle writer discards the whole file on failure anyway).
        """
        if self.readonly:
            raise MetadataStoreError(f"{self.path} is open read-only")
        total = 0
        batch: list[Product] = []
        for item in products:
            batch.append(item if isinstance(item, Product) else Product.model_validate(item))
            if len(batch) >= batch_size:
                total += self._insert_batch(batch)
                batch = []
        if batch:
            total += self._insert_batch(batch)
        return total

    def _insert_batch(self, batch: list[Product]) -> int:
        rows = [
            (p.row_id, p.product_id, p.title, p.image_path, p.popularity, json.dumps(p.attributes, sort_keys=True),
             json.dumps([list(im) for im in p.images], ensure_ascii=False), p.variant_of)
            for p in batch
        ]
        attrs = [(name, v, p.row_id) for p in batch for name, values in p.attributes.items() for v in values]
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                self._conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._conn.executemany("INSERT INTO product_attributes VALUES (?, ?, ?)", attrs)
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as err:
                self._conn.execute("ROLLBACK")
                raise MetadataStoreError(f"{self.path}: {self._describe_duplicates(batch) or err}") from err
        return len(batch)

    def _describe_duplicates(self, batch: list[Product]) -> str:
        """Name the offending ids (SQLite's IntegrityError only names the column)."""
        problems = []
        for field in ("row_id", "product_id"):
            values = [getattr(p, field) for p in batch]
            dups = sorted(v for v, n in Counter(values).items() if n > 1)
            existing = {
                r[0]
                for chunk in _chunks(sorted(set(values), key=str))
                for r in self._conn.execute(
                    f"SELECT {field} FROM products WHERE {field} IN ({_marks(len(chunk))})", chunk
                )
            }
            if dups:
                problems.append(f"duplicate {field} within the batch: {dups[:5]}")
            if existing:
                problems.append(f"{field} already stored: {sorted(existing, key=str)[:5]}")
        return "; ".join(problems)

    # -- reading -----------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM products").fetchone()[0]

    def row_ids(self) -> np.ndarray:
        """Every row id, ascending (the bundle writer checks them against the vector index)."""
        with self._lock:
            rows = self._conn.execute("SELECT row_id FROM products ORDER BY row_id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def get(self, row_ids: Sequence[int] | np.ndarray) -> list[Product | None]:
        """Products for `row_ids`, in the same order; None where a row id is unknown (or -1 padding)."""
        ids = [int(i) for i in np.asarray(row_ids, dtype=np.int64).reshape(-1)]
        found: dict[int, Product] = {}
        with self._lock:
            for chunk in _chunks(sorted(set(ids))):
                rows = self._conn.execute(
                    f"SELECT row_id, product_id, title, image_path, popularity, attributes, {self._v2_columns} "
                    f"FROM products WHERE row_id IN ({_marks(len(chunk))})",
                    chunk,
                )
                for row_id, product_id, title, image_path, popularity, attributes, images, variant_of in rows:
                    # Trusted data written by insert_many: skip re-validation on the hot path.
                    found[row_id] = Product.model_construct(
                        row_id=row_id,
                        product_id=product_id,
                        title=title,
                        image_path=image_path,
                        popularity=popularity,
                        attributes={k: tuple(v) for k, v in json.loads(attributes).items()},
                        images=tuple((path, role) for path, role in json.loads(images)),
                        variant_of=variant_of,
                    )
        return [found.get(i) for i in ids]

    def popularity(self, row_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Popularity per row id, aligned with `row_ids`; NaN for unknown ids."""
        ids = [int(i) for i in np.asarray(row_ids, dtype=np.int64).reshape(-1)]
        values: dict[int, float] = {}
        with self._lock:
            for chunk in _chunks(sorted(set(ids))):
                values.update(
                    self._conn.execute(
                        f"SELECT row_id, popularity FROM products WHERE row_id IN ({_marks(len(chunk))})", chunk
                    ).fetchall()
                )
        return np.array([values.get(i, np.nan) for i in ids], dtype=np.float64)

    def attribute_values(
        self, row_ids: Sequence[int] | np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, list[tuple[str, ...]]]:
        """For each attribute name, the values of each row id, aligned with `row_ids`.

        `{"color": [("red",), ("blue", "white"), ()], ...}`: the shape facet counting and post-filtering
        want. Unknown ids and absent attributes give empty tuples. `names=None` means every attribute.
        """
        ids = [int(i) for i in np.asarray(row_ids, dtype=np.int64).reshape(-1)]
        wanted = list(self.attribute_names() if names is None else dict.fromkeys(names))
        per_row: dict[tuple[str, int], list[str]] = {}
        if wanted:
            name_marks = _marks(len(wanted))
            with self._lock:
                for chunk in _chunks(sorted(set(ids))):
                    for name, value, row_id in self._conn.execute(
                        "SELECT name, value, row_id FROM product_attributes INDEXED BY product_attributes_by_row "
                        f"WHERE row_id IN ({_marks(len(chunk))}) AND name IN ({name_marks}) "
                        "ORDER BY row_id, name, value",
                        [*chunk, *wanted],
                    ):
                        per_row.setdefault((name, row_id), []).append(value)
        return {name: [tuple(per_row.get((name, i), ())) for i in ids] for name in wanted}

    def matching_ids(self, filters: Mapping[str, Iterable[str]]) -> np.ndarray:
        """Row ids (ascending) whose attributes match every filter: AND across names, OR within a name.

        `{"color": {"red", "burgundy"}, "category": {"dress"}}`. An empty filter mapping matches every
        product; a name with no values, or a name no product has, matches nothing.
        """
        clauses, params = [], []
        for name, values in filters.items():
            values = sorted(set([values] if isinstance(values, str) else values))
            if not values:
                return np.empty(0, dtype=np.int64)
            clauses.append(
                f"SELECT DISTINCT row_id FROM product_attributes WHERE name = ? AND value IN ({_marks(len(values))})"
            )
            params += [name, *values]
        sql = (
            " INTERSECT ".join(clauses) + " ORDER BY row_id"
            if clauses
            else "SELECT row_id FROM products ORDER BY row_id"
        )
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def first_values(self, name: str) -> tuple[np.ndarray, list[str]]:
        """(row ids ascending, value) of every product with attribute `name`, its first value in sorted
        order (what a single-valued facet column holds). One scan of the attribute table's primary key:
        the search engine's facet columns at start-up, ~100x faster at 1M products than row-id lookups."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT row_id, MIN(value) FROM product_attributes WHERE name = ? GROUP BY row_id ORDER BY row_id",
                (name,),
            ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), [r[1] for r in rows]

    def all_popularity(self) -> tuple[np.ndarray, np.ndarray]:
        """(row ids ascending, popularity) of every product, in one scan."""
        with self._lock:
            rows = self._conn.execute("SELECT row_id, popularity FROM products ORDER BY row_id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))

    def attribute_names(self) -> list[str]:
        """Every attribute name some product has, sorted (the facets a request may ask for)."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT name FROM product_attributes ORDER BY name")]

    def distinct_values(self, name: str) -> list[str]:
        """Every value of attribute `name`, sorted; empty for an unknown name."""
        with self._lock:
            return [
                r[0]
                for r in self._conn.execute(
                    "SELECT DISTINCT value FROM product_attributes WHERE name = ? ORDER BY value", (name,)
                )
            ]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
