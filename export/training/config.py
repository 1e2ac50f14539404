"""The training run's inputs and outputs: TrainConfig (every knob), TrainError and TrainResult.

Separate from the loop so callers (the CLI, benchmarks) can build and validate a config and catch
TrainError without reading the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lenscope.client.core.modelspec import ModelSpec
from lenscope.export.model import LoadedModel

TRAINER_VERSION = "lenscope-train/1"
Strategy = Literal["full", "frozen_text", "frozen_image", "last_n"]
HeadsMode = Literal["none", "joint", "frozen"]
class TrainError(ValueError):
    """Training cannot start with these inputs; the message says which input and why."""


class TrainConfig(BaseModel):
    """Every knob of a training run; validated before any data is touched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(28, ge=0, description="28 = the shipped lenscope-tiny recipe (~10 min on 2 idle cores)")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip_norm: float | None = Field(None, gt=0)
    seed: int = 0
    strategy: Strategy = "full"
    last_n_blocks: int = Field(1, ge=1, description="only for strategy last_n")
    two_view: bool = True
    image_image_weight: float = Field(1.0, ge=0)
    caption_word_dropout: float = Field(0.15, ge=0, lt=1)
    augment: bool = True
    augment_style: Literal["light", "studio"] = Field(
        "light", description="light: zoom 0.85-1, shift, mirror, brightness (the shipped recipe); studio: crops "
                             "down to 0.6 of the frame, mirror, brightness/contrast/saturation jitter, no hue shift")
    heads: HeadsMode = "frozen"
    attribute_weight: float = Field(0.1, ge=0, description="weight of the attribute loss in joint mode")
    heads_epochs: int = Field(60, ge=1)
    heads_lr: float = Field(1e-2, gt=0)
    heads_batch_size: int = Field(256, ge=2)
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "bf16", description="bf16 autocast: ~1.5x faster on CPUs with AVX-512 (3-4x slower without: measured on an "
                            "AVX2-only EPYC); auto = bf16 on CUDA or AVX-512 CPUs, else fp32")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop early (smoke runs, tests)")
    fresh_heads: bool = Field(False, description="ignore the init checkpoint's heads (after changing the spec's "
                                                 "attributes or head_hidden_dim); the CLIP weights still load")
    save_fp16: bool = Field(True, description="store weights as fp16: half the size; loads back as fp32")
    steps: int | None = Field(None, ge=1, description="optimiser steps; None = epochs x steps per epoch, at least "
                                                    "min_steps (so a small catalog still gets a real schedule)")
    min_steps: int = Field(0, ge=0, description="floor of the derived schedule (fine-tuning: 200)")
    holdout: float = Field(0.2, ge=0, lt=1, description="share of products held out when the catalog has no "
                                                        "train/val split (whole variant families)")
    eval_every: int | None = Field(None, ge=0, description="held-out R@K every N steps (None: ~20 times a run, "
                                                           "and at the end); 0 = off")
    patience: int = Field(5, ge=0, description="stop after this many held-out evaluations without a gain; 0 = never")
    labels: Literal["auto", "catalog", "spec"] = Field(
        "auto", description="label sets of the heads: the spec's if the catalog's labels fit them, else the catalog's")
    force: bool = Field(False, description="write the checkpoint even if it is worse than its start on held-out products")
    allow_outside_images: bool = Field(False, description="read catalog images outside the catalog's folder")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.heads == "joint" and self.attribute_weight == 0:
            raise ValueError("heads 'joint' needs attribute_weight > 0")
        if self.heads == "joint" and self.epochs == 0 and not self.steps:
            raise ValueError("heads 'joint' trains with the contrastive loss; it needs epochs > 0")
        return self


@dataclass(frozen=True)
class TrainResult:
    """``written`` False: the run scored below its start on held-out products (``why``) and was not saved.
    ``spec`` is the spec the checkpoint matches (its label sets may be the catalog's)."""

    checkpoint: Path
    meta: dict[str, Any]
    model: LoadedModel
    written: bool = True
    why: str = ""
    spec: ModelSpec | None = None
