"""The three dataset formats at annotation level (no image opened): layouts, protocols, errors."""
import json

import pytest

from data.fashion200k import replacement
from data.formats import open_dataset
from data.text import tokenize
from tests.helpers import dataset_config as cfg
from tests.helpers import write_fashion200k, write_fashioniq, write_shoes

# ---- the real annotation files ----

def test_shoes_real_split_sizes(shared_data):
    shoes = open_dataset(cfg(shared_data, "shoes"))
    assert len(shoes.train_triplets()) == 8990
    (val,) = shoes.eval_splits("val")
    assert len(val.queries) == 1761 and len(val.gallery) == 4658
    with pytest.raises(ValueError, match="no test split"):
        shoes.eval_splits("test")


def test_fashioniq_real_val_protocol(shared_data):
    fiq = open_dataset(cfg(shared_data, "fashioniq"))
    splits = fiq.eval_splits("val")
    assert [s.category for s in splits] == ["dress", "shirt", "toptee"]
    assert [len(s.queries) for s in splits] == [2 * 2017, 2 * 2038, 2 * 1961] == [4034, 4076, 3922]
    assert [len(s.gallery) for s in splits] == [3817, 6346, 5373]
    first, second = splits[0].queries[:2]
    a, b = first.text.split(" <and> ")
    assert second.text == f"{b} <and> {a}" and first.targets == second.targets
    assert len(fiq.train_triplets()) == 2 * (5985 + 5988 + 6027)
    with pytest.raises(ValueError, match="FashionIQ test captions carry no targets; evaluate on val"):
        fiq.eval_splits("test")


# ---- FashionIQ layouts ----

def test_fashioniq_flat_layout_any_case_and_png(tmp_path):
    write_fashioniq(tmp_path, folder="FASHIONiq", nested=False)
    (tmp_path / "FASHIONiq" / "resized_images").mkdir()
    (tmp_path / "FASHIONiq" / "resized_images" / "A1.png").write_bytes(b"x")
    fiq = open_dataset(cfg(tmp_path, "fashioniq", categories="dress"))
    assert fiq.train_captions() == ["is red", "has sleeves", "is blue", " is longer "]
    texts = [t.text for t in fiq.train_triplets()]
    assert texts == ["is red <and> has sleeves", "has sleeves <and> is red",
                     "is blue <and> is longer", "is longer <and> is blue"]
    (val,) = fiq.eval_splits("val")
    assert len(val.queries) == 4 and val.gallery == ["A1", "A2", "A3", "A4"] and val.queries[0].targets == ["A2"]
    assert fiq.image_path("A1").name == "A1.png" and fiq.has_image("A1") and not fiq.has_image("A2")
    # --data_root may also name the dataset folder itself
    assert open_dataset(cfg(tmp_path / "FASHIONiq", "fashioniq", categories="dress")).root == fiq.root


def test_missing_root_and_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*--data_root"):
        open_dataset(cfg(tmp_path / "nowhere", "fashioniq"))
    with pytest.raises(FileNotFoundError, match=r"no fashionIQ/ folder.*data\.synthetic"):
        open_dataset(cfg(tmp_path, "fashioniq"))
    (tmp_path / "fashionIQ").mkdir()
    with pytest.raises(FileNotFoundError, match="annotations/captions/"):
        open_dataset(cfg(tmp_path, "fashioniq"))
    (tmp_path / "shoes").mkdir()
    with pytest.raises(FileNotFoundError, match="relative_captions_shoes.json"):
        open_dataset(cfg(tmp_path, "shoes"))
    (tmp_path / "fashion200k").mkdir()
    with pytest.raises(FileNotFoundError, match="_train_detect_all.txt"):
        open_dataset(cfg(tmp_path, "fashion200k"))


