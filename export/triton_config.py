"""Typed Triton model configs, validated before anything is written, rendered to config.pbtxt.

Rendering goes through Triton's own ModelConfig protobuf (never hand-made strings), so a field the
server would not understand fails here, at export time, with the field named.
"""

from __future__ import annotations

from typing import Literal

from google.protobuf import json_format, text_format
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tritonclient.grpc import model_config_pb2  # Triton's own schema: configs are rendered through it

from lenscope.client.core.contract import Tensor


class ConfigError(ValueError):
    """A model config that Triton would reject; the message names the model and field."""


class _Typed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Typed):
    name: str
    data_type: str
    dims: tuple[int, ...]
    label_filename: str | None = None
    # Requests whose shapes differ may share a batch (encoded images of different lengths into DALI).
    allow_ragged_batch: bool = False

    @classmethod
    def of(cls, t: Tensor, label_filename: str | None = None, allow_ragged_batch: bool = False) -> "TensorConfig":
        return cls(name=t.name, data_type=t.dtype, dims=t.dims, label_filename=label_filename,
                   allow_ragged_batch=allow_ragged_batch)


class QueuePolicy(_Typed):
    """Reject instead of piling up: a bounded queue and a per-request queue timeout."""

    max_queue_size: int = Field(64, ge=1)
    default_timeout_microseconds: int = Field(2_000_000, ge=1)
    allow_timeout_override: bool = True


class DynamicBatching(_Typed):
    max_queue_delay_microseconds: int = Field(500, ge=0, le=100_000)
    preferred_batch_size: tuple[int, ...] = ()
    queue_policy: QueuePolicy = QueuePolicy()


class InstanceGroup(_Typed):
    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    count: int = Field(1, ge=1, le=64)


class WarmupInput(_Typed):
    name: str
    data_type: str
    dims: tuple[int, ...]
    source: Literal["zero", "random", "file"] = "zero"
    input_data_file: str | None = None  # relative to the model's warmup/ folder

    @model_validator(mode="after")
    def _file_named(self) -> "WarmupInput":
        if (self.source == "file") != (self.input_data_file is not None):
            raise ValueError("input_data_file is required exactly when source is 'file'")
        return self


class Warmup(_Typed):
    name: str
    batch_size: int = Field(1, ge=1)
    inputs: tuple[WarmupInput, ...]
    count: int = Field(1, ge=1)


class EnsembleStep(_Typed):
    model_name: str
    # step tensor name -> ensemble tensor name
    input_map: dict[str, str]
    output_map: dict[str, str]


class TensorRTAccelerator(_Typed):
    """onnxruntime's TensorRT execution provider (gpu profile).

    Without an engine cache the provider rebuilds every engine on each pod start (minutes for a
    ViT), and without explicit shape profiles it rebuilds again whenever a larger batch first
    arrives. The keys rendered below are the ones documented by Triton's onnxruntime backend
    (README, "Parameter mapping between ONNX Runtime and Triton ONNXRuntime Backend")."""

    precision_mode: Literal["FP32", "FP16"] = "FP16"
    max_workspace_size_bytes: int = 1 << 30
    # Absolute paths inside the serving container; both caches live beside each other.
    engine_cache_path: str | None = None
    timing_cache_path: str | None = None
    # "INPUT:1x3x224x224,..." strings (trt_profile_min_shapes / opt / max): all three or none.
    profile_min_shapes: str | None = None
    profile_opt_shapes: str | None = None
    profile_max_shapes: str | None = None

    @model_validator(mode="after")
    def _profiles_together(self) -> "TensorRTAccelerator":
        given = [self.profile_min_shapes, self.profile_opt_shapes, self.profile_max_shapes]
        if any(given) and not all(given):
            raise ValueError("tensorrt: trt_profile_min_shapes, _opt_shapes and _max_shapes must be given together")
        for path in (self.engine_cache_path, self.timing_cache_path):
            if path is not None and not path.startswith("/"):
                raise ValueError(f"tensorrt: cache path {path!r} must be absolute (a path inside the serving container)")
        return self

    def parameters(self) -> dict[str, str]:
        """The accelerator's parameters under the documented Triton keys."""
        p = {"precision_mode": self.precision_mode, "max_workspace_size_bytes": str(self.max_workspace_size_bytes)}
        if self.engine_cache_path:
            p |= {"trt_engine_cache_enable": "1", "trt_engine_cache_path": self.engine_cache_path}
        if self.timing_cache_path:
            p |= {"trt_timing_cache_enable": "1", "trt_timing_cache_path": self.timing_cache_path}
        if self.profile_min_shapes:
            p |= {"trt_profile_min_shapes": self.profile_min_shapes, "trt_profile_opt_shapes": self.profile_opt_shapes,
                  "trt_profile_max_shapes": self.profile_max_shapes}
        return p


