"""A procedurally generated product catalog, deterministic by seed, in the documented catalog
format (``lenscope.client.catalog``): the offline stand-in for a real catalog in the demo, tests and training.

Per product: a category (10 silhouettes), a colour (12), a pattern (5), a material, a brand, a
per-product cut (``style``) and pattern scale; a clean *catalog image* (studio backdrop, centred,
soft shadow, mild lighting changes) and a *user photo* of the same product rendered differently
(busy scene, clutter, rotation, shear, partial crop, harsh light, blur, noise, JPEG artefacts).
Titles come from varied templates with synonyms (crimson/red, tee/t-shirt) and brand names.

Products (attributes, titles) are drawn in ``products.py``; queries (``queries.jsonl``) for the
val and test splits and their graded relevance are made in ``queries.py``. This module renders the
two images per product and writes everything.

Output layout::

    out_dir/catalog.jsonl   out_dir/queries.jsonl   out_dir/manifest.json
    out_dir/images/catalog/<product_id>.<ext>   out_dir/images/photos/<product_id>.<ext>

Determinism: every product draws from ``numpy.random.default_rng([seed, index, stream])``, so a
product's attributes and pixels depend only on (seed, index), not on the catalog size or order.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from lenscope.client.catalog.rows import CatalogRow
from lenscope.client.catalog.writer import write_catalog, write_queries
from lenscope.client.synth import camera, draw, scene
from lenscope.client.synth.products import (
    BRANDS,
    CATEGORIES,
    COLORS,
    MATERIALS,
    PATTERNS,
    STREAM_CATALOG,
    STREAM_PHOTO,
    Product,
    luma,
    make_product,
    make_title,
    product_rng,
)
from lenscope.client.synth.queries import (
    GRADE_CATEGORY,
    GRADE_CATEGORY_COLOR,
    GRADE_EXACT,
    assign_splits,
    make_queries,
)
from lenscope.client.synth.shapes import SHAPES

GENERATOR_VERSION = "lenscope-catalog-gen/1"
ImageFormat = Literal["png", "jpeg"]


@dataclass(frozen=True)
class CatalogPaths:
    root: Path
    catalog: Path
    queries: Path | None
    manifest: Path
    seconds: float


def _paint(p: Product, phase: float) -> draw.Paint:
    mark = (0.08, 0.08, 0.08) if luma(p.detail) > 0.4 else (0.92, 0.92, 0.9)
    return draw.Paint(p.rgb, p.accent, p.accent2, p.detail, mark, p.pattern, p.period, p.angle, phase, p.material)


def render_catalog_image(p: Product, seed: int, size: int) -> Image.Image:
    """A clean product shot: studio backdrop, centred and upright, soft shadow, mild light."""
    rng = product_rng(seed, p.index, STREAM_CATALOG)
    place = draw.Placement(cx=0.5 + rng.uniform(-0.03, 0.03), cy=0.5 + rng.uniform(-0.03, 0.03),
                           scale=rng.uniform(0.68, 0.86), rotation=rng.uniform(-0.06, 0.06),
                           aspect=rng.uniform(0.94, 1.06))
    lay = draw.rasterize(SHAPES[p.category](np.asarray(p.style)), place, size)
    canvas = scene.studio_background(size, rng)
    draw.cast_shadow(canvas, lay.alpha, size * rng.uniform(0.01, 0.04), size * rng.uniform(0.02, 0.05),
                     size * rng.uniform(0.02, 0.05), rng.uniform(0.15, 0.35))
    ang = rng.uniform(0, 2 * math.pi)
    draw.paint_object(canvas, lay, _paint(p, 0.0), rng, place.scale * size / 2,
                      (math.cos(ang), math.sin(ang), rng.uniform(0.05, 0.25)))
    canvas = camera.adjust_light(canvas, rng.uniform(0.95, 1.05), rng.uniform(0.95, 1.05), rng.uniform(-0.02, 0.02))
    return camera.to_image(canvas, rng, noise=0.006)


def render_user_photo(p: Product, seed: int, size: int) -> Image.Image:
    """The same product as a shopper would photograph it: any angle, busy scene, bad light."""
    rng = product_rng(seed, p.index, STREAM_PHOTO)
    scale = rng.uniform(0.45, 0.95)
    slack = max(0.0, 0.5 - scale / 2) + 0.12 * scale  # up to ~12% of the object may leave the frame
    place = draw.Placement(cx=0.5 + rng.uniform(-slack, slack), cy=0.5 + rng.uniform(-slack, slack), scale=scale,
                           rotation=rng.uniform(-0.6, 0.6), shear=rng.uniform(-0.25, 0.25),
                           aspect=rng.uniform(0.8, 1.2))
    lay = draw.rasterize(SHAPES[p.category](np.asarray(p.style)), place, size)
    canvas = scene.scene_background(size, rng)
    scene.clutter(canvas, rng, int(rng.integers(0, 4)))
    ang = rng.uniform(0, 2 * math.pi)
    draw.cast_shadow(canvas, lay.alpha, size * 0.06 * math.cos(ang), size * 0.06 * math.sin(ang),
                     size * rng.uniform(0.02, 0.06), rng.uniform(0.15, 0.5))
    draw.paint_object(canvas, lay, _paint(p, float(rng.uniform(0, 1))), rng, place.scale * size / 2,
                      (math.cos(ang), math.sin(ang), rng.uniform(0.15, 0.45)))
    if rng.random() < 0.3:  # something partly in front of the product
        scene.clutter(canvas, rng, 1, max_radius=0.12)
    canvas = camera.adjust_light(canvas, rng.uniform(0.7, 1.2), rng.uniform(0.75, 1.15), rng.uniform(-0.08, 0.08))
    if rng.random() < 0.5:
        canvas = camera.vignette(canvas, rng.uniform(0.1, 0.4))
    quality = int(rng.integers(35, 85)) if rng.random() < 0.6 else None
    return camera.to_image(canvas, rng, noise=rng.uniform(0.005, 0.04), blur=rng.uniform(0, 0.6) * size / 64,
                           jpeg_quality=quality)


def generate_catalog(
    out_dir: str | Path,
    n_products: int = 6000,
    seed: int = 0,
    image_size: int = 64,
    image_format: ImageFormat = "png",
    split_fractions: tuple[float, float, float] = (0.75, 0.10, 0.15),
    progress: bool = False,
) -> CatalogPaths:
    """Write a catalog, its images, its queries and a manifest under ``out_dir``."""
    if n_products < 1:
        raise ValueError("n_products must be >= 1")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be in 16..1024, got {image_size}")
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    split_of = assign_splits(n_products, seed, split_fractions)
    t0 = time.perf_counter()
    out = Path(out_dir)
    ext = "png" if image_format == "png" else "jpg"
    (out / "images" / "catalog").mkdir(parents=True, exist_ok=True)
    (out / "images" / "photos").mkdir(parents=True, exist_ok=True)
    products, rows, splits, photo_rel = [], [], {}, {}
    track = _progress(progress, n_products, "rendering catalog")
    for i in range(n_products):
        p = make_product(seed, i)
        img_rel = f"images/catalog/{p.product_id}.{ext}"
        ph_rel = f"images/photos/{p.product_id}.{ext}"
        (out / img_rel).write_bytes(camera.encode(render_catalog_image(p, seed, image_size), image_format))
        (out / ph_rel).write_bytes(camera.encode(render_user_photo(p, seed, image_size), image_format))
        products.append(p)
        splits[p.product_id] = split_of[i]
        photo_rel[p.product_id] = ph_rel
        rows.append(CatalogRow(product_id=p.product_id, title=make_title(p, seed), image=img_rel,
                               category=p.category, color=p.color, pattern=p.pattern, material=p.material,
                               popularity=p.popularity, photo=ph_rel, split=split_of[i]))
        track(i + 1)
    catalog_path = write_catalog(out / "catalog.jsonl", rows)
    queries_path = write_queries(out / "queries.jsonl", make_queries(products, splits, seed, photo_rel))
    counts = {s: split_of.count(s) for s in ("train", "val", "test")}
    manifest = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "n_products": n_products,
        "image_size": image_size,
        "image_format": image_format,
        "split_fractions": list(split_fractions),
        "split_counts": counts,
        "labels": {"category": list(CATEGORIES), "color": list(COLORS), "pattern": list(PATTERNS),
                   "material": list(MATERIALS)},
        "synonyms": {"category": CATEGORIES, "color": COLORS, "pattern": PATTERNS, "material": MATERIALS},
        "brands": list(BRANDS),
        "grades": {"exact": GRADE_EXACT, "category+color": GRADE_CATEGORY_COLOR, "category": GRADE_CATEGORY},
    }
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return CatalogPaths(out, catalog_path, queries_path, manifest_path, round(time.perf_counter() - t0, 2))


def _progress(enabled: bool, total: int, label: str):
    """A callable advancing a rich progress bar (rich is a client dependency), or a no-op."""
    if not enabled:
        return lambda done: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=total)
    bar.start()

    def advance(done: int) -> None:
        bar.update(task, completed=done)
        if done >= total:
            bar.stop()

    return advance
