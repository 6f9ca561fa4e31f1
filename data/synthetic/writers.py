"""The per-format file writers and `generate`, which writes one dataset folder.

Within each split's image list every image has a different attribute combination, so
reference + caption determine the target: R@1 can reach 1.0 for a perfect model. Each
Fashion200k test description is shared by one to several test images (all correct targets).

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
- cirr: 720 train / 240 val / 240 test1 PNG images in image sets of six (the img_set: one
  kind of item, a base and five others one or two attributes away from it); 1200 train
  triplets, 160 val and 160 test1 queries (four base <-> other pairs per set; test1 without
  targets). Val G = 240: chance R@1 = 0.4 %, R@5 = 2.1 %, R@10 = 4.2 %, R@50 = 20.9 %;
  Recall_subset@K = K / 5 (five candidates besides the reference).
`generate` writes these figures to <folder>/SYNTHETIC.txt (the marker that lets a later
run replace the folder; a folder without it is never touched) and prints them if verbose.
The default FashionIQ set takes a few seconds to write. The same seed gives byte-identical files.

Changelog
---------
2026-11-27 -- hard mode (`generate(..., difficulty="hard")`, `--difficulty hard`), for all
three formats. Its design below was fixed from the benchmark's claims before any model was
trained on it and before any result on it was seen; it is not to be tuned to favour a method.
The default, difficulty "easy", is unchanged: the same seed writes byte-identical files.

Hard mode. The claim to test: only a model that keeps what the text does not touch (and sees
small details) ranks the target first.
- Small details (attributes.SMALL_DETAILS), drawn a few pixels large (about 2-5 px at 64 px),
  with a one-pixel outline, clipped to the garment: belt none/thin/wide (with a buckle),
  buttons none/two/four, pockets (dress hips: none/two; shirt chest: none/one/two; top:
  none/one), a logo (top: none/chest/centre), cuffs (shirt), the shirt collar; shoes: laces,
  toe cap, straps none/one/two, a side logo. Belts are dark on light garments and light on
  dark ones, with a metal buckle; buttons, logos, laces and straps are in a metal tone (blue
  on yellow and orange), unlike the black or white pattern ink; pockets, cuffs and toe caps in
  the garment's contrast tone (like collars). FashionIQ dress/shirt/top and shoes keep the
  easy attributes (colour, pattern, shape parts) and add three or four details each.
- Near-misses (hard.py): every split is laid out in near-miss groups, small binary
  hypercubes: the edited attributes flip together (the edge reference -> target, direction at
  random) and 2-3 untouched attributes take two values each, at least half of them (two
  where the attributes allow) small details. Every evaluation target thus has 2-3 designed
  near-misses in its gallery -- equal to it in what the caption changes, different in one
  attribute the caption leaves alone (so different from the reference there too) -- plus any
  that the rest of the gallery holds by chance (figures below). Every image of a group has
  the same number of neighbours and every near-miss is itself the reference or target of
  another edge, so a near-miss looks like any gallery image and the target cannot be told
  apart without the reference; within a split no attribute combination repeats (the target
  stays unique) and every image is its own render (no duplicated files). Train and
  evaluation lists are sampled independently, as in easy mode (combinations may recur across
  splits).
- Edits: 40-50 % of the evaluation edits change a small detail (45 % at the default sizes;
  hard.Share), the rest one or two coarse attributes (colour most often); 40 % of the
  FashionIQ and Shoes group edits change two attributes (a detail with a coarse one, or two
  coarse ones); Fashion200k edits change one word.
- Captions (captions.hard_captions): several phrasings per value, relative ones where they
  name the value ("has a wider belt", "is longer"), imperatives ("make it red", "remove the
  belt", "should have a collar"), no digits (the tokenizer drops them). FashionIQ: two per
  annotation that together name the whole change -- both in full, or one change each, or
  one in full and one vague ("is darker", "has a belt"), or (10 % of the annotations) one in
  full and one that adds nothing ("same as before", "i like it", "similar"), never both.
  Shoes: one caption naming the whole change. Fashion200k descriptions have six words:
  colour, pattern, two detail words, shape, noun ("red striped belted buttonless mini dress").
- Sizes (defaults): fashioniq per category 900 train / 600 val / 450 test images, 1500
  train annotations (group edges, then other within-group pairs differing in one or two
  attributes), one val or test annotation per group edge (300 / 224); shoes 1200 train /
  600 eval images, 3000 train + 300 val triplets (+ 525 straddling); fashion200k per
  category 800 train / 200 test images (66 test descriptions, about 3 images each), 600
  test queries drawn evenly over the groups' edges in both directions.
- Chance levels: fashioniq val G = 600 per category and shoes G = 600, one target:
  R@1 0.2 %, R@5 0.8 %, R@10 1.7 %, R@50 8.3 %; fashion200k G = 1000 with 3.02 correct targets
  per query on average: R@1 0.3 %, R@5 1.5 %, R@10 3.0 %, R@50 14.2 %. Near-misses per query
  at the default sizes: fashioniq 2-9 (mean 3.7-4.1), shoes 2-8 (mean 3.6), 58-63 % of them
  differing in a small detail; fashion200k 3-20 images (mean 8.5; a description has about
  three), 55 %. SYNTHETIC.txt states these figures for what it holds.
- attributes.json (hard mode only) beside SYNTHETIC.txt lists every image's attributes, so
  that tests can check the claims; no reader opens it. The default FashionIQ hard set at
  64 px takes about 10 s to write.
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from data.synthetic.attributes import (
    COLOUR_NAMES,
    F200K_CATEGORIES,
    F200K_HARD_DETAILS,
    HARD_KINDS,
    KINDS,
    PATTERNS,
    SMALL_DETAILS,
)
from data.synthetic.captions import (
    F200K_PATTERN_WORDS,
    NULL_CAPTIONS,
    captions_for,
    differ_by_one_word,
    f200k_description,
    hard_captions,
    pick,
)
from data.synthetic.drawing import render
from data.synthetic.hard import Group, Share, cross_pairs, group_pairs, near_miss_stats, near_misses, sample_groups

FOLDERS = {"fashioniq": "fashionIQ", "shoes": "shoes", "fashion200k": "fashion200K", "cirr": "cirr"}
MARKER = "SYNTHETIC.txt"  # marks a folder this module may overwrite
JPEG_QUALITY = 90
# how often each attribute is the one that changes (colour most often, as in the real captions)
CHANGE_WEIGHTS = {"colour": 0.34, "pattern": 0.24, "sleeves": 0.2, "length": 0.2, "collar": 0.2,
                  "neckline": 0.2, "heel": 0.2, "shaft": 0.2}


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
            r = pick(candidates, rng)
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


class Writer:
    """Writes images and annotation files under one dataset folder; one render rng per image."""

    def __init__(self, folder: Path, size: int, seed: int, photo: tuple[int, int] | None = None):
        self.folder, self.size, self.seed, self.count, self.photo = folder, size, seed, 0, photo

    def image(self, relative: str, kind: str, attrs: dict) -> None:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([self.seed, 7, self.count])
        self.count += 1
        image = render(kind, attrs, self.size, rng)
        if self.photo:  # a product photo's frame: the garment centred on a white W x H canvas
            canvas = Image.new("RGB", self.photo, (255, 255, 255))
            canvas.paste(image, ((self.photo[0] - image.width) // 2, (self.photo[1] - image.height) // 2))
            image = canvas
        if path.suffix == ".png":  # CIRR's images
            image.save(path, "PNG")
        else:
            image.save(path, "JPEG", quality=JPEG_QUALITY)

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
            line = (f"{category} {split}: {n_img} images, {len(annotations)} annotations "
                    f"({2 * len(annotations)} queries)")
            if split == "val":
                line += "; chance " + fmt_chance(chance_recall(n_img, [1], (10, 50)))
            summary.append(line)
    return summary


SHOE_TYPES = {("flat", "low"): "flats", ("low", "low"): "pumps", ("high", "low"): "high_heels",
              ("flat", "ankle"): "sneakers", ("low", "ankle"): "clogs", ("high", "ankle"): "stiletto",
              ("flat", "knee"): "rain_boots", ("low", "knee"): "boots", ("high", "knee"): "boots"}


def shoe_paths(items: list[dict], rng) -> list[str]:
    """Paths under images/ named like the release's (womens_<type>/<n // 100>/img_womens_<type>_<n>.jpg)."""
    numbers: dict[str, int] = {}
    paths = []
    for a in items:
        kind = SHOE_TYPES[(a["heel"], a["shaft"])]
        numbers[kind] = numbers.get(kind, 0) + int(rng.integers(1, 4))
        n = numbers[kind]
        paths.append(f"womens_{kind}/{n // 100}/img_womens_{kind}_{n}.jpg")
    return paths


