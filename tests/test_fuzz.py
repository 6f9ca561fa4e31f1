"""Fuzzing what users hand in: annotation files of every format, config.json, vocabulary files and flags.

Hypothesis generates JSON documents of every shape (None, booleans, numbers, strings, lists and objects,
nested), "near-valid" documents (a valid one with one node replaced, deleted or added), damaged files (a
valid file cut short, arbitrary bytes) and, for the text formats, arbitrary lines. Each is written where
the reader expects it and read through the reader's methods. Every case must either succeed or raise the
project's own `utils.errors.UserError`; a FileNotFoundError is accepted only where the case deleted a
file, and argparse's SystemExit(2) only for a flag value argparse itself rejects. Anything else (a
TypeError, a KeyError, a bare ValueError, ...) is a bug and fails the test.

COUNTS records the generated cases per target; `pytest -s tests/test_fuzz.py` prints them.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import Config, build_parser, given_flags, resolve
from data.formats import open_dataset
from data.text import SPECIALS, Vocabulary, load_vocabulary
from tests.helpers import write_fashion200k, write_fashioniq, write_shoes
from utils.errors import UserError

# about 75 s on 2 cores: in `make test` (CI), not in `make test-fast`
pytestmark = pytest.mark.slow

COUNTS: Counter = Counter()


def fuzz_settings(n: int):
    """`n` examples, no deadline (a shared 2-core machine), no example database written into the checkout."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\ngenerated cases per fuzz target: "
          + ", ".join(f"{target} {n}" for target, n in sorted(COUNTS.items())) + f"; total {sum(COUNTS.values())}")


# ---------------------------------------------------------------- strategies

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
ANY_JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=10)
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\\"), min_size=1, max_size=8)  # image ids
CAPTIONS = st.text(max_size=30)


def paths(doc, prefix=()):
    """Every node of a JSON document, as its key path."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, (*prefix, i))


@st.composite
def near_valid(draw, valid):
    """A valid document (drawn from `valid`) with one node replaced by any JSON value, deleted, or given
    an extra key / item."""
    doc = draw(valid)
    path = draw(st.sampled_from(list(paths(doc))))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    value = draw(ANY_JSON)
    if not path:
        return value if action == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "replace":
        parent[key] = value
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = value
    else:
        parent.insert(draw(st.integers(0, len(parent))), value)
    return doc


def cut_short(document_and_share) -> bytes:
    """A valid document's JSON text, cut after the given share of its bytes (a download that stopped)."""
    document, share = document_and_share
    text = json.dumps(document).encode()
    return text[:int(len(text) * share)]


def file_bytes(valid):
    """The bytes of an annotation file: any JSON document, a near-valid one, a valid one cut short, or
    arbitrary bytes."""
    return st.one_of(
        ANY_JSON.map(lambda doc: json.dumps(doc).encode()),
        near_valid(valid).map(lambda doc: json.dumps(doc).encode()),
        st.tuples(valid, st.floats(0, 1)).map(cut_short),
        st.binary(max_size=40),
    )


def lines_bytes(valid_line):
    """The bytes of a line-oriented text file: near-valid lines and arbitrary text lines, or arbitrary bytes."""
    line = valid_line | st.text(max_size=30)
    return (st.lists(line, max_size=8).map(lambda ls: "".join(f"{x}\n" for x in ls).encode())
            | st.binary(max_size=40))


def outcome(call, deleted: bool = False) -> str:
    """Run a reader call: "ok" or "refused" (UserError; FileNotFoundError only when the case deleted a file).
    Any other exception propagates and fails the test."""
    try:
        call()
        return "ok"
    except UserError:
        return "refused"
    except FileNotFoundError:
        if not deleted:
            raise
        return "refused"


# ---------------------------------------------------------------- FashionIQ

FIQ_ENTRY = st.fixed_dictionaries({"candidate": NAMES, "target": NAMES, "captions": st.lists(CAPTIONS, min_size=2,
                                                                                              max_size=2)})
FIQ_CAPTIONS = st.lists(FIQ_ENTRY, max_size=4)
FIQ_SPLIT = st.lists(NAMES, max_size=5)


def read_fiq(root: Path, deleted: bool = False) -> None:
    fmt = outcome_open(root, "fashioniq", categories="dress")
    if fmt is None:
        return
    for method in (fmt.train_captions, fmt.train_triplets, lambda: fmt.eval_splits("val"), fmt.image_lists):
        outcome(method, deleted)


