"""The gpu profile's DALI image path, on CPU and without DALI installed: the rendered configs (gate ->
DALI image_preprocess -> encoder), the files written, and the fallback to python preprocessing that is
logged and recorded when DALI cannot be used. (The pipeline's numbers: tests/export/test_dali_parity.py.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest
from lenscope.client.core.modelspec import InputLimits, PreprocessConfig, load_spec
from lenscope.client.inputs.gate import PASS, gate
from lenscope.client.inputs.preprocess import ImageInputError, decode_image
from lenscope.export import dali_pipeline
from lenscope.export.repository import RepositorySettings, build_configs, write_repository
from lenscope.export.triton_config import parse, render

REPO = Path(__file__).parents[2]
SPEC = load_spec(REPO / "export" / "specs" / "lenscope-tiny.json")
GPU = RepositorySettings(profile="gpu", max_batch_size=32, opt_batch_size=8)


def manifest(profile: str = "gpu") -> Manifest:
    return Manifest(model_hash="0123456789abcdef", spec=SPEC, profile=profile, weights="seeded-init",
                    heads_trained=False, onnx_sha256={}, verification={}, tool_versions={}, created_at="now",
                    extras={"repository_settings": {"gpu_preprocess": "dali"}})


def as_dict(cfg) -> dict:
    return json_format.MessageToDict(parse(render(cfg)), preserving_proto_field_name=True)


def test_gpu_image_path_is_gate_then_dali_then_encoder() -> None:
    configs = build_configs(manifest(), GPU)
    steps = as_dict(configs[contract.EMBED_IMAGE])["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == [contract.IMAGE_GATE, contract.IMAGE_PREPROCESS,
                                                contract.IMAGE_ENCODER, contract.ATTRIBUTE_HEADS]
    assert steps[0]["input_map"] == {"IMAGE": "IMAGE"} and steps[0]["output_map"] == {"ENCODED_IMAGE": "ENCODED_IMAGE"}
    assert steps[1]["input_map"] == {"ENCODED_IMAGE": "ENCODED_IMAGE"}

    dali = as_dict(configs[contract.IMAGE_PREPROCESS])
    assert dali["backend"] == "dali" and dali["default_model_filename"] == contract.DALI_MODEL
    assert dali["input"] == [{"name": "ENCODED_IMAGE", "data_type": "TYPE_UINT8", "dims": ["-1"], "allow_ragged_batch": True}]
    assert dali["output"][0]["dims"] == ["3", str(SPEC.preprocess.image_size), str(SPEC.preprocess.image_size)]
    assert dali["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    assert "dynamic_batching" in dali
    assert [w["batch_size"] for w in dali["model_warmup"]] == [1, 8, 32]
    assert all(w["inputs"]["ENCODED_IMAGE"]["input_data_file"] == "sample_encoded" for w in dali["model_warmup"])

    gate_cfg = as_dict(configs[contract.IMAGE_GATE])
    assert gate_cfg["backend"] == "python" and gate_cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert gate_cfg["output"] == [{"name": "ENCODED_IMAGE", "data_type": "TYPE_UINT8", "dims": ["-1"]}]
    assert PreprocessConfig.model_validate_json(gate_cfg["parameters"]["preprocess"]["string_value"]) == SPEC.preprocess


def test_cpu_profile_has_no_gate() -> None:
    configs = build_configs(manifest("cpu"), RepositorySettings())
    assert contract.IMAGE_GATE not in configs
    assert as_dict(configs[contract.IMAGE_PREPROCESS])["backend"] == "python"


def _onnx_stubs(tmp: Path) -> dict[str, Path]:
    paths = {}
    for name, file in ((contract.IMAGE_ENCODER, contract.IMAGE_ONNX), (contract.TEXT_ENCODER, contract.TEXT_ONNX),
                       (contract.ATTRIBUTE_HEADS, contract.HEADS_ONNX)):
        paths[name] = tmp / file
        paths[name].write_bytes(b"not a real graph")
    return paths


def _vocab(tmp: Path) -> Path:
    p = tmp / contract.BPE_VOCAB_FILE
    p.write_bytes(b"vocab")
    return p


def test_without_dali_the_gpu_export_keeps_python_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_a, **_k):
        raise dali_pipeline.DaliUnavailable("nvidia-dali is not installed (test)")

    monkeypatch.setattr(dali_pipeline, "serialize", missing)
    said: list[str] = []
    out = write_repository(tmp_path / "repo", manifest(), _onnx_stubs(tmp_path), _vocab(tmp_path), GPU, log=said.append)
    assert said and "python" in said[0] and "not installed (test)" in said[0]
    written = json.loads((out / contract.MANIFEST_FILE).read_text())
    assert written["extras"]["image_preprocess"] == {
        "requested": "dali", "backend": "python", "reason": "nvidia-dali is not installed (test)"}
    assert written["extras"]["repository_settings"]["gpu_preprocess"] == "python"
    assert (out / contract.IMAGE_PREPROCESS / "1" / "model.py").is_file()
    assert not (out / contract.IMAGE_GATE).exists()
    assert 'backend: "python"' in (out / contract.IMAGE_PREPROCESS / "config.pbtxt").read_text()


def test_with_a_serialised_pipeline_the_repository_carries_it(tmp_path: Path) -> None:
    out = write_repository(tmp_path / "repo", manifest(), _onnx_stubs(tmp_path), _vocab(tmp_path), GPU,
                           dali_model=b"serialised pipeline")
    pre = out / contract.IMAGE_PREPROCESS
    assert (pre / "1" / contract.DALI_MODEL).read_bytes() == b"serialised pipeline"
    assert (pre / "warmup" / "sample_encoded").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # raw bytes, no length prefix
    assert (out / contract.IMAGE_GATE / "1" / "model.py").is_file()
    note = json.loads((out / contract.MANIFEST_FILE).read_text())["extras"]["image_preprocess"]
    assert note["backend"] == "dali" and note["requested"] == "dali"


def test_longest_resize_mode_has_no_dali_pipeline() -> None:
    assert dali_pipeline.unsupported_reason(PreprocessConfig(resize_mode="longest"))
    assert dali_pipeline.unsupported_reason(PreprocessConfig()) is None


# -- the gate ------------------------------------------------------------------------------------

LIMITS = InputLimits()
CFG = PreprocessConfig(image_size=64)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w: int = 80, h: int = 60, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("WEBP", "RGB")])
def test_images_dali_decodes_like_pillow_pass_untouched(fmt: str, mode: str) -> None:
    data = _encode(_rgb(mode=mode), fmt)
    assert gate(data, CFG, LIMITS) == (data, PASS)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_rgb(), "JPEG", exif=exif.tobytes())


@pytest.mark.parametrize("make,why", [
    (lambda: _encode(_rgb(mode="RGBA"), "PNG"), "mode RGBA"),
    (lambda: _encode(_rgb(), "GIF"), "format GIF"),
    (lambda: _encode(_rgb(), "BMP"), "format BMP"),
    (lambda: _encode(_rgb(mode="CMYK"), "JPEG"), "mode CMYK"),
    (_exif_rotated, "EXIF orientation"),
])
def test_other_images_are_the_pillow_decode_as_lossless_png(make, why: str) -> None:
    data = make()
    out, route = gate(data, CFG, LIMITS)
    assert route == f"transcoded ({why})"
    with Image.open(io.BytesIO(out)) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        assert np.array_equal(np.asarray(png), np.asarray(decode_image(data, LIMITS, CFG)))


def test_truncated_and_refused_images_fail_alone_with_the_pillow_reason() -> None:
    jpeg = _encode(_rgb(400, 300), "JPEG")
    with pytest.raises(ImageInputError) as err:
        gate(jpeg[: len(jpeg) // 2], CFG, LIMITS)
    assert err.value.reason == "corrupt"
    with pytest.raises(ImageInputError) as err:
        gate(_encode(_rgb(), "PNG"), CFG, InputLimits(max_image_pixels=1000))
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(ImageInputError) as err:
        gate(b"<svg></svg>", CFG, LIMITS)
    assert err.value.reason == "unsupported_format"
