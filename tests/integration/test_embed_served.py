"""The ensembles served by a real tritonserver equal in-process onnxruntime and torch.

Tolerances (fp32): Triton vs in-process onnxruntime <= 1e-5 (same graph, same inputs: only
batching may differ); Triton vs torch <= 1e-4 (the export verification bound).
"""

from __future__ import annotations

import io
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest
from lenscope.client.inputs.preprocess import preprocess_bytes
from lenscope.client.inputs.tokenizer import ClipTokenizer
from lenscope.client.triton.client import TritonEmbedder

pytestmark = pytest.mark.integration

ORT_TOL = 1e-5
TORCH_TOL = 1e-4
TEXTS = ["red floral summer dress", "navy striped t-shirt", "", "Ünïcödé 靴 👟", "mug " * 40, "black leather handbag"]


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sample_images() -> list[bytes]:
    rng = np.random.default_rng(7)
    out = []
    for i, (h, w, fmt) in enumerate([(64, 64, "PNG"), (120, 80, "JPEG"), (50, 200, "PNG"), (300, 300, "WEBP"),
                                     (97, 131, "JPEG"), (64, 65, "GIF"), (33, 47, "BMP")]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 2] = (i * 30 % 256, 100, 200 - i * 20)  # some structure, not only noise
        out.append(_encode(Image.fromarray(arr, "RGB"), fmt))
    return out


def _session(repo: Path, model: str, onnx_file: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / model / "1" / onnx_file), providers=["CPUExecutionProvider"])


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_served_manifest_matches_file(embedder: TritonEmbedder, manifest: Manifest) -> None:
    served = embedder.manifest()
    assert served["model_hash"] == manifest.model_hash
    assert served["spec"]["embed_dim"] == manifest.embed_dim
    for checks in manifest.verification["towers"].values():
        for c in checks:
            assert c["max_abs_diff"] <= 1e-4 and c["min_cosine"] >= 0.9999


