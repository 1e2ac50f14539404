"""`lenscope model build-trt`: TensorRT engines (fp16) from the exported ONNX graphs, written as a
gpu-profile repository with `tensorrt_plan` encoders.

Needs an NVIDIA GPU and the `tensorrt` Python package (pip `tensorrt`, or the NGC TensorRT /
Triton images). Engines are specific to the GPU model and TensorRT version they were built with,
so build them in the serving image on the serving GPU model: both are recorded in a
`model.plan.json` beside every plan (and in the manifest), and `lenscope model check-plans`
refuses a plan that the image or GPU at hand cannot load (export/plan_check.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lenscope.client.core import contract
from lenscope.client.core.manifest import load_manifest, variant_model_hash
from lenscope.export.plan_check import PlanInfo, current_runtime, sha256_file, write_sidecar
from lenscope.export.repository import RepositorySettings, write_repository

ONNX_FILES = {
    contract.IMAGE_ENCODER: contract.IMAGE_ONNX,
    contract.TEXT_ENCODER: contract.TEXT_ONNX,
    contract.ATTRIBUTE_HEADS: contract.HEADS_ONNX,
}


class TensorRTUnavailable(RuntimeError):
    pass


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTUnavailable(
            "the 'tensorrt' package is not installed (pip install tensorrt, on a machine with an NVIDIA GPU); "
            "alternatively export with --profile gpu --gpu-backend onnxruntime-trt and let Triton build engines"
        ) from err
    return trt


def network_flags(trt) -> int:
    """TensorRT 10 networks are always explicit-batch (the flag is deprecated, 0 is right); TensorRT 8
    needs EXPLICIT_BATCH for an ONNX graph with a dynamic batch dimension."""
    if int(str(trt.__version__).split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def build_engine(onnx_path: Path, plan_path: Path, max_batch_size: int, fp16: bool = True,
                 workspace_bytes: int = 1 << 30, opt_batch_size: int = 8, timing_cache: Path | None = None) -> Path:
    """Parse the ONNX graph and serialise an engine with a dynamic-batch optimisation profile.

    With `timing_cache`, tactic timings are read from and written back to that file, so a rebuild
    for the same GPU and TensorRT takes seconds (the caller keys the file by both)."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        item = tuple(inp.shape)[1:]
        opt = max(1, min(opt_batch_size, max_batch_size))
        profile.set_shape(inp.name, (1, *item), (opt, *item), (max_batch_size, *item))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    if cache is not None and timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(cache.serialize()))
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    return plan_path


def build_trt_repository(onnx_dir: Path, out: Path, spec: Path | None = None, fp16: bool = True,
                         max_batch_size: int = 32, log: Callable[[str], None] = print) -> Path:
    """Engines for every exported graph, then a gpu repository whose encoders are tensorrt_plan."""
    trt = _tensorrt()
    manifest = load_manifest(onnx_dir)  # written next to the graphs by `model export --onnx-dir`
    if spec is not None:
        from lenscope.client.core.modelspec import load_spec

        if load_spec(spec) != manifest.spec:
            raise FileNotFoundError(f"{onnx_dir} was exported from a different spec than {spec}")
    runtime = current_runtime()
    onnx_paths, plans = {}, {}
    for name, file in ONNX_FILES.items():
        path = Path(onnx_dir) / file
        if not path.is_file():
            if name == contract.ATTRIBUTE_HEADS and not manifest.spec.attributes:
                continue
            raise FileNotFoundError(f"{path} is missing; run 'lenscope model export --onnx-dir {onnx_dir}'")
        onnx_paths[name] = path
        plan = Path(onnx_dir) / "plans" / name / contract.TRT_PLAN
        opt = min(8, max_batch_size)
        build_engine(path, plan, max_batch_size, fp16, opt_batch_size=opt,
                     timing_cache=Path(onnx_dir) / "plans" / f"timing-{runtime.compute_capability}-trt{trt.__version__}.cache")
        write_sidecar(plan, PlanInfo(
            tensorrt_version=str(trt.__version__), gpu_name=runtime.gpu_name or "unknown",
            compute_capability=runtime.compute_capability or "unknown", model_hash=manifest.model_hash,
            plan_sha256=sha256_file(plan), fp16=fp16, min_batch=1, opt_batch=opt, max_batch=max_batch_size))
        plans[name] = plan
        log(f"  built TensorRT engine for {name} ({plan.stat().st_size / 1e6:.1f} MB, fp16={fp16}, "
            f"TensorRT {trt.__version__}, {runtime.gpu_name} sm {runtime.compute_capability})")
    settings = RepositorySettings(profile="gpu", gpu_backend="tensorrt_plan", max_batch_size=max_batch_size)
    variant = "tensorrt-fp16" if fp16 else "tensorrt-fp32"
    manifest = manifest.model_copy(update={
        "profile": "gpu",
        # The engines compute in another precision than the verified fp32 graphs: their own model
        # hash, so an fp32 index is served by them only after `lenscope model fidelity` passed.
        "variant": variant, "base_model_hash": manifest.model_hash,
        "model_hash": variant_model_hash(manifest.model_hash, variant),
        "extras": {**manifest.extras, "tensorrt": {"version": trt.__version__, "fp16": fp16, "max_batch_size": max_batch_size,
                                                   "gpu_name": runtime.gpu_name, "compute_capability": runtime.compute_capability}},
    })
    write_repository(Path(out), manifest, onnx_paths, Path(onnx_dir) / contract.BPE_VOCAB_FILE, settings, plans)
    log(f"wrote gpu repository {out} with tensorrt_plan encoders")
    return Path(out)
