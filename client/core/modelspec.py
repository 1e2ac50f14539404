"""Typed, validated model spec: one file per model, carried into the export manifest.

Torch-free on purpose: the Triton python models and the search client read the same objects that
the exporter writes, so the preprocessing and label sets can never drift between them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lenscope.client.core.validation import validation_report

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the field and what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessConfig(_Strict):
    """How image bytes become the encoder's input; mirrors open_clip's PreprocessCfg."""

    image_size: int = Field(224, ge=8, le=1024)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    # shortest: resize the short side then centre-crop (open_clip default); squash: resize both
    # sides, ignoring aspect; longest: resize the long side and pad to a square with `fill`.
    resize_mode: Literal["shortest", "squash", "longest"] = "shortest"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    fill: int = Field(0, ge=0, le=255)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std value must be > 0")
        return v


class InputLimits(_Strict):
    """Caps applied before any decoding work, so hostile input costs little."""

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64)
    max_text_chars: int = Field(1000, ge=1)


class AttributeSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    labels: tuple[str, ...]

    @field_validator("labels")
    @classmethod
    def _labels_ok(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) < 2:
            raise ValueError("an attribute needs at least 2 labels")
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        if any(not lab.strip() or "\n" in lab for lab in v):
            raise ValueError("labels must be non-empty single-line strings")
        return v


class ModelSpec(_Strict):
    """A model: architecture, weights, preprocessing, text context, attribute heads."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # An open_clip architecture name (e.g. "ViT-B-32"), or "custom" with `clip_config` given inline
    # in open_clip's JSON layout (embed_dim, vision_cfg, text_cfg).
    architecture: str
    clip_config: dict[str, Any] | None = None
    # Path to a checkpoint file, relative to the spec file. None = seeded random init (tests, smoke).
    checkpoint: str | None = None
    init_seed: int = 0
    embed_dim: int = Field(ge=8, le=4096)
    context_length: int = Field(77, ge=4, le=512)
    preprocess: PreprocessConfig = PreprocessConfig()
    limits: InputLimits = InputLimits()
    attributes: tuple[AttributeSpec, ...] = ()
    head_hidden_dim: int = Field(0, ge=0, le=4096, description="0 = linear heads")

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.architecture == "custom":
            if not self.clip_config:
                raise ValueError("architecture 'custom' needs clip_config (open_clip JSON layout)")
            cfg_dim = self.clip_config.get("embed_dim")
            if cfg_dim != self.embed_dim:
                raise ValueError(f"embed_dim {self.embed_dim} != clip_config.embed_dim {cfg_dim}")
            vis = self.clip_config.get("vision_cfg", {})
            if vis.get("image_size") not in (None, self.preprocess.image_size):
                raise ValueError(
                    f"preprocess.image_size {self.preprocess.image_size} != "
                    f"clip_config.vision_cfg.image_size {vis.get('image_size')}"
                )
            ctx = self.clip_config.get("text_cfg", {}).get("context_length")
            if ctx not in (None, self.context_length):
                raise ValueError(f"context_length {self.context_length} != clip_config.text_cfg.context_length {ctx}")
        elif self.clip_config is not None:
            raise ValueError("clip_config is only allowed with architecture 'custom'")
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise ValueError(f"attribute names must be unique, got {names}")
        return self

    def attribute(self, name: str) -> AttributeSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"unknown attribute {name!r}; known: {[a.name for a in self.attributes]}")


def _format_errors(err: ValidationError, source: str) -> str:
    return validation_report(err, f"model spec {source}")


def parse_spec(data: dict[str, Any], source: str = "<dict>") -> ModelSpec:
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


def load_spec(path: str | Path) -> ModelSpec:
    """Load a spec from JSON or YAML; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"model spec {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SpecError(f"model spec {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"model spec {path} must be a mapping at the top level")
    return parse_spec(data, str(path))


def resolve_checkpoint(spec: ModelSpec, spec_dir: Path | None) -> Path | None:
    """Checkpoint path relative to the spec file; a missing file is an error, never a download."""
    if spec.checkpoint is None:
        return None
    p = Path(spec.checkpoint).expanduser()
    if not p.is_absolute() and spec_dir is not None:
        p = spec_dir / p
    if not p.is_file():
        raise SpecError(
            f"checkpoint {p} for model {spec.name!r} does not exist; pass an existing file "
            "(nothing is downloaded at run time)"
        )
    return p
