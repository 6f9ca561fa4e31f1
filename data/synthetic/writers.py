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
`generate` writes these figures to <folder>/SYNTHETIC.txt (the marker that lets a later
run replace the folder; a folder without it is never touched) and prints them if verbose.
The default FashionIQ set takes a few seconds to write. The same seed gives byte-identical files.
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np

from data.synthetic.attributes import COLOUR_NAMES, F200K_CATEGORIES, KINDS, PATTERNS
from data.synthetic.captions import captions_for, differ_by_one_word, f200k_description, pick
from data.synthetic.drawing import render

FOLDERS = {"fashioniq": "fashionIQ", "shoes": "shoes", "fashion200k": "fashion200K"}
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
    return [(f"{n_train} train / {n_eval} eval images; triplets: {counts[0]} train, {counts[1]} val, "
             f"{counts[2] + counts[3]} straddling the two lists (dropped by the split rule)"),
            "val chance " + fmt_chance(chance_recall(n_eval, [1], (1, 10, 50)))]


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
