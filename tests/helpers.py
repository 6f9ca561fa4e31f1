"""Helpers shared by the test modules: paths, the tiny-run flags, in-process and command-line runners,
readers of run outputs, and writers of tiny annotation trees and images.

Fixtures live in conftest.py; everything a test imports comes from here (`from tests.helpers import ...`).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image

from models import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# The smallest model that exercises every code path: train.py / evaluate.py flags.
TINY = ["--backbone", "resnet18", "--backbone_weights", "none", "--crop_size", "32", "--embed_dim", "64",
        "--word_dim", "32", "--num_workers", "0", "--device", "cpu", "--eval_batch_size", "32", "--no-val_figure"]
# TINY for a few optimizer steps of train.py: batches of 8, a log row every second step.
TINY_TRAIN = [*TINY, "--batch_size", "8", "--log_every", "2"]
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---- running the project's commands ----

@contextlib.contextmanager
def one_thread():
    """One intra-op thread: on a busy 2-core machine two OpenMP threads make small ops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_cli(*args, check: bool = True, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root, as a user would; fail with its output."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def train_in_process(*argv) -> None:
    """train.py's main() in this process, on one thread; arguments may be paths or numbers."""
    import train
    with one_thread():
        train.main([str(a) for a in argv])


def evaluate_in_process(*argv) -> None:
    """evaluate.py's main() in this process, on one thread; arguments may be paths or numbers."""
    import evaluate
    with one_thread():
        evaluate.main([str(a) for a in argv])


# ---- reading what a run wrote ----

def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file such as train_log.jsonl or rankings.jsonl: a line still being
    appended is not counted, and a file not written yet reads as no rows."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


def read_png(path: Path) -> Image.Image:
    """A complete PNG file, as RGB."""
    assert path.is_file() and path.stat().st_size > 0
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image.convert("RGB")


# ---- writing tiny datasets ----

def dataset_config(root: Path, dataset: str, **kw):
    """The Config of `dataset` read from data root `root`."""
    from config import Config
    return Config(dataset=dataset, data_root=str(root), **kw)


def write_image(path: Path, mode: str = "RGB", size=(12, 20), color=(200, 30, 30), **kw) -> Path:
    """A plain-colour image of `size` in `mode`, its format from the suffix; parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path, **kw)
    return path


FASHIONIQ_ANNOTATIONS = [{"candidate": "A1", "target": "A2", "captions": ["is red", "has sleeves"]},
                         {"candidate": "A2", "target": "A3", "captions": ["is blue", " is longer "]}]


def write_fashioniq(root: Path, folder: str = "fashionIQ", nested: bool = True, categories=("dress",),
                    annotations: list[dict] | None = None, images=("A1", "A2", "A3", "A4")) -> Path:
    """FashionIQ annotation files (no image) under root/folder, in the release's layout (`nested`:
    annotations/captions/ and annotations/image_splits/) or flat: for each category, `annotations`
    (FASHIONIQ_ANNOTATIONS by default) as its train and val captions, `images` as its train and val image
    splits, and test captions without targets."""
    annotations = FASHIONIQ_ANNOTATIONS if annotations is None else annotations
    base = root / folder / "annotations" if nested else root / folder
    for sub in ("captions", "image_splits"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for cat in categories:
        for split in ("train", "val"):
            (base / "captions" / f"cap.{cat}.{split}.json").write_text(json.dumps(annotations))
            (base / "image_splits" / f"split.{cat}.{split}.json").write_text(json.dumps(list(images)))
        test = [{"candidate": "A1", "captions": ["x", "y"]}]
        (base / "captions" / f"cap.{cat}.test.json").write_text(json.dumps(test))
    return root


def write_shoes(root: Path, rows: list[dict], train: Sequence[str], evals: Sequence[str],
                folder: str = "shoes") -> Path:
    """A Shoes release's annotations (no image): relative_captions_shoes.json holding `rows`, and the
    train / eval image-name lists, one name a line. Returns the annotations folder."""
    ann = root / folder / "annotations"
    ann.mkdir(parents=True)
    (ann / "relative_captions_shoes.json").write_text(json.dumps(rows, ensure_ascii=False))
    (ann / "train_im_names.txt").write_text("".join(f"{name}\n" for name in train))
    (ann / "eval_im_names.txt").write_text("".join(f"{name}\n" for name in evals))
    return ann


Labels = dict[str, Iterable[tuple[str, str]]]


def write_fashion200k(root: Path, train: Labels, test: Labels | None = None,
                      queries: Iterable[str] | None = None) -> Path:
    """Fashion200k label files (no image) under root/fashion200K/labels: `train` and `test` map a category
    to its (image path, description) lines, written with a detection score as the release has them;
    `queries` are the lines of test_queries.txt ('source target'). Returns root."""
    labels = root / "fashion200K" / "labels"
    labels.mkdir(parents=True)
    for split, files in (("train", train), ("test", test or {})):
        for category, lines in files.items():
            text = "".join(f"{path}\t0.{n + 5}21\t{d}\n" for n, (path, d) in enumerate(lines))
            (labels / f"{category}_{split}_detect_all.txt").write_text(text)
    if queries is not None:
        (root / "fashion200K" / "test_queries.txt").write_text("".join(f"{line}\n" for line in queries))
    return root


# the variants that build on the ResNet + GRU towers; the CLIP4Cir ones (presets with --text_encoder clip) need a
# CLIP tower and are tested in tests/test_clip.py
ON_RESNET = [name for name, variant in VARIANTS.items() if variant.preset.get("text_encoder") != "clip"]


def live_processes(parent: int | None = None, group: int | None = None) -> list[int]:
    """Pids of the live (not zombie) processes whose parent is `parent` or whose process group is `group`, from
    /proc (Linux): the DataLoader workers a run forked, or what a command left behind."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and (int(ppid) == parent or int(pgrp) == group):
            found.append(int(stat.parent.name))
    return found

