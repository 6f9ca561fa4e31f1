"""Failure and recovery: the fourteen cases of the "nothing lost" issue, one test (or one parametrised test)
each, numbered as in the table of docs/failures.md ("One owner per run, checked input").

Each case either refuses with one `error: ...` line and exit status 2 (no traceback), warns, or does the
documented thing (moves a run aside, takes over a stale lock, keeps the umask's permissions, reads a
phone photo upright). Commands are run in this process through their `__main__` block (`run_script`),
except where the case needs a second process (the run lock) or a signal (Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import runpy
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from config import Config
from data.formats import open_dataset
from data.text import SPECIALS, Vocabulary
from tests.helpers import (
    ONE_THREAD_ENV,
    ROOT,
    TINY_TRAIN,
    evaluate_in_process,
    run_cli,
    train_in_process,
    write_fashioniq,
    write_image,
)
from utils.errors import UserError

EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------- helpers

def run_script(monkeypatch, capsys, script: str, *argv) -> tuple[int, str, str]:
    """`python <script> <argv>` in this process, through the script's `__main__` block: (exit status,
    stdout, stderr). A `sys.exit("message")` counts as status 1 with the message on stderr, as Python
    reports it."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
    sigterm = signal.getsignal(signal.SIGTERM)
    code = 0   # a script whose __main__ block returns normally
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # evaluate.py installs its own handler
    out, err = capsys.readouterr()
    if isinstance(code, str):
        return 1, out, err + code + "\n"
    return code or 0, out, err


def error_line(code: int, err: str) -> str:
    """The one `error: ...` line a refused command prints, after checking status 2 and no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, f"status {code}, stderr:\n{err}"
    return errors[0]


@contextlib.contextmanager
def manme_warnings():
    """The messages the "manme" logger emits inside the block (whatever handlers earlier tests set up)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("manme")
    handler, level = Keep(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.WARNING) if level else logging.WARNING)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def train_flags(root: Path, vocab_dir: Path, out: Path, *extra) -> list:
    """A one-step FashionIQ run of the tiny model into out/r (no validation)."""
    return ["--dataset", "fashioniq", "--data_root", root, "--vocab_dir", vocab_dir, "--output_dir", out,
            "--exp_name", "r", "--num_epochs", "1", "--max_steps", "1", "--no-validate", *TINY_TRAIN, *extra]


def eval_flags(ckpt: Path, root: Path, out: Path, *extra) -> list:
    return ["--ckpt", ckpt, "--data_root", root, "--device", "cpu", "--num_workers", "0", "--output_dir", out, *extra]


@pytest.fixture(scope="module")
def fiq_vocab(tiny_root, tmp_path_factory) -> Path:
    """A vocabulary folder holding the tiny FashionIQ data's vocabulary (built by vocab.py in this process)."""
    import vocab
    folder = tmp_path_factory.mktemp("failures_vocab")
    assert vocab.main(["--dataset", "fashioniq", "--data_root", str(tiny_root), "--vocab_dir", str(folder)]) == 0
    return folder


def copy_dataset(tiny_root: Path, tmp_path: Path, folder: str = "fashionIQ") -> Path:
    """A private copy of one tiny dataset (to edit), as a data root."""
    shutil.copytree(tiny_root / folder, tmp_path / "data" / folder)
    return tmp_path / "data"


# ---------------------------------------------------------------- 1. an existing run folder