def test_fashioniq_unknown_category_and_malformed_json(tmp_path):
    write_fashioniq(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cap\.coat\.train\.json"):
        open_dataset(cfg(tmp_path, "fashioniq", categories="coat")).train_triplets()
    bad = tmp_path / "fashionIQ" / "annotations" / "captions" / "cap.dress.train.json"
    bad.write_text('[\n  {"candidate": "A1",\n  "target" "A2"}\n]')
    with pytest.raises(ValueError, match=r"cap\.dress\.train\.json: malformed JSON at line 3, column 12"):
        open_dataset(cfg(tmp_path, "fashioniq", categories="dress")).train_triplets()


# ---- Shoes ----

RAW_SHOES = [
    {"ImageName": "b.jpg", "ReferenceImageName": "a.jpg", "RelativeCaption": "is darker"},
    {"ImageName": "x.jpg", "ReferenceImageName": "y.jpg", "RelativeCaption": "has laces"},
    {"ImageName": "a.jpg", "ReferenceImageName": "x.jpg", "RelativeCaption": "crosses splits"},
]


def test_shoes_raw_release_and_recursive_images(tmp_path):
    write_shoes(tmp_path, RAW_SHOES, ["a.jpg", "b.jpg", ""], ["x.jpg", "y.jpg"], folder="Shoes")  # blank line kept
    deep = tmp_path / "Shoes" / "images" / "womens" / "boots" / "0"
    deep.mkdir(parents=True)
    (deep / "a.jpg").write_bytes(b"x")
    shoes = open_dataset(cfg(tmp_path, "shoes"))
    assert [(t.reference, t.target, t.text) for t in shoes.train_triplets()] == [("a.jpg", "b.jpg", "is darker")]
    assert shoes.train_captions() == ["is darker"]
    (val,) = shoes.eval_splits("val")
    assert [(q.reference, q.targets) for q in val.queries] == [("y.jpg", ["x.jpg"])]
    assert val.gallery == ["x.jpg", "y.jpg"]
    assert shoes.image_path("a.jpg") == deep / "a.jpg" and not shoes.has_image("b.jpg")


@pytest.mark.parametrize("keys", [("reference", "target", "caption"),
                                  ("ReferenceImageName", "ImageName", "RelativeCaption")])
def test_shoes_prepared_files(tmp_path, keys):
    ann = tmp_path / "shoes" / "annotations"
    ann.mkdir(parents=True)
    for split, (ref, tgt) in {"train": ("a.jpg", "b.jpg"), "val": ("womens/x/y.jpg", "womens/x/x.jpg")}.items():
        (ann / f"split.{split}.json").write_text(json.dumps([ref, tgt]))
        (ann / f"triplet.{split}.json").write_text(json.dumps([dict(zip(keys, (ref, tgt, "is darker")))]))
    shoes = open_dataset(cfg(tmp_path, "shoes"))
    assert shoes.train_triplets()[0].reference == "a.jpg"
    (val,) = shoes.eval_splits("val")
    assert val.queries[0].reference == "y.jpg" and val.queries[0].targets == ["x.jpg"]
    assert val.gallery == ["y.jpg", "x.jpg"]


# ---- Fashion200k ----

TRAIN_LABELS = {
    "dress": ["red long dress", "blue long dress", "green long dress", "red short dress", "blue short dress",
              "red long dress", "floral maxi gown with belt"],
    "skirt": ["black mini skirt", "white mini skirt", "black pleated skirt"],
}


def fashion200k_labels(root):
    train = {cat: [(f"women/{cat}/{i}/{i}_0.jpeg", d) for i, d in enumerate(descriptions)]
             for cat, descriptions in TRAIN_LABELS.items()}
    test = {"dress": [("women/t/0.jpeg", "red long dress"), ("women/t/1.jpeg", "blue long dress"),
                      ("women/t/2.jpeg", "blue long dress"), ("women/t/3.jpeg", "red short dress")]}
    queries = ["women/t/0.jpeg women/t/1.jpeg", "women/t/3.jpeg women/t/0.jpeg", "women/t/9.jpeg women/t/0.jpeg"]
    return write_fashion200k(root, train, test, queries)


def test_fashion200k_training_pairs(tmp_path):
    f200k = open_dataset(cfg(fashion200k_labels(tmp_path), "fashion200k", seed=3))
    assert f200k.vocab_specials == ("replace", "with")
    description = {f"women/{c}/{i}/{i}_0.jpeg": d for c, ds in TRAIN_LABELS.items() for i, d in enumerate(ds)}
    epoch0 = f200k.train_triplets(0)
    assert epoch0 == f200k.train_triplets(0)  # deterministic for (seed, epoch)
    assert len(epoch0) == 10  # one triplet per training image (TIRG / ARTEMIS epoch length)
    for t in epoch0:
        src, tgt = tokenize(description[t.reference]), tokenize(description[t.target])
        diff = [(a, b) for a, b in zip(src, tgt) if a != b]
        assert len(src) == len(tgt) and len(diff) == 1 and t.text == "replace {} with {}".format(*diff[0])
    epochs = {tuple(t.target for t in f200k.train_triplets(e)) for e in range(6)}
    assert len(epochs) > 1  # pairs are redrawn each epoch


def test_fashion200k_test_queries(tmp_path, capsys):
    f200k = open_dataset(cfg(fashion200k_labels(tmp_path), "fashion200k"))
    (split,) = f200k.eval_splits("test")
    assert split.gallery == [f"women/t/{i}.jpeg" for i in range(4)]
    first, second = split.queries
    assert first.text == "replace red with blue" and first.targets == ["women/t/1.jpeg", "women/t/2.jpeg"]
    assert second.text == "replace short with long" and second.targets == ["women/t/0.jpeg"]
    assert "1 test queries skipped" in capsys.readouterr().out
    assert f200k.eval_splits("val")[0].queries == split.queries  # val reads the test queries
    assert f200k.image_path("women/t/0.jpeg") == f200k.root / "women/t/0.jpeg"


def test_replacement_fallback():
    assert replacement(["red", "dress"], ["blue", "dress"]) == ("red", "blue")
    assert replacement(["red", "long", "dress"], ["blue", "dress"]) == ("red", "blue")
