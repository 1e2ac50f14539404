"""A generic image-caption corpus for "zero-shot" pretraining, deliberately *not* the catalog's
distribution: everyday things and simple scenes (stars, houses, fish, balloons on grass, sky,
water, at night), one to three objects per picture, captions in the style of web alt-text.

It shares only what a web-scale corpus would share with a product catalog: colour words and a
few pattern words. No product category, brand, material or catalog backdrop appears, so a model
pretrained here and evaluated on the catalog is a fair stand-in for an off-the-shelf CLIP.

It is written in the catalog format (``lenscope.client.catalog``) so the same training code reads it: one row
per image, ``title`` = caption, ``category`` / ``color`` / ``pattern`` = the main object's, no
photos, no queries; split ``train`` (95%) / ``val`` (5%).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from lenscope.client.synth import camera, draw, scene
from lenscope.client.catalog.rows import CatalogRow
from lenscope.client.catalog.writer import write_catalog
from lenscope.client.synth.draw import Prim, band, ellipse, poly, rounded_rect
from lenscope.client.synth.catalog import CatalogPaths, ImageFormat
from lenscope.client.synth.products import RGB

GENERATOR_VERSION = "lenscope-corpus-gen/1"

CORPUS_RGB = {**RGB, "grey": (128, 128, 130), "gold": (212, 175, 55)}
CORPUS_PATTERNS = {"plain": "solid", "striped": "striped", "spotted": "dotted"}  # caption word -> draw pattern


def _star(s):
    k = 5 + int(s[0] > 0.7)
    t = np.arange(2 * k) * math.pi / k - math.pi / 2
    r = np.where(np.arange(2 * k) % 2 == 0, 0.95, 0.38 + 0.12 * s[1])
    return [Prim("body", np.stack([r * np.cos(t), r * np.sin(t)], 1))]


def _heart(s):
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [Prim("body", np.stack([x, y], 1) / 17.5)]


def _ball(s):
    return [Prim("body", ellipse(0, 0, 0.8, 0.8, n=32)),
            Prim("mark", ellipse(0, 0, 0.8, 0.3 + 0.3 * s[0], 0, math.pi, 14), width=0.05)]


def _triangle(s):
    return [Prim("body", poly(0, -0.9, 0.85, 0.75, -0.85, 0.75))]


def _cloud(s):
    blobs = [ellipse(x, y, r, r, n=20) for x, y, r in ((-0.45, 0.1, 0.4), (0.0, -0.15, 0.5), (0.45, 0.1, 0.4))]
    return [Prim("body", b) for b in blobs] + [Prim("body", rounded_rect(-0.8, 0.0, 0.8, 0.45, 0.2))]


def _house(s):
    return [Prim("body", poly(-0.65, -0.05, 0.65, -0.05, 0.65, 0.85, -0.65, 0.85)),
            Prim("detail", poly(-0.85, -0.05, 0, -0.85, 0.85, -0.05)),
            Prim("mark", poly(-0.15, 0.35, 0.15, 0.35, 0.15, 0.85, -0.15, 0.85))]


def _tree(s):
    return [Prim("body", ellipse(0, -0.25, 0.65, 0.6, n=28)),
            Prim("detail", poly(-0.12, 0.25, 0.12, 0.25, 0.15, 0.95, -0.15, 0.95))]


def _car(s):
    return [Prim("body", rounded_rect(-0.95, -0.05, 0.95, 0.45, 0.12)),
            Prim("body", poly(-0.5, -0.05, -0.3, -0.45, 0.35, -0.45, 0.55, -0.05)),
            Prim("detail", poly(-0.38, -0.1, -0.25, -0.38, 0.05, -0.38, 0.05, -0.1)),
            Prim("mark", ellipse(-0.55, 0.45, 0.2, 0.2, n=16)), Prim("mark", ellipse(0.55, 0.45, 0.2, 0.2, n=16))]


def _fish(s):
    return [Prim("body", ellipse(-0.1, 0, 0.65, 0.38 + 0.1 * s[0], n=28)),
            Prim("body", poly(0.45, 0, 0.95, -0.4, 0.95, 0.4)),
            Prim("mark", ellipse(-0.45, -0.08, 0.07, 0.07, n=10))]


def _flower(s):
    petals = [ellipse(0.45 * math.cos(a), -0.2 + 0.45 * math.sin(a), 0.28, 0.28, n=14)
              for a in np.arange(6) * math.pi / 3]
    return ([Prim("mark", poly(0, 0.1, 0, 0.95), width=0.08)] + [Prim("body", p) for p in petals]
            + [Prim("detail", ellipse(0, -0.2, 0.24, 0.24, n=16))])


def _moon(s):
    return [Prim("body", ellipse(0, 0, 0.8, 0.8, n=32)), Prim("hole", ellipse(0.38, -0.15, 0.68, 0.68, n=32))]


def _umbrella(s):
    return [Prim("body", np.concatenate([ellipse(0, 0, 0.9, 0.75, math.pi, 2 * math.pi, 24), poly(0.9, 0, -0.9, 0)])),
            Prim("mark", poly(0, 0, 0, 0.75), width=0.06),
            Prim("mark", band(0.12, 0.75, 0.14, 0.07, 0, math.pi, 10))]


def _balloon(s):
    return [Prim("body", ellipse(0, -0.25, 0.5, 0.62, n=28)), Prim("body", poly(-0.08, 0.4, 0.08, 0.4, 0, 0.32)),
            Prim("mark", poly(0, 0.4, 0.08, 0.6, -0.06, 0.8, 0.03, 0.98), width=0.025)]


THINGS = {"star": _star, "heart": _heart, "ball": _ball, "triangle": _triangle, "cloud": _cloud, "house": _house,
          "tree": _tree, "car": _car, "fish": _fish, "flower": _flower, "moon": _moon, "umbrella": _umbrella,
          "balloon": _balloon}
SCENE_WORDS = {  # draw scene -> caption phrases
    "outdoor": ("outside", "in a field", "under the sky"),
    "wood": ("on a wooden table", "on the floor"),
    "tiles": ("on tiles", "in the kitchen"),
    "fabric": ("on a blanket", "on a sofa"),
    "carpet": ("on a rug", "on the carpet"),
    "wall": ("in a room", "against a wall"),
    "night": ("at night", "in the dark"),
    "water": ("in the water", "on a lake"),
}
CAPTIONS_ONE = ("a photo of a {o}", "a {o} {w}", "{o} {w}", "close-up of a {o}", "an illustration of a {o} {w}",
                "there is a {o} {w}", "a picture showing a {o}")
CAPTIONS_MANY = ("a {o} and a {o2} {w}", "a {o} next to a {o2}", "a photo of a {o} with a {o2} {w}",
                 "{o} and {o2}")


def _scene(size: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "night":
        bg = np.zeros((size, size, 3), np.float32) + np.asarray([0.04, 0.05, 0.15], np.float32)
        stars = rng.random((size, size)) < 0.01
        bg[stars] = 0.9
        return bg
    if kind == "water":
        ys = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        base = np.asarray([0.1, 0.35, 0.55], np.float32) * rng.uniform(0.8, 1.2)
        waves = 0.08 * np.sin(ys * 60 + rng.uniform(0, 6)) + 0.05 * rng.standard_normal((size, size, 1))
        return np.clip(base * (1 + waves), 0, 1).astype(np.float32)
    return scene.scene_background(size, rng, kind)


def _object_phrase(rng: np.random.Generator, kind: str, color: str, pattern_word: str) -> str:
    words = [color, kind] if pattern_word == "plain" else [pattern_word, color, kind]
    if rng.random() < 0.12:  # alt-text often forgets the colour
        words.remove(color)
    return " ".join(words)


def render_corpus_image(seed: int, index: int, size: int) -> tuple[np.ndarray, str, dict]:
    rng = np.random.default_rng([seed, index, 7])
    scene = list(SCENE_WORDS)[int(rng.integers(len(SCENE_WORDS)))]
    canvas = _scene(size, rng, scene)
    n = 1 if rng.random() < 0.6 else int(rng.integers(2, 4))
    objs = []
    for j in range(n):
        kind = list(THINGS)[int(rng.integers(len(THINGS)))]
        color = list(CORPUS_RGB)[int(rng.integers(len(CORPUS_RGB)))]
        pword = "plain" if rng.random() < 0.6 else list(CORPUS_PATTERNS)[1 + int(rng.integers(2))]
        scale = rng.uniform(0.55, 0.85) if j == 0 else rng.uniform(0.2, 0.4)
        place = draw.Placement(cx=rng.uniform(0.3, 0.7) if j == 0 else rng.uniform(0.1, 0.9),
                               cy=rng.uniform(0.3, 0.7) if j == 0 else rng.uniform(0.1, 0.9),
                               scale=scale, rotation=rng.uniform(-0.4, 0.4))
        lay = draw.rasterize(THINGS[kind](rng.uniform(0, 1, 4)), place, size)
        base = tuple(np.clip(np.asarray(CORPUS_RGB[color]) / 255 * rng.uniform(0.9, 1.1), 0, 1))
        accent = (0.95, 0.95, 0.95) if sum(base) < 1.6 else (0.1, 0.1, 0.1)
        detail = tuple(np.clip(np.asarray(base) * 0.6, 0, 1))
        paint = draw.Paint(base, accent, accent, detail, (0.1, 0.1, 0.1), CORPUS_PATTERNS[pword],
                           float(rng.uniform(0.25, 0.4)), float(rng.uniform(0, math.pi)), 0.0,
                           str(rng.choice(["cotton", "ceramic", "metal"])))
        ang = rng.uniform(0, 2 * math.pi)
        draw.paint_object(canvas, lay, paint, rng, scale * size / 2, (math.cos(ang), math.sin(ang), 0.2))
        objs.append((kind, color, pword))
    where = SCENE_WORDS[scene][int(rng.integers(len(SCENE_WORDS[scene])))]
    o = _object_phrase(rng, *objs[0])
    if len(objs) == 1:
        caption = CAPTIONS_ONE[int(rng.integers(len(CAPTIONS_ONE)))].format(o=o, w=where)
    else:
        o2 = _object_phrase(rng, *objs[1])
        caption = CAPTIONS_MANY[int(rng.integers(len(CAPTIONS_MANY)))].format(o=o, o2=o2, w=where)
    canvas = camera.adjust_light(canvas, rng.uniform(0.85, 1.1), rng.uniform(0.9, 1.1), rng.uniform(-0.04, 0.04))
    img = camera.to_image(canvas, rng, noise=rng.uniform(0.0, 0.02))
    kind, color, pword = objs[0]
    return img, caption, {"category": kind, "color": color, "pattern": pword}


def generate_caption_corpus(
    out_dir: str | Path,
    n_images: int = 20000,
    seed: int = 0,
    image_size: int = 64,
    image_format: ImageFormat = "png",
    val_fraction: float = 0.05,
) -> CatalogPaths:
    """Write ``corpus.jsonl`` (catalog format) + images under ``out_dir``; no queries file."""
    if n_images < 1:
        raise ValueError("n_images must be >= 1")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be in 16..1024, got {image_size}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    ext = "png" if image_format == "png" else "jpg"
    (out / "images").mkdir(parents=True, exist_ok=True)
    val = set(np.random.default_rng([seed, 2_000_003]).permutation(n_images)[: int(round(n_images * val_fraction))])
    rows = []
    for i in range(n_images):
        img, caption, attrs = render_corpus_image(seed, i, image_size)
        rel = f"images/c{i:07d}.{ext}"
        (out / rel).write_bytes(camera.encode(img, image_format))
        rows.append(CatalogRow(product_id=f"c{i:07d}", title=caption, image=rel, split="val" if i in val else "train",
                               **attrs))
    catalog = write_catalog(out / "corpus.jsonl", rows)
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({
        "generator": GENERATOR_VERSION, "seed": seed, "n_images": n_images, "image_size": image_size,
        "image_format": image_format, "things": list(THINGS), "colors": list(CORPUS_RGB),
        "patterns": list(CORPUS_PATTERNS), "scenes": list(SCENE_WORDS),
    }, indent=2) + "\n", encoding="utf-8")
    return CatalogPaths(out, catalog, None, manifest, round(time.perf_counter() - t0, 2))
