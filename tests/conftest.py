"""Shared fixtures: tiny synthetic datasets (one per format), a tiny trained checkpoint, and the path to the
real annotations. The helpers tests import live in tests/helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Re-exported for test modules that still import them from here; new code imports from tests.helpers.
from tests.helpers import ONE_THREAD_ENV, ROOT, SHARED_DATA, TINY, TINY_TRAIN, one_thread, run_cli  # noqa: F401

# Two cores: keep intra-op threads from oversubscribing under pytest.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the real annotation files; the test is skipped where it is absent."""
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


@pytest.fixture(scope="session")
def ckpt(tiny_root, tmp_path_factory) -> Path:
    """A FashionIQ manme checkpoint after two optimizer steps of train.py (run as a command, once per test
    session); its vocabulary folder is ckpt.parents[2] / "vocab"."""
    out = tmp_path_factory.mktemp("tiny_run")
    run_cli("vocab.py", "--dataset", "fashioniq", "--data_root", tiny_root, "--vocab_dir", out / "vocab")
    run_cli("train.py", "--dataset", "fashioniq", "--data_root", tiny_root, "--vocab_dir", out / "vocab",
            "--output_dir", out, "--exp_name", "t", "--num_epochs", "1", "--max_steps", "2", *TINY_TRAIN)
    return out / "t" / "stage1" / "best.pt"
