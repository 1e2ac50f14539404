"""The versioned bundle root: publishing index bundles with an atomic blue-green swap, opening the
served one (with fallback), and collecting old versions.

Layout under a bundle root:

    <root>/versions/<bundle-id>/bundle.json        one bundle (see `bundle`)
    <root>/versions/<bundle-id>.tmp/               a build in progress (or a crashed one)
    <root>/current -> versions/<bundle-id>         the served version (a relative symlink)

Why this shape: a build writes only into its own `.tmp` directory, is fsynced and verified (loaded,
counted, checksummed, probe-searched) there, and becomes visible through two atomic renames: the
directory into `versions/`, then a new symlink over `current`. A writer killed at any point leaves
`current` pointing at a complete, verified version, and the next writer deletes the debris. Readers
never see a half-written file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np

from lenscope.client.core.durable_files import fsync_dir, fsync_tree, try_lock, unlock
from lenscope.client.index.bundle import (
    ATTACHMENTS_DIR,
    FORMAT_VERSION,
    INDEX_BACKENDS,
    INDEX_DIR,
    MANIFEST_FILE,
    METADATA_FILE,
    BundleCounts,
    BundleError,
    BundleManifest,
    FileChecksum,
    IndexBundle,
    ModelVersionMismatch,
    file_sha256,
    open_bundle,
    probe_search,
)
from lenscope.client.index.metadata import MetadataStore, Product
from lenscope.client.vectors.contract import VectorIndex

log = logging.getLogger(__name__)

_ATTACHMENT_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
VERSIONS_DIR = "versions"
CURRENT_LINK = "current"
TMP_SUFFIX = ".tmp"
LOCK_FILE = ".publish.lock"


class BundleStore:
    """A directory of bundle versions with a `current` symlink: publish, open (with fallback), collect."""

    def __init__(self, root: Path | str, *, keep_versions: int = 3) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1; got {keep_versions}")
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.versions_dir = self.root / VERSIONS_DIR

    def versions(self) -> list[str]:
        """Published (complete) version ids, oldest first. `.tmp` builds are never listed."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.versions_dir.iterdir()
            if p.is_dir() and not p.name.endswith(TMP_SUFFIX) and not p.name.startswith(".")
        )

    def current_version(self) -> str | None:
        try:
            target = os.readlink(self.root / CURRENT_LINK)
        except FileNotFoundError:
            return None
        return Path(target).name

    def open_current(
        self, *, expected_model_hash: str | None, fallback: bool = True, verify_checksums: bool = True,
        index_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> IndexBundle:
        """Open the served version; if it is damaged and `fallback`, the newest older version that opens.

        A model mismatch on `current` is raised, never fallen back from: serving an older index built by
        the caller's model might look right but would silently be a stale catalog. Older versions built
        for another model are skipped. The returned bundle's `fallback_reason` says what happened.
        """
        current = self.current_version()
        if current is None:
            raise BundleError(f"{self.root}: nothing published yet (no {CURRENT_LINK} link); build an index first")
        try:
            return open_bundle(
                self.versions_dir / current, expected_model_hash=expected_model_hash, verify_checksums=verify_checksums,
                index_options=index_options,
            )
        except BundleError as err:
            if not fallback:
                raise
            failure = err
        for older in reversed([v for v in self.versions() if v < current]):
            try:
                bundle = open_bundle(
                    self.versions_dir / older,
                    expected_model_hash=expected_model_hash,
                    verify_checksums=verify_checksums,
                    index_options=index_options,
                )
            except (BundleError, ModelVersionMismatch) as err:
                log.warning("fallback candidate %s unusable: %s", older, err)
                continue
            bundle.fallback_reason = f"current version {current} unusable ({failure}); serving {older}"
            log.error("index bundle fallback: %s", bundle.fallback_reason)
            return bundle
        raise BundleError(f"current version {current} unusable and no older version is usable: {failure}") from failure

    def writer(self, *, model_manifest_hash: str, index: VectorIndex, allow_empty: bool = False) -> BundleWriter:
        """Start a build: takes the publish lock, clears crashed builds, creates `versions/<id>.tmp`.

        `index` may be empty (fill it through `writer.index`) or already built in memory.
        """
        return BundleWriter(self, model_manifest_hash=model_manifest_hash, index=index, allow_empty=allow_empty)

    def publish(
        self,
        *,
        model_manifest_hash: str,
        index: VectorIndex,
        products: Iterable[Product | Mapping[str, Any]],
        allow_empty: bool = False,
    ) -> str:
        """Build, verify and switch to a bundle in one call; returns the new version id."""
        with self.writer(model_manifest_hash=model_manifest_hash, index=index, allow_empty=allow_empty) as w:
            w.metadata.insert_many(products)
        assert w.bundle_id is not None
        return w.bundle_id

    def collect_garbage(self) -> list[str]:
        """Delete versions beyond the newest `keep_versions` (never `current`); return what was removed.

        Only runs under the publish lock (from a writer), so no live build is mistaken for debris.
        """
        current = self.current_version()
        keep = set(self.versions()[-self.keep_versions :]) | {current}
        removed = []
        for version in self.versions():
            if version not in keep:
                shutil.rmtree(self.versions_dir / version, ignore_errors=True)
                removed.append(version)
        if removed:
            fsync_dir(self.versions_dir)
        return removed

    def _remove_debris(self) -> list[str]:
        """Builds and link swaps whose writer died (callers hold the lock, so none is live)."""
        removed = []
        if self.versions_dir.is_dir():
            for p in self.versions_dir.iterdir():
                if p.name.endswith(TMP_SUFFIX):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        for p in self.root.glob(f".{CURRENT_LINK}.*"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
        return removed

    def _switch_current(self, bundle_id: str) -> None:
        """Point `current` at a version atomically: new symlink under a temp name, then rename over."""
        tmp_link = self.root / f".{CURRENT_LINK}.{os.getpid()}.{secrets.token_hex(4)}"
        os.symlink(os.path.join(VERSIONS_DIR, bundle_id), tmp_link)
        os.replace(tmp_link, self.root / CURRENT_LINK)
        fsync_dir(self.root)


class BundleWriter:
    """One build in progress. Use as a context manager: a clean exit publishes, an exception discards.

    Fill `writer.index` (a VectorIndex) and `writer.metadata` (a MetadataStore in the build directory),
    or call `commit()` / `abort()` yourself.
    """

    def __init__(self, store: BundleStore, *, model_manifest_hash: str, index: VectorIndex, allow_empty: bool) -> None:
        if not isinstance(model_manifest_hash, str) or not model_manifest_hash.strip():
            raise ValueError("model_manifest_hash must be a non-empty string (the export manifest's hash)")
        if index.backend not in INDEX_BACKENDS:
            raise ValueError(f"index backend {index.backend!r} is not registered in INDEX_BACKENDS")
        self.store = store
        self.model_manifest_hash = model_manifest_hash
        self.index = index
        self.allow_empty = allow_empty
        self.bundle_id: str | None = None
        store.versions_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _acquire_lock(store.root / LOCK_FILE)
        try:
            for name in store._remove_debris():
                log.info("removed a crashed build's leftover %s", name)
            self._id = _new_bundle_id(model_manifest_hash)
            self.path = store.versions_dir / f"{self._id}{TMP_SUFFIX}"
            self.path.mkdir()
            self.metadata = MetadataStore.create(self.path / METADATA_FILE)
        except BaseException:
            unlock(self._lock_fd)
            raise
        self._done = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def attach(self, name: str, data: bytes) -> Path:
        """Store a file with this build (calibration, fusion weights, ...): checksummed, swapped atomically."""
        if not _ATTACHMENT_NAME.match(name):
            raise ValueError(f"attachment name {name!r} must match {_ATTACHMENT_NAME.pattern}")
        path = self.path / ATTACHMENTS_DIR / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path

    def attach_array(self, name: str, array: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return self.attach(name + ".npy", buf.getvalue())

    def commit(self) -> str:
        """Save, checksum, fsync, verify, rename into place, switch `current`, collect old versions."""
        if self._done:
            raise BundleError("this writer already finished")
        try:
            self.metadata.close()
            self.index.save(self.path / INDEX_DIR)
            manifest = self._write_manifest()
            fsync_tree(self.path)
            self._verify(manifest)
            final = self.store.versions_dir / self._id
            os.rename(self.path, final)
            fsync_dir(self.store.versions_dir)
            self.store._switch_current(self._id)
        except BaseException:
            self.abort()
            raise
        self.bundle_id = self._id
        self._done = True
        try:
            for version in self.store.collect_garbage():
                log.info("removed old index version %s", version)
        finally:
            unlock(self._lock_fd)
        return self._id

    def abort(self) -> None:
        """Discard the build; `current` is untouched."""
        if self._done:
            return
        self._done = True
        try:
            self.metadata.close()
        except Exception:  # noqa: BLE001 - already closed or broken; the directory goes anyway
            pass
        shutil.rmtree(self.path, ignore_errors=True)
        unlock(self._lock_fd)

    def _write_manifest(self) -> BundleManifest:
        files = {
            p.relative_to(self.path).as_posix(): FileChecksum(sha256=file_sha256(p), size=p.stat().st_size)
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE
        }
        with MetadataStore.open(self.path / METADATA_FILE) as metadata:
            products = metadata.count()
        manifest = BundleManifest(
            format_version=FORMAT_VERSION,
            bundle_id=self._id,
            model_manifest_hash=self.model_manifest_hash,
            embedding_dim=self.index.dim,
            counts=BundleCounts(vectors=self.index.ntotal, products=products),
            index_backend=self.index.backend,
            index_config=self.index.config.model_dump(mode="json"),
            created_at=datetime.now(UTC),
            files=files,
        )
        (self.path / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        return manifest

    def _verify(self, manifest: BundleManifest) -> None:
        """Open the build the way a server will, then check it answers sensibly before anyone sees it."""
        if manifest.counts.vectors == 0 and not self.allow_empty:
            raise BundleError("refusing to publish an empty index (pass allow_empty=True if that is intended)")
        if manifest.counts.vectors != manifest.counts.products:
            raise BundleError(
                f"index has {manifest.counts.vectors} vectors but metadata has {manifest.counts.products} products"
            )
        with open_bundle(self.path, expected_model_hash=self.model_manifest_hash) as bundle:
            index_ids = np.sort(bundle.index.stored_ids())
            missing = np.setdiff1d(index_ids, bundle.metadata.row_ids(), assume_unique=True)
            if missing.size:
                raise BundleError(f"{missing.size} indexed ids have no metadata row, e.g. {missing[:5].tolist()}")
            if bundle.manifest.index_backend != "faiss":  # open_bundle probes FAISS indexes itself
                probe_search(bundle.index)


# -- filesystem plumbing ---------------------------------------------------------------------------


def _new_bundle_id(model_manifest_hash: str) -> str:
    """Sortable by creation time, tagged with the model for humans reading `ls versions/`."""
    tag = re.sub(r"[^0-9A-Za-z]", "", model_manifest_hash.split(":")[-1])[:12] or "model"
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{tag}-{secrets.token_hex(3)}"


def _acquire_lock(path: Path) -> int:
    """Exclusive publish lock; the kernel drops it when the holder dies, so a killed writer never wedges it."""
    fd = try_lock(path)
    if fd is None:
        raise BundleError(f"another index publish holds {path}; wait for it to finish")
    return fd
