"""Dataset records, the interface every dataset format implements, and `open_dataset`.

Image ids are what the annotation files use: a FashionIQ asin, a Shoes file name,
a Fashion200k relative path. `image_path(id)` maps one to its file (or to where
the file was expected, when it is missing), never to a file outside the data root.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from utils.errors import UserError


@dataclass(frozen=True)
class Triplet:
    reference: str
    text: str  # as the model reads it: FashionIQ "first <and> second"
    target: str
    category: str


@dataclass
class Query:
    reference: str
    text: str
    targets: list[str]  # every correct target (Fashion200k: all images with the target's description; CIRR test1: [])
    category: str
    subset: list[str] = field(default_factory=list)  # CIRR: the img_set members (reference included) for Recall_subset
    pair_id: str = ""  # CIRR: the annotation's pairid, the key of the evaluation server's files


@dataclass
class EvalSplit:
    category: str
    queries: list[Query]
    gallery: list[str]


def find_child(folder: Path, name: str) -> Path | None:
    """The entry of `folder` called `name`, ignoring case (fashionIQ / FashionIQ / fashioniq)."""
    exact = folder / name
    if exact.exists():
        return exact
    if folder.is_dir():
        for entry in sorted(os.listdir(folder)):
            if entry.lower() == name.lower():
                return folder / entry
    return None


def find_dataset_folder(data_root: str | Path, folder_name: str, dataset: str) -> Path:
    root = Path(data_root).expanduser()
    fix = (f"pass --data_root DIR (or set MANME_DATA_ROOT) to the folder holding {folder_name}/, "
           f"or write synthetic data there with `python -m data.synthetic --out DIR --dataset {dataset}`")
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; {fix}")
    if root.name.lower() == folder_name.lower():  # --data_root pointed at the dataset folder itself
        return root
    found = find_child(root, folder_name)
    if found is None or not found.is_dir():
        present = ", ".join(sorted(os.listdir(root))[:10]) or "nothing"
        raise FileNotFoundError(f"no {folder_name}/ folder (any case) in data root {root} (it holds: {present}); {fix}")
    return found


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-download or fix the file") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def json_entries(data, path: Path) -> list[dict]:
    """An annotation file's entries: a JSON list of objects, or a UserError naming the file and entry."""
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of annotation objects, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise UserError(f"{path} entry {i}: expected an object, got {type(entry).__name__} {entry!r:.60}")
    return data


def text_field(entry: dict, names: tuple[str, ...], path: Path, index: int, allow_empty: bool = False) -> str:
    """The entry's first present field of `names`: a string, non-empty unless `allow_empty` (a caption with no
    usable word is still a caption; an image name is never empty)."""
    for name in names:
        if name in entry:
            value = entry[name]
            if not isinstance(value, str) or not (value.strip() or allow_empty):
                kind = "a string" if allow_empty else "a non-empty string"
                raise UserError(f"{path} entry {index}: field {name!r} must be {kind}, got {value!r:.60}")
            return value
    raise UserError(f"{path} entry {index}: no {' or '.join(repr(n) for n in names)} field")


def name_list(data, path: Path) -> list[str]:
    """An image list file: a JSON list of non-empty strings."""
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of image names, got {type(data).__name__}")
    for i, name in enumerate(data):
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{path} entry {i}: expected an image name (a non-empty string), got {name!r:.60}")
    return data


def unique(items) -> list:
    return list(dict.fromkeys(items))


