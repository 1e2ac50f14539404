"""Image bytes -> encoder input, without torch.

Runs inside the Triton ``image_preprocess`` python model (one call per request, hostile bytes
possible) and in tests/benchmarks. ``preprocess`` reproduces open_clip's eval transform
(``image_transform_v2``) bit for bit on RGB images, so an embedding served from Triton matches the
one the exporter verified against torch. Decoding is strict: every refusal is an
``ImageInputError`` with a machine-readable ``reason``, so the backend can return a per-request
error instead of crashing or silently embedding garbage.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lenscope.client.core.modelspec import InputLimits, PreprocessConfig

__all__ = ["ImageInputError", "check_header", "decode_image", "preprocess", "preprocess_bytes", "ACCEPTED_FORMATS"]

# Pillow plugin ids tried by Image.open; nothing else is even parsed (no EPS/ghostscript, no PDF).
# The JPEG plugin also opens MPO (the multi-picture JPEG phone cameras write) as its first image.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Magic prefixes of the accepted formats: bytes that start like one of them but fail to parse are
# "corrupt"; anything else is "unsupported_format".
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# Text formats people upload by mistake (or on purpose); named in the message to help the caller.
_TEXT_HINTS = ((b"<svg", "SVG"), (b"<?xml", "XML/SVG"), (b"<!doctype html", "HTML"), (b"<html", "HTML"),
               (b"%pdf", "PDF"))

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_EXIF_ORIENTATION = 0x0112


class ImageInputError(ValueError):
    """Bytes that cannot become an image; ``reason`` is stable, the message is for humans."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _text_hint(data: bytes) -> str:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    for magic, name in _TEXT_HINTS:
        if head.startswith(magic) or (name != "PDF" and magic in head):
            return f" (looks like {name})"
    return ""


def _open(data: bytes, limits: InputLimits) -> Image.Image:
    """Parse headers only (Image.open is lazy) and enforce the pixel cap before any decoding."""
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageInputError("decompression_bomb", f"image refused as a decompression bomb: {err}") from None
    except UnidentifiedImageError:
        kind = _sniff(data)
        if kind is not None:
            raise ImageInputError("corrupt", f"{kind} image header is corrupt or truncated") from None
        raise ImageInputError(
            "unsupported_format",
            f"not an image in an accepted format{_text_hint(data)}; accepted: {', '.join(ACCEPTED_FORMATS)}",
        ) from None
    except Exception as err:  # plugins raise many types on hostile headers
        raise ImageInputError("corrupt", f"image header could not be parsed: {err}") from None

    w, h = img.size
    if w * h > limits.max_image_pixels:
        raise ImageInputError(
            "too_many_pixels",
            f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_image_pixels}",
        )
    # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; mirror the warning as a refusal
    # here (reading, not changing, the global) instead of swapping warning filters, which is not
    # thread-safe.
    bomb_cap = Image.MAX_IMAGE_PIXELS
    if bomb_cap and w * h > bomb_cap:
        raise ImageInputError(
            "decompression_bomb",
            f"image is {w}x{h} = {w * h} pixels, over Pillow's decompression-bomb limit of {bomb_cap}",
        )
    return img


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos); a broken EXIF block is ignored, not fatal."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB.

    - RGB: untouched, so this path equals open_clip's ``convert('RGB')``.
    - Alpha (RGBA, LA, P/PA with transparency): composited onto white. Plain ``convert('RGB')``
      drops alpha and exposes whatever colour the encoder left under transparent pixels (often
      black, sometimes garbage), so the same cut-out product would embed differently per encoder;
      white is how catalogue cut-outs are displayed and photographed.
    - 16-bit greyscale (I;16*, I): scaled by >> 8 (not clipped at 255, which is Pillow's
      ``convert``), the same reduction Pillow applies to 16-bit RGB PNGs, so one picture gives one
      result whichever colour type it was saved with.
    - CMYK and everything else: Pillow's ``convert('RGB')``. For CMYK that is the naive profile-free
      formula, which is also what open_clip training pipelines fed the model; ICC-managed
      conversion would move those images off the training distribution.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_MODES:
        wide = np.asarray(img).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _header(data: bytes, limits: InputLimits, cfg: PreprocessConfig | None) -> Image.Image:
    if not data:
        raise ImageInputError("empty", "image is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise ImageInputError(
            "too_large_bytes", f"image is {len(data)} bytes, over the limit of {limits.max_image_bytes}"
        )
    img = _open(bytes(data), limits)
    if cfg is not None:
        check_resize_budget(img.size, cfg, limits)
    return img


