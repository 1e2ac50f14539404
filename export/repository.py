"""Write a Triton model repository from exported graphs and a manifest, for the cpu or gpu profile.

Every config is a typed object validated before anything touches disk; the repository is written
into a temporary sibling and swapped in, so a failed export never leaves half a repository behind,
and only a folder the project wrote (it holds the export manifest) is ever replaced.

A little over ~400 lines: the settings, the config of every model for both profiles and the files
each model folder holds are one decision (what a repository contains); the cpu fused models
(fused_embed.py) and the warm-up samples (warmup_samples.py) live beside it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lenscope.client.core import contract
from lenscope.client.core.contract import Tensor
from lenscope.client.core.manifest import Manifest
from lenscope.client.core.outputs import check_output_dir
from lenscope.export.fused_embed import fused_configs, fused_files, uses_fused
from lenscope.export.warmup_samples import (
    WARMUP_ENCODED,
    WARMUP_IMAGE,
    WARMUP_TEXT,
    WARMUP_TEXT_BYTES,
    length_prefixed as _length_prefixed,
    warmup_image_bytes as _warmup_image_bytes,
)
from lenscope.export.triton_config import (
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelConfig,
    QueuePolicy,
    TensorConfig,
    TensorRTAccelerator,
    Warmup,
    WarmupInput,
    render,
)

BACKENDS_DIR = Path(__file__).parent / "backends"
GPU_QUEUE_DELAY_US = 500
_log = logging.getLogger(__name__)


class RepositorySettings(BaseModel):
    """Serving knobs. Defaults suit a small CPU box; the gpu profile raises batch sizes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Literal["cpu", "gpu"] = "cpu"
    # gpu only: onnxruntime backend with the TensorRT execution provider (fp16), plain CUDA
    # onnxruntime, or prebuilt TensorRT engines from `lenscope model build-trt`.
    gpu_backend: Literal["onnxruntime-trt", "onnxruntime", "tensorrt_plan"] = "onnxruntime-trt"
    # gpu only: image preprocessing in Triton's DALI backend (decode/resize/crop/normalise on the GPU,
    # export/dali_pipeline.py) behind the python image_gate, or the python (Pillow, CPU) model. Without
    # DALI installed the export keeps python and says so (log + manifest extras["image_preprocess"]).
    gpu_preprocess: Literal["dali", "python"] = "dali"
    max_batch_size: int = Field(32, ge=1, le=1024)
    # 0: batch what is already queued while an instance is busy, never wait for more. Measured side
    # by side on the 2-core CPU box (benchmarks/reports/perf_analyzer.md): a 500 us delay, paid by
    # every model of the ensemble, cost 2x the p50 at concurrency 1; batching with no delay kept the
    # no-batching latency and its throughput at concurrency 8, and keeps the REJECT queue policy.
    max_queue_delay_microseconds: int = Field(0, ge=0, le=100_000)
    max_queue_size: int = Field(128, ge=1)
    queue_timeout_microseconds: int = Field(2_000_000, ge=1)
    preprocess_instances: int = Field(2, ge=1, le=64)
    tokenizer_instances: int = Field(1, ge=1, le=64)
    encoder_instances: int = Field(1, ge=1, le=64)
    intra_op_threads: int = Field(1, ge=1, le=64)
    # cpu only: `embed_image` / `embed_text` as one python model each (preprocess/tokenise + onnxruntime
    # encoder + heads in one stub: export/fused_embed.py) or as ensembles of the composing models, one
    # stub per step. The composing models are written either way.
    cpu_embed: Literal["fused", "ensemble"] = "fused"
    # cpu fused only: instances of each fused model.
    embed_instances: int = Field(2, ge=1, le=64)
    dynamic_batching: bool = True
    # gpu only. The batch TensorRT tunes for (between 1 and max_batch_size); every gpu encoder is
    # warmed up at 1, this and max_batch_size, so Triton reports ready only once all three shapes ran.
    opt_batch_size: int = Field(8, ge=1, le=1024)
    # gpu onnxruntime-trt only: where the TensorRT engine and timing caches live inside the serving
    # container (a writable volume beside the model repository; the k8s gpu overlay mounts one).
    trt_cache_dir: str = "/trt-cache"
    # The Triton image whose TensorRT builds the engines: part of the cache key, since an engine or
    # timing cache from another TensorRT version does not deserialise.
    triton_image_tag: str = "24.10"
    # Per composing model (e.g. "image_preprocess"): served without dynamic batching, or with its own
    # queue delay. benchmarks/perf_analyzer.py measures these side by side.
    unbatched_models: frozenset[str] = frozenset()
    model_queue_delay_us: dict[str, int] = {}

    @model_validator(mode="before")
    @classmethod
    def _gpu_queue_delay(cls, data: object) -> object:
        # The 0 us default was measured on CPU only; the gpu profile (untested here) keeps the
        # 500 us delay that lets a GPU encoder fill its batches.
        if isinstance(data, dict) and data.get("profile") == "gpu" and "max_queue_delay_microseconds" not in data:
            return {**data, "max_queue_delay_microseconds": GPU_QUEUE_DELAY_US}
        return data

    @model_validator(mode="after")
    def _known_models(self) -> "RepositorySettings":
        known = set(contract.ALL_MODELS) - (set() if uses_fused(self) else set(contract.ENSEMBLES))
        for field, names in (("unbatched_models", self.unbatched_models), ("model_queue_delay_us", self.model_queue_delay_us)):
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(f"{field}: unknown model(s) {unknown}; batching models: {sorted(known)}")
        for name, delay in self.model_queue_delay_us.items():
            if not 0 <= delay <= 100_000:
                raise ValueError(f"model_queue_delay_us[{name!r}] = {delay}: must be 0..100000")
        return self


