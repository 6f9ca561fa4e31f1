"""Garment and shoe images drawn with PIL.

Garments (dress, shirt, top; skirt, jacket, pants for Fashion200k) and shoes are drawn
procedurally from their attributes (colour, pattern, shape parts), with small random
jitter of position, scale, width, colour shade and background shade. `render` draws one
item supersampled and downscales it; the same rng gives the same pixels. Hard mode's small
details (`add_details`: belt, buttons, pockets, logo, cuffs; laces, toe cap, straps) are drawn
last, clipped to the garment, with a one-pixel outline; attributes without them draw exactly
as before, and the details draw no random numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from data.synthetic.attributes import COLOURS

LIGHT_COLOURS = {"white", "yellow", "pink", "orange"}  # patterns on these are drawn in dark ink


@dataclass
class Shape:
    """A drawing in unit coordinates (x right, y down, 0..1)."""
    body: list = field(default_factory=list)  # polygons filled with the colour + pattern
    cuts: list = field(default_factory=list)  # polygons cut back to background (necklines, openings)
    parts: list = field(default_factory=list)  # (polygon, "dark"|"shade"|"sole") solid parts drawn on top
    buttons: list = field(default_factory=list)  # (x, y) small dark dots
    details: list = field(default_factory=list)  # (polygon, colour key) hard-mode details, clipped to the body


def mirror(poly):
    return [(1.0 - x, y) for x, y in poly]


def symmetric(left) -> Shape:
    """A shape whose body is the left half outline joined to its mirror image."""
    return Shape(body=[left + mirror(left)[::-1]])


def ellipse(cx, cy, rx, ry, a0=0.0, a1=360.0, n=24):
    angles = np.radians(np.linspace(a0, a1, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


SLEEVES = {  # left sleeve from the shoulder (0.36, 0.17) to the armpit (0.39, 0.30)
    "sleeveless": None,
    "short": [(0.37, 0.16), (0.25, 0.25), (0.30, 0.33), (0.40, 0.29)],
    "three_quarter": [(0.37, 0.16), (0.21, 0.39), (0.28, 0.43), (0.40, 0.29)],
    "long": [(0.37, 0.16), (0.17, 0.53), (0.25, 0.57), (0.40, 0.29)],
}


def add_sleeves(shape: Shape, sleeves: str, dy: float = 0.0):
    poly = SLEEVES[sleeves]
    if poly:
        poly = [(x, y + dy) for x, y in poly]
        shape.body += [poly, mirror(poly)]


def draw_dress(a) -> Shape:
    hem_y, hem_w = {"mini": (0.60, 0.19), "knee": (0.74, 0.23), "maxi": (0.89, 0.27)}[a["length"]]
    shoulder = 0.10 if a["sleeves"] == "sleeveless" else 0.135
    left = [(0.5 - 0.07, 0.14), (0.5 - shoulder, 0.16), (0.38, 0.29), (0.40, 0.43), (0.5 - hem_w, hem_y)]
    s = symmetric(left)
    add_sleeves(s, a["sleeves"])
    s.cuts.append(ellipse(0.5, 0.135, 0.065, 0.045))
    s.parts.append(([(0.40, 0.41), (0.60, 0.41), (0.60, 0.445), (0.40, 0.445)], "shade"))  # waist seam
    return s


def draw_top(a, hem_y=0.66, waist=0.115, hem_w=0.13) -> Shape:
    shoulder = 0.10 if a.get("sleeves") == "sleeveless" else 0.14
    left = [(0.5 - 0.07, 0.15), (0.5 - shoulder, 0.17), (0.38, 0.30), (0.5 - waist, 0.50), (0.5 - hem_w, hem_y)]
    s = symmetric(left)
    add_sleeves(s, a["sleeves"], dy=0.01)
    if a.get("neckline", "round") == "v":
        s.cuts.append([(0.42, 0.14), (0.58, 0.14), (0.5, 0.33)])
    else:
        s.cuts.append(ellipse(0.5, 0.145, 0.07, 0.05))
    return s


def draw_shirt(a) -> Shape:
    s = draw_top(a, hem_y=0.78, waist=0.145, hem_w=0.15)
    s.buttons = [(0.5, y) for y in (0.27, 0.37, 0.47, 0.57, 0.67)]
    if a["collar"] == "collar":
        wing = [(0.405, 0.12), (0.5, 0.17), (0.445, 0.265)]
        s.parts += [(wing, "shade"), (mirror(wing), "shade")]
    return s


def draw_jacket(a) -> Shape:
    hem_y = {"cropped": 0.52, "regular": 0.70, "long": 0.88}[a["length"]]
    s = draw_top({"sleeves": "long"}, hem_y=hem_y, waist=0.15, hem_w=0.16)
    s.cuts = [[(0.43, 0.14), (0.57, 0.14), (0.5, 0.34)], [(0.494, 0.33), (0.506, 0.33), (0.506, 1.0), (0.494, 1.0)]]
    lapel = [(0.43, 0.14), (0.47, 0.15), (0.5, 0.34), (0.46, 0.24)]
    s.parts += [(lapel, "shade"), (mirror(lapel), "shade")]
    return s


def draw_skirt(a) -> Shape:
    hem_y, hem_w = {"mini": (0.52, 0.21), "knee": (0.70, 0.25), "maxi": (0.88, 0.29)}[a["length"]]
    left = [(0.38, 0.22), (0.5 - hem_w, hem_y)]
    s = symmetric(left)
    s.parts.append(([(0.375, 0.20), (0.625, 0.20), (0.625, 0.25), (0.375, 0.25)], "shade"))
    return s


def draw_pants(a) -> Shape:
    half = {"skinny": 0.045, "straight": 0.07, "wide": 0.11}[a["legs"]]
    centre = half + 0.035
    cl, cr = 0.5 - centre, 0.5 + centre
    body = [(0.37, 0.12), (0.63, 0.12), (0.645, 0.34), (cr + half, 0.90), (cr - half, 0.90), (0.5, 0.42),
            (cl + half, 0.90), (cl - half, 0.90), (0.355, 0.34)]
    s = Shape(body=[body])
    s.parts.append(([(0.368, 0.11), (0.632, 0.11), (0.633, 0.155), (0.367, 0.155)], "shade"))
    return s


def draw_shoe(a) -> Shape:
    """Side view, toe on the left."""
    seat = {"flat": 0.77, "low": 0.69, "high": 0.56}[a["heel"]]
    t = 0.035  # sole thickness
    if a["heel"] == "flat":
        sole_top = [(0.11, 0.77), (0.87, 0.77)]
    else:
        sole_top = [(0.11, 0.77), (0.45, 0.77), (0.70, seat), (0.87, seat)]
    sole = sole_top + [(x, y + t) for x, y in sole_top[::-1]]
    sole[-1] = (0.13, 0.77 + t)
    s = Shape()
    top_back = seat - 0.13
    instep = (0.42, 0.625 if a["heel"] != "high" else 0.60)
    upper = sole_top[::-1] + [(0.10, 0.755), (0.13, 0.70), (0.24, 0.655), instep]
    if a["shaft"] == "low":
        upper += [(0.60, top_back + 0.04), (0.87, top_back)]
    else:
        top = seat - 0.30 if a["shaft"] == "ankle" else 0.06
        upper += [(0.55, min(top + 0.12, seat - 0.12)), (0.58, top), (0.87, top)]
    s.body.append(upper)
    s.parts.append((sole, "sole"))
    if a["heel"] == "low":
        s.parts.append(([(0.75, seat + t), (0.87, seat + t), (0.86, 0.80), (0.77, 0.80)], "sole"))
    elif a["heel"] == "high":
        s.parts.append(([(0.78, seat + t), (0.87, seat + t), (0.845, 0.80), (0.825, 0.80)], "sole"))
    return s


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def diamond(cx, cy, r):
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]


def belt(y0, y1, x0=0.2, x1=0.8, buckle_x=0.5):
    """A belt band across the body (clipped to it) with a buckle."""
    buckle = rect(buckle_x - 0.026, y0 - 0.008, buckle_x + 0.026, y1 + 0.008)
    return [(rect(x0, y0, x1, y1), "belt"), (buckle, "buckle")]


def studs(ys, x=0.5, r=0.016):
    return [(ellipse(x, y, r, r, n=12), "accent") for y in ys]


def cuffs(sleeve: str, dy: float, width: float = 0.04):
    """A band at the end of each sleeve (the sleeve's last edge moved inwards by `width`)."""
    _, (ax, ay), (bx, by), _ = SLEEVES[sleeve]
    (sx, sy), (px, py) = SLEEVES[sleeve][0], SLEEVES[sleeve][3]
    ux, uy = (sx + px) / 2 - (ax + bx) / 2, (sy + py) / 2 - (ay + by) / 2  # towards the shoulder
    norm = math.hypot(ux, uy)
    ux, uy = ux / norm * width, uy / norm * width
    band = [(ax, ay + dy), (bx, by + dy), (bx + ux, by + uy + dy), (ax + ux, ay + uy + dy)]
    return [(band, "shade"), (mirror(band), "shade")]


# where the hard-mode details go, per kind drawn (unit coordinates, as the garments)
BELT_Y = {"dress": 0.427, "toptee": 0.51, "f200k_dress": 0.427, "f200k_top": 0.51, "f200k_jacket": 0.46,
          "f200k_skirt": 0.225, "f200k_pants": 0.1325}
BUTTON_YS = {"dress": {"two": (0.25, 0.33), "four": (0.215, 0.262, 0.309, 0.356)},
             "shirt": {"two": (0.31, 0.41), "four": (0.29, 0.37, 0.45, 0.53)},
             "f200k_skirt": {"two": (0.31, 0.40), "four": (0.29, 0.335, 0.38, 0.425)}}
BUTTON_YS["f200k_dress"] = BUTTON_YS["dress"]
CHEST_POCKET = {"shirt": rect(0.38, 0.29, 0.445, 0.355), "toptee": rect(0.39, 0.25, 0.45, 0.315),
                "f200k_top": rect(0.39, 0.25, 0.45, 0.315), "f200k_jacket": rect(0.38, 0.26, 0.44, 0.32)}


def add_details(shape: Shape, kind: str, a: dict) -> None:
    """The hard-mode details named in `a` (absent keys draw nothing, so easy images are unchanged)."""
    d = shape.details
    if a.get("belt", "none") != "none":
        half = 0.02 if a["belt"] == "thin" else 0.042
        y = BELT_Y[kind]
        d += belt(y - half, y + half, buckle_x=0.545 if kind == "f200k_jacket" else 0.5)
    if "buttons" in a and kind == "shirt":
        shape.buttons = []  # the shirt's own small dots give way to the buttons attribute
    if a.get("buttons", "none") != "none":
        d += studs(BUTTON_YS[kind][a["buttons"]])
    if a.get("pocket", "none") != "none":
        if kind == "dress":
            left = rect(0.385, 0.49, 0.45, 0.55)
            d += [(left, "shade"), (mirror(left), "shade")]
        else:
            left = CHEST_POCKET[kind]
            d += [(left, "shade")] + ([(mirror(left), "shade")] if a["pocket"] == "two" else [])
    if a.get("cuffs", "none") != "none":
        d += cuffs(a.get("sleeves", "long"), dy=0.01) if kind != "f200k_pants" else \
            [(rect(0.0, 0.845, 1.0, 0.90), "shade")]
    if a.get("logo", "none") != "none":
        if kind == "shoe":
            seat = {"flat": 0.77, "low": 0.69, "high": 0.56}[a["heel"]]
            d.append((diamond(0.75, seat - 0.065, 0.03), "accent"))
        elif a["logo"] == "chest":
            d.append((diamond(0.575, 0.265, 0.03), "accent"))
        else:
            d.append((diamond(0.5, 0.40, 0.042), "accent"))
    if kind == "shoe":
        seat = {"flat": 0.77, "low": 0.69, "high": 0.56}[a["heel"]]
        if a.get("toecap", "none") != "none":
            d.append((rect(0.0, 0.5, 0.205, 0.9), "shade"))
        if a.get("laces", "none") != "none":
            top = 0.625 if a["heel"] != "high" else 0.60
            for x in (0.27, 0.32, 0.37):
                y = 0.655 + (top - 0.655) * (x - 0.24) / 0.18 + 0.012
                d.append((rect(x, y, x + 0.03, y + 0.024), "accent"))
        strap = {"none": (), "one": (0.50,), "two": (0.50, 0.59)}[a.get("strap", "none")]
        for x in strap:
            d.append((rect(x, seat - 0.16, x + 0.04, 0.9), "accent"))


DRAWERS = {"dress": draw_dress, "shirt": draw_shirt, "toptee": draw_top, "shoe": draw_shoe,
           "f200k_dress": draw_dress, "f200k_jacket": draw_jacket, "f200k_pants": draw_pants,
           "f200k_skirt": draw_skirt, "f200k_top": draw_top}

def pattern_mask(pattern: str, n: int, period: float, phase: np.ndarray) -> np.ndarray:
    """Boolean (n, n) ink mask of a pattern on an n-pixel canvas (built from separable profiles)."""
    y = ((np.arange(n) + phase[0]) % period)[:, None]
    x = ((np.arange(n) + phase[1]) % period)[None, :]
    if pattern == "stripes":
        return np.broadcast_to(y < 0.4 * period, (n, n))
    if pattern == "dots":
        return (y - period / 2) ** 2 + (x - period / 2) ** 2 < (0.24 * period) ** 2
    if pattern == "checks":
        return (y < 0.28 * period) | (x < 0.28 * period)
    return np.zeros((n, n), bool)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in (-r, 0, r):
        for dx in (-r, 0, r):
            shifted = np.zeros_like(mask)
            shifted[max(dy, 0):mask.shape[0] + min(dy, 0), max(dx, 0):mask.shape[1] + min(dx, 0)] = \
                mask[max(-dy, 0):mask.shape[0] + min(-dy, 0), max(-dx, 0):mask.shape[1] + min(-dx, 0)]
            out |= shifted
    return out


def render(kind: str, attrs: dict[str, str], size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one item (supersampled, then downscaled to size x size)."""
    k = max(2, math.ceil(192 / size))
    n = size * k
    scale = rng.uniform(0.88, 1.0)
    widen = rng.uniform(0.93, 1.07)
    dx, dy = rng.uniform(-0.045, 0.045, 2)

    shape = DRAWERS[kind](attrs)
    add_details(shape, kind, attrs)
    everything = np.array([p for poly in shape.body + [poly for poly, _ in shape.parts] for p in poly])
    cx, cy = (everything.min(0) + everything.max(0)) / 2  # centre the item, keep its size

    def pts(poly):
        return [((0.5 + (x - cx) * scale * widen + dx) * n, (0.5 + (y - cy) * scale + dy) * n) for x, y in poly]

    mask_img = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask_img)
    for poly in shape.body:
        draw.polygon(pts(poly), fill=255)
    for poly in shape.cuts:
        draw.polygon(pts(poly), fill=0)
    mask = np.asarray(mask_img) > 127

    grey = rng.integers(226, 256)
    background = np.clip(grey + rng.integers(-4, 5, 3), 0, 255)
    base = np.clip(np.array(COLOURS[attrs["colour"]]) + rng.integers(-14, 15, 3), 0, 255)
    ink = np.array((40, 40, 45)) if attrs["colour"] in LIGHT_COLOURS else np.array((240, 240, 236))
    period = n * rng.uniform(0.105, 0.125)
    ink_mask = pattern_mask(attrs["pattern"], n, period, rng.uniform(0, period, 2))

    outline = np.array((55, 55, 60))
    palette = np.stack([background, base, ink, outline]).astype(np.uint8)
    index = mask.astype(np.uint8) + (mask & ink_mask) + np.uint8(3) * (dilate(mask, k) & ~mask)
    pil = Image.frombytes("P", (n, n), index.tobytes())
    pil.putpalette(palette.tobytes())
    pil = pil.convert("RGB")
    draw = ImageDraw.Draw(pil)
    dark = attrs["colour"] in ("black", "brown", "purple", "blue")
    tone = base * 0.45 + 140 if dark else base * 0.65  # collars, lapels, seams: a contrasting tone
    part_colours = {"shade": tuple(int(v) for v in tone), "dark": tuple(outline),
                    "sole": (200, 188, 165) if dark else (70, 62, 58)}
    for poly, colour in shape.parts:
        draw.polygon(pts(poly), fill=part_colours[colour], outline=tuple(outline), width=k)
    for x, y in shape.buttons:
        (cx, cy), r = pts([(x, y)])[0], 0.012 * n
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(outline))
    if shape.details:
        # belts dark on light garments and light on dark ones; buttons, logos, laces and straps in a metal
        # tone (a blue one on yellow and orange), unlike the black or white pattern ink
        accent = (40, 140, 170) if attrs["colour"] in ("yellow", "orange") else (205, 170, 60)
        detail_colours = {"shade": part_colours["shade"], "belt": (225, 212, 178) if dark else (62, 42, 30),
                          "buckle": (196, 164, 64), "accent": accent}
        pixels = np.array(pil)
        for poly, colour in shape.details:  # each clipped to the body, with a one-pixel outline inside it
            canvas = Image.new("L", (n, n), 0)
            ImageDraw.Draw(canvas).polygon(pts(poly), fill=255)
            inside = (np.asarray(canvas) > 127) & mask
            pixels[dilate(inside, k) & ~inside & mask] = outline
            pixels[inside] = detail_colours[colour]
        pil = Image.fromarray(pixels)
    return pil.reduce(k)
