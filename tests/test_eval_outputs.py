"""One evaluation, one consistent set of files (issue 22, case 5): metrics.json and rankings.jsonl are
written as one unit (a full disk leaves the previous pair; two evaluations into one folder never mix), and
the output folder is proven writable before any embedding. The evaluation itself is replaced by a canned
result here: what is tested is how evaluate_trained writes it."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import engine.evaluation
import utils.io
from config import Config
from engine.evaluation import EvalResult, evaluate_trained

TRAINED = SimpleNamespace(cfg=Config(), model=None, vocab=None, device=None, amp_dtype=None)


def canned(name: str, rows: int = 200) -> EvalResult:
    return EvalResult("fashioniq", "val", ("R@10",), {"dress": {"R@10": 50.0}}, {"R@10": 50.0}, {},
                      rankings=[{"query": i, "from": name, "top": list(range(50))} for i in range(rows)])


@pytest.fixture
def evaluations(monkeypatch):
    """evaluate_trained(TRAINED, name, out) writes canned(name); `called` lists the evaluations run."""
    called = []

    def evaluate(*args, **kwargs):
        called.append(args)
        return canned(threading.current_thread().name)
    monkeypatch.setattr(engine.evaluation, "evaluate", evaluate)
    monkeypatch.setattr(engine.evaluation, "open_dataset", lambda cfg: None)
    monkeypatch.setattr(engine.evaluation, "open_pixel_source", lambda cfg: None)
    return called


def read_pair(out: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((out / "metrics.json").read_text())
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    return metrics, rankings


def assert_one_evaluation(out: Path) -> str:
    """The pair in `out` comes from one evaluation (its name); metrics.json names the rankings' hash."""
    metrics, rankings = read_pair(out)
    assert {r["from"] for r in rankings} == {metrics["checkpoint"]}, "metrics and rankings of different evaluations"
    data = (out / "rankings.jsonl").read_bytes()
    assert metrics["files"]["rankings.jsonl"] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left"
    return metrics["checkpoint"]


def test_a_full_disk_while_writing_leaves_the_previous_pair(tmp_path, evaluations, monkeypatch):
    out = tmp_path / "eval"
    threading.current_thread().name = "MainThread"
    evaluate_trained(TRAINED, "MainThread", out)
    before = read_pair(out)
    real = os.fdopen

    def full_on_rankings(fd, mode="r", **kw):   # the disk fills up while rankings.jsonl is written
        f = real(fd, mode, **kw)
        if ".rankings.jsonl." in os.readlink(f"/proc/self/fd/{fd}"):
            def write(*_):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write = f.writelines = write
        return f
    monkeypatch.setattr(utils.io.os, "fdopen", full_on_rankings)
    with pytest.raises(OSError, match=r"rankings\.jsonl: could not be written: the disk is full"):
        evaluate_trained(TRAINED, "second", out)
    assert read_pair(out) == before, "the previous metrics.json and rankings.jsonl are kept, together"
    assert_one_evaluation(out)


def test_two_evaluations_into_one_folder_do_not_mix(tmp_path, evaluations, monkeypatch):
    """A pauses after its first rename into place, B writes meanwhile: the result is one of the two, whole."""
    out = tmp_path / "eval"
    out.mkdir()
    real = os.replace

    def slow_first(src, dst):
        real(src, dst)
        if threading.current_thread().name == "A" and not hasattr(slow_first, "paused"):
            slow_first.paused = True
            b.start()
            time.sleep(1.0)
    monkeypatch.setattr(utils.io.os, "replace", slow_first)
    a = threading.Thread(target=evaluate_trained, args=(TRAINED, "A", out), name="A")
    b = threading.Thread(target=evaluate_trained, args=(TRAINED, "B", out), name="B")
    a.start()
    a.join()
    b.join()
    assert len(evaluations) == 2
    assert assert_one_evaluation(out) in ("A", "B")


def unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:  # root may write anywhere but in sysfs
        Path("/sys/kernel/manme-write-test").touch()
    except OSError:
        return Path("/sys/kernel")
    Path("/sys/kernel/manme-write-test").unlink()
    pytest.skip("no folder this user cannot write")


def test_an_unwritable_output_folder_is_refused_before_any_embedding(tmp_path, evaluations):
    folder = unwritable_folder(tmp_path)
    with pytest.raises(PermissionError, match=f"{folder}: output directory is not writable.*--output_dir"):
        evaluate_trained(TRAINED, "x", folder)
    assert evaluations == [], "refused before the evaluation ran"
