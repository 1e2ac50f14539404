"""The hostile-input corpus for the search service, generated (never committed as blobs).

Every case is a request a frontend (or an attacker) could send to ``lenscope.v1.SearchService/Search``
and the gRPC status the service must answer with: a status code, a fragment of the message that tells
the caller what to fix, and, for accepted cases, whether hits come back. Three groups:

* ``image``: broken, disguised, oversized and legitimately unusual image bytes (CMYK, 16-bit,
  animated and EXIF-rotated images are valid photos and must be ACCEPTED);
* ``text``: empty, blank, oversized, invalid UTF-8 (sent as raw wire bytes: a Python protobuf
  client cannot produce it), control characters, RTL, emoji;
* ``request``: top_k out of range, unknown filters and facets, missing fields, unknown or malformed
  protobuf fields, messages over the transport's size cap, hostile metadata.

Importable (``build_corpus()``: what tests/integration/test_hostile_corpus.py runs), and a script:

    python tests/corpus/generate.py --list            # the table of cases and expectations
    python tests/corpus/generate.py --out DIR         # write each payload + cases.json to DIR

Everything is derived from ``seed`` with Pillow, numpy and hand-written headers, so the corpus is
identical on every machine. The expectations are written against the service's default limits
(lenscope.client.service.settings.ServiceSettings) and the shipped model spec's input limits
(export/specs/lenscope-tiny.json); docs/limits.md lists them.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: also when run as a script
from hostile_images import tall_png  # noqa: E402
from lenscope.client.api import search_pb2  # noqa: E402
from lenscope.client.service.settings import MiB, ServiceSettings  # noqa: E402

Group = Literal["image", "text", "request"]
HitsExpectation = Literal["some", "none", "any"]

DEFAULTS = ServiceSettings()
MAX_REQUEST_BYTES = DEFAULTS.max_request_bytes  # 12 MiB: the transport's receive cap
MAX_IMAGE_BYTES = DEFAULTS.max_image_bytes  # 10 MiB: the service's image cap
MAX_TEXT_CHARS = DEFAULTS.max_text_chars  # 1000 characters (after stripping)
MAX_TOP_K = DEFAULTS.max_top_k  # 100
MAX_IMAGE_PIXELS = 40_000_000  # the model spec's limits.max_image_pixels (checked in Triton's preprocess)

# A query text that always embeds and always finds something in a generated catalog.
NORMAL_TEXT = "red t-shirt"

# Bytes that do not parse as a SearchRequest (proto3 `string` fields must hold UTF-8): the service
# parses requests itself, so they get INVALID_ARGUMENT naming the problem (grpcio's own deserializer
# would answer an opaque INTERNAL that the service never logs or counts).
UNPARSEABLE = "not a valid lenscope.v1.SearchRequest"
@dataclass(frozen=True)
class Case:
    """One hostile (or merely unusual) request and what the service must answer."""

    name: str
    group: Group
    description: str
    expect: str  # grpc.StatusCode name: OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...
    fragment: str | None = None  # must occur in the status details (errors only)
    hits: HitsExpectation = "some"  # for OK answers: hits present, absent, or either
    request: search_pb2.SearchRequest | None = None
    # Pre-serialised wire bytes, for what a protobuf client refuses to build (invalid UTF-8,
    # malformed messages); sent through a channel with an identity serializer.
    raw: bytes | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    # Checks on an OK response beyond hits, as (description, predicate).
    checks: tuple[tuple[str, Callable[[search_pb2.SearchResponse], bool]], ...] = field(default=(), repr=False)
    # A product bug this case exposes: `expect`/`fragment` say what SHOULD happen, `today` what the
    # stack answers until the bug is fixed (status, fragment or None). The corpus test holds known-issue
    # cases to `today` (so they cannot silently get worse) and a strict xfail holds them to `expect`.
    known_issue: str | None = None
    today: tuple[str, str | None] | None = None

    def __post_init__(self) -> None:
        if (self.request is None) == (self.raw is None):
            raise ValueError(f"{self.name}: give exactly one of request / raw")
        if self.expect != "OK" and not self.fragment:
            raise ValueError(f"{self.name}: an error case must name a message fragment")
        if (self.known_issue is None) != (self.today is None):
            raise ValueError(f"{self.name}: a known issue needs `today` (the current answer) and vice versa")

    def payload(self) -> bytes:
        """The serialised request as it goes on the wire."""
        return self.raw if self.raw is not None else self.request.SerializeToString()


# --------------------------------------------------------------------------------------------------
# Image builders
# --------------------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _product_like(rng: np.random.Generator, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A smooth RGB picture (a coloured blob on a gradient): compresses like a photo, decodes fine."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    colour = rng.integers(30, 225, size=3)
    blob = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(w, h) / 3) ** 2
    arr = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        arr[..., c] = np.where(blob, colour[c], (x / max(w, 1) * 200 + c * 20).astype(np.uint8))
    return Image.fromarray(arr, "RGB")


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _raw_png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes,
             extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG from parts, so headers can declare what the data does not hold."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = b"".join(_png_chunk(t, d) for t, d in extra)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + body + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _zero_rows_png(width: int, height: int) -> bytes:
    """A complete, valid greyscale PNG of zeros: a large image that is a small file."""
    row = b"\x00" * (width + 1)  # filter byte + pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return _raw_png(width, height, 8, 0, idat)


def _bomb_png(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares width x height (the data holds one row)."""
    return _raw_png(width, height, 8, 0, zlib.compress(b"\x00" * 16))