def _batching(s: RepositorySettings, name: str) -> DynamicBatching | None:
    if not s.dynamic_batching or name in s.unbatched_models:
        return None
    return DynamicBatching(
        max_queue_delay_microseconds=s.model_queue_delay_us.get(name, s.max_queue_delay_microseconds),
        queue_policy=QueuePolicy(max_queue_size=s.max_queue_size, default_timeout_microseconds=s.queue_timeout_microseconds),
    )


def _warmup_input(t: Tensor, source: str = "zero", file: str | None = None) -> WarmupInput:
    return WarmupInput(name=t.name, data_type=t.dtype, dims=t.dims, source=source, input_data_file=file)


def _python_model(name: str, sig: contract.Signature, s: RepositorySettings, instances: int,
                  params: dict[str, str], warmup: Warmup, labels: dict[str, str] | None = None) -> ModelConfig:
    labels = labels or {}
    return ModelConfig(
        name=name, backend="python", max_batch_size=s.max_batch_size,
        inputs=tuple(TensorConfig.of(t) for t in sig.inputs),
        outputs=tuple(TensorConfig.of(t, labels.get(t.name)) for t in sig.outputs),
        dynamic_batching=_batching(s, name), instance_group=InstanceGroup(kind="KIND_CPU", count=instances),
        warmup=(warmup,), parameters=params,
    )


def _encoder_model(name: str, sig: contract.Signature, s: RepositorySettings, onnx_file: str,
                   labels: dict[str, str] | None = None, model_hash: str = "") -> ModelConfig:
    """An ONNX graph: python+onnxruntime on cpu; onnxruntime (TRT EP) or tensorrt_plan on gpu."""
    labels = labels or {}
    warm = Warmup(name="zeros", batch_size=1, inputs=tuple(_warmup_input(t) for t in sig.inputs))
    common = dict(
        name=name, max_batch_size=s.max_batch_size,
        inputs=tuple(TensorConfig.of(t) for t in sig.inputs),
        outputs=tuple(TensorConfig.of(t, labels.get(t.name)) for t in sig.outputs),
        dynamic_batching=_batching(s, name), warmup=(warm,),
    )
    if s.profile == "cpu":
        return ModelConfig(backend="python", instance_group=InstanceGroup(kind="KIND_CPU", count=s.encoder_instances),
                           parameters={"onnx_file": onnx_file, "intra_op_threads": str(s.intra_op_threads)}, **common)
    gpu = InstanceGroup(kind="KIND_GPU", count=s.encoder_instances)
    common["warmup"] = gpu_warmups(sig, s)
    if s.gpu_backend == "tensorrt_plan":
        return ModelConfig(platform="tensorrt_plan", instance_group=gpu, default_model_filename=contract.TRT_PLAN, **common)
    trt = tensorrt_accelerator(name, sig, s, model_hash) if s.gpu_backend == "onnxruntime-trt" else None
    return ModelConfig(backend="onnxruntime", instance_group=gpu, tensorrt=trt,
                       default_model_filename="model.onnx", **common)