class DatasetFormat(ABC):
    """One dataset in its on-disk release layout, read at annotation level (no image opened)."""

    name: str  # "fashioniq", "shoes", "fashion200k", "cirr"
    folder_name: str  # its folder under the data root (matched ignoring case)
    eval_split_names: tuple[str, ...] = ("val",)  # splits eval_splits() accepts (CIRR's test1 without targets)
    recall_ks: tuple[int, ...] = (1, 10, 50)  # the published recall cut-offs
    subset_ks: tuple[int, ...] = ()  # the published Recall_subset cut-offs (CIRR: ranking within Query.subset)
    summary_metric: str | None = None  # name of the published summary figure, selection_score (FashionIQ: mR)
    vocab_specials: tuple[str, ...] = ()  # special words added to the vocabulary besides <pad>...<unk>
    submission_note: str = ""  # what to do with submission_files (where to upload them)

    def __init__(self, cfg):
        self.cfg = cfg
        self.root = find_dataset_folder(cfg.data_root, self.folder_name, self.name)
        # what every image path must start with (image_path), as written: links are not followed
        self._root_prefix = os.path.join(os.path.normpath(os.path.abspath(Path(cfg.data_root).expanduser())), "")

    @abstractmethod
    def train_captions(self) -> list[str]:
        """The captions the vocabulary is built from."""

    @abstractmethod
    def train_triplets(self, epoch: int = 0) -> list[Triplet]:
        """Training triplets; Fashion200k draws its pairs from (cfg.seed, epoch)."""

    @abstractmethod
    def eval_splits(self, split: str) -> list[EvalSplit]:
        """One EvalSplit per category, each with its own gallery."""

    @abstractmethod
    def image_lists(self) -> dict[tuple[str, str], list[str]]:
        """(category, split) -> the image ids the split lists (for data.check)."""

    @abstractmethod
    def image_folders(self) -> list[Path]:
        """Where image files are looked for (named in errors)."""

    @abstractmethod
    def locate_image(self, image_id: str) -> Path:
        """The image's file in the format's layout; where it was expected when missing."""

    def image_path(self, image_id: str) -> Path:
        """The image's file; where it was expected when missing. An id that is an absolute path or leads out of
        the data root (`../../outside/x`) is refused, so that an annotation file cannot make a run read any file
        on the machine. The test is on the path as written, links not followed: a symlink the user placed inside
        the root is theirs to place."""
        path = self.locate_image(image_id)
        inside = os.path.normpath(os.path.abspath(path)).startswith(self._root_prefix)
        if not inside or os.path.isabs(image_id) or PurePosixPath(image_id).is_absolute():
            raise UserError(f"{self.name} image id {image_id!r} (in its annotation or split files) leads outside the "
                            f"data root {self._root_prefix.rstrip(os.sep)}: refused; fix or re-download that file")
        return path

    def has_image(self, image_id: str) -> bool:
        return self.image_path(image_id).is_file()

    def split_images(self) -> dict[str, list[str]]:
        """split -> the image ids it uses (its image lists and what its triplets or queries name), in a fixed
        order, each id under the first split that uses it: the images data.prepare caches."""
        images: dict[str, list[str]] = {}
        used = ("train", *self.eval_split_names)
        for (_, split), ids in self.image_lists().items():
            if split in used:  # FashionIQ's test images serve no protocol here
                images.setdefault(split, []).extend(ids)
        images.setdefault("train", []).extend(i for t in self.train_triplets(0) for i in (t.reference, t.target))
        for split in self.eval_split_names:
            for s in self.eval_splits(split):
                images.setdefault(split, []).extend(
                    i for q in s.queries for i in (q.reference, *q.targets, *q.subset))
                images[split].extend(s.gallery)
        seen: set[str] = set()  # an image two splits use is stored once, with the first (Fashion200k's val is test)
        out = {}
        for split, ids in images.items():
            out[split] = [i for i in unique(ids) if i not in seen]
            seen.update(out[split])
        return {split: ids for split, ids in out.items() if ids}

    def selection_keys(self) -> tuple[str, ...]:
        """The figures whose mean is the summary metric and the best-checkpoint criterion: by default every
        published recall ("R@K" of recall_ks; FashionIQ's mR)."""
        return tuple(f"R@{k}" for k in self.recall_ks)

    def selection_score(self, overall: dict[str, float]) -> float:
        """The best checkpoint's criterion (the summary metric's value) from the overall figures."""
        keys = self.selection_keys()
        return sum(overall[k] for k in keys) / len(keys)

    def submission_files(self, split: str, rankings: list[dict]) -> dict[str, dict]:
        """File name -> JSON object, the files an evaluation server scores `split` from (its rankings.jsonl rows);
        {} where this project computes the split's recalls itself."""
        return {}

    def _check_eval_split(self, split: str) -> None:
        if split not in self.eval_split_names:
            raise UserError(f"{self.name} has no evaluation split {split!r}; use --split "
                             f"{' or '.join(self.eval_split_names)}")
