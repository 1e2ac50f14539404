"""The python step in front of DALI (gpu profile): per-request checks, then bytes DALI decodes as Pillow does.

Triton's DALI backend decodes a whole batch at once: one bad image fails every request batched with
it, and DALI's decoders differ from the Pillow path (``preprocess.decode_image``) on exactly the
images where that path does extra work. So each request first passes this gate, which runs in the
``image_gate`` python model:

- every cheap header check of the Pillow path (``check_header``: size, format, pixel count, resize
  budget) refuses the request with the same reason, per request, without decoding;
- an image DALI decodes like Pillow (8-bit RGB or greyscale JPEG / PNG / WebP, upright, opaque, one
  frame, complete) passes through untouched: decoding, resizing and normalising run on the GPU;
- every other image (alpha to composite on white, EXIF rotation, 16-bit, CMYK, palette, GIF / BMP /
  TIFF / MPO, animations, or bytes that look truncated) is decoded here by the Pillow path and handed
  on as a lossless 8-bit RGB PNG, so its pixels are exactly Pillow's (and a corrupt one is refused
  here, alone, instead of failing a DALI batch).

Not caught without decoding: a complete-looking JPEG/PNG whose compressed data is corrupt still reaches
DALI and fails the batch it is in (its neighbours get the error too); the cpu profile has no such case.
"""

from __future__ import annotations

import io

from PIL import Image

from lenscope.client.core.modelspec import InputLimits, PreprocessConfig
from lenscope.client.inputs.preprocess import ImageInputError, _header, decode_image

__all__ = ["PASS", "gate", "ImageInputError"]

PASS = "pass"
_DIRECT_FORMATS = ("JPEG", "PNG", "WEBP")
_DIRECT_MODES = ("RGB", "L")
_EXIF_ORIENTATION = 0x0112
_TAIL = 64 * 1024  # end markers are searched this far from the end (trailing bytes are common)


def _complete(data: bytes, fmt: str) -> bool:
    """Cheap end-of-stream checks: a truncated upload is the common corrupt image."""
    if fmt == "JPEG":
        return b"\xff\xd9" in data[-_TAIL:]
    if fmt == "PNG":
        return b"IEND" in data[-_TAIL:]
    if fmt == "WEBP":
        return len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 <= len(data)
    return False


def _why_transcode(img: Image.Image, data: bytes) -> str | None:
    """Why DALI would not decode this image as the Pillow path does (None: it would)."""
    fmt = str(img.format)
    if fmt not in _DIRECT_FORMATS:
        return f"format {fmt}"
    if img.mode not in _DIRECT_MODES:
        return f"mode {img.mode}"
    if "transparency" in img.info:
        return "transparency"
    if getattr(img, "n_frames", 1) != 1:
        return "animation"
    tile = getattr(img, "tile", None) or []
    if any(";16" in str(t[3] if len(t) > 3 else "") for t in tile):
        return "16-bit samples"
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: let the Pillow path decide
        return "unreadable EXIF"
    if orientation not in (None, 1):
        return "EXIF orientation"
    if not _complete(data, fmt):
        return "no end-of-image marker"
    return None


def gate(data: bytes, cfg: PreprocessConfig, limits: InputLimits) -> tuple[bytes, str]:
    """(bytes for DALI, route): ``route`` is ``PASS`` or ``transcoded (<why>)``. Raises ``ImageInputError``."""
    data = bytes(data)
    with _header(data, limits, cfg) as img:
        why = _why_transcode(img, data)
    if why is None:
        return data, PASS
    rgb = decode_image(data, limits, cfg)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), f"transcoded ({why})"