def gpu_batches(s: RepositorySettings) -> tuple[int, ...]:
    """The batch sizes a gpu encoder is built for and warmed up at: 1, the opt batch, the max batch."""
    return tuple(sorted({1, min(s.opt_batch_size, s.max_batch_size), s.max_batch_size}))


def gpu_warmups(sig: contract.Signature, s: RepositorySettings) -> tuple[Warmup, ...]:
    """Warm-up at every profile shape: the first real request of any batch size then finds a built,
    loaded engine, and (with --strict-readiness) the pod is not ready until all of them ran."""
    return tuple(Warmup(name=f"zeros_b{b}", batch_size=b, inputs=tuple(_warmup_input(t) for t in sig.inputs))
                 for b in gpu_batches(s))


def _shapes(sig: contract.Signature, batch: int) -> str:
    return ",".join(f"{t.name}:" + "x".join(str(d) for d in (batch, *t.dims)) for t in sig.inputs)


def trt_cache_path(name: str, s: RepositorySettings, model_hash: str) -> str:
    """One cache folder per model hash, TensorRT image and shape profile (onnxruntime adds the GPU's
    compute capability to the engine and timing cache file names), so a cache is only ever reused
    by the same graph on the same TensorRT for the same profile."""
    profile = "-".join(str(b) for b in gpu_batches(s))
    return f"{s.trt_cache_dir.rstrip('/')}/{model_hash or 'unknown'}/trt-{s.triton_image_tag}/{name}/b{profile}"


def tensorrt_accelerator(name: str, sig: contract.Signature, s: RepositorySettings, model_hash: str) -> TensorRTAccelerator:
    """FP16 TensorRT with engine and timing caches on the cache volume and an explicit shape profile."""
    path = trt_cache_path(name, s, model_hash)
    return TensorRTAccelerator(
        precision_mode="FP16", engine_cache_path=path, timing_cache_path=path,
        profile_min_shapes=_shapes(sig, 1), profile_opt_shapes=_shapes(sig, min(s.opt_batch_size, s.max_batch_size)),
        profile_max_shapes=_shapes(sig, s.max_batch_size),
    )


def _ensemble(name: str, sig: contract.Signature, s: RepositorySettings, steps: tuple[EnsembleStep, ...],
              manifest_json: str, labels: dict[str, str] | None = None) -> ModelConfig:
    labels = labels or {}
    return ModelConfig(
        name=name, platform="ensemble", max_batch_size=s.max_batch_size,
        inputs=tuple(TensorConfig.of(t) for t in sig.inputs),
        outputs=tuple(TensorConfig.of(t, labels.get(t.name)) for t in sig.outputs),
        ensemble_steps=steps, parameters={"manifest": manifest_json},
    )


