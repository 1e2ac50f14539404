"""Index bundles: the vector index + raw vectors + metadata store of one catalog build, versioned by the
model that embedded it.

One bundle directory holds:

    bundle.json        manifest: model hash, dim, counts, config, checksums
    metadata.sqlite
    index/...          whatever the backend's save() wrote
    attachments/...    files stored with the build (calibration, fusion weights, arrays)

This module reads them: the manifest models, `open_bundle` (model check, sizes and SHA-256
checksums, then the index and metadata with their counts) and the `IndexBundle` it returns.
Embeddings from different models are not comparable, so every bundle records the model manifest
hash and opening it for another model is refused, not silently served. Writing and publishing
bundles into a versioned root lives in `bundle_store`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lenscope.client.core.durable_files import file_sha256  # noqa: F401 - bundle_store and tests import it from here
from lenscope.client.index.metadata import MetadataStore, MetadataStoreError
from lenscope.client.vectors.contract import IndexFormatError, VectorIndex

FORMAT_VERSION = 1
MANIFEST_FILE = "bundle.json"
METADATA_FILE = "metadata.sqlite"
INDEX_DIR = "index"
ATTACHMENTS_DIR = "attachments"

# Backend name (recorded in the manifest) -> "module:Class", imported only when a bundle needs it, so
# e.g. pymilvus is only required by deployments that use the Milvus backend.
INDEX_BACKENDS: dict[str, str] = {
    "faiss": "lenscope.client.vectors.faiss_index:FaissIndex",
    "milvus": "lenscope.client.vectors.milvus_index:MilvusIndex",
}


class BundleError(RuntimeError):
    """A bundle that cannot be served (missing, incomplete, inconsistent); the message names the path."""


class BundleCorrupt(BundleError):
    """A bundle file whose content no longer matches the checksum recorded when it was published."""


class ModelVersionMismatch(RuntimeError):
    """The bundle was embedded by a different model than the caller's: its vectors are not comparable.

    Deliberately not a BundleError: the fallback loader must not paper over it by serving an old version.
    """

    def __init__(self, bundle_hash: str, expected_hash: str, where: str) -> None:
        self.bundle_hash = bundle_hash
        self.expected_hash = expected_hash
        super().__init__(
            f"{where} was built for model manifest {bundle_hash!r}, but the caller expects model manifest "
            f"{expected_hash!r}: embeddings of different models are not comparable. Rebuild the index with "
            "this model (`lenscope index build`) or serve the model version the index was built with."
        )


class FileChecksum(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class BundleCounts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vectors: int = Field(ge=0)
    products: int = Field(ge=0)


class BundleManifest(BaseModel):
    """`bundle.json`: what was built, for which model, and the checksum of every other file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    bundle_id: str = Field(min_length=1)
    model_manifest_hash: str = Field(min_length=1, max_length=256)
    embedding_dim: int = Field(ge=1)
    counts: BundleCounts
    index_backend: str
    index_config: dict[str, Any]
    created_at: datetime
    files: dict[str, FileChecksum]


@dataclass
class IndexBundle:
    """An opened bundle: the index and metadata to serve, and the manifest describing them."""

    path: Path
    manifest: BundleManifest
    index: VectorIndex
    metadata: MetadataStore
    fallback_reason: str | None = None  # set when BundleStore.open_current served an older version

    @property
    def version(self) -> str:
        return self.manifest.bundle_id

    @property
    def model_manifest_hash(self) -> str:
        return self.manifest.model_manifest_hash

    def require_model(self, model_manifest_hash: str) -> None:
        """Refuse queries embedded by another model version (call with the hash the embedder reports)."""
        if model_manifest_hash != self.manifest.model_manifest_hash:
            raise ModelVersionMismatch(
                self.manifest.model_manifest_hash, model_manifest_hash, f"index bundle {self.version}"
            )

    def attachment_path(self, name: str) -> Path | None:
        """A file stored with the bundle (checksummed like every other file), or None."""
        path = self.path / ATTACHMENTS_DIR / name
        return path if path.is_file() else None

    def read_attachment(self, name: str) -> bytes | None:
        path = self.attachment_path(name)
        return path.read_bytes() if path else None

    def load_array(self, name: str) -> np.ndarray | None:
        """A numpy array attachment, memory-mapped read-only (e.g. title embeddings by row id)."""
        path = self.attachment_path(name + ".npy")
        return np.load(path, mmap_mode="r") if path else None

    def close(self) -> None:
        self.metadata.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading ---------------------------------------------------------------------------------------


def read_manifest(path: Path) -> BundleManifest:
    """Parse `<path>/bundle.json`, refusing formats this reader does not know."""
    manifest_path = Path(path) / MANIFEST_FILE
    try:
        raw = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise BundleError(f"{path} is not an index bundle: {MANIFEST_FILE} is missing") from err
    except (OSError, ValueError) as err:
        raise BundleError(f"{manifest_path}: unreadable: {err}") from err
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        version = raw.get("format_version") if isinstance(raw, dict) else None
        raise BundleError(f"{manifest_path}: format_version {version!r}; this reader supports {FORMAT_VERSION}")
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as err:
        raise BundleError(f"{manifest_path}: invalid manifest: {err}") from err


