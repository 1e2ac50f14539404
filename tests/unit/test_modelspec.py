"""Spec validation: every error names the field and says what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lenscope.client.core.modelspec import ModelSpec, SpecError, load_spec, parse_spec, resolve_checkpoint

SHIPPED = Path(__file__).parents[2] / "export" / "specs" / "lenscope-tiny.json"


def shipped() -> dict:
    return json.loads(SHIPPED.read_text())


def test_shipped_spec_is_valid() -> None:
    spec = load_spec(SHIPPED)
    assert spec.name == "lenscope-tiny" and spec.embed_dim == 128
    assert [a.name for a in spec.attributes] == ["category", "color", "pattern"]
    assert len(spec.attribute("color").labels) >= 12


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda d: d.update(embed_dim=256), "(top level)", "embed_dim 256 != clip_config.embed_dim 128"),
        (lambda d: d["preprocess"].update(image_size=96), "(top level)", "preprocess.image_size 96"),
        (lambda d: d.update(context_length=77), "(top level)", "context_length 77"),
        (lambda d: d["preprocess"].update(std=[0.2, 0.0, 0.2]), "preprocess.std", "std value must be > 0"),
        (lambda d: d["preprocess"].update(resize_mode="stretch"), "preprocess.resize_mode", "shortest"),
        (lambda d: d["attributes"][0].update(labels=["only"]), "attributes.0.labels", "at least 2 labels"),
        (lambda d: d["attributes"][1].update(labels=["red", "red"]), "attributes.1.labels", "unique"),
        (lambda d: d["attributes"].append(dict(d["attributes"][0])), "(top level)", "attribute names must be unique"),
        (lambda d: d.update(name="bad name!"), "name", "pattern"),
        (lambda d: d.update(colour="red"), "colour", "Extra inputs are not permitted"),
        (lambda d: d.update(architecture="custom", clip_config=None), "(top level)", "needs clip_config"),
        (lambda d: d.update(architecture="ViT-B-32"), "(top level)", "only allowed with architecture 'custom'"),
    ],
)
def test_invalid_specs_name_the_field(mutate, field: str, fragment: str) -> None:
    data = shipped()
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "test.json")
    msg = str(err.value)
    assert "invalid model spec test.json" in msg
    assert f"- {field}:" in msg
    assert fragment in msg


def test_load_spec_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid json"):
        load_spec(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="mapping at the top level"):
        load_spec(lst)


def test_yaml_and_json_load_the_same(tmp_path: Path) -> None:
    import yaml

    y = tmp_path / "tiny.yaml"
    y.write_text(yaml.safe_dump(shipped()))
    assert load_spec(y) == load_spec(SHIPPED)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    data = shipped()
    data["checkpoint"] = "weights/missing.pt"
    spec = ModelSpec.model_validate(data)
    with pytest.raises(SpecError, match=r"checkpoint .*missing.pt .* does not exist.*nothing is downloaded"):
        resolve_checkpoint(spec, tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "missing.pt").write_bytes(b"x")
    assert resolve_checkpoint(spec, tmp_path) == tmp_path / "weights" / "missing.pt"
