"""Catalog images served from one root directory, and nothing else.

A request path is refused (as "not found", so nothing about the file system leaks) unless:

- it is relative, has no ``..`` / ``.`` / empty segment, no backslash and no NUL (the router has
  already percent-decoded it, so ``%2e%2e`` and ``%2f`` arrive here as ``..`` and ``/``);
- its suffix is a raster image type (SVG is not: it can carry script);
- the file it resolves to, symlinks followed, is a regular file *inside* the resolved root (a symlink
  that points elsewhere inside the root is fine; one that escapes it is not).

Responses carry a strong ETag derived from (size, mtime, inode) and ``Cache-Control`` with a
max-age; ``If-None-Match`` answers 304 without a body.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from lenscope.client.inputs.image_files import read_image_file

# suffix -> content type; the content type comes from here, never from sniffing the bytes.
IMAGE_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


class ImageNotFound(LookupError):
    """The path does not name a servable catalog image (missing, refused or outside the root)."""


@dataclass(frozen=True)
class CatalogImage:
    path: Path  # resolved, inside the root
    media_type: str
    etag: str  # quoted, strong
    size: int


def _checked_relative(path: str) -> PurePosixPath:
    if not path or "\x00" in path or "\\" in path:
        raise ImageNotFound(path)
    rel = PurePosixPath(path)
    if rel.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise ImageNotFound(path)
    if rel.suffix.lower() not in IMAGE_TYPES:
        raise ImageNotFound(path)
    return rel


class ImageStore:
    """Looks up catalog images under ``root`` (the catalog file's directory)."""

    def __init__(self, root: Path, max_read_bytes: int = 20 * 1024 * 1024):
        self.root = Path(root).resolve(strict=True)
        self.max_read_bytes = max_read_bytes  # `read` (search with this image): bounded like every image read

    def lookup(self, path: str) -> CatalogImage:
        rel = _checked_relative(path)
        try:
            real = (self.root / rel).resolve(strict=True)
        except (OSError, RuntimeError) as err:  # missing, a symlink loop, a name too long
            raise ImageNotFound(path) from err
        if not real.is_relative_to(self.root) or real.suffix.lower() not in IMAGE_TYPES:
            raise ImageNotFound(path)  # a symlink out of the root, or onto a non-image inside it
        try:
            st = real.stat()
        except OSError as err:
            raise ImageNotFound(path) from err
        if not real.is_file():
            raise ImageNotFound(path)
        tag = hashlib.blake2b(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode(), digest_size=12).hexdigest()
        return CatalogImage(path=real, media_type=IMAGE_TYPES[real.suffix.lower()], etag=f'"{tag}"', size=st.st_size)

    def read(self, path: str) -> bytes:
        """The bytes of a catalog image (for "search with this image"), through the shared bounded reader."""
        image = self.lookup(path)
        try:
            return read_image_file(image.path, max_bytes=self.max_read_bytes)
        except OSError as err:
            raise ImageNotFound(path) from err


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or any listed tag (weak comparison) equals ``etag``."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == bare for t in if_none_match.split(","))


def url_path(image: str) -> str | None:
    """The app URL of a catalog image path as stored in a hit (None when it is not a local path)."""
    if not image or "://" in image or image.startswith("/") or os.path.isabs(image):
        return None
    return "/images/" + quote(image, safe="/")