@pytest.mark.slow
def test_01_existing_run_needs_resume_or_overwrite(tiny_root, fiq_vocab, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    old_log = runs / "r" / "stage1" / "train_log.jsonl"
    old_log.parent.mkdir(parents=True)
    old_log.write_text('{"step": 1, "loss": 1.5}\n')
    code, _, err = run_script(monkeypatch, capsys, "train.py", *train_flags(tiny_root, fiq_vocab, runs))
    line = error_line(code, err)
    assert "already holds a run (stage1/train_log.jsonl)" in line
    assert "--resume auto" in line and "--overwrite" in line
    assert old_log.read_text() == '{"step": 1, "loss": 1.5}\n' and not (old_log.parent / "last.pt").exists()

    train_in_process(*train_flags(tiny_root, fiq_vocab, runs, "--overwrite"))
    (aside,) = runs.glob("r.old-*")
    assert re.fullmatch(r"r\.old-\d{8}-\d{6}", aside.name)
    assert (aside / "stage1" / "train_log.jsonl").read_text() == '{"step": 1, "loss": 1.5}\n', "old run lost"
    assert "--overwrite: moved the previous run" in capsys.readouterr().out
    assert (runs / "r" / "stage1" / "last.pt").is_file()


# ---------------------------------------------------------------- 2. two trainers, one run folder

@pytest.mark.slow
def test_02_second_trainer_is_refused_and_a_stale_lock_is_taken_over(tiny_root, fiq_vocab, tmp_path, capsys):
    from utils.runlock import RunLock
    runs = tmp_path / "runs"
    lock = RunLock(runs / "r")
    assert lock.acquire() is None
    try:
        proc = run_cli("train.py", *train_flags(tiny_root, fiq_vocab, runs), check=False, env=ONE_THREAD_ENV)
    finally:
        lock.release()
    line = error_line(proc.returncode, proc.stderr)
    assert f"{runs / 'r'} is in use by" in line and f'"pid": {os.getpid()}' in line and "--exp_name" in line
    assert not (runs / "r" / "stage1").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "2026-01-01 00:00:00"}))
    train_in_process(*train_flags(tiny_root, fiq_vocab, runs))
    out = capsys.readouterr().out
    assert "took over the lock left by" in out and f'"pid": {dead.pid}' in out and "has ended" in out
    assert (runs / "r" / "stage1" / "last.pt").is_file()
    assert lock.path.read_text() == "", "the lock is released at the end"


# ---------------------------------------------------------------- 3. evaluation overrides the checkpoint fixes

@pytest.mark.slow
@pytest.mark.parametrize("flag,value,saved", [("--dataset", "shoes", "fashioniq"), ("--crop_size", "64", "32")],
                         ids=["dataset", "crop_size"])
def test_03_evaluate_refuses_another_dataset_or_crop(ckpt, tiny_root, tmp_path, monkeypatch, capsys,
                                                     flag, value, saved):
    code, _, err = run_script(monkeypatch, capsys, "evaluate.py",
                              *eval_flags(ckpt, tiny_root, tmp_path / "eval", flag, value))
    line = error_line(code, err)
    assert f"{flag} {value}: {ckpt} was trained with {flag} {saved}" in line and f"drop {flag}" in line
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------- 4. a vocabulary that does not fit the data

@pytest.mark.slow
@pytest.mark.parametrize("kind,expected", [
    ("another-dataset", "was built from the shoes captions, not fashioniq's"),
    ("specials-only", "holds only the special tokens, no word"),
    ("non-string-tokens", "not a vocabulary file (vocabulary tokens must be a list of strings)"),
], ids=["another-dataset", "specials-only", "non-string-tokens"])
def test_04_vocabulary_that_does_not_fit_is_refused(tiny_root, tmp_path, monkeypatch, capsys, kind, expected):
    import vocab
    folder = tmp_path / "v"
    folder.mkdir()
    if kind == "another-dataset":
        assert vocab.main(["--dataset", "shoes", "--data_root", str(tiny_root), "--vocab_dir", str(tmp_path)]) == 0
        shutil.copy(tmp_path / "shoes_vocab.json", folder / "fashioniq_vocab.json")
    else:
        tokens = list(SPECIALS) if kind == "specials-only" else [*SPECIALS, "red", 7, None]
        (folder / "fashioniq_vocab.json").write_text(json.dumps({"dataset": "fashioniq", "words_count": 0,
                                                                 "tokens": tokens}))
    code, _, err = run_script(monkeypatch, capsys, "train.py", *train_flags(tiny_root, folder, tmp_path / "runs"))
    line = error_line(code, err)
    assert "fashioniq_vocab.json" in line and expected in line and "vocab.py" in line
    assert not list((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.slow
def test_04_mostly_unknown_words_warn(tiny_root, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    words = ["is", "red", "and", "has", "long", "sleeves"]   # a tenth of the tiny captions' words, or fewer
    (folder / "fashioniq_vocab.json").write_text(json.dumps({"dataset": "fashioniq", "words_count": len(words),
                                                             "tokens": [*SPECIALS, *words]}))
    train_in_process(*train_flags(tiny_root, folder, tmp_path / "runs"))
    log = (tmp_path / "runs" / "r" / "train.log").read_text()   # train.py logs to the run's train.log too
    (warning,) = re.findall(r"([\d.]+) % of the training captions' words are not in (\S+) and are read as <unk>", log)
    assert float(warning[0]) > 5 and warning[1] == str(folder / "fashioniq_vocab.json")
    assert "Rebuild it with vocab.py" in log


# ---------------------------------------------------------------- 5. permissions of atomically written files

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_05_atomic_files_get_the_umask_permissions(tmp_path, umask, mode):
    from engine.checkpoint import save_checkpoint
    from tools.figures import save_png
    from tools.search_index import SearchIndex, save_index
    from utils.io import atomic_write, atomic_write_json
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(2)}, "config": {}})
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}, "config": {}})  # and last.prev.pt
        Config().save(tmp_path / "config.json")
        atomic_write_json(tmp_path / "metrics.json", {"R@10": 1.0})
        atomic_write(tmp_path / "rankings.jsonl", lambda f: f.write('{"query": 0}\n'))
        Vocabulary.build(["is red"]).save(tmp_path / "vocab.json")
        save_index(SearchIndex(root=str(tmp_path), paths=["a.jpg"], embeddings={"coarse": torch.ones(1, 4)},
                               checkpoint={"path": "x", "sha256": "0" * 64}, crop_size=32), tmp_path / "index.pt")
        save_png(Image.new("RGB", (4, 4)), tmp_path / "figure.png")
    finally:
        os.umask(previous)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["config.json", "figure.png", "index.pt", "last.prev.pt", "last.pt", "metrics.json",
                       "rankings.jsonl", "vocab.json"]
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{path.name}: {oct(path.stat().st_mode)}"


