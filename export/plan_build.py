"""TensorRT plans built where they are served: `lenscope model build-plans REPO` in the serving image.

A plan only deserialises on the TensorRT release and GPU compute capability that built it, so a plan
built on a workstation (`lenscope model build-trt`) breaks as soon as the image or the node pool
changes. The other way round: `lenscope model export --profile gpu --gpu-backend tensorrt_plan`
writes each encoder's ONNX graph with a *recipe* (``model.plan.recipe.json``: input shapes, the
min / opt / max batch of the optimisation profile, fp16), and an init container of the Triton pod
runs this module before tritonserver starts (k8s/components/trt-plans): ``trtexec`` from the same NGC
image turns each graph into ``model.plan`` with an explicit shape profile, and the plan gets the
``model.plan.json`` record that `check-plans` and the model's own check read.

Built once: plans go to a cache folder keyed by model hash, TensorRT version, compute capability,
model and batch profile (on the pod's ``/trt-cache`` volume, a ReadWriteMany claim to share it across
pods), with trtexec's timing cache beside them, so a restarted pod or a second pod on the same GPU
model copies a checked plan in seconds instead of building for minutes. A cached plan is used only
after the same check a served plan gets (sha256, TensorRT release, compute capability, model hash).

Neither TensorRT's Python package nor torch is imported: trtexec is a subprocess (fixed argv, no
shell), its banner names the TensorRT version it built with, and the GPU comes from nvidia-smi.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest, variant_model_hash
from lenscope.export.plan_check import (PlanInfo, PlanMismatch, Runtime, check_plan, sha256_file, sidecar_path,
                                        write_sidecar)

RECIPE_FILE = "model.plan.recipe.json"
NGC_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where NVIDIA's Triton and TensorRT images keep it
TRTEXEC_TIMEOUT_S = 3600  # a large ViT at fp16 takes minutes; a hung build must still end


class PlanBuildError(RuntimeError):
    """A plan that could not be built or placed; the message names the model and what to do."""


class PlanRecipe(BaseModel):
    """How to build one encoder's plan: written by the export beside its ONNX graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    onnx_file: str = "model.onnx"
    inputs: dict[str, list[int]] = Field(min_length=1)  # input name -> dims without the batch dimension
    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    fp16: bool = True
    model_hash: str = Field(min_length=1)  # of the fp32 graphs the plan comes from (the manifest's base hash)

    def shapes(self, batch: int) -> str:
        """trtexec's shape syntax: ``NAME:BxD1xD2,...``."""
        return ",".join(f"{name}:{'x'.join(str(d) for d in (batch, *dims))}" for name, dims in self.inputs.items())


def recipe_for(sig: contract.Signature, min_batch: int, opt_batch: int, max_batch: int, fp16: bool,
               model_hash: str) -> PlanRecipe:
    dynamic = [t.name for t in sig.inputs if any(d < 0 for d in t.dims)]
    if dynamic:
        raise ValueError(f"inputs {dynamic} have dynamic dimensions besides the batch: a TensorRT profile needs them fixed")
    return PlanRecipe(inputs={t.name: list(t.dims) for t in sig.inputs}, min_batch=min_batch, opt_batch=opt_batch,
                      max_batch=max_batch, fp16=fp16, model_hash=model_hash)


