"""Caption and description text: the phrase tables and how captions are put together.

A FashionIQ or Shoes target differs from its reference in one or two attributes; the
captions name the new values, phrased like the real ones ("is red with stripes",
"has 3/4 sleeves", "Is floor length."), with the annotator noise of the real captions.
Fashion200k descriptions are "<colour> <pattern> <shape> <noun>" (e.g. "red striped mini
dress"), so many descriptions differ by exactly one word.
"""
from __future__ import annotations

import numpy as np

from data.synthetic.attributes import COLOURS, F200K_CATEGORIES, KINDS

NOUNS = {"dress": "dress", "shirt": "shirt", "toptee": "top"}
F200K_PATTERN_WORDS = {"solid": "solid", "stripes": "striped", "dots": "dotted", "checks": "plaid"}


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


def one_change(kind, ref, tgt, attr, noun, rng) -> str:
    """One phrase naming the change of `attr` from ref to tgt."""
    return pick(phrases(kind, attr, tgt[attr], ref[attr], noun), rng)


def join_two(kind, ref, tgt, a, b, rng) -> str:
    """One caption naming both changes a and b."""
    if rng.random() < 0.5:
        a, b = b, a
    noun = noun_for(kind, tgt)
    first, second = one_change(kind, ref, tgt, a, noun, rng), one_change(kind, ref, tgt, b, noun, rng)
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
        first, second = one_change(kind, ref, tgt, a, noun, rng), one_change(kind, ref, tgt, b, noun, rng)
        pair = [first, second] if rng.random() < 0.5 else [second, first]
    else:
        pair = [join_two(kind, ref, tgt, a, b, rng)]
        for _ in range(10):
            other = join_two(kind, ref, tgt, a, b, rng)
            if other != pair[0]:
                break
        pair.append(other)
    return [noisy(c, rng) for c in pair]


def f200k_description(category: str, a: dict) -> str:
    noun, _, _, shape_attr, words = F200K_CATEGORIES[category]
    shape_word = {v: k for k, v in words.items()}[a[shape_attr]]
    return f"{a['colour']} {F200K_PATTERN_WORDS[a['pattern']]} {shape_word} {noun}"


def differ_by_one_word(a: str, b: str) -> bool:
    x, y = a.split(), b.split()
    return len(x) == len(y) and sum(u != v for u, v in zip(x, y)) == 1