# ---------------------------------------------------------------- 6. a hand-edited config.json

@pytest.mark.parametrize("edit,expected", [
    ({"two_stage": "no"}, "--two_stage 'no': expected true or false, got str"),
    ({"validate": "false"}, "--validate 'false': expected true or false, got str"),
    ({"num_epochs": "abc"}, "--num_epochs 'abc': expected a whole number, got str"),
    ({"lr": None}, "--lr None: expected a number, got NoneType"),
    ({"lr_rate": 0.1, "epochs": 3}, "config.json: unknown setting(s) epochs, lr_rate"),
    ([], "config.json: expected a JSON object of settings, got list"),
], ids=["two_stage-no", "validate-false", "num_epochs-abc", "lr-null", "unknown-keys", "not-an-object"])
def test_06_hand_edited_config_json(tmp_path, monkeypatch, capsys, edit, expected):
    runs = tmp_path / "runs"
    saved = Config(data_root=str(tmp_path / "data"), output_dir=str(runs), exp_name="r").to_dict()
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "config.json").write_text(json.dumps({**saved, **edit} if isinstance(edit, dict) else edit))
    code, _, err = run_script(monkeypatch, capsys, "train.py", "--output_dir", runs, "--exp_name", "r",
                              "--resume", "auto")
    assert expected in error_line(code, err)
    assert sorted(p.name for p in (runs / "r").iterdir()) == ["config.json"]


# ---------------------------------------------------------------- 7. annotation files of the wrong shape

GOOD = [{"candidate": "A1", "target": "A2", "captions": ["is red", "has sleeves"]},
        {"candidate": "A2", "target": "A3", "captions": ["is blue", "is longer"]}]


def second_entry(**changes):
    entry = {**GOOD[1], **changes}
    return [GOOD[0], {k: v for k, v in entry.items() if v is not ...}]


@pytest.mark.parametrize("document,expected", [
    (second_entry(captions=None), "entry 1: field 'captions' must be a list of two strings, got None"),
    (second_entry(captions=[1, 2]), "entry 1: field 'captions' must be a list of two strings, got [1, 2]"),
    (second_entry(captions="is blue"), "entry 1: field 'captions' must be a list of two strings, got 'is blue'"),
    (second_entry(captions=...), "entry 1: field 'captions' must be a list of two strings, got None"),
    ([GOOD[0], None], "entry 1: expected an object, got NoneType"),
    ({"0": GOOD[0]}, ": expected a JSON list of annotation objects, got dict"),
    (second_entry(target=None), "entry 1: field 'target' must be a non-empty string, got None"),
], ids=["captions-null", "captions-numbers", "captions-one-string", "captions-missing", "entry-null",
        "dict-not-list", "target-null"])
def test_07_annotation_of_the_wrong_shape(tmp_path, capsys, document, expected):
    from data import check
    write_fashioniq(tmp_path, annotations=document)
    path = tmp_path / "fashionIQ" / "annotations" / "captions" / "cap.dress.train.json"
    fmt = open_dataset(Config(dataset="fashioniq", data_root=str(tmp_path), categories="dress"))
    with pytest.raises(UserError) as error:
        fmt.train_triplets()
    assert str(error.value).startswith(str(path)) and expected in str(error.value)
    capsys.readouterr()
    code = check.main(["--dataset", "fashioniq", "--data_root", str(tmp_path), "--categories", "dress"])
    line = error_line(code, capsys.readouterr().err)
    assert str(path) in line and expected in line


