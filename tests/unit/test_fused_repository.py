"""The cpu profile's fused embed models on disk: each a self-contained python model (its body, its
graphs, vocabulary, labels and warm-up sample) beside the composing models, which stay as they were."""

from __future__ import annotations

from pathlib import Path

from lenscope.client.core import contract
from lenscope.export.fused_embed import BACKENDS_DIR
from lenscope.export.repository import RepositorySettings, write_repository
from lenscope.export.triton_config import parse
from test_outputs import graphs  # noqa: F401 - the stand-in graphs fixture
from test_triton_config import fake_manifest


def test_fused_models_carry_their_own_files(tmp_path: Path, graphs) -> None:  # noqa: F811
    onnx, vocab = graphs
    out = write_repository(tmp_path / "repo", fake_manifest(), onnx, vocab)
    image, text = out / contract.EMBED_IMAGE, out / contract.EMBED_TEXT
    assert (image / "1" / "model.py").read_bytes() == (BACKENDS_DIR / "image_embedder.py").read_bytes()
    assert (text / "1" / "model.py").read_bytes() == (BACKENDS_DIR / "text_embedder.py").read_bytes()
    for model_dir, composing, file in ((image, contract.IMAGE_ENCODER, contract.IMAGE_ONNX),
                                       (image, contract.ATTRIBUTE_HEADS, contract.HEADS_ONNX),
                                       (text, contract.TEXT_ENCODER, contract.TEXT_ONNX)):
        ours, theirs = model_dir / "1" / file, out / composing / "1" / file
        assert ours.read_bytes() == onnx[composing].read_bytes()
        assert ours.samefile(theirs)  # one graph on disk, linked into both models
    assert (text / "1" / contract.BPE_VOCAB_FILE).read_bytes() == b"vocab"
    for a in fake_manifest().spec.attributes:
        assert (image / contract.attribute_label_file(a.name)).read_text().split() == list(a.labels)
    for model_dir in (image, text):  # every warm-up sample the config names exists
        cfg = parse((model_dir / "config.pbtxt").read_text())
        for w in cfg.model_warmup:
            for spec in w.inputs.values():
                assert (model_dir / "warmup" / spec.input_data_file).stat().st_size > 4
    # the composing models are still written in full
    assert (out / contract.IMAGE_PREPROCESS / "1" / "model.py").is_file()
    assert (out / contract.TEXT_TOKENIZER / "1" / contract.BPE_VOCAB_FILE).is_file()


def test_ensemble_layout_on_request(tmp_path: Path, graphs) -> None:  # noqa: F811
    out = write_repository(tmp_path / "repo", fake_manifest(), *graphs, RepositorySettings(cpu_embed="ensemble"))
    for name in contract.ENSEMBLES:
        assert sorted(p.name for p in (out / name / "1").iterdir()) == [".keep"]
        assert parse((out / name / "config.pbtxt").read_text()).platform == "ensemble"
