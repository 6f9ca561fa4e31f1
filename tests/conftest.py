"""Shared fixtures: tiny synthetic datasets (one per format) and the path to the real annotations."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

# Two cores: keep intra-op threads from oversubscribing under pytest.
os.environ.setdefault("OMP_NUM_THREADS", "2")


# The smallest model that exercises every code path: train.py / evaluate.py flags.
TINY = ["--backbone", "resnet18", "--backbone_weights", "none", "--crop_size", "32", "--embed_dim", "64",
        "--word_dim", "32", "--num_workers", "0", "--device", "cpu", "--eval_batch_size", "32", "--no-val_figure"]
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread():
    """One intra-op thread: on a busy 2-core machine two OpenMP threads make small ops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_thread():
    with one_thread():
        yield


def run_cli(*args, check: bool = True, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root, as a user would; fail with its output."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real annotation files) is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Synthetic data of all three formats in one data root, small enough for seconds-long tests."""
    from data.synthetic import generate
    root = tmp_path_factory.mktemp("tiny_data")
    for dataset in ("fashioniq", "shoes", "fashion200k"):
        generate(root, dataset, size=32, seed=0, n_images=16 if dataset == "fashion200k" else 48, n_triplets=48)
    return root
