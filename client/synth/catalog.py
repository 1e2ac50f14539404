"""A procedurally generated product catalog, deterministic by seed, in the documented catalog
format (``catalog.py``): the offline stand-in for a real catalog in the demo, tests and training.

Per product: a category (10 silhouettes), a colour (12), a pattern (5), a material, a brand, a
per-product cut (``style``) and pattern scale; a clean *catalog image* (studio backdrop, centred,
soft shadow, mild lighting changes) and a *user photo* of the same product rendered differently
(busy scene, clutter, rotation, shear, partial crop, harsh light, blur, noise, JPEG artefacts).
Titles come from varied templates with synonyms (crimson/red, tee/t-shirt) and brand names.

Queries (``queries.jsonl``) are made for the val and test splits, judged against the products of
the same split (index that split to evaluate):

- ``image``: a product's user photo. Grade 3: that product; 2: same category and colour; 1: same
  category.
- ``image+text``: the user photo plus text naming what the photo cannot show (brand, material).
  Grades as for ``image``.
- ``text``: a natural-language query generated from a product; it always names a category and a
  colour and sometimes a pattern, material or brand, using synonyms drawn independently of the
  product's own title. Grade 3: every product matching *all* attributes the query names; 2: same
  category and colour; 1: same category.

Output layout::

    out_dir/catalog.jsonl   out_dir/queries.jsonl   out_dir/manifest.json
    out_dir/images/catalog/<product_id>.<ext>   out_dir/images/photos/<product_id>.<ext>

Determinism: every product draws from ``numpy.random.default_rng([seed, index, stream])``, so a
product's attributes and pixels depend only on (seed, index), not on the catalog size or order.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from lenscope.client.synth import draw as draw
from lenscope.client.catalog.format import CatalogRow, Query, write_catalog, write_queries
from lenscope.client.synth.shapes import SHAPES

GENERATOR_VERSION = "lenscope-catalog-gen/1"
ImageFormat = Literal["png", "jpeg"]

# canonical label -> synonyms used in titles and queries (the label itself is always one of them).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "crew-neck tee", "tee shirt"),
    "dress": ("dress", "sundress", "frock", "midi dress"),
    "trousers": ("trousers", "pants", "chinos", "slacks"),
    "sneaker": ("sneakers", "trainers", "running shoes", "kicks"),
    "boot": ("boots", "ankle boots", "chelsea boots", "booties"),
    "handbag": ("handbag", "purse", "tote", "shoulder bag"),
    "backpack": ("backpack", "rucksack", "daypack", "knapsack"),
    "hat": ("hat", "fedora", "sun hat", "trilby"),
    "watch": ("watch", "wristwatch", "timepiece", "analog watch"),
    "mug": ("mug", "coffee mug", "cup", "tea mug"),
}
COLORS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "cherry"),
    "orange": ("orange", "tangerine", "burnt orange", "pumpkin"),
    "yellow": ("yellow", "mustard", "lemon", "canary"),
    "green": ("green", "emerald", "forest green", "kelly green"),
    "teal": ("teal", "turquoise", "petrol", "aqua"),
    "blue": ("blue", "cobalt", "royal blue", "sky blue"),
    "navy": ("navy", "midnight", "dark navy", "marine"),
    "purple": ("purple", "violet", "plum", "aubergine"),
    "pink": ("pink", "rose", "blush", "fuchsia"),
    "brown": ("brown", "chocolate", "tan", "cognac"),
    "black": ("black", "jet black", "onyx", "ebony"),
    "white": ("white", "ivory", "cream", "snow white"),
}
PATTERNS: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain", "solid-colour"),
    "striped": ("striped", "stripe", "pinstripe", "breton-stripe"),
    "checked": ("checked", "plaid", "gingham", "tartan"),
    "dotted": ("polka dot", "dotted", "spotted", "polka-dot"),
    "floral": ("floral", "flower print", "botanical", "flowered"),
}
MATERIALS: dict[str, tuple[str, ...]] = {
    "cotton": ("cotton", "organic cotton", "jersey"),
    "denim": ("denim", "chambray"),
    "linen": ("linen", "flax"),
    "leather": ("leather", "full-grain leather", "nappa"),
    "suede": ("suede", "nubuck"),
    "wool": ("wool", "merino", "knit"),
    "canvas": ("canvas", "heavy canvas"),
    "nylon": ("nylon", "ripstop"),
    "ceramic": ("ceramic", "stoneware", "porcelain"),
    "metal": ("stainless steel", "metal", "steel"),
}
CATEGORY_MATERIALS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("cotton", "linen", "wool"),
    "dress": ("cotton", "linen", "wool", "denim"),
    "trousers": ("denim", "cotton", "linen", "wool"),
    "sneaker": ("canvas", "leather", "suede", "nylon"),
    "boot": ("leather", "suede"),
    "handbag": ("leather", "suede", "canvas", "nylon"),
    "backpack": ("nylon", "canvas", "leather"),
    "hat": ("wool", "cotton", "canvas", "linen"),
    "watch": ("metal", "leather", "nylon"),
    "mug": ("ceramic", "metal"),
}
BRANDS = ("Northwind", "Lumora", "Kestrel", "Atlas Goods", "Verdana Row", "Mirabel", "Oakhaven", "Solstice",
          "Tidewater", "Harbor Lane", "Fenwick", "Aurelia", "Quarry & Co", "Nimbus", "Bramblewood", "Halcyon",
          "Ostara", "Pinecrest", "Wexley", "Zephyr")
ADJECTIVES = ("classic", "slim", "relaxed", "vintage", "everyday", "premium", "lightweight", "heritage", "essential",
              "modern", "oversized", "minimalist")
SUFFIXES = ("", "", "", "- unisex", "(new season)", "- limited edition", "| free returns", "- bestseller")

# Title templates: segments joined by spaces; a segment whose slot is empty is dropped whole.
# Slots: {b} brand, {c} colour, {p} pattern, {k} category, {m} material, {a} adjective, {x} suffix.
TITLE_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("{b}", "{c}", "{p}", "{k}"),
    ("{b}", "{a}", "{c}", "{p}", "{m}", "{k}", "{x}"),
    ("{c}", "{p}", "{k}", "by {b}"),
    ("{a}", "{p}", "{k}", "in {c}", "- {b}"),
    ("{b}", "{k}", ", {c}", ", {p}", "{m}"),
    ("{p}", "{m}", "{k}", "| {c}", "| {b}", "{x}"),
    ("{b}", "{a}", "{k}", "- {c}", "{p}"),
    ("{c}", "{k}", "with {p} print", ", {m}", "- {b}"),
)
QUERY_TEMPLATES = (  # (template, names pattern, names material, names brand)
    ("{c} {k}", False, False, False),
    ("{c} {p} {k}", True, False, False),
    ("{p} {k} in {c}", True, False, False),
    ("looking for a {c} {k}", False, False, False),
    ("{k} {c} {p}", True, False, False),
    ("{c} {m} {k}", False, True, False),
    ("{b} {k} in {c}", False, False, True),
    ("i want {c} {p} {m} {k}", True, True, False),
    ("{b} {c} {p} {k}", True, False, True),
)
PHOTO_TEXT_TEMPLATES = ("from {b}", "the {b} one", "{m}, by {b}", "{b} {m}", "made by {b}", "in {m}")

# Rendering palette: canonical colour -> base RGB (0..255); products jitter around it.
RGB = {
    "red": (200, 30, 35), "orange": (240, 125, 25), "yellow": (242, 208, 45), "green": (40, 145, 60),
    "teal": (0, 128, 128), "blue": (40, 95, 215), "navy": (25, 35, 95), "purple": (115, 45, 150),
    "pink": (240, 135, 180), "brown": (115, 70, 35), "black": (28, 28, 30), "white": (242, 242, 236),
}
PATTERN_WEIGHTS = {"solid": 0.36, "striped": 0.16, "checked": 0.16, "dotted": 0.16, "floral": 0.16}

GRADE_EXACT, GRADE_CATEGORY_COLOR, GRADE_CATEGORY = 3, 2, 1

_S_ATTR, _S_CATALOG, _S_PHOTO, _S_TEXT = 0, 1, 2, 3  # rng streams per product


@dataclass(frozen=True)
class Product:
    index: int
    product_id: str
    category: str
    color: str
    pattern: str
    material: str
    brand: str
    popularity: float
    style: tuple[float, float, float, float]
    rgb: tuple[float, float, float]
    accent: tuple[float, float, float]
    accent2: tuple[float, float, float]
    detail: tuple[float, float, float]
    period: float
    angle: float


@dataclass(frozen=True)
class CatalogPaths:
    root: Path
    catalog: Path
    queries: Path | None
    manifest: Path
    seconds: float


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _pick(rng: np.random.Generator, items: tuple | list):
    return items[int(rng.integers(len(items)))]


def _luma(rgb: tuple[float, float, float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def make_product(seed: int, index: int) -> Product:
    """All per-product attributes, from the (seed, index) stream only."""
    rng = _rng(seed, index, _S_ATTR)
    category = _pick(rng, list(CATEGORIES))
    color = _pick(rng, list(COLORS))
    pattern = str(rng.choice(list(PATTERN_WEIGHTS), p=list(PATTERN_WEIGHTS.values())))
    material = _pick(rng, CATEGORY_MATERIALS[category])
    brand = _pick(rng, BRANDS)
    popularity = round(float(rng.beta(1.2, 4.0)), 4)
    style = tuple(float(x) for x in rng.uniform(0, 1, 4))
    base = np.asarray(RGB[color], np.float64) / 255
    jitter = base * rng.uniform(0.88, 1.1) + rng.uniform(-0.035, 0.035, 3)
    rgb = tuple(float(x) for x in np.clip(jitter, 0, 1))
    # pattern ink contrasts with the base: light on dark products, dark on light ones
    if _luma(rgb) > 0.55:
        accent_name = _pick(rng, ("navy", "black", "red", "green", "blue", "brown"))
    else:
        accent_name = _pick(rng, ("white", "white", "yellow", "pink"))
    if accent_name == color:
        accent_name = "white" if _luma(rgb) <= 0.55 else "black"
    accent = tuple(float(x) for x in np.asarray(RGB[accent_name]) / 255)
    if pattern == "checked":  # gingham crossings: a deeper mix of base and ink
        accent2 = tuple(float(x) for x in 0.35 * np.asarray(rgb) + 0.65 * np.asarray(accent) * 0.8)
    else:
        accent2 = tuple(float(x) for x in np.asarray(RGB[_pick(rng, ("yellow", "orange", "white", "black"))]) / 255)
    detail_name = _pick(rng, ("white", "black", "brown")) if category in ("sneaker", "boot") else None
    if detail_name is None or detail_name == color:
        dk = 0.6 if _luma(rgb) > 0.3 else 1.8
        detail = tuple(float(x) for x in np.clip(np.asarray(rgb) * dk + (0.08 if dk > 1 else 0), 0, 1))
    else:
        detail = tuple(float(x) for x in np.asarray(RGB[detail_name]) / 255)
    if category == "watch":  # dial
        detail = (0.95, 0.95, 0.93) if rng.random() < 0.6 else (0.1, 0.1, 0.12)
    period = float(rng.uniform(0.22, 0.36)) * (1.6 if pattern == "floral" else 1.0)
    angle = float(_pick(rng, (0.0, 0.0, math.pi / 2, math.pi / 4, -math.pi / 4)))
    return Product(index, f"p{index:06d}", category, color, pattern, material, brand, popularity,
                   style, rgb, accent, accent2, detail, period, angle)  # type: ignore[arg-type]


def _paint(p: Product, phase: float) -> draw.Paint:
    mark = (0.08, 0.08, 0.08) if _luma(p.detail) > 0.4 else (0.92, 0.92, 0.9)
    return draw.Paint(p.rgb, p.accent, p.accent2, p.detail, mark, p.pattern, p.period, p.angle, phase, p.material)


def render_catalog_image(p: Product, seed: int, size: int) -> Image.Image:
    """A clean product shot: studio backdrop, centred and upright, soft shadow, mild light."""
    rng = _rng(seed, p.index, _S_CATALOG)
    place = draw.Placement(cx=0.5 + rng.uniform(-0.03, 0.03), cy=0.5 + rng.uniform(-0.03, 0.03),
                           scale=rng.uniform(0.68, 0.86), rotation=rng.uniform(-0.06, 0.06),
                           aspect=rng.uniform(0.94, 1.06))
    lay = draw.rasterize(SHAPES[p.category](np.asarray(p.style)), place, size)
    canvas = draw.studio_background(size, rng)
    draw.cast_shadow(canvas, lay.alpha, size * rng.uniform(0.01, 0.04), size * rng.uniform(0.02, 0.05),
                     size * rng.uniform(0.02, 0.05), rng.uniform(0.15, 0.35))
    ang = rng.uniform(0, 2 * math.pi)
    draw.paint_object(canvas, lay, _paint(p, 0.0), rng, place.scale * size / 2,
                      (math.cos(ang), math.sin(ang), rng.uniform(0.05, 0.25)))
    canvas = draw.adjust_light(canvas, rng.uniform(0.95, 1.05), rng.uniform(0.95, 1.05), rng.uniform(-0.02, 0.02))
    return draw.to_image(canvas, rng, noise=0.006)


def render_user_photo(p: Product, seed: int, size: int) -> Image.Image:
    """The same product as a shopper would photograph it: any angle, busy scene, bad light."""
    rng = _rng(seed, p.index, _S_PHOTO)
    scale = rng.uniform(0.45, 0.95)
    slack = max(0.0, 0.5 - scale / 2) + 0.12 * scale  # up to ~12% of the object may leave the frame
    place = draw.Placement(cx=0.5 + rng.uniform(-slack, slack), cy=0.5 + rng.uniform(-slack, slack), scale=scale,
                           rotation=rng.uniform(-0.6, 0.6), shear=rng.uniform(-0.25, 0.25),
                           aspect=rng.uniform(0.8, 1.2))
    lay = draw.rasterize(SHAPES[p.category](np.asarray(p.style)), place, size)
    canvas = draw.scene_background(size, rng)
    draw.clutter(canvas, rng, int(rng.integers(0, 4)))
    ang = rng.uniform(0, 2 * math.pi)
    draw.cast_shadow(canvas, lay.alpha, size * 0.06 * math.cos(ang), size * 0.06 * math.sin(ang),
                     size * rng.uniform(0.02, 0.06), rng.uniform(0.15, 0.5))
    draw.paint_object(canvas, lay, _paint(p, float(rng.uniform(0, 1))), rng, place.scale * size / 2,
                      (math.cos(ang), math.sin(ang), rng.uniform(0.15, 0.45)))
    if rng.random() < 0.3:  # something partly in front of the product
        draw.clutter(canvas, rng, 1, max_radius=0.12)
    canvas = draw.adjust_light(canvas, rng.uniform(0.7, 1.2), rng.uniform(0.75, 1.15), rng.uniform(-0.08, 0.08))
    if rng.random() < 0.5:
        canvas = draw.vignette(canvas, rng.uniform(0.1, 0.4))
    quality = int(rng.integers(35, 85)) if rng.random() < 0.6 else None
    return draw.to_image(canvas, rng, noise=rng.uniform(0.005, 0.04), blur=rng.uniform(0, 0.6) * size / 64,
                         jpeg_quality=quality)


def _fill(segments: tuple[str, ...] | str, words: dict[str, str]) -> str:
    if isinstance(segments, str):
        segments = (segments,)
    parts = [seg.format(**words) for seg in segments if all(words[k] for k in re.findall(r"\{(\w)\}", seg))]
    return " ".join(parts).replace(" ,", ",")


def make_title(p: Product, seed: int) -> str:
    rng = _rng(seed, p.index, _S_TEXT)
    template = _pick(rng, TITLE_TEMPLATES)
    # "with {p} print" never reads "with solid print" or "with flower print print"
    in_print = "print" in " ".join(template)
    solid_hidden = p.pattern == "solid" and (in_print or rng.random() < 0.6)  # solids often go unnamed
    names = [w for w in PATTERNS[p.pattern] if not (in_print and "print" in w)]
    pattern = "" if solid_hidden else _pick(rng, names)
    words = {
        "b": p.brand,
        "c": _pick(rng, COLORS[p.color]),
        "p": pattern,
        "k": _pick(rng, CATEGORIES[p.category]),
        "m": _pick(rng, MATERIALS[p.material]) if rng.random() < 0.7 else "",
        "a": _pick(rng, ADJECTIVES),
        "x": _pick(rng, SUFFIXES),
    }
    title = _fill(template, words)
    return title.title() if rng.random() < 0.6 else title[0].upper() + title[1:]


# ------------------------------------------------------------------------------------------ queries


def _text_query(p: Product, rng: np.random.Generator, pool: list[Product]) -> tuple[str, dict[str, int]]:
    template, names_pattern, names_material, names_brand = QUERY_TEMPLATES[int(rng.integers(len(QUERY_TEMPLATES)))]
    words = {"c": _pick(rng, COLORS[p.color]), "k": _pick(rng, CATEGORIES[p.category]),
             "p": _pick(rng, PATTERNS[p.pattern]), "m": _pick(rng, MATERIALS[p.material]), "b": p.brand}
    text = template.format(**words).lower()
    rel = {}
    for q in pool:
        if q.category != p.category:
            continue
        exact = (q.color == p.color and (not names_pattern or q.pattern == p.pattern)
                 and (not names_material or q.material == p.material) and (not names_brand or q.brand == p.brand))
        rel[q.product_id] = GRADE_EXACT if exact else GRADE_CATEGORY_COLOR if q.color == p.color else GRADE_CATEGORY
    return text, rel


def _image_relevance(p: Product, pool: list[Product]) -> dict[str, int]:
    rel = {}
    for q in pool:
        if q.category == p.category:
            rel[q.product_id] = (GRADE_EXACT if q.product_id == p.product_id
                                 else GRADE_CATEGORY_COLOR if q.color == p.color else GRADE_CATEGORY)
    return rel


def make_queries(products: list[Product], splits: dict[str, str], seed: int, photo_rel: dict[str, str]) -> list[Query]:
    out: list[Query] = []
    for split in ("val", "test"):
        pool = [p for p in products if splits[p.product_id] == split]
        for p in pool:
            rng = _rng(seed, p.index, _S_TEXT + 10)
            img_rel = _image_relevance(p, pool)
            out.append(Query(query_id=f"img-{p.product_id}", type="image", image=photo_rel[p.product_id],
                             relevance=img_rel, split=split))
            text = _fill(_pick(rng, PHOTO_TEXT_TEMPLATES),
                         {"b": p.brand, "m": _pick(rng, MATERIALS[p.material])}).lower()
            out.append(Query(query_id=f"imgtxt-{p.product_id}", type="image+text", image=photo_rel[p.product_id],
                             text=text, relevance=img_rel, split=split))
            text, rel = _text_query(p, rng, pool)
            out.append(Query(query_id=f"txt-{p.product_id}", type="text", text=text, relevance=rel, split=split))
    return out


def assign_splits(n: int, seed: int, fractions: tuple[float, float, float]) -> list[str]:
    """Split by product: a seeded permutation cut at the fractions (train, val, test)."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng([seed, 1_000_003]).permutation(n)
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1]))
    out = [""] * n
    for rank, i in enumerate(order):
        out[i] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


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
        (out / img_rel).write_bytes(draw.encode(render_catalog_image(p, seed, image_size), image_format))
        (out / ph_rel).write_bytes(draw.encode(render_user_photo(p, seed, image_size), image_format))
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
