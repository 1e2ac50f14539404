"""The generated catalog's products: the label vocabulary with its synonyms, each product's
attributes drawn from its own (seed, index) random streams, and its title.

Separate from ``catalog.py`` (rendering and writing the files) and ``queries.py`` (what is asked
of the catalog): both build on these products and their vocabulary.

Determinism: every product draws from ``numpy.random.default_rng([seed, index, stream])``, so a
product's attributes and text depend only on (seed, index), not on the catalog size or order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

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

# Rendering palette: canonical colour -> base RGB (0..255); products jitter around it.
RGB = {
    "red": (200, 30, 35), "orange": (240, 125, 25), "yellow": (242, 208, 45), "green": (40, 145, 60),
    "teal": (0, 128, 128), "blue": (40, 95, 215), "navy": (25, 35, 95), "purple": (115, 45, 150),
    "pink": (240, 135, 180), "brown": (115, 70, 35), "black": (28, 28, 30), "white": (242, 242, 236),
}
PATTERN_WEIGHTS = {"solid": 0.36, "striped": 0.16, "checked": 0.16, "dotted": 0.16, "floral": 0.16}

STREAM_ATTR, STREAM_CATALOG, STREAM_PHOTO, STREAM_TEXT = 0, 1, 2, 3  # rng streams per product


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


def product_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def pick(rng: np.random.Generator, items: tuple | list):
    return items[int(rng.integers(len(items)))]


def luma(rgb: tuple[float, float, float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def make_product(seed: int, index: int) -> Product:
    """All per-product attributes, from the (seed, index) stream only."""
    rng = product_rng(seed, index, STREAM_ATTR)
    category = pick(rng, list(CATEGORIES))
    color = pick(rng, list(COLORS))
    pattern = str(rng.choice(list(PATTERN_WEIGHTS), p=list(PATTERN_WEIGHTS.values())))
    material = pick(rng, CATEGORY_MATERIALS[category])
    brand = pick(rng, BRANDS)
    popularity = round(float(rng.beta(1.2, 4.0)), 4)
    style = tuple(float(x) for x in rng.uniform(0, 1, 4))
    base = np.asarray(RGB[color], np.float64) / 255
    jitter = base * rng.uniform(0.88, 1.1) + rng.uniform(-0.035, 0.035, 3)
    rgb = tuple(float(x) for x in np.clip(jitter, 0, 1))
    # pattern ink contrasts with the base: light on dark products, dark on light ones
    if luma(rgb) > 0.55:
        accent_name = pick(rng, ("navy", "black", "red", "green", "blue", "brown"))
    else:
        accent_name = pick(rng, ("white", "white", "yellow", "pink"))
    if accent_name == color:
        accent_name = "white" if luma(rgb) <= 0.55 else "black"
    accent = tuple(float(x) for x in np.asarray(RGB[accent_name]) / 255)
    if pattern == "checked":  # gingham crossings: a deeper mix of base and ink
        accent2 = tuple(float(x) for x in 0.35 * np.asarray(rgb) + 0.65 * np.asarray(accent) * 0.8)
    else:
        accent2 = tuple(float(x) for x in np.asarray(RGB[pick(rng, ("yellow", "orange", "white", "black"))]) / 255)
    detail_name = pick(rng, ("white", "black", "brown")) if category in ("sneaker", "boot") else None
    if detail_name is None or detail_name == color:
        dk = 0.6 if luma(rgb) > 0.3 else 1.8
        detail = tuple(float(x) for x in np.clip(np.asarray(rgb) * dk + (0.08 if dk > 1 else 0), 0, 1))
    else:
        detail = tuple(float(x) for x in np.asarray(RGB[detail_name]) / 255)
    if category == "watch":  # dial
        detail = (0.95, 0.95, 0.93) if rng.random() < 0.6 else (0.1, 0.1, 0.12)
    period = float(rng.uniform(0.22, 0.36)) * (1.6 if pattern == "floral" else 1.0)
    angle = float(pick(rng, (0.0, 0.0, math.pi / 2, math.pi / 4, -math.pi / 4)))
    return Product(index, f"p{index:06d}", category, color, pattern, material, brand, popularity,
                   style, rgb, accent, accent2, detail, period, angle)  # type: ignore[arg-type]


def fill_template(segments: tuple[str, ...] | str, words: dict[str, str]) -> str:
    if isinstance(segments, str):
        segments = (segments,)
    parts = [seg.format(**words) for seg in segments if all(words[k] for k in re.findall(r"\{(\w)\}", seg))]
    return " ".join(parts).replace(" ,", ",")


def make_title(p: Product, seed: int) -> str:
    rng = product_rng(seed, p.index, STREAM_TEXT)
    template = pick(rng, TITLE_TEMPLATES)
    # "with {p} print" never reads "with solid print" or "with flower print print"
    in_print = "print" in " ".join(template)
    solid_hidden = p.pattern == "solid" and (in_print or rng.random() < 0.6)  # solids often go unnamed
    names = [w for w in PATTERNS[p.pattern] if not (in_print and "print" in w)]
    pattern = "" if solid_hidden else pick(rng, names)
    words = {
        "b": p.brand,
        "c": pick(rng, COLORS[p.color]),
        "p": pattern,
        "k": pick(rng, CATEGORIES[p.category]),
        "m": pick(rng, MATERIALS[p.material]) if rng.random() < 0.7 else "",
        "a": pick(rng, ADJECTIVES),
        "x": pick(rng, SUFFIXES),
    }
    title = fill_template(template, words)
    return title.title() if rng.random() < 0.6 else title[0].upper() + title[1:]
