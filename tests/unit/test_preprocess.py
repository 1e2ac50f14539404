"""Decoding and preprocessing without torch: every refusal reason, every accepted mode, every
resize mode. Images are generated here, never committed."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from lenscope.client.core.modelspec import InputLimits, PreprocessConfig
from lenscope.client.inputs.preprocess import ImageInputError, decode_image, preprocess, preprocess_bytes

LIMITS = InputLimits()
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def px(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels in a few dozen bytes: the classic bomb shape."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def refused(data: bytes, limits: InputLimits = LIMITS) -> ImageInputError:
    with pytest.raises(ImageInputError) as info:
        decode_image(data, limits)
    assert isinstance(info.value, ValueError)
    return info.value


# --- refusals ---------------------------------------------------------------------------------


def test_empty():
    assert refused(b"").reason == "empty"


def test_over_byte_limit_names_the_limit():
    data = encode(noise(64, 64), "PNG")
    err = refused(data, InputLimits(max_image_bytes=1024))
    assert err.reason == "too_large_bytes"
    assert "1024" in str(err) and str(len(data)) in str(err)


def test_over_pixel_limit_names_the_limit():
    err = refused(encode(noise(100, 60), "PNG"), InputLimits(max_image_pixels=5000))
    assert err.reason == "too_many_pixels"
    assert "100x60" in str(err) and "5000" in str(err)


def test_pixel_limit_checked_before_decoding():
    # Header says 9000x5000 but there is no pixel data: only a header-level check can see it.
    assert refused(png_header_only(9000, 5000)).reason == "too_many_pixels"


def test_bomb_refused_by_pillow():
    # 400 Mpx: Pillow itself raises DecompressionBombError inside Image.open.
    assert refused(png_header_only(20000, 20000)).reason == "decompression_bomb"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_in_pillow_warning_band_even_with_a_generous_limit():
    # ~100 Mpx is over Pillow's warning threshold; a raised pixel limit must not let it through.
    err = refused(png_header_only(10000, 10000), InputLimits(max_image_pixels=10**9))
    assert err.reason == "decompression_bomb"


def test_global_pillow_state_untouched():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    refused(png_header_only(20000, 20000))
    refused(encode(noise(64, 64), "JPEG")[:500])
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = encode(noise(128, 128), fmt)
    err = refused(data[: len(data) // 2])
    assert err.reason == "corrupt"
    assert fmt in str(err)


def test_header_fragment_is_corrupt_not_unsupported():
    assert refused(encode(noise(8, 8), "PNG")[:12]).reason == "corrupt"


def test_random_bytes():
    data = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert refused(data).reason == "unsupported_format"


@pytest.mark.parametrize(
    "data, hint",
    [
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><rect width='10' height='10'/></svg>", "SVG"),
        (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "HTML"),
        (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF", "PDF"),
    ],
)
def test_text_disguised_as_image(data, hint):
    err = refused(data)
    assert err.reason == "unsupported_format"
    assert hint in str(err) and "JPEG" in str(err)


def test_unaccepted_real_image_format():
    assert refused(encode(Image.new("RGB", (8, 8)), "ICO")).reason == "unsupported_format"


# --- accepted inputs --------------------------------------------------------------------------


def test_plain_rgb_equals_pillow_convert():
    # The path open_clip users take (Image.open(...).convert("RGB")) must be unchanged.
    data = encode(noise(50, 30), "JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    np.testing.assert_array_equal(px(decode_image(data, LIMITS)), expected)


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})])
def test_lossless_formats_exact(fmt, kw):
    src = noise(33, 21, seed=1)
    np.testing.assert_array_equal(px(decode_image(encode(src, fmt, **kw), LIMITS)), np.asarray(src))


def test_lossy_webp():
    out = px(decode_image(encode(Image.new("RGB", (32, 32), RED), "WEBP", quality=90), LIMITS))
    assert np.abs(out - RED).max() <= 8


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = px(decode_image(data, LIMITS))
    assert out.shape == (16, 16, 3) and (out == RED).all()


def test_greyscale():
    src = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = px(decode_image(encode(Image.fromarray(src, "L"), "PNG"), LIMITS))
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], src)


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert np.abs(px(decode_image(data, LIMITS)) - RED).max() <= 4


def test_rgba_composited_on_white():
    a = np.zeros((4, 3, 4), dtype=np.uint8)
    a[0] = (255, 0, 0, 255)  # opaque red
    a[1] = (0, 0, 0, 0)  # fully transparent black -> white, not black
    a[2] = (0, 255, 0, 128)  # half-transparent green
    a[3] = (10, 20, 30, 0)  # transparent garbage colour -> white too
    out = px(decode_image(encode(Image.fromarray(a, "RGBA"), "PNG"), LIMITS))
    assert (out[0] == RED).all() and (out[1] == WHITE).all() and (out[3] == WHITE).all()
    assert np.abs(out[2] - (127, 255, 127)).max() <= 1


def test_la_composited_on_white():
    a = np.array([[[50, 255], [50, 0]]], dtype=np.uint8)
    out = px(decode_image(encode(Image.fromarray(a, "LA"), "PNG"), LIMITS))
    assert (out[0, 0] == 50).all() and (out[0, 1] == 255).all()


def test_palette_with_transparency():
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    data = encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = px(decode_image(data, LIMITS))
    assert (out[0, 0] == WHITE).all() and (out[0, 1] == RED).all()


def test_palette_without_transparency():
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    img.putdata([0, 1] * 4)
    out = px(decode_image(encode(img, "PNG"), LIMITS))
    assert (out[0, 0] == BLUE).all() and (out[0, 1] == RED).all()


def test_16bit_png_scaled_not_clipped():
    src = np.array([[0, 257, 128 * 257, 200 * 257 + 100, 65535, 1000]], dtype=np.uint16)
    data = encode(Image.fromarray(src), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = px(decode_image(data, LIMITS))
    # v >> 8, like Pillow's own 16-bit RGB PNG path; clipping would give 255 for all but 0.
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 201, 255, 3])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_exif_orientation_applied():
    # Stored 64 wide x 32 high, top half red, bottom half blue. Orientation 6 = "rotate 90 deg
    # clockwise to display": upright it is 32 x 64 with the stored top on the right.
    a = np.zeros((32, 64, 3), dtype=np.uint8)
    a[:16], a[16:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())
    out = px(decode_image(data, LIMITS))
    assert out.shape == (64, 32, 3)
    assert np.abs(out[:, :12] - BLUE).max() <= 16 and np.abs(out[:, 20:] - RED).max() <= 16


def test_broken_exif_is_ignored():
    data = encode(Image.new("RGB", (8, 8), GREEN), "JPEG", exif=b"Exif\x00\x00garbage")
    assert decode_image(data, LIMITS).size == (8, 8)


# --- preprocess -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("wh", [(80, 40), (40, 80), (64, 64), (17, 130)])
def test_preprocess_shape_dtype_range(mode, wh):
    cfg = PreprocessConfig(image_size=32, resize_mode=mode)
    out = preprocess(noise(*wh), cfg)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32 and out.flags.c_contiguous
    mean, std = np.array(cfg.mean)[:, None, None], np.array(cfg.std)[:, None, None]
    assert np.isfinite(out).all()
    assert (out >= (0 - mean) / std - 1e-5).all() and (out <= (1 - mean) / std + 1e-5).all()


def test_longest_pads_with_fill():
    cfg = PreprocessConfig(image_size=32, resize_mode="longest", fill=200)
    out = preprocess(Image.new("RGB", (64, 32), RED), cfg)  # resized to 32x16, padded 8 rows each side
    fill = (200 / 255 - np.array(cfg.mean, dtype=np.float32)) / np.array(cfg.std, dtype=np.float32)
    np.testing.assert_allclose(out[:, :8, :], np.broadcast_to(fill[:, None, None], (3, 8, 32)), atol=1e-6)
    np.testing.assert_allclose(out[:, -8:, :], np.broadcast_to(fill[:, None, None], (3, 8, 32)), atol=1e-6)
    red = (np.array(RED) / 255 - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(out[:, 16, 16], red, atol=1e-5)


def test_shortest_center_crops():
    img = np.zeros((32, 96, 3), dtype=np.uint8)
    img[:, 32:64] = GREEN  # centre third green, sides black: the crop keeps only green
    out = preprocess(Image.fromarray(img), PreprocessConfig(image_size=16, resize_mode="shortest"))
    assert out.shape == (3, 16, 16)
    assert np.ptp(out[:, 2:-2, 2:-2], axis=(1, 2)).max() < 1e-5  # uniform green away from edges


def test_preprocess_accepts_non_rgb():
    out = preprocess(Image.new("L", (20, 10), 128), PreprocessConfig(image_size=16))
    assert out.shape == (3, 16, 16)


def test_preprocess_bytes():
    cfg = PreprocessConfig(image_size=24)
    data = encode(noise(40, 30), "PNG")
    np.testing.assert_array_equal(preprocess_bytes(data, cfg, LIMITS), preprocess(decode_image(data, LIMITS), cfg))
    with pytest.raises(ImageInputError):
        preprocess_bytes(b"", cfg, LIMITS)


def test_extreme_aspect_ratio_is_refused_before_the_resize_allocates() -> None:
    """A 172-byte 30000 x 1 PNG would resize (short side -> 64) to 1,920,000 x 64 px (~1.2 GB)."""
    import io as _io

    from lenscope.client.core.modelspec import InputLimits, PreprocessConfig
    from lenscope.client.inputs.preprocess import ImageInputError, preprocess_bytes

    cfg, limits = PreprocessConfig(image_size=64), InputLimits()
    strip = _io.BytesIO()
    Image.new("RGB", (30_000, 1), (10, 120, 200)).save(strip, format="PNG")
    with pytest.raises(ImageInputError) as err:
        preprocess_bytes(strip.getvalue(), cfg, limits)
    assert err.value.reason == "extreme_aspect_ratio" and "1920000x64" in str(err.value)
    wide = _io.BytesIO()
    Image.new("RGB", (30_000, 10), (10, 120, 200)).save(wide, format="PNG")  # 192000 x 64: fine
    assert preprocess_bytes(wide.getvalue(), cfg, limits).shape == (3, 64, 64)


def test_aspect_ratio_bomb_is_refused_from_its_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """76 KB declaring 1 x 39,000,000 px: under the 40 Mpx cap; decoding it cost 1.5-2.3 s of Triton CPU
    before the resize check refused it. Now nothing is decoded: any load() fails this test."""
    from hostile_images import tall_png

    from lenscope.client.inputs.preprocess import check_header

    data = tall_png(39_000_000)
    assert len(data) < 100_000

    def no_decode(self, *a, **kw):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(Image.Image, "draft", no_decode)
    monkeypatch.setattr(Image.Image, "convert", no_decode)
    with pytest.raises(ImageInputError) as err:
        preprocess_bytes(data, PreprocessConfig(), LIMITS)
    assert err.value.reason == "extreme_aspect_ratio" and "header declares 1x39000000" in str(err.value)
    with pytest.raises(ImageInputError, match="refused before decoding"):
        check_header(data, LIMITS, PreprocessConfig())
    # without the preprocessing config only the config-free checks run: the header is fine
    assert check_header(data, LIMITS) == ("PNG", 1, 39_000_000)
    with pytest.raises(ImageInputError) as err:
        check_header(png_header_only(7_000, 7_000), LIMITS)
    assert err.value.reason == "too_many_pixels"
