"""Fashion200k in the TIRG/ARTEMIS layout and protocol.

    fashion200K/labels/<cat>_<split>_detect_all.txt   image path <TAB> detection score <TAB> description
    fashion200K/test_queries.txt                      "<source path> <target path>" per line
    fashion200K/<image path>                          the images, by the paths above

Descriptions. A description is the label line's third field, stripped, then post-processed
as the ARTEMIS release does ('.' -> 'dotmark', '?' -> 'questionmark', '&' -> 'andmark',
'*' -> 'starmark'; no lower-casing). Its *words* are `description.split()`: plain whitespace,
so "a-line", "crew-neck" or "black/white" are single words. Descriptions are compared as whole
strings. The vocabulary is built from the descriptions before that post-processing
(`train_captions`), as the release builds it from the raw label files.

Modification text. For a source and a target description the text is "replace X with Y":
X = the first source word (in order) that is not among the target's words, Y = the first
target word that is not among the source's words ("blue a-line dress" -> "blue sheath dress"
gives "replace a-line with sheath"). Fallback, when every word of a side occurs on the
other side (identical descriptions, reordered or repeated words): that side's last word
("" for an empty description), which is what the release's loop leaves behind; e.g.
identical "red dress" -> "red dress" gives "replace dress with dress". Query.text and
Triplet.text hold this raw string; it is tokenised for the model like any caption.

Training pairs (TIRG / ARTEMIS). The *parents* of a description are the strings obtained by
removing one of its words (the remaining words joined by single spaces). Two distinct
descriptions are *siblings* when they share a parent, i.e. removing one word from each gives
the same string (so siblings have the same number of words, but the differing word may sit
at different positions: "red long dress" and "long red dress" are siblings). An image is
*modifiable* when its description has at least one sibling. An epoch has exactly as many
triplets as there are training label lines (images); item i takes image i as the reference
when it is modifiable, otherwise a modifiable image drawn uniformly (the release's
resampling), then a parent of the reference's description shared with a sibling (uniformly),
a description with that parent other than the reference's (uniformly among them), and an
image with that description (uniformly among its label lines). The text is the
modification text above (for ordinary siblings X and Y are the words removed to reach the
shared parent). Draws come from random.Random("fashion200k:<seed>:<epoch>"), so an epoch's
triplets are the same in every process. With no modifiable image an epoch is empty. The
sibling index (dicts keyed by description and parent string) is built once and cached.

Evaluation. The TIRG test queries (test_queries.txt); a query whose source or target path is
not in the test labels is skipped (and counted in a message). A path listed twice takes the
description of its last label line, as the release does. The gallery is every label line of
the test split in file order (label files sorted by name), duplicates included, as in the
release. Query.targets lists, once each, every test image path with a label line carrying
the target's description (all count as correct). There is no val split: "val" reads the
test queries too, as TIRG and ARTEMIS validate on them.
"""
from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from data.base import DatasetFormat, EvalSplit, Query, Triplet, find_child, read_lines, unique
from utils.errors import UserError

LABEL_SUFFIX = "_detect_all.txt"
_MARKS = str.maketrans({".": "dotmark", "?": "questionmark", "&": "andmark", "*": "starmark"})


def post_process(description: str) -> str:
    """The release's description post-processing: strip, then spell out . ? & * as words."""
    return description.strip().translate(_MARKS)


def replacement(source: list[str], target: list[str]) -> tuple[str, str]:
    """(X, Y) of "replace X with Y" for two word lists: the first source word not among the
    target's words and the first target word not among the source's; a side without such a
    word gives its last word ("" when empty)."""
    in_source, in_target = set(source), set(target)
    x = next((w for w in source if w not in in_target), source[-1] if source else "")
    y = next((w for w in target if w not in in_source), target[-1] if target else "")
    return x, y


def modification(source: str, target: str) -> str:
    """"replace X with Y" for two (post-processed) descriptions, words split on whitespace."""
    return "replace {} with {}".format(*replacement(source.split(), target.split()))


