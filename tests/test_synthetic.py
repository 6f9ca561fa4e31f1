"""The synthetic generator writes each dataset's exact on-disk layout, deterministically."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.synthetic import (
    F200K_CATEGORIES,
    KINDS,
    MARKER,
    captions_for,
    differ_by_one_word,
    generate,
    main,
    sample_attributes,
    sample_pairs,
)
from data.synthetic.drawing import DRAWERS, add_details

SMALL = dict(size=32, seed=3, n_images=16, n_triplets=24)
CATEGORIES = ("dress", "shirt", "toptee")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    for dataset in ("fashioniq", "shoes", "fashion200k"):
        generate(out, dataset, **SMALL)
    return out


def test_fashioniq_layout(root):
    folder = root / "fashionIQ"
    for category in CATEGORIES:
        for split in ("train", "val", "test"):
            ids = read_json(folder / "annotations" / "image_splits" / f"split.{category}.{split}.json")
            annotations = read_json(folder / "annotations" / "captions" / f"cap.{category}.{split}.json")
            assert ids and all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)
            assert annotations
            listed = set(ids)
            for a in annotations:
                keys = ["candidate", "captions"] if split == "test" else ["target", "candidate", "captions"]
                assert list(a) == keys  # key order as in the real files; test carries no target
                assert len(a["captions"]) == 2 and all(isinstance(c, str) and c.strip() for c in a["captions"])
                assert a["candidate"] in listed and a.get("target", a["candidate"]) in listed
                assert a.get("target") != a["candidate"]
            for image_id in ids:
                assert (folder / "img" / f"{image_id}.jpg").is_file()
    with Image.open(next((folder / "img").glob("*.jpg"))) as image:
        assert image.format == "JPEG" and image.size == (32, 32) and image.mode == "RGB"
    # indented JSON like the real release
    text = (folder / "annotations" / "captions" / "cap.dress.val.json").read_text()
    assert text.startswith('[\n    {\n        "target"')


def test_shoes_layout(root):
    folder = root / "shoes"
    triplets = read_json(folder / "annotations" / "relative_captions_shoes.json")
    train = (folder / "annotations" / "train_im_names.txt").read_text().splitlines()
    evals = (folder / "annotations" / "eval_im_names.txt").read_text().splitlines()
    assert train and evals and not set(train) & set(evals)
    files = {p.name: p for p in (folder / "images").rglob("*.jpg")}
    assert set(files) == set(train) | set(evals)
    assert all(len(p.relative_to(folder / "images").parts) == 3 for p in files.values())  # nested folders
    assert all(name.startswith("img_womens_") for name in files)
    for t in triplets:
        assert list(t) == ["ImageName", "ReferenceImageName", "RelativeCaption"]
        assert t["ImageName"] in files and t["ReferenceImageName"] in files and t["RelativeCaption"].strip()
    def both(names):
        return sum(t["ImageName"] in names and t["ReferenceImageName"] in names for t in triplets)

    n_train, n_val = both(set(train)), both(set(evals))
    assert n_train > 0 and n_val > 0
    assert 0 < len(triplets) - n_train - n_val  # some straddle the two lists


def test_fashion200k_layout(root):
    folder = root / "fashion200K"
    descriptions = {}
    for split in ("train", "test"):
        for category in F200K_CATEGORIES:
            lines = (folder / "labels" / f"{category}_{split}_detect_all.txt").read_text().splitlines()
            assert lines
            for line in lines:
                path, score, description = line.split("\t")
                assert path.startswith("women/") and path.endswith("_0.jpeg") and (folder / path).is_file()
                assert 0 <= float(score) <= 1 and description.endswith(F200K_CATEGORIES[category][0])
                descriptions[(split, path)] = description
    test = {p: d for (s, p), d in descriptions.items() if s == "test"}
    train = [d for (s, _), d in descriptions.items() if s == "train"]
    queries = [line.split(" ") for line in (folder / "test_queries.txt").read_text().splitlines()]
    assert queries and all(len(q) == 2 for q in queries)
    correct = []
    for source, target in queries:
        assert source in test and target in test
        assert differ_by_one_word(test[source], test[target])
        correct.append(sum(d == test[target] for d in test.values()))
    assert max(correct) > 1  # several gallery images share the target's description
    unique = sorted(set(train))
    one_word = sum(differ_by_one_word(a, b) for i, a in enumerate(unique) for b in unique[i + 1:])
    assert one_word > len(unique)  # plenty of training pairs for the on-the-fly generator


def test_deterministic_and_seed_dependent(root, tmp_path):
    for dataset, folder in (("fashioniq", "fashionIQ"), ("shoes", "shoes"), ("fashion200k", "fashion200K")):
        again = generate(tmp_path / "again", dataset, **SMALL)
        assert again == tmp_path / "again" / folder
        assert tree_digest(again) == tree_digest(root / folder), dataset
    other = generate(tmp_path / "other", "shoes", **{**SMALL, "seed": 4})
    assert tree_digest(other) != tree_digest(root / "shoes")


def test_regenerates_own_output_but_never_a_real_dataset(tmp_path):
    first = generate(tmp_path, "shoes", size=32, n_images=12, n_triplets=10)
    (first / "stale.txt").write_text("left over")
    second = generate(tmp_path, "shoes", size=32, n_images=12, n_triplets=10)
    assert second == first and not (first / "stale.txt").exists() and (first / MARKER).is_file()
    real = tmp_path / "real"
    (real / "FashionIQ").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not written by data.synthetic"):
        generate(real, "fashioniq", size=32, n_images=12, n_triplets=10)
    assert not any(p.name.startswith(".") for p in real.iterdir())


def test_targets_are_determined_by_reference_and_change():
    """In a split, reference + changed attributes single out the target (so R@1 = 1 is reachable)."""
    rng = np.random.default_rng(0)
    for kind in ("dress", "shirt", "toptee", "shoe"):
        images = sample_attributes(kind, 60, rng)
        assert len({tuple(a.values()) for a in images}) == 60  # every combination different
        pairs = sample_pairs(kind, images, images, 40, rng)
        assert len(pairs) == 40
        for r, t, changed in pairs:
            ref, tgt = images[r], images[t]
            assert {a for a in KINDS[kind] if ref[a] != tgt[a]} == set(changed) and 1 <= len(changed) <= 2
            captions = captions_for(kind, ref, tgt, changed, rng, count=2)
            assert len(captions) == 2 and captions[0] != captions[1]


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--dataset", "fashioniq", "--size", "24", "--n_images", "12", "--n_triplets", "6"])
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "fashionIQ" / "annotations" / "captions" / "cap.toptee.val.json").is_file()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--dataset", "fashioniq", "--n_images", "2"])


# sha256 over the annotation, split and label files (every file but the images) of SMALL, per format,
# as written before hard mode existed (2026-11-27): the easy mode's random streams must not move.
EASY_TEXT_DIGESTS = {"fashioniq": "4fc42bf9d82ae56981a91a57115602abfaea4cff587d202df00a17d475c873b8",
                     "shoes": "30a2f7b085c68866e07c86cae81482c5cfb5b0b3596a107dd86c79cf35f1b968",
                     "fashion200k": "3d840b4dae66bd632b486f1696f1f4044756d99865caf8a25c7a1672b8180918"}


def test_easy_mode_unchanged(root, tmp_path):
    for dataset, folder in (("fashioniq", "fashionIQ"), ("shoes", "shoes"), ("fashion200k", "fashion200K")):
        digest = hashlib.sha256()
        for p in sorted((root / folder).rglob("*")):
            if p.is_file() and p.suffix not in (".jpg", ".jpeg"):
                digest.update(str(p.relative_to(root / folder)).encode() + b"\0" + p.read_bytes())
        assert digest.hexdigest() == EASY_TEXT_DIGESTS[dataset], dataset
        assert not (root / folder / "attributes.json").exists()
    explicit = generate(tmp_path, "fashion200k", **SMALL, difficulty="easy")
    assert tree_digest(explicit) == tree_digest(root / "fashion200K")


def test_easy_images_draw_no_details():
    """Hard mode's details draw nothing for easy attributes (and the shirt keeps its buttons)."""
    rng = np.random.default_rng(1)
    for kind in ("dress", "shirt", "toptee", "shoe"):
        for a in sample_attributes(kind, 8, rng):
            shape = DRAWERS[kind](a)
            before = (list(shape.body), list(shape.parts), list(shape.buttons))
            add_details(shape, kind, a)
            assert shape.details == [] and (shape.body, shape.parts, shape.buttons) == before