# ---------------------------------------------------------------- 8. output paths checked before the work

@pytest.mark.parametrize("script,argv,expected", [
    ("retrieve.py", ["index", "--ckpt", "{missing}", "--images", "{images}", "--out", "{folder}"],
     "--out {folder}: is a folder"),
    ("visualize.py", ["retrievals", "--ckpt", "{missing}", "--out", "{folder}"], "--out {folder}: is a folder"),
    ("data/check.py", ["--dataset", "fashioniq", "--data_root", "{nodata}", "--write_missing", "{folder}"],
     "--write_missing {folder}: is a folder"),
    ("vocab.py", ["--dataset", "fashioniq", "--data_root", "{nodata}", "--vocab_dir", "{file}"],
     "--vocab_dir {file}: is a file, not a folder"),
], ids=["retrieve-index-out", "visualize-out", "data.check-write_missing", "vocab-vocab_dir"])
def test_08_output_paths_are_checked_before_the_work(tmp_path, monkeypatch, capsys, script, argv, expected):
    # the checkpoint and the data root do not exist: the error is about the output, so it was checked first
    names = {"missing": tmp_path / "missing.pt", "images": tmp_path / "images", "folder": tmp_path / "out",
             "nodata": tmp_path / "nodata", "file": tmp_path / "afile"}
    write_image(names["images"] / "a.jpg")
    names["folder"].mkdir()
    names["file"].write_text("not a folder")
    code, _, err = run_script(monkeypatch, capsys, script, *(a.format(**names) for a in argv))
    assert expected.format(**names) in error_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "images", "out"]
    assert not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- 9. a damaged search index

def index_state(root: Path, paths: list[str], embeddings: dict) -> dict:
    from tools.search_index import FORMAT, VERSION
    return {"format": FORMAT, "version": VERSION, "root": str(root), "paths": paths, "embeddings": embeddings,
            "checkpoint": {"path": "best.pt", "sha256": "0" * 64, "model": "manme", "dataset": "fashioniq"},
            "crop_size": 32, "skipped": []}


@pytest.mark.parametrize("paths,embeddings,expected", [
    (["a.jpg", "b.jpg"], {"coarse": torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])},
     "coarse embeddings hold NaN or infinite values"),
    (["a.jpg", "b.jpg"], {"coarse": torch.ones(1, 4)}, "1 coarse embeddings for 2 image paths"),
    (["a.jpg"], {"coarse": torch.ones(1, 4), "mid": torch.ones(1, 8)}, "embeddings of different widths [4, 8]"),
], ids=["nan", "fewer-rows-than-paths", "mixed-widths"])
def test_09_damaged_search_index(tmp_path, paths, embeddings, expected):
    from tools.search_index import load_index
    path = tmp_path / "index.pt"
    torch.save(index_state(tmp_path, paths, embeddings), path)
    with pytest.raises(UserError) as error:
        load_index(path)
    assert str(error.value).startswith(f"{path}: ") and expected in str(error.value)
    assert "retrieve.py index" in str(error.value)


def test_09_index_of_another_width_than_the_model(tmp_path):
    from models import build_model
    from tools.search_index import SearchIndex, search
    cfg = Config(backbone="resnet18", backbone_weights="none", crop_size=32, embed_dim=64, word_dim=32)
    vocab = Vocabulary.build(["is red"])
    model = build_model(cfg, len(vocab)).eval()
    image = write_image(tmp_path / "a.jpg")
    index = SearchIndex(root=str(tmp_path), paths=["a.jpg"], embeddings={g: torch.ones(1, 32) for g in model.grains},
                        checkpoint={"path": "x", "sha256": "0" * 64}, crop_size=32)
    with pytest.raises(UserError, match="the index's embeddings are not 64 wide like this model's"):
        search(model, vocab, index, image, "is red", 1, torch.device("cpu"))


# ---------------------------------------------------------------- 10. flags without range checks

