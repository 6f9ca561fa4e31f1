"""Fashion200k in the TIRG/ARTEMIS layout.

    fashion200K/labels/<cat>_<split>_detect_all.txt   image path <TAB> detection score <TAB> description
    fashion200K/test_queries.txt                      "<source path> <target path>" per line
    fashion200K/<image path>                          the images, by the paths above

Training pairs are drawn anew each epoch, deterministically from (cfg.seed, epoch):
each image whose description has a sibling differing in exactly one word (same
length, one position) becomes a reference, paired with a random image of a
random sibling description; the text is "replace X with Y". Evaluation uses the
TIRG test queries; every test image with the target's description is a correct
target; the gallery is every test image. There is no val split: "val" reads the
test queries too, as TIRG and ARTEMIS validate on them.
"""
from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from data.base import DatasetFormat, EvalSplit, Query, Triplet, find_child, read_lines, unique
from data.text import tokenize

LABEL_SUFFIX = "_detect_all.txt"


def replacement(source: list[str], target: list[str]) -> tuple[str, str]:
    """(X, Y) of "replace X with Y": the differing position, else the first word missing from the other side."""
    diff = [i for i, (s, t) in enumerate(zip(source, target)) if s != t]
    if len(source) == len(target) and len(diff) == 1:
        return source[diff[0]], target[diff[0]]
    x = next((w for w in source if w not in target), source[-1] if source else "")
    y = next((w for w in target if w not in source), target[-1] if target else "")
    return x, y


class Fashion200k(DatasetFormat):
    name = "fashion200k"
    folder_name = "fashion200K"
    eval_split_names = ("test",)  # "val" is read as "test"
    vocab_specials = ("replace", "with")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.labels = find_child(self.root, "labels") or self.root / "labels"
        if not list(self.labels.glob(f"*_train{LABEL_SUFFIX}")):
            raise FileNotFoundError(f"{self.labels}: no <category>_train{LABEL_SUFFIX} label files; "
                                    f"unpack the Fashion200k labels there")
        self._siblings = None

    def _read(self, split: str) -> list[tuple[str, str, str]]:
        """(image path, description, category) for every labelled image of the split."""
        out = []
        for path in sorted(self.labels.glob(f"*_{split}{LABEL_SUFFIX}")):
            category = path.name[:-len(f"_{split}{LABEL_SUFFIX}")]
            for n, line in enumerate(read_lines(path), 1):
                parts = line.split("\t")
                if len(parts) < 3:
                    raise ValueError(f"{path} line {n}: expected 'image<TAB>score<TAB>description', got {line!r}")
                out.append((parts[0], parts[2].strip(), category))
        return out

    def train_captions(self) -> list[str]:
        return [description for _, description, _ in self._read("train")]

    def _sibling_index(self):
        # Descriptions sharing a key (their words with one position blanked) differ in exactly that word.
        if self._siblings is None:
            images = self._read("train")
            words = {d: tuple(tokenize(d)) for d in unique(d for _, d, _ in images)}
            by_words = defaultdict(list)  # token tuple -> image indices
            for i, (_, d, _) in enumerate(images):
                by_words[words[d]].append(i)
            groups = defaultdict(list)  # key -> token tuples
            for w in by_words:
                for pos in range(len(w)):
                    groups[w[:pos] + (None,) + w[pos + 1:]].append(w)
            keys = defaultdict(list)  # token tuple -> (key, blanked position) of its keys with a sibling
            for key, members in groups.items():
                if len(members) > 1:
                    for w in members:
                        keys[w].append((key, key.index(None)))
            self._siblings = images, words, by_words, groups, keys
        return self._siblings

    def train_triplets(self, epoch: int = 0) -> list[Triplet]:
        images, words, by_words, groups, keys = self._sibling_index()
        rng = random.Random(f"fashion200k:{self.cfg.seed}:{epoch}")  # str seeds hash the same in every process
        out = []
        for path, description, category in images:
            source = words[description]
            if source not in keys:  # no description differs from this one in exactly one word
                continue
            key, pos = rng.choice(keys[source])
            target = source
            while target == source:  # a group has >= 2 distinct members: about two draws
                target = rng.choice(groups[key])
            target_path = images[rng.choice(by_words[target])][0]
            out.append(Triplet(path, f"replace {source[pos]} with {target[pos]}", target_path, category))
        return out

    def eval_splits(self, split: str) -> list[EvalSplit]:
        self._check_eval_split("test" if split == "val" else split)
        images = self._read("test")
        description = {path: d for path, d, _ in images}
        with_description = defaultdict(list)
        for path in unique(p for p, _, _ in images):
            with_description[description[path]].append(path)
        queries, unknown = [], []
        for line in read_lines(find_child(self.root, "test_queries.txt") or self.root / "test_queries.txt"):
            source, target = line.split()[:2]
            if source not in description or target not in description:
                unknown.append(line)
                continue
            x, y = replacement(tokenize(description[source]), tokenize(description[target]))
            queries.append(Query(source, f"replace {x} with {y}", with_description[description[target]], "all"))
        if unknown:
            print(f"{len(unknown)} test queries skipped: image not in the test labels (e.g. {unknown[0]!r})")
        return [EvalSplit("all", queries, unique(p for p, _, _ in images))]

    def image_lists(self) -> dict[tuple[str, str], list[str]]:
        lists = defaultdict(list)
        for split in ("train", "test"):
            for path, _, category in self._read(split):
                lists[(category, split)].append(path)
        return {k: unique(v) for k, v in lists.items()}

    def image_folders(self) -> list[Path]:
        return [self.root]

    def image_path(self, image_id: str) -> Path:
        return self.root / image_id
