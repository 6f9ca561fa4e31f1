"""The dataset tools (`python -m data.check`, `python -m data.prepare`) against real damage: a download cut
short, a full disk, a worker that dies (issue 22, cases 6 and 7)."""
from __future__ import annotations

import errno
import faulthandler
import os
import signal
from collections import namedtuple

import numpy as np
import pytest
from PIL import Image

import data.prepare as prepare
from config import Config
from data.formats import open_dataset
from data.images import load_image
from tests.helpers import run_cli, write_fashioniq
from tools.data_commands import check_main, prepare_main


def noisy_jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def fashioniq_root(root):
    """A FashionIQ dress split of four noisy JPEG images (A1..A4)."""
    write_fashioniq(root)
    for i in range(1, 5):
        noisy_jpeg(root / "fashionIQ" / "img" / f"A{i}.jpg", seed=i)
    return root


def args(root, *extra):
    return ["--dataset", "fashioniq", "--data_root", str(root), "--categories", "dress", *extra]


def test_check_decodes_what_training_decodes(tmp_path, capsys):
    """A JPEG cut to half its bytes passed PIL's verify(), then stopped evaluation and data.prepare."""
    root = fashioniq_root(tmp_path)
    cut = root / "fashionIQ" / "img" / "A3.jpg"
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    with pytest.raises(ValueError, match="unreadable image"):  # what training meets
        load_image(cut)
    listing = tmp_path / "missing.txt"
    assert check_main(args(root, "--write_missing", str(listing))) == 1
    out = capsys.readouterr().out
    assert "4 images: 0 missing, 1 unreadable" in out
    (line,) = listing.read_text().splitlines()
    status, path, why = line.split("\t")
    assert status == "unreadable" and path == str(cut) and "truncated" in why


def test_prepare_refuses_a_disk_without_room_before_writing(tmp_path, monkeypatch, capsys):
    root = fashioniq_root(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    assert prepare_main(args(root, "--workers", "0")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "GiB free" in err and "--out" in err
    assert not list((root / "cache").glob("*.npy"))  # nothing written


def test_prepare_full_disk_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """A sparse array on a full disk killed the writer with SIGBUS; the space is now reserved up front."""
    root = fashioniq_root(tmp_path)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepare.os, "posix_fallocate", full)
    assert prepare_main(args(root, "--workers", "0")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "disk is full" in err and "--out" in err


def test_prepare_reserves_the_array_before_writing_rows(tmp_path, monkeypatch):
    """The array's blocks are allocated before the first row is written: no hole left to fault on."""
    root = fashioniq_root(tmp_path)
    write_rows, seen = prepare.write_rows, []

    def check_first(task):
        array = task[0]
        seen.append(os.stat(array).st_blocks * 512 >= os.stat(array).st_size)
        return write_rows(task)

    monkeypatch.setattr(prepare, "write_rows", check_first)
    assert prepare_main(args(root, "--workers", "0")) == 0
    assert seen and all(seen)


def test_a_dead_prepare_worker_ends_the_command(tmp_path, monkeypatch, capsys):
    """A pool worker killed by SIGBUS (what a write into a full sparse file does): multiprocessing.Pool waited
    for its task for ever; now the command stops with one error, at once."""
    root = fashioniq_root(tmp_path)

    def bus_error(path, size, *rest, **options):
        faulthandler.disable()  # pytest's handler would print the worker's stack: the death is the point here
        os.kill(os.getpid(), signal.SIGBUS)

    monkeypatch.setattr(prepare, "prepared_pixels", bus_error)  # the workers are forked: they see it

    def hung(*_):
        raise TimeoutError("data.prepare hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        status = prepare_main(args(root, "--workers", "2"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert status == 2
    err = capsys.readouterr().err
    assert "worker died" in err and "SIGBUS" in err and "run the command again" in err


@pytest.mark.slow
def test_dataset_commands_still_run_with_python_m(tmp_path):
    """The command lines moved above the data layer (issue 26); `python -m data.check|prepare` still work."""
    root = fashioniq_root(tmp_path)
    assert "4 images: 0 missing, 0 unreadable" in run_cli("-m", "data.check", *args(root)).stdout
    run_cli("-m", "data.prepare", *args(root, "--workers", "1"))
    fmt = open_dataset(Config(dataset="fashioniq", data_root=str(root), categories="dress"))
    assert len(fmt.split_images()["train"]) == 4 and list((root / "cache").glob("fashioniq-train-*.npy"))
