"""Training data: reading the catalog's splits and attribute targets, preloading its images through
the serving path into tensors (views), and the per-batch randomness (augmentation, word dropout).

Separate from the loop because this is what the model sees; the loop only decides when.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.catalog.rows import Catalog, CatalogRow
from lenscope.client.core.modelspec import ModelSpec
from lenscope.client.inputs.image_files import read_catalog_image
from lenscope.client.inputs.preprocess import ImageInputError, preprocess_bytes
from lenscope.export.training.config import TrainConfig, TrainError
from lenscope.export.training.monitor import Progress


def load_view(catalog: Catalog, rows: Sequence[CatalogRow], column: str, spec: ModelSpec,
              tick: Callable[[], None]) -> torch.Tensor:
    """Preprocess every image once (serving path) into one [N, 3, S, S] float tensor; a row
    without a ``photo`` contributes its catalog image instead."""
    s = spec.preprocess.image_size
    out = torch.empty((len(rows), 3, s, s), dtype=torch.float32)
    for i, row in enumerate(rows):
        rel = getattr(row, column) or row.image
        path = catalog.root / rel
        try:
            data = read_catalog_image(catalog.root, rel, max_bytes=spec.limits.max_image_bytes, allow_outside=True)
            out[i] = torch.from_numpy(preprocess_bytes(data, spec.preprocess, spec.limits))
        except (OSError, ImageInputError) as err:
            raise TrainError(f"{catalog.path}: product {row.product_id!r}: {column} {path}: {err}") from None
        tick()
    return out


def attribute_targets(spec: ModelSpec, rows: Sequence[CatalogRow], catalog: Catalog) -> torch.Tensor:
    """[N, n_attributes] label indices (-100 = absent); unknown labels are an error, listed."""
    targets = torch.full((len(rows), len(spec.attributes)), -100, dtype=torch.long)
    bad: list[str] = []
    names = catalog.attribute_names()
    for j, attr in enumerate(spec.attributes):
        if attr.name not in names:
            raise TrainError(f"{catalog.path}: spec attribute {attr.name!r} is not an attribute of any product "
                             f"(the catalog's attributes: {', '.join(names) or 'none'})")
        index = {lab: k for k, lab in enumerate(attr.labels)}
        for i, row in enumerate(rows):
            value = row.attributes.get(attr.name)
            if value is None:
                continue
            if value not in index:
                bad.append(f"{row.product_id}: {attr.name}={value!r}")
            else:
                targets[i, j] = index[value]
    if bad:
        raise TrainError(f"{catalog.path}: {len(bad)} label(s) not in the spec's label sets, e.g. {bad[:8]}; "
                         "fix the catalog or the spec's attributes")
    return targets


class Augment:
    """Light, label-preserving augmentation of normalised batches: zoom 0.85-1, shift within the
    zoom slack, horizontal mirror, brightness +-10% (applied in pixel space)."""

    def __init__(self, spec: ModelSpec, gen: torch.Generator):
        self.mean = torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.preprocess.std).view(1, 3, 1, 1)
        self.gen = gen

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        u = torch.rand((n, 5), generator=self.gen).to(x.device)
        scale = 0.85 + 0.15 * u[:, 0]
        tx = (u[:, 1] * 2 - 1) * (1 - scale)
        ty = (u[:, 2] * 2 - 1) * (1 - scale)
        flip = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
        theta = torch.zeros((n, 2, 3), device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = scale * flip, tx
        theta[:, 1, 1], theta[:, 1, 2] = scale, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        b = (0.9 + 0.2 * u[:, 4]).view(n, 1, 1, 1)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return ((x * std + mean) * b - mean) / std


def drop_words(text: str, p: float, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else words[rng.randrange(len(words))]


@dataclass
class TrainData:
    """The catalog side of a run: its splits and their attribute targets (None without heads)."""

    cat: Catalog
    train_rows: list[CatalogRow]
    val_rows: list[CatalogRow]
    targets: torch.Tensor | None
    val_targets: torch.Tensor | None


@dataclass
class Views:
    """The preprocessed tensors: train images (and photos), the val split's image/photo/tokens."""

    images: torch.Tensor
    photos: torch.Tensor | None
    val: dict[str, torch.Tensor]
    n_photos: int
    monitor: bool
    preload_s: float


def read_data(spec: ModelSpec, catalog: str | Path | Catalog, cfg: TrainConfig) -> TrainData:
    """Read the catalog and check it can train this spec, before any model is built."""
    cat = catalog if isinstance(catalog, Catalog) else read_catalog(catalog, check_images=True)
    train_rows = cat.split("train")
    val_rows = cat.split("val")
    if len(train_rows) < 2:
        raise TrainError(f"{cat.path}: the train split has {len(train_rows)} product(s); need at least 2")
    if cfg.heads != "none" and not spec.attributes:
        raise TrainError(f"heads {cfg.heads!r} requested but spec {spec.name!r} declares no attributes")
    targets = attribute_targets(spec, train_rows, cat) if cfg.heads != "none" else None
    val_targets = attribute_targets(spec, val_rows, cat) if cfg.heads != "none" and val_rows else None
    return TrainData(cat, train_rows, val_rows, targets, val_targets)


def preload_views(data: TrainData, spec: ModelSpec, cfg: TrainConfig, tokenizer: Any, bar: Progress) -> Views:
    """Preprocess every image the run needs once, and tokenize the val titles when monitoring."""
    train_rows, val_rows = data.train_rows, data.val_rows
    n_photos = sum(r.photo is not None for r in train_rows)
    use_photos = cfg.two_view and n_photos > 0
    monitor = cfg.monitor_every > 0 and bool(val_rows)
    val_photos = monitor and all(r.photo is not None for r in val_rows)
    need_val_images = monitor or (cfg.heads != "none" and bool(val_rows))  # monitor and/or head accuracy
    n_images = len(train_rows) * (2 if use_photos else 1) + len(val_rows) * (need_val_images + val_photos)

    t0 = time.perf_counter()
    tick = bar.task("preprocessing images", n_images)
    images = load_view(data.cat, train_rows, "image", spec, tick)
    photos = load_view(data.cat, train_rows, "photo", spec, tick) if use_photos else None
    val: dict[str, torch.Tensor] = {}
    if need_val_images:
        val["image"] = load_view(data.cat, val_rows, "image", spec, tick)
    if val_photos:
        val["photo"] = load_view(data.cat, val_rows, "photo", spec, tick)
    if monitor:
        val["tokens"] = tokenizer([r.title for r in val_rows])
    return Views(images, photos, val, n_photos, monitor, time.perf_counter() - t0)
