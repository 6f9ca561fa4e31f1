"""Caption and description text: the phrase tables and how captions are put together.

A FashionIQ or Shoes target differs from its reference in one or two attributes; the
captions name the new values, phrased like the real ones ("is red with stripes",
"has 3/4 sleeves", "Is floor length."), with the annotator noise of the real captions.
Fashion200k descriptions are "<colour> <pattern> <shape> <noun>" (e.g. "red striped mini
dress"), so many descriptions differ by exactly one word. Hard mode's captions
(`hard_captions`) add the small details, relative and imperative phrasings, vague captions and
captions that add nothing (see the changelog in writers.py).
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



# ---- hard mode (difficulty="hard") ----
# Phrases naming a small detail's new value; relative phrases that name it given the old value;
# vague phrases that are true of the change but do not name the new value (used only beside a
# caption that names it); captions that add nothing (only ever one of an annotation's two).
NULL_CAPTIONS = ("same as before", "i like it", "similar", "looks the same", "same style", "it is similar",
                 "nice", "the same")
DETAIL_PHRASES = {
    "belt": {
        "none": ["has no belt", "is without a belt", "does not have a belt", "is beltless"],
        "thin": ["has a thin belt", "has a skinny belt", "has a narrow belt", "is belted with a thin belt"],
        "wide": ["has a wide belt", "has a thick belt", "has a broad belt", "has a wide waist belt"],
    },
    "buttons": {
        "none": ["has no buttons", "is buttonless", "does not have buttons", "has no buttons on the front"],
        "two": ["has two buttons", "has a pair of buttons", "has two buttons on the front", "has just two buttons"],
        "four": ["has four buttons", "has four buttons on the front", "has a row of four buttons",
                 "is buttoned with four buttons"],
    },
    "pocket": {
        "none": ["has no pockets", "is without pockets", "does not have pockets", "has no pocket"],
        "one": ["has one pocket", "has a chest pocket", "has a single pocket", "has one breast pocket"],
        "two": ["has two pockets", "has two chest pockets", "has pockets on both sides", "has two breast pockets"],
    },
    "logo": {
        "none": ["has no logo", "has no graphic", "is plain without a logo", "does not have a logo"],
        "chest": ["has a small logo on the chest", "has a chest logo", "has a little emblem on the chest",
                  "has a logo on one side of the chest"],
        "centre": ["has a logo in the middle", "has a graphic in the center", "has a center logo",
                   "has a print in the middle"],
        "side": ["has a logo on the side", "has a side logo", "has a small emblem on the side", "has a little logo"],
    },
    "cuffs": {
        "none": ["has no cuffs", "has plain sleeve ends", "does not have cuffs", "has sleeves without cuffs"],
        "cuffs": ["has cuffs", "has cuffed sleeves", "has contrast cuffs", "has cuffs on the sleeves"],
    },
    "laces": {
        "none": ["has no laces", "is a slip on", "is slip-on", "does not have laces"],
        "laces": ["has laces", "is lace up", "has shoelaces", "is a lace-up"],
    },
    "toecap": {
        "none": ["has no toe cap", "has a plain toe", "does not have a toe cap", "has no cap on the toe"],
        "cap": ["has a toe cap", "has a capped toe", "has a contrast toe", "has a different colored toe cap"],
    },
    "strap": {
        "none": ["has no straps", "is strapless", "does not have straps", "has no strap"],
        "one": ["has one strap", "has a single strap", "has just one strap", "has one band across"],
        "two": ["has two straps", "has double straps", "has a pair of straps", "has two bands across"],
    },
}
KIND_PHRASES = {  # (kind, attribute, value) -> phrases replacing DETAIL_PHRASES' ones
    ("dress", "pocket", "two"): ["has pockets", "has two pockets", "has hip pockets", "has side pockets"],
    ("toptee", "pocket", "one"): ["has a pocket", "has a chest pocket", "has a single pocket", "has one pocket"],
}
RELATIVE = {  # (attribute, old, new) -> phrases that name the new value given the old
    ("belt", "thin", "wide"): ["has a wider belt", "has a thicker belt"],
    ("belt", "wide", "thin"): ["has a thinner belt", "has a narrower belt"],
    ("buttons", "two", "four"): ["has more buttons", "has twice as many buttons"],
    ("buttons", "four", "two"): ["has fewer buttons", "has half as many buttons"],
    ("pocket", "one", "two"): ["has another pocket", "has an extra pocket"],
    ("strap", "one", "two"): ["has another strap", "has an extra strap"],
    ("logo", "chest", "centre"): ["has the logo in the middle instead", "has the logo moved to the center"],
    ("logo", "centre", "chest"): ["has the logo moved to the chest", "has the logo on the chest instead"],
}
LUMINANCE = {c: 0.299 * r + 0.587 * g + 0.114 * b for c, (r, g, b) in COLOURS.items()}
ATTRIBUTE_WORDS = {"colour": "color", "pattern": "pattern", "sleeves": "sleeves", "length": "length",
                   "neckline": "neckline", "collar": "collar", "heel": "heel", "shaft": "shaft", "belt": "belt",
                   "buttons": "number of buttons", "pocket": "number of pockets", "logo": "logo placement",
                   "cuffs": "sleeve end", "laces": "closure", "toecap": "toe", "strap": "number of straps"}


def imperative(phrase: str) -> str | None:
    """"is X" -> "make it X", "has no X" -> "remove the X", "has X" -> "should have X"."""
    if phrase.startswith("is "):
        return "make it " + phrase[3:]
    if phrase.startswith("has no "):
        return "remove the " + phrase[7:]
    if phrase.startswith("has "):
        return "should have " + phrase[4:]
    return None


def hard_phrases(kind: str, attr: str, new: str, old: str, noun: str) -> list[str]:
    """Phrasings that name the new value of `attr` (digits are avoided: the tokenizer drops them)."""
    if attr in DETAIL_PHRASES:
        out = list(KIND_PHRASES.get((kind, attr, new), DETAIL_PHRASES[attr][new]))
    else:
        out = [p for p in phrases(kind, attr, new, old, noun) if not any(ch.isdigit() for ch in p)]
    out += RELATIVE.get((attr, old, new), [])
    out += [i for i in map(imperative, out[:1]) if i]
    return out


def vague_phrases(attr: str, old: str, new: str) -> list[str]:
    """True of the change from old to new, but not naming the new value."""
    if attr == "colour":
        step = LUMINANCE[new] - LUMINANCE[old]
        if step < -30:
            return ["is darker", "is a darker color", "darker"]
        if step > 30:
            return ["is lighter", "is a lighter color", "is brighter"]
        return ["is a different color", "has another color"]
    if attr == "pattern" and old == "solid":
        return ["has a pattern", "is patterned", "has a print"]
    if attr in ORDINAL:
        *order, more, less = ORDINAL[attr]
        return [more] if order.index(new) > order.index(old) else [less]
    if attr in ("belt", "buttons", "pocket", "logo", "strap") and old == "none":
        return {"belt": ["has a belt", "add a belt", "is belted"], "buttons": ["has buttons", "add buttons"],
                "pocket": ["has pockets", "add pockets"] if new == "two" else ["has a pocket", "add a pocket"],
                "logo": ["has a logo", "add a logo"], "strap": ["has straps", "is strappy"]}[attr]
    if attr in ("belt", "buttons", "pocket", "logo", "strap") and new == "none":
        return ["is plainer", "has less detail"]
    return [f"has a different {ATTRIBUTE_WORDS[attr]}"]


def with_form(attr: str, value: str, phrase: str) -> str | None:
    """"... with X" for joining two changes, from the easy WITH table or a "has ..." phrase."""
    if attr in WITH:
        return WITH[attr][value]
    return "with " + phrase[4:] if phrase.startswith("has ") else None


def hard_join(kind, ref, tgt, a, b, rng) -> str:
    """One caption naming both changes a and b."""
    if rng.random() < 0.5:
        a, b = b, a
    noun = noun_for(kind, tgt)
    first, second = (pick(hard_phrases(kind, x, tgt[x], ref[x], noun), rng) for x in (a, b))
    forms = [f"{first} and {second}", f"{first}, {second}"]
    joined = with_form(b, tgt[b], second)
    if joined:
        forms.append(f"{first} {joined}")
    if first.startswith("is ") and second.startswith("is "):
        forms.append(f"{first} and {second[3:]}")
    return pick(forms, rng)


def hard_captions(kind: str, ref: dict, tgt: dict, changed: tuple[str, ...], rng, count: int) -> list[str]:
    """`count` captions for the change from ref to tgt, as annotators write them. One caption (Shoes)
    always names the whole change. Two (FashionIQ) name it together: both in full (45-65 %), one
    in full and one adding nothing (10 %), one in full and one only vaguely ("is darker", "has a
    belt"; 15-20 %), or, for two changes, one change each (30 %)."""
    noun = noun_for(kind, tgt)

    def name(attr):
        return pick(hard_phrases(kind, attr, tgt[attr], ref[attr], noun), rng)

    def full():
        return name(changed[0]) if len(changed) == 1 else hard_join(kind, ref, tgt, *changed, rng)

    if count == 1:
        return [noisy(full(), rng)]
    style = rng.random()
    if style < 0.10:
        pair = [full(), pick(list(NULL_CAPTIONS), rng)]
    elif len(changed) == 2 and style < 0.40:
        pair = [name(changed[0]), name(changed[1])]
    elif style < (0.55 if len(changed) == 2 else 0.30):
        attr = changed[int(rng.integers(len(changed)))]
        pair = [full(), pick(vague_phrases(attr, ref[attr], tgt[attr]), rng)]
    else:
        pair = [full()]
        for _ in range(10):
            other = full()
            if other != pair[0]:
                break
        pair.append(other)
    if rng.random() < 0.5:
        pair = pair[::-1]
    return [noisy(c, rng) for c in pair]