def check_header(data: bytes, limits: InputLimits, cfg: PreprocessConfig | None = None) -> tuple[str, int, int]:
    """(format, width, height) from the header alone, after every check that needs no decoding:
    emptiness, byte size, format, pixel count and (with ``cfg``) the aspect-ratio resize budget.
    A 76 KB PNG declaring 1 x 39,000,000 pixels is refused here in microseconds, instead of after
    seconds of decoding. Raises ``ImageInputError``."""
    with _header(data, limits, cfg) as img:
        return str(img.format), *img.size


def decode_image(data: bytes, limits: InputLimits, cfg: PreprocessConfig | None = None) -> Image.Image:
    """Validated bytes -> upright 8-bit RGB image (first frame of animations).

    Cheap checks run first, from the header (``check_header``: length, format, pixel count and,
    given the preprocessing ``cfg``, the resize budget); ``load()`` is forced inside the try so
    truncated data is an error here, never a half-grey image later.
    """
    img = _header(data, limits, cfg)
    try:
        img.load()
        img = _to_rgb(_exif_upright(img))
    except Image.DecompressionBombError as err:
        raise ImageInputError("decompression_bomb", f"image refused as a decompression bomb: {err}") from None
    except ImageInputError:
        raise
    except Exception as err:  # truncated/corrupt streams surface as OSError, SyntaxError, ValueError...
        raise ImageInputError("corrupt", f"{img.format or 'image'} data is corrupt or truncated: {err}") from None
    return img


@lru_cache(maxsize=16)
def _lut(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """[3, 256] float32: uint8 -> normalised value, computed with torchvision's float32 ops
    (to_tensor: x / 255, Normalize: (x - mean) / std) so the gather is bit-identical to them."""
    x = np.arange(256, dtype=np.float32) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    return ((x[None, :] - m) / s).astype(np.float32)


def _resized_size(w: int, h: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """Target (w, h) before crop/pad, with torchvision's / open_clip's exact rounding."""
    size = cfg.image_size
    if cfg.resize_mode == "squash":
        return size, size
    if cfg.resize_mode == "longest":  # open_clip ResizeKeepRatio(longest=1)
        ratio = max(h / size, w / size)
        return round(w / ratio), round(h / ratio)
    # shortest: torchvision Resize(int) -> _compute_resized_output_size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _crop_or_pad(arr: np.ndarray, size: int, fill: int) -> np.ndarray:
    """open_clip center_crop_or_pad on an HWC uint8 array (same split of odd padding, same
    ``int(round(...))`` crop offset)."""
    h, w = arr.shape[:2]
    if size > w or size > h:
        left = (size - w) // 2 if size > w else 0
        top = (size - h) // 2 if size > h else 0
        padded = np.full((max(h, size), max(w, size), 3), fill, dtype=np.uint8)
        padded[top : top + h, left : left + w] = arr
        arr, (h, w) = padded, padded.shape[:2]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return arr[top : top + size, left : left + size]


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """PIL image -> float32 [3, S, S], equal to open_clip's eval transform for the same config.

    Non-RGB images are converted first (open_clip converts after resizing; identical for RGB,
    which is all ``decode_image`` returns).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    new_w, new_h = _resized_size(*image.size, cfg)
    if (new_w, new_h) != image.size:  # torchvision skips the resize when sizes already match
        image = image.resize((new_w, new_h), _RESAMPLE[cfg.interpolation])
    arr = _crop_or_pad(np.asarray(image), cfg.image_size, cfg.fill)
    lut = _lut(tuple(cfg.mean), tuple(cfg.std))
    out = np.empty((3, cfg.image_size, cfg.image_size), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], arr[:, :, c], out=out[c])
    return out


def check_resize_budget(size: tuple[int, int], cfg: PreprocessConfig, limits: InputLimits) -> None:
    """Refuse images whose *resized* size would exceed the pixel limit, from the declared size.

    The short-side resize happens before the crop (as in open_clip), so a tiny 30000 x 1 strip
    becomes 1,920,000 x 64 pixels (~1.2 GB) in memory: a memory-amplification attack that the
    decoded-size limit alone does not catch. The EXIF rotation applied later swaps width and
    height, which leaves the resized pixel count unchanged, so the header's size decides.
    """
    new_w, new_h = _resized_size(*size, cfg)
    if new_w * new_h > limits.max_image_pixels:
        w, h = size
        raise ImageInputError(
            "extreme_aspect_ratio",
            f"image header declares {w}x{h}: its aspect ratio would need a {new_w}x{new_h} intermediate image "
            f"(over the limit of {limits.max_image_pixels} pixels); refused before decoding. "
            "Crop it closer to the product",
        )


def preprocess_bytes(data: bytes, cfg: PreprocessConfig, limits: InputLimits) -> np.ndarray:
    """decode_image (header checks incl. the resize budget first) + preprocess: what the Triton
    model runs per request."""
    return preprocess(decode_image(data, limits, cfg), cfg)