class ModelConfig(_Typed):
    name: str
    backend: str | None = None  # python | onnxruntime | dali
    platform: str | None = None  # ensemble | tensorrt_plan
    max_batch_size: int = Field(ge=0, le=1024)
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    dynamic_batching: DynamicBatching | None = None
    instance_group: InstanceGroup | None = None
    warmup: tuple[Warmup, ...] = ()
    parameters: dict[str, str] = {}
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    tensorrt: TensorRTAccelerator | None = None
    default_model_filename: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        errors: list[str] = []
        if (self.backend is None) == (self.platform is None):
            errors.append("exactly one of backend / platform must be set")
        is_ensemble = self.platform == "ensemble"
        if is_ensemble:
            if not self.ensemble_steps:
                errors.append("ensemble_steps: an ensemble needs at least one step")
            if self.dynamic_batching or self.instance_group or self.warmup:
                errors.append("dynamic_batching/instance_group/warmup are not allowed on an ensemble")
            errors += _ensemble_dataflow_errors(self)
        elif self.ensemble_steps:
            errors.append("ensemble_steps: only allowed with platform 'ensemble'")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            errors.append(f"inputs/outputs: tensor names must be unique, got {names}")
        in_names = {t.name: t for t in self.inputs}
        for w in self.warmup:
            if w.batch_size > max(self.max_batch_size, 1):
                errors.append(f"warmup {w.name!r}: batch_size {w.batch_size} > max_batch_size")
            for wi in w.inputs:
                t = in_names.get(wi.name)
                if t is None:
                    errors.append(f"warmup {w.name!r}: unknown input {wi.name!r}")
                elif t.data_type != wi.data_type:
                    errors.append(f"warmup {w.name!r}: input {wi.name!r} dtype {wi.data_type} != {t.data_type}")
        if self.tensorrt and self.backend != "onnxruntime":
            errors.append("tensorrt: the TensorRT execution provider needs backend 'onnxruntime'")
        if errors:
            raise ValueError("; ".join(errors))
        return self


def _ensemble_dataflow_errors(cfg: ModelConfig) -> list[str]:
    """Every step input must be produced upstream; every ensemble output by some step."""
    available = {t.name for t in cfg.inputs}
    errors = []
    for i, step in enumerate(cfg.ensemble_steps):
        for step_in, ens_name in step.input_map.items():
            if ens_name not in available:
                errors.append(f"ensemble_steps[{i}] ({step.model_name}): input {step_in} <- {ens_name!r} is not produced earlier")
        available |= set(step.output_map.values())
    for t in cfg.outputs:
        if t.name not in available:
            errors.append(f"outputs: {t.name!r} is produced by no step")
    return errors


def to_proto(cfg: ModelConfig) -> "model_config_pb2.ModelConfig":
    d: dict = {"name": cfg.name, "max_batch_size": cfg.max_batch_size}
    if cfg.backend:
        d["backend"] = cfg.backend
    if cfg.platform:
        d["platform"] = cfg.platform
    if cfg.default_model_filename:
        d["default_model_filename"] = cfg.default_model_filename
    d["input"] = [_tensor(t) for t in cfg.inputs]
    d["output"] = [_tensor(t) for t in cfg.outputs]
    if cfg.dynamic_batching:
        db = cfg.dynamic_batching
        q = db.queue_policy
        d["dynamic_batching"] = {
            "max_queue_delay_microseconds": db.max_queue_delay_microseconds,
            "preferred_batch_size": list(db.preferred_batch_size),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": q.default_timeout_microseconds,
                "allow_timeout_override": q.allow_timeout_override,
                "max_queue_size": q.max_queue_size,
            },
        }
    if cfg.instance_group:
        d["instance_group"] = [{"kind": cfg.instance_group.kind, "count": cfg.instance_group.count}]
    if cfg.warmup:
        d["model_warmup"] = [_warmup(w) for w in cfg.warmup]
    if cfg.parameters:
        d["parameters"] = {k: {"string_value": v} for k, v in sorted(cfg.parameters.items())}
    if cfg.ensemble_steps:
        d["ensemble_scheduling"] = {
            "step": [
                {"model_name": s.model_name, "model_version": -1, "input_map": s.input_map, "output_map": s.output_map}
                for s in cfg.ensemble_steps
            ]
        }
    if cfg.tensorrt:
        d["optimization"] = {
            "execution_accelerators": {
                "gpu_execution_accelerator": [
                    {
                        "name": "tensorrt",
                        "parameters": cfg.tensorrt.parameters(),
                    }
                ]
            }
        }
    msg = model_config_pb2.ModelConfig()
    try:
        json_format.ParseDict(d, msg)
    except json_format.ParseError as err:
        raise ConfigError(f"model {cfg.name!r}: {err}") from None
    return msg


def _tensor(t: TensorConfig) -> dict:
    out: dict = {"name": t.name, "data_type": t.data_type, "dims": list(t.dims)}
    if t.label_filename:
        out["label_filename"] = t.label_filename
    if t.allow_ragged_batch:
        out["allow_ragged_batch"] = True
    return out


def _warmup(w: Warmup) -> dict:
    inputs = {}
    for wi in w.inputs:
        entry: dict = {"data_type": wi.data_type, "dims": list(wi.dims)}
        if wi.source == "zero":
            entry["zero_data"] = True
        elif wi.source == "random":
            entry["random_data"] = True
        else:
            entry["input_data_file"] = wi.input_data_file
        inputs[wi.name] = entry
    return {"name": w.name, "batch_size": w.batch_size, "count": w.count, "inputs": inputs}


def render(cfg: ModelConfig) -> str:
    """config.pbtxt text for a validated config."""
    return text_format.MessageToString(to_proto(cfg))


def parse(text: str) -> "model_config_pb2.ModelConfig":
    """Parse config.pbtxt text back with Triton's schema (used by tests and the repository checker)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())
