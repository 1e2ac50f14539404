"""Procedural rendering: silhouettes made of primitives, rasterized and painted with patterns and
materials, with a cast shadow. Backgrounds and clutter are in ``scene.py``, lighting and camera
degradation in ``camera.py``.

Only Pillow and numpy, and every random choice comes from the ``numpy.random.Generator`` the caller
passes, so a (seed, product) pair always gives the same pixels. Masks are drawn at 2x and
box-reduced (anti-aliased edges); patterns are evaluated in the object's own coordinates, so
stripes and dots rotate and shear with the object like printed fabric does.

Unit coordinates: a silhouette lives in [-1, 1]^2, x to the right, y down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Role = Literal["body", "hole", "detail", "mark"]
PATTERNS = ("solid", "striped", "checked", "dotted", "floral")
MATERIAL_FINISHES = ("cotton", "denim", "linen", "leather", "suede", "wool", "canvas", "nylon", "ceramic", "metal")


@dataclass(frozen=True)
class Prim:
    """A filled polygon (or a polyline when ``width`` > 0) in unit coordinates.

    body: the painted (patterned) surface; hole: cut out of every layer; detail: a plain second
    colour (soles, bands, dials); mark: thin dark or light marks (laces, watch hands).
    """

    role: Role
    points: np.ndarray
    width: float = 0.0


# ------------------------------------------------------------------------------------- geometry


def ellipse(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi,
            n: int = 28) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def band(cx: float, cy: float, r_out: float, r_in: float, a0: float, a1: float, n: int = 20) -> np.ndarray:
    """An arc-shaped strip (handles, loops, crescents): outer arc forward, inner arc back."""
    outer = ellipse(cx, cy, r_out, r_out, a0, a1, n)
    inner = ellipse(cx, cy, r_in, r_in, a0, a1, n)[::-1]
    outer[-1] = [cx + r_out * math.cos(a1), cy + r_out * math.sin(a1)]
    inner[0] = [cx + r_in * math.cos(a1), cy + r_in * math.sin(a1)]
    return np.concatenate([outer, inner])


def rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float, n: int = 6) -> np.ndarray:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = [(x1 - r, y0 + r, -math.pi / 2), (x1 - r, y1 - r, 0.0), (x0 + r, y1 - r, math.pi / 2),
               (x0 + r, y0 + r, math.pi)]
    return np.concatenate([ellipse(cx, cy, r, r, a, a + math.pi / 2, n) for cx, cy, a in corners])


def poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def mirror_x(points: np.ndarray) -> np.ndarray:
    """A half-outline (left side, top to bottom) closed with its mirror image."""
    right = points[::-1].copy()
    right[:, 0] *= -1
    return np.concatenate([points, right])


@dataclass(frozen=True)
class Placement:
    """Where and how the silhouette lands on the canvas: centre (fraction of the canvas), radius
    (fraction of half the canvas), rotation (radians), shear and aspect (a cheap perspective)."""

    cx: float = 0.5
    cy: float = 0.5
    scale: float = 0.8
    rotation: float = 0.0
    shear: float = 0.0
    aspect: float = 1.0

    def matrix(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit -> pixel affine map (2x2, offset)."""
        half = self.scale * size / 2
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        rot = np.array([[c, -s], [s, c]])
        warp = np.array([[self.aspect, self.shear], [0.0, 1.0 / self.aspect]])
        return rot @ warp * half, np.array([self.cx * size, self.cy * size])


@dataclass
class Layers:
    """Coverage masks (float32, [S, S], 0..1) and the object coordinates of every pixel."""

    body: np.ndarray
    detail: np.ndarray
    mark: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def alpha(self) -> np.ndarray:
        return np.maximum(np.maximum(self.body, self.detail), self.mark)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRIDS:
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        _GRIDS[size] = (xs, ys)
    return _GRIDS[size]


