"""The camera end of rendering: light and colour adjustments, vignetting, and turning the float
canvas into an image (sensor noise, defocus, JPEG artefacts) and deterministic file bytes.

Separate from ``draw.py`` and ``scene.py``: these act on the finished canvas, not on what is in it.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from lenscope.client.synth.draw import pixel_grid


def adjust_light(canvas: np.ndarray, brightness: float, contrast: float, warmth: float) -> np.ndarray:
    mean = canvas.mean()
    out = (canvas - mean) * contrast + mean
    out = out * brightness * np.asarray([1 + warmth, 1.0, 1 - warmth], np.float32)
    return np.clip(out, 0, 1)


def vignette(canvas: np.ndarray, strength: float) -> np.ndarray:
    size = canvas.shape[0]
    xs, ys = pixel_grid(size)
    r2 = ((xs / size - 0.5) ** 2 + (ys / size - 0.5) ** 2) * 2
    return canvas * (1 - strength * r2)[..., None]


def to_image(canvas: np.ndarray, rng: np.random.Generator | None = None, noise: float = 0.0,
             blur: float = 0.0, jpeg_quality: int | None = None) -> Image.Image:
    """Float canvas -> 8-bit RGB image, with optional sensor noise, defocus and JPEG artefacts."""
    arr = canvas
    if noise > 0 and rng is not None:
        arr = arr + rng.normal(0, noise, arr.shape).astype(np.float32)
    img = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if jpeg_quality is not None:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=jpeg_quality)
        buf.seek(0)
        img = Image.open(buf)
        img.load()
        img = img.convert("RGB")
    return img


def encode(img: Image.Image, fmt: Literal["png", "jpeg"]) -> bytes:
    """Deterministic bytes (no timestamps or random metadata in either encoder)."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    else:
        img.save(buf, "JPEG", quality=92)
    return buf.getvalue()
