"""Export the three towers (image, text, attribute heads) to ONNX with a dynamic batch axis."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from lenscope.client.core import contract
from lenscope.export.model import LoadedModel

OPSET = 17


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {input_name: {0: "batch"}, **{o: {0: "batch"} for o in output_names}}
    # MultiheadAttention's inference fast path (_native_multi_head_attention) has no ONNX symbolic.
    # The exporter warns that advanced indexing breaks on negative indices; CLIP's text pooling
    # gathers at argmax positions, which are never negative.
    warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # The legacy (TorchScript) exporter: deterministic, no onnxscript dependency, verified here.
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name], output_names=output_names,
            dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def export_onnx(model: LoadedModel, out_dir: Path) -> dict[str, Path]:
    """Write image/text/heads ONNX files into out_dir; returns model name -> path."""
    spec = model.spec
    image, text, heads = model.towers()
    gen = torch.Generator().manual_seed(0)
    size = spec.preprocess.image_size
    pixels = torch.randn(2, 3, size, size, generator=gen)
    ids = torch.randint(1, 1000, (2, spec.context_length), generator=gen)
    emb = torch.nn.functional.normalize(torch.randn(2, spec.embed_dim, generator=gen), dim=-1)
    attr_outputs = [contract.attribute_output(a.name) for a in spec.attributes]
    paths = {
        contract.IMAGE_ENCODER: _export(image, pixels, out_dir / contract.IMAGE_ONNX, contract.PIXEL_VALUES, [contract.EMBEDDING]),
        contract.TEXT_ENCODER: _export(text, ids, out_dir / contract.TEXT_ONNX, contract.INPUT_IDS, [contract.EMBEDDING]),
    }
    if attr_outputs:
        paths[contract.ATTRIBUTE_HEADS] = _export(heads, emb, out_dir / contract.HEADS_ONNX, contract.EMBEDDING, attr_outputs)
    return paths
