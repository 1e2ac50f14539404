"""Hand-written image payloads shared by the unit, web and corpus tests (generated, never committed)."""

from __future__ import annotations

import struct
import zlib


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def tall_png(height: int, width: int = 1) -> bytes:
    """A valid 8-bit greyscale PNG of width x height pixels, compressed as it streams: 1 x 39,000,000
    is about 76 KB on the wire, under every byte and pixel cap, yet seconds of decoding and a
    224 x 8.7e9 resize if nothing checks its aspect ratio first."""
    row = b"\x00" + b"\x80" * width
    comp, parts, block = zlib.compressobj(9), [], 100_000
    full, rest = divmod(height, block)
    chunk = row * block
    parts += [comp.compress(chunk) for _ in range(full)]
    parts += [comp.compress(row * rest), comp.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts))
            + png_chunk(b"IEND", b""))
