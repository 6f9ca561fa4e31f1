"""Tokenisation and vocabulary; the published vocabulary sizes on the real annotation files."""
import json
import random

import pytest
from nltk.tokenize import word_tokenize

import vocab as vocab_script
from config import Config
from data.text import SPECIALS, Vocabulary, clean_caption, load_vocabulary, tokenize


def test_cleaning_and_tokens():
    assert clean_caption("A/B-c\\d") == "a b c d"
    assert tokenize("3/4 Sleeve-less, RED!! (v-neck) isn't") == ["sleeve", "less", "red", "(", "v", "neck", ")", "isnt"]
    assert tokenize("I cannot wanna") == ["i", "can", "not", "wan", "na"]  # nltk's contraction splits survive
    assert tokenize("") == []


def test_tokenize_equals_nltk_on_cleaned_text():
    rng = random.Random(0)
    pieces = ["cannot", "wanna", "gonna", "gotta", "gimme", "lemme", "(", ")", " ", "-", "/", "\\", "'", ",", ".",
              "Red", "d'ye", "more'n", "'tis", "3", "é", "x"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert tokenize(text) == word_tokenize(clean_caption(text), preserve_line=True), text


def test_vocabulary_encode_decode():
    v = Vocabulary.build(["is red", "Has long sleeves", "is red"])
    assert v.tokens[:5] == list(SPECIALS) and v.pad_id == 0
    assert v.words_count == 5 and len(v) == 10
    ids = v.encode("is red <and> has sleeves")
    assert ids[0] == v.start_id and ids[-1] == v.end_id and ids.count(v.and_id) == 1
    assert v.decode(ids) == "<start> is red <and> has sleeves <end>"
    assert v.encode("is blue")[2] == v.unk_id
    assert v.unknown_words("is blue <and> green") == ["blue", "green"]


def test_fashion200k_specials_not_duplicated():
    v = Vocabulary.build(["dress with belt", "red dress"], extra_specials=("replace", "with"))
    assert v.tokens[5:7] == ["replace", "with"]
    assert v.words_count == 4 and len(v) == 7 + 3  # "with" counted as a word, stored once


def test_save_load_and_errors(tmp_path):
    v = Vocabulary.build(["a b c"])
    v.save(tmp_path / "v.json")
    w = Vocabulary.load(tmp_path / "v.json")
    assert w.tokens == v.tokens and w.words_count == 3
    (tmp_path / "bad.json").write_text('{"tokens": [\n  "<pad>",\n')
    with pytest.raises(ValueError, match=r"bad\.json.*line 3"):
        Vocabulary.load(tmp_path / "bad.json")
    cfg = Config(dataset="shoes", vocab_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="python vocab.py --dataset shoes"):
        load_vocabulary(cfg)


@pytest.mark.parametrize("dataset,words", [("fashioniq", 3775), ("shoes", 1330)])
def test_published_vocabulary_sizes(shared_data, tmp_path, capsys, dataset, words):
    assert vocab_script.main(["--dataset", dataset, "--data_root", str(shared_data), "--vocab_dir", str(tmp_path)]) == 0
    assert f"Vocabulary size: {words} words" in capsys.readouterr().out
    saved = json.loads((tmp_path / f"{dataset}_vocab.json").read_text())
    assert saved["words_count"] == words and saved["tokens"][:5] == list(SPECIALS)


def test_tokenize_equals_nltk_on_real_captions(shared_data):
    rows = json.loads((shared_data / "shoes" / "annotations" / "relative_captions_shoes.json").read_text())
    for caption in [r["RelativeCaption"] for r in rows[::5]]:
        assert tokenize(caption) == word_tokenize(clean_caption(caption), preserve_line=True)


def test_vocab_script_reports_bad_root(tmp_path, capsys):
    assert vocab_script.main(["--dataset", "shoes", "--data_root", str(tmp_path / "nope")]) == 2
    assert "--data_root" in capsys.readouterr().err
