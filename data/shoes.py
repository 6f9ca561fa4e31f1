"""Shoes (relative captions of the Attribute Discovery images).

    shoes/images/**/<name>.jpg     found recursively by file name
    shoes/annotations/             either the raw release:
        relative_captions_shoes.json  [{ImageName (target), ReferenceImageName, RelativeCaption}]
        train_im_names.txt, eval_im_names.txt   one image file name per line
    or prepared files, one pair per split (train, val):
        split.<split>.json     [image name, ...]   (the split's gallery)
        triplet.<split>.json   [{reference, target, caption}, ...]
    Prepared files may also use the raw keys (ImageName, ReferenceImageName,
    RelativeCaption), and names may be paths relative to images/ (as ARTEMIS's
    preparation script writes them): only the file name is used.

A raw triplet belongs to a split when both its images are in that split's list
(8990 train, 1761 val on the public release). "val" is the eval list; there is
no test split.
"""
from __future__ import annotations

import os
from pathlib import Path

from data.base import (
    DatasetFormat,
    EvalSplit,
    Query,
    Triplet,
    find_child,
    json_entries,
    name_list,
    read_lines,
    text_field,
    unique,
)
from utils.errors import UserError
from utils.io import read_json

RAW_LISTS = {"train": "train_im_names.txt", "val": "eval_im_names.txt"}
RAW_CAPTIONS = "relative_captions_shoes.json"


class Shoes(DatasetFormat):
    name = "shoes"
    folder_name = "shoes"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.annotations = find_child(self.root, "annotations") or self.root / "annotations"
        self.prepared = (self.annotations / "triplet.train.json").is_file()
        if not self.prepared and not (self.annotations / RAW_CAPTIONS).is_file():
            raise FileNotFoundError(f"{self.annotations}: no Shoes annotations; looked for the prepared "
                                    f"split.<split>.json + triplet.<split>.json or the raw release "
                                    f"{RAW_CAPTIONS} + {' + '.join(RAW_LISTS.values())}")
        self.image_dir = find_child(self.root, "images") or self.root / "images"
        self._images: dict[str, Path] | None = None

    def _split_images(self, split: str) -> list[str]:
        if split not in RAW_LISTS:
            raise UserError(f"Shoes has no split {split!r}; it has train and val")
        if self.prepared:
            path = self.annotations / f"split.{split}.json"
            return unique(os.path.basename(n) for n in name_list(read_json(path), path))
        return unique(read_lines(self.annotations / RAW_LISTS[split]))

    def _triplets(self, split: str) -> list[Triplet]:
        path = self.annotations / (f"triplet.{split}.json" if self.prepared else RAW_CAPTIONS)
        triplets = [Triplet(os.path.basename(text_field(r, ("reference", "ReferenceImageName"), path, i)),
                            text_field(r, ("caption", "RelativeCaption"), path, i, allow_empty=True).strip(),
                            os.path.basename(text_field(r, ("target", "ImageName"), path, i)), "shoes")
                    for i, r in enumerate(json_entries(read_json(path), path))]
        if self.prepared:
            return triplets
        members = set(self._split_images(split))  # the raw file holds every split: both images in this one
        return [t for t in triplets if t.reference in members and t.target in members]

    def train_captions(self) -> list[str]:
        return [t.text for t in self._triplets("train")]

    def train_triplets(self, epoch: int = 0) -> list[Triplet]:
        return self._triplets("train")

    def eval_splits(self, split: str) -> list[EvalSplit]:
        if split == "test":
            raise UserError("Shoes has no test split (the release has train and eval lists only); "
                             "evaluate with --split val")
        self._check_eval_split(split)
        queries = [Query(t.reference, t.text, [t.target], t.category) for t in self._triplets(split)]
        return [EvalSplit("shoes", queries, self._split_images(split))]

    def image_lists(self) -> dict[tuple[str, str], list[str]]:
        return {("shoes", split): self._split_images(split) for split in RAW_LISTS}

    def image_folders(self) -> list[Path]:
        return [self.image_dir]

    def locate_image(self, image_id: str) -> Path:
        if self._images is None:  # one walk, sorted so that duplicate names resolve the same way every run
            self._images = {}
            for folder, dirs, files in os.walk(self.image_dir):
                dirs.sort()
                for name in sorted(files):
                    self._images.setdefault(name, Path(folder) / name)
        return self._images.get(image_id) or self.image_dir / image_id
