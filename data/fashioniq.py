"""FashionIQ in the ARTEMIS release layout.

    fashionIQ/img/<asin>.jpg            (or images/, resized_images/; .png accepted)
    fashionIQ/annotations/captions/cap.<cat>.<split>.json       [{candidate, target, captions: [c1, c2]}]
    fashionIQ/annotations/image_splits/split.<cat>.<split>.json [asin, ...]
    (captions/ and image_splits/ may also sit directly under fashionIQ/)

Each annotation gives two triplets/queries, its captions joined by " <and> " in
both orders; each category is evaluated against its own gallery, the split's
image list. The test captions carry no targets, so only val can be evaluated.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

from data.base import DatasetFormat, EvalSplit, Query, Triplet, find_child, json_entries, name_list, text_field
from data.text import CAPTION_JOIN
from utils.errors import UserError
from utils.io import read_json

IMAGE_FOLDERS = ("img", "images", "resized_images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class FashionIQ(DatasetFormat):
    name = "fashioniq"
    folder_name = "fashionIQ"
    recall_ks = (10, 50)
    summary_metric = "mR"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.categories = cfg.category_list
        self.caption_orders, self.seed = getattr(cfg, "caption_orders", "both"), getattr(cfg, "seed", 0)
        if not self.categories:
            raise ValueError("--categories is empty; use e.g. dress,shirt,toptee")
        self.captions_dir, self.splits_dir = self._annotation_dirs()
        found = [p for p in (find_child(self.root, n) for n in IMAGE_FOLDERS) if p is not None and p.is_dir()]
        self._folders = found or [self.root / IMAGE_FOLDERS[0]]
        self._images: dict[str, Path] | None = None

    def _annotation_dirs(self) -> tuple[Path, Path]:
        for base in (find_child(self.root, "annotations"), self.root):
            if base is None:
                continue
            captions, splits = find_child(base, "captions"), find_child(base, "image_splits")
            if captions is not None and splits is not None:
                return captions, splits
        raise FileNotFoundError(f"{self.root}: no FashionIQ annotations; looked for annotations/captions/ + "
                                f"annotations/image_splits/ and captions/ + image_splits/ there. Unpack the "
                                f"FashionIQ annotation release into {self.root}")

    def _annotations(self, category: str, split: str) -> list[dict]:
        """The annotation file's entries, each with its two captions checked."""
        path = self.captions_dir / f"cap.{category}.{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found (category {category!r}, split {split!r}); "
                                    f"check --categories (dress,shirt,toptee) and the annotations folder")
        annotations = json_entries(read_json(path), path)
        for i, a in enumerate(annotations):
            captions = a.get("captions")
            if not isinstance(captions, list) or len(captions) != 2 or not all(isinstance(c, str) for c in captions):
                raise UserError(f"{path} entry {i}: field 'captions' must be a list of two strings, "
                                f"got {captions!r:.80}")
        return annotations

    def _split_images(self, category: str, split: str) -> list[str]:
        path = self.splits_dir / f"split.{category}.{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found (category {category!r}, split {split!r})")
        return list(dict.fromkeys(name_list(read_json(path), path)))

    def _pairs(self, category: str, split: str) -> list[tuple[str, str, str]]:
        """(reference, text, target) for each annotation, both caption orders."""
        path = self.captions_dir / f"cap.{category}.{split}.json"
        out = []
        for i, a in enumerate(self._annotations(category, split)):
            if "target" not in a or "candidate" not in a:
                raise UserError(f"{path} entry {i}: no candidate/target image (test captions carry no targets)")
            reference, target = text_field(a, ("candidate",), path, i), text_field(a, ("target",), path, i)
            first, second = (c.strip() for c in a["captions"])
            out += [(reference, first + CAPTION_JOIN + second, target),
                    (reference, second + CAPTION_JOIN + first, target)]
        return out

    def train_captions(self) -> list[str]:
        return [c for cat in self.categories for a in self._annotations(cat, "train") for c in a["captions"]]

    def train_triplets(self, epoch: int = 0) -> list[Triplet]:
        triplets = [Triplet(ref, text, tgt, cat) for cat in self.categories
                    for ref, text, tgt in self._pairs(cat, "train")]
        if self.caption_orders == "both":
            return triplets
        # random4 (CLIP4Cir): each annotation once per epoch as "c1 and c2", "c2 and c1", c1 or c2, drawn anew
        # every epoch (seeded by --seed and the epoch)
        rng = random.Random(self.seed * 1_000_003 + epoch)
        out = []
        for forward in triplets[::2]:
            first, _, second = forward.text.partition(CAPTION_JOIN)
            text = rng.choice([forward.text, second + CAPTION_JOIN + first, first, second])
            out.append(Triplet(forward.reference, text, forward.target, forward.category))
        return out

    def eval_splits(self, split: str) -> list[EvalSplit]:
        if split == "test":
            raise UserError("FashionIQ test captions carry no targets; evaluate on val (--split val)")
        self._check_eval_split(split)
        return [EvalSplit(cat, [Query(ref, text, [tgt], cat) for ref, text, tgt in self._pairs(cat, split)],
                          self._split_images(cat, split))
                for cat in self.categories]

    def image_lists(self) -> dict[tuple[str, str], list[str]]:
        return {(cat, split): self._split_images(cat, split) for cat in self.categories
                for split in ("train", "val", "test") if (self.splits_dir / f"split.{cat}.{split}.json").is_file()}

    def image_folders(self) -> list[Path]:
        return self._folders

    def _index(self) -> dict[str, Path]:
        # One directory listing instead of a stat per image and suffix (FashionIQ has ~77k images).
        if self._images is None:
            self._images = {}
            for folder in reversed(self.image_folders()):  # earlier folders win
                if folder.is_dir():
                    for entry in os.scandir(folder):
                        stem, suffix = os.path.splitext(entry.name)
                        if suffix.lower() in IMAGE_SUFFIXES:
                            self._images[stem] = Path(entry.path)
        return self._images

    def locate_image(self, image_id: str) -> Path:
        return self._index().get(image_id) or self._folders[0] / f"{image_id}.jpg"