def build_configs(manifest: Manifest, s: RepositorySettings) -> dict[str, ModelConfig]:
    """All model configs for a manifest; raises on anything Triton would reject."""
    d = manifest.dimensions()
    sigs = contract.signatures(d)
    spec = manifest.spec
    attr_labels = {contract.attribute_output(a.name): contract.attribute_label_file(a.name) for a in spec.attributes}
    attr_names = [contract.attribute_output(a.name) for a in spec.attributes]
    manifest_json = manifest.model_dump_json()

    dali = uses_dali(s)
    gate_steps = [
        EnsembleStep(model_name=contract.IMAGE_GATE, input_map={contract.IMAGE: contract.IMAGE},
                     output_map={contract.ENCODED_IMAGE: contract.ENCODED_IMAGE}),
        EnsembleStep(model_name=contract.IMAGE_PREPROCESS, input_map={contract.ENCODED_IMAGE: contract.ENCODED_IMAGE},
                     output_map={contract.PIXEL_VALUES: contract.PIXEL_VALUES}),
    ]
    python_steps = [
        EnsembleStep(model_name=contract.IMAGE_PREPROCESS, input_map={contract.IMAGE: contract.IMAGE},
                     output_map={contract.PIXEL_VALUES: contract.PIXEL_VALUES}),
    ]
    image_steps = [
        *(gate_steps if dali else python_steps),
        EnsembleStep(model_name=contract.IMAGE_ENCODER, input_map={contract.PIXEL_VALUES: contract.PIXEL_VALUES},
                     output_map={contract.EMBEDDING: contract.EMBEDDING}),
    ]
    if attr_names:
        image_steps.append(EnsembleStep(model_name=contract.ATTRIBUTE_HEADS, input_map={contract.EMBEDDING: contract.EMBEDDING},
                                        output_map={n: n for n in attr_names}))
    text_steps = (
        EnsembleStep(model_name=contract.TEXT_TOKENIZER, input_map={contract.TEXT: contract.TEXT},
                     output_map={contract.INPUT_IDS: contract.INPUT_IDS}),
        EnsembleStep(model_name=contract.TEXT_ENCODER, input_map={contract.INPUT_IDS: contract.INPUT_IDS},
                     output_map={contract.EMBEDDING: contract.EMBEDDING}),
    )
    configs = {
        contract.IMAGE_PREPROCESS: _python_model(
            contract.IMAGE_PREPROCESS, sigs[contract.IMAGE_PREPROCESS], s, s.preprocess_instances,
            {"preprocess": spec.preprocess.model_dump_json(), "limits": spec.limits.model_dump_json()},
            Warmup(name="sample_image", inputs=(_warmup_input(contract.image_bytes(), "file", WARMUP_IMAGE),)),
        ),
        contract.TEXT_TOKENIZER: _python_model(
            contract.TEXT_TOKENIZER, sigs[contract.TEXT_TOKENIZER], s, s.tokenizer_instances,
            {"vocab_file": contract.BPE_VOCAB_FILE, "context_length": str(spec.context_length),
             "max_text_chars": str(spec.limits.max_text_chars)},
            Warmup(name="sample_text", inputs=(_warmup_input(contract.text_bytes(), "file", WARMUP_TEXT),)),
        ),
        contract.IMAGE_ENCODER: _encoder_model(contract.IMAGE_ENCODER, sigs[contract.IMAGE_ENCODER], s, contract.IMAGE_ONNX,
                                               model_hash=manifest.model_hash),
        contract.TEXT_ENCODER: _encoder_model(contract.TEXT_ENCODER, sigs[contract.TEXT_ENCODER], s, contract.TEXT_ONNX,
                                              model_hash=manifest.model_hash),
        contract.EMBED_IMAGE: _ensemble(contract.EMBED_IMAGE, sigs[contract.EMBED_IMAGE], s, tuple(image_steps), manifest_json, attr_labels),
        contract.EMBED_TEXT: _ensemble(contract.EMBED_TEXT, sigs[contract.EMBED_TEXT], s, text_steps, manifest_json),
    }
    if dali:
        configs[contract.IMAGE_GATE] = _python_model(
            contract.IMAGE_GATE, contract.dali_signatures(d)[contract.IMAGE_GATE], s, s.preprocess_instances,
            dict(configs[contract.IMAGE_PREPROCESS].parameters), configs[contract.IMAGE_PREPROCESS].warmup[0])
        configs[contract.IMAGE_PREPROCESS] = _dali_model(d, s)
    if attr_names:
        configs[contract.ATTRIBUTE_HEADS] = _encoder_model(
            contract.ATTRIBUTE_HEADS, sigs[contract.ATTRIBUTE_HEADS], s, contract.HEADS_ONNX, attr_labels,
            model_hash=manifest.model_hash)
    if uses_fused(s):
        configs.update(fused_configs(configs, s, {n: _batching(s, n) for n in contract.ENSEMBLES}))
    return configs


