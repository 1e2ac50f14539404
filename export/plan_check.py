"""TensorRT plans are bound to the TensorRT version and GPU they were built with: record both next
to every plan (a JSON sidecar written by `lenscope model build-trt`) and check them before Triton
loads the plan.

A plan from another TensorRT version does not deserialise, and with `--exit-on-error` that is a
crash-looping pod with an opaque log line. `lenscope model check-plans REPO` runs this check (in the
serving image, before tritonserver starts) and stops with the version and GPU of both sides named.
The check imports neither TensorRT nor torch: the runtime side comes from the `tensorrt` package when
present, else the `TRT_VERSION` variable NGC images set, and the GPU from `nvidia-smi`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from lenscope.client.core import contract
from lenscope.client.core.durable_files import file_sha256 as sha256_file

SIDECAR_SUFFIX = ".json"  # model.plan -> model.plan.json


class PlanMismatch(RuntimeError):
    """A plan that this TensorRT / GPU cannot load, or one without (or disagreeing with) its record."""


class PlanInfo(BaseModel):
    """What a plan was built with and for; written beside it as `model.plan.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.0"; engines never cross compute capabilities
    model_hash: str
    plan_sha256: str
    fp16: bool
    min_batch: int
    opt_batch: int
    max_batch: int


class Runtime(BaseModel):
    """The TensorRT and GPU the plans are about to be loaded on (None: could not be found)."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def write_sidecar(plan: Path, info: PlanInfo) -> Path:
    path = sidecar_path(plan)
    path.write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def read_sidecar(plan: Path) -> PlanInfo:
    path = sidecar_path(plan)
    if not path.is_file():
        raise PlanMismatch(f"{plan}: no {path.name} beside it, so the TensorRT version and GPU it was built with "
                           "are unknown; rebuild it with 'lenscope model build-trt'")
    try:
        return PlanInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "(file)"
        raise PlanMismatch(f"{path}: field {field}: {first['msg']}") from None


def _release(version: str) -> str:
    """major.minor.patch: engines deserialise only on the TensorRT release that built them."""
    return ".".join(version.split(".")[:3])


def gpu_from_nvidia_smi() -> tuple[str | None, str | None]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    first = out.strip().splitlines()[0] if out.strip() else ""
    name, _, cap = first.rpartition(",")
    return (name.strip() or None), (cap.strip() or None)


def current_runtime() -> Runtime:
    try:
        import tensorrt  # only present in TensorRT / NGC images

        version: str | None = tensorrt.__version__
    except ImportError:
        version = os.environ.get("TRT_VERSION") or os.environ.get("TENSORRT_VERSION")
    name, cap = gpu_from_nvidia_smi()
    return Runtime(tensorrt_version=version, gpu_name=name, compute_capability=cap)


def check_plan(plan: Path, runtime: Runtime, model_hash: str | None = None) -> PlanInfo:
    """Refuse a plan this runtime cannot load, naming both sides; unknown runtime facts are refused
    too (a plan that might not load is not started on a guess)."""
    plan = Path(plan)
    info = read_sidecar(plan)
    problems = []
    if not plan.is_file():
        raise PlanMismatch(f"{plan}: the plan is missing (its {sidecar_path(plan).name} is there)")
    if sha256_file(plan) != info.plan_sha256:
        problems.append(f"the plan's sha256 differs from plan_sha256 in {sidecar_path(plan).name} (replaced or corrupt)")
    if model_hash is not None and info.model_hash != model_hash:
        problems.append(f"built from model {info.model_hash}, the repository's manifest is model {model_hash}")
    if runtime.tensorrt_version is None:
        problems.append(f"built with TensorRT {info.tensorrt_version}; no TensorRT found here (no tensorrt package, "
                        "no TRT_VERSION variable)")
    elif _release(runtime.tensorrt_version) != _release(info.tensorrt_version):
        problems.append(f"built with TensorRT {info.tensorrt_version}, this image has TensorRT {runtime.tensorrt_version}")
    if runtime.compute_capability is None:
        problems.append(f"built for {info.gpu_name} (compute capability {info.compute_capability}); no GPU found here")
    elif runtime.compute_capability != info.compute_capability:
        problems.append(f"built for {info.gpu_name} (compute capability {info.compute_capability}), this GPU is "
                        f"{runtime.gpu_name} (compute capability {runtime.compute_capability})")
    if problems:
        raise PlanMismatch(f"{plan} cannot be served here: " + "; ".join(problems)
                           + ". Rebuild the plans in the serving image on this GPU model ('lenscope model build-trt'),"
                           " or serve the onnxruntime-trt gpu profile, which builds its engines where it runs")
    return info


def check_repository_plans(repo: Path, runtime: Runtime | None = None) -> dict[str, PlanInfo]:
    """Every `*/1/model.plan` of a repository, checked against its sidecar and the manifest's model hash."""
    from lenscope.client.core.manifest import load_manifest

    repo = Path(repo)
    manifest = load_manifest(repo)
    runtime = runtime or current_runtime()
    plans = sorted(repo.glob(f"*/1/{contract.TRT_PLAN}"))
    base = manifest.base_model_hash or manifest.model_hash  # plans record the fp32 graphs they came from
    return {p.parent.parent.name: check_plan(p, runtime, base) for p in plans}