def open_bundle(path: Path | str, *, expected_model_hash: str | None, verify_checksums: bool = True,
                index_options: Mapping[str, Mapping[str, Any]] | None = None) -> IndexBundle:
    """Open one bundle directory for serving.

    Order matters: the model hash is checked before any file is hashed (a mismatch is cheap to report
    and no amount of file checking makes the vectors usable), then sizes and SHA-256 checksums, then
    the index and metadata are opened and their counts compared with the manifest.
    `expected_model_hash=None` skips the model check (inspection tools only). `index_options` maps a
    backend name to keyword options of its `load` (e.g. where a Milvus collection is read from at serve
    time); only the bundle's own backend's entry is used.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if expected_model_hash is not None and manifest.model_manifest_hash != expected_model_hash:
        raise ModelVersionMismatch(manifest.model_manifest_hash, expected_model_hash, f"index bundle {path}")
    verify_files(path, manifest, checksums=verify_checksums)
    try:
        options = dict((index_options or {}).get(manifest.index_backend) or {})
        index = backend_class(manifest.index_backend).load(path / INDEX_DIR, **options)
    except IndexFormatError as err:
        raise BundleError(f"{path}: vector index unusable: {err}") from err
    if index.dim != manifest.embedding_dim or index.ntotal != manifest.counts.vectors:
        raise BundleError(
            f"{path}: index holds {index.ntotal} x {index.dim}, manifest says "
            f"{manifest.counts.vectors} x {manifest.embedding_dim}"
        )
    try:  # a FAISS file damaged in a way its checksum cannot show (rewritten manifest, bad disk + cache) fails
        if manifest.index_backend == "faiss":  # here, as a BundleError naming it, not as a RuntimeError mid-query
            probe_search(index)
    except BundleError as err:
        raise BundleCorrupt(f"{path / INDEX_DIR}: {err}") from err
    except (RuntimeError, ValueError, IndexError) as err:
        raise BundleCorrupt(f"{path / INDEX_DIR}: the vector index fails a probe search ({err}); "
                            "rebuild or restore this version") from err
    try:
        metadata = MetadataStore.open(path / METADATA_FILE)
        products = metadata.count()
    except (MetadataStoreError, OSError) as err:
        raise BundleError(f"{path}: metadata store unusable: {err}") from err
    if products != manifest.counts.products:
        metadata.close()
        raise BundleError(f"{path}: metadata holds {products} products, manifest says {manifest.counts.products}")
    return IndexBundle(path=path, manifest=manifest, index=index, metadata=metadata)


def verify_files(path: Path, manifest: BundleManifest, *, checksums: bool = True) -> None:
    """Every file the manifest lists exists with its size (and, with `checksums`, its SHA-256)."""
    for rel, expected in sorted(manifest.files.items()):
        file = path / rel
        try:
            size = file.stat().st_size
        except FileNotFoundError as err:
            raise BundleError(f"{path}: {rel} is missing (listed in {MANIFEST_FILE})") from err
        if size != expected.size:
            raise BundleCorrupt(f"{file}: size {size} bytes, but {expected.size} were published")
        if checksums and (actual := file_sha256(file)) != expected.sha256:
            raise BundleCorrupt(
                f"{file}: checksum mismatch (sha256 {actual[:16]}..., published {expected.sha256[:16]}...): "
                "the file changed or was damaged after publishing"
            )


def backend_class(name: str) -> type[VectorIndex]:
    try:
        module, _, cls = INDEX_BACKENDS[name].partition(":")
    except KeyError as err:
        raise BundleError(f"unknown index backend {name!r}; known: {sorted(INDEX_BACKENDS)}") from err
    return getattr(importlib.import_module(module), cls)


def probe_search(index: VectorIndex, probes: int = 8) -> None:
    """Search for a few stored vectors: each must come back as its own best match (score ~ 1).

    A hit with the same score counts (duplicate vectors); a majority is required so one unlucky ANN
    miss does not block a publish, while a broken index (wrong id mapping, untrained) always does.
    """
    if index.ntotal == 0:
        return
    ids = index.stored_ids()
    pick = ids[np.linspace(0, ids.size - 1, num=min(probes, ids.size)).astype(np.int64)]
    vectors = index.get_vectors(pick)
    self_scores = np.einsum("ij,ij->i", vectors, vectors)
    result = index.search(vectors, min(10, index.ntotal))
    if not np.isfinite(result.scores[:, 0]).all():
        raise BundleError("probe search returned no hits")
    found = (result.ids[:, 0] == pick) | (np.abs(result.scores[:, 0] - self_scores) < 1e-5)
    if found.mean() < 0.5:
        raise BundleError(
            f"probe search found only {int(found.sum())} of {pick.size} stored vectors as their own best match"
        )
    if (result.scores[:, 0] > self_scores + 1e-4).any():
        raise BundleError("probe search scored a hit above the query's own inner product: scores are not exact")
