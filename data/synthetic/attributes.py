"""The attribute vocabulary shared by the drawings, the captions and the writers.

Each item has a colour (10 named colours), a pattern (solid, stripes, polka dots, plaid)
and one or two shape parts (sleeve length, dress length, neckline, collar; heel height and
boot shaft for shoes; length or leg width for the Fashion200k categories). Hard mode
(HARD_KINDS, F200K_HARD_DETAILS) adds small details: belts, buttons, pockets, logos, cuffs;
laces, toe caps, straps and a side logo on shoes (SMALL_DETAILS, with the shirt collar).
"""
from __future__ import annotations

COLOURS = {
    "black": (35, 35, 38), "white": (246, 246, 244), "red": (205, 30, 40), "blue": (35, 75, 205),
    "green": (35, 150, 60), "yellow": (245, 210, 35), "pink": (245, 140, 185), "purple": (125, 45, 155),
    "orange": (245, 130, 25), "brown": (120, 72, 38),
}
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

# Fashion200k: description = colour, pattern word, shape word, noun (one word each)
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

# ---- hard mode (difficulty="hard"): small-detail attributes on top of KINDS ----
# A small detail is drawn a few pixels large (belts, buttons, pockets, logos, cuffs, collars;
# laces, toe caps, straps and a side logo on shoes); the other attributes are "coarse".
SMALL_DETAILS = frozenset({"belt", "buttons", "pocket", "logo", "collar", "cuffs", "laces", "toecap", "strap"})
BELT = ("none", "thin", "wide")
BUTTONS = ("none", "two", "four")
HARD_KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "dress": {**KINDS["dress"], "belt": BELT, "buttons": BUTTONS, "pocket": ("none", "two")},
    "shirt": {**KINDS["shirt"], "pocket": ("none", "one", "two"), "buttons": BUTTONS, "cuffs": ("none", "cuffs")},
    "toptee": {**KINDS["toptee"], "belt": BELT, "logo": ("none", "chest", "centre"), "pocket": ("none", "one")},
    "shoe": {**KINDS["shoe"], "laces": ("none", "laces"), "toecap": ("none", "cap"), "strap": ("none", "one", "two"),
             "logo": ("none", "side")},
}
# Fashion200k hard descriptions: colour, pattern word, two detail words, shape word, noun
F200K_HARD_DETAILS = {  # category -> ((attribute, {word: value}), (attribute, {word: value}))
    "dress": (("belt", {"unbelted": "none", "belted": "thin", "wide-belt": "wide"}),
              ("buttons", {"buttonless": "none", "two-button": "two", "four-button": "four"})),
    "jacket": (("belt", {"unbelted": "none", "belted": "thin", "wide-belt": "wide"}),
               ("pocket", {"pocketless": "none", "one-pocket": "one", "two-pocket": "two"})),
    "pants": (("belt", {"unbelted": "none", "belted": "thin", "wide-belt": "wide"}),
              ("cuffs", {"uncuffed": "none", "cuffed": "cuffs"})),
    "skirt": (("belt", {"unbelted": "none", "belted": "thin", "wide-belt": "wide"}),
              ("buttons", {"buttonless": "none", "two-button": "two", "four-button": "four"})),
    "top": (("logo", {"plain": "none", "logo": "chest", "graphic": "centre"}),  # one pocket: a second would
            ("pocket", {"pocketless": "none", "pocketed": "one"})),                # sit under the chest logo
}
