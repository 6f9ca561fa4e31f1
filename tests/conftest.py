"""Shared fixtures: tiny synthetic datasets (one per format) and the path to the real annotations."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

# Two cores: keep intra-op threads from oversubscribing under pytest.
os.environ.setdefault("OMP_NUM_THREADS", "2")


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