DALI_THREADS = 4


def uses_dali(s: RepositorySettings) -> bool:
    return s.profile == "gpu" and s.gpu_preprocess == "dali"


def _dali_model(d: contract.Dimensions, s: RepositorySettings) -> ModelConfig:
    """image_preprocess in Triton's DALI backend: encoded uint8 images (ragged: each request its own
    length) -> PIXEL_VALUES, on one GPU instance (the backend's advice), warmed up at every gpu batch."""
    sig = contract.dali_signatures(d)[contract.IMAGE_PREPROCESS]
    size = len(_warmup_image_bytes(d.image_size))
    enc = sig.inputs[0]
    warm = tuple(Warmup(name=f"sample_b{b}", batch_size=b, inputs=(
        WarmupInput(name=enc.name, data_type=enc.dtype, dims=(size,), source="file", input_data_file=WARMUP_ENCODED),))
        for b in gpu_batches(s))
    return ModelConfig(
        name=contract.IMAGE_PREPROCESS, backend="dali", max_batch_size=s.max_batch_size,
        inputs=(TensorConfig.of(enc, allow_ragged_batch=True),), outputs=tuple(TensorConfig.of(t) for t in sig.outputs),
        dynamic_batching=_batching(s, contract.IMAGE_PREPROCESS), instance_group=InstanceGroup(kind="KIND_GPU", count=1),
        warmup=warm, parameters={"num_threads": str(DALI_THREADS)}, default_model_filename=contract.DALI_MODEL,
    )


def _model_files(name: str, manifest: Manifest, onnx_paths: dict[str, Path], s: RepositorySettings,
                 vocab_path: Path, plans: dict[str, Path] | None, dali_model: bytes | None = None) -> dict[str, bytes | Path]:
    """Relative path inside the model directory -> bytes to write or file to copy."""
    files: dict[str, bytes | Path] = {}
    if name in contract.ENSEMBLES and uses_fused(s):
        warm = ({WARMUP_IMAGE: _length_prefixed(_warmup_image_bytes(manifest.spec.preprocess.image_size))}
                if name == contract.EMBED_IMAGE else {WARMUP_TEXT: _length_prefixed(WARMUP_TEXT_BYTES)})
        return fused_files(name, manifest, onnx_paths, vocab_path, warm)
    if name == contract.IMAGE_PREPROCESS and uses_dali(s):
        if dali_model is None:
            raise ValueError("image_preprocess: the DALI pipeline was not serialised (resolve_preprocess first)")
        files[f"1/{contract.DALI_MODEL}"] = dali_model
        files[f"warmup/{WARMUP_ENCODED}"] = _warmup_image_bytes(manifest.spec.preprocess.image_size)
    elif name == contract.IMAGE_GATE:
        files["1/model.py"] = BACKENDS_DIR / "image_gate.py"
        files[f"warmup/{WARMUP_IMAGE}"] = _length_prefixed(_warmup_image_bytes(manifest.spec.preprocess.image_size))
    elif name == contract.IMAGE_PREPROCESS:
        files["1/model.py"] = BACKENDS_DIR / "image_preprocess.py"
        files[f"warmup/{WARMUP_IMAGE}"] = _length_prefixed(_warmup_image_bytes(manifest.spec.preprocess.image_size))
    elif name == contract.TEXT_TOKENIZER:
        files["1/model.py"] = BACKENDS_DIR / "text_tokenizer.py"
        files[f"1/{contract.BPE_VOCAB_FILE}"] = vocab_path
        files[f"warmup/{WARMUP_TEXT}"] = _length_prefixed(WARMUP_TEXT_BYTES)
    elif name in onnx_paths:
        if s.profile == "cpu":
            files["1/model.py"] = BACKENDS_DIR / "onnx_runner.py"
            files[f"1/{onnx_paths[name].name}"] = onnx_paths[name]
        elif s.gpu_backend == "tensorrt_plan" and not plans:
            # no prebuilt engines: the graph and its recipe; the pod builds the plan where it runs
            # (`lenscope model build-plans`, export/plan_build.py) before tritonserver starts
            from lenscope.export.plan_build import RECIPE_FILE, recipe_for, recipe_json

            batches = gpu_batches(s)
            files["1/model.onnx"] = onnx_paths[name]
            files[f"1/{RECIPE_FILE}"] = recipe_json(recipe_for(
                contract.signatures(manifest.dimensions())[name], batches[0], min(s.opt_batch_size, s.max_batch_size),
                s.max_batch_size, True, manifest.base_model_hash or manifest.model_hash))
        elif s.gpu_backend == "tensorrt_plan":
            if name not in plans:
                raise FileNotFoundError(f"{name}: no TensorRT engine; run 'lenscope model build-trt' first")
            files[f"1/{contract.TRT_PLAN}"] = plans[name]
            sidecar = plans[name].with_name(plans[name].name + ".json")  # plan_check.sidecar_path
            if sidecar.is_file():
                files[f"1/{sidecar.name}"] = sidecar
        else:
            files["1/model.onnx"] = onnx_paths[name]
    else:  # ensembles: Triton still wants a version directory
        files["1/.keep"] = b""
    if name in (contract.ATTRIBUTE_HEADS, contract.EMBED_IMAGE):
        for a in manifest.spec.attributes:
            files[contract.attribute_label_file(a.name)] = ("\n".join(a.labels) + "\n").encode()
    return files


