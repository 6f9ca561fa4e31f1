"""Garment and shoe images drawn with PIL.

Garments (dress, shirt, top; skirt, jacket, pants for Fashion200k) and shoes are drawn
procedurally from their attributes (colour, pattern, shape parts), with small random
jitter of position, scale, width, colour shade and background shade. `render` draws one
item supersampled and downscales it; the same rng gives the same pixels.
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
    upper = sole_top[::-1] + [(0.10, 0.755), (0.13, 0.70), (0.24, 0.655), (0.42, 0.625 if a["heel"] != "high" else 0.60)]
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
    return pil.reduce(k)
