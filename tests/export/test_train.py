"""Training on a small generated catalog: the loss goes down, strategies freeze what they say,
heads on frozen embeddings leave the CLIP weights (and so every embedding) bit-identical, and the
checkpoint loads through build_model with its metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from lenscope.client.catalog.reader import read_catalog  # noqa: E402
from lenscope.client.synth.catalog import generate_catalog  # noqa: E402
from lenscope.client.core.modelspec import load_spec  # noqa: E402
from lenscope.client.inputs.preprocess import preprocess_bytes  # noqa: E402
from lenscope.export.model import build_model  # noqa: E402
from lenscope.export.training.config import TrainConfig, TrainError  # noqa: E402
from lenscope.export.training.loop import train  # noqa: E402

SPEC_PATH = Path(__file__).resolve().parents[2] / "export" / "specs" / "lenscope-tiny.json"
FAST = dict(batch_size=16, warmup_steps=3, eval_every=0, heads="none", threads=2, precision="fp32", save_fp16=False)


@pytest.fixture(scope="module")
def spec():
    # the shipped spec without its checkpoint: these tests train from the seeded init
    return load_spec(SPEC_PATH).model_copy(update={"checkpoint": None})


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("train") / "cat", 200, seed=0, image_size=64).catalog


@pytest.fixture(scope="module")
def trained(spec, catalog, tmp_path_factory):
    """Five epochs over 150 training products (45 steps of 16): past the early plateau at chance."""
    cfg = TrainConfig(epochs=5, lr=2e-3, augment=False, caption_word_dropout=0.0, **FAST)
    return train(spec, catalog, tmp_path_factory.mktemp("ckpt") / "a.pt", cfg, progress=False)


def state(path: Path, part: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)[part]


def test_loss_decreases(trained) -> None:
    steps = trained.meta["losses"]["step"]
    assert len(steps) == 45  # 150 train products // 16 = 9 steps x 5 epochs
    assert set(steps[0]) == {"clip", "image_image", "loss", "lr"}  # two views on by default
    chance = math.log(16)  # CLIP loss of embeddings that carry no information
    for term in ("clip", "image_image"):
        first = sum(s[term] for s in steps[:5]) / 5
        last = sum(s[term] for s in steps[-5:]) / 5
        assert last < first - 0.4 and last < chance - 0.3, (term, first, last)
    epochs = [e["loss"] for e in trained.meta["losses"]["epoch"]]
    assert epochs[-1] < epochs[0]


def test_checkpoint_loads_with_build_model_and_carries_meta(spec, trained) -> None:
    meta = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)["meta"]
    assert meta["strategy"] == "full" and meta["seed"] == 0 and meta["epochs"] == 5
    assert meta["n_train"] == 150 and meta["second_view"] == {"photos": 150, "augmented_copies": 0}
    assert meta["timing"]["train_s"] > 0 and len(meta["losses"]["epoch"]) == 5
    json.dumps(meta)  # plain data only
    loaded = build_model(spec.model_copy(update={"checkpoint": str(trained.checkpoint)}))
    for name, tensor in loaded.clip.state_dict().items():
        assert torch.equal(tensor, trained.model.clip.state_dict()[name]), name


def test_heads_on_frozen_embeddings_leave_clip_bit_identical(spec, catalog, trained, tmp_path) -> None:
    cfg = TrainConfig(epochs=0, heads_epochs=3, **{**FAST, "heads": "frozen"})
    result = train(spec, catalog, tmp_path / "heads.pt", cfg, init_checkpoint=trained.checkpoint, progress=False)
    before, after = state(trained.checkpoint, "clip"), state(result.checkpoint, "clip")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    heads_before, heads_after = state(trained.checkpoint, "heads"), state(result.checkpoint, "heads")
    assert heads_before is None  # untrained heads are not written, so they can't reload as trained
    init_heads = build_model(spec).heads.state_dict()
    assert any(not torch.equal(init_heads[k], heads_after[k]) for k in init_heads)
    assert result.meta["heads"]["mode"] == "frozen" and set(result.meta["heads"]["val_accuracy"]) == {
        "category", "color", "pattern"}

    a = build_model(spec.model_copy(update={"checkpoint": str(trained.checkpoint)}))
    b = build_model(spec.model_copy(update={"checkpoint": str(result.checkpoint)}))
    assert b.heads_trained
    cat = read_catalog(catalog)
    x = torch.stack([torch.from_numpy(preprocess_bytes(cat.image_path(r).read_bytes(), spec.preprocess,
                                                       spec.limits)) for r in cat.rows[:8]])
    with torch.no_grad():
        assert torch.equal(a.towers()[0](x), b.towers()[0](x))


def test_fresh_heads_refit_after_a_spec_change_keeps_clip(spec, catalog, trained, tmp_path) -> None:
    mlp = spec.model_copy(update={"head_hidden_dim": 16})
    cfg = TrainConfig(epochs=0, heads_epochs=2, **{**FAST, "heads": "frozen"})
    linear = train(spec, catalog, tmp_path / "linear.pt", cfg, init_checkpoint=trained.checkpoint, progress=False)
    with pytest.raises(TrainError, match="heads do not fit the spec.s attributes"):
        train(mlp, catalog, tmp_path / "m.pt", cfg, init_checkpoint=linear.checkpoint, progress=False)
    cfg = cfg.model_copy(update={"fresh_heads": True})
    result = train(mlp, catalog, tmp_path / "m.pt", cfg, init_checkpoint=trained.checkpoint, progress=False)
    before, after = state(trained.checkpoint, "clip"), state(result.checkpoint, "clip")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.meta["init_checkpoint"] == str(trained.checkpoint.resolve())
    assert build_model(mlp.model_copy(update={"checkpoint": str(result.checkpoint)})).heads_trained


@pytest.mark.parametrize("strategy, frozen, trained_prefix", [
    ("frozen_text", ("token_embedding.", "transformer.", "text_projection", "ln_final."), "visual."),
    ("frozen_image", ("visual.",), "transformer."),
    ("last_n", ("visual.transformer.resblocks.0.", "visual.conv1.", "transformer.resblocks.0.", "token_embedding."),
     "visual.transformer.resblocks.3."),
])
def test_strategies_freeze_what_they_say(spec, catalog, tmp_path, strategy, frozen, trained_prefix) -> None:
    cfg = TrainConfig(epochs=1, max_steps=2, strategy=strategy, last_n_blocks=1, **FAST)
    result = train(spec, catalog, tmp_path / "s.pt", cfg, progress=False)
    init = build_model(spec).clip.state_dict()
    after = result.model.clip.state_dict()
    for name, tensor in after.items():
        if name.startswith(frozen):
            assert torch.equal(tensor, init[name]), f"{strategy}: {name} changed"
    assert any(not torch.equal(t, init[n]) for n, t in after.items() if n.startswith(trained_prefix))
    assert not torch.equal(after["logit_scale"], init["logit_scale"])


def test_joint_heads_add_a_weighted_attribute_loss(spec, catalog, tmp_path) -> None:
    cfg = TrainConfig(epochs=1, max_steps=2, **{**FAST, "heads": "joint"}, attribute_weight=0.5)
    result = train(spec, catalog, tmp_path / "j.pt", cfg, progress=False)
    step = result.meta["losses"]["step"][0]
    assert step["loss"] == pytest.approx(step["clip"] + step["image_image"] + 0.5 * step["attributes"], rel=1e-4)
    init = build_model(spec).heads.state_dict()
    assert any(not torch.equal(t, init[n]) for n, t in result.model.heads.state_dict().items())


def test_labels_outside_the_spec_fail_before_training(spec, catalog, tmp_path) -> None:
    lines = catalog.read_text().splitlines()
    bad = json.loads(lines[0]) | {"category": "sock", "split": "train"}
    path = catalog.parent / "bad.jsonl"
    path.write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n")
    with pytest.raises(TrainError, match=r"bad\.jsonl:1: product '[^']+': category='sock'"):
        train(spec, path, tmp_path / "x.pt", TrainConfig(heads="frozen", labels="spec"), progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_config_is_validated_early() -> None:
    with pytest.raises(ValueError, match="attribute_weight"):
        TrainConfig(heads="joint", attribute_weight=0)
    with pytest.raises(ValueError, match="extra"):
        TrainConfig(epoch=3)


def test_fp16_checkpoint_is_half_the_size_and_loads_as_fp32(spec, catalog, tmp_path) -> None:
    cfg = TrainConfig(epochs=1, max_steps=1, **{**FAST, "save_fp16": True})
    half = train(spec, catalog, tmp_path / "h.pt", cfg, progress=False)
    full = train(spec, catalog, tmp_path / "f.pt", cfg.model_copy(update={"save_fp16": False}), progress=False)
    assert half.checkpoint.stat().st_size < 0.55 * full.checkpoint.stat().st_size
    loaded = build_model(spec.model_copy(update={"checkpoint": str(half.checkpoint)}))
    for name, tensor in loaded.clip.state_dict().items():
        ref = half.model.clip.state_dict()[name]
        assert tensor.dtype == ref.dtype
        if tensor.is_floating_point():
            assert torch.allclose(tensor, ref, rtol=1e-3, atol=1e-4), name
