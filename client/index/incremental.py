"""Incremental builds: reuse the stored embeddings of catalog rows whose content did not change.

Every bundle stores ``row_keys.json``: per row id, a content key (SHA-256 over the model hash, the
product id, the title, the attributes and the bytes of the catalog image and the user photo: every
input of the row's vectors, and nothing else). A build into a root whose served version was
embedded by the same model computes the new catalog's keys, takes the vectors of every row whose
key the previous version holds (image from its index, title / photo / attribute-head arrays from
its attachments), embeds only the other rows through Triton, and drops what left the catalog. The
ANN structure is then rebuilt from the vectors, and metadata always comes from the new catalog
(so a changed popularity or variant needs no embedding).

A full build happens instead, and says why, when: ``--full`` is given, nothing is published yet,
the served version was embedded by another model (vectors of two models are not comparable), or
it predates row keys or lacks an attachment this model produces. Either vector backend can be
the source (FAISS: its index file; Milvus: the served collection, read by row id) and the target
(FAISS: a new index; Milvus: a new collection behind the alias, index/milvus_versions.py).

The ranking fit (calibration, fusion weights, per-query-type policy) is refitted only when the data
moved enough: more than ``refit_fraction`` of the rows embedded anew or removed (see
`should_refit`). Below that the previous version's fit is kept and the bundle says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lenscope.client.index.bundle import BundleError, IndexBundle, ModelVersionMismatch
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.index.embedder import EmbeddedChunk, ModelInfo
from lenscope.client.index.file_digests import FILE_DIGESTS, FileDigests
from lenscope.client.index.reader import Reject, SourceRow
from lenscope.client.vectors.cell_index import ASSIGNMENT_ATTACHMENT, CENTROIDS_ATTACHMENT
from lenscope.client.index.writer import (ATTR_PROBS_PREFIX, CALIBRATION, FUSION, INDEX_INFO, PHOTO_VECTORS,
                                          RANKING_POLICY, REJECTS, ROW_KEYS, TITLE_VECTORS)

if TYPE_CHECKING:
    from lenscope.client.index.ranking_setup import RankingSetup

DEFAULT_REFIT_FRACTION = 0.05  # share of rows embedded anew or removed above which the fit is redone


def row_key(root: Path, s: SourceRow, model: ModelInfo, *, allow_outside: bool = False,
            digests: FileDigests | None = None) -> str:
    """Content key of one row's embeddings: same key, same vectors (under the same model).

    Image bytes are read through the job's own bounded reader (regular files inside the catalog's
    folder, at most the model's size limit), so a hostile path can no more hang this than the embedder;
    `digests` skips re-reading files whose stat proves them unchanged since the last build
    (index/file_digests.py), with the same key either way."""
    r = s.row
    h = hashlib.sha256()
    attributes = json.dumps(dict(sorted(r.attributes.items())), sort_keys=True, ensure_ascii=False, default=str)
    for part in (model.model_hash, r.product_id, r.title, attributes):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    digests = digests if digests is not None else FileDigests()
    for rel in (r.image, r.photo):
        h.update((rel or "-").encode("utf-8", "surrogatepass") + b"\0")
        if rel is None:
            continue
        digest, reason = digests.digest(root, rel, max_bytes=model.max_image_bytes, allow_outside=allow_outside)
        h.update(digest if digest is not None else f"unreadable:{reason}".encode())
    return h.hexdigest()


def row_keys(root: Path, rows: Sequence[SourceRow], model: ModelInfo, *, allow_outside: bool = False,
             digests: FileDigests | None = None) -> list[str]:
    return [row_key(root, s, model, allow_outside=allow_outside, digests=digests) for s in rows]


@dataclass
class Previous:
    """The served version's vectors by row id, and what identifies them."""

    version: str
    keys: list[str]
    image: np.ndarray
    title: np.ndarray
    photo: np.ndarray | None
    attributes: dict[str, np.ndarray]
    product_ids: list[str]
    kept_rejects: dict[str, list[Reject]]  # product id -> problems that did not drop the row (photos)
    ranking_files: dict[str, bytes]  # calibration.json / fusion.json / ranking_policy.json as stored
    ranking_info: dict[str, Any] | None
    digests: FileDigests = field(default_factory=FileDigests)  # image files hashed by that build
    title_cells: tuple[np.ndarray, np.ndarray] | None = None  # stored title cell layout (centroids, cell per row)

    def title_cells_by_key(self) -> tuple[np.ndarray, dict[str, int]] | None:
        """The stored layout as (centroids, content key -> cell), for the new version's reused rows."""
        if self.title_cells is None:
            return None
        centroids, cells = self.title_cells
        return centroids, {k: int(c) for k, c in zip(self.keys, cells.tolist())}


