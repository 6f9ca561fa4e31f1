"""CIRR (Composed Image Retrieval on Real-life images), annotation release rc2.

    cirr/captions/cap.rc2.<split>.json      [{pairid, reference, target_hard, target_soft, caption,
                                              img_set: {id, members, reference_rank, target_rank}}]
                                             (test1 entries carry no target_hard, target_soft, target_rank)
    cirr/image_splits/split.rc2.<split>.json {image name: its path under img_raw/, e.g. "./dev/dev-244-0-img0.png"}
    cirr/img_raw/train/<0..99>/, dev/, test1/  the PNG images (an img_raw/ beside cirr/ is read too)
    splits: train, val (its images sit in dev/), test1; folders and files are matched ignoring case.

Triplets and queries: reference + caption -> target_hard (category "all"); the vocabulary comes
from the training captions. Query.subset holds the query's img_set members (six, the reference
among them) and Query.pair_id its pairid.

Protocol (the CIRR authors'): the gallery is every image of the split's image list, the
reference left out of its own ranking; Recall@1/5/10/50 over that gallery, and
Recall_subset@1/2/3 ranking only the img_set members other than the reference. The summary
figure "Avg" is the mean of R@5 and Recall_subset@1 and picks the best checkpoint. test1 has no
public targets: its recalls are computed only by the CIRR evaluation server, from the two files
`submission_files` builds out of the rankings (top 50 of the gallery, top 3 of the subset).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from data.base import DatasetFormat, EvalSplit, Query, Triplet, find_child, json_entries, text_field
from utils.errors import UserError
from utils.io import read_json

VERSION = "rc2"
SPLITS = ("train", "val", "test1")
UNSCORED = ("test1",)  # splits whose targets are not public
SERVER = "https://cirr.cecs.anu.edu.au/"
# the evaluation server's files: metric -> (the rankings.jsonl field they are read from, names kept per pairid)
SUBMISSION = {"recall": ("ranking", 50), "recall_subset": ("subset_ranking", 3)}


class CIRR(DatasetFormat):
    name = "cirr"
    folder_name = "cirr"
    eval_split_names = ("val", "test1")
    recall_ks = (1, 5, 10, 50)
    subset_ks = (1, 2, 3)
    summary_metric = "Avg"
    submission_note = (f"test1 recalls are computed only by the CIRR evaluation server: upload these files to the "
                       f"CIRR test server ({SERVER})")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.captions_dir = find_child(self.root, "captions") or self.root / "captions"
        self.splits_dir = find_child(self.root, "image_splits") or self.root / "image_splits"
        if not self.splits_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: no CIRR annotations; looked for captions/cap.{VERSION}.<split>.json "
                                    f"and image_splits/split.{VERSION}.<split>.json there. Unpack the CIRR "
                                    f"annotation release into {self.root}")
        found = [p for p in (find_child(self.root, "img_raw"), find_child(self.root.parent, "img_raw")) if p]
        self.image_root = next((p for p in found if p.is_dir()), self.root / "img_raw")
        self._relative: dict[str, str] | None = None
        self._folders: dict[PurePosixPath, Path] = {}

    def selection_keys(self) -> tuple[str, ...]:
        return ("R@5", "Rsubset@1")  # the published "Avg"

    def _file(self, folder: Path, name: str, what: str) -> Path:
        path = find_child(folder, name) or folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found ({what}; from the CIRR annotation release)")
        return path

    def _listed_splits(self) -> list[str]:
        """The splits whose image list is present (a copy of the release may lack some)."""
        return [split for split in SPLITS if find_child(self.splits_dir, f"split.{VERSION}.{split}.json")]

    def _split_paths(self, split: str) -> dict[str, str]:
        """Image name -> its path under img_raw/, as the split's image list gives it."""
        path = self._file(self.splits_dir, f"split.{VERSION}.{split}.json", f"the {split} image list")
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a JSON object from image name to its path under img_raw/, "
                            f"got {type(data).__name__}")
        for name, relative in data.items():
            if not (name.strip() and isinstance(relative, str) and relative.strip()):
                raise UserError(f"{path}: entry {name!r}: expected an image name and its path (a non-empty string), "
                                f"got {relative!r:.60}")
        return data

    def _queries(self, split: str) -> list[Query]:
        """The split's annotations as queries: test1 ones without targets."""
        path = self._file(self.captions_dir, f"cap.{VERSION}.{split}.json", f"the {split} captions")
        scored = split not in UNSCORED
        return [Query(text_field(e, ("reference",), path, i),
                      text_field(e, ("caption",), path, i, allow_empty=True).strip(),
                      [text_field(e, ("target_hard",), path, i)] if scored else [], "all",
                      members(e, path, i), pair_id(e, path, i))
                for i, e in enumerate(json_entries(read_json(path), path))]

    def train_captions(self) -> list[str]:
        return [q.text for q in self._queries("train")]

    def train_triplets(self, epoch: int = 0) -> list[Triplet]:
        return [Triplet(q.reference, q.text, q.targets[0], q.category) for q in self._queries("train")]

    def eval_splits(self, split: str) -> list[EvalSplit]:
        if split == "test":
            raise UserError("CIRR's test split is called test1 (--split test1); evaluate on val or test1")
        self._check_eval_split(split)
        return [EvalSplit("all", self._queries(split), list(self._split_paths(split)))]

    def image_lists(self) -> dict[tuple[str, str], list[str]]:
        return {("all", split): list(self._split_paths(split)) for split in self._listed_splits()}

    def image_folders(self) -> list[Path]:
        return [self.image_root]

    def locate_image(self, image_id: str) -> Path:
        if self._relative is None:  # every split's list, read once
            self._relative = {name: relative for split in self._listed_splits()
                              for name, relative in self._split_paths(split).items()}
        relative = PurePosixPath(self._relative.get(image_id, f"{image_id}.png"))
        return self._folder(relative.parent) / relative.name

    def _folder(self, relative: PurePosixPath) -> Path:
        """img_raw/<relative>, each folder matched ignoring case (looked up once per folder)."""
        if relative not in self._folders:
            parent = self.image_root if relative == relative.parent else self._folder(relative.parent)
            self._folders[relative] = find_child(parent, relative.name) or parent / relative.name
        return self._folders[relative]

    def submission_files(self, split: str, rankings: list[dict]) -> dict[str, dict]:
        """test1: the CIRR evaluation server's two files, each {"version", "metric", pairid: [names]}."""
        if split not in UNSCORED:
            return {}
        return {f"cirr_{split}_{metric}.json": {"version": VERSION, "metric": metric,
                                               **{r["pair_id"]: r[field][:n] for r in rankings}}
                for metric, (field, n) in SUBMISSION.items()}


def members(entry: dict, path: Path, index: int) -> list[str]:
    """The entry's img_set members (the reference among them)."""
    img_set = entry.get("img_set")
    found = img_set.get("members") if isinstance(img_set, dict) else None
    if not isinstance(found, list) or not found or not all(isinstance(m, str) and m.strip() for m in found):
        raise UserError(f"{path} entry {index}: field 'img_set' must be an object whose 'members' is a list of image "
                        f"names, got {img_set!r:.80}")
    return found


def pair_id(entry: dict, path: Path, index: int) -> str:
    """The entry's pairid, as the evaluation server's files key it (a string)."""
    value = entry.get("pairid")
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
        raise UserError(f"{path} entry {index}: field 'pairid' must be a whole number (or a string), "
                        f"got {value!r:.60}")
    return str(value)
