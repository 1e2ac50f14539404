"""benchmarks/gpu_check.py picks the fastest runtime present and says why (pure logic, no GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_runtimes  # noqa: E402


def _fake_ngc(root: Path, with_onnxruntime: bool = True) -> Path:
    binary = root / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    (root / "backends" / ("onnxruntime" if with_onnxruntime else "python")).mkdir(parents=True)
    return binary


def test_triton_image_with_onnxruntime_backend_means_tensorrt(tmp_path: Path) -> None:
    choice = gpu_runtimes.choose("auto", "cuda", _fake_ngc(tmp_path))
    assert (choice.runtime, choice.device) == ("tensorrt", "cuda") and choice.tritonserver is not None
    assert "onnxruntime backend" in choice.reason


def test_without_the_triton_image_torch_with_cuda_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_runtimes, "NGC_TRITONSERVER", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))
    choice = gpu_runtimes.choose("auto", "cuda", None)
    assert choice.runtime == "torch" and "CUDA graphs" in choice.reason
    # a tritonserver without the onnxruntime backend (the pip wheel's) is not the Triton image
    assert gpu_runtimes.choose("auto", "cuda", _fake_ngc(tmp_path / "pip", with_onnxruntime=False)).runtime == "torch"
    with pytest.raises(SystemExit, match="no NGC tritonserver"):
        gpu_runtimes.choose("tensorrt", "cuda", None)


def test_cpu_is_the_torch_path_and_never_tensorrt(tmp_path: Path) -> None:
    choice = gpu_runtimes.choose("auto", "cpu", _fake_ngc(tmp_path))
    assert (choice.runtime, choice.device) == ("torch", "cpu") and "logic check" in choice.reason
    with pytest.raises(SystemExit, match="needs a GPU"):
        gpu_runtimes.choose("tensorrt", "cpu", None)