def _rgb16_png(rng: np.random.Generator, size: int = 48) -> bytes:
    """16 bits per channel RGB (colour type 2, depth 16): Pillow cannot write it, so by hand."""
    arr = (rng.integers(0, 65535, size=(size, size, 3))).astype(">u2")
    rows = b"".join(b"\x00" + arr[r].tobytes() for r in range(size))
    return _raw_png(size, size, 16, 2, zlib.compress(rows))


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Patch the SOF0 marker of a baseline JPEG to declare another size."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]


def _gif_with_screen(gif: bytes, width: int, height: int) -> bytes:
    return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def _exif_rotated_jpeg(rng: np.random.Generator) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return _encode(_product_like(rng, (96, 64)), "JPEG", quality=90, exif=exif.tobytes())


def _broken_exif_jpeg(rng: np.random.Generator) -> bytes:
    """A valid JPEG with an APP1 'Exif' segment full of garbage right after SOI."""
    jpeg = _encode(_product_like(rng), "JPEG", quality=90)
    junk = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    app1 = b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk
    return jpeg[:2] + app1 + jpeg[2:]


def _animated(rng: np.random.Generator, fmt: str) -> bytes:
    frames = [_product_like(rng, (64, 64)) for _ in range(4)]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0)


def _corrupt_png_stream(png: bytes) -> bytes:
    """Garble the zlib stream inside IDAT but keep every CRC valid: only decompression can tell."""
    i = png.index(b"IDAT")
    length = struct.unpack(">I", png[i - 4: i])[0]
    data = bytearray(png[i + 4: i + 4 + length])
    for k in range(2, len(data)):  # keep the 2-byte zlib header, destroy the deflate blocks
        data[k] ^= 0xA5
    return png[: i - 4] + _png_chunk(b"IDAT", bytes(data)) + png[i + 8 + length:]


