"""Checkpoints of the indexing job: embedded chunks on disk, so a killed or stopped job resumes.

Layout, under the index root (next to the published bundles, never inside one)::

    <index_root>/.work/<catalog sha256[:16]>-<model hash[:16]>[-<splits tag>]/
        state.json          what this work dir is for (catalog, model, chunk size, row count) + progress
        chunk-000000.npz    one embedded chunk: accepted positions, vectors, head probabilities, rejects
        ...

Why this shape: the key names exactly the inputs that decide the vectors (catalog bytes, model),
so a rerun of the same build finds its chunks and a build of another catalog or model never
reuses them. Chunk k always covers rows [k * chunk_size, (k+1) * chunk_size) of the catalog's
indexable rows; the chunk size is fixed when the work dir is created (a rerun with another
--batch-size keeps it). A chunk file appears by atomic rename after fsync, so it is complete or
absent; the files are the truth, `state.json` is progress for humans. A chunk whose image files
changed on disk since (size/mtime fingerprint), or that fails to load, is embedded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lenscope.client.core.durable_files import atomic_write, try_lock, unlock
from lenscope.client.index.embedder import EmbeddedChunk
from lenscope.client.index.reader import Reject

WORK_DIR = ".work"
STATE_FILE = "state.json"
STATE_FORMAT = 1
_CHUNK_FILE = re.compile(r"^chunk-(\d{6,})\.npz$")
_ATTR = "attr__"


def work_key(catalog_sha256: str, model_hash: str, splits: Iterable[str] | None) -> str:
    model = re.sub(r"[^0-9A-Za-z]", "", model_hash)[:16] or "model"
    key = f"{catalog_sha256[:16]}-{model}"
    if splits is not None:
        key += "-" + hashlib.sha256(",".join(sorted(splits)).encode()).hexdigest()[:8]
    return key


class WorkDirBusy(RuntimeError):
    """Another live build holds this work dir (e.g. a restarted job whose old process still runs)."""


class WorkDir:
    """One build's checkpoint directory, held under an exclusive lock until `close` or `remove`."""

    def __init__(self, path: Path, state: dict, lock_fd: int):
        self.path = path
        self.state = state
        self._lock_fd: int | None = lock_fd

    @property
    def chunk_size(self) -> int:
        return int(self.state["chunk_size"])

    @property
    def n_chunks(self) -> int:
        return -(-int(self.state["n_rows"]) // self.chunk_size)

    @classmethod
    def open(cls, index_root: Path, *, catalog: Path, catalog_sha256: str, model_hash: str,
             splits: Iterable[str] | None, chunk_size: int, n_rows: int) -> "WorkDir":
        """Reuse the work dir of an interrupted identical build, or start a new one."""
        if chunk_size < 1:
            raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
        splits = None if splits is None else sorted(splits)
        path = Path(index_root) / WORK_DIR / work_key(catalog_sha256, model_hash, splits)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path.with_name(path.name + ".lock"))
        try:
            return cls._open_locked(path, lock_fd, catalog, catalog_sha256, model_hash, splits, chunk_size, n_rows)
        except BaseException:
            unlock(lock_fd)
            raise

    @classmethod
    def _open_locked(cls, path: Path, lock_fd: int, catalog: Path, catalog_sha256: str, model_hash: str,
                     splits: list[str] | None, chunk_size: int, n_rows: int) -> "WorkDir":
        state = {
            "format": STATE_FORMAT, "catalog": str(catalog), "catalog_sha256": catalog_sha256,
            "model_hash": model_hash, "splits": splits, "chunk_size": chunk_size, "n_rows": n_rows,
        }
        old = _read_state(path / STATE_FILE)
        same = old is not None and all(old.get(k) == state[k] for k in ("format", "catalog_sha256", "model_hash",
                                                                        "splits", "n_rows"))
        if same:
            state["chunk_size"] = int(old["chunk_size"])
        elif path.exists():
            shutil.rmtree(path)  # unreadable or foreign state: nothing in it can be trusted
        path.mkdir(parents=True, exist_ok=True)
        for debris in path.glob("*.tmp-*"):  # a write cut short by a kill
            debris.unlink(missing_ok=True)
        work = cls(path, state, lock_fd)
        work.write_state(done=len(work.done_chunks()))
        return work

    def chunk_path(self, index: int) -> Path:
        return self.path / f"chunk-{index:06d}.npz"

    def chunk_range(self, index: int) -> range:
        start = index * self.chunk_size
        return range(start, min(start + self.chunk_size, int(self.state["n_rows"])))

    def done_chunks(self) -> set[int]:
        out = set()
        for p in self.path.iterdir():
            m = _CHUNK_FILE.match(p.name)
            if m and int(m.group(1)) < self.n_chunks:
                out.add(int(m.group(1)))
        return out

    def write_state(self, *, done: int) -> None:
        state = dict(self.state, done_chunks=done, n_chunks=self.n_chunks,
                     updated_at=datetime.now(UTC).isoformat(timespec="seconds"))
        atomic_write(self.path / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())

    def save(self, chunk: EmbeddedChunk) -> Path:
        arrays = {
            "positions": chunk.positions, "image": chunk.image, "title": chunk.title, "photo": chunk.photo,
            "rejects": np.array(json.dumps([r.to_json() for r in chunk.rejects])),
            "fingerprint": np.array(chunk.fingerprint),
            **{_ATTR + name: v for name, v in chunk.attributes.items()},
        }
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = self.chunk_path(chunk.index)
        atomic_write(path, buf.getvalue())
        return path

    def load(self, index: int, *, fingerprint: str, dim: int, attributes: dict[str, int]) -> EmbeddedChunk | None:
        """The checkpointed chunk, or None (absent, damaged, or its image files changed: embed it again)."""
        path = self.chunk_path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                chunk = EmbeddedChunk(
                    index=index,
                    positions=np.asarray(z["positions"], dtype=np.int64),
                    image=z["image"], title=z["title"], photo=z["photo"],
                    attributes={k.removeprefix(_ATTR): z[k] for k in z.files if k.startswith(_ATTR)},
                    rejects=[Reject.from_json(d) for d in json.loads(str(z["rejects"]))],
                    fingerprint=str(z["fingerprint"]),
                )
        except Exception:  # noqa: BLE001 - any damage means "not checkpointed"
            path.unlink(missing_ok=True)
            return None
        if not self._consistent(chunk, dim, attributes) or chunk.fingerprint != fingerprint:
            path.unlink(missing_ok=True)
            return None
        return chunk

    def _consistent(self, c: EmbeddedChunk, dim: int, attributes: dict[str, int]) -> bool:
        n = c.positions.size
        span = self.chunk_range(c.index)
        dropped = sum(1 for r in c.rejects if not r.kept)
        return (
            all(a.shape == (n, dim) and a.dtype == np.float32 for a in (c.image, c.title, c.photo))
            and {k: v.shape for k, v in c.attributes.items()} == {k: (n, w) for k, w in attributes.items()}
            and bool(np.all((c.positions >= span.start) & (c.positions < span.stop)))
            and n + dropped == len(span)
        )

    def close(self) -> None:
        """Release the lock, keeping the checkpoints (an interrupted build)."""
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        """Delete the checkpoints (the build was published) and release the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.with_name(self.path.name + ".lock").unlink(missing_ok=True)
        self.close()
        parent = self.path.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    def __enter__(self) -> "WorkDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(path: Path) -> int:
    """Exclusive, non-blocking; the kernel drops it when the holder dies, so a SIGKILLed job never wedges it."""
    fd = try_lock(path)
    if fd is None:
        raise WorkDirBusy(f"another index build of the same catalog and model is running (it holds {path}); "
                          "wait for it or stop it first")
    return fd


def _read_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