def parents(description: str) -> list[str]:
    """The description with one word removed, for each word position, without repeats."""
    words = description.split()
    return unique(" ".join(words[:i] + words[i + 1:]) for i in range(len(words)))


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
        self._index = None

    def _read(self, split: str) -> list[tuple[str, str, str]]:
        """(image path, stripped description, category) for every label line of the split."""
        out = []
        for path in sorted(self.labels.glob(f"*_{split}{LABEL_SUFFIX}")):
            category = path.name[:-len(f"_{split}{LABEL_SUFFIX}")]
            for n, line in enumerate(read_lines(path), 1):
                parts = line.split("\t")
                if len(parts) < 3:
                    raise UserError(f"{path} line {n}: expected 'image<TAB>score<TAB>description', got {line!r:.80}")
                out.append((parts[0], parts[2].strip(), category))
        return out

    def train_captions(self) -> list[str]:
        return [description for _, description, _ in self._read("train")]

    def _sibling_index(self):
        """Built once: (images, their post-processed descriptions, description -> image indices,
        parent -> distinct child descriptions, description -> its parents shared with a sibling,
        indices of the modifiable images)."""
        if self._index is None:
            images = self._read("train")
            descriptions = [post_process(d) for _, d, _ in images]
            by_description = defaultdict(list)
            for i, d in enumerate(descriptions):
                by_description[d].append(i)
            children = defaultdict(list)  # parent -> distinct descriptions, first seen first
            for d in by_description:
                for p in parents(d):
                    children[p].append(d)  # parents(d) has no repeats, so neither has a child list
            shared = {}  # description -> its parents with at least one other child
            for d in by_description:
                ps = [p for p in parents(d) if len(children[p]) > 1]
                if ps:
                    shared[d] = ps
            modifiable = [i for i, d in enumerate(descriptions) if d in shared]
            self._index = images, descriptions, dict(by_description), dict(children), shared, modifiable
        return self._index

    def siblings(self, description: str) -> set[str]:
        """The training descriptions that are siblings of `description` (as written in the labels)."""
        _, _, _, children, shared, _ = self._sibling_index()
        d = post_process(description)
        return {c for p in shared.get(d, ()) for c in children[p]} - {d}

    def train_triplets(self, epoch: int = 0) -> list[Triplet]:
        images, descriptions, by_description, children, shared, modifiable = self._sibling_index()
        if not modifiable:
            return []
        rng = random.Random(f"fashion200k:{self.cfg.seed}:{epoch}")  # str seeds hash the same in every process
        out = []
        for i in range(len(images)):
            source = i if descriptions[i] in shared else modifiable[rng.randrange(len(modifiable))]
            d = descriptions[source]
            group = children[rng.choice(shared[d])]
            c = d
            while c == d:  # the group holds d and at least one other description
                c = rng.choice(group)
            target = by_description[c][rng.randrange(len(by_description[c]))]
            out.append(Triplet(images[source][0], modification(d, c), images[target][0], images[source][2]))
        return out

    def eval_splits(self, split: str) -> list[EvalSplit]:
        self._check_eval_split("test" if split == "val" else split)
        images = [(path, post_process(d)) for path, d, _ in self._read("test")]
        description = dict(images)  # a path listed twice keeps its last line's description
        with_description = defaultdict(list)
        for path, d in images:
            with_description[d].append(path)
        queries, unknown = [], []
        queries_file = find_child(self.root, "test_queries.txt") or self.root / "test_queries.txt"
        for n, line in enumerate(read_lines(queries_file), 1):
            if len(line.split()) < 2:
                raise UserError(f"{queries_file} line {n}: expected '<source image> <target image>', got {line!r:.80}")
            source, target = line.split()[:2]
            if source not in description or target not in description:
                unknown.append(line)
                continue
            queries.append(Query(source, modification(description[source], description[target]),
                                 unique(with_description[description[target]]), "all"))
        if unknown:
            print(f"{len(unknown)} test queries skipped: image not in the test labels (e.g. {unknown[0]!r})")
        return [EvalSplit("all", queries, [path for path, _ in images])]

    def image_lists(self) -> dict[tuple[str, str], list[str]]:
        lists = defaultdict(list)
        for split in ("train", "test"):
            for path, _, category in self._read(split):
                lists[(category, split)].append(path)
        return {k: unique(v) for k, v in lists.items()}

    def image_folders(self) -> list[Path]:
        return [self.root]

    def locate_image(self, image_id: str) -> Path:
        return self.root / image_id