def _jpeg_without_segment(jpeg: bytes, marker_byte: int) -> bytes:
    """Remove every segment with this marker (0xDB: quantisation tables) before the scan."""
    out = bytearray()
    i = 2
    out += jpeg[:2]
    while i < len(jpeg):
        if jpeg[i] != 0xFF:
            break
        marker = jpeg[i + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += jpeg[i:]
            return bytes(out)
        length = struct.unpack(">H", jpeg[i + 2: i + 4])[0]
        if marker != marker_byte:
            out += jpeg[i: i + 2 + length]
        i += 2 + length
    return bytes(out)


def _gif_js_polyglot(rng: np.random.Generator) -> bytes:
    """The classic GIF/JavaScript polyglot: the logical-screen width is the bytes '/*' and the file
    ends in '*/=1;alert(document.domain);', so it runs as a script and still parses as a GIF."""
    gif = _encode(_product_like(rng, (32, 32)).convert("P"), "GIF")
    body = gif[:6] + b"/*" + gif[8:]  # width 0x2a2f = 10799; height stays 32
    return body + b"*/=1;alert(document.domain);//"


def _jpeg_zip_polyglot(rng: np.random.Generator) -> bytes:
    """A JPEG with a ZIP archive appended (also a valid ZIP: its directory is found from the end)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.sh", "#!/bin/sh\necho pwned\n")
    return _encode(_product_like(rng), "JPEG", quality=85) + buf.getvalue()


def _png_html_polyglot(rng: np.random.Generator) -> bytes:
    """A PNG carrying an HTML/script payload in a tEXt chunk (served as text/html it would run)."""
    png = _encode(_product_like(rng), "PNG")
    text = _png_chunk(b"tEXt", b"Comment\x00<html><script>alert(1)</script></html>")
    return png[:33] + text + png[33:]  # after the signature (8) and IHDR (25)


# --------------------------------------------------------------------------------------------------
# Wire-level builders (what protobuf clients refuse to produce)
# --------------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


TEXT_FIELD = search_pb2.SearchRequest.DESCRIPTOR.fields_by_name["text"].number
TOP_K_FIELD = search_pb2.SearchRequest.DESCRIPTOR.fields_by_name["top_k"].number


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------


def _img(image: bytes, **kw) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(image=image, top_k=5, **kw)


def _txt(text: str, **kw) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(text=text, top_k=5, **kw)


def _flt(facet: str, *values: str) -> search_pb2.Filter:
    return search_pb2.Filter(facet=facet, values=list(values))


def image_cases(rng: np.random.Generator) -> list[Case]:
    jpeg = _encode(_product_like(rng), "JPEG", quality=90)
    png = _encode(_product_like(rng), "PNG")
    gif = _encode(_product_like(rng, (32, 32)).convert("P"), "GIF")
    bad = "INVALID_ARGUMENT"
    cases = [
        # broken files
        Case("zero_byte_image", "image", "image field present but empty (and no text)", bad, "empty query",
             request=search_pb2.SearchRequest(image=b"")),
        Case("truncated_jpeg", "image", "JPEG cut in half", bad, "corrupt", request=_img(jpeg[: len(jpeg) // 2])),
        Case("truncated_png", "image", "PNG cut in half", bad, "corrupt", request=_img(png[: len(png) // 2])),
        Case("png_signature_only", "image", "the 8-byte PNG signature and nothing else", bad,
             "PNG image header is corrupt", request=_img(png[:8])),
        Case("jpeg_soi_only", "image", "the JPEG start-of-image marker and nothing else", bad,
             "JPEG image header is corrupt", request=_img(b"\xff\xd8\xff")),
        Case("png_corrupt_zlib", "image", "PNG with valid chunk CRCs but a garbled deflate stream", bad,
             "corrupt", request=_img(_corrupt_png_stream(png))),
        Case("jpeg_no_quant_tables", "image", "JPEG whose DQT segments were removed (missing Huffman tables "
             "would not do: decoders fall back to the standard ones)", bad, "corrupt",
             request=_img(_jpeg_without_segment(jpeg, 0xDB))),
        Case("random_bytes", "image", "4 KiB of seeded random bytes", bad, "not an image in an accepted format",
             request=_img(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())),
        # decompression bombs: tiny files, huge declared sizes (refused from the header, never decoded)
        Case("bomb_png_100k_square", "image", "~100-byte PNG declaring 100000 x 100000 pixels", bad,
             "decompression_bomb", request=_img(_bomb_png(100_000, 100_000))),
        Case("bomb_png_10k_square", "image", "~100-byte PNG declaring 10000 x 10000 (over the pixel cap and "
             "Pillow's warning limit, under its error limit)", bad, "too_many_pixels",
             request=_img(_bomb_png(10_000, 10_000))),
        Case("bomb_png_over_pixel_cap", "image", "valid 7000 x 7000 all-zero PNG (49 Mpx, ~50 KB file): over "
             "the 40 Mpx cap", bad, "too_many_pixels", request=_img(_zero_rows_png(7000, 7000))),
        Case("bomb_jpeg_declared_65500", "image", "JPEG whose SOF declares 65500 x 65500", bad,
             "decompression_bomb", request=_img(_jpeg_with_size(jpeg, 65500, 65500))),
        Case("bomb_gif_screen_65535", "image", "GIF whose logical screen is 65535 x 65535", bad,
             "decompression_bomb", request=_img(_gif_with_screen(gif, 65535, 65535))),
        # disguised as images
        Case("svg_disguised", "image", "SVG document (with script) sent as the image", bad, "looks like SVG",
             request=_img(b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                          b'<script>alert(1)</script><rect width="64" height="64"/></svg>')),
        Case("xml_svg_disguised", "image", "SVG with an XML declaration and an external entity (XXE)", bad,
             "looks like SVG",
             request=_img(b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                          b'<svg xmlns="http://www.w3.org/2000/svg">&x;</svg>')),
        Case("html_disguised", "image", "HTML page sent as the image", bad, "looks like HTML",
             request=_img(b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>")),
        Case("pdf_disguised", "image", "PDF header and body sent as the image", bad, "looks like PDF",
             request=_img(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")),
        Case("eps_not_parsed", "image", "PostScript/EPS (would run Ghostscript if parsed)", bad,
             "not an image in an accepted format",
             request=_img(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n")),
        Case("ico_unsupported", "image", "a real ICO file: decodable by Pillow, not an accepted format", bad,
             "not an image in an accepted format", request=_img(_encode(_product_like(rng, (32, 32)), "ICO"))),
        Case("jpeg_magic_then_html", "image", "JPEG magic bytes followed by an HTML page", bad,
             "corrupt", request=_img(b"\xff\xd8\xff\xe0" + b"<html><script>alert(1)</script></html>")),
        # polyglots that ARE valid images: pixels are embedded, the payload is never interpreted
        Case("polyglot_gif_js", "image", "GIF that is also valid JavaScript (screen width '/*')", "OK",
             request=_img(_gif_js_polyglot(rng))),
        Case("polyglot_jpeg_zip", "image", "JPEG with a ZIP archive appended", "OK",
             request=_img(_jpeg_zip_polyglot(rng))),
        Case("polyglot_png_html", "image", "PNG with an HTML/script tEXt chunk", "OK",
             request=_img(_png_html_polyglot(rng))),
        # unusual but legitimate photos: accepted
        Case("one_by_one_png", "image", "1 x 1 PNG", "OK",
             request=_img(_encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"))),
        Case("aspect_bomb_30000x1_png", "image", "172-byte 30000 x 1 PNG: under every cap, but the short-side "
             "resize makes it 1.92M x 64 px (~1.2 GB, ~1 s in Triton's python stub)", bad, "aspect",
             request=_img(_encode(Image.new("RGB", (30_000, 1), (10, 120, 200)), "PNG")),
),
        Case("aspect_bomb_1x39M_png", "image", "76 KB PNG declaring 1 x 39,000,000 px: under the pixel cap, "
             "decoding it cost 1.5-2.3 s of Triton CPU before the aspect check; now refused from its header",
             bad, "refused before decoding", request=_img(tall_png(39_000_000))),
        Case("wide_30000x10_png", "image", "30000 x 10 PNG (extreme aspect ratio, 300 kpx)", "OK",
             request=_img(_encode(Image.new("RGB", (30000, 10), (10, 120, 200)), "PNG"))),
        Case("tall_10x30000_png", "image", "10 x 30000 PNG", "OK",
             request=_img(_encode(Image.new("RGB", (10, 30000), (10, 200, 120)), "PNG"))),
        Case("cmyk_jpeg", "image", "CMYK JPEG (print workflows, some phone exports)", "OK",
             request=_img(_encode(_product_like(rng).convert("CMYK"), "JPEG", quality=90))),
        Case("grey16_png", "image", "16-bit greyscale PNG", "OK",
             request=_img(_encode(Image.fromarray(rng.integers(0, 65535, (48, 48)).astype(np.uint16)), "PNG"))),
        Case("rgb16_png", "image", "16-bit-per-channel RGB PNG", "OK", request=_img(_rgb16_png(rng))),
        Case("animated_gif", "image", "4-frame animated GIF (first frame is embedded)", "OK",
             request=_img(_animated(rng, "GIF"))),
        Case("animated_png", "image", "4-frame APNG", "OK", request=_img(_animated(rng, "PNG"))),
        Case("exif_rotated_jpeg", "image", "JPEG with EXIF orientation 6 (phone photo held upright)", "OK",
             request=_img(_exif_rotated_jpeg(rng))),
        Case("broken_exif_jpeg", "image", "valid JPEG with a garbage EXIF block (ignored, not fatal)", "OK",
             request=_img(_broken_exif_jpeg(rng))),
        Case("rgba_png_transparent", "image", "RGBA PNG, half transparent (composited on white)", "OK",
             request=_img(_encode(_product_like(rng).convert("RGBA").rotate(30), "PNG"))),
        Case("webp", "image", "lossy WebP", "OK", request=_img(_encode(_product_like(rng), "WEBP", quality=80))),
        Case("tiff", "image", "uncompressed TIFF", "OK", request=_img(_encode(_product_like(rng), "TIFF"))),
        Case("large_valid_png_under_cap", "image", "valid 5000 x 5000 all-zero PNG (25 Mpx, under the cap)",
             "OK", request=_img(_zero_rows_png(5000, 5000))),
        # sizes
        Case("image_over_service_cap", "image", f"{MAX_IMAGE_BYTES + MiB // 2} bytes: over the image cap, "
             "under the request cap", bad, f"the limit is {MAX_IMAGE_BYTES} bytes",
             request=_img(b"\xff\xd8\xff" + b"\0" * (MAX_IMAGE_BYTES + MiB // 2 - 3))),
        Case("bad_image_good_text", "image", "a corrupt image with a good text: the whole query is refused",
             bad, "corrupt", request=_img(png[: len(png) // 2], text=NORMAL_TEXT)),
        Case("zero_byte_image_with_text", "image", "empty image field with a text: treated as text-only", "OK",
             request=search_pb2.SearchRequest(image=b"", text=NORMAL_TEXT, top_k=5)),
    ]
    return cases


def text_cases(rng: np.random.Generator) -> list[Case]:
    bad = "INVALID_ARGUMENT"
    emoji = "👗👠👜🧢⌚☕️👩🏽‍🦰🏳️‍🌈"
    return [
        Case("empty_text", "text", "text field present and empty", bad, "empty query", request=_txt("")),
        Case("whitespace_text", "text", "spaces, tabs, newlines, NBSP, ideographic space", bad, "empty query",
             request=_txt(" \t\r\n\u00a0\u3000 ")),
        Case("text_100kb", "text", "100 KB of text", bad, f"the limit is {MAX_TEXT_CHARS}",
             request=_txt("red dress " * 10_240)),
        Case("text_at_limit", "text", f"exactly {MAX_TEXT_CHARS} characters", "OK",
             request=_txt(("blue mug " * 200)[:MAX_TEXT_CHARS])),
        Case("text_over_limit_by_one", "text", f"{MAX_TEXT_CHARS + 1} characters", bad,
             f"text is {MAX_TEXT_CHARS + 1} characters",
             request=_txt(("blue mug " * 200)[: MAX_TEXT_CHARS - 1] + "xx")),
        Case("text_padded_to_limit", "text", "1000 characters plus surrounding whitespace (stripped first)",
             "OK", request=_txt("   " + ("a" * MAX_TEXT_CHARS) + "\n\n")),
        Case("long_single_word", "text", "1000 random letters, no spaces (worst case for BPE)", "OK",
             request=_txt("".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, MAX_TEXT_CHARS)))),
        Case("invalid_utf8", "text", "raw wire bytes: text field holding \\xff\\xfe (not UTF-8)", bad,
             UNPARSEABLE, raw=_field_bytes(TEXT_FIELD, b"red \xff\xfe dress")),
        Case("overlong_utf8", "text", "raw wire bytes: overlong encoding of '/' (\\xc0\\xaf)", bad, UNPARSEABLE,
             raw=_field_bytes(TEXT_FIELD, b"\xc0\xaf\xc0\xafetc")),
        Case("lone_surrogate_wtf8", "text", "raw wire bytes: a lone UTF-16 surrogate (\\xed\\xa0\\x80)", bad,
             UNPARSEABLE, raw=_field_bytes(TEXT_FIELD, b"dress \xed\xa0\x80")),
        Case("control_characters", "text", "NUL, BEL, ESC and an ANSI colour sequence inside words", "OK",
             request=_txt("red\x00dress\x07 \x1b[31mshirt\x1b[0m\x08\x7f")),
        Case("only_nul", "text", "a single NUL character (not whitespace)", "OK", request=_txt("\x00")),
        Case("rtl_arabic_hebrew", "text", "Arabic and Hebrew with RTL/LTR marks", "OK",
             request=_txt("\u200fفستان أحمر\u200e שמלה אדומה")),
        Case("bidi_override", "text", "RIGHT-TO-LEFT OVERRIDE hiding the text's order", "OK",
             request=_txt("\u202eesrever\u202c red shirt")),
        Case("emoji_zwj", "text", "emoji with ZWJ sequences, skin tones, flags", "OK", request=_txt(emoji)),
        Case("emoji_at_limit", "text", f"{MAX_TEXT_CHARS} astral-plane characters (4 bytes each on the wire)",
             "OK", request=_txt("👗" * MAX_TEXT_CHARS)),
        Case("combining_marks", "text", "'zalgo' text: letters buried under combining marks", "OK",
             request=_txt("r\u0336\u0301\u0327e\u0335\u0308d\u0334\u0303 " * 20)),
        Case("zero_width_only", "text", "only zero-width spaces/joiners (not stripped: embeds as near-empty)",
             "OK", request=_txt("\u200b\u200c\u200d\u2060")),
        Case("html_and_sql_text", "text", "HTML/SQL/template injection strings are just words", "OK",
             request=_txt("<script>alert(1)</script>' OR 1=1; -- {{7*7}} ${jndi:ldap://x}")),
    ]


def request_cases(rng: np.random.Generator) -> list[Case]:
    bad = "INVALID_ARGUMENT"
    top_k_msg = f"top_k must be between 1 and {MAX_TOP_K}"
    huge_text = _field_bytes(TEXT_FIELD, b"x" * (MAX_REQUEST_BYTES + MiB))
    cases = [
        Case("empty_request", "request", "no fields at all", bad, "empty query", request=search_pb2.SearchRequest()),
        Case("only_filters", "request", "filters and facets but no query", bad, "empty query",
             request=search_pb2.SearchRequest(filters=[_flt("color", "red")], facets=["color"])),
        Case("top_k_zero", "request", "top_k = 0 (explicitly set)", bad, top_k_msg,
             request=search_pb2.SearchRequest(text=NORMAL_TEXT, top_k=0)),
        Case("top_k_negative", "request", "top_k = -1", bad, top_k_msg,
             request=search_pb2.SearchRequest(text=NORMAL_TEXT, top_k=-1)),
        Case("top_k_int32_min", "request", "top_k = -2**31", bad, top_k_msg,
             request=search_pb2.SearchRequest(text=NORMAL_TEXT, top_k=-(2**31))),
        Case("top_k_over_max", "request", f"top_k = {MAX_TOP_K + 1}", bad, top_k_msg,
             request=search_pb2.SearchRequest(text=NORMAL_TEXT, top_k=MAX_TOP_K + 1)),
        Case("top_k_int32_max", "request", "top_k = 2**31 - 1", bad, top_k_msg,
             request=search_pb2.SearchRequest(text=NORMAL_TEXT, top_k=2**31 - 1)),
        Case("top_k_at_max", "request", f"top_k = {MAX_TOP_K} (every product of a small catalog)", "OK",
             request=search_pb2.SearchRequest(text=NORMAL_TEXT, top_k=MAX_TOP_K)),
        Case("top_k_unset", "request", "top_k absent: the default applies", "OK",
             request=search_pb2.SearchRequest(text=NORMAL_TEXT),
             checks=(("default top_k hits", lambda r: len(r.hits) == DEFAULTS.default_top_k),)),
        Case("unknown_filter_facet", "request", "filter on a facet the index does not have", bad,
             "unknown facet 'colour'", request=_txt(NORMAL_TEXT, filters=[_flt("colour", "red")])),
        Case("blank_filter_facet", "request", "filter with an empty facet name", bad, "unknown facet ''",
             request=_txt(NORMAL_TEXT, filters=[_flt("", "red")])),
        Case("filter_without_values", "request", "filter naming a facet but no values", bad,
             "needs at least one value", request=_txt(NORMAL_TEXT, filters=[_flt("color")])),
        Case("filter_blank_value", "request", "filter with a whitespace-only value", bad,
             "needs at least one value", request=_txt(NORMAL_TEXT, filters=[_flt("color", "red", "  ")])),
        Case("filter_unknown_value", "request", "known facet, value no product has: OK with no hits", "OK",
             hits="none", request=_txt(NORMAL_TEXT, filters=[_flt("color", "ultraviolet")])),
        Case("filter_many_values", "request", "10,000 distinct values in one filter (~150 KB)", "OK", hits="none",
             request=_txt(NORMAL_TEXT, filters=[_flt("color", *(f"shade-{i:05d}" for i in range(10_000)))])),
        Case("unknown_facet_requested", "request", "facet counts asked for an unknown facet", bad,
             "unknown facet 'size'", request=_txt(NORMAL_TEXT, facets=["size"])),
        Case("duplicate_facets_and_filters", "request", "the same facet requested and filtered twice", "OK",
             hits="any", request=_txt(NORMAL_TEXT, facets=["color", "color"],
                                      filters=[_flt("color", "red"), _flt("color", "blue")])),
        Case("unknown_protobuf_field", "request", "a valid request plus field 99 (a newer client): ignored",
             "OK", raw=_txt(NORMAL_TEXT).SerializeToString() + _field_bytes(99, b"from the future")),
        Case("wrong_wire_type", "request", "top_k sent length-delimited instead of as a varint: protobuf keeps "
             "it as an unknown field, so the default top_k applies", "OK",
             raw=_field_bytes(TEXT_FIELD, NORMAL_TEXT.encode()) + _field_bytes(TOP_K_FIELD, b"\x05"),
             checks=(("default top_k hits", lambda r: len(r.hits) == DEFAULTS.default_top_k),)),
        Case("truncated_protobuf", "request", "a message cut inside a field (length says more follows)", bad,
             UNPARSEABLE, raw=_field_bytes(TEXT_FIELD, b"red dress")[:-3]),
        Case("request_over_transport_cap", "request", f"a {MAX_REQUEST_BYTES + MiB}-byte text field: over the "
             f"{MAX_REQUEST_BYTES}-byte receive cap", "RESOURCE_EXHAUSTED", "larger than max", raw=huge_text),
        Case("hostile_request_id", "request", "x-request-id metadata with path/script characters: replaced",
             "OK", request=_txt(NORMAL_TEXT), metadata=(("x-request-id", "../../etc/passwd<script>"),),
             checks=(("request id was not echoed", lambda r: "<" not in r.request_id and "/" not in r.request_id
                      and len(r.request_id) == 16),)),
        Case("overlong_request_id", "request", "a 4 KB x-request-id: replaced by a generated one", "OK",
             request=_txt(NORMAL_TEXT), metadata=(("x-request-id", "a" * 4096),),
             checks=(("request id bounded", lambda r: len(r.request_id) <= 64),)),
        Case("explain_text_only", "request", "explain on a text-only query: no attributes, still OK", "OK",
             request=_txt(NORMAL_TEXT, explain=True),
             checks=(("no query attributes", lambda r: len(r.query_attributes) == 0),)),
    ]
    return cases


def build_corpus(seed: int = 0) -> list[Case]:
    """Every case, deterministic for a seed; names are unique."""
    rng = np.random.default_rng(seed)
    cases = [*image_cases(rng), *text_cases(rng), *request_cases(rng)]
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise AssertionError(f"duplicate case names: {sorted(dupes)}")
    return cases


def write_corpus(out: Path, seed: int = 0) -> Path:
    """Write each case's wire payload (<name>.bin) and cases.json (expectations) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for case in build_corpus(seed):
        payload = case.payload()
        (out / f"{case.name}.bin").write_bytes(payload)
        index.append({"name": case.name, "group": case.group, "description": case.description,
                      "expect": case.expect, "fragment": case.fragment, "hits": case.hits,
                      "metadata": dict(case.metadata), "payload": f"{case.name}.bin", "bytes": len(payload)})
    path = out / "cases.json"
    path.write_text(json.dumps({"seed": seed, "cases": index}, indent=2, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the payloads and cases.json here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="print the cases and their expected statuses")
    args = parser.parse_args(argv)
    if not args.out and not args.list:
        parser.error("give --out DIR and/or --list")
    cases = build_corpus(args.seed)
    if args.list:
        for c in cases:
            want = c.expect if c.expect != "OK" else f"OK ({c.hits} hits)"
            print(f"{c.group:8} {c.name:32} {want:24} {c.fragment or '':40} {c.description}")
        print(f"{len(cases)} cases")
    if args.out:
        print(f"wrote {write_corpus(args.out, args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