def _copy_or_link(src: Path, dest: Path, copied: dict[Path, Path]) -> None:
    """Copy ``src``; a second copy of the same source is a hard link to the first where the file
    system allows (the fused models reuse the composing models' graphs without doubling the disk)."""
    first = copied.get(src)
    if first is not None:
        try:
            os.link(first, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)
    copied.setdefault(src, dest)


def check_repository_out(out: Path, option: str = "--out") -> None:
    """Refuse an output that is a file or a folder the project did not write (no export manifest):
    the repository replaces the folder as a whole."""
    check_output_dir(out, option, (contract.MANIFEST_FILE,), "a model repository")


def write_repository(out: Path, manifest: Manifest, onnx_paths: dict[str, Path], vocab_path: Path,
                     settings: RepositorySettings = RepositorySettings(), plans: dict[str, Path] | None = None,
                     dali_model: bytes | None = None, log: Callable[[str], None] = _log.warning) -> Path:
    """Validate every config, write into a fresh hidden sibling, then swap it in place of `out`.

    `out` is replaced only when it is new, empty or a repository written here (it holds the export
    manifest); the sibling names are fresh, so no neighbouring folder is ever touched. A gpu profile
    asking for DALI without ``dali_model`` serialises it here (or falls back to python, saying so:
    ``dali_pipeline.resolve_preprocess``)."""
    out = Path(out)
    check_repository_out(out)
    if "image_preprocess" not in manifest.extras or (uses_dali(settings) and dali_model is None):
        from lenscope.export.dali_pipeline import resolve_preprocess

        manifest, settings, dali_model = resolve_preprocess(manifest, settings, dali_model, log)
    configs = build_configs(manifest, settings)
    rendered = {name: render(cfg) for name, cfg in configs.items()}
    files = {name: _model_files(name, manifest, onnx_paths, settings, vocab_path, plans, dali_model) for name in configs}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        copied: dict[Path, Path] = {}  # source -> its first copy: a graph two models use is linked
        for name, text in rendered.items():
            model_dir = tmp / name
            model_dir.mkdir()
            (model_dir / "config.pbtxt").write_text(text)
            for rel, content in files[name].items():
                dest = model_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    _copy_or_link(content, dest, copied)
                else:
                    dest.write_bytes(content)
        (tmp / contract.MANIFEST_FILE).write_text(manifest.to_json() + "\n")
        check_repository_out(out)  # again: another process may have filled it meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rename(out, old)  # onto the fresh empty folder: atomic on POSIX
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)
    return out