def load_previous(index_root: Path, model: ModelInfo, *,
                  index_options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Previous | None, str]:
    """(the served version, "") or (None, why the build must be a full one).

    The served version may keep its vectors in FAISS (inside the bundle) or in a Milvus collection
    (`index_options` says where this process reaches it); they are read back either way, and the
    new version gets its own index or collection: the served one is never written to."""
    store = BundleStore(index_root)
    if store.current_version() is None:
        return None, "nothing published yet"
    try:
        bundle = store.open_current(expected_model_hash=model.model_hash, fallback=False, index_options=index_options)
    except ModelVersionMismatch:
        return None, "the served version was embedded by another model (a model change always means a full build)"
    except BundleError as err:
        return None, f"the served version cannot be reused: {err}"
    except ConnectionError as err:  # its Milvus is unreachable from here (MilvusConnectionError)
        return None, f"the served version's vectors cannot be read: {err}"
    with bundle:
        return _read(bundle, model)


def _read(bundle: IndexBundle, model: ModelInfo) -> tuple[Previous | None, str]:
    raw = bundle.read_attachment(ROW_KEYS)
    if raw is None:
        return None, f"version {bundle.version} has no {ROW_KEYS} (built before incremental builds)"
    keys = json.loads(raw)
    ids = bundle.metadata.row_ids()
    n = len(keys)
    if ids.size != n or (n and (ids[0] != 0 or ids[-1] != n - 1)):
        return None, f"version {bundle.version}: {ROW_KEYS} does not cover row ids 0..{n - 1}"
    title = bundle.load_array(TITLE_VECTORS)
    if title is None:
        return None, f"version {bundle.version} has no title vectors"
    attributes = {}
    for name in model.attributes:
        probs = bundle.load_array(ATTR_PROBS_PREFIX + name)
        if probs is None:
            return None, f"version {bundle.version} has no attribute probabilities for {name!r}"
        attributes[name] = np.asarray(probs, dtype=np.float32)
    photo = bundle.load_array(PHOTO_VECTORS)
    products = bundle.metadata.get(ids)
    kept: dict[str, list[Reject]] = {}
    for line in (bundle.read_attachment(REJECTS) or b"").decode().splitlines():
        if line.strip():
            r = Reject.from_json(json.loads(line))
            if r.kept and r.product_id is not None:
                kept.setdefault(r.product_id, []).append(r)
    files = {name: data for name in (CALIBRATION, FUSION, RANKING_POLICY)
             if (data := bundle.read_attachment(name)) is not None}
    info = json.loads(bundle.read_attachment(INDEX_INFO) or b"{}")
    return Previous(
        version=bundle.version, keys=keys, image=np.asarray(bundle.index.get_vectors(ids), dtype=np.float32),
        title=np.asarray(title, dtype=np.float32), photo=None if photo is None else np.asarray(photo, np.float32),
        attributes=attributes, product_ids=[p.product_id if p else "" for p in products],
        kept_rejects=kept, ranking_files=files, ranking_info=info.get("ranking"),
        digests=FileDigests.load(bundle.read_attachment(FILE_DIGESTS)),
        title_cells=_stored_title_cells(bundle, n),
    ), ""


