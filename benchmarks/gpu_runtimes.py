"""The serving runtimes benchmarks/gpu_check.py chooses between, fastest present first, and how each is
written and started. Torch is imported only inside the functions that need it.

- ``tensorrt``: NVIDIA's Triton image (NGC ``tritonserver`` with its onnxruntime backend): the gpu
  profile's onnxruntime + TensorRT execution provider at fp16 (engine/timing caches under the workdir,
  explicit profiles, warm-up at 1 / opt / max), DALI preprocessing when nvidia-dali is importable.
- ``torch``: a machine with CUDA torch but no Triton image / TensorRT: the pip tritonserver
  (nvidia-pytriton, python backend only) with the encoders as TorchScript in fp16 with CUDA graphs
  (export/backends/torch_runner.py); on ``--device cpu`` the same files run eager in fp32 (smoke).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenscope.client.core import contract

NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
TORCH_TOWERS = {contract.IMAGE_ENCODER: "image", contract.TEXT_ENCODER: "text"}


@dataclass
class Choice:
    runtime: str  # "tensorrt" | "torch"
    device: str  # "cuda" | "cpu"
    reason: str
    tritonserver: Path | None = None  # the NGC binary for "tensorrt"


def _ngc(binary: Path | None) -> Path | None:
    candidate = binary or (Path(shutil.which("tritonserver")) if shutil.which("tritonserver") else NGC_TRITONSERVER)
    if candidate.is_file() and (candidate.parent.parent / "backends" / "onnxruntime").is_dir():
        return candidate
    return None


def choose(requested: str, device: str, tritonserver: Path | None) -> Choice:
    """The fastest runtime present for ``requested`` (auto | tensorrt | torch) on ``device``."""
    if device == "cpu":
        if requested == "tensorrt":
            raise SystemExit("--runtime tensorrt needs a GPU (--device cuda)")
        return Choice("torch", "cpu", "--device cpu: the torch python-backend path, eager fp32 (logic check only)")
    ngc = _ngc(tritonserver)
    if requested in ("auto", "tensorrt") and ngc is not None:
        return Choice("tensorrt", "cuda", f"Triton image found ({ngc}, onnxruntime backend with TensorRT EP)", ngc)
    if requested == "tensorrt":
        raise SystemExit("--runtime tensorrt: no NGC tritonserver with an onnxruntime backend here "
                         f"(looked for {tritonserver or NGC_TRITONSERVER}); use the Triton 24.10 image or --runtime torch")
    return Choice("torch", "cuda", "no Triton image with TensorRT here: pip tritonserver + torch fp16 with CUDA graphs")


def trace_towers(spec_path: Path, out_dir: Path) -> dict[str, Path]:
    """TorchScript of the image and text towers (the modules the ONNX graphs were exported from)."""
    import torch

    from lenscope.client.core.modelspec import load_spec
    from lenscope.export.model import build_model

    spec = load_spec(spec_path)
    model = build_model(spec, spec_path.parent)
    image, text, _ = model.towers()
    size = spec.preprocess.image_size
    examples = {"image": torch.zeros(2, 3, size, size), "text": torch.ones(2, spec.context_length, dtype=torch.long)}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # trace the plain attention path, as the ONNX export does
    try:
        for name, tower in ((contract.IMAGE_ENCODER, image), (contract.TEXT_ENCODER, text)):
            with torch.no_grad():
                traced = torch.jit.trace(tower, examples[TORCH_TOWERS[name]], check_trace=False)
            paths[name] = out_dir / f"{name}.pt"
            traced.save(str(paths[name]))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return paths


def write_torch_repository(base: Path, out: Path, traced: dict[str, Path], device: str, batches: tuple[int, ...]) -> Path:
    """The cpu-profile repository ``base`` with the two encoders replaced by the torch runner."""
    from lenscope.client.core.manifest import load_manifest
    from lenscope.export.repository import BACKENDS_DIR, RepositorySettings, build_configs
    from lenscope.export.triton_config import render

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    configs = build_configs(load_manifest(base), RepositorySettings())
    for name, pt in traced.items():
        cfg = configs[name].model_copy(update={"parameters": {
            "torchscript": "model.pt", "device": device, "precision": "fp16" if device == "cuda" else "fp32",
            "cuda_graph_batches": ",".join(str(b) for b in batches)}})
        model_dir = out / name
        shutil.rmtree(model_dir / "1")
        (model_dir / "1").mkdir()
        shutil.copyfile(BACKENDS_DIR / "torch_runner.py", model_dir / "1" / "model.py")
        shutil.copyfile(pt, model_dir / "1" / "model.pt")
        (model_dir / "config.pbtxt").write_text(render(cfg))
    return out


def write_tensorrt_repository(base: Path, out: Path, workdir: Path, log=print) -> tuple[Path, dict[str, Any]]:
    """The gpu profile (onnxruntime + TensorRT EP fp16) of the exported model, caches under the workdir."""
    from lenscope.client.core.manifest import load_manifest
    from lenscope.export.repository import RepositorySettings, write_repository

    import stack

    manifest = load_manifest(base)
    settings = RepositorySettings(profile="gpu", gpu_backend="onnxruntime-trt", trt_cache_dir=str(workdir / "trt-cache"))
    if out.exists():
        shutil.rmtree(out)
    write_repository(out, manifest, stack.onnx_paths(base), stack.vocab_path(base), settings, log=log)
    return out, load_manifest(out).extras.get("image_preprocess", {})


class NgcServer:
    """The Triton image's own tritonserver on fixed loopback ports, stopped by its PID."""

    def __init__(self, binary: Path, repo: Path, log_path: Path, ports: tuple[int, int, int] = (18000, 18001, 18002)):
        self.ports = ports
        argv = [str(binary), f"--model-repository={repo}", "--strict-readiness=true", "--exit-on-error=true",
                f"--http-port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}"]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.grpc_url = f"127.0.0.1:{ports[1]}"
        self.pid = self.proc.pid

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}; see {self._log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[0]}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s (engine builds?); see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
