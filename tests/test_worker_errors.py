"""A DataLoader worker's error ends the run (issue 22, case 7): the same one-line error and exit status as
with --num_workers 0, no hang, no process left behind; workers ignore a SIGTERM sent to the whole process
group (so the main process can save) but end on one from the main process, or once it is gone."""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from config import resolve
from data.formats import open_dataset
from data.loaders import ignore_stop_signals
from engine.sampler import ResumableSampler
from tests.helpers import ONE_THREAD_ENV, ROOT, TINY_TRAIN, live_processes


def sleeping_worker() -> None:
    ignore_stop_signals()
    time.sleep(60)


def wait_exit(process, timeout: float = 10) -> int | None:
    process.join(timeout)
    return process.exitcode


def test_a_worker_ends_on_its_parents_sigterm_but_not_on_a_group_signal():
    worker = mp.get_context("fork").Process(target=sleeping_worker, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)   # the worker set up its signals
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)   # from another process: a scheduler's
        subprocess.run(["kill", "-INT", str(worker.pid)], check=True)
        assert wait_exit(worker, 1.0) is None, "a group-wide SIGTERM/SIGINT must leave the worker running"
        worker.terminate()   # SIGTERM from its parent, as multiprocessing sends at exit
        assert wait_exit(worker) == 128 + signal.SIGTERM
    finally:
        if worker.is_alive():
            worker.kill()


@pytest.fixture(scope="module")
def damaged_root(tiny_root, tmp_path_factory):
    """The tiny Shoes data with one training image that cannot be decoded, and its vocabulary."""
    import vocab
    root = tmp_path_factory.mktemp("worker_errors") / "data"
    shutil.copytree(tiny_root / "shoes", root / "shoes")
    # an image first met in step 4 of the epoch (batches of 8, seed 0): the run fails mid-epoch
    fmt = open_dataset(resolve({"dataset": "shoes", "data_root": str(root)}))
    triplets = fmt.train_triplets(0)
    order = list(ResumableSampler(len(triplets), 8, seed=0))
    paths = [(fmt.image_path(triplets[i].reference), fmt.image_path(triplets[i].target)) for _, i in order]
    earlier = {p for pair in paths[:24] for p in pair}
    bad = next(p for pair in paths[24:32] for p in pair if p not in earlier)
    bad.write_bytes(b"not an image")
    assert vocab.main(["--dataset", "shoes", "--data_root", str(root), "--vocab_dir", str(root.parent / "vocab")]) == 0
    return root, bad


@pytest.mark.slow
def test_an_unreadable_image_ends_the_run_alike_with_and_without_workers(damaged_root, tmp_path):
    root, bad = damaged_root
    results = {}
    for workers in (0, 4):
        argv = [sys.executable, "train.py", "--dataset", "shoes", "--data_root", root, "--vocab_dir",
                root.parent / "vocab", "--output_dir", tmp_path / f"w{workers}", "--num_epochs", "1", "--no-validate",
                *TINY_TRAIN, "--num_workers", str(workers)]
        proc = subprocess.Popen(list(map(str, argv)), cwd=ROOT, env=ONE_THREAD_ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"--num_workers {workers}: the run hangs after the worker's error") from None
        time.sleep(0.5)
        assert live_processes(group=proc.pid) == [], f"--num_workers {workers}: processes left behind"
        assert "Traceback" not in err and "exited unexpectedly" not in err, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err[-3000:]
        results[workers] = (proc.returncode, errors[0])
    assert results[4] == results[0]
    status, line = results[0]
    assert status == 2 and line.startswith(f"error: {bad}: unreadable image")
    logged = (tmp_path / "w4" / "default" / "stage1" / "train_log.jsonl").read_text()
    assert '"step": 2' in logged, "the image is met mid-epoch, after the first steps"