def _stored_title_cells(bundle: IndexBundle, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    centroids, cells = (bundle.load_array(name) for name in (CENTROIDS_ATTACHMENT, ASSIGNMENT_ATTACHMENT))
    if centroids is None or cells is None or np.shape(cells) != (n,):
        return None
    return np.asarray(centroids, dtype=np.float32), np.asarray(cells, dtype=np.int32)


@dataclass
class Plan:
    """Which rows of the new catalog reuse which stored row, and which must be embedded."""

    reuse_positions: np.ndarray  # positions (SourceRow.position) of rows taken from the previous version
    reuse_rows: np.ndarray  # their previous row ids
    embed: list[SourceRow]  # rows to embed
    removed: int  # previous products no longer in the catalog
    changed: int  # rows embedded anew whose product id the previous version had
    counts: dict[str, int] = field(default_factory=dict)


def plan(rows: Sequence[SourceRow], keys: Sequence[str], prev: Previous) -> Plan:
    by_key = {k: i for i, k in enumerate(prev.keys)}
    reuse_pos, reuse_rows, embed = [], [], []
    for s, k in zip(rows, keys):
        i = by_key.get(k)
        if i is None:
            embed.append(s)
        else:
            reuse_pos.append(s.position)
            reuse_rows.append(i)
    new_ids = {s.row.product_id for s in rows}
    old_ids = set(prev.product_ids)
    removed = len(old_ids - new_ids)
    changed = sum(1 for s in embed if s.row.product_id in old_ids)
    p = Plan(np.asarray(reuse_pos, np.int64), np.asarray(reuse_rows, np.int64), embed, removed, changed)
    p.counts = {"reused": len(reuse_pos), "embedded": len(embed), "changed": changed,
                "added": len(embed) - changed, "removed": removed, "previous_rows": len(prev.keys)}
    return p


def reused_chunk(p: Plan, prev: Previous, rows: Sequence[SourceRow], dim: int) -> EmbeddedChunk:
    """The reused rows as one embedded chunk (positions in the new catalog, vectors from the old)."""
    rr = p.reuse_rows
    photo = prev.photo[rr] if prev.photo is not None else np.full((rr.size, dim), np.nan, np.float32)
    by_position = {s.position: s for s in rows}
    rejects = [Reject(by_position[int(pos)].line, r.product_id, r.reason, r.message, kept=True)
               for pos in p.reuse_positions.tolist()
               for r in prev.kept_rejects.get(by_position[int(pos)].row.product_id, ())]
    return EmbeddedChunk(index=-1, positions=p.reuse_positions, image=prev.image[rr], title=prev.title[rr],
                         photo=photo, attributes={a: v[rr] for a, v in prev.attributes.items()}, rejects=rejects)


def should_refit(p: Plan, refit_fraction: float) -> tuple[bool, str]:
    """Refit the ranking only when enough of the catalog moved: the fit's held-out numbers were
    measured on the previous rows, and a few changed rows cannot move them meaningfully."""
    moved = p.counts["embedded"] + p.counts["removed"]
    share = moved / max(p.counts["previous_rows"], 1)
    if share > refit_fraction:
        return True, f"{share:.1%} of rows embedded anew or removed (> {refit_fraction:.0%}): ranking refitted"
    return False, f"{share:.1%} of rows embedded anew or removed (<= {refit_fraction:.0%}): previous fit kept"


def previous_ranking(prev: Previous, reason: str) -> "RankingSetup | None":
    """The previous version's ranking files, kept as they were (None: it had none, refit instead)."""
    from lenscope.client.index.ranking_setup import RankingSetup
    from lenscope.client.ranking.calibration import CalibrationSet
    from lenscope.client.ranking.fusion import FusionWeights
    from lenscope.client.ranking.policy import RankingPolicy

    files = prev.ranking_files
    if FUSION not in files or RANKING_POLICY not in files or prev.ranking_info is None:
        return None
    calibration = CalibrationSet.model_validate_json(files[CALIBRATION]) if CALIBRATION in files else None
    info = {**prev.ranking_info, "kept_from": prev.version, "kept_because": reason}
    return RankingSetup(FusionWeights.model_validate_json(files[FUSION]), calibration,
                        RankingPolicy.model_validate_json(files[RANKING_POLICY]), info)
