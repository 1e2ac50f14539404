"""The fp16 fidelity gate on the shipped model: a real fp16 graph (fp16 weights, fp32 at its edges)
against the fp32 graphs under onnxruntime CPU, numbers recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from lenscope.client.core import contract  # noqa: E402
from lenscope.client.core.manifest import index_model_hash, load_manifest  # noqa: E402
from lenscope.client.synth.catalog import generate_catalog  # noqa: E402
from lenscope.export.pipeline import export_model  # noqa: E402
from lenscope.export.precision import MAX_RECALL_DELTA_PT, MIN_COSINE, fp16_graph, measure, record  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]


def test_fp16_gate_on_the_shipped_model(tmp_path: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    export_model(out=tmp_path / "repo", onnx_dir=onnx_dir, log=lambda _m: None)
    cat = generate_catalog(tmp_path / "cat", n_products=120, seed=0)

    v = fp16_graph(onnx_dir / contract.IMAGE_ONNX, tmp_path / "v.onnx")
    types = {i.data_type for i in onnx.load(str(v)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types  # really fp16, not a copy of the fp32 graph

    rec = measure(onnx_dir, cat.catalog, log=lambda _m: None)
    assert rec.n_products == 120 and rec.n_queries > 0
    assert rec.max_recall_delta_pt == MAX_RECALL_DELTA_PT and rec.min_cosine_bound == MIN_COSINE
    assert MIN_COSINE <= rec.min_cosine < 1.0  # fp16 changes the numbers, a little
    assert rec.passed == (rec.recall_at_10_delta_pt <= MAX_RECALL_DELTA_PT and rec.min_cosine >= MIN_COSINE)
    assert np.isclose(rec.recall_at_10_delta_pt, 100 * (rec.recall_at_10_fp32 - rec.recall_at_10_variant), atol=1e-3)

    m = record(onnx_dir, rec)
    assert load_manifest(onnx_dir).fidelity["fp16"] == rec and m.variant == "fp32"
    # the fp32 manifest itself still serves its own index
    assert index_model_hash(m.model_dump(mode="json")) == (m.model_hash, None)