@pytest.mark.parametrize("argv,expected", [
    (["--log_every", "0"], "--log_every must be positive, got 0"),
    (["--gem_p", "0"], "--gem_p must be positive, got 0.0"),
    (["--max_steps", "-1"], "--max_steps must be at least 0, got -1"),
    (["--two_stage", "--finetune_epochs", "0"], "--finetune_epochs 0: stage 2 needs at least one epoch"),
    (["--save_every_steps", "-3"], "--save_every_steps must be at least 0, got -3"),
    (["--exp_name", ""], "--exp_name '': give a plain folder name"),
    (["--exp_name", "../../x"], "--exp_name '../../x': give a plain folder name"),
], ids=["log_every-0", "gem_p-0", "max_steps-neg", "two_stage-finetune_epochs-0", "save_every_steps-neg",
        "exp_name-empty", "exp_name-path"])
def test_10_flag_out_of_range(tmp_path, monkeypatch, capsys, argv, expected):
    runs = tmp_path / "a" / "runs"
    code, _, err = run_script(monkeypatch, capsys, "train.py", "--output_dir", runs, "--data_root", tmp_path / "data",
                              *argv)
    assert expected in error_line(code, err)
    assert not any(tmp_path.iterdir()), "no run folder before the flags are checked"


# ---------------------------------------------------------------- 11. files that are not what the flag expects

