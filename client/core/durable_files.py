"""Crash-safe file plumbing shared by everything that publishes state: atomic replace with
fsync, directory fsync, and exclusive locks the kernel releases when the holder dies.

A reader sees the old file or the new one, never half of one; a SIGKILLed writer never leaves a
lock behind. Index bundles, indexing checkpoints, calibration and fusion weights all rely on it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under root (before a build is renamed into view)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def atomic_write(path: Path, data: bytes) -> Path:
    """Write, fsync, rename over `path`, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, text.encode("utf-8"))


def read_json_object(path: Path, what: str, error: type[Exception]) -> dict:
    """Read a JSON object file that one of the atomic writers above published; every failure is
    `error` with a message naming `what` and the file (missing, not JSON, not an object)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object")
    return data


def try_lock(path: Path) -> int | None:
    """Exclusive, non-blocking flock on `path` (created if needed): the fd, or None if held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in chunks (bundles, catalogs, checkpoints, ONNX files, plans)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
