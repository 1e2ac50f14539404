"""The cpu profile's fused embed models answer exactly as the ensembles of the composing models do:
same embeddings and attribute probabilities (same graphs: <= 1e-5), same errors for bad input.

Slow tier: it starts a second tritonserver on the ensemble layout of the session's export.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest, load_manifest
from lenscope.client.triton.client import ClientConfig, TritonEmbedder
from lenscope.client.triton.server import start_server
from lenscope.export.repository import RepositorySettings, write_repository
from test_embed_served import ORT_TOL, TEXTS, bad_image_corpus, sample_images

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ensemble_embedder(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    files = {contract.IMAGE_ENCODER: contract.IMAGE_ONNX, contract.TEXT_ENCODER: contract.TEXT_ONNX,
             contract.ATTRIBUTE_HEADS: contract.HEADS_ONNX}
    onnx = {name: exported_repo / name / "1" / f for name, f in files.items()}
    vocab = exported_repo / contract.TEXT_TOKENIZER / "1" / contract.BPE_VOCAB_FILE
    repo = write_repository(tmp_path_factory.mktemp("ensemble") / "cpu", load_manifest(exported_repo), onnx, vocab,
                            RepositorySettings(cpu_embed="ensemble"))
    server = start_server(repo, log_path=repo.parent / "tritonserver.log", ready_timeout=180)
    client = TritonEmbedder(ClientConfig(url=server.grpc_url, timeout_s=30.0))
    yield client
    client.close()
    assert server.stop() == 0


def test_fused_equals_ensemble(embedder: TritonEmbedder, ensemble_embedder: TritonEmbedder, triton,
                               manifest: Manifest) -> None:
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{contract.EMBED_IMAGE}/config", timeout=5) as resp:
        assert json.loads(resp.read()).get("backend") == "python"  # the session's server: the shipped (fused) layout
    images = sample_images()
    fused, ens = embedder.embed_images(images), ensemble_embedder.embed_images(images)
    assert all(r.ok for r in fused + ens)
    for a, b in zip(fused, ens):
        assert np.max(np.abs(a.embedding - b.embedding)) <= ORT_TOL
        assert set(a.attributes) == set(b.attributes) == {contract.attribute_output(x.name) for x in manifest.spec.attributes}
        for name in a.attributes:
            assert np.max(np.abs(a.attributes[name] - b.attributes[name])) <= ORT_TOL
    fused_t, ens_t = embedder.embed_texts(TEXTS), ensemble_embedder.embed_texts(TEXTS)
    for a, b in zip(fused_t, ens_t):
        assert a.ok and b.ok and np.max(np.abs(a.embedding - b.embedding)) <= ORT_TOL
    # the same status and message; Triton prefixes an ensemble step's error with "in ensemble '<name>', "
    corpus = [b for b, _ in bad_image_corpus(manifest).values()]
    for a, b in zip(embedder.embed_images(corpus), ensemble_embedder.embed_images(corpus)):
        assert not a.ok and not b.ok
        assert (a.error.status, a.error.message) == (b.error.status, _unprefixed(b.error.message, contract.EMBED_IMAGE))
    too_long = ["x" * (manifest.spec.limits.max_text_chars + 1)]
    a, b = embedder.embed_texts(too_long)[0], ensemble_embedder.embed_texts(too_long)[0]
    assert (a.error.status, a.error.message) == (b.error.status, _unprefixed(b.error.message, contract.EMBED_TEXT))


def _unprefixed(message: str, ensemble: str) -> str:
    prefix = f"in ensemble '{ensemble}', "
    assert message.startswith(prefix), message
    return message.removeprefix(prefix)
