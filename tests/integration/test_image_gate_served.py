"""The gpu profile's ``image_gate`` python model in a real tritonserver (the pip one has no DALI backend,
so the gate is served alone here): pass-through bytes, the lossless transcode, zero padding of a
multi-image request, and a bad image failing only its own request with the Pillow path's reason."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from lenscope.client.core import contract
from lenscope.client.core.modelspec import InputLimits, PreprocessConfig
from lenscope.client.inputs.gate import gate
from lenscope.client.triton.server import start_server
from lenscope.export.repository import BACKENDS_DIR, RepositorySettings
from lenscope.export.triton_config import InstanceGroup, ModelConfig, TensorConfig, render

pytestmark = pytest.mark.integration

CFG = PreprocessConfig(image_size=64)
LIMITS = InputLimits()


@pytest.fixture(scope="module")
def gate_server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("gate-repo")
    model = repo / contract.IMAGE_GATE
    (model / "1").mkdir(parents=True)
    shutil.copyfile(BACKENDS_DIR / "image_gate.py", model / "1" / "model.py")
    sig = contract.dali_signatures(contract.Dimensions(64, 8, 8, ()))[contract.IMAGE_GATE]
    cfg = ModelConfig(name=contract.IMAGE_GATE, backend="python", max_batch_size=RepositorySettings().max_batch_size,
                      inputs=tuple(TensorConfig.of(t) for t in sig.inputs), outputs=tuple(TensorConfig.of(t) for t in sig.outputs),
                      instance_group=InstanceGroup(kind="KIND_CPU", count=1),
                      parameters={"preprocess": CFG.model_dump_json(), "limits": LIMITS.model_dump_json()})
    (model / "config.pbtxt").write_text(render(cfg))
    server = start_server(repo, log_path=repo.parent / "gate-tritonserver.log", ready_timeout=120)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()
    server.stop()


def _infer(client, items: list[bytes]) -> np.ndarray:
    t = grpcclient.InferInput(contract.IMAGE, [len(items), 1], "BYTES")
    t.set_data_from_numpy(np.array([[b] for b in items], dtype=object))
    return client.infer(contract.IMAGE_GATE, [t]).as_numpy(contract.ENCODED_IMAGE)


def _encode(mode: str, fmt: str, size=(90, 70)) -> bytes:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_gate_served_passes_transcodes_and_pads(gate_server) -> None:
    jpeg, rgba = _encode("RGB", "JPEG"), _encode("RGBA", "PNG", (300, 200))
    out = _infer(gate_server, [jpeg, rgba])
    assert out.dtype == np.uint8 and out.shape[0] == 2
    expected = [gate(b, CFG, LIMITS)[0] for b in (jpeg, rgba)]
    assert out.shape[1] == max(len(e) for e in expected)
    for row, want in zip(out, expected):
        assert row[: len(want)].tobytes() == want and not row[len(want):].any()  # zero padding after the image
    assert expected[0] == jpeg  # passed through untouched


def test_bad_image_fails_its_own_request_with_the_reason(gate_server) -> None:
    with pytest.raises(InferenceServerException, match=r"image rejected \(unsupported_format\)"):
        _infer(gate_server, [b"<svg xmlns='http://www.w3.org/2000/svg'/>"])
    assert _infer(gate_server, [_encode("RGB", "PNG")]).shape[0] == 1  # the model still serves
