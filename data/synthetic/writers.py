"""Synthetic datasets in the exact on-disk layout of FashionIQ, Shoes and Fashion200k.

    python -m data.synthetic --out DIR --dataset fashioniq|shoes|fashion200k [--size 64] [--seed N]

writes DIR/fashionIQ/, DIR/shoes/ or DIR/fashion200K/ so that `--data_root DIR` reads it.
Images are drawn procedurally: garments (dress, shirt, top; skirt, jacket, pants for
Fashion200k) or shoes, each with a colour (10 named colours), a pattern (solid, stripes,
polka dots, plaid) and one or two shape parts (sleeve length, dress length, neckline,
collar; heel height and boot shaft for shoes), with small random jitter of position,
scale, width, colour shade and background shade.

A FashionIQ or Shoes target differs from its reference in one or two attributes; the
captions name the new values, phrased like the real ones ("is red with stripes",
"has 3/4 sleeves", "Is floor length."). Within each split's image list every image has a
different attribute combination, so reference + caption determine the target: R@1 can
reach 1.0 for a perfect model. Fashion200k descriptions are "<colour> <pattern> <shape>
<noun>" (e.g. "red striped mini dress"), so many descriptions differ by exactly one word;
each test description is shared by one to several test images (all correct targets).

Default sizes and chance levels (the reference is removed from its own ranking, so a
query with one correct target among G gallery images has chance R@K = K / (G - 1)):
- fashioniq: per category 300 train / 200 val / 150 test images and 250 / 150 / 100
  annotations (2 queries each): 1500 train triplets over dress, shirt, toptee.
  Val gallery G = 200 per category: chance R@10 = 5.0 %, R@50 = 25.1 %.
- shoes: 750 train / 250 eval images; 1500 train + 250 val triplets (both images in
  the split) + 262 triplets that straddle the two lists (dropped by the split rule).
  G = 250: chance R@1 = 0.4 %, R@10 = 4.0 %, R@50 = 20.1 %.
- fashion200k: per category 240 train / 60 test images (5 categories), 300 test
  queries; G = 300 with 2.14 correct targets per query on average: chance R@1 = 0.7 %,
  R@10 = 7.0 %, R@50 = 31.3 %.
Each run prints these figures and writes them to <folder>/SYNTHETIC.txt (the marker that
lets a later run replace the folder; a folder without it is never touched).
The default FashionIQ set takes a few seconds to write. The same seed gives byte-identical files.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FOLDERS = {"fashioniq": "fashionIQ", "shoes": "shoes", "fashion200k": "fashion200K"}
MARKER = "SYNTHETIC.txt"  # marks a folder this module may overwrite
JPEG_QUALITY = 90

# ---------------------------------------------------------------- attributes
COLOURS = {
    "black": (35, 35, 38), "white": (246, 246, 244), "red": (205, 30, 40), "blue": (35, 75, 205),
    "green": (35, 150, 60), "yellow": (245, 210, 35), "pink": (245, 140, 185), "purple": (125, 45, 155),
    "orange": (245, 130, 25), "brown": (120, 72, 38),
}
LIGHT_COLOURS = {"white", "yellow", "pink", "orange"}  # patterns on these are drawn in dark ink
PATTERNS = ("solid", "stripes", "dots", "checks")
COLOUR_NAMES = tuple(COLOURS)

# attribute -> values, per kind of thing drawn (FashionIQ categories and shoes)
KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "dress": {"colour": COLOUR_NAMES, "pattern": PATTERNS,
              "sleeves": ("sleeveless", "short", "long"), "length": ("mini", "knee", "maxi")},
    "shirt": {"colour": COLOUR_NAMES, "pattern": PATTERNS,
              "sleeves": ("short", "three_quarter", "long"), "collar": ("collar", "no_collar")},
    "toptee": {"colour": COLOUR_NAMES, "pattern": PATTERNS,
               "sleeves": ("sleeveless", "short", "long"), "neckline": ("round", "v")},
    "shoe": {"colour": COLOUR_NAMES, "pattern": ("solid", "stripes", "dots"),
             "heel": ("flat", "low", "high"), "shaft": ("low", "ankle", "knee")},
}
# how often each attribute is the one that changes (colour most often, as in the real captions)
CHANGE_WEIGHTS = {"colour": 0.34, "pattern": 0.24, "sleeves": 0.2, "length": 0.2, "collar": 0.2,
                  "neckline": 0.2, "heel": 0.2, "shaft": 0.2}
NOUNS = {"dress": "dress", "shirt": "shirt", "toptee": "top"}

# Fashion200k: description = colour, pattern word, shape word, noun (one word each)
F200K_PATTERN_WORDS = {"solid": "solid", "stripes": "striped", "dots": "dotted", "checks": "plaid"}
F200K_CATEGORIES = {  # label-file category -> (noun, path folder, sub-folders, shape attribute, {word: value})
    "dress": ("dress", "dresses", ("casual_and_day_dresses", "cocktail_dresses"), "length",
              {"mini": "mini", "midi": "knee", "maxi": "maxi"}),
    "jacket": ("jacket", "jackets", ("casual_jackets", "blazers"), "length",
               {"cropped": "cropped", "classic": "regular", "longline": "long"}),
    "pants": ("pants", "pants", ("casual_pants", "trousers"), "legs",
              {"skinny": "skinny", "straight": "straight", "wide-leg": "wide"}),
    "skirt": ("skirt", "skirts", ("casual_skirts", "a_line_skirts"), "length",
              {"mini": "mini", "midi": "knee", "maxi": "maxi"}),
    "top": ("top", "tops", ("blouses", "t_shirts"), "sleeves",
            {"sleeveless": "sleeveless", "short-sleeve": "short", "long-sleeve": "long"}),
}


# ---------------------------------------------------------------- drawing
@dataclass
class Shape:
    """A drawing in unit coordinates (x right, y down, 0..1)."""
    body: list = field(default_factory=list)  # polygons filled with the colour + pattern
    cuts: list = field(default_factory=list)  # polygons cut back to background (necklines, openings)
    parts: list = field(default_factory=list)  # (polygon, "dark"|"shade"|"sole") solid parts drawn on top
    buttons: list = field(default_factory=list)  # (x, y) small dark dots


def mirror(poly):
    return [(1.0 - x, y) for x, y in poly]


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
    s = Shape(body=[left + mirror(left)[::-1]])
    add_sleeves(s, a["sleeves"])
    s.cuts.append(ellipse(0.5, 0.135, 0.065, 0.045))
    s.parts.append(([(0.40, 0.41), (0.60, 0.41), (0.60, 0.445), (0.40, 0.445)], "shade"))  # waist seam
    return s


def draw_top(a, hem_y=0.66, waist=0.115, hem_w=0.13) -> Shape:
    shoulder = 0.10 if a.get("sleeves") == "sleeveless" else 0.14
    left = [(0.5 - 0.07, 0.15), (0.5 - shoulder, 0.17), (0.38, 0.30), (0.5 - waist, 0.50), (0.5 - hem_w, hem_y)]
    s = Shape(body=[left + mirror(left)[::-1]])
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
    s = Shape(body=[left + mirror(left)[::-1]])
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


# ---------------------------------------------------------------- captions
def _with_colour(c, old, noun):
    return [f"is {c}", f"is {c} colored", f"{c} color", f"is {c} in color", f"is a {c} {noun}",
            f"{c} {noun}", f"is {c} instead of {old}", f"is {c} not {old}", f"has a {c} color"]


PATTERN_NOUNS = {"stripes": "stripes", "dots": "dots", "checks": "checks"}
PHRASES = {  # attribute -> value -> phrases naming the new value (filled with old value and noun)
    "pattern": {
        "solid": ["is solid", "is plain", "has no pattern", "is a solid color", "has no {old_noun}"],
        "stripes": ["has stripes", "is striped", "has horizontal stripes", "is stripy", "is a striped {noun}"],
        "dots": ["has polka dots", "is polka dotted", "has dots", "is dotted", "has a dot print"],
        "checks": ["is checkered", "is plaid", "has a checked pattern", "has a plaid print", "has checks"],
    },
    "sleeves": {
        "sleeveless": ["is sleeveless", "has no sleeves", "sleeveless", "has straps and no sleeves"],
        "short": ["has short sleeves", "short sleeve", "is short sleeved", "has short sleeves instead"],
        "three_quarter": ["has 3/4 sleeves", "3/4 sleeve", "has three quarter sleeves",
                          "has three quarter length sleeves"],
        "long": ["has long sleeves", "is long sleeved", "long sleeve", "has full sleeves"],
    },
    "length": {
        "mini": ["is short", "is a mini {noun}", "is above the knee", "is mini length"],
        "knee": ["is knee length", "is knee-length", "is medium length", "ends at the knee"],
        "maxi": ["is long", "is a maxi {noun}", "is floor length", "is ankle length"],
    },
    "neckline": {
        "round": ["has a round neck", "has a crew neck", "has a round neckline", "is not v-neck"],
        "v": ["has a v-neck", "has a v neck", "has a v-neckline", "is v-necked"],
    },
    "collar": {
        "collar": ["has a collar", "is collared", "has a pointed collar", "has a button down collar"],
        "no_collar": ["has no collar", "is collarless", "has a round neck and no collar", "does not have a collar"],
    },
    "heel": {
        "flat": ["is flat", "has no heel", "is a flat {noun}", "has a flat sole"],
        "low": ["has a low heel", "has a small heel", "has a short heel", "has a block heel"],
        "high": ["has a high heel", "is high heeled", "has a tall heel", "has a very high heel"],
    },
    "shaft": {
        "low": ["is a low cut shoe", "is not a boot", "is a shoe instead of a boot", "is low cut"],
        "ankle": ["is an ankle boot", "is ankle high", "is a bootie", "is an ankle bootie"],
        "knee": ["is a knee high boot", "is a tall boot", "goes up to the knee", "is knee high"],
    },
}
WITH = {  # "... with X" forms used to join two changes ("is red with stripes")
    "pattern": {"solid": "with no pattern", "stripes": "with stripes", "dots": "with polka dots",
                "checks": "with a plaid pattern"},
    "sleeves": {"sleeveless": "with no sleeves", "short": "with short sleeves",
                "three_quarter": "with three quarter sleeves", "long": "with long sleeves"},
    "neckline": {"round": "with a round neck", "v": "with a v-neck"},
    "collar": {"collar": "with a collar", "no_collar": "without a collar"},
    "heel": {"flat": "with no heel", "low": "with a low heel", "high": "with a high heel"},
    "colour": {c: f"in {c}" for c in COLOURS},
}
# ordinal attributes: a relative phrase is used only when it picks one value unambiguously
ORDINAL = {"length": ("mini", "knee", "maxi", "is longer", "is shorter"),
           "sleeves": ("sleeveless", "short", "three_quarter", "long", "has longer sleeves", "has shorter sleeves"),
           "heel": ("flat", "low", "high", "has a higher heel", "has a lower heel"),
           "shaft": ("low", "ankle", "knee", "is a taller boot", "is lower cut")}


def noun_for(kind: str, target: dict) -> str:
    if kind == "shoe":
        return "shoe" if target["shaft"] == "low" else "boot"
    return NOUNS[kind]


def phrases(kind: str, attr: str, new: str, old: str, noun: str) -> list[str]:
    """Alternative phrasings of "the target (a `noun`) has `new` where the reference had `old`"."""
    if attr == "colour":
        return _with_colour(new, old, noun)
    out = [p.format(noun=noun, old_noun=PATTERN_NOUNS.get(old, "pattern")) for p in PHRASES[attr][new]]
    if attr in ORDINAL:
        *order, more, less = ORDINAL[attr]
        values = [v for v in order if v in KINDS[kind][attr]]
        i, j = values.index(old), values.index(new)
        if j == len(values) - 1 and j - i == 1:
            out.append(more)
        if j == 0 and i - j == 1:
            out.append(less)
    return out


def noisy(text: str, rng: np.random.Generator) -> str:
    """Annotator noise seen in the real captions: capitals, full stops, stray spaces."""
    r = rng.random(3)
    if r[0] < 0.08:
        text = text[0].upper() + text[1:]
    if r[1] < 0.05:
        text += "."
    if r[2] < 0.03:
        text = " " + text
    return text


def pick(options: list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def join_two(kind, ref, tgt, a, b, rng) -> str:
    """One caption naming both changes a and b."""
    if rng.random() < 0.5:
        a, b = b, a
    noun = noun_for(kind, tgt)
    first = pick(phrases(kind, a, tgt[a], ref[a], noun), rng)
    second = pick(phrases(kind, b, tgt[b], ref[b], noun), rng)
    forms = [f"{first} and {second}"]
    if b in WITH:
        forms.append(f"{first} {WITH[b][tgt[b]]}")
    if first.startswith("is ") and second.startswith("is "):
        forms.append(f"{first} and {second[3:]}")
    return pick(forms, rng)


def captions_for(kind: str, ref: dict, tgt: dict, changed: tuple[str, ...], rng, count: int) -> list[str]:
    """`count` (1 or 2) captions naming the change from ref to tgt, phrased differently."""
    noun = noun_for(kind, tgt)
    if len(changed) == 1:
        options = phrases(kind, changed[0], tgt[changed[0]], ref[changed[0]], noun)
        chosen = rng.choice(len(options), size=count, replace=False)
        return [noisy(options[int(i)], rng) for i in chosen]
    a, b = changed
    if count == 1:
        return [noisy(join_two(kind, ref, tgt, a, b, rng), rng)]
    style = rng.random()
    if style < 0.25:  # each annotator describes one of the changes
        first = pick(phrases(kind, a, tgt[a], ref[a], noun), rng)
        second = pick(phrases(kind, b, tgt[b], ref[b], noun), rng)
        pair = [first, second] if rng.random() < 0.5 else [second, first]
    else:
        pair = [join_two(kind, ref, tgt, a, b, rng)]
        for _ in range(10):
            other = join_two(kind, ref, tgt, a, b, rng)
            if other != pair[0]:
                break
        pair.append(other)
    return [noisy(c, rng) for c in pair]


# ---------------------------------------------------------------- sampling
def sample_attributes(kind: str, n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """n attribute combinations, all different while n allows."""
    names = list(KINDS[kind])
    combos = list(itertools.product(*(KINDS[kind][a] for a in names)))
    order = np.concatenate([rng.permutation(len(combos)) for _ in range(math.ceil(n / len(combos)))])[:n]
    return [dict(zip(names, combos[i])) for i in order]


def sample_pairs(kind: str, refs: list[dict], targets: list[dict], n: int, rng: np.random.Generator,
                 p_two: float = 0.45) -> list[tuple[int, int, tuple[str, ...]]]:
    """(reference index, target index, changed attributes): the reference equals the target
    except in the changed attributes, where it differs in each."""
    names = list(KINDS[kind])
    weights = np.array([CHANGE_WEIGHTS[a] for a in names])
    weights = weights / weights.sum()
    index: dict[tuple, dict[tuple, list[int]]] = {}
    for changed in [(a,) for a in names] + list(itertools.combinations(names, 2)):
        table = index.setdefault(changed, {})
        for i, r in enumerate(refs):
            table.setdefault(tuple(r[a] for a in names if a not in changed), []).append(i)
    pairs, seen = [], set()
    for _ in range(60 * n):
        if len(pairs) == n:
            break
        t = int(rng.integers(len(targets)))
        count = 2 if rng.random() < p_two else 1
        changed = tuple(sorted(rng.choice(len(names), size=count, replace=False, p=weights)))
        changed = tuple(names[i] for i in changed)
        key = tuple(targets[t][a] for a in names if a not in changed)
        candidates = [i for i in index[changed].get(key, [])
                      if all(refs[i][a] != targets[t][a] for a in changed) and (i, t) not in seen]
        if candidates:
            r = candidates[int(rng.integers(len(candidates)))]
            seen.add((r, t))
            pairs.append((r, t, changed))
    return pairs


def chance_recall(gallery: int, correct: list[int], ks) -> dict[int, float]:
    """Expected R@K of random ranking: gallery images minus the reference, `correct` targets per query."""
    g = gallery - 1
    out = {}
    for k in ks:
        out[k] = float(np.mean([1 - math.comb(g - m, k) / math.comb(g, k) if k <= g else 1.0 for m in correct]))
    return out


def fmt_chance(chance: dict[int, float]) -> str:
    return ", ".join(f"R@{k} {100 * v:.1f}%" for k, v in chance.items())


# ---------------------------------------------------------------- writers
class Writer:
    """Writes images and annotation files under one dataset folder; one render rng per image."""

    def __init__(self, folder: Path, size: int, seed: int):
        self.folder, self.size, self.seed, self.count = folder, size, seed, 0

    def image(self, relative: str, kind: str, attrs: dict) -> None:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([self.seed, 7, self.count])
        self.count += 1
        render(kind, attrs, self.size, rng).save(path, "JPEG", quality=JPEG_QUALITY)

    def text(self, relative: str, text: str) -> None:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def write_fashioniq(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """Per category: n_images*3/2 train, n_images val, n_images*3/4 test images;
    n_triplets train, 3/5 of that val and 2/5 test annotations."""
    sizes = {"train": (n_images * 3 // 2, n_triplets), "val": (n_images, n_triplets * 3 // 5),
             "test": (max(4, n_images * 3 // 4), max(1, n_triplets * 2 // 5))}
    summary, next_id = [], 0
    for category in ("dress", "shirt", "toptee"):
        for split, (n_img, n_ann) in sizes.items():
            attrs = sample_attributes(category, n_img, rng)
            ids = [f"S{next_id + i:07d}" for i in range(n_img)]
            next_id += n_img
            for image_id, a in zip(ids, attrs):
                w.image(f"img/{image_id}.jpg", category, a)
            annotations = []
            for r, t, changed in sample_pairs(category, attrs, attrs, n_ann, rng):
                captions = captions_for(category, attrs[r], attrs[t], changed, rng, count=2)
                entry = {"target": ids[t], "candidate": ids[r], "captions": captions}
                if split == "test":  # the public test captions carry no target
                    entry = {"candidate": ids[r], "captions": captions}
                annotations.append(entry)
            w.text(f"annotations/captions/cap.{category}.{split}.json", json.dumps(annotations, indent=4))
            w.text(f"annotations/image_splits/split.{category}.{split}.json", json.dumps(ids, indent=4))
            line = f"{category} {split}: {n_img} images, {len(annotations)} annotations ({2 * len(annotations)} queries)"
            if split == "val":
                line += "; chance " + fmt_chance(chance_recall(n_img, [1], (10, 50)))
            summary.append(line)
    return summary


SHOE_TYPES = {("flat", "low"): "flats", ("low", "low"): "pumps", ("high", "low"): "high_heels",
              ("flat", "ankle"): "sneakers", ("low", "ankle"): "clogs", ("high", "ankle"): "stiletto",
              ("flat", "knee"): "rain_boots", ("low", "knee"): "boots", ("high", "knee"): "boots"}


def write_shoes(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """n_images*3 train and n_images eval images; n_triplets train, n_triplets/6 val and
    n_triplets/8 + n_triplets/20 straddling triplets (reference and target in different lists)."""
    n_train, n_eval = n_images * 3, n_images
    train, evals = sample_attributes("shoe", n_train, rng), sample_attributes("shoe", n_eval, rng)
    numbers: dict[str, int] = {}

    def name(a):
        kind = SHOE_TYPES[(a["heel"], a["shaft"])]
        numbers[kind] = numbers.get(kind, 0) + int(rng.integers(1, 4))
        n = numbers[kind]
        return f"womens_{kind}/{n // 100}/img_womens_{kind}_{n}.jpg"

    paths = [name(a) for a in train + evals]
    for path, a in zip(paths, train + evals):
        w.image(f"images/{path}", "shoe", a)
    train_names = [p.rsplit("/", 1)[1] for p in paths[:n_train]]
    eval_names = [p.rsplit("/", 1)[1] for p in paths[n_train:]]
    groups = [(train, train, train_names, train_names, n_triplets),
              (evals, evals, eval_names, eval_names, max(1, n_triplets // 6)),
              (train, evals, train_names, eval_names, max(1, n_triplets // 8)),
              (evals, train, eval_names, train_names, max(1, n_triplets // 20))]
    triplets, counts = [], []
    for ref_attrs, tgt_attrs, ref_names, tgt_names, n in groups:
        pairs = sample_pairs("shoe", ref_attrs, tgt_attrs, n, rng)
        counts.append(len(pairs))
        for r, t, changed in pairs:
            caption = captions_for("shoe", ref_attrs[r], tgt_attrs[t], changed, rng, count=1)[0]
            triplets.append({"ImageName": tgt_names[t], "ReferenceImageName": ref_names[r], "RelativeCaption": caption})
    triplets = [triplets[i] for i in rng.permutation(len(triplets))]
    w.text("annotations/relative_captions_shoes.json", json.dumps(triplets))
    w.text("annotations/train_im_names.txt", "".join(n + "\n" for n in train_names))
    w.text("annotations/eval_im_names.txt", "".join(n + "\n" for n in eval_names))
    return [f"{n_train} train / {n_eval} eval images; triplets: {counts[0]} train, {counts[1]} val, "
            f"{counts[2] + counts[3]} straddling the two lists (dropped by the split rule)",
            "val chance " + fmt_chance(chance_recall(n_eval, [1], (1, 10, 50)))]


def f200k_description(category: str, a: dict) -> str:
    noun, _, _, shape_attr, words = F200K_CATEGORIES[category]
    shape_word = {v: k for k, v in words.items()}[a[shape_attr]]
    return f"{a['colour']} {F200K_PATTERN_WORDS[a['pattern']]} {shape_word} {noun}"


def differ_by_one_word(a: str, b: str) -> bool:
    x, y = a.split(), b.split()
    return len(x) == len(y) and sum(u != v for u, v in zip(x, y)) == 1


def write_fashion200k(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """Per category n_images*4 train and n_images test images (test descriptions shared by
    about two images each); n_triplets test queries over all categories."""
    test_items, summary, used_ids = [], [], set()
    for category, (noun, folder, subs, shape_attr, words) in F200K_CATEGORIES.items():
        values = {"colour": COLOUR_NAMES, "pattern": PATTERNS, shape_attr: tuple(words.values())}
        combos = [dict(zip(values, c)) for c in itertools.product(*values.values())]
        n_test_desc = max(2, n_images // 2)
        test_desc = [combos[i] for i in rng.permutation(len(combos))[:n_test_desc]]
        extra = [test_desc[i] for i in rng.integers(0, len(test_desc), max(0, n_images - n_test_desc))]
        splits = {"train": [combos[i] for i in rng.integers(0, len(combos), n_images * 4)],
                  "test": test_desc + extra}
        for split, items in splits.items():
            lines = []
            for a in items:
                while True:
                    image_id = int(rng.integers(10_000_000, 99_999_999))
                    if image_id not in used_ids:
                        used_ids.add(image_id)
                        break
                path = f"women/{folder}/{pick(list(subs), rng)}/{image_id}/{image_id}_0.jpeg"
                description = f200k_description(category, a)
                w.image(path, f"f200k_{category}", {"sleeves": "short", **a})  # dresses: short sleeves
                lines.append(f"{path}\t{rng.uniform(0.5, 1.0):.6f}\t{description}\n")
                if split == "test":
                    test_items.append((path, description))
            w.text(f"labels/{category}_{split}_detect_all.txt", "".join(lines))
        summary.append(f"{category}: {len(splits['train'])} train / {len(splits['test'])} test images, "
                       f"{n_test_desc} test descriptions")
    by_description: dict[str, list[str]] = {}
    for path, description in test_items:
        by_description.setdefault(description, []).append(path)
    neighbours = {d: [e for e in by_description if differ_by_one_word(d, e)] for d in by_description}
    queries, seen = [], set()
    for _ in range(50 * n_triplets):
        if len(queries) == n_triplets:
            break
        source, description = test_items[int(rng.integers(len(test_items)))]
        if not neighbours[description]:
            continue
        target_description = pick(neighbours[description], rng)
        target = pick(by_description[target_description], rng)
        if (source, target) not in seen:
            seen.add((source, target))
            queries.append((source, target, len(by_description[target_description])))
    w.text("test_queries.txt", "".join(f"{s} {t}\n" for s, t, _ in queries))
    chance = chance_recall(len(test_items), [m for _, _, m in queries], (1, 10, 50))
    summary.append(f"{len(queries)} test queries, {np.mean([m for *_, m in queries]):.2f} correct targets per "
                   f"query on average, gallery {len(test_items)}; chance {fmt_chance(chance)}")
    return summary


DEFAULTS = {  # dataset -> (n_images, n_triplets), see the module docstring
    "fashioniq": (200, 250), "shoes": (250, 1500), "fashion200k": (60, 300)}
WRITERS = {"fashioniq": write_fashioniq, "shoes": write_shoes, "fashion200k": write_fashion200k}


def generate(out_dir, dataset: str, size: int = 64, seed: int = 0, n_images: int | None = None,
             n_triplets: int | None = None, verbose: bool = False) -> Path:
    """Write the synthetic `dataset` under out_dir/<dataset folder>/ and return that folder.

    A folder of that name (any case) is replaced only if this module wrote it (it holds
    SYNTHETIC.txt); the new one is built beside it and moved into place when complete."""
    if dataset not in FOLDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(FOLDERS)}")
    default_images, default_triplets = DEFAULTS[dataset]
    n_images = default_images if n_images is None else n_images
    n_triplets = default_triplets if n_triplets is None else n_triplets
    if n_images < 4 or n_triplets < 1 or size < 16:
        raise ValueError(f"need n_images >= 4, n_triplets >= 1, size >= 16 (got {n_images}, {n_triplets}, {size})")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    name = FOLDERS[dataset]
    existing = [p for p in out.iterdir() if p.name.lower() == name.lower()]
    for p in existing:
        if not (p / MARKER).is_file():
            raise FileExistsError(f"{p} exists and was not written by data.synthetic (no {MARKER}); "
                                  f"refusing to overwrite it: choose another --out")
    partial = out / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    writer = Writer(partial, size, seed)
    rng = np.random.default_rng([seed, {"fashioniq": 1, "shoes": 2, "fashion200k": 3}[dataset]])
    summary = WRITERS[dataset](writer, rng, n_images, n_triplets)
    command = (f"python -m data.synthetic --out DIR --dataset {dataset} --size {size} --seed {seed} "
               f"--n_images {n_images} --n_triplets {n_triplets}")
    writer.text(MARKER, f"Synthetic {dataset} data written by: {command}\n" + "".join(f"{s}\n" for s in summary))
    for p in existing:
        shutil.rmtree(p)
    partial.rename(out / name)
    if verbose:
        print(f"wrote {out / name} ({writer.count} images)")
        for line in summary:
            print("  " + line)
    return out / name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Write a small synthetic dataset (procedurally drawn garments or shoes, captions naming "
                    "the change) in the on-disk layout of FashionIQ, Shoes or Fashion200k, so that "
                    "--data_root DIR reads it.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="Data root to write into; the dataset goes to DIR/fashionIQ, DIR/shoes or DIR/fashion200K "
                             "(replaced if an earlier synthetic run wrote it; a real dataset there is never touched).")
    parser.add_argument("--dataset", required=True, choices=tuple(FOLDERS), help="Which dataset layout to write.")
    parser.add_argument("--size", type=int, default=64, help="Image side in pixels (default: 64).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; the same seed writes byte-identical files "
                                                            "(default: 0).")
    parser.add_argument("--n_images", type=int, default=None,
                        help="Gallery size: fashioniq val images per category (train 1.5x, test 0.75x; default 200); "
                             "shoes eval images (train 3x; default 250); fashion200k test images per category "
                             "(train 4x; default 60).")
    parser.add_argument("--n_triplets", type=int, default=None,
                        help="fashioniq train annotations per category (val 0.6x, test 0.4x; default 250, each gives "
                             "two queries); shoes train triplets (val 1/6, straddling ~1/6; default 1500); "
                             "fashion200k test queries (default 300).")
    args = parser.parse_args(argv)
    try:
        generate(args.out, args.dataset, args.size, args.seed, args.n_images, args.n_triplets, verbose=True)
    except (ValueError, FileExistsError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
