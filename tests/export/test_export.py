"""ONNX export parity against torch (batch 1 and 7), failure on mismatch, checkpoints, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from lenscope.client.core import contract  # noqa: E402
from lenscope.client.core.manifest import load_manifest  # noqa: E402
from lenscope.client.core.modelspec import SpecError, load_spec, parse_spec  # noqa: E402
from lenscope.export.model import build_model, open_clip_tokenize, save_checkpoint, sha256_file  # noqa: E402
from lenscope.export.onnx_export import export_onnx  # noqa: E402
from lenscope.export.pipeline import DEFAULT_SPEC, export_model  # noqa: E402
from lenscope.export.verify import MAX_ABS_DIFF, MIN_COSINE, VerificationError, verification_inputs, verify  # noqa: E402

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def tiny():
    return build_model(load_spec(DEFAULT_SPEC), DEFAULT_SPEC.parent)


@pytest.fixture(scope="module")
def onnx_paths(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx"))


def _run(path: Path, name: str, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_matches_torch(tiny, onnx_paths, batch: int) -> None:
    image, text, heads = tiny.towers()
    inp = verification_inputs(tiny, batch, seed=99)
    with torch.no_grad():
        img_ref, txt_ref = image(inp["pixels"]).numpy(), text(inp["ids"]).numpy()
        head_ref = [h.numpy() for h in heads(torch.from_numpy(img_ref))]
    img = _run(onnx_paths[contract.IMAGE_ENCODER], contract.PIXEL_VALUES, inp["pixels"].numpy())[0]
    txt = _run(onnx_paths[contract.TEXT_ENCODER], contract.INPUT_IDS, inp["ids"].numpy())[0]
    outs = _run(onnx_paths[contract.ATTRIBUTE_HEADS], contract.EMBEDDING, img_ref)
    assert img.shape == (batch, 128) and txt.shape == (batch, 128)
    for got, ref in [(img, img_ref), (txt, txt_ref), *zip(outs, head_ref)]:
        assert np.max(np.abs(got - ref)) <= MAX_ABS_DIFF
        assert _cos_min(got, ref) >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    for o in outs:
        np.testing.assert_allclose(o.sum(axis=1), 1.0, atol=1e-5)


def test_verification_failure_stops_with_numbers(tiny, onnx_paths) -> None:
    other = build_model(tiny.spec, DEFAULT_SPEC.parent)  # same architecture, weights nudged
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.clip.visual.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=gen))
    with pytest.raises(VerificationError) as err:
        verify(other, onnx_paths)
    msg = str(err.value)
    assert "failed numerical verification" in msg and "max|diff|" in msg and "min cosine" in msg
    assert not err.value.report.passed


def test_export_writes_manifest_with_verification_inside_tolerance(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    manifest = export_model(out=out, log=lambda _m: None)
    on_disk = load_manifest(out)
    assert on_disk.model_hash == manifest.model_hash and len(on_disk.model_hash) == 16
    assert on_disk.weights == "checkpoint" and on_disk.heads_trained
    assert on_disk.checkpoint.sha256 == sha256_file(DEFAULT_SPEC.parent / load_spec(DEFAULT_SPEC).checkpoint)
    for name in (contract.IMAGE_ENCODER, contract.TEXT_ENCODER, contract.ATTRIBUTE_HEADS):
        checks = on_disk.verification["towers"][name]
        assert [c["batch"] for c in checks] == [1, 7]
        for c in checks:
            assert c["max_abs_diff"] <= MAX_ABS_DIFF and c["min_cosine"] >= MIN_COSINE and c["passed"]
        onnx_file = next((out / name / "1").glob("*.onnx"))
        assert sha256_file(onnx_file) == on_disk.onnx_sha256[name]
    for key in ("torch", "open_clip_torch", "onnx", "onnxruntime", "python"):
        assert key in on_disk.tool_versions
    assert (out / contract.TEXT_TOKENIZER / "1" / contract.BPE_VOCAB_FILE).is_file()
    assert (out / contract.ATTRIBUTE_HEADS / "labels_color.txt").read_text().split() == list(on_disk.labels["color"])
    # A second export of the same spec reproduces the same model hash (deterministic graphs).
    again = export_model(out=out, log=lambda _m: None)
    assert again.model_hash == manifest.model_hash
    assert not (tmp_path / "repo.tmp").exists() and not (tmp_path / "repo.old").exists()


def test_lenscope_checkpoint_round_trip(tiny, tmp_path: Path) -> None:
    with torch.no_grad():
        for p in tiny.heads.parameters():
            p.add_(0.5)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny, ckpt, {"note": "test"})
    data = json.loads(DEFAULT_SPEC.read_text())
    data["checkpoint"] = "tiny.pt"  # relative to the spec file written below
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(data))
    loaded = build_model(load_spec(spec_file), tmp_path)
    assert loaded.heads_trained and loaded.checkpoint_sha256 == sha256_file(ckpt)
    for a, b in zip(tiny.heads.state_dict().values(), loaded.heads.state_dict().values()):
        assert torch.equal(a, b)
    m = export_model(spec_file, tmp_path / "repo", log=lambda _m: None)
    assert m.weights == "checkpoint" and m.checkpoint.sha256 == loaded.checkpoint_sha256 and m.heads_trained


def test_open_clip_architecture_with_checkpoint_file(tmp_path: Path) -> None:
    """Any open_clip architecture works from a plain open_clip state-dict file (no download)."""
    import open_clip

    torch.manual_seed(3)
    ref = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path / "vit_b_32.pt"
    torch.save(ref.state_dict(), path)
    spec = parse_spec({"name": "vit-b-32", "architecture": "ViT-B-32", "checkpoint": str(path), "embed_dim": 512,
                       "context_length": 77, "preprocess": {"image_size": 224},
                       "attributes": [{"name": "color", "labels": ["red", "blue"]}]})
    model = build_model(spec)
    assert not model.heads_trained
    ids = open_clip_tokenize(spec, ["a red dress"])
    with torch.no_grad():
        got = model.towers()[1](ids)
        want = torch.nn.functional.normalize(ref.eval().encode_text(ids), dim=-1)
    assert torch.allclose(got, want, atol=1e-6)


def test_spec_errors_against_the_architecture(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="embed_dim: spec says 256 but ViT-B-32 has 512"):
        build_model(parse_spec({"name": "x", "architecture": "ViT-B-32", "embed_dim": 256}))
    with pytest.raises(SpecError, match="unknown open_clip model 'ViT-Q-99'"):
        build_model(parse_spec({"name": "x", "architecture": "ViT-Q-99", "embed_dim": 512}))
    with pytest.raises(SpecError, match="does not exist"):
        build_model(parse_spec({"name": "x", "architecture": "ViT-B-32", "embed_dim": 512, "preprocess": {"image_size": 224},
                                "checkpoint": str(tmp_path / "absent.pt")}))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    data = json.loads(DEFAULT_SPEC.read_text())
    data["checkpoint"] = str(garbage)
    with pytest.raises(SpecError, match="could not be read as a torch checkpoint"):
        build_model(parse_spec(data))


def test_ranking_fit_beside_checkpoint_travels_in_the_manifest(tmp_path: Path) -> None:
    """The fit files beside a checkpoint go into the manifest (both or neither, validated at export)."""
    from lenscope.client.ranking.fusion import FusionWeights, WeightsError
    from lenscope.export.pipeline import ranking_fit_beside

    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights")
    assert ranking_fit_beside(ckpt) is None and ranking_fit_beside(None) is None
    (tmp_path / "m.fusion.json").write_text(FusionWeights().model_dump_json())
    assert ranking_fit_beside(ckpt) is None  # fusion without its calibration scale is meaningless
    shipped = DEFAULT_SPEC.parent.parent / "weights" / "lenscope-tiny.calibration.json"
    (tmp_path / "m.calibration.json").write_text(shipped.read_text())
    fit = ranking_fit_beside(ckpt)
    assert fit is not None and fit.source == "m.fusion.json, m.calibration.json"
    assert fit.fusion == json.loads(FusionWeights().model_dump_json())
    # bound to the model the calibration was fitted with, and to no catalog without a binding file
    assert fit.model_hash == json.loads(shipped.read_text())["model_hash"] and fit.catalog_fingerprint is None
    (tmp_path / "m.binding.json").write_text(json.dumps({"catalog_fingerprint": "abc123"}))
    assert ranking_fit_beside(ckpt).catalog_fingerprint == "abc123"
    (tmp_path / "m.binding.json").write_text(json.dumps({"catalog_fingerprint": ""}))
    with pytest.raises(ValueError, match="m.binding.json: catalog_fingerprint"):
        ranking_fit_beside(ckpt)
    (tmp_path / "m.binding.json").unlink()
    (tmp_path / "m.fusion.json").write_text(json.dumps({"schema_version": 1, "visual": -1}))
    with pytest.raises(WeightsError, match="m.fusion.json"):
        ranking_fit_beside(ckpt)
