"""Product silhouettes for the generated catalog: ten recognisable categories, each a small
parametric drawing, so two products of one category differ in cut (sleeve length, flare, heel
height, brim width...) and the model has to learn the category, not one template.

Every function takes ``style``: 4 floats in [0, 1] drawn per product, and returns primitives in
unit coordinates (see ``catalog_draw``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lenscope.client.synth.draw import Prim, band, ellipse, mirror_x, poly, rounded_rect

Style = np.ndarray
Shape = Callable[[Style], list[Prim]]


def t_shirt(s: Style) -> list[Prim]:
    nw = 0.16 + 0.08 * s[0]  # neck half-width
    bw = 0.42 + 0.12 * s[1]  # body half-width
    sl = 0.22 + 0.22 * s[2]  # sleeve length
    sh = -0.72
    half = poly(-nw, -0.84, -bw - 0.06, sh, -bw - 0.06 - sl, sh + 0.85 * sl,
                -bw - 0.06 - sl + 0.2, sh + 0.85 * sl + 0.16, -bw, -0.38 + 0.1 * s[3], -bw, 0.88)
    return [
        Prim("body", mirror_x(half)),
        Prim("hole", ellipse(0, -0.84, nw, 0.12 + 0.06 * s[0])),
        Prim("detail", np.concatenate([ellipse(0, -0.84, nw + 0.05, 0.19 + 0.06 * s[0], 0, math.pi, 12),
                                       ellipse(0, -0.84, nw, 0.12 + 0.06 * s[0], math.pi, 0, 12)])),
    ]


def dress(s: Style) -> list[Prim]:
    flare = 0.42 + 0.3 * s[0]
    waist_y = -0.2 + 0.15 * s[1]
    hem = 0.92
    neck = -0.6 + 0.12 * s[2]
    bodice = poly(0, neck, -0.16, -0.95, -0.26, -0.95, -0.33, -0.48, -0.22, waist_y)
    skirt = ellipse(0, hem - 0.1, flare, 0.1, math.pi / 2, math.pi, 10)[::-1]  # (-flare, .) -> (0, hem)
    prims = [Prim("body", mirror_x(np.concatenate([bodice, skirt])))]
    if s[3] > 0.45:  # belted
        prims.append(Prim("detail", poly(-0.24, waist_y - 0.05, 0.24, waist_y - 0.05, 0.25, waist_y + 0.04,
                                         -0.25, waist_y + 0.04)))
    return prims


def trousers(s: Style) -> list[Prim]:
    flare = 0.08 * s[0]
    w = 0.36 + 0.08 * s[1]
    crotch = -0.25 + 0.15 * s[2]
    gap = 0.05 + 0.04 * s[3]
    body = poly(-w, -0.92, w, -0.92, w + 0.06 + flare, 0.95, gap + 0.02, 0.95, 0, crotch,
                -gap - 0.02, 0.95, -w - 0.06 - flare, 0.95)
    return [
        Prim("body", body),
        Prim("detail", poly(-w - 0.005, -0.95, w + 0.005, -0.95, w + 0.01, -0.8, -w - 0.01, -0.8)),
        Prim("mark", poly(0.0, -0.8, 0.0, crotch - 0.05), width=0.035),
    ]


def sneaker(s: Style) -> list[Prim]:
    top = -0.3 - 0.15 * s[0]  # collar height
    toe = 0.92
    sole_h = 0.14 + 0.1 * s[1]
    upper = poly(-0.92, 0.3, -0.95, top + 0.05, -0.7, top, -0.42, top + 0.16, 0.05, top + 0.12,
                 0.55, 0.02 + 0.05 * s[2], toe - 0.05, 0.14, toe, 0.3)
    sole = rounded_rect(-0.97, 0.24, toe + 0.05, 0.24 + sole_h, 0.08)
    laces = [Prim("mark", poly(-0.3 + 0.17 * i, top + 0.2 + 0.04 * i, -0.18 + 0.17 * i, top + 0.3 + 0.05 * i),
                  width=0.05) for i in range(3)]
    return [Prim("body", upper), Prim("detail", sole), *laces]


def boot(s: Style) -> list[Prim]:
    top = -0.95 + 0.3 * s[0]  # shaft height
    shaft_w = 0.5 + 0.12 * s[1]
    heel = 0.12 + 0.12 * s[2]
    x0 = -0.65
    body = poly(x0, top, x0 + shaft_w, top, x0 + shaft_w + 0.04, 0.12, 0.45, 0.28, 0.78, 0.42, 0.82, 0.58,
                x0 - 0.02, 0.58)
    sole = poly(x0 - 0.03, 0.56, 0.84, 0.56, 0.84, 0.66, x0 + 0.35, 0.66, x0 + 0.35, 0.66 + heel,
                x0 - 0.03, 0.66 + heel)
    prims = [Prim("body", body), Prim("detail", sole)]
    if s[3] > 0.5:  # chelsea-style elastic side panel
        prims.append(Prim("detail", poly(x0 + 0.15, top + 0.05, x0 + shaft_w - 0.12, top + 0.05,
                                         x0 + shaft_w * 0.5, 0.0)))
    return prims


def handbag(s: Style) -> list[Prim]:
    w_top = 0.5 + 0.15 * s[0]
    w_bot = w_top + 0.1 + 0.15 * s[1]
    top, bottom = -0.12, 0.78
    handle_r = 0.3 + 0.15 * s[2]
    prims = [
        Prim("body", poly(-w_top, top, w_top, top, w_bot, bottom - 0.1, w_bot - 0.1, bottom,
                          -w_bot + 0.1, bottom, -w_bot, bottom - 0.1)),
        Prim("body", band(0, top + 0.01, handle_r, handle_r - 0.09, math.pi, 2 * math.pi, 18)),
    ]
    if s[3] > 0.4:  # flap with clasp
        prims.append(Prim("detail", poly(-w_top - 0.01, top, w_top + 0.01, top, w_top + 0.04, top + 0.32, 0,
                                         top + 0.45, -w_top - 0.04, top + 0.32)))
        prims.append(Prim("mark", ellipse(0, top + 0.4, 0.05, 0.05, n=10)))
    return prims


def backpack(s: Style) -> list[Prim]:
    w = 0.5 + 0.1 * s[0]
    top = -0.72 + 0.1 * s[1]
    prims = [
        Prim("body", rounded_rect(-w, top, w, 0.88, 0.28 + 0.1 * s[2])),
        Prim("body", band(0, top + 0.02, 0.17, 0.09, math.pi, 2 * math.pi, 12)),
        Prim("body", rounded_rect(-w - 0.1, -0.35, -w + 0.02, 0.55, 0.04)),
        Prim("body", rounded_rect(w - 0.02, -0.35, w + 0.1, 0.55, 0.04)),
        Prim("detail", rounded_rect(-w + 0.13, 0.18 + 0.1 * s[3], w - 0.13, 0.78, 0.12)),
        Prim("mark", ellipse(0, top + 0.35, w - 0.12, 0.22, math.pi * 1.05, math.pi * 1.95, 12), width=0.035),
    ]
    return prims


def hat(s: Style) -> list[Prim]:
    brim = 0.72 + 0.25 * s[0]
    crown_h = 0.55 + 0.35 * s[1]
    cw = 0.42 + 0.1 * s[2]
    base_y = 0.3
    crown = poly(-cw, base_y, -cw + 0.06, base_y - crown_h, -0.18, base_y - crown_h - 0.1, 0,
                 base_y - crown_h + 0.04 * (s[3] > 0.5), 0.18, base_y - crown_h - 0.1, cw - 0.06,
                 base_y - crown_h, cw, base_y)
    return [
        Prim("body", ellipse(0, base_y + 0.02, brim, 0.13 + 0.08 * s[3], n=32)),
        Prim("body", crown),
        Prim("detail", poly(-cw + 0.01, base_y - 0.2, cw - 0.01, base_y - 0.2, cw, base_y - 0.04,
                            -cw, base_y - 0.04)),
    ]


def watch(s: Style) -> list[Prim]:
    r = 0.36 + 0.1 * s[0]
    sw = 0.2 + 0.08 * s[1]
    square = s[2] > 0.7
    case = rounded_rect(-r, -r, r, r, 0.12) if square else ellipse(0, 0, r, r, n=32)
    d = r - 0.07
    dial = rounded_rect(-d, -d, d, d, 0.08) if square else ellipse(0, 0, d, d, n=32)
    ang = s[3] * 2 * math.pi
    return [
        Prim("body", rounded_rect(-sw, -1.0, sw, 1.0, 0.06)),
        Prim("body", case),
        Prim("body", rounded_rect(r - 0.02, -0.06, r + 0.08, 0.06, 0.02)),
        Prim("detail", dial),
        Prim("mark", poly(0, 0, 0.55 * (r - 0.07) * math.sin(ang), -0.55 * (r - 0.07) * math.cos(ang)), width=0.05),
        Prim("mark", poly(0, 0, 0.8 * (r - 0.07) * math.sin(ang * 7), -0.8 * (r - 0.07) * math.cos(ang * 7)),
             width=0.03),
    ]


def mug(s: Style) -> list[Prim]:
    w = 0.42 + 0.12 * s[0]
    top = -0.62 + 0.15 * s[1]
    x0 = -w - 0.1
    handle_r = 0.26 + 0.08 * s[2]
    cy = (top + 0.75) / 2
    return [
        Prim("body", rounded_rect(x0, top, x0 + 2 * w, 0.75, 0.1 + 0.1 * s[3])),
        Prim("body", band(x0 + 2 * w - 0.02, cy, handle_r, handle_r - 0.1, -math.pi / 2, math.pi / 2, 14)),
        Prim("detail", ellipse(x0 + w, top + 0.03, w - 0.03, 0.07, n=20)),
    ]


SHAPES: dict[str, Shape] = {
    "t-shirt": t_shirt,
    "dress": dress,
    "trousers": trousers,
    "sneaker": sneaker,
    "boot": boot,
    "handbag": handbag,
    "backpack": backpack,
    "hat": hat,
    "watch": watch,
    "mug": mug,
}
