"""Fashion200k follows the TIRG / ARTEMIS protocol: whitespace words, parent/sibling pairs,
one triplet per training image, a gallery of every test label line.

Every expected value below is written out by hand from the rules in data/fashion200k.py's docstring.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import Config
from data.fashion200k import Fashion200k, modification, parents, post_process, replacement
from tests.helpers import ROOT, write_fashion200k

# (label file category, path, description): label lines in file order
TRAIN = {
    "dress": [
        ("women/dresses/casual/0/0_0.jpeg", "blue a-line dress"),
        ("women/dresses/casual/1/1_0.jpeg", "blue sheath dress"),
        ("women/dresses/casual/2/2_0.jpeg", "blue a-line dress"),
        ("women/dresses/casual/3/3_0.jpeg", "floral maxi gown with belt"),
        ("women/dresses/casual/4/4_0.jpeg", "sleeveless red dress"),
        ("women/dresses/casual/5/5_0.jpeg", "red maxi dress"),
    ],
    "top": [
        ("women/tops/blouses/6/6_0.jpeg", "red v-neck top"),
        ("women/tops/blouses/7/7_0.jpeg", "red crew-neck top"),
        ("women/tops/blouses/8/8_0.jpeg", "black/white striped top"),
        ("women/tops/blouses/9/9_0.jpeg", "black striped top"),
        ("women/tops/blouses/10/10_0.jpeg", "white striped top"),
        ("women/tops/blouses/11/11_0.jpeg", "grey cropped sweater"),
    ],
}
TRAIN_DESCRIPTION = {path: d for lines in TRAIN.values() for path, d in lines}
N_TRAIN = 12
NOT_MODIFIABLE = {"women/dresses/casual/3/3_0.jpeg", "women/tops/blouses/11/11_0.jpeg"}

SIBLINGS = {
    "blue a-line dress": {"blue sheath dress"},            # parent "blue dress"
    "blue sheath dress": {"blue a-line dress"},
    "sleeveless red dress": {"red maxi dress"},             # parent "red dress", words at different positions
    "red maxi dress": {"sleeveless red dress"},
    "red v-neck top": {"red crew-neck top"},                # parent "red top"
    "red crew-neck top": {"red v-neck top"},
    "black/white striped top": {"black striped top", "white striped top"},  # parent "striped top"
    "black striped top": {"black/white striped top", "white striped top"},
    "white striped top": {"black/white striped top", "black striped top"},
    "floral maxi gown with belt": set(),
    "grey cropped sweater": set(),
}

TRAIN_TEXT = {  # (reference description, target description) -> text, for every ordered sibling pair
    ("blue a-line dress", "blue sheath dress"): "replace a-line with sheath",
    ("blue sheath dress", "blue a-line dress"): "replace sheath with a-line",
    ("sleeveless red dress", "red maxi dress"): "replace sleeveless with maxi",
    ("red maxi dress", "sleeveless red dress"): "replace maxi with sleeveless",
    ("red v-neck top", "red crew-neck top"): "replace v-neck with crew-neck",
    ("red crew-neck top", "red v-neck top"): "replace crew-neck with v-neck",
    ("black/white striped top", "black striped top"): "replace black/white with black",
    ("black striped top", "black/white striped top"): "replace black with black/white",
    ("black/white striped top", "white striped top"): "replace black/white with white",
    ("white striped top", "black/white striped top"): "replace white with black/white",
    ("black striped top", "white striped top"): "replace black with white",
    ("white striped top", "black striped top"): "replace white with black",
}

TEST = {
    "dress": [
        ("women/dresses/t/100.jpeg", "blue a-line dress"),
        ("women/dresses/t/101.jpeg", "blue sheath dress"),
        ("women/dresses/t/102.jpeg", "blue sheath dress"),
        ("women/dresses/t/103.jpeg", "red sheath dress"),
        ("women/dresses/t/101.jpeg", "blue sheath dress"),  # the same line twice: kept twice
    ],
    "top": [
        ("women/tops/t/105.jpeg", "red v-neck top"),
        ("women/tops/t/106.jpeg", "red crew-neck top"),
        ("women/tops/t/107.jpeg", "black/white striped top"),
        ("women/tops/t/108.jpeg", "black striped top"),
        ("women/tops/t/109.jpeg", "red 3.1 top"),
        ("women/tops/t/110.jpeg", "red theory top"),
        ("women/tops/t/111.jpeg", "red v-neck top"),
    ],
}
TEST_QUERIES = [  # (source, target) -> expected text and targets
    ("women/dresses/t/100.jpeg", "women/dresses/t/101.jpeg", "replace a-line with sheath",
     ["women/dresses/t/101.jpeg", "women/dresses/t/102.jpeg"]),
    ("women/dresses/t/100.jpeg", "women/dresses/t/103.jpeg", "replace blue with red",  # two words differ
     ["women/dresses/t/103.jpeg"]),
    ("women/tops/t/105.jpeg", "women/tops/t/106.jpeg", "replace v-neck with crew-neck", ["women/tops/t/106.jpeg"]),
    ("women/tops/t/106.jpeg", "women/tops/t/105.jpeg", "replace crew-neck with v-neck",
     ["women/tops/t/105.jpeg", "women/tops/t/111.jpeg"]),
    ("women/tops/t/107.jpeg", "women/tops/t/108.jpeg", "replace black/white with black", ["women/tops/t/108.jpeg"]),
    ("women/tops/t/109.jpeg", "women/tops/t/110.jpeg", "replace 3dotmark1 with theory", ["women/tops/t/110.jpeg"]),
    ("women/dresses/t/101.jpeg", "women/dresses/t/102.jpeg", "replace dress with dress",  # identical: fallback
     ["women/dresses/t/101.jpeg", "women/dresses/t/102.jpeg"]),
]
GALLERY = ["women/dresses/t/100.jpeg", "women/dresses/t/101.jpeg", "women/dresses/t/102.jpeg",
           "women/dresses/t/103.jpeg", "women/dresses/t/101.jpeg",
           "women/tops/t/105.jpeg", "women/tops/t/106.jpeg", "women/tops/t/107.jpeg", "women/tops/t/108.jpeg",
           "women/tops/t/109.jpeg", "women/tops/t/110.jpeg", "women/tops/t/111.jpeg"]


def write_labels(root: Path) -> Path:
    queries = [f"{s} {t}" for s, t, _, _ in TEST_QUERIES] + ["women/nowhere/1.jpeg women/dresses/t/100.jpeg"]
    return write_fashion200k(root, TRAIN, TEST, queries)


@pytest.fixture
def f200k(tmp_path):
    return Fashion200k(Config(dataset="fashion200k", data_root=str(write_labels(tmp_path)), seed=3))


def test_whitespace_words_and_fallback():
    assert replacement("blue a-line dress".split(), "blue sheath dress".split()) == ("a-line", "sheath")
    assert modification("red v-neck top", "red crew-neck top") == "replace v-neck with crew-neck"
    assert modification("black/white striped top", "black striped top") == "replace black/white with black"
    assert modification("blue a-line dress", "red sheath dress") == "replace blue with red"
    assert modification("red dress", "red dress") == "replace dress with dress"
    assert modification("long red dress", "red long dress") == "replace dress with dress"
    assert modification("red red dress", "blue red dress") == "replace dress with blue"
    assert modification("", "red dress") == "replace  with red"
    assert parents("red red dress") == ["red dress", "red red"]
    assert parents("black/white striped top") == ["striped top", "black/white top", "black/white striped"]
    assert post_process("  3.1 phillip lim & co? top*\n") == "3dotmark1 phillip lim andmark coquestionmark topstarmark"


def test_sibling_sets(f200k):
    for description, expected in SIBLINGS.items():
        assert f200k.siblings(description) == expected, description
    assert f200k.train_captions() == [d for lines in TRAIN.values() for _, d in lines]  # raw, for the vocabulary


def test_epoch_has_one_triplet_per_training_image(f200k):
    triplets = f200k.train_triplets(0)
    assert len(triplets) == N_TRAIN
    order = [path for lines in TRAIN.values() for path, _ in lines]
    for i, t in enumerate(triplets):
        if order[i] not in NOT_MODIFIABLE:
            assert t.reference == order[i]  # a modifiable image is its own item's reference
        assert t.reference not in NOT_MODIFIABLE
        pair = (TRAIN_DESCRIPTION[t.reference], TRAIN_DESCRIPTION[t.target])
        assert pair[1] in SIBLINGS[pair[0]] and t.text == TRAIN_TEXT[pair]
        assert t.category == ("dress" if "/dresses/" in t.reference else "top")


def test_epochs_are_deterministic_and_redrawn(f200k):
    epochs = [f200k.train_triplets(e) for e in range(20)]
    assert epochs[0] == f200k.train_triplets(0)
    again = Fashion200k(Config(dataset="fashion200k", data_root=str(f200k.root.parent), seed=3))
    assert again.train_triplets(5) == epochs[5]
    assert len({tuple(t.target for t in e) for e in epochs}) > 1
    other_seed = Fashion200k(Config(dataset="fashion200k", data_root=str(f200k.root.parent), seed=4))
    assert [other_seed.train_triplets(e) for e in range(20)] != epochs
    drawn = {(TRAIN_DESCRIPTION[t.reference], TRAIN_DESCRIPTION[t.target]) for e in epochs for t in e}
    assert drawn == set(TRAIN_TEXT)  # every sibling pair, and only those, over 20 epochs
    assert {t.target for e in epochs for t in e if TRAIN_DESCRIPTION[t.target] == "blue a-line dress"} == {
        "women/dresses/casual/0/0_0.jpeg", "women/dresses/casual/2/2_0.jpeg"}  # any image of the description


def test_epoch_is_the_same_in_another_process(f200k):
    code = ("import sys; from types import SimpleNamespace; from data.fashion200k import Fashion200k; "
            "f = Fashion200k(SimpleNamespace(data_root=sys.argv[1], dataset='fashion200k', seed=3)); "
            "print([(t.reference, t.text, t.target) for t in f.train_triplets(2)])")
    out = subprocess.run([sys.executable, "-c", code, str(f200k.root.parent)], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == str([(t.reference, t.text, t.target) for t in f200k.train_triplets(2)])


def test_no_modifiable_image_gives_an_empty_epoch(tmp_path):
    write_fashion200k(tmp_path, {"dress": [("a.jpeg", "red long dress"), ("b.jpeg", "blue short gown")]})
    f = Fashion200k(Config(dataset="fashion200k", data_root=str(tmp_path), seed=0))
    assert f.train_triplets(0) == [] and f.siblings("red long dress") == set()


def test_test_queries_and_gallery_with_duplicates(f200k, capsys):
    (split,) = f200k.eval_splits("test")
    assert split.category == "all"
    assert split.gallery == GALLERY  # every label line, the duplicate line included
    assert [(q.reference, q.text, q.targets) for q in split.queries] == [(s, x, ts) for s, _, x, ts in TEST_QUERIES]
    assert "1 test queries skipped" in capsys.readouterr().out
    assert f200k.eval_splits("val")[0].queries == split.queries
