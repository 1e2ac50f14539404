"""Procedural backgrounds: clean studio backdrops for catalog shots, busy real-world surfaces for
user photos, and everyday clutter drawn over them.

Separate from ``draw.py`` (the product itself): these fill the frame around the product. Every
random choice comes from the ``numpy.random.Generator`` the caller passes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from lenscope.client.synth.draw import lowfreq


def studio_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Clean product-shot backdrops: white, light grey, warm or pastel, with a gentle gradient
    and sometimes a floor line (the sweep of a photo table)."""
    tones = ((0.97, 0.97, 0.97), (0.92, 0.92, 0.93), (0.95, 0.93, 0.89), (0.90, 0.93, 0.96),
             (0.96, 0.91, 0.92), (0.88, 0.88, 0.86))
    top = np.asarray(tones[rng.integers(len(tones))], np.float32) + rng.uniform(-0.03, 0.02)
    grad = np.linspace(0.0, rng.uniform(-0.1, 0.06), size, dtype=np.float32)[:, None, None]
    bg = np.broadcast_to(top, (size, size, 3)) + grad
    if rng.random() < 0.35:
        y = int(size * rng.uniform(0.6, 0.85))
        bg = bg.copy()
        bg[y:] *= rng.uniform(0.88, 0.96)
    return np.clip(bg, 0, 1).astype(np.float32)


SCENES = ("wood", "tiles", "fabric", "outdoor", "carpet", "wall")


def scene_background(size: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """Busy real-world surfaces for user photos."""
    kind = kind or SCENES[rng.integers(len(SCENES))]
    ys = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, size, dtype=np.float32)[None, :]
    if kind == "wood":
        base = np.asarray([0.55, 0.38, 0.22], np.float32) * rng.uniform(0.6, 1.3)
        planks = np.floor(ys * rng.integers(3, 7) + 0 * xs)
        grain = 0.08 * np.sin(2 * np.pi * (ys * 40 + 3 * lowfreq(rng, size, 4)))
        lum = 1 + grain + 0.1 * np.sin(planks * 2.7) + 0.04 * rng.standard_normal((size, size))
        return np.clip(base * lum[..., None], 0, 1).astype(np.float32)
    if kind == "tiles":
        base = rng.uniform(0.5, 0.95, 3).astype(np.float32)
        n = rng.integers(3, 7)
        grout = ((np.mod(xs * n, 1) < 0.06) | (np.mod(ys * n, 1) < 0.06)).astype(np.float32)
        lum = 1 - 0.35 * grout + 0.03 * rng.standard_normal((size, size))
        return np.clip(base * lum[..., None], 0, 1).astype(np.float32)
    if kind == "fabric":
        base = rng.uniform(0.2, 0.9, 3).astype(np.float32)
        folds = 0.15 * lowfreq(rng, size, 4) + 0.05 * rng.standard_normal((size, size))
        return np.clip(base * (1 + folds)[..., None], 0, 1).astype(np.float32)
    if kind == "outdoor":
        sky = np.asarray([0.55, 0.72, 0.92], np.float32) * rng.uniform(0.8, 1.1)
        ground = np.asarray([[0.35, 0.5, 0.25], [0.5, 0.5, 0.5], [0.7, 0.62, 0.45]][rng.integers(3)], np.float32)
        horizon = rng.uniform(0.3, 0.7) + 0.05 * np.sin(xs * 6 + rng.uniform(0, 6))
        t = np.clip((ys - horizon) * size / 3, 0, 1)[..., None]
        img = sky * (1 - t) + ground * t
        img = img * (1 + 0.08 * lowfreq(rng, size, 8)[..., None])
        return np.clip(img, 0, 1).astype(np.float32)
    if kind == "carpet":
        base = rng.uniform(0.15, 0.8, 3).astype(np.float32)
        noise = 0.12 * rng.standard_normal((size, size, 3)).astype(np.float32)
        return np.clip(base + noise * base, 0, 1)
    if kind == "wall":
        wall = rng.uniform(0.55, 0.95, 3).astype(np.float32)
        floor = rng.uniform(0.2, 0.6, 3).astype(np.float32)
        t = (ys > rng.uniform(0.55, 0.8)).astype(np.float32)[..., None] + 0 * xs[..., None]
        img = wall * (1 - t) + floor * t
        return np.clip(img * (1 + 0.04 * rng.standard_normal((size, size, 1))), 0, 1).astype(np.float32)
    raise ValueError(f"unknown scene {kind!r}; known: {SCENES}")


def clutter(canvas: np.ndarray, rng: np.random.Generator, count: int, max_radius: float = 0.22) -> None:
    """Random everyday blobs (coasters, books, cables) drawn straight onto the canvas."""
    size = canvas.shape[0]
    for _ in range(count):
        img = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(img)
        cx, cy = rng.uniform(0, size, 2)
        r = size * rng.uniform(0.05, max_radius)
        kind = rng.integers(3)
        if kind == 0:
            d.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r * rng.uniform(0.4, 1)], fill=255)
        elif kind == 1:
            ang = rng.uniform(0, math.pi)
            w, h = r, r * rng.uniform(0.3, 1.0)
            c, s = math.cos(ang), math.sin(ang)
            pts = [(cx + c * x - s * y, cy + s * x + c * y) for x, y in ((-w, -h), (w, -h), (w, h), (-w, h))]
            d.polygon(pts, fill=255)
        else:
            pts = [tuple(p) for p in rng.uniform(0, size, (4, 2))]
            d.line(pts, fill=255, width=max(1, int(size / 40)), joint="curve")
        m = (np.asarray(img, dtype=np.float32) / 255.0)[..., None]
        col = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        canvas *= 1 - m
        canvas += m * col
