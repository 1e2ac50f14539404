"""The cpu profile's fused ``embed_image`` / ``embed_text``: one python model per query kind instead of
an ensemble of two or three.

Why: every ensemble step on the cpu profile is a python-backend stub, and each hop costs a round trip
of the request and response tensors through shared memory plus a scheduling pass. Measured side by
side on the 2-core box (benchmarks/reports/perf_analyzer.md), the three-step ``embed_image`` ensemble
spent ~2x in-process onnxruntime's time at concurrency 1. The fused model does preprocessing (or
tokenising), the onnxruntime encoder and the attribute heads in one stub
(``backends/image_embedder.py``, ``backends/text_embedder.py``), under the same name and with the same
tensor contract, so no client changes. The composing models stay in the repository (their graphs,
configs and stubs): tools and tests that run one step alone still find them.

The gpu profile keeps its ensembles: there the steps run in C++ backends (onnxruntime/TensorRT, DALI).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest
from lenscope.export.triton_config import DynamicBatching, InstanceGroup, ModelConfig

if TYPE_CHECKING:  # the settings module imports this one
    from lenscope.export.repository import RepositorySettings

BACKENDS_DIR = Path(__file__).parent / "backends"


def uses_fused(s: "RepositorySettings") -> bool:
    return s.profile == "cpu" and s.cpu_embed == "fused"


def fused_configs(configs: dict[str, ModelConfig], s: "RepositorySettings",
                  batching: dict[str, DynamicBatching | None]) -> dict[str, ModelConfig]:
    """``embed_image`` and ``embed_text`` as python models, derived from the ensembles' configs (same
    inputs, outputs, labels and manifest parameter) and the composing models' parameters and warm-ups."""
    threads = {"intra_op_threads": str(s.intra_op_threads)}
    pre, tok = configs[contract.IMAGE_PREPROCESS], configs[contract.TEXT_TOKENIZER]
    heads = {"heads_onnx": contract.HEADS_ONNX} if contract.ATTRIBUTE_HEADS in configs else {}
    image_params = {**configs[contract.EMBED_IMAGE].parameters, **pre.parameters, **threads,
                    "image_onnx": contract.IMAGE_ONNX, **heads}
    text_params = {**configs[contract.EMBED_TEXT].parameters, **tok.parameters, **threads, "text_onnx": contract.TEXT_ONNX}
    out = {}
    for name, params, warm in ((contract.EMBED_IMAGE, image_params, pre.warmup),
                               (contract.EMBED_TEXT, text_params, tok.warmup)):
        ens = configs[name]
        out[name] = ModelConfig(
            name=name, backend="python", max_batch_size=ens.max_batch_size, inputs=ens.inputs, outputs=ens.outputs,
            dynamic_batching=batching[name], instance_group=InstanceGroup(kind="KIND_CPU", count=s.embed_instances),
            warmup=warm, parameters=params,
        )
    return out


def fused_files(name: str, manifest: Manifest, onnx_paths: dict[str, Path], vocab_path: Path,
                warmup: dict[str, bytes]) -> dict[str, bytes | Path]:
    """Relative path inside the fused model's directory -> bytes or file. The graphs are the composing
    models' files (write_repository hard-links the second copy where it can)."""
    if name == contract.EMBED_IMAGE:
        files: dict[str, bytes | Path] = {"1/model.py": BACKENDS_DIR / "image_embedder.py",
                                          f"1/{contract.IMAGE_ONNX}": onnx_paths[contract.IMAGE_ENCODER]}
        if contract.ATTRIBUTE_HEADS in onnx_paths and manifest.spec.attributes:
            files[f"1/{contract.HEADS_ONNX}"] = onnx_paths[contract.ATTRIBUTE_HEADS]
        for a in manifest.spec.attributes:
            files[contract.attribute_label_file(a.name)] = ("\n".join(a.labels) + "\n").encode()
    else:
        files = {"1/model.py": BACKENDS_DIR / "text_embedder.py", f"1/{contract.TEXT_ONNX}": onnx_paths[contract.TEXT_ENCODER],
                 f"1/{contract.BPE_VOCAB_FILE}": vocab_path}
    return {**files, **{f"warmup/{k}": v for k, v in warmup.items()}}