@pytest.mark.parametrize("kind,expected", [
    ("text-file", "not a PyTorch weights file"),
    ("manme-checkpoint", "is a manme checkpoint, not backbone weights"),
], ids=["text-file", "manme-checkpoint"])
def test_11_backbone_weights_that_are_not_weights(tiny_root, fiq_vocab, tmp_path, monkeypatch, capsys, kind,
                                                  expected):
    weights = tmp_path / "weights.pth"
    if kind == "text-file":
        weights.write_text("resnet18 weights are at https://download.pytorch.org/models/\n")
    else:
        torch.save({"model": {"w": torch.zeros(1)}, "config": Config().to_dict(), "vocab": {"tokens": []}}, weights)
    code, _, err = run_script(monkeypatch, capsys, "train.py",
                              *train_flags(tiny_root, fiq_vocab, tmp_path / "runs", "--backbone_weights", weights))
    line = error_line(code, err)
    assert f"{weights}" in line and expected in line and "--backbone_weights none" in line
    assert not list((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("damage,expected", [
    ("variant-edited", "its weights do not fit the --model tirg its config names"),
    ("no-vocabulary", "the checkpoint holds no vocabulary"),
], ids=["variant-edited", "no-vocabulary"])
def test_11_checkpoint_edited_or_without_vocabulary(ckpt, tiny_root, tmp_path, monkeypatch, capsys, damage,
                                                    expected):
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if damage == "variant-edited":
        state["config"]["model"] = "tirg"
    else:
        del state["vocab"]
    edited = tmp_path / "edited.pt"
    torch.save(state, edited)
    code, _, err = run_script(monkeypatch, capsys, "evaluate.py", *eval_flags(edited, tiny_root, tmp_path / "eval"))
    line = error_line(code, err)
    assert f"{edited}: " in line and expected in line
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------- 12. queries no model can answer

@pytest.mark.slow
def test_12_unanswerable_queries_are_reported(ckpt, tiny_root, tmp_path, capsys):
    root = copy_dataset(tiny_root, tmp_path)
    annotations = root / "fashionIQ" / "annotations"
    captions = json.loads((annotations / "captions" / "cap.dress.val.json").read_text())
    gallery = set(json.loads((annotations / "image_splits" / "split.dress.val.json").read_text()))
    elsewhere = sorted(p.stem for p in (root / "fashionIQ" / "img").iterdir() if p.stem not in gallery)[0]
    captions[0]["target"] = captions[0]["candidate"]   # target = reference: left out of its own ranking
    captions[1]["target"] = elsewhere                  # an image that exists, but not in the dress val gallery
    (annotations / "captions" / "cap.dress.val.json").write_text(json.dumps(captions))
    with manme_warnings() as warnings:
        evaluate_in_process(*eval_flags(ckpt, root, tmp_path / "eval"))
    n = 2 * len(captions)  # two queries per annotation (both caption orders)
    assert [w for w in warnings if "count as misses" in w] == [
        f"dress: 4 of {n} queries count as misses whatever the model does (2 whose target is the reference "
        f"image itself, 2 whose target is not in the gallery); the annotation files list them so"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["per_category"]["dress"]["n_queries"] == n


# ---------------------------------------------------------------- 13. EXIF orientation

def phone_photo(path: Path, orientation: int) -> np.ndarray:
    """A 40x20 JPEG stored sideways with an EXIF orientation tag; returns its stored (unrotated) pixels."""
    stored = Image.new("RGB", (40, 20), (230, 20, 20))
    stored.paste((20, 20, 230), (0, 0, 10, 20))   # a blue band on the left of the stored pixels
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored.save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("orientation,turns", [(6, -1), (8, 1)])   # 6: turn clockwise, 8: anticlockwise
def test_13_exif_orientation_upright_for_user_images_only(tmp_path, orientation, turns):
    from data.cache import PixelSource
    from data.images import load_image, pad_to_square, resize_square
    from data.loaders import ImageList
    from models import build_model
    from tools.search_index import build_index
    photo = tmp_path / "photos" / "phone.jpg"
    photo.parent.mkdir()
    stored = phone_photo(photo, orientation)
    upright = np.ascontiguousarray(np.rot90(stored, k=turns))
    assert upright.shape == (40, 20, 3)

    # retrieve.py's index embeds it as the same picture stored upright (lossless PNG of the rotated pixels)
    Image.fromarray(upright).save(tmp_path / "photos" / "upright.png")
    Image.fromarray(stored).save(tmp_path / "photos" / "sideways.png")
    torch.manual_seed(0)
    cfg = Config(backbone="resnet18", backbone_weights="none", crop_size=32, embed_dim=64, word_dim=32)
    model = build_model(cfg, len(Vocabulary.build(["is red"]))).eval()
    (tmp_path / "best.pt").write_bytes(b"stands in for the checkpoint: only its sha256 is recorded")
    index = build_index(model, tmp_path / "photos", tmp_path / "best.pt", 32, torch.device("cpu"), progress=False)
    assert index.paths == ["phone.jpg", "sideways.png", "upright.png"]
    for x in index.embeddings.values():
        assert torch.allclose(x[0], x[2], atol=1e-6) and not torch.allclose(x[0], x[1], atol=1e-3)

    # and draws it upright (retrieve.py query --png); load_image(upright=True) is what both read through
    expected = np.asarray(pad_to_square(Image.fromarray(upright)))
    assert np.array_equal(np.asarray(load_image(photo, upright=True)), expected)
    # dataset loaders keep the tag ignored, as the published pipelines do
    assert np.array_equal(np.asarray(load_image(photo)), np.asarray(pad_to_square(Image.fromarray(stored))))
    stored_square = resize_square(load_image(photo), 37)
    assert np.array_equal(ImageList([photo], PixelSource(37))[0]["image"].numpy(), stored_square)


def test_13_data_check_counts_rotated_images(tiny_root, tmp_path, capsys):
    from data import check
    root = copy_dataset(tiny_root, tmp_path)
    victim = sorted((root / "fashionIQ" / "img").iterdir())[0]
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    with Image.open(victim) as image:
        image.convert("RGB").save(victim, format="JPEG", exif=exif.tobytes())
    assert check.main(["--dataset", "fashioniq", "--data_root", str(root)]) == 0
    assert "0 missing, 0 unreadable; 1 carry an EXIF rotation" in capsys.readouterr().out


# ---------------------------------------------------------------- 14. Ctrl-C, SIGTERM, data.check's status

# evaluate.py with the evaluation itself replaced by a wait, so that the signal arrives while evaluate.py
# is at work (its output folder made), whatever the machine's speed
BLOCKED_EVALUATE = """
import runpy, sys, time
import engine.evaluation
def wait(*args, **kwargs):
    print("evaluating", flush=True)
    time.sleep(300)
engine.evaluation.evaluate = wait
sys.argv = sys.argv[1:]
runpy.run_path("evaluate.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_14_interrupted_evaluation(ckpt, tiny_root, tmp_path, signum):
    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_EVALUATE, "evaluate.py",
                             *map(str, eval_flags(ckpt, tiny_root, out))], cwd=ROOT, env=ONE_THREAD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        assert ready and proc.stdout.readline().strip() == "evaluating", proc.stderr.read()
        assert out.is_dir(), "the signal arrives after evaluate.py made its output folder"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
    assert not out.exists(), "an interrupted evaluation left its (empty) output folder"


def test_14_data_check_status_when_images_are_missing(tmp_path, capsys):
    from data import check
    write_fashioniq(tmp_path)   # annotations only: every image is missing
    argv = ["--dataset", "fashioniq", "--data_root", str(tmp_path), "--categories", "dress"]
    assert check.main(argv) == 1
    captured = capsys.readouterr()
    assert "4 images: 4 missing, 0 unreadable" in captured.out
    assert "4 image(s) missing or unreadable: exit status 1 (--allow_missing: 0)" in captured.err
    assert check.main([*argv, "--allow_missing"]) == 0

