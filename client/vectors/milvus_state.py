"""The JSON a saved Milvus index leaves in the bundle, and the content fingerprint `load` re-checks.

Why the data is *not* inside the bundle (the "external engine" mode): a FAISS bundle owns its vectors,
so checksumming every file under `<bundle>/index/` proves what will be served. A Milvus collection lives
in the engine: on a cluster the files are segments in object storage that Milvus compacts and rewrites
on its own schedule, and even Milvus Lite keeps its `.db` directory open and locked by one process (an
in-process server keyed by the absolute path), which does not survive the bundle writer renaming the
build directory, nor several serving replicas opening the same bundle. So `save()` writes one small JSON
file (connection info without secrets, collection name, dim, row count, and a *content fingerprint*:
the SHA-256 of a few evenly spaced stored rows); the bundle checksums that file, and `load()` re-checks
the collection against it (schema, exact row count, fingerprint). That plays the role the file
checksums play for FAISS: a dropped, refilled or foreign collection is refused, not served. Each build
writes a NEW collection (`bundle_collection_name`), so blue-green publishing still holds: the served
bundle's collection is never written to; deleting collections of collected bundles is the operator's
(or a GC job's) call, `MilvusIndex.drop()`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lenscope.client.vectors.contract import IndexFormatError
from lenscope.client.vectors.milvus_config import MilvusIndexConfig
from lenscope.client.vectors.milvus_schema import ID_FIELD, SEQ_FIELD, VECTOR_FIELD

SAVE_FORMAT_VERSION = 1
STATE_FILE = "milvus_index.json"
FINGERPRINT_ROWS = 16


class Fingerprint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seqs: list[int]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SavedState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    dim: int = Field(ge=1)
    ntotal: int = Field(ge=0)
    config: MilvusIndexConfig
    fingerprint: Fingerprint


def read_state(state_path: Path) -> SavedState:
    """The saved state in `state_path`; IndexFormatError when unreadable, of another format version,
    invalid, or without a collection name."""
    try:
        raw = json.loads(state_path.read_text())
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"{state_path}: cannot read the index state: {err}") from err
    if not isinstance(raw, dict) or raw.get("format_version") != SAVE_FORMAT_VERSION:
        version = raw.get("format_version") if isinstance(raw, dict) else None
        raise IndexFormatError(
            f"{state_path}: format_version {version!r} is not the supported {SAVE_FORMAT_VERSION}"
        )
    try:
        state = SavedState.model_validate(raw)
    except ValidationError as err:
        raise IndexFormatError(f"{state_path}: {err}") from err
    if state.config.collection is None:
        raise IndexFormatError(f"{state_path}: config.collection is missing")
    return state


def collection_fingerprint(
    query: Callable[[str, list[str]], list[dict]], n: int, seqs: list[int] | None = None
) -> Fingerprint:
    """SHA-256 over (seq, id, vector bytes) of evenly spaced rows: detects a collection whose content
    is not what was saved (refilled, or another build's) at the cost of one small query.

    `query(expr, fields)` returns the collection's rows matching a Milvus expression; `n` is its row
    count, from which the sample `seqs` are chosen unless given (as saved).
    """
    if seqs is None:
        seqs = sorted({int(s) for s in np.linspace(0, n - 1, num=min(FINGERPRINT_ROWS, n))})
    digest = hashlib.sha256()
    if seqs:
        rows = query(f"{SEQ_FIELD} in [{', '.join(map(str, seqs))}]", [ID_FIELD, SEQ_FIELD, VECTOR_FIELD])
        for r in sorted(rows, key=lambda r: (r[SEQ_FIELD], r[ID_FIELD])):
            digest.update(np.asarray([r[SEQ_FIELD], r[ID_FIELD]], dtype="<i8").tobytes())
            digest.update(np.asarray(r[VECTOR_FIELD], dtype="<f4").tobytes())
    return Fingerprint(seqs=seqs, sha256=digest.hexdigest())
