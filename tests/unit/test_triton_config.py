"""Typed Triton configs: validated before writing, rendered through Triton's own protobuf schema,
and parsed back to the same structure."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from pydantic import ValidationError

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest
from lenscope.client.core.modelspec import load_spec
from tritonclient.grpc import model_config_pb2
from lenscope.export.repository import RepositorySettings, build_configs
from lenscope.export.triton_config import (
    DynamicBatching,
    EnsembleStep,
    ModelConfig,
    QueuePolicy,
    TensorConfig,
    Warmup,
    WarmupInput,
    parse,
    render,
)

SPEC = load_spec(Path(__file__).parents[2] / "export" / "specs" / "lenscope-tiny.json")


def fake_manifest(profile: str = "cpu") -> Manifest:
    return Manifest(model_hash="0123456789abcdef", spec=SPEC, profile=profile, weights="seeded-init",
                    heads_trained=False, onnx_sha256={}, verification={}, tool_versions={}, created_at="now")


def as_dict(text: str) -> dict:
    return json_format.MessageToDict(parse(text), preserving_proto_field_name=True)


def test_every_model_of_the_design_is_configured() -> None:
    configs = build_configs(fake_manifest(), RepositorySettings())
    assert set(configs) == set(contract.ALL_MODELS)


@pytest.mark.parametrize("cpu_embed", ["fused", "ensemble"])
@pytest.mark.parametrize("name", contract.ALL_MODELS)
def test_cpu_configs_round_trip(name: str, cpu_embed: str) -> None:
    cfg = build_configs(fake_manifest(), RepositorySettings(cpu_embed=cpu_embed))[name]
    d = as_dict(render(cfg))
    assert d["name"] == name
    assert d["max_batch_size"] == 32
    sig = contract.signatures(fake_manifest().dimensions())[name]
    assert [i["name"] for i in d["input"]] == [t.name for t in sig.inputs]
    assert [o["name"] for o in d["output"]] == [t.name for t in sig.outputs]
    for o, t in zip(d["output"], sig.outputs):
        assert o["data_type"] == t.dtype and [int(x) for x in o["dims"]] == list(t.dims)
    if name in contract.ENSEMBLES:
        assert d["parameters"]["manifest"]["string_value"].startswith("{")  # the client reads it here
    if name in contract.ENSEMBLES and cpu_embed == "ensemble":
        assert d["platform"] == "ensemble"
        assert "dynamic_batching" not in d and "model_warmup" not in d
    else:
        assert d["backend"] == "python"
        db = d["dynamic_batching"]
        assert parse(render(cfg)).dynamic_batching.max_queue_delay_microseconds == 0  # shipped: no waiting
        pol = db["default_queue_policy"]
        assert pol["max_queue_size"] == 128
        # REJECT is the enum's zero value, so check the parsed message rather than the dict.
        proto_pol = parse(render(cfg)).dynamic_batching.default_queue_policy
        assert proto_pol.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
        assert pol["default_timeout_microseconds"] == "2000000"
        assert d["instance_group"][0]["kind"] == "KIND_CPU"
        assert d["model_warmup"], f"{name} has no warm-up"


def test_attribute_outputs_carry_label_files() -> None:
    d = as_dict(render(build_configs(fake_manifest(), RepositorySettings())[contract.ATTRIBUTE_HEADS]))
    assert {o["name"]: o["label_filename"] for o in d["output"]} == {
        "ATTR_CATEGORY": "labels_category.txt", "ATTR_COLOR": "labels_color.txt", "ATTR_PATTERN": "labels_pattern.txt"}


def test_ensemble_steps_wire_the_pipeline() -> None:
    d = as_dict(render(build_configs(fake_manifest(), RepositorySettings(cpu_embed="ensemble"))[contract.EMBED_IMAGE]))
    steps = d["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == [contract.IMAGE_PREPROCESS, contract.IMAGE_ENCODER, contract.ATTRIBUTE_HEADS]
    assert steps[1]["input_map"] == {"PIXEL_VALUES": "PIXEL_VALUES"}
    assert set(steps[2]["output_map"]) == {"ATTR_CATEGORY", "ATTR_COLOR", "ATTR_PATTERN"}


def test_cpu_default_fuses_each_query_kind_into_one_python_model() -> None:
    configs = build_configs(fake_manifest(), RepositorySettings())
    ensembles = build_configs(fake_manifest(), RepositorySettings(cpu_embed="ensemble"))
    for name in contract.ENSEMBLES:
        fused, ens = as_dict(render(configs[name])), as_dict(render(ensembles[name]))
        assert fused["backend"] == "python" and "ensemble_scheduling" not in fused
        assert fused["input"] == ens["input"] and fused["output"] == ens["output"]  # same contract, labels included
        assert fused["instance_group"][0]["count"] == 2
        assert fused["parameters"]["manifest"] == ens["parameters"]["manifest"]
        assert fused["parameters"]["intra_op_threads"]["string_value"] == "1"
    image = as_dict(render(configs[contract.EMBED_IMAGE]))["parameters"]
    assert image["image_onnx"]["string_value"] == contract.IMAGE_ONNX
    assert image["heads_onnx"]["string_value"] == contract.HEADS_ONNX
    assert "preprocess" in image and "limits" in image
    text = as_dict(render(configs[contract.EMBED_TEXT]))["parameters"]
    assert text["vocab_file"]["string_value"] == contract.BPE_VOCAB_FILE and "max_text_chars" in text
    # the composing models stay (tools and tests run one step alone), unchanged by the choice
    for name in set(contract.ALL_MODELS) - set(contract.ENSEMBLES):
        assert render(configs[name]) == render(ensembles[name])


def test_fused_models_batch_like_the_others_and_take_their_own_delay() -> None:
    s = RepositorySettings(embed_instances=3, intra_op_threads=2, model_queue_delay_us={contract.EMBED_IMAGE: 100},
                           unbatched_models={contract.EMBED_TEXT})
    configs = build_configs(fake_manifest(), s)
    image = parse(render(configs[contract.EMBED_IMAGE]))
    assert image.dynamic_batching.max_queue_delay_microseconds == 100
    assert image.instance_group[0].count == 3
    assert not parse(render(configs[contract.EMBED_TEXT])).HasField("dynamic_batching")
    assert as_dict(render(configs[contract.EMBED_TEXT]))["parameters"]["intra_op_threads"]["string_value"] == "2"
    with pytest.raises(ValidationError, match="unknown model"):  # an ensemble has no batcher of its own
        RepositorySettings(cpu_embed="ensemble", unbatched_models={contract.EMBED_TEXT})


def test_gpu_profile_keeps_its_ensembles() -> None:
    configs = build_configs(fake_manifest("gpu"), RepositorySettings(profile="gpu", gpu_preprocess="python"))
    assert all(as_dict(render(configs[n]))["platform"] == "ensemble" for n in contract.ENSEMBLES)


def test_gpu_profile_onnxruntime_with_tensorrt_fp16() -> None:
    configs = build_configs(fake_manifest("gpu"), RepositorySettings(profile="gpu", max_batch_size=64))
    d = as_dict(render(configs[contract.IMAGE_ENCODER]))
    assert d["backend"] == "onnxruntime" and d["default_model_filename"] == "model.onnx"
    assert d["instance_group"][0]["kind"] == "KIND_GPU"
    acc = d["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]
    assert acc["name"] == "tensorrt" and acc["parameters"]["precision_mode"] == "FP16"
    assert as_dict(render(configs[contract.IMAGE_PREPROCESS]))["backend"] == "dali"  # the gpu default
    python = build_configs(fake_manifest("gpu"), RepositorySettings(profile="gpu", gpu_preprocess="python"))
    assert as_dict(render(python[contract.IMAGE_PREPROCESS]))["backend"] == "python"
    assert contract.IMAGE_GATE not in python


def test_gpu_profile_tensorrt_plan() -> None:
    configs = build_configs(fake_manifest("gpu"), RepositorySettings(profile="gpu", gpu_backend="tensorrt_plan"))
    d = as_dict(render(configs[contract.TEXT_ENCODER]))
    assert d["platform"] == "tensorrt_plan" and d["default_model_filename"] == contract.TRT_PLAN
    assert "backend" not in d


def _tensor(name: str) -> TensorConfig:
    return TensorConfig(name=name, data_type="TYPE_FP32", dims=(4,))


def test_ensemble_dataflow_is_checked() -> None:
    with pytest.raises(ValidationError, match="'MISSING' is not produced earlier"):
        ModelConfig(name="e", platform="ensemble", max_batch_size=8, inputs=(_tensor("A"),), outputs=(_tensor("B"),),
                    ensemble_steps=(EnsembleStep(model_name="m", input_map={"X": "MISSING"}, output_map={"Y": "B"}),))
    with pytest.raises(ValidationError, match="'B' is produced by no step"):
        ModelConfig(name="e", platform="ensemble", max_batch_size=8, inputs=(_tensor("A"),), outputs=(_tensor("B"),),
                    ensemble_steps=(EnsembleStep(model_name="m", input_map={"X": "A"}, output_map={"Y": "C"}),))


def test_invalid_configs_name_the_field() -> None:
    with pytest.raises(ValidationError, match="exactly one of backend / platform"):
        ModelConfig(name="m", max_batch_size=8, inputs=(_tensor("A"),), outputs=(_tensor("B"),))
    with pytest.raises(ValidationError, match="warmup 'w': unknown input 'Z'"):
        ModelConfig(name="m", backend="python", max_batch_size=8, inputs=(_tensor("A"),), outputs=(_tensor("B"),),
                    warmup=(Warmup(name="w", inputs=(WarmupInput(name="Z", data_type="TYPE_FP32", dims=(4,)),)),))
    with pytest.raises(ValidationError, match="batch_size 16 > max_batch_size"):
        ModelConfig(name="m", backend="python", max_batch_size=8, inputs=(_tensor("A"),), outputs=(_tensor("B"),),
                    warmup=(Warmup(name="w", batch_size=16, inputs=(WarmupInput(name="A", data_type="TYPE_FP32", dims=(4,)),)),))
    with pytest.raises(ValidationError, match="tensor names must be unique"):
        ModelConfig(name="m", backend="python", max_batch_size=8, inputs=(_tensor("A"),), outputs=(_tensor("A"),))
    with pytest.raises(ValidationError, match="max_queue_size"):
        DynamicBatching(queue_policy=QueuePolicy(max_queue_size=0))
    with pytest.raises(ValidationError, match="input_data_file is required"):
        WarmupInput(name="A", data_type="TYPE_STRING", dims=(1,), source="file")


def test_unknown_data_type_is_rejected_by_the_triton_schema() -> None:
    from lenscope.export.triton_config import ConfigError, to_proto

    cfg = ModelConfig(name="m", backend="python", max_batch_size=8,
                      inputs=(TensorConfig(name="A", data_type="TYPE_FLOAT99", dims=(4,)),), outputs=(_tensor("B"),))
    with pytest.raises(ConfigError, match="model 'm'.*TYPE_FLOAT99"):
        to_proto(cfg)


def test_no_dynamic_batching_when_disabled() -> None:
    configs = build_configs(fake_manifest(), RepositorySettings(dynamic_batching=False))
    assert "dynamic_batching" not in as_dict(render(configs[contract.IMAGE_ENCODER]))


def _accelerator(d: dict) -> dict[str, str]:
    return d["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]["parameters"]


# The keys Triton's onnxruntime backend documents for its TensorRT accelerator (onnxruntime_backend
# README, "Parameter mapping between ONNX Runtime and Triton ONNXRuntime Backend"): a misspelt key
# is ignored by the backend without a word, so the test holds the rendered keys to this list.
DOCUMENTED_TRT_KEYS = {
    "precision_mode", "max_workspace_size_bytes", "trt_engine_cache_enable", "trt_engine_cache_path",
    "trt_engine_cache_prefix", "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache",
    "trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes", "trt_builder_optimization_level",
}


@pytest.mark.parametrize("name", [contract.IMAGE_ENCODER, contract.TEXT_ENCODER, contract.ATTRIBUTE_HEADS])
def test_gpu_trt_configs_carry_caches_profiles_and_multi_batch_warmup(name: str) -> None:
    s = RepositorySettings(profile="gpu", max_batch_size=32, opt_batch_size=8)
    cfg = build_configs(fake_manifest("gpu"), s)[name]
    msg = parse(render(cfg))  # Triton's own ModelConfig schema
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    params = _accelerator(d)
    assert set(params) <= DOCUMENTED_TRT_KEYS, set(params) - DOCUMENTED_TRT_KEYS
    assert params["trt_engine_cache_enable"] == "1" and params["trt_timing_cache_enable"] == "1"
    path = params["trt_engine_cache_path"]
    assert path == params["trt_timing_cache_path"]
    assert path.startswith("/trt-cache/0123456789abcdef/trt-24.10/") and path.endswith(f"/{name}/b1-8-32")
    sig = contract.signatures(fake_manifest().dimensions())[name]
    (inp,) = sig.inputs
    item = "x".join(str(x) for x in inp.dims)
    assert params["trt_profile_min_shapes"] == f"{inp.name}:1x{item}"
    assert params["trt_profile_opt_shapes"] == f"{inp.name}:8x{item}"
    assert params["trt_profile_max_shapes"] == f"{inp.name}:32x{item}"
    assert [w.batch_size for w in msg.model_warmup] == [1, 8, 32]
    for w in msg.model_warmup:
        assert set(w.inputs) == {inp.name} and w.inputs[inp.name].zero_data


def test_gpu_cache_path_changes_with_model_profile_and_tensorrt_image() -> None:
    from lenscope.export.repository import trt_cache_path

    base = RepositorySettings(profile="gpu")
    paths = {trt_cache_path("image_encoder", base, "aaaa"), trt_cache_path("image_encoder", base, "bbbb"),
             trt_cache_path("image_encoder", RepositorySettings(profile="gpu", max_batch_size=64), "aaaa"),
             trt_cache_path("image_encoder", RepositorySettings(profile="gpu", triton_image_tag="25.01"), "aaaa")}
    assert len(paths) == 4


def test_tensorrt_plan_encoders_warm_up_at_every_profile_batch() -> None:
    configs = build_configs(fake_manifest("gpu"), RepositorySettings(profile="gpu", gpu_backend="tensorrt_plan",
                                                                     max_batch_size=16, opt_batch_size=4))
    msg = parse(render(configs[contract.IMAGE_ENCODER]))
    assert [w.batch_size for w in msg.model_warmup] == [1, 4, 16]
    assert not msg.optimization.execution_accelerators.gpu_execution_accelerator


def test_cpu_encoders_keep_a_single_warmup_and_no_accelerator() -> None:
    msg = parse(render(build_configs(fake_manifest(), RepositorySettings())[contract.IMAGE_ENCODER]))
    assert [w.batch_size for w in msg.model_warmup] == [1]
    assert not msg.HasField("optimization")


def test_tensorrt_accelerator_rejects_half_a_profile_and_relative_cache() -> None:
    from lenscope.export.triton_config import TensorRTAccelerator

    with pytest.raises(ValidationError, match="must be given together"):
        TensorRTAccelerator(profile_min_shapes="A:1x4")
    with pytest.raises(ValidationError, match="must be absolute"):
        TensorRTAccelerator(engine_cache_path="cache")
    with pytest.raises(ValidationError, match="must be absolute"):
        build_configs(fake_manifest("gpu"), RepositorySettings(profile="gpu", trt_cache_dir="rel/cache"))
def test_batching_per_composing_model() -> None:
    settings = RepositorySettings(max_queue_delay_microseconds=100, unbatched_models={contract.IMAGE_PREPROCESS},
                                  model_queue_delay_us={contract.IMAGE_ENCODER: 0})
    configs = build_configs(fake_manifest(), settings)
    assert "dynamic_batching" not in as_dict(render(configs[contract.IMAGE_PREPROCESS]))
    encoder = parse(render(configs[contract.IMAGE_ENCODER])).dynamic_batching
    assert encoder.max_queue_delay_microseconds == 0
    assert encoder.default_queue_policy.max_queue_size == 128  # still sheds with a bounded queue
    text = parse(render(configs[contract.TEXT_ENCODER])).dynamic_batching
    assert text.max_queue_delay_microseconds == 100
    with pytest.raises(ValidationError, match="unknown model.*embed_image"):
        RepositorySettings(cpu_embed="ensemble", unbatched_models={contract.EMBED_IMAGE})  # an ensemble has no batcher
    with pytest.raises(ValidationError, match="must be 0..100000"):
        RepositorySettings(model_queue_delay_us={contract.TEXT_ENCODER: -1})


def test_queue_delay_defaults_per_profile() -> None:
    assert RepositorySettings().max_queue_delay_microseconds == 0  # measured on CPU (perf_analyzer.md)
    assert RepositorySettings(profile="gpu").max_queue_delay_microseconds == 500  # GPU: not measured, unchanged
    assert RepositorySettings(profile="gpu", max_queue_delay_microseconds=50).max_queue_delay_microseconds == 50
