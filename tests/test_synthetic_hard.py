"""The synthetic generator's hard mode: near-misses, small details, caption habits, the three readers.

Everything is checked from what the generator wrote (the readers' view plus attributes.json),
not from the generator's own bookkeeping.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from config import resolve
from data.formats import open_dataset
from data.synthetic import MARKER, generate, main
from data.synthetic.captions import NULL_CAPTIONS, hard_phrases, noun_for, with_form

SIZES = {"fashioniq": dict(n_images=48, n_triplets=60), "shoes": dict(n_images=48, n_triplets=80),
         "fashion200k": dict(n_images=48, n_triplets=60)}
COMMON = dict(size=32, seed=5, difficulty="hard")
FOLDERS = {"fashioniq": "fashionIQ", "shoes": "shoes", "fashion200k": "fashion200K"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hard")
    for dataset, sizes in SIZES.items():
        generate(out, dataset, **COMMON, **sizes)
    return out


def records(root: Path, dataset: str) -> dict:
    return json.loads((root / FOLDERS[dataset] / "attributes.json").read_text())


def reader(root: Path, dataset: str):
    return open_dataset(resolve({"dataset": dataset, "data_root": str(root)}))


def attribute_names(record: dict) -> list[str]:
    return [k for k in record if k not in ("category", "split")]


def near_misses(gallery: list[str], images: dict, reference: str, target: str) -> list[str]:
    """The attribute (one per near-miss) in which each near-miss of the query differs from the target."""
    ref, tgt = images[reference], images[target]
    names = attribute_names(tgt)
    changed = {a for a in names if ref[a] != tgt[a]}
    out = []
    for image in gallery:
        g = images[image]
        differ = [a for a in names if g[a] != tgt[a]]
        if len(differ) == 1 and differ[0] not in changed:
            out.append(differ[0])
    return out


def check_queries(splits, images: dict, small: set) -> tuple[int, int, int, int]:
    """Asserts every query has >= 2 near-misses and a unique target; returns (queries, queries
    changing a small detail, near-misses, near-misses differing in a small detail)."""
    queries = detail_queries = found = detail_found = 0
    for split in splits:
        assert split.queries
        gallery = list(dict.fromkeys(split.gallery))
        for q in split.queries:
            (target,) = q.targets
            assert q.reference in gallery and target in gallery
            misses = near_misses(gallery, images, q.reference, target)
            assert len(misses) >= 2, (q, misses)
            names = attribute_names(images[target])
            same = [g for g in gallery if all(images[g][a] == images[target][a] for a in names)]
            assert same == [target]  # reference + change single out the target
            queries += 1
            detail_queries += any(images[q.reference][a] != images[target][a] for a in names if a in small)
            found += len(misses)
            detail_found += sum(a in small for a in misses)
    return queries, detail_queries, found, detail_found


def test_fashioniq_near_misses_and_small_details(root):
    meta = records(root, "fashioniq")
    small = set(meta["small_details"])
    fiq = reader(root, "fashioniq")
    splits = fiq.eval_splits("val")
    assert [s.category for s in splits] == ["dress", "shirt", "toptee"]
    assert all(len(s.gallery) == SIZES["fashioniq"]["n_images"] for s in splits)
    queries, detail_queries, found, detail_found = check_queries(splits, meta["images"], small)
    assert detail_queries >= 0.4 * queries  # a good share of the edits touch a small detail
    assert detail_found >= 0.5 * found  # near-misses differ in a small detail at least half of the time
    assert "attributes" not in fiq._index()  # the side file is no image


def test_shoes_and_fashion200k_near_misses(root):
    meta = records(root, "shoes")
    (val,) = reader(root, "shoes").eval_splits("val")
    queries, detail_queries, found, detail_found = check_queries([val], meta["images"], set(meta["small_details"]))
    assert queries > 10 and detail_queries >= 0.4 * queries and detail_found >= 0.5 * found

    meta = records(root, "fashion200k")
    images, small = meta["images"], set(meta["small_details"])
    (test,) = reader(root, "fashion200k").eval_splits("test")
    assert test.queries
    detail_queries = 0
    for q in test.queries:
        target = q.targets[0]
        names = attribute_names(images[target])
        same = sorted(p for p in set(test.gallery) if images[p] == images[target])
        assert sorted(q.targets) == same  # every image with the target's attributes counts as correct
        same_category = [p for p in test.gallery if images[p]["category"] == images[target]["category"]]
        misses = near_misses(same_category, images, q.reference, target)
        assert len(misses) >= 2
        changed = [a for a in names if images[q.reference][a] != images[target][a]]
        assert len(changed) == 1  # Fashion200k queries change one word
        detail_queries += changed[0] in small
    assert detail_queries >= 0.3 * len(test.queries)  # queries are drawn from the groups' edges (45 % at full size)


def clean(caption: str) -> str:
    return caption.strip().rstrip(".").lower()


def test_fashioniq_caption_habits(root):
    meta = records(root, "fashioniq")
    images = meta["images"]
    folder = root / "fashionIQ" / "annotations" / "captions"
    annotations = with_null = 0
    texts = Counter()
    for path in sorted(folder.glob("cap.*.json")):
        category = path.name.split(".")[1]
        for a in json.loads(path.read_text()):
            captions = [clean(c) for c in a["captions"]]
            assert len(captions) == 2 and all(captions)
            assert not any(re.search(r"\d", c) for c in captions)  # the tokenizer would drop digits
            null = [c in NULL_CAPTIONS for c in captions]
            assert not all(null)  # adds-nothing captions: never both of an annotation
            annotations += 1
            with_null += any(null)
            texts.update(captions)
            if "target" not in a:
                continue
            ref, tgt = images[a["candidate"]], images[a["target"]]
            joined = " | ".join(captions)
            noun = noun_for(category, tgt)
            for attr in (x for x in attribute_names(tgt) if ref[x] != tgt[x]):
                # the two captions together name every change (a phrase or its "with"/"is ... and" form)
                names = hard_phrases(category, attr, tgt[attr], ref[attr], noun)
                forms = names + [f for f in (with_form(attr, tgt[attr], p) for p in names) if f] + \
                    [p[3:] for p in names if p.startswith("is ")]
                assert any(f.lower() in joined for f in forms), (a, attr)
    assert 0.03 * annotations <= with_null <= 0.2 * annotations
    assert len(texts) > annotations / 2  # paraphrases: many different captions


def test_readers_load_every_hard_format(root):
    for dataset in SIZES:
        fmt = reader(root, dataset)
        triplets = fmt.train_triplets(0)
        assert triplets and all(t.text.strip() for t in triplets)
        assert fmt.train_captions()
        for split in fmt.eval_split_names:
            for s in fmt.eval_splits(split):
                assert s.queries and s.gallery
                for q in s.queries:
                    assert q.reference in s.gallery and all(t in s.gallery for t in q.targets)
        for t in triplets[:50]:
            assert fmt.image_path(t.reference).is_file() and fmt.image_path(t.target).is_file()
        lists = fmt.image_lists()
        assert not any("attributes.json" in i for ids in lists.values() for i in ids)
        meta = records(root, dataset)
        assert set(meta["images"]) >= {i for ids in lists.values() for i in ids}


def test_no_shortcut_from_duplicates_or_roles(root):
    """No two image files are the same bytes; in a FashionIQ val gallery no attribute combination
    repeats, every image is the reference or target of at most one annotation, and nearly all take
    part in one (near-misses are references and targets too, so taking part marks nothing out)."""
    for dataset, folder in FOLDERS.items():
        files = [p for p in (root / folder).rglob("*") if p.suffix in (".jpg", ".jpeg")]
        digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        assert len(digests) == len(files), dataset
    images = records(root, "fashioniq")["images"]
    for s in reader(root, "fashioniq").eval_splits("val"):
        names = attribute_names(images[s.gallery[0]])
        assert len({tuple(images[g][a] for a in names) for g in s.gallery}) == len(s.gallery)
        roles = Counter(i for q in s.queries[::2] for i in (q.reference, q.targets[0]))  # one query per annotation
        assert max(roles.values()) == 1 and len(roles) >= 0.8 * len(s.gallery)


def test_summary_states_sizes_chance_and_near_misses(root):
    for folder in FOLDERS.values():
        marker = (root / folder / MARKER).read_text()
        assert "--difficulty hard" in marker and "gallery" in marker
        assert all(f"R@{k} " in marker for k in (1, 5, 10, 50)), marker
        assert "near-misses per query" in marker


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_hard_is_deterministic_and_seed_dependent(tmp_path):
    small = dict(size=24, n_images=16, n_triplets=12, difficulty="hard")
    for dataset in FOLDERS:
        first = tree_digest(generate(tmp_path / "a", dataset, seed=1, **small))
        assert first == tree_digest(generate(tmp_path / "b", dataset, seed=1, **small)), dataset
        assert first != tree_digest(generate(tmp_path / "c", dataset, seed=2, **small)), dataset
    easy = tree_digest(generate(tmp_path / "easy", "shoes", seed=1, **{**small, "difficulty": "easy"}))
    assert easy != tree_digest(tmp_path / "a" / "shoes")


def test_cli_and_bad_difficulty(tmp_path, capsys):
    main(["--out", str(tmp_path), "--dataset", "shoes", "--size", "24", "--n_images", "16", "--n_triplets", "10",
          "--difficulty", "hard"])
    out = capsys.readouterr().out
    assert "near-misses per query" in out and "R@5" in out
    assert (tmp_path / "shoes" / "attributes.json").is_file()
    with pytest.raises(ValueError, match="difficulty"):
        generate(tmp_path, "shoes", difficulty="medium")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--dataset", "shoes", "--difficulty", "hard", "--n_images", "8"])
