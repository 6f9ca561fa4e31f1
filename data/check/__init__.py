"""The dataset doctor: which listed images are missing or unreadable, and what that costs.

    python -m data.check --dataset fashioniq [--data_root DIR] [--write_missing FILE]

Per category and split: images listed, missing, unreadable (decoded in full, as training and
evaluation decode them: a download cut short fails here, not hours into a run); then the triplets
(train) and queries (evaluation) each problem removes. A triplet needs both images; a query needs
its reference and at least one target.

This package is the check itself (`check_dataset`); the command line is tools.data_commands, run by
data/check/__main__.py, so that the data layer imports nothing above it.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from data.base import DatasetFormat
from data.images import load_image
from utils.io import atomic_write_text

EXIF_ORIENTATION = 274  # the EXIF tag of the camera's rotation; 1 is upright


def image_problem(path: Path) -> tuple[str | None, bool]:
    """(why the image cannot be used, or None when it opens; whether it carries an EXIF rotation). Dataset
    loaders ignore the rotation, as the published pipelines do; the count says how many images that touches."""
    if not path.is_file():
        return "missing", False
    if path.stat().st_size == 0:
        return "empty file (0 bytes)", False
    try:  # every pixel decoded by the loader training uses: PIL's verify() passes a JPEG cut in half
        load_image(path)
        with Image.open(path) as image:
            rotated = image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    except ValueError as e:  # load_image's "<path>: unreadable image (...); re-download it (...)"
        return str(e).removeprefix(f"{path}: ").split("; re-download")[0], False
    except Exception as e:  # PIL raises many types for bad files; any of them makes the image unusable
        return f"{type(e).__name__}: {e}", False
    return None, rotated


def needs(fmt: DatasetFormat) -> dict[tuple[str, str], list[tuple[list[str], list[str]]]]:
    """(category, split) -> per triplet/query: (images all required, images of which one suffices)."""
    out = defaultdict(list)
    for t in fmt.train_triplets(0):
        out[(t.category, "train")].append(([t.reference, t.target], []))
    for split in fmt.eval_split_names:
        for s in fmt.eval_splits(split):
            out[(s.category, split)] += [([q.reference], q.targets) for q in s.queries]
    return out


def _order(key: tuple[str, str]) -> tuple:
    category, split = key
    return category, ("train", "val", "test").index(split) if split in ("train", "val", "test") else 3, split


def check_dataset(fmt: DatasetFormat, write_missing: str | None = None, allow_missing: bool = False) -> int:
    """Print the tables; 0 when every listed image decodes, 1 when some are missing or unreadable (0 with
    `allow_missing`); `write_missing`: also list them in that file."""
    lists, items = fmt.image_lists(), needs(fmt)
    ids = {i for ids in lists.values() for i in ids}
    ids |= {i for rows in items.values() for required, any_of in rows for i in required + any_of}
    print(f"{fmt.name} at {fmt.root}; images searched in {', '.join(map(str, fmt.image_folders()))}")

    paths = {i: fmt.image_path(i) for i in sorted(ids)}
    problem = {i: "missing" for i, p in paths.items() if not p.is_file()}
    rotated = 0
    for i in tqdm([i for i in paths if i not in problem], desc="verifying images", unit="img"):
        why, turned = image_problem(paths[i])
        rotated += turned
        if why is not None:
            problem[i] = why

    def state(i: str) -> str:
        why = problem.get(i)
        return "ok" if why is None else "missing" if why == "missing" else "unreadable"

    print(f"\n{'category':<12}{'split':<7}{'listed':>9}{'missing':>9}{'unreadable':>12}")
    for (category, split), listed in sorted(lists.items(), key=lambda kv: _order(kv[0])):
        states = [state(i) for i in listed]
        print(f"{category:<12}{split:<7}{len(listed):>9}{states.count('missing'):>9}{states.count('unreadable'):>12}")

    print(f"\n{'category':<12}{'split':<7}{'triplets/queries':>18}{'lost: missing':>15}{'lost: unreadable':>18}")
    for (category, split), rows in sorted(items.items(), key=lambda kv: _order(kv[0])):
        lost = defaultdict(int)
        for required, any_of in rows:
            s = [state(i) for i in required]
            if "missing" in s or (any_of and all(state(i) == "missing" for i in any_of)):
                lost["missing"] += 1
            elif "unreadable" in s or (any_of and not any(state(i) == "ok" for i in any_of)):
                lost["unreadable"] += 1
        print(f"{category:<12}{split:<7}{len(rows):>18}{lost['missing']:>15}{lost['unreadable']:>18}")

    n_missing = sum(why == "missing" for why in problem.values())
    print(f"\n{len(ids)} images: {n_missing} missing, {len(problem) - n_missing} unreadable; {rotated} carry an "
          f"EXIF rotation, which training and evaluation ignore as the published pipelines do")
    if write_missing:
        lines = [f"missing\t{paths[i]}" if why == "missing" else f"unreadable\t{paths[i]}\t{why}"
                 for i, why in sorted(problem.items())]
        atomic_write_text(write_missing, "".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} lines to {write_missing}")
    if problem and not allow_missing:
        print(f"{len(problem)} image(s) missing or unreadable: exit status 1 (--allow_missing: 0)", file=sys.stderr)
        return 1
    return 0
