"""Reading image files from disk: the ONE reader every consumer uses (indexing, evaluation, training,
the web demo's "search with this image").

Why not ``Path.read_bytes()``: a catalog is user input. ``/dev/zero`` reports a size of 0 and never
ends; a FIFO blocks ``open`` until a writer appears; ``/etc/shadow`` is a perfectly readable file that
must not be sent to a model server because a catalog row named it. So a read here:

- opens non-blocking (a FIFO cannot hang the open) and without following into a terminal;
- refuses anything that is not a regular file, from ``fstat`` of the opened descriptor (no race
  between a check and the read);
- reads at most ``max_bytes + 1`` bytes, whatever the size claimed, and refuses the file if that
  many came back;
- (``catalog_image``) confines catalog paths to the catalog's folder, symlinks resolved, unless the
  caller explicitly allows paths outside it.

Every refusal is an ``ImageFileError`` with a stable ``reason`` (the indexer's reject reasons) and a
message naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = [
    "ImageFileError", "read_image_file", "catalog_image", "read_catalog_image",
    "MISSING_IMAGE", "UNREADABLE_IMAGE", "IMAGE_TOO_LARGE", "NOT_A_FILE", "OUTSIDE_CATALOG",
]

MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_TOO_LARGE = "image_too_large"
NOT_A_FILE = "not_a_regular_file"
OUTSIDE_CATALOG = "image_outside_catalog"

_CHUNK = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class ImageFileError(OSError):
    """An image path that cannot be read safely; ``reason`` is stable, the message names the path."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_image_file(path: str | os.PathLike[str], *, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes; else ``ImageFileError``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageFileError(MISSING_IMAGE, f"{path} does not exist") from None
    except IsADirectoryError:
        raise ImageFileError(NOT_A_FILE, f"{path} is a directory, not an image file") from None
    except OSError as err:
        if err.errno == errno.ENXIO:  # a socket, or a FIFO/device that cannot be opened without blocking
            raise ImageFileError(NOT_A_FILE, f"{path} is not a regular file") from None
        raise ImageFileError(UNREADABLE_IMAGE, f"{path}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageFileError(NOT_A_FILE, f"{path} is {_kind(st.st_mode)}, not a regular image file")
        if st.st_size > max_bytes:
            raise ImageFileError(IMAGE_TOO_LARGE, f"{path}: {st.st_size} bytes, over the limit of {max_bytes}")
        os.set_blocking(fd, True)
        parts: list[bytes] = []
        got = 0
        while got <= max_bytes:  # the size on disk may change under us: the cap holds regardless
            part = os.read(fd, min(_CHUNK, max_bytes + 1 - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
        if got > max_bytes:
            raise ImageFileError(IMAGE_TOO_LARGE, f"{path}: grew past the limit of {max_bytes} bytes while read")
        return b"".join(parts)
    except ImageFileError:
        raise
    except OSError as err:
        raise ImageFileError(UNREADABLE_IMAGE, f"{path}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def catalog_image(root: str | os.PathLike[str], rel: str, *, allow_outside: bool = False,
                  real_root: Path | None = None) -> Path:
    """The file a catalog's image field names, relative to the catalog's folder ``root``.

    Refused (``OUTSIDE_CATALOG``) unless ``allow_outside``: an absolute path, or one that leaves the
    folder through ``..`` or a symlink. Resolution is lexical + symlinks (``Path.resolve``), so a
    symlink that stays inside the folder is fine. ``real_root``: ``root.resolve()`` computed once by a
    caller that checks many paths of one catalog (half the cost of a check).
    """
    root = Path(root)
    path = root / rel  # an absolute `rel` stays absolute (pathlib semantics)
    if allow_outside:
        return path
    if Path(rel).is_absolute():
        raise ImageFileError(OUTSIDE_CATALOG, f"image path {rel!r} is absolute; catalog images must be "
                             f"relative to the catalog's folder {root} (or allow outside images explicitly)")
    try:
        real_root, real = (real_root if real_root is not None else root.resolve()), path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise ImageFileError(UNREADABLE_IMAGE, f"{path}: {err}") from None
    if not real.is_relative_to(real_root):
        raise ImageFileError(OUTSIDE_CATALOG, f"image path {rel!r} leads outside the catalog's folder {root} "
                             f"(to {real}); allow outside images explicitly to read it")
    return path


def read_catalog_image(root: str | os.PathLike[str], rel: str, *, max_bytes: int, allow_outside: bool = False) -> bytes:
    """``catalog_image`` + ``read_image_file``: a catalog's image, confined and bounded."""
    return read_image_file(catalog_image(root, rel, allow_outside=allow_outside), max_bytes=max_bytes)
