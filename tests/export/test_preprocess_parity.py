"""Parity: lenscope's torch-free preprocess equals open_clip's eval transform.

Random RGB images of many aspect ratios (including ones smaller than the target, ones already at
the target size, and odd sizes that exercise the crop/pad rounding) go through both pipelines for
every resize mode and interpolation. The two are expected to agree exactly; the tolerance only
admits float rounding.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.export

pytest.importorskip("open_clip")
from open_clip.transform import PreprocessCfg, image_transform, image_transform_v2  # noqa: E402

from lenscope.client.core.modelspec import InputLimits, PreprocessConfig  # noqa: E402
from lenscope.client.inputs.preprocess import decode_image, preprocess  # noqa: E402

TOL = 1e-5
SEED = 20240612
# (width, height): landscape, portrait, square, extreme strips, odd sizes, upsampling, exact size.
SIZES = [(640, 480), (480, 640), (300, 300), (1000, 151), (97, 611), (225, 223), (31, 45), (224, 224), (224, 300)]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(SEED)
    out = []
    for i, (w, h) in enumerate(SIZES):
        if i % 2:  # smooth content: resize errors are not masked by noise
            y, x = np.mgrid[0:h, 0:w]
            a = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], -1)
            out.append(Image.fromarray(a.astype(np.uint8), "RGB"))
        else:
            out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB"))
    return out


IMAGES = _images()
CONFIGS = [
    PreprocessConfig(image_size=s, resize_mode=m, interpolation=i, fill=f)
    for m in ("shortest", "squash", "longest")
    for i in ("bicubic", "bilinear")
    for s, f in ((224, 0), (97, 128))
] + [PreprocessConfig(image_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="longest", fill=255)]


def _v2(cfg: PreprocessConfig):
    oc = PreprocessCfg(size=cfg.image_size, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation,
                       resize_mode=cfg.resize_mode, fill_color=cfg.fill)
    return image_transform_v2(oc, is_train=False)


def _v1(cfg: PreprocessConfig):
    return image_transform(cfg.image_size, is_train=False, mean=cfg.mean, std=cfg.std,
                           resize_mode=cfg.resize_mode, interpolation=cfg.interpolation, fill_color=cfg.fill)


def _max_diff(transform, cfg: PreprocessConfig, img: Image.Image) -> float:
    ref = transform(img).numpy()
    out = preprocess(img, cfg)
    assert out.shape == ref.shape == (3, cfg.image_size, cfg.image_size)
    assert out.dtype == np.float32
    return float(np.abs(out - ref).max())


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.resize_mode}-{c.interpolation}-{c.image_size}")
@pytest.mark.parametrize("build", [_v2, _v1], ids=["v2", "v1"])
def test_matches_open_clip(cfg, build):
    transform = build(cfg)
    diffs = {img.size: _max_diff(transform, cfg, img) for img in IMAGES}
    worst = max(diffs.values())
    assert worst <= TOL, f"max abs diff per image size: {diffs}"


def test_decoded_jpeg_matches_open_clip_loader():
    # Full path: bytes -> decode_image vs open_clip's usual Image.open(...).convert('RGB').
    buf = io.BytesIO()
    IMAGES[1].save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    cfg = PreprocessConfig()
    ref = _v2(cfg)(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    out = preprocess(decode_image(data, InputLimits()), cfg)
    assert float(np.abs(out - ref).max()) <= TOL
