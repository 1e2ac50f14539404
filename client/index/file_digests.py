"""SHA-256 of catalog image files, remembered between builds while the file provably did not change.

An incremental build keys every row on the bytes of its image and photo (index/incremental.py), so
before this it read and hashed every file of the catalog: the largest part of a 1 % change's build
(~0.7 ms per file on the busy 2-core box, 20k products = 40k files). Git's index solves the same
problem: a file whose (device, inode, size, mtime, ctime) are what they were when it was hashed has
the same bytes. ctime cannot be set from user space (any write or `touch` moves it to "now"), and a
replaced file has another inode or ctime, so a match means the content was not touched.

The racy case (a file rewritten within the file system's timestamp tick after it was hashed, with
the same size) is excluded the way git does: a file whose ctime is less than `RACY_S` old when it
is hashed is not remembered, so it is read again next time.

Every read still goes through the shared bounded reader (`inputs/image_files.py`): paths are
confined to the catalog's folder first, and only a regular file within the size limit is taken
from memory; anything else (missing, FIFO, device, too large) is read, and refused, as before, so
keys and reject reasons are exactly those of a fresh read.

Stored per version as the bundle attachment ``file_digests.json``: a list of
``[path, dev, ino, size, mtime_ns, ctime_ns, sha256 hex]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from lenscope.client.inputs.image_files import UNREADABLE_IMAGE, ImageFileError, catalog_image, read_image_file

FILE_DIGESTS = "file_digests.json"
RACY_S = 2.0


class FileDigests:
    """`digest(root, rel)` = SHA-256 of the file's bytes, from memory when its stat says unchanged."""

    def __init__(self, known: dict[str, list] | None = None) -> None:
        self.known = known or {}
        self.seen: dict[str, list] = {}  # what this build hashed or reused: stored with the new version
        self.reused = 0
        self.read = 0
        self._real_roots: dict[Path, Path] = {}  # catalog folder -> resolved once per build

    @classmethod
    def load(cls, data: bytes | None) -> "FileDigests":
        """From a previous version's attachment; anything unreadable means "remember nothing"."""
        if not data:
            return cls()
        try:
            entries = json.loads(data)
            return cls({str(e[0]): [int(x) for x in e[1:6]] + [str(e[6])] for e in entries})
        except (ValueError, TypeError, IndexError, KeyError):
            return cls()

    def dump(self) -> bytes:
        return (json.dumps([[path, *rec] for path, rec in sorted(self.seen.items())]) + "\n").encode()

    def digest(self, root: Path, rel: str, *, max_bytes: int, allow_outside: bool = False) -> tuple[bytes | None, str]:
        """(SHA-256 digest, "") or (None, the reject reason the bounded reader gives the file)."""
        try:
            if root not in self._real_roots:
                self._real_roots[root] = Path(root).resolve()
            path = catalog_image(root, rel, allow_outside=allow_outside, real_root=self._real_roots[root])
        except (ImageFileError, OSError, RuntimeError) as err:
            return None, getattr(err, "reason", UNREADABLE_IMAGE)
        key = str(path)
        try:
            st = os.stat(path)
        except OSError:
            st = None
        sig = None
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= max_bytes:
            sig = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            rec = self.known.get(key)
            if rec is not None and rec[:5] == sig:
                self.seen[key] = rec
                self.reused += 1
                return bytes.fromhex(rec[5]), ""
        try:
            data = read_image_file(path, max_bytes=max_bytes)
        except ImageFileError as err:
            return None, err.reason
        self.read += 1
        d = hashlib.sha256(data).digest()
        if sig is not None and time.time_ns() - sig[4] > RACY_S * 1e9:
            self.seen[key] = [*sig, d.hex()]
        return d, ""
