"""The gpu profile's DALI preprocessing, run on the CPU (same pipeline definition, ``device="cpu"``),
against the Pillow path the cpu profile serves: pixel differences and the Recall@10 change on a catalog.

Both sides get what the server would get: the Pillow side ``preprocess_bytes``; the DALI side the
``image_gate`` step (pass-through or lossless transcode) and then the pipeline. The bounds are stated
here, in 0-255 pixel units (the normalised difference times 255 std). DALI's antialiased cubic /
linear resampling is the same family of filter as Pillow's, not the same code: small differences
at edges and in rounding are expected; a wrong size, crop offset, channel order or normalisation
would show as tens of levels. (On a GPU, nvJPEG decodes JPEG with its own IDCT/upsampling: not
measured here.)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lenscope.client.core.modelspec import InputLimits, PreprocessConfig
from lenscope.client.inputs.gate import gate
from lenscope.client.inputs.preprocess import preprocess_bytes
from lenscope.export.dali_pipeline import run_cpu

pytestmark = [pytest.mark.slow, pytest.mark.export]


@pytest.fixture(autouse=True)
def _dali() -> None:
    """Skip when the optional extra is absent, at run time: a module-level skip would be counted at
    collection even when the slow tier is deselected (and CI fails any skip, LENSCOPE_NO_SKIP=1)."""
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed: pip install -e '.[dali]' (optional extra, ~420 MB)")

LIMITS = InputLimits()
# Levels of 255. Both sides use the same kernels (cubic a=-0.5 / triangle, widened by the downscale
# factor: checked on an impulse), so almost every pixel is within rounding; but Pillow rounds and
# clamps the first (horizontal) pass to uint8 before the second, DALI keeps it in float, so where a
# cubic overshoot saturates (high-contrast edges near 0 or 255) single pixels differ by more.
MEAN_ABS = 0.5  # mean over all pixels
P99_ABS = 2.0  # 99% of pixels within 2 levels
MAX_ABS = 24.0  # any pixel (measured up to 18 on saturated noisy edges; see the note in the module)
# Retrieval on the catalog (both query and catalog images through each path).
MAX_RECALL_DELTA_PT = 0.5
MIN_COSINE = 0.999

SIZES = [(640, 480), (480, 640), (300, 300), (1000, 151), (97, 611), (225, 223), (31, 45), (224, 224), (224, 300),
         (451, 333)]


def _images(seed: int = 7) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i, (w, h) in enumerate(SIZES):
        y, x = np.mgrid[0:h, 0:w]
        smooth = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], -1)
        # photo-like: smooth gradients plus moderate noise and a few hard edges
        arr = smooth + rng.normal(0, 12, smooth.shape) + 80 * ((x // 23 + y // 17) % 2)[..., None] * (i % 2)
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))
    return out


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _pixels_255(cfg: PreprocessConfig, encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    pillow = np.stack([preprocess_bytes(b, cfg, LIMITS) for b in encoded])
    dali = run_cpu(cfg, [gate(b, cfg, LIMITS)[0] for b in encoded], batch_size=4)
    assert dali.shape == pillow.shape == (len(encoded), 3, cfg.image_size, cfg.image_size)
    scale = (255.0 * np.asarray(cfg.std, np.float64))[None, :, None, None]
    return pillow * scale, dali * scale


def _report(diff: np.ndarray) -> dict[str, float]:
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "p99_abs": float(np.percentile(diff, 99))}


def _within_bounds(stats: dict[str, float]) -> None:
    assert stats["mean_abs"] <= MEAN_ABS, stats
    assert stats["p99_abs"] <= P99_ABS, stats
    assert stats["max_abs"] <= MAX_ABS, stats


CONFIGS = [
    PreprocessConfig(image_size=224),  # open_clip's default: shortest side, bicubic
    PreprocessConfig(image_size=224, interpolation="bilinear"),
    PreprocessConfig(image_size=97, resize_mode="squash"),
    PreprocessConfig(image_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.resize_mode}-{c.interpolation}-{c.image_size}")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_dali_cpu_pixels_match_pillow(cfg: PreprocessConfig, fmt: str) -> None:
    encoded = [_encode(img, fmt) for img in _images()]
    pillow, dali = _pixels_255(cfg, encoded)
    diff = np.abs(pillow - dali)
    stats = _report(diff)
    print(f"{fmt} {cfg.resize_mode}/{cfg.interpolation}/{cfg.image_size}: {stats}")
    _within_bounds(stats)


def test_transcoded_images_match_too() -> None:
    """Alpha, EXIF rotation and GIF go through the gate's Pillow decode: the same bounds."""
    cfg = PreprocessConfig(image_size=224)
    base = _images()[:3]
    rgba = base[0].convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(rgba.width)[None, :].repeat(rgba.height, 0) % 256).astype(np.uint8)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    base[1].save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    encoded = [_encode(rgba, "PNG"), buf.getvalue(), _encode(base[2].convert("P"), "GIF")]
    pillow, dali = _pixels_255(cfg, encoded)
    stats = _report(np.abs(pillow - dali))
    print(f"transcoded: {stats}")
    _within_bounds(stats)


