"""TensorRT plan records: a plan is refused, with both sides named, when this image's TensorRT or
this GPU differs from what built it, when it was swapped, or when it has no record. Fake plans
(bytes that only need to hash) stand in for engines: the check never deserialises one."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from lenscope.client.core import contract
from lenscope.export.plan_check import (
    PlanInfo,
    PlanMismatch,
    Runtime,
    check_plan,
    check_repository_plans,
    sha256_file,
    sidecar_path,
    write_sidecar,
)

A100_TRT10 = Runtime(tensorrt_version="10.5.0.18", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")


def fake_plan(folder: Path, model_hash: str = "0123456789abcdef", version: str = "10.5.0.18", cap: str = "8.0") -> Path:
    plan = folder / contract.TRT_PLAN
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(b"ftrt\x00\x00\x00\x00fake engine body")
    write_sidecar(plan, PlanInfo(tensorrt_version=version, gpu_name="NVIDIA A100-SXM4-80GB", compute_capability=cap,
                                 model_hash=model_hash, plan_sha256=sha256_file(plan), fp16=True,
                                 min_batch=1, opt_batch=8, max_batch=32))
    return plan


def test_matching_plan_loads(tmp_path: Path) -> None:
    info = check_plan(fake_plan(tmp_path), A100_TRT10, "0123456789abcdef")
    assert info.tensorrt_version == "10.5.0.18" and info.max_batch == 32
    # the build number does not matter, the release does
    check_plan(fake_plan(tmp_path), A100_TRT10.model_copy(update={"tensorrt_version": "10.5.0.99"}))


def test_other_tensorrt_version_is_refused_with_both_versions(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, version="8.6.1.6")
    with pytest.raises(PlanMismatch, match=r"built with TensorRT 8\.6\.1\.6, this image has TensorRT 10\.5\.0\.18") as err:
        check_plan(plan, A100_TRT10)
    assert "lenscope model build-trt" in str(err.value)


def test_other_gpu_is_refused(tmp_path: Path) -> None:
    t4 = Runtime(tensorrt_version="10.5.0.18", gpu_name="Tesla T4", compute_capability="7.5")
    with pytest.raises(PlanMismatch, match=r"compute capability 8\.0\), this GPU is Tesla T4 \(compute capability 7\.5\)"):
        check_plan(fake_plan(tmp_path), t4)


def test_unknown_runtime_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanMismatch, match="no TensorRT found here.*no GPU found here"):
        check_plan(fake_plan(tmp_path), Runtime(tensorrt_version=None, gpu_name=None, compute_capability=None))


def test_swapped_plan_and_other_model_are_refused(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path)
    plan.write_bytes(b"ftrt another engine")
    with pytest.raises(PlanMismatch, match="sha256 differs"):
        check_plan(plan, A100_TRT10)
    with pytest.raises(PlanMismatch, match="built from model 0123456789abcdef, the repository's manifest is model ffff"):
        check_plan(fake_plan(tmp_path), A100_TRT10, "ffff")


def test_missing_or_broken_sidecar_is_refused(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path)
    sidecar_path(plan).unlink()
    with pytest.raises(PlanMismatch, match="no model.plan.json beside it"):
        check_plan(plan, A100_TRT10)
    sidecar_path(plan).write_text('{"tensorrt_version": "10.5.0.18"}')
    with pytest.raises(PlanMismatch, match="model.plan.json: field gpu_name"):
        check_plan(plan, A100_TRT10)


def test_repository_check_uses_the_manifest_hash(tmp_path: Path) -> None:
    from lenscope.client.core.manifest import Manifest
    from lenscope.client.core.modelspec import load_spec

    spec = load_spec(Path(__file__).parents[2] / "export" / "specs" / "lenscope-tiny.json")
    m = Manifest(model_hash="0123456789abcdef", spec=spec, profile="gpu", weights="seeded-init", heads_trained=False,
                 onnx_sha256={}, verification={}, tool_versions={}, created_at="now")
    (tmp_path / contract.MANIFEST_FILE).write_text(m.to_json())
    fake_plan(tmp_path / contract.IMAGE_ENCODER / "1")
    fake_plan(tmp_path / contract.TEXT_ENCODER / "1", model_hash="9999")
    with pytest.raises(PlanMismatch, match=f"{contract.TEXT_ENCODER}/1/model.plan cannot be served here"):
        check_repository_plans(tmp_path, A100_TRT10)


@pytest.mark.parametrize(("version", "flags"), [("10.5.0", 0), ("8.6.1", 1 << 0)])
def test_network_flags_per_tensorrt_major(version: str, flags: int) -> None:
    pytest.importorskip("torch")  # export.trt lives in the torch-side package
    from lenscope.export.trt import network_flags

    fake = types.SimpleNamespace(__version__=version,
                                 NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0))
    assert network_flags(fake) == flags
