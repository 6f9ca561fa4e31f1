"""A full disk during a checkpoint or index save names the file and says the disk is full (issue 22, case
11), instead of torch's "[enforce fail at inline_container.cc:...] unexpected pos"; the file there before
is untouched. The disk fills up through a patched open: writes fail with ENOSPC after a few bytes."""
from __future__ import annotations

import errno
import os

import pytest
import torch

import utils.io
from engine.checkpoint import load_checkpoint, save_checkpoint
from tools.search_index import SearchIndex, save_index
from utils.errors import command_status
from utils.logs import StepLog


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes have been written (as on a full disk)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(utils.io.os, "fdopen", lambda *a, **kw: FullDisk(real(*a, **kw), room=512))


def assert_full_disk_message(error: BaseException, path):
    message = str(error)
    assert message.startswith(f"{path}: could not be written: the disk is full"), message
    assert "enforce fail" not in message and "\n" not in message and "Errno" not in message
    assert error.errno == errno.ENOSPC


def test_checkpoint_save_on_a_full_disk_names_the_file_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "config": {}, "step": 1})
    before = path.read_bytes()
    real = os.fdopen
    monkeypatch.setattr(utils.io.os, "fdopen", lambda *a, **kw: FullDisk(real(*a, **kw), room=512))
    with pytest.raises(OSError) as failed:
        save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "config": {}, "step": 2})
    assert_full_disk_message(failed.value, path)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"], "no temporary file left"


def test_index_save_on_a_full_disk_names_the_file(tmp_path, full_disk, capsys):
    index = SearchIndex(root=str(tmp_path), paths=["a.jpg"], embeddings={"coarse": torch.ones(1, 2000)},
                        checkpoint={"path": "x", "sha256": "0" * 64}, crop_size=32)
    out = tmp_path / "index.pt"
    with pytest.raises(OSError) as failed:
        save_index(index, out)
    assert_full_disk_message(failed.value, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    def main():  # as a command reports it: one line, status 2
        save_index(index, out)
    assert command_status(main) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: could not be written: the disk is full") and err.count("\n") == 1


def test_text_files_and_quota_too(tmp_path, monkeypatch):
    real = os.fdopen

    class OverQuota(FullDisk):
        def write(self, data):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    monkeypatch.setattr(utils.io.os, "fdopen", lambda *a, **kw: OverQuota(real(*a, **kw), room=0))
    with pytest.raises(OSError, match=r"metrics\.json: could not be written: the disk quota is used up"):
        utils.io.atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    # other write errors keep their own message
    monkeypatch.setattr(utils.io.os, "fdopen", real)
    with pytest.raises(TypeError):
        utils.io.atomic_write(tmp_path / "x", lambda f: f.write(3))


def test_the_step_log_on_a_full_disk_names_the_file_and_how_to_continue(tmp_path, monkeypatch):
    log = StepLog(tmp_path / "train_log.jsonl")
    log.write([{"step": 1, "loss": 1.0}])
    real = open

    def filling(path, mode="r", *args, **kwargs):
        f = real(path, mode, *args, **kwargs)
        return FullDisk(f, room=10) if "a" in mode else f
    monkeypatch.setattr("builtins.open", filling)
    with pytest.raises(OSError) as stop:
        log.write([{"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}])
    message = str(stop.value)
    assert message.startswith(f"{tmp_path / 'train_log.jsonl'}: could not be appended to: the disk is full"), message
    assert "--resume auto" in message and "\n" not in message and stop.value.errno == errno.ENOSPC
    monkeypatch.setattr("builtins.open", real)
    # the resume keeps the whole lines up to its checkpoint and drops a cut one
    (tmp_path / "train_log.jsonl").open("a").write('{"step": 2, "lo')
    StepLog(tmp_path / "train_log.jsonl", resume_step=2)
    assert (tmp_path / "train_log.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'

