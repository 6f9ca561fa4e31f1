"""Nothing lost: exact resume after SIGKILL and SIGTERM, SIGINT, damaged checkpoints falling back
to the previous one, safe loading, non-finite losses.

The kill-and-resume test trains the same tiny run twice on the CPU with a fixed seed: A uninterrupted (in
this process), B killed with SIGKILL while its two DataLoader workers live on, resumed at once with
--resume auto in a subprocess using two DataLoader workers and stopped with SIGTERM mid-epoch, then
resumed again to the end. Every logged loss of B must equal A's within 1e-6.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from engine.trainer import TIMINGS
from tests.helpers import ONE_THREAD_ENV, ROOT, TINY, live_processes
from tests.helpers import read_jsonl as rows
from tests.helpers import train_in_process as train_here

STEPS_PER_EPOCH = 6      # 48 Shoes triplets in the tiny fixture, batch 8
EPOCHS = 2
FLAGS = ["--dataset", "shoes", *TINY, "--batch_size", "8", "--log_every", "1", "--save_every_steps", "2",
         "--num_epochs", str(EPOCHS), "--step_lr", "1", "--seed", "3"]


def start(out: Path, name: str, *argv, **kw) -> subprocess.Popen:
    log = open(out / f"{name}.out", "w")
    return subprocess.Popen([sys.executable, "train.py", *map(str, argv)], cwd=ROOT, env=ONE_THREAD_ENV,
                            stdout=log, stderr=subprocess.STDOUT, text=True, **kw)


def wait_for_rows(proc: subprocess.Popen, log: Path, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(rows(log)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before step {n}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no step {n} in {log} after {timeout} s")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def vocab_dir(tiny_root, tmp_path_factory):
    import vocab
    folder = tmp_path_factory.mktemp("resume_vocab")
    assert vocab.main(["--dataset", "shoes", "--data_root", str(tiny_root), "--vocab_dir", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def runs(tiny_root, vocab_dir, tmp_path_factory):
    """A: uninterrupted. B: SIGKILL (2 workers), resume at once (2 workers) + SIGTERM to the process group,
    resume to the end. Two runs of 12 steps, one of them as commands: the tests that use it are marked slow."""
    out = tmp_path_factory.mktemp("resume_runs")
    flags = [*FLAGS, "--data_root", tiny_root, "--vocab_dir", vocab_dir, "--output_dir", out]
    log_b = out / "B" / "stage1" / "train_log.jsonl"
    info = {}

    # B, first part, with two DataLoader workers, killed with SIGKILL once step 3 is logged (last.pt is then at
    # step 2), while A runs here. Its workers are stopped first, so they outlive it (as workers do until they
    # notice their parent died); the resume starts within a second of the kill and must not wait for them.
    first = start(out, "B1", *flags, "--exp_name", "B", "--num_workers", "2")
    second: list[subprocess.Popen] = []
    failed: list[BaseException] = []

    def part_b():
        workers = []
        try:
            wait_for_rows(first, log_b, 3)
            workers = live_processes(parent=first.pid)
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            first.kill()   # SIGKILL
            first.wait(60)
            killed_at = time.monotonic()
            # B, second part: only the run's name and --resume auto on the command line; two DataLoader
            # workers; SIGTERM to the whole process group (as a cluster scheduler does) once epoch 2 has begun
            second.append(start(out, "B2", "--output_dir", out, "--exp_name", "B", "--resume", "auto",
                                "--num_workers", "2", start_new_session=True))
            info["resumed_after_s"] = time.monotonic() - killed_at
            info["killed_workers"] = len(workers)
            info["killed"] = torch.load(out / "B" / "stage1" / "last.pt", weights_only=True)["step"]
            wait_for_rows(second[0], log_b, STEPS_PER_EPOCH + 2)
            os.killpg(second[0].pid, signal.SIGTERM)
        except BaseException as e:  # reported below, in the test's thread
            failed.append(e)
            first.kill()
        finally:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    b = threading.Thread(target=part_b)
    b.start()
    train_here(*flags, "--exp_name", "A")
    b.join()
    if failed:
        raise failed[0]
    assert first.wait(60) == -signal.SIGKILL
    assert info["killed_workers"] == 2 and info["resumed_after_s"] < 1.0
    info["killed_at"] = info.pop("killed")
    assert 0 < info["killed_at"] <= len(rows(log_b))   # usually 2 < 3: the resume drops the log's step 3
    assert second[0].wait(120) == 130, (out / "B2.out").read_text()[-3000:]
    info["second_out"] = (out / "B2.out").read_text()
    stopped = torch.load(out / "B" / "stage1" / "last.pt", weights_only=True)
    info["stopped_at"] = stopped["step"]
    info["stopped_rows"] = len(rows(log_b))

    # B, last part, here: to the end
    train_here("--output_dir", out, "--exp_name", "B", "--resume", "auto", "--num_workers", "0")
    return out, info


@pytest.mark.slow
def test_killed_and_resumed_run_logs_the_same_losses(runs):
    out, info = runs
    a = rows(out / "A" / "stage1" / "train_log.jsonl")
    b = rows(out / "B" / "stage1" / "train_log.jsonl")
    assert [r["step"] for r in a] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [r["step"] for r in b] == [r["step"] for r in a], "steps lost or logged twice"
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if key not in TIMINGS:  # wall-clock times differ from run to run
                assert abs(value - rb[key]) <= 1e-6, (ra["step"], key, value, rb[key])
    # the weights, optimizer and best score at the end agree too
    sa = torch.load(out / "A" / "stage1" / "last.pt", weights_only=True)
    sb = torch.load(out / "B" / "stage1" / "last.pt", weights_only=True)
    assert (sa["step"], sa["epoch"], sa["best_score"]) == (sb["step"], sb["epoch"], sb["best_score"])
    for key, value in sa["model"].items():
        assert torch.allclose(value.float(), sb["model"][key].float(), atol=1e-6), key
    for n, state in sa["optimizer"]["state"].items():
        assert torch.allclose(state["exp_avg"], sb["optimizer"]["state"][n]["exp_avg"], atol=1e-6)


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(runs):
    _, info = runs
    text = info["second_out"]
    assert "resumed from" in text and f"step {info['killed_at']}" in text
    assert "received SIGTERM: finishing the current step, then saving" in text
    assert "--resume auto" in text and "Resume with" in text
    assert "Traceback" not in text and "worker" not in text.lower()
    # the step in progress was finished, logged and saved: nothing to redo
    assert info["stopped_at"] == info["stopped_rows"] > STEPS_PER_EPOCH + 1
    assert info["stopped_at"] < EPOCHS * STEPS_PER_EPOCH, "stopped mid-epoch 2"


@pytest.mark.slow
def test_damaged_last_checkpoint_falls_back_to_previous(runs, tmp_path, capsys):
    out, _ = runs
    shutil.copytree(out / "A", tmp_path / "D")
    last = tmp_path / "D" / "stage1" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    from engine.checkpoint import CheckpointError, load_checkpoint
    with pytest.raises(CheckpointError, match=r"last\.pt: truncated or corrupt checkpoint.*last\.prev\.pt"):
        load_checkpoint(last)
    # last.prev.pt is the save at the last step, before the epoch-end validation: resuming redoes only that
    capsys.readouterr()
    train_here("--output_dir", tmp_path, "--exp_name", "D", "--resume", "auto")
    said = capsys.readouterr().out
    assert "last.pt: truncated or corrupt checkpoint" in said
    assert "falling back to the previous checkpoint" in said and "last.prev.pt" in said
    assert load_checkpoint(last)["step"] == EPOCHS * STEPS_PER_EPOCH
    assert rows(last.parent / "train_log.jsonl") == rows(out / "A" / "stage1" / "train_log.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_error_names_the_file(runs, tmp_path, damage):
    from engine.checkpoint import CheckpointError, load_checkpoint
    data = (runs[0] / "A" / "stage1" / "last.pt").read_bytes()
    path = tmp_path / "run" / "stage1" / "last.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes({"truncated": data[:1000], "empty": b"", "garbage": os.urandom(4096)}[damage])
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: truncated or corrupt checkpoint")):
        load_checkpoint(path)
    # and when the previous one is damaged as well, --resume auto stops instead of starting over
    shutil.copy(path, path.with_name("last.prev.pt"))
    shutil.copy(runs[0] / "A" / "config.json", path.parent.parent / "config.json")
    with pytest.raises(CheckpointError, match="no loadable checkpoint.*--resume PATH"):
        train_here("--output_dir", tmp_path, "--exp_name", "run", "--resume", "auto")


def test_fallback_moves_the_damaged_last_aside_and_keeps_the_good_previous(tmp_path):
    """After --resume auto falls back to last.prev.pt, the next saves never rotate the damaged last.pt over it."""
    from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from engine.run import find_resume
    good = tmp_path / "last.prev.pt"
    save_checkpoint(good, {"model": {"w": torch.zeros(2)}, "config": {}, "step": 2}, keep_previous=False)
    good_bytes = good.read_bytes()
    damaged = good_bytes[: len(good_bytes) // 2]
    (tmp_path / "last.pt").write_bytes(damaged)
    assert find_resume(tmp_path) == good
    (aside,) = tmp_path.glob("last.damaged-*.pt")
    assert re.fullmatch(r"last\.damaged-\d{8}-\d{6}\.pt", aside.name) and aside.read_bytes() == damaged
    assert not (tmp_path / "last.pt").exists() and good.read_bytes() == good_bytes
    # the first save after the resume: the good previous checkpoint is still there if it is killed
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}, "config": {}, "step": 3})
    assert good.read_bytes() == good_bytes
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3
    # the error names only files that can exist: no last.prev.prev.pt, no best.prev.pt
    good.write_bytes(damaged)
    (tmp_path / "best.pt").write_bytes(damaged)
    for name in ("last.prev.pt", "best.pt"):
        with pytest.raises(CheckpointError) as refused:
            load_checkpoint(tmp_path / name)
        assert ".prev.prev" not in str(refused.value) and "best.prev" not in str(refused.value)
        assert str(refused.value).endswith("Use an earlier checkpoint.")


def test_step_log_drops_what_the_resume_redoes(tmp_path):
    from utils.logs import StepLog
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps({"step": n, "loss": 1.0}) + "\n" for n in range(1, 6)) + '{"step": 6, "lo')
    log = StepLog(path, resume_step=3)   # killed mid-write after step 5; last.pt is at step 3
    assert [r["step"] for r in rows(path)] == [1, 2, 3]
    log.write([{"step": 4, "loss": 2.0}])
    assert [r["step"] for r in rows(path)] == [1, 2, 3, 4]
    StepLog(path)   # a new run starts an empty log
    assert path.read_text() == ""


def test_resume_points_are_exact_suffixes_of_the_epoch_order():
    from engine.sampler import ResumableSampler
    sampler = ResumableSampler(50, 4, seed=7, rank=0, world_size=1)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        full = list(sampler)
        for start in (0, 1, 5, sampler.steps_per_epoch()):
            sampler.set_epoch(epoch, start)
            assert list(sampler) == full[start * 4:] and len(sampler) == len(full) - start * 4


@pytest.mark.slow
def test_resume_path_continues_its_own_stage(tiny_root, vocab_dir, tmp_path, capsys):
    flags = [*FLAGS, "--data_root", tiny_root, "--vocab_dir", vocab_dir, "--output_dir", tmp_path, "--exp_name", "t",
             "--two_stage", "--num_epochs", "1", "--finetune_epochs", "1", "--max_steps", "1", "--no-validate"]
    train_here(*flags)
    stage2 = tmp_path / "t" / "stage2" / "last.pt"
    before = stage2.read_bytes()
    capsys.readouterr()
    train_here("--output_dir", tmp_path, "--exp_name", "t", "--resume", stage2)
    said = capsys.readouterr().out
    assert "stage 1: skipped" in said and "stage 2 already finished" in said
    assert stage2.read_bytes() == before
    train_here("--output_dir", tmp_path, "--exp_name", "t", "--resume", "auto")
    said = capsys.readouterr().out
    assert "stage 1 already finished" in said and "stage 2 already finished" in said


# ---- signals, in this process ----

def signal_at(monkeypatch, step: int, times: int = 1, signum=signal.SIGINT):
    """Send `signum` to this process `times` times while optimizer step `step` runs."""
    from engine.trainer import Trainer
    original = Trainer.train_step

    def patched(self, batch):
        if self.step + 1 == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return original(self, batch)
    monkeypatch.setattr(Trainer, "train_step", patched)


def short(tiny_root, vocab_dir, out, *extra):
    return [*FLAGS, "--data_root", tiny_root, "--vocab_dir", vocab_dir, "--output_dir", out, "--exp_name", "s",
            "--num_epochs", "1", "--no-validate", *extra]


def test_sigint_saves_after_the_step_and_exits_nonzero(tiny_root, vocab_dir, tmp_path, monkeypatch, capsys):
    signal_at(monkeypatch, 3)
    with pytest.raises(SystemExit) as stop:
        train_here(*short(tiny_root, vocab_dir, tmp_path))
    assert stop.value.code == 130
    said = capsys.readouterr().out
    assert "received SIGINT" in said and "at step 3" in said and "--resume auto" in said
    state = torch.load(tmp_path / "s" / "stage1" / "last.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["epoch_step"]) == (3, 0, 3)
    assert len(rows(tmp_path / "s" / "stage1" / "train_log.jsonl")) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler not restored"


def test_repeated_signal_within_seconds_still_saves(tiny_root, vocab_dir, tmp_path, monkeypatch, capsys):
    signal_at(monkeypatch, 3, times=2)   # e.g. SLURM signalling a worker that torchrun also signals
    with pytest.raises(SystemExit) as stop:
        train_here(*short(tiny_root, vocab_dir, tmp_path))
    assert stop.value.code == 130 and "again" not in capsys.readouterr().out
    assert torch.load(tmp_path / "s" / "stage1" / "last.pt", weights_only=True)["step"] == 3


def test_second_sigint_stops_at_once_keeping_the_last_save(tiny_root, vocab_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("engine.run.REPEAT_SIGNAL_WINDOW_S", 0.0)
    signal_at(monkeypatch, 3, times=2)
    with pytest.raises(SystemExit) as stop:
        train_here(*short(tiny_root, vocab_dir, tmp_path))
    assert stop.value.code == 130 and "again: stopping without saving" in capsys.readouterr().out
    assert torch.load(tmp_path / "s" / "stage1" / "last.pt", weights_only=True)["step"] == 2
    assert not list((tmp_path / "s" / "stage1").glob(".*.tmp")), "a temporary file was left behind"


# ---- non-finite loss ----

def nan_at(monkeypatch, step: int):
    """The loss of optimizer step `step` (and its terms, `sim` included) become NaN, gradients included."""
    from engine.trainer import Trainer
    original = Trainer.train_step

    def patched(self, batch):
        out = original(self, batch)
        if self.step + 1 == step:
            out.total = out.total * float("nan")
            out.terms = out.terms * float("nan")
        return out
    monkeypatch.setattr(Trainer, "train_step", patched)


def test_nonfinite_loss_stops_naming_step_and_parts(tiny_root, vocab_dir, tmp_path, monkeypatch):
    from engine.trainer import NonFiniteLoss
    nan_at(monkeypatch, 3)
    # logged every 5 steps, saved every 2: the NaN of step 3 is found at step 4, before its save
    with pytest.raises(NonFiniteLoss) as error:
        train_here(*short(tiny_root, vocab_dir, tmp_path, "--log_every", "5", "--max_steps", "5"))
    message = str(error.value)
    assert "non-finite loss at step 3" in message and "total=nan" in message and "sim=nan" in message
    assert "me=" in message and "last.pt (step 2)" in message and "--skip_nonfinite" in message
    state = torch.load(tmp_path / "s" / "stage1" / "last.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_skip_nonfinite_skips_and_counts(tiny_root, vocab_dir, tmp_path, monkeypatch, capsys):
    nan_at(monkeypatch, 3)
    train_here(*short(tiny_root, vocab_dir, tmp_path, "--skip_nonfinite", "--max_steps", "5"))
    logged = rows(tmp_path / "s" / "stage1" / "train_log.jsonl")
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
    assert logged[2].get("skipped") is True and logged[2]["loss"] != logged[2]["loss"]  # NaN, marked
    assert all("skipped" not in r for r in logged[:2] + logged[3:])
    said = capsys.readouterr().out
    assert "step 3: non-finite loss, batch skipped (1 so far)" in said and "1 batch(es) skipped" in said
    state = torch.load(tmp_path / "s" / "stage1" / "last.pt", weights_only=True)
    assert state["skipped"] == 1 and state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ---- safe loading ----

class RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_checkpoint_that_runs_code_is_refused(runs, tmp_path):
    import evaluate
    from engine.checkpoint import CheckpointError, load_checkpoint
    marker = tmp_path / "pwned"
    state = torch.load(runs[0] / "A" / "stage1" / "last.pt", weights_only=True)
    state["config"]["hook"] = RunsCode(marker)   # a valid checkpoint with one poisoned entry
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to load.*could run code"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        evaluate.main(["--ckpt", str(evil), "--device", "cpu", "--output_dir", str(tmp_path / "eval")])
    with pytest.raises(CheckpointError, match="refused to load"):
        train_here("--resume", evil, "--output_dir", tmp_path, "--exp_name", "x")
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "eval").exists() and not (tmp_path / "x").exists()
    # the file really is malicious: a plain pickle load would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_search_index_that_runs_code_is_refused(tmp_path):
    from tools.search_index import load_index
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.index"
    torch.save({"format": "manme-search-index", "version": 1, "root": RunsCode(marker)}, evil)
    with pytest.raises(ValueError, match=r"evil\.index: refused to load"):
        load_index(evil)
    assert not marker.exists()


@pytest.mark.parametrize("misfit", ["count", "shape"])
def test_a_checkpoint_whose_optimizer_state_does_not_fit_is_refused_naming_the_way_out(
        misfit, tiny_root, vocab_dir, tmp_path, monkeypatch):
    """E.g. a last.pt written before the compositor's weights were stacked (one AdamW state per grain's MLP: another
    count) or reshaped ((n·d, d) to (n, d, d): the same count, which torch's load_state_dict does not notice): its
    weights load, its optimizer state cannot continue."""
    signal_at(monkeypatch, 2)
    with pytest.raises(SystemExit):
        train_here(*short(tiny_root, vocab_dir, tmp_path))
    monkeypatch.undo()
    last = tmp_path / "s" / "stage1" / "last.pt"
    state = torch.load(last, weights_only=True)
    if misfit == "count":
        state["optimizer"]["param_groups"][0]["params"].append(10_000)   # one parameter more than the model has
    else:
        moments = next(m for m in state["optimizer"]["state"].values() if m["exp_avg"].dim() == 3)
        moments["exp_avg"] = moments["exp_avg"].flatten(0, 1)            # (n, d, d) as (n·d, d)
    torch.save(state, last)
    from engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match=r"last\.pt: its optimizer state does not fit.*start the run again"):
        train_here(*short(tiny_root, vocab_dir, tmp_path, "--resume", "auto"))
