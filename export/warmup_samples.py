"""The warm-up samples a model repository ships (``<model>/warmup/<file>``): Triton runs them before it
reports a model ready, so the first real request finds sessions built and code paths imported."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

WARMUP_IMAGE = "sample_image"
WARMUP_TEXT = "sample_text"
WARMUP_ENCODED = "sample_encoded"
WARMUP_TEXT_BYTES = b"a red floral summer dress"


def length_prefixed(data: bytes) -> bytes:
    """Triton's raw encoding of one TYPE_STRING element: uint32 little-endian length + bytes."""
    return struct.pack("<I", len(data)) + data


def warmup_image_bytes(size: int) -> bytes:
    """A seeded random RGB PNG of ``size`` x ``size``: decoding and preprocessing run for real."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