def read_recipe(path: Path) -> PlanRecipe:
    try:
        return PlanRecipe.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise PlanBuildError(f"{path}: cannot read the plan recipe ({err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "(file)"
        raise PlanBuildError(f"{path}: field {field}: {first['msg']}") from None


def trtexec_argv(trtexec: str, onnx: Path, plan: Path, recipe: PlanRecipe, timing_cache: Path) -> list[str]:
    argv = [trtexec, f"--onnx={onnx}", f"--saveEngine={plan}",
            f"--minShapes={recipe.shapes(recipe.min_batch)}", f"--optShapes={recipe.shapes(recipe.opt_batch)}",
            f"--maxShapes={recipe.shapes(recipe.max_batch)}", f"--timingCacheFile={timing_cache}", "--skipInference"]
    if recipe.fp16:
        argv.append("--fp16")
    return argv


_BANNER = re.compile(r"TensorRT v(\d+)")


def version_from_banner(output: str) -> str | None:
    """trtexec prints NV_TENSORRT_VERSION first: ``[TensorRT v100500]`` is 10.5.0 (major * 10000 + minor *
    100 + patch since TensorRT 10), ``[TensorRT v8601]`` is 8.6.1 (major * 1000 before)."""
    m = _BANNER.search(output)
    if not m:
        return None
    n = int(m.group(1))
    major, rest = (n // 10000, n % 10000) if n >= 100000 else (n // 1000, n % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def cache_dir_for(cache: Path, recipe: PlanRecipe, runtime: Runtime, model: str) -> Path:
    return (cache / recipe.model_hash / f"trt-{runtime.tensorrt_version}" / f"sm{runtime.compute_capability}"
            / model / f"b{recipe.min_batch}-{recipe.opt_batch}-{recipe.max_batch}{'-fp16' if recipe.fp16 else ''}")


def _usable(plan: Path, runtime: Runtime, model_hash: str) -> bool:
    if not plan.is_file() or not sidecar_path(plan).is_file():
        return False
    try:
        check_plan(plan, runtime, model_hash)
    except PlanMismatch:
        return False
    return True


def _copy_plan(src: Path, dest: Path) -> None:
    """Plan and record into place, each through a temporary name (a reader never sees half a plan)."""
    for a, b in ((src, dest), (sidecar_path(src), sidecar_path(dest))):
        tmp = b.with_name(f".{b.name}.tmp")
        shutil.copyfile(a, tmp)
        os.replace(tmp, b)


def _run_trtexec(argv: list[str], model: str, run: Callable[..., subprocess.CompletedProcess]) -> str:
    try:
        done = run(argv, capture_output=True, text=True, timeout=TRTEXEC_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise PlanBuildError(f"{model}: trtexec not found at {argv[0]} (NVIDIA's Triton image has it at "
                             f"{NGC_TRTEXEC}; pass --trtexec)") from None
    except subprocess.TimeoutExpired:
        raise PlanBuildError(f"{model}: trtexec did not finish within {TRTEXEC_TIMEOUT_S} s") from None
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise PlanBuildError(f"{model}: trtexec exited with code {done.returncode}; its last lines:\n{tail}")
    return output


def build_plan(model_dir: Path, runtime: Runtime, cache: Path, trtexec: str,
               run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> tuple[str, PlanInfo]:
    """The served plan of one model folder: already there and loadable ("present"), copied from the
    cache ("cached") or built by trtexec into the cache first ("built")."""
    model = model_dir.name
    recipe = read_recipe(model_dir / "1" / RECIPE_FILE)
    served = model_dir / "1" / contract.TRT_PLAN
    if _usable(served, runtime, recipe.model_hash):
        return "present", check_plan(served, runtime, recipe.model_hash)
    if runtime.tensorrt_version is None or runtime.compute_capability is None:
        raise PlanBuildError(f"{model}: no GPU or TensorRT found here (nvidia-smi, TRT_VERSION); plans are built on "
                             "the GPU model that serves them")
    folder = cache_dir_for(cache, recipe, runtime, model)
    cached = folder / contract.TRT_PLAN
    outcome = "cached"
    if not _usable(cached, runtime, recipe.model_hash):
        onnx = model_dir / "1" / recipe.onnx_file
        if not onnx.is_file():
            raise PlanBuildError(f"{model}: {onnx} is missing (the recipe names it); export the repository again")
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".build.", suffix=".plan", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            output = _run_trtexec(trtexec_argv(trtexec, onnx, tmp, recipe, folder.parent / "timing.cache"), model, run)
            built_with = version_from_banner(output) or runtime.tensorrt_version
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise PlanBuildError(f"{model}: trtexec exited 0 but wrote no engine to {tmp}")
            write_sidecar(tmp, PlanInfo(
                tensorrt_version=built_with, gpu_name=runtime.gpu_name or "unknown",
                compute_capability=runtime.compute_capability, model_hash=recipe.model_hash,
                plan_sha256=sha256_file(tmp), fp16=recipe.fp16, min_batch=recipe.min_batch,
                opt_batch=recipe.opt_batch, max_batch=recipe.max_batch))
            _copy_plan(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
            sidecar_path(tmp).unlink(missing_ok=True)
        outcome = "built"
    info = check_plan(cached, runtime, recipe.model_hash)  # refuses e.g. a trtexec of another release
    _copy_plan(cached, served)
    return outcome, info


def build_repository_plans(repo: Path, runtime: Runtime, cache: Path, trtexec: str = NGC_TRTEXEC,
                           run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                           log: Callable[[str], None] = print) -> dict[str, tuple[str, PlanInfo]]:
    """Every model folder of ``repo`` with a plan recipe gets its checked plan (see build_plan)."""
    from lenscope.client.core.manifest import load_manifest

    repo, cache = Path(repo), Path(cache)
    manifest = load_manifest(repo)  # a clear error when repo is no exported repository
    base = manifest.base_model_hash or manifest.model_hash
    recipes = sorted(p.parent.parent for p in repo.glob(f"*/1/{RECIPE_FILE}"))
    done = {}
    for model_dir in recipes:
        recipe = read_recipe(model_dir / "1" / RECIPE_FILE)
        if recipe.model_hash != base:
            raise PlanBuildError(f"{model_dir / '1' / RECIPE_FILE}: field model_hash: {recipe.model_hash!r} is not the "
                                 f"repository's model ({base}); export the repository again")
        outcome, info = build_plan(model_dir, runtime, cache, trtexec, run)
        log(f"  {model_dir.name}: plan {outcome} (TensorRT {info.tensorrt_version}, {info.gpu_name} sm "
            f"{info.compute_capability}, batch {info.min_batch}/{info.opt_batch}/{info.max_batch}, fp16={info.fp16})")
        done[model_dir.name] = (outcome, info)
    return done


def deploy_time_manifest(manifest: Manifest, fp16: bool = True) -> Manifest:
    """The served manifest of a repository whose plans are built at deploy: the engines compute in
    fp16, so (as for `build-trt`) the variant gets its own model hash and an fp32 index is served by it
    only after `lenscope model fidelity` passed for it."""
    variant = "tensorrt-fp16" if fp16 else "tensorrt-fp32"
    return manifest.model_copy(update={
        "variant": variant, "base_model_hash": manifest.model_hash,
        "model_hash": variant_model_hash(manifest.model_hash, variant),
        "extras": {**manifest.extras, "tensorrt": {"plans": "built at deploy: lenscope model build-plans", "fp16": fp16}},
    })


def recipe_json(recipe: PlanRecipe) -> bytes:
    return (json.dumps(recipe.model_dump(), indent=2) + "\n").encode()