def write_shoes(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """n_images*3 train and n_images eval images; n_triplets train, n_triplets/6 val and
    n_triplets/8 + n_triplets/20 straddling triplets (reference and target in different lists)."""
    n_train, n_eval = n_images * 3, n_images
    train, evals = sample_attributes("shoe", n_train, rng), sample_attributes("shoe", n_eval, rng)
    paths = shoe_paths(train + evals, rng)
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
    return [(f"{n_train} train / {n_eval} eval images; triplets: {counts[0]} train, {counts[1]} val, "
             f"{counts[2] + counts[3]} straddling the two lists (dropped by the split rule)"),
            "val chance " + fmt_chance(chance_recall(n_eval, [1], (1, 10, 50)))]


def f200k_path(folder: str, subs, used_ids: set[int], rng) -> str:
    """A new image path in the Fashion200k layout, its product id unused so far (recorded in used_ids)."""
    while True:
        image_id = int(rng.integers(10_000_000, 99_999_999))
        if image_id not in used_ids:
            used_ids.add(image_id)
            break
    return f"women/{folder}/{pick(list(subs), rng)}/{image_id}/{image_id}_0.jpeg"


def write_fashion200k(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """Per category n_images*4 train and n_images test images (test descriptions shared by
    about two images each); n_triplets test queries over all categories."""
    test_items, summary, used_ids = [], [], set()
    for category, (_, folder, subs, shape_attr, words) in F200K_CATEGORIES.items():
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
                path = f200k_path(folder, subs, used_ids, rng)
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


CIRR_KINDS = ("dress", "shirt", "toptee", "shoe")
CIRR_FOLDERS = {"train": "train", "val": "dev", "test1": "test1"}  # split -> image folder and name prefix
CIRR_PAIRS = [(0, j) for j in range(1, 6)] + [(j, 0) for j in range(1, 6)]  # within a set: base <-> each other


def cirr_set(kind: str, used: set[tuple], rng) -> list[dict]:
    """Six attribute combinations of `kind` unused in the split so far (then recorded in `used`): a base and
    five others, each one or two attributes away from it (the changed ones weighted as in sample_pairs)."""
    names = list(KINDS[kind])
    weights = np.array([CHANGE_WEIGHTS[a] for a in names])
    weights = weights / weights.sum()
    for _ in range(1000):
        base = {a: pick(list(KINDS[kind][a]), rng) for a in names}
        members = [base]
        for _ in range(200):
            if len(members) == 6 or (kind, *base.values()) in used:
                break
            other = dict(base)
            for i in rng.choice(len(names), size=1 + int(rng.random() < 0.45), replace=False, p=weights):
                other[names[i]] = pick([v for v in KINDS[kind][names[i]] if v != base[names[i]]], rng)
            if other not in members and (kind, *other.values()) not in used:
                members.append(other)
        if len(members) == 6:
            used.update((kind, *m.values()) for m in members)
            return members
    raise ValueError(f"too many synthetic CIRR images for the {kind} attribute combinations: use a smaller --n_images")


def write_cirr(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """Image sets of six (img_set: a base and five near it, each one or two attributes away, all of one kind):
    about n_images val and test1 images and 3x that train images; each set gives its base <-> other pairs as
    queries: every one (up to n_triplets in all) for train, four for val and test1 (test1 without targets).
    Within a split no attribute combination repeats, so reference + caption single out the target."""
    summary, pair_id = [], 0
    for split, folder in CIRR_FOLDERS.items():
        n_sets = max(1, n_images * (3 if split == "train" else 1) // 6)
        used, paths, pairs = set(), {}, []
        for set_id in range(n_sets):
            kind = pick(list(CIRR_KINDS), rng)
            attrs = cirr_set(kind, used, rng)
            names = [f"{folder}-{set_id}-{j // 2}-img{j % 2}" for j in range(6)]
            for name, a in zip(names, attrs):
                sub = f"{int(rng.integers(100))}/" if split == "train" else ""  # train/<0..99>/ as in the release
                paths[name] = f"./{folder}/{sub}{name}.png"
                w.image(f"img_raw/{folder}/{sub}{name}.png", kind, a)
            members = shuffled(names, rng)
            for r, t in CIRR_PAIRS if split == "train" else shuffled(CIRR_PAIRS, rng)[:4]:
                changed = tuple(a for a in KINDS[kind] if attrs[r][a] != attrs[t][a])
                caption = captions_for(kind, attrs[r], attrs[t], changed, rng, count=1)[0]
                pairs.append((names[r], names[t], caption, set_id, members))
        pairs = shuffled(pairs, rng)[:n_triplets if split == "train" else None]
        entries = [cirr_entry(pair_id + n, *pair, test=split == "test1") for n, pair in enumerate(pairs)]
        pair_id += len(entries)
        w.text(f"captions/cap.rc2.{split}.json", json.dumps(entries))
        w.text(f"image_splits/split.rc2.{split}.json", json.dumps({n: paths[n] for n in shuffled(list(paths), rng)}))
        line = f"{split}: {len(paths)} images ({n_sets} image sets of six), {len(entries)} queries"
        if split == "val":
            subset = ", ".join(f"Rsubset@{k} {100 * k / 5:.1f}%" for k in (1, 2, 3))
            line += f"; chance {fmt_chance(chance_recall(len(paths), [1], (1, 5, 10, 50)))}, {subset}"
        summary.append(line + ("; no targets (scored by the CIRR evaluation server)" if split == "test1" else ""))
    return summary


def cirr_entry(pair_id: int, reference: str, target: str, caption: str, set_id: int, members: list[str],
               test: bool) -> dict:
    """One annotation with the release's keys in its order; test1 ones carry no target."""
    head = {"pairid": pair_id, "reference": reference}
    if test:
        return {**head, "caption": caption,
                "img_set": {"id": set_id, "members": members, "reference_rank": members.index(reference)}}
    return {**head, "target_hard": target, "target_soft": {target: 1.0}, "caption": caption,
            "img_set": {"id": set_id, "members": members, "reference_rank": members.index(reference),
                        "target_rank": members.index(target)}}


# ---- hard mode (difficulty="hard"; see the changelog in the module docstring) ----
ATTRIBUTES_FILE = "attributes.json"  # hard mode: every image's attributes, for checks; no reader opens it
HARD_KS = (1, 5, 10, 50)


def attributes_json(kinds: dict, records: dict[str, dict]) -> str:
    """The attribute vocabulary, then one image (id -> category, split, attributes) per line."""
    head = json.dumps({"difficulty": "hard", "small_details": sorted(SMALL_DETAILS), "attributes": kinds})
    lines = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in records.items()]
    return head[:-1] + ', "images": {\n' + ",\n".join(lines) + "\n}}\n"


def is_null_caption(caption: str) -> bool:
    return caption.strip().rstrip(".").lower() in NULL_CAPTIONS


def shuffled(items: list, rng) -> list:
    return [items[int(i)] for i in rng.permutation(len(items))]


def edge_pairs(groups: list[Group]) -> list[tuple[int, int, tuple[str, ...]]]:
    return [(r, t, g.changed) for g in groups for r, t in g.edges]


def training_pairs(images: list[dict], groups: list[Group], n: int, rng) -> list[tuple[int, int, tuple[str, ...]]]:
    """The groups' edges, then other pairs of a group differing in one or two attributes, up to n."""
    pairs = edge_pairs(groups)
    extra = shuffled(group_pairs(images, groups, {(r, t) for r, t, _ in pairs}), rng)
    return shuffled(pairs + extra[:max(0, n - len(pairs))], rng)[:n]


def eval_line(attributes: dict, images: list[dict], pairs, gallery_size: int) -> str:
    """Gallery size, chance levels, near-misses per query and the share of small-detail edits."""
    gallery = {tuple(a.values()): i for i, a in enumerate(images)}
    found = [near_misses(gallery, attributes, images[r], images[t]) for r, t, _ in pairs]
    details = sum(a in SMALL_DETAILS for f in found for _, a in f)
    detail_edits = sum(any(a in SMALL_DETAILS for a in changed) for *_, changed in pairs)
    chance = fmt_chance(chance_recall(gallery_size, [1], HARD_KS))
    return (f"gallery {gallery_size}, one target per query: chance {chance}; "
            f"{near_miss_stats([len(f) for f in found], details)}; "
            f"{100 * detail_edits / max(1, len(pairs)):.0f}% of the queries change a small detail")


def write_fashioniq_hard(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """Per category n_images*3/2 train, n_images val, n_images*3/4 test images, in near-miss groups;
    val and test annotations: one per group edge; train: n_triplets annotations (edges, then other
    pairs of a group)."""
    sizes = {"train": n_images * 3 // 2, "val": n_images, "test": max(16, n_images * 3 // 4)}
    shares = {split: Share() for split in sizes}
    summary, records, next_id, null, total = [], {}, 0, 0, 0
    for category in ("dress", "shirt", "toptee"):
        attributes = HARD_KINDS[category]
        for split, n_img in sizes.items():
            images, groups = sample_groups(attributes, n_img, rng, shares[split])
            ids = [f"S{next_id + i:07d}" for i in range(n_img)]
            next_id += n_img
            for image_id, a in zip(ids, images):
                w.image(f"img/{image_id}.jpg", category, a)
                records[image_id] = {"category": category, "split": split, **a}
            pairs = training_pairs(images, groups, n_triplets, rng) if split == "train" else \
                shuffled(edge_pairs(groups), rng)
            annotations = []
            for r, t, changed in pairs:
                captions = hard_captions(category, images[r], images[t], changed, rng, count=2)
                null += any(map(is_null_caption, captions))
                entry = {"target": ids[t], "candidate": ids[r], "captions": captions}
                if split == "test":  # the public test captions carry no target
                    entry = {"candidate": ids[r], "captions": captions}
                annotations.append(entry)
            total += len(annotations)
            w.text(f"annotations/captions/cap.{category}.{split}.json", json.dumps(annotations, indent=4))
            w.text(f"annotations/image_splits/split.{category}.{split}.json", json.dumps(ids, indent=4))
            line = (f"{category} {split}: {n_img} images ({len(groups)} near-miss groups), {len(annotations)} "
                    f"annotations ({2 * len(annotations)} queries)")
            if split == "val":
                line += "; " + eval_line(attributes, images, pairs, n_img)
            summary.append(line)
    summary.append(f"captions: two per annotation; {100 * null / max(1, total):.0f}% of the annotations have one "
                   f"that adds nothing (never both)")
    w.text(ATTRIBUTES_FILE, attributes_json({c: HARD_KINDS[c] for c in ("dress", "shirt", "toptee")}, records))
    return summary


def write_shoes_hard(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """n_images*2 train and n_images eval images, in near-miss groups; n_triplets train triplets,
    one val triplet per eval group edge, and n_triplets/8 + n_triplets/20 straddling ones."""
    attributes = HARD_KINDS["shoe"]
    n_train, n_eval = n_images * 2, n_images
    train, train_groups = sample_groups(attributes, n_train, rng, Share())
    evals, eval_groups = sample_groups(attributes, n_eval, rng, Share())
    paths = shoe_paths(train + evals, rng)
    records = {}
    for i, (path, a) in enumerate(zip(paths, train + evals)):
        w.image(f"images/{path}", "shoe", a)
        records[path.rsplit("/", 1)[1]] = {"split": "train" if i < n_train else "val", **a}
    train_names = [p.rsplit("/", 1)[1] for p in paths[:n_train]]
    eval_names = [p.rsplit("/", 1)[1] for p in paths[n_train:]]
    val_pairs = shuffled(edge_pairs(eval_groups), rng)
    sets = [(train, train, train_names, train_names, training_pairs(train, train_groups, n_triplets, rng)),
            (evals, evals, eval_names, eval_names, val_pairs),
            (train, evals, train_names, eval_names,
             cross_pairs(attributes, train, evals, max(1, n_triplets // 8), rng)),
            (evals, train, eval_names, train_names,
             cross_pairs(attributes, evals, train, max(1, n_triplets // 20), rng))]
    triplets = []
    for ref_attrs, tgt_attrs, ref_names, tgt_names, pairs in sets:
        for r, t, changed in pairs:
            caption = hard_captions("shoe", ref_attrs[r], tgt_attrs[t], changed, rng, count=1)[0]
            triplets.append({"ImageName": tgt_names[t], "ReferenceImageName": ref_names[r], "RelativeCaption": caption})
    triplets = shuffled(triplets, rng)
    w.text("annotations/relative_captions_shoes.json", json.dumps(triplets))
    w.text("annotations/train_im_names.txt", "".join(n + "\n" for n in train_names))
    w.text("annotations/eval_im_names.txt", "".join(n + "\n" for n in eval_names))
    w.text(ATTRIBUTES_FILE, attributes_json({"shoe": attributes}, records))
    counts = [len(pairs) for *_, pairs in sets]
    return [(f"{n_train} train / {n_eval} eval images ({len(train_groups)} / {len(eval_groups)} near-miss groups); "
             f"triplets: {counts[0]} train, {counts[1]} val, {counts[2] + counts[3]} straddling the two lists "
             f"(dropped by the split rule)"),
            "val: " + eval_line(attributes, evals, val_pairs, n_eval),
            "captions: one per triplet, always naming the whole change"]


def write_fashion200k_hard(w: Writer, rng, n_images: int, n_triplets: int) -> list[str]:
    """Per category n_images*4 train images (random descriptions) and n_images test images whose
    n_images/3 descriptions form near-miss groups (the rest of the images repeat a description);
    n_triplets test queries, taken evenly over the groups' edges in both directions."""
    share, records, summary, used_ids = Share(), {}, [], set()
    gallery_size, directed, described = 0, [], {}
    for category, (noun, folder, subs, shape_attr, words) in F200K_CATEGORIES.items():
        (d1, w1), (d2, w2) = F200K_HARD_DETAILS[category]
        attributes = {"colour": COLOUR_NAMES, "pattern": PATTERNS, d1: tuple(w1.values()), d2: tuple(w2.values()),
                      shape_attr: tuple(words.values())}
        word_of = {"colour": {c: c for c in COLOUR_NAMES}, "pattern": F200K_PATTERN_WORDS,
                   d1: {v: k for k, v in w1.items()}, d2: {v: k for k, v in w2.items()},
                   shape_attr: {v: k for k, v in words.items()}}

        def describe(a, word_of=word_of, noun=noun):
            return " ".join(word_of[k][a[k]] for k in word_of) + f" {noun}"

        n_desc = max(8, n_images // 3)
        descs, groups = sample_groups(attributes, n_desc, rng, share, p_two=0.0, near_sizes=(2,))
        combos = [dict(zip(attributes, c)) for c in itertools.product(*attributes.values())]
        extra = [int(i) for i in rng.integers(0, n_desc, max(0, n_images - n_desc))]
        splits = {"train": [combos[int(i)] for i in rng.integers(0, len(combos), n_images * 4)],
                  "test": [descs[i] for i in list(range(n_desc)) + extra]}
        paths_of = {i: [] for i in range(n_desc)}
        test_index = list(range(n_desc)) + extra
        for split, items in splits.items():
            lines = []
            for j, a in enumerate(items):
                path = f200k_path(folder, subs, used_ids, rng)
                w.image(path, f"f200k_{category}", {"sleeves": "short", **a})  # dresses: short sleeves
                lines.append(f"{path}\t{rng.uniform(0.5, 1.0):.6f}\t{describe(a)}\n")
                records[path] = {"category": category, "split": split, **a}
                if split == "test":
                    paths_of[test_index[j]].append(path)
            w.text(f"labels/{category}_{split}_detect_all.txt", "".join(lines))
        gallery_size += len(splits["test"])
        for g in groups:
            for r, t in g.edges:
                directed += [(category, r, t), (category, t, r)]
        described[category] = (attributes, descs, paths_of)
        summary.append(f"{category}: {len(splits['train'])} train / {len(splits['test'])} test images, {n_desc} test "
                       f"descriptions ({len(groups)} near-miss groups)")
    rounds = [shuffled([(s, t) for s in described[c][2][r] for t in described[c][2][t_]], rng)
              for c, r, t_ in directed]
    queries, depth = [], 0
    while len(queries) < n_triplets and any(depth < len(p) for p in rounds):
        for e in rng.permutation(len(directed)):
            if depth < len(rounds[int(e)]) and len(queries) < n_triplets:
                queries.append((directed[int(e)], rounds[int(e)][depth]))
        depth += 1
    w.text("test_queries.txt", "".join(f"{s} {t}\n" for _, (s, t) in queries))
    correct, counts, details, detail_edits = [], [], 0, 0
    for (category, r, t), _ in queries:
        attributes, descs, paths_of = described[category]
        gallery = {tuple(a.values()): i for i, a in enumerate(descs)}
        found = near_misses(gallery, attributes, descs[r], descs[t])
        correct.append(len(paths_of[t]))
        counts.append(sum(len(paths_of[i]) for i, _ in found))
        details += sum(len(paths_of[i]) for i, a in found if a in SMALL_DETAILS)
        detail_edits += any(descs[r][a] != descs[t][a] for a in attributes if a in SMALL_DETAILS)
    w.text(ATTRIBUTES_FILE, attributes_json({c: described[c][0] for c in described}, records))
    summary.append(f"{len(queries)} test queries, {np.mean(correct):.2f} correct targets per query on average, "
                   f"gallery {gallery_size}; chance {fmt_chance(chance_recall(gallery_size, correct, HARD_KS))}")
    summary.append(f"near-miss images (description one other word away): {near_miss_stats(counts, details)}; "
                   f"{100 * detail_edits / max(1, len(queries)):.0f}% of the queries change a small detail")
    return summary


DEFAULTS = {  # dataset -> (n_images, n_triplets), see the module docstring
    "fashioniq": (200, 250), "shoes": (250, 1500), "fashion200k": (60, 300), "cirr": (240, 1200)}
WRITERS = {"fashioniq": write_fashioniq, "shoes": write_shoes, "fashion200k": write_fashion200k, "cirr": write_cirr}
HARD_DEFAULTS = {"fashioniq": (600, 1500), "shoes": (600, 3000), "fashion200k": (200, 600)}
HARD_WRITERS = {"fashioniq": write_fashioniq_hard, "shoes": write_shoes_hard, "fashion200k": write_fashion200k_hard}
DIFFICULTIES = ("easy", "hard")


def generate(out_dir, dataset: str, size: int = 64, seed: int = 0, n_images: int | None = None,
             n_triplets: int | None = None, verbose: bool = False, difficulty: str = "easy",
             photo: tuple[int, int] | None = None) -> Path:
    """Write the synthetic `dataset` under out_dir/<dataset folder>/ and return that folder.

    difficulty "easy" (the default) writes what this module always wrote; "hard" writes the
    near-miss benchmark described in the module docstring. A folder of that name (any case) is
    replaced only if this module wrote it (it holds SYNTHETIC.txt); the new one is built beside
    it and moved into place when complete. `photo` (width, height) writes each image as a product photo of
    that size: the garment drawn at min(width, height) px on a white canvas (the size and aspect ratio of real
    dataset files, for benchmarks of the image path; the pixels the model sees are the same up to scale)."""
    if dataset not in FOLDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(FOLDERS)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {', '.join(DIFFICULTIES)}")
    hard = difficulty == "hard"
    if hard and dataset not in HARD_WRITERS:
        raise ValueError(f"hard mode is written for {', '.join(HARD_WRITERS)}, not {dataset}")
    default_images, default_triplets = (HARD_DEFAULTS if hard else DEFAULTS)[dataset]
    n_images = default_images if n_images is None else n_images
    n_triplets = default_triplets if n_triplets is None else n_triplets
    min_images = 16 if hard else 4
    if n_images < min_images or n_triplets < 1 or size < 16:
        raise ValueError(f"need n_images >= {min_images}, n_triplets >= 1, size >= 16 (got {n_images}, {n_triplets}, "
                         f"{size})")
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
    if photo:
        size = min(photo)
    writer = Writer(partial, size, seed, photo)
    stream = {"fashioniq": 1, "shoes": 2, "fashion200k": 3, "cirr": 4}[dataset]
    rng = np.random.default_rng([seed, stream, 2] if hard else [seed, stream])
    summary = (HARD_WRITERS if hard else WRITERS)[dataset](writer, rng, n_images, n_triplets)
    command = (f"python -m data.synthetic --out DIR --dataset {dataset} --size {size} --seed {seed} "
               f"--n_images {n_images} --n_triplets {n_triplets}" + (" --difficulty hard" if hard else "")
               + (f" --photo {photo[0]}x{photo[1]}" if photo else ""))
    if hard:
        summary = [f"difficulty hard (near-miss groups, small details; see data/synthetic/writers.py); "
                   f"{ATTRIBUTES_FILE} lists every image's attributes"] + summary
    writer.text(MARKER, f"Synthetic {dataset} data written by: {command}\n" + "".join(f"{s}\n" for s in summary))
    for p in existing:
        shutil.rmtree(p)
    partial.rename(out / name)
    if verbose:
        print(f"wrote {out / name} ({writer.count} images)")
        for line in summary:
            print("  " + line)
    return out / name