def test_recall_at_10_on_a_catalog(tmp_path: Path) -> None:
    """The shipped model on a 600-product JPEG catalog at 160 px (resized to its 64 px input): catalog
    and photo queries embedded through each path; Recall@10 over the held-out image queries."""
    pytest.importorskip("torch")
    from lenscope.client.catalog.reader import read_catalog, read_queries
    from lenscope.client.core import contract
    from lenscope.client.core.manifest import load_manifest
    from lenscope.client.eval.queries import query_image
    from lenscope.client.synth.catalog import generate_catalog
    from lenscope.export.pipeline import export_model
    from lenscope.export.precision import _recall, _run, _session, row_cosines

    onnx_dir = tmp_path / "onnx"
    export_model(out=tmp_path / "repo", onnx_dir=onnx_dir, log=lambda _m: None)
    spec = load_manifest(onnx_dir).spec
    cfg = spec.preprocess
    cat = generate_catalog(tmp_path / "cat", n_products=600, seed=3, image_size=160, image_format="jpeg")
    catalog = read_catalog(cat.catalog)
    rows = list(catalog)
    qset = read_queries(cat.catalog.with_name("queries.jsonl"), catalog)
    queries = [q for q in qset if q.type == "image" and q.image]
    assert len(queries) >= 20
    keys = [(catalog.root / r.image).read_bytes() for r in rows]
    photos = [query_image(qset, q) for q in queries]
    sess = _session(onnx_dir / contract.IMAGE_ONNX)

    def embed(pixels: np.ndarray) -> np.ndarray:
        return _run(sess, contract.PIXEL_VALUES, pixels.astype(np.float32))

    pillow = {k: embed(np.stack([preprocess_bytes(b, cfg, LIMITS) for b in v])) for k, v in (("keys", keys), ("q", photos))}
    dali = {k: embed(run_cpu(cfg, [gate(b, cfg, LIMITS)[0] for b in v])) for k, v in (("keys", keys), ("q", photos))}
    ids = [r.product_id for r in rows]
    rel = [q.relevance for q in queries]
    r_pillow, r_dali = _recall(pillow["q"], pillow["keys"], ids, rel), _recall(dali["q"], dali["keys"], ids, rel)
    cos = np.concatenate([row_cosines(pillow[k], dali[k]) for k in ("keys", "q")])
    delta_pt = 100.0 * (r_pillow - r_dali)
    print(f"catalog: {len(rows)} products, {len(queries)} image queries; Recall@10 Pillow {r_pillow:.4f} "
          f"DALI-CPU {r_dali:.4f} (delta {delta_pt:+.2f} pt); cosine min {cos.min():.6f} mean {cos.mean():.6f}")
    assert 0.2 < r_pillow < 1.0  # neither floor nor ceiling: a delta between two zeros (or ones) proves nothing
    assert abs(delta_pt) <= MAX_RECALL_DELTA_PT
    assert cos.min() >= MIN_COSINE


def test_serialised_gpu_pipeline_names_the_triton_input_and_decodes_on_the_gpu() -> None:
    """What goes into the repository: the GPU graph (mixed decoder), fed by the ENCODED_IMAGE input."""
    from lenscope.export.dali_pipeline import serialize

    blob = serialize(PreprocessConfig(image_size=224), max_batch_size=32)
    assert b"ENCODED_IMAGE" in blob and b"mixed" in blob
    assert b"Resize" in blob and b"CropMirrorNormalize" in blob