def test_image_embeddings_equal_onnxruntime_and_torch(embedder: TritonEmbedder, exported_repo: Path, manifest: Manifest) -> None:
    images = sample_images()
    served = embedder.embed_images(images)
    assert all(r.ok for r in served), [str(r.error) for r in served if not r.ok]
    got = np.stack([r.embedding for r in served])
    assert got.shape == (len(images), manifest.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    spec = manifest.spec
    pixels = np.stack([preprocess_bytes(b, spec.preprocess, spec.limits) for b in images])
    ref_ort = _session(exported_repo, contract.IMAGE_ENCODER, contract.IMAGE_ONNX).run(None, {contract.PIXEL_VALUES: pixels})[0]
    assert _max_diff(got, ref_ort) <= ORT_TOL

    heads = _session(exported_repo, contract.ATTRIBUTE_HEADS, contract.HEADS_ONNX).run(None, {contract.EMBEDDING: ref_ort})
    for a, ref in zip(spec.attributes, heads):
        probs = np.stack([r.attributes[contract.attribute_output(a.name)] for r in served])
        assert probs.shape == (len(images), len(a.labels))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert _max_diff(probs, ref) <= ORT_TOL

    torch = pytest.importorskip("torch")
    from lenscope.export.model import build_model
    from lenscope.export.pipeline import DEFAULT_SPEC

    image_tower, _, _ = build_model(spec, DEFAULT_SPEC.parent).towers()
    with torch.no_grad():
        ref_torch = image_tower(torch.from_numpy(pixels)).numpy()
    assert _max_diff(got, ref_torch) <= TORCH_TOL


def test_text_embeddings_equal_onnxruntime_and_torch(embedder: TritonEmbedder, exported_repo: Path, manifest: Manifest) -> None:
    served = embedder.embed_texts(TEXTS)
    assert all(r.ok for r in served), [str(r.error) for r in served if not r.ok]
    got = np.stack([r.embedding for r in served])
    spec = manifest.spec
    tok = ClipTokenizer(exported_repo / contract.TEXT_TOKENIZER / "1" / contract.BPE_VOCAB_FILE, spec.context_length)
    ids = tok.encode_batch(TEXTS)
    ref_ort = _session(exported_repo, contract.TEXT_ENCODER, contract.TEXT_ONNX).run(None, {contract.INPUT_IDS: ids})[0]
    assert _max_diff(got, ref_ort) <= ORT_TOL

    torch = pytest.importorskip("torch")
    from lenscope.export.model import build_model, open_clip_tokenize
    from lenscope.export.pipeline import DEFAULT_SPEC

    _, text_tower, _ = build_model(spec, DEFAULT_SPEC.parent).towers()
    with torch.no_grad():
        ref_torch = text_tower(open_clip_tokenize(spec, TEXTS)).numpy()
    assert _max_diff(got, ref_torch) <= TORCH_TOL


def test_concurrent_batch_with_corrupt_images_fails_only_those(embedder: TritonEmbedder, triton) -> None:
    good = sample_images()[:6]
    batch = good[:3] + [b"\xff\xd8\xff\xe0 truncated jpeg"] + good[3:5] + [b""] + good[5:]
    assert len(batch) == 8
    results = embedder.embed_images(batch)
    ok = [i for i, r in enumerate(results) if r.ok]
    bad = [i for i, r in enumerate(results) if not r.ok]
    assert ok == [0, 1, 2, 4, 5, 7] and bad == [3, 6]
    assert results[3].error.status == "INVALID_ARGUMENT" and "corrupt" in results[3].error.message
    assert results[6].error.status == "INVALID_ARGUMENT" and "empty" in results[6].error.message
    alone = embedder.embed_images(good)
    for r_batch, r_alone in zip([results[i] for i in ok], alone):
        assert _max_diff(r_batch.embedding, r_alone.embedding) <= ORT_TOL
    assert triton.is_ready()


def _bomb_png() -> bytes:
    """A 20000x20000 greyscale PNG: tiny on disk, 400 Mpx decoded (over Pillow's bomb threshold)."""
    import struct
    import zlib

    w = h = 20000
    raw = zlib.compress(b"".join(b"\x00" + b"\x00" * w for _ in range(16)), 9)  # only 16 rows' worth

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def bad_image_corpus(manifest: Manifest) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reason in the error message)."""
    png = sample_images()[0]
    jpeg = sample_images()[1]
    big = Image.new("RGB", (7000, 6000), (10, 20, 30))  # 42 Mpx > the 40 Mpx limit
    limit = manifest.spec.limits.max_image_bytes
    return {
        "empty": (b"", "empty"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "truncated_png": (png[: len(png) // 2], "corrupt"),
        "random_bytes": (np.random.default_rng(1).bytes(4096), "unsupported_format"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "unsupported_format"),
        "html": (b"<!DOCTYPE html><html><body>hi</body></html>", "unsupported_format"),
        "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "unsupported_format"),
        "too_many_pixels": (_encode(big, "PNG"), "too_many_pixels"),
        "too_many_bytes": (b"\x89PNG\r\n\x1a\n" + b"\x00" * (limit + 1), "too_large_bytes"),
        "decompression_bomb": (_bomb_png(), "decompression_bomb"),
    }


def test_bad_input_corpus_gets_clear_errors_and_server_stays_ready(embedder: TritonEmbedder, triton, manifest: Manifest) -> None:
    corpus = bad_image_corpus(manifest)
    results = embedder.embed_images([b for b, _ in corpus.values()])
    for (name, (_, reason)), r in zip(corpus.items(), results):
        assert not r.ok, f"{name} was accepted"
        assert r.error.status == "INVALID_ARGUMENT", f"{name}: {r.error}"
        assert reason in r.error.message, f"{name}: expected {reason!r} in {r.error.message!r}"
    texts = [b"\xff\xfe invalid utf-8", "x" * (manifest.spec.limits.max_text_chars + 1)]
    with ThreadPoolExecutor(2) as pool:
        raw_invalid = pool.submit(_infer_raw_text, embedder, texts[0]).result()
    assert raw_invalid is not None and "invalid_utf8" in raw_invalid
    too_long = embedder.embed_texts([texts[1]])[0]
    assert not too_long.ok and "too_long" in too_long.error.message
    assert triton.is_ready()
    after = embedder.embed_images(sample_images()[:2])
    assert all(r.ok for r in after)


def _infer_raw_text(embedder: TritonEmbedder, data: bytes) -> str | None:
    """Send raw (non-UTF-8) bytes: the public API only takes str, so go one level down."""
    res = embedder._fan_out(contract.EMBED_TEXT, contract.TEXT, [data], [contract.EMBEDDING], None)[0]
    return None if res.ok else res.error.message


def test_metrics_count_ensemble_requests(embedder: TritonEmbedder, triton) -> None:
    embedder.embed_texts(["metrics probe"])
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    lines = [l for l in text.splitlines() if l.startswith("nv_inference_request_success") and 'model="embed_text"' in l]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 1


def test_model_configs_served_as_written(triton, exported_repo: Path) -> None:
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{contract.IMAGE_ENCODER}/config", timeout=5) as resp:
        cfg = json.loads(resp.read())
    assert cfg["max_batch_size"] == 32
    assert cfg["dynamic_batching"]["default_queue_policy"]["timeout_action"] == "REJECT"
    assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 128
    assert cfg["model_warmup"][0]["inputs"][contract.PIXEL_VALUES]["zero_data"] is True