def outcome_open(root: Path, dataset: str, **kw):
    """open_dataset, or None when it refuses."""
    try:
        return open_dataset(Config(dataset=dataset, data_root=str(root), **kw))
    except UserError:
        return None


@fuzz_settings(500)
@given(data=file_bytes(FIQ_CAPTIONS), which=st.sampled_from(["train", "val", "both"]))
def test_fashioniq_captions_file(data, which):
    COUNTS["fashioniq captions file"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        write_fashioniq(Path(tmp))
        captions = Path(tmp) / "fashionIQ" / "annotations" / "captions"
        for split in (["train", "val"] if which == "both" else [which]):
            (captions / f"cap.dress.{split}.json").write_bytes(data)
        read_fiq(Path(tmp))


@fuzz_settings(400)
@given(data=file_bytes(FIQ_SPLIT), which=st.sampled_from(["train", "val", "delete-val"]))
def test_fashioniq_split_file(data, which):
    COUNTS["fashioniq split file"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        write_fashioniq(Path(tmp))
        split = Path(tmp) / "fashionIQ" / "annotations" / "image_splits" / "split.dress.{}.json"
        if which == "delete-val":
            Path(str(split).format("val")).unlink()
        else:
            Path(str(split).format(which)).write_bytes(data)
        read_fiq(Path(tmp), deleted=which == "delete-val")


# ---------------------------------------------------------------- Shoes

SHOES_RAW_ROW = st.fixed_dictionaries({"ImageName": NAMES, "ReferenceImageName": NAMES, "RelativeCaption": CAPTIONS})
SHOES_RAW = st.lists(SHOES_RAW_ROW, max_size=4)
SHOES_TRIPLET = st.fixed_dictionaries({"reference": NAMES, "target": NAMES, "caption": CAPTIONS}) | SHOES_RAW_ROW
SHOES_TRIPLETS = st.lists(SHOES_TRIPLET, max_size=4)
SHOES_SPLIT = st.lists(NAMES.map(lambda n: f"women/{n}"), max_size=5) | st.lists(NAMES, max_size=5)
SHOES_NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def read_shoes(root: Path, deleted: bool = False) -> None:
    fmt = outcome_open(root, "shoes")
    if fmt is None:
        return
    for method in (fmt.train_captions, fmt.train_triplets, lambda: fmt.eval_splits("val"), fmt.image_lists):
        outcome(method, deleted)


@fuzz_settings(400)
@given(data=file_bytes(SHOES_RAW), names=st.none() | lines_bytes(st.sampled_from(SHOES_NAMES)))
def test_shoes_raw_captions_file(data, names):
    COUNTS["shoes raw relative_captions file (+ name lists)"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{"ImageName": "b.jpg", "ReferenceImageName": "a.jpg", "RelativeCaption": "is red"}]
        ann = write_shoes(Path(tmp), rows, SHOES_NAMES[:2], SHOES_NAMES[2:])
        (ann / "relative_captions_shoes.json").write_bytes(data)
        if names is not None:
            (ann / "eval_im_names.txt").write_bytes(names)
        read_shoes(Path(tmp))


def write_prepared_shoes(root: Path) -> Path:
    ann = root / "shoes" / "annotations"
    ann.mkdir(parents=True)
    for split, (ref, tgt) in (("train", ("a.jpg", "b.jpg")), ("val", ("c.jpg", "d.jpg"))):
        (ann / f"split.{split}.json").write_text(json.dumps([f"women/{ref}", f"women/{tgt}"]))
        (ann / f"triplet.{split}.json").write_text(json.dumps([{"reference": ref, "target": tgt, "caption": "x"}]))
    return ann


def read_prepared_shoes_with(kind: str, which: str, data: bytes) -> None:
    """The prepared Shoes layout with <kind>.<which>.json replaced by `data`, or, for which "delete-<split>",
    with <kind>.<split>.json deleted; then read as read_shoes reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        ann = write_prepared_shoes(Path(tmp))
        deleted = which.startswith("delete-")
        if deleted:
            (ann / f"{kind}.{which.removeprefix('delete-')}.json").unlink()
        else:
            (ann / f"{kind}.{which}.json").write_bytes(data)
        read_shoes(Path(tmp), deleted=deleted)


@fuzz_settings(400)
@given(data=file_bytes(SHOES_TRIPLETS), which=st.sampled_from(["train", "val", "delete-val"]))
def test_shoes_prepared_triplet_file(data, which):
    COUNTS["shoes prepared triplet file"] += 1
    read_prepared_shoes_with("triplet", which, data)


@fuzz_settings(400)
@given(data=file_bytes(SHOES_SPLIT), which=st.sampled_from(["train", "val", "delete-train"]))
def test_shoes_prepared_split_file(data, which):
    COUNTS["shoes prepared split file"] += 1
    read_prepared_shoes_with("split", which, data)


# ---------------------------------------------------------------- Fashion200k

WORDS = st.sampled_from(["red", "blue", "long", "dress", "a-line", "skirt", "top", "."])
DESCRIPTION = st.lists(WORDS, max_size=4).map(" ".join)
F200K_PATHS = st.sampled_from(["women/dresses/1.jpg", "women/dresses/2.jpg", "women/tops/3.jpg"]) | NAMES
LABEL_LINE = st.tuples(F200K_PATHS, st.sampled_from(["0.5", "x", ""]), DESCRIPTION).map("\t".join)
QUERY_LINE = st.tuples(F200K_PATHS, F200K_PATHS).map(" ".join)
TEST_LABELS = {"dress": [("women/dresses/1.jpg", "red dress"), ("women/dresses/2.jpg", "blue dress")]}
TRAIN_LABELS = {"dress": [("women/dresses/1.jpg", "red long dress"), ("women/dresses/2.jpg", "blue long dress")]}


def read_fashion200k(root: Path) -> None:
    fmt = outcome_open(root, "fashion200k")
    if fmt is None:
        return
    for method in (fmt.train_captions, fmt.train_triplets, lambda: fmt.eval_splits("test"), fmt.image_lists):
        outcome(method)


@fuzz_settings(500)
@given(data=lines_bytes(LABEL_LINE), which=st.sampled_from(["train", "test"]))
def test_fashion200k_label_lines(data, which):
    COUNTS["fashion200k label lines"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        write_fashion200k(Path(tmp), TRAIN_LABELS, TEST_LABELS, ["women/dresses/1.jpg women/dresses/2.jpg"])
        (Path(tmp) / "fashion200K" / "labels" / f"dress_{which}_detect_all.txt").write_bytes(data)
        read_fashion200k(Path(tmp))


@fuzz_settings(400)
@given(data=lines_bytes(QUERY_LINE))
def test_fashion200k_test_queries(data):
    COUNTS["fashion200k test_queries lines"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        write_fashion200k(Path(tmp), TRAIN_LABELS, TEST_LABELS, [])
        (Path(tmp) / "fashion200K" / "test_queries.txt").write_bytes(data)
        read_fashion200k(Path(tmp))


# ---------------------------------------------------------------- config.json

CONFIG_FIELDS = {f.name: f for f in fields(Config)}
VALID_CONFIG = st.builds(lambda: Config().to_dict())
# what a hand edit puts in one field: any JSON value, the strings people type, numbers of any size
EDITED_VALUE = (ANY_JSON | st.sampled_from(["no", "false", "true", "abc", "", "1", "0.5", "nan", "inf"])
                | st.integers(-(10 ** 400), 10 ** 400) | st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 63, 1e308])
                | st.floats() | st.booleans())
ONE_FIELD_EDITED = st.tuples(st.sampled_from(sorted(CONFIG_FIELDS)), EDITED_VALUE).map(
    lambda edit: {**Config().to_dict(), edit[0]: edit[1]})


def usable(cfg: Config) -> None:
    """An accepted config is one the commands can use: every value of its field's type, numbers finite,
    and it survives config.json (save and read back)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.type in ("float", float):
            assert math.isfinite(float(value)), (f.name, value)
        if f.type in ("int", int):
            assert isinstance(value, int) and not isinstance(value, bool), (f.name, value)
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@fuzz_settings(1000)
@given(doc=ANY_JSON | near_valid(VALID_CONFIG) | ONE_FIELD_EDITED)
def test_config_json_from_dict(doc):
    COUNTS["config.json: Config.from_dict + validate_values"] += 1
    try:
        cfg = Config.from_dict(doc, "config.json")
        cfg.validate_values()
    except UserError:
        return
    usable(cfg)


@fuzz_settings(800)
@given(base=ANY_JSON | near_valid(VALID_CONFIG) | ONE_FIELD_EDITED,
       explicit=st.fixed_dictionaries({}, optional={"num_workers": st.integers(0, 4), "device": st.just("cpu"),
                                                    "dataset": st.sampled_from(["fashioniq", "shoes"])}))
def test_config_json_resolve(base, explicit):
    """config.resolve as train.py --resume auto and evaluate.py use it: a saved config as the base."""
    COUNTS["config.json: config.resolve (saved config as base)"] += 1
    try:
        cfg = resolve(explicit, base=base, source="config.json")
    except UserError:
        return
    usable(cfg)


# ---------------------------------------------------------------- vocabulary file

VALID_VOCAB = st.lists(st.text(min_size=1, max_size=8), max_size=5, unique=True).map(
    lambda words: {"dataset": "fashioniq", "words_count": len(words),
                   "tokens": [*SPECIALS, *[w for w in words if w not in SPECIALS]]})


@fuzz_settings(500)
@given(data=file_bytes(VALID_VOCAB), through=st.sampled_from(["Vocabulary.load", "load_vocabulary"]))
def test_vocabulary_file(data, through):
    COUNTS["vocabulary file"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fashioniq_vocab.json"
        path.write_bytes(data)
        try:
            if through == "Vocabulary.load":
                vocab = Vocabulary.load(path)
            else:
                vocab = load_vocabulary(Config(dataset="fashioniq", vocab_dir=tmp))
        except UserError:
            return
        assert vocab.tokens[:len(SPECIALS)] == list(SPECIALS)
        vocab.encode("is red <and> has sleeves")


# ---------------------------------------------------------------- flags

GROUPS = "data,model,train,eval,run"
PARSER = build_parser(GROUPS, "")
ARGPARSE_REJECTS = object()


def flag_values(f):
    """Values for one Config field's flag, within and outside its range: ("--name=value" or the bare switch)."""
    name, kind, choices = f.name, f.type if isinstance(f.type, str) else f.type.__name__, f.metadata["choices"]
    if kind == "bool":
        return st.sampled_from([[f"--{name}"], [f"--no-{name}"]])
    if kind == "int":
        values = st.integers(-3, 5) | st.integers(-10 ** 6, 10 ** 6) | st.integers() | st.text(max_size=6)
    elif kind == "float":
        values = (st.floats() | st.sampled_from([-1.0, 0.0, 0.5, 1.0, 3.0, 1e400])
                  | st.integers(-(10 ** 400), 10 ** 400)
                  | st.text(max_size=6))
    elif choices:
        values = st.sampled_from(choices) | st.text(max_size=8)
    else:
        values = st.text(st.characters(exclude_characters="\x00"), max_size=12)  # argv holds no NUL
    return values.map(lambda v: [f"--{name}={v}"])


def parse_and_resolve(argv: list[str]) -> str:
    try:
        args = PARSER.parse_args(argv)
    except SystemExit as stop:
        assert stop.code == 2
        return "argparse"
    try:
        cfg = resolve(given_flags(args))
    except UserError as e:
        return str(e)
    usable(cfg)
    return "ok"


@pytest.mark.parametrize("name", sorted(CONFIG_FIELDS))
@fuzz_settings(40)
@given(data=st.data())
def test_flag_values(name, data, capsys):
    """One flag at a time, every Config field: argparse rejects it, config refuses it naming the flag, or
    it resolves to a usable config."""
    argv = data.draw(flag_values(CONFIG_FIELDS[name]))
    COUNTS["flags (one field at a time)"] += 1
    result = parse_and_resolve(argv)
    capsys.readouterr()  # argparse's usage message
    if result not in ("ok", "argparse"):
        assert f"--{name}" in result, (argv, result)


@fuzz_settings(1000)
@given(data=st.data())
def test_flag_combinations(data, capsys):
    """Several flags at once (the settings that depend on each other: two_stage / finetune_epochs, ...)."""
    names = data.draw(st.lists(st.sampled_from(sorted(CONFIG_FIELDS)), min_size=2, max_size=6, unique=True))
    argv = [a for name in names for a in data.draw(flag_values(CONFIG_FIELDS[name]))]
    COUNTS["flags (several fields)"] += 1
    parse_and_resolve(argv)
    capsys.readouterr()


def test_every_field_is_a_flag():
    """The fuzzed parser exposes every Config field, so test_flag_values covers them all."""
    exposed = {a.dest for a in PARSER._actions if a.dest != "help"}
    assert exposed == set(CONFIG_FIELDS)