def rasterize(prims: list[Prim], place: Placement, size: int) -> Layers:
    """Draw the primitives at 2x, box-reduce to ``size``; compute per-pixel unit coordinates."""
    m, off = place.matrix(2 * size)
    canvases = {role: Image.new("L", (2 * size, 2 * size), 0) for role in ("body", "detail", "mark")}
    draws = {role: ImageDraw.Draw(img) for role, img in canvases.items()}
    holes = []
    for p in prims:
        pts = p.points @ m.T + off
        if p.role == "hole":
            holes.append(pts)
            continue
        xy = [tuple(q) for q in pts]
        if p.width > 0:
            w = max(1, int(round(p.width * np.linalg.norm(m[:, 0]))))
            draws[p.role].line(xy, fill=255, width=w, joint="curve")
        else:
            draws[p.role].polygon(xy, fill=255)
    for pts in holes:
        xy = [tuple(q) for q in pts]
        for d in draws.values():
            d.polygon(xy, fill=0)
    masks = {role: np.asarray(img.reduce(2), dtype=np.float32) / 255.0 for role, img in canvases.items()}
    m1, off1 = place.matrix(size)
    det = m1[0, 0] * m1[1, 1] - m1[0, 1] * m1[1, 0]  # 2x2 inverse by hand: np.linalg.inv costs ~1 ms
    inv = np.array([[m1[1, 1], -m1[0, 1]], [-m1[1, 0], m1[0, 0]]]) / det
    xs, ys = pixel_grid(size)
    dx, dy = xs - off1[0], ys - off1[1]
    u = (inv[0, 0] * dx + inv[0, 1] * dy).astype(np.float32)
    v = (inv[1, 0] * dx + inv[1, 1] * dy).astype(np.float32)
    return Layers(masks["body"], masks["detail"], masks["mark"], u, v)


# ------------------------------------------------------------------------------------- painting


@dataclass(frozen=True)
class Paint:
    """Colours (RGB floats 0..1) and the parameters of the pattern and the material finish."""

    base: tuple[float, float, float]
    accent: tuple[float, float, float]
    accent2: tuple[float, float, float]
    detail: tuple[float, float, float]
    mark: tuple[float, float, float]
    pattern: str = "solid"
    period: float = 0.3  # pattern period in unit coordinates
    angle: float = 0.0
    phase: float = 0.0
    material: str = "cotton"


def _soft_wave(t: np.ndarray, period_px: float, duty: float = 0.5) -> np.ndarray:
    """A square wave with edges softened by the pixel footprint (no moire at small scales)."""
    gain = np.clip(period_px / 3.0, 0.35, 6.0)
    s = np.sin(2 * np.pi * t) + math.cos(math.pi * duty)
    return np.clip(0.5 + gain * s, 0.0, 1.0)


def pattern_masks(paint: Paint, u: np.ndarray, v: np.ndarray, px_per_unit: float) -> tuple[np.ndarray, np.ndarray]:
    """(accent coverage, second-accent coverage) of the pattern at each pixel."""
    zero = np.zeros_like(u)
    if paint.pattern == "solid":
        return zero, zero
    c, s = math.cos(paint.angle), math.sin(paint.angle)
    a = (c * u + s * v) / paint.period + paint.phase
    b = (-s * u + c * v) / paint.period + paint.phase
    ppx = paint.period * px_per_unit
    if paint.pattern == "striped":
        return _soft_wave(a, ppx, 0.42), zero
    if paint.pattern == "checked":
        sa, sb = _soft_wave(a, ppx, 0.5), _soft_wave(b, ppx, 0.5)
        return 0.5 * (sa + sb), sa * sb  # gingham: half tone where one band, full where both cross
    fa, fb = np.floor(a), np.floor(b)
    if paint.pattern == "dotted":
        off = np.where(np.mod(fb, 2) == 1, 0.5, 0.0)  # staggered rows
        da, db = np.mod(a + off, 1.0) - 0.5, np.mod(b, 1.0) - 0.5
        r = np.sqrt(da * da + db * db)
        return np.clip((0.24 - r) * ppx + 0.5, 0, 1), zero
    if paint.pattern == "floral":
        # per-cell jittered centres from a hash of the cell index (deterministic, no rng state)
        h = np.sin(fa * 12.9898 + fb * 78.233) * 43758.5453
        ja = (h - np.floor(h)) * 0.3 - 0.15
        h2 = np.sin(fa * 39.3468 + fb * 11.135) * 24634.6345
        jb = (h2 - np.floor(h2)) * 0.3 - 0.15
        da, db = np.mod(a, 1.0) - 0.5 - ja, np.mod(b, 1.0) - 0.5 - jb
        r = np.sqrt(da * da + db * db)
        th = np.arctan2(db, da) + (h - np.floor(h)) * 6.0
        petal = 0.18 + 0.16 * np.abs(np.cos(2.5 * th))
        flower = np.clip((petal - r) * ppx + 0.5, 0, 1)
        centre = np.clip((0.09 - r) * ppx + 0.5, 0, 1)
        return flower, centre
    raise ValueError(f"unknown pattern {paint.pattern!r}; known: {PATTERNS}")


def lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a tiny random grid bilinearly upscaled."""
    g = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    img = Image.fromarray(g, "L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def material_finish(paint: Paint, lay: Layers, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(multiplicative texture, additive specular) for the material."""
    u, v = lay.u, lay.v
    fine = rng.standard_normal(u.shape).astype(np.float32)
    one = np.ones_like(u)

    def spec(strength: float, sigma: float) -> np.ndarray:
        cu, cv = rng.uniform(-0.5, 0.3), rng.uniform(-0.6, 0.0)
        return strength * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma * sigma))

    mat = paint.material
    if mat == "cotton":
        return one + 0.03 * fine, 0 * one
    if mat == "linen":
        rows = np.repeat(rng.standard_normal((size, 1)).astype(np.float32), size, axis=1)
        return one + 0.05 * rows + 0.03 * fine, 0 * one
    if mat == "denim":
        return one + 0.08 * np.sin(2 * np.pi * (u + v) * 9.0) + 0.04 * fine, 0 * one
    if mat == "wool":
        return one + 0.07 * lowfreq(rng, size, 10) + 0.07 * fine, 0 * one
    if mat == "leather":
        return one + 0.06 * lowfreq(rng, size, 7) + 0.015 * fine, spec(0.22, 0.22)
    if mat == "suede":
        return one + 0.08 * lowfreq(rng, size, 5) + 0.02 * fine, 0 * one
    if mat == "canvas":
        return one + 0.05 * np.sin(2 * np.pi * u * 10) * np.sin(2 * np.pi * v * 10) + 0.03 * fine, 0 * one
    if mat == "nylon":
        sheen = 0.14 * np.exp(-((u - v * 0.5 - rng.uniform(-0.4, 0.4)) ** 2) / 0.05)
        return one + 0.02 * fine, sheen
    if mat == "ceramic":
        return one + 0.01 * fine, spec(0.4, 0.15)
    if mat == "metal":
        bands = 0.18 * np.sin(2 * np.pi * (u * 1.3 + rng.uniform(0, 1)))
        return one + bands + 0.01 * fine, spec(0.35, 0.12)
    raise ValueError(f"unknown material finish {mat!r}; known: {MATERIAL_FINISHES}")


def paint_object(canvas: np.ndarray, lay: Layers, paint: Paint, rng: np.random.Generator,
                 px_per_unit: float, light: tuple[float, float, float]) -> None:
    """Composite the painted object onto ``canvas`` ([S, S, 3] float 0..1) in place.

    ``light`` = (direction x, direction y, strength) of a directional shading gradient.
    """
    size = canvas.shape[0]
    acc, acc2 = pattern_masks(paint, lay.u, lay.v, px_per_unit)
    base = np.asarray(paint.base, np.float32)
    col = base + acc[..., None] * (np.asarray(paint.accent, np.float32) - base)
    col = col + acc2[..., None] * (np.asarray(paint.accent2, np.float32) - col)
    tex, spec = material_finish(paint, lay, rng, size)
    lx, ly, k = light
    shade = np.clip(1.0 - k * (lx * lay.u + ly * lay.v) / 1.4, 0.55, 1.35) * tex
    col = col * shade[..., None] + spec[..., None]
    det = np.asarray(paint.detail, np.float32) * np.clip(1.0 - 0.5 * k * (lx * lay.u + ly * lay.v), 0.6, 1.3)[..., None]
    col = col + lay.detail[..., None] * (det - col)
    col = col + lay.mark[..., None] * (np.asarray(paint.mark, np.float32) - col)
    a = lay.alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * np.clip(col, 0.0, 1.0)


def cast_shadow(canvas: np.ndarray, alpha: np.ndarray, dx: float, dy: float, blur: float, strength: float) -> None:
    """Darken the canvas under a blurred, shifted copy of the object's coverage."""
    img = Image.fromarray((alpha * 255).astype(np.uint8), "L")
    img = img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), Image.Resampling.BILINEAR)
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    sh = np.asarray(img, dtype=np.float32) / 255.0
    canvas *= (1.0 - strength * sh)[..., None]
