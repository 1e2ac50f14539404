"""Training data: the catalog's split and label sets, every image of every product preloaded through
the serving path into tensors, and the per-batch randomness (augmentation, word dropout).

Separate from the loop because this is what the model sees; the loop only decides when.

Every image of a product is a positive of that product: its main image (the one the index embeds)
pairs with the title, and any other image (an ``alt``, ``back``, ``photo``...) is the second view
of the image-image term. A catalog with one extra ``photo`` per product (the bundled one) gives
exactly the shipped recipe's two views.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lenscope.client.catalog.reader import read_catalog
from lenscope.client.catalog.rows import Catalog, CatalogRow
from lenscope.client.core.modelspec import ModelSpec
from lenscope.client.eval.thumbnail import thumbnail_vector
from lenscope.client.inputs.image_files import OUTSIDE_CATALOG, ImageFileError, read_catalog_image
from lenscope.client.inputs.preprocess import ImageInputError, preprocess_bytes
from lenscope.export.training.config import TrainConfig, TrainError
from lenscope.export.training.labels import LabelChoice, attribute_targets, choose_labels, image_targets
from lenscope.export.training.monitor import Progress
from lenscope.export.training.split import make_split


@dataclass
class Loaded:
    pixels: torch.Tensor  # [N, 3, S, S], serving-path preprocessed
    thumbs: np.ndarray | None  # [N, 768] 16x16-thumbnail vectors (held-out baseline), when asked for


def load_images(cat: Catalog, items: Sequence[tuple[CatalogRow, int]], spec: ModelSpec, cfg: TrainConfig,
                tick: Callable[[], None], thumbs: bool = False) -> Loaded:
    """Read and preprocess each (product, image number) once; errors name the file, line and path."""
    s = spec.preprocess.image_size
    out = torch.empty((len(items), 3, s, s), dtype=torch.float32)
    th = np.zeros((len(items), 768), dtype=np.float32) if thumbs else None
    for i, (row, k) in enumerate(items):
        rel = row.images[k].path
        try:
            data = read_catalog_image(cat.root, rel, max_bytes=spec.limits.max_image_bytes,
                                      allow_outside=cfg.allow_outside_images)
            out[i] = torch.from_numpy(preprocess_bytes(data, spec.preprocess, spec.limits))
            if th is not None:
                th[i] = thumbnail_vector(data, spec.limits)
        except (ImageFileError, OSError, ImageInputError) as err:
            lines = cat.lines.get(row.product_id, ())
            where = f"{cat.path}:{lines[k]}" if k < len(lines) else str(cat.path)
            hint = " (or pass --allow-outside-images)" if getattr(err, "reason", "") == OUTSIDE_CATALOG else ""
            raise TrainError(f"{where}: product {row.product_id!r}: image {rel!r}: {err}{hint}") from None
        tick()
    return Loaded(out, th)


class Augment:
    """Label-preserving augmentation of normalised batches (in pixel space).

    ``light`` (the shipped recipe): zoom 0.85-1, shift within the zoom slack, mirror, brightness
    +-10%. ``studio`` (product shots on plain backgrounds, where the model must not key on framing):
    crops down to 0.6 of the frame, mirror, brightness and contrast +-15%, saturation +-10% towards
    grey. Never a hue shift: the labelled colour must stay the colour in the picture.
    """

    def __init__(self, spec: ModelSpec, gen: torch.Generator, style: str = "light"):
        self.mean = torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.preprocess.std).view(1, 3, 1, 1)
        self.gen = gen
        self.style = style

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        studio = self.style == "studio"
        u = torch.rand((n, 7 if studio else 5), generator=self.gen).to(x.device)
        scale = (0.6 + 0.4 * u[:, 0]) if studio else (0.85 + 0.15 * u[:, 0])
        tx = (u[:, 1] * 2 - 1) * (1 - scale)
        ty = (u[:, 2] * 2 - 1) * (1 - scale)
        flip = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
        theta = torch.zeros((n, 2, 3), device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = scale * flip, tx
        theta[:, 1, 1], theta[:, 1, 2] = scale, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if not studio:
            b = (0.9 + 0.2 * u[:, 4]).view(n, 1, 1, 1)
            return ((x * std + mean) * b - mean) / std
        px = x * std + mean
        b = (0.85 + 0.3 * u[:, 4]).view(n, 1, 1, 1)
        c = (0.85 + 0.3 * u[:, 5]).view(n, 1, 1, 1)
        s = (0.9 + 0.2 * u[:, 6]).view(n, 1, 1, 1)
        px = px * b
        px = (px - px.mean(dim=(1, 2, 3), keepdim=True)) * c + px.mean(dim=(1, 2, 3), keepdim=True)
        grey = (0.299 * px[:, 0:1] + 0.587 * px[:, 1:2] + 0.114 * px[:, 2:3])
        px = (grey + (px - grey) * s).clamp(0, 1)
        return (px - mean) / std


def drop_words(text: str, p: float, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else words[rng.randrange(len(words))]


@dataclass
class TrainData:
    """The catalog side of a run: its split, label sets and attribute targets (None without heads)."""

    cat: Catalog
    train_rows: list[CatalogRow]
    val_rows: list[CatalogRow]
    targets: torch.Tensor | None
    val_targets: torch.Tensor | None
    labels: LabelChoice
    split_source: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Views:
    """The preprocessed tensors: train main images, their other images, and the held-out set."""

    images: torch.Tensor  # main image of each train product
    others: torch.Tensor | None  # every other image of the train products
    other_index: list[list[int]]  # per train product: rows of ``others``
    val: dict[str, Any]
    n_photos: int  # train products with at least one other image
    monitor: bool
    preload_s: float
    other_targets: torch.Tensor | None = None  # heads: the labels of each row of ``others``


def read_data(spec: ModelSpec, catalog: str | Path | Catalog, cfg: TrainConfig) -> TrainData:
    """Read the catalog and check it can train this spec, before any model is built."""
    cat = catalog if isinstance(catalog, Catalog) else read_catalog(catalog, check_images=True)
    split = make_split(cat, cfg)
    train_rows, val_rows = split.train, split.held_out
    if len(train_rows) < 2:
        raise TrainError(f"{cat.path}: the train split has {len(train_rows)} product(s); need at least 2")
    labels = choose_labels(spec, cat, train_rows + val_rows, cfg)
    notes = [f"held-out split: {split.source}", *labels.notes]
    if cfg.heads != "none" and not labels.attributes:
        raise TrainError(f"heads {cfg.heads!r} requested but neither spec {spec.name!r} nor catalog {cat.path} has an "
                         "attribute with 2 or more labels; pass --heads none")
    targets = val_targets = None
    if cfg.heads != "none":
        targets = attribute_targets(labels.attributes, train_rows)
        unseen: list[str] = []
        val_targets = attribute_targets(labels.attributes, val_rows,
                                        lambda r, a, v: unseen.append(f"{a}={v!r}")) if val_rows else None
        if unseen:
            notes.append(f"{len(unseen)} held-out label(s) not in the label sets, not scored: {sorted(set(unseen))[:6]}")
    return TrainData(cat, train_rows, val_rows, targets, val_targets, labels, split.source, notes)


def preload_views(data: TrainData, spec: ModelSpec, cfg: TrainConfig, tokenizer: Any, bar: Progress) -> Views:
    """Preprocess every image the run needs once; tokenize the held-out titles; thumbnails for the baseline."""
    train_rows, val_rows = data.train_rows, data.val_rows
    other_items = [(r, k) for r in train_rows for k in range(1, len(r.images))] if cfg.two_view else []
    n_photos = sum(len(r.images) > 1 for r in train_rows)
    monitor = cfg.eval_every != 0 and bool(val_rows)
    need_val = monitor or (cfg.heads != "none" and bool(val_rows))
    val_photo_items = [(r, k) for r in val_rows for k in range(1, len(r.images))] if monitor else []
    n_images = len(train_rows) + len(other_items) + (len(val_rows) + len(val_photo_items)) * need_val

    t0 = time.perf_counter()
    tick = bar.task("preprocessing images", n_images)
    mains = load_images(data.cat, [(r, 0) for r in train_rows], spec, cfg, tick, thumbs=monitor)
    others = load_images(data.cat, other_items, spec, cfg, tick).pixels if other_items else None
    other_index: list[list[int]] = []
    i = 0
    for r in train_rows:
        n = len(r.images) - 1 if cfg.two_view else 0
        other_index.append(list(range(i, i + n)))
        i += n
    val: dict[str, Any] = {}
    if need_val:
        held = load_images(data.cat, [(r, 0) for r in val_rows], spec, cfg, tick, thumbs=monitor)
        val["image"] = held.pixels
        if monitor:
            photos = load_images(data.cat, val_photo_items, spec, cfg, tick, thumbs=True)
            index = {r.product_id: j for j, r in enumerate(val_rows)}
            val.update(photo=photos.pixels, photo_product=torch.tensor(
                [index[r.product_id] for r, _ in val_photo_items], dtype=torch.long),
                tokens=tokenizer([r.title for r in val_rows]), train_image=mains.pixels,
                thumbs={"gallery": np.concatenate([held.thumbs, mains.thumbs]), "photo": photos.thumbs})
    other_targets = image_targets(data.labels.attributes, other_items) \
        if data.targets is not None and other_items else None
    return Views(mains.pixels, others, other_index, val, n_photos, monitor, time.perf_counter() - t0, other_targets)
