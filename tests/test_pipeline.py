"""End to end: vocab.py -> train.py (two stages, a few steps) -> evaluate.py, on each synthetic format."""
from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import TINY_TRAIN, read_jsonl, run_cli

pytestmark = pytest.mark.slow  # every test runs train.py and evaluate.py as commands


@pytest.fixture(scope="module", params=["fashioniq", "shoes", "fashion200k"])
def trained(request, tiny_root, tmp_path_factory):
    dataset = request.param
    out = tmp_path_factory.mktemp(f"run_{dataset}")
    vocab_dir = out / "vocab"
    run_cli("vocab.py", "--dataset", dataset, "--data_root", tiny_root, "--vocab_dir", vocab_dir)
    run_cli("train.py", "--dataset", dataset, "--data_root", tiny_root, "--vocab_dir", vocab_dir,
            "--output_dir", out, "--exp_name", "t", "--two_stage", "--num_epochs", "1", "--finetune_epochs", "1",
            "--max_steps", "3", *TINY_TRAIN)
    return dataset, out / "t", tiny_root


def test_two_stage_run_writes_every_file(trained):
    dataset, run_dir, _ = trained
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == dataset
    assert config["tf32"] is True and config["cudnn_benchmark"] is True  # the precision settings, recorded
    assert (run_dir / "vocab.json").is_file() and (run_dir / "train.log").is_file()
    assert any((run_dir / "tensorboard").iterdir())
    for stage in ("stage1", "stage2"):
        for name in ("last.pt", "best.pt", "train_log.jsonl"):
            assert (run_dir / stage / name).is_file(), f"{stage}/{name} missing"
        rows = read_jsonl(run_dir / stage / "train_log.jsonl")
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == 3
        for key in ("epoch", "loss", "lr", "temperature", "sim"):
            assert key in rows[0], key
        # timings: the wait for the loader is part of the step's wall time
        assert all(0 <= r["load_wait_ms"] <= r["step_ms"] * 2 and r["step_ms"] > 0 for r in rows)
        state = torch.load(run_dir / stage / "last.pt", weights_only=True)
        for key in ("model", "optimizer", "scheduler", "epoch", "step", "best_score", "rng", "config", "vocab"):
            assert key in state, key


def test_evaluate_writes_consistent_metrics(trained, tmp_path):
    dataset, run_dir, root = trained
    out = tmp_path / "eval"
    proc = run_cli("evaluate.py", "--ckpt", run_dir / "stage2" / "best.pt", "--data_root", root,
                   "--output_dir", out, "--device", "cpu", "--num_workers", "0")
    assert "R@10" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    rankings = read_jsonl(out / "rankings.jsonl")
    assert metrics["dataset"] == dataset and metrics["split"] == "val"
    assert sum(m["n_queries"] for m in metrics["per_category"].values()) == len(rankings)
    for row in rankings:
        assert row["reference"] not in row["ranking"], "a reference image ranked against itself"
        assert len(row["ranking"]) == min(50, metrics["per_category"][row["category"]]["gallery_size"] - 1)
    # R@K recomputed from the top-50 lists must equal the reported figure
    for cat, m in metrics["per_category"].items():
        rows = [r for r in rankings if r["category"] == cat]
        for key in [k for k in m if k.startswith("R@")]:
            k = int(key[2:])
            hits = sum(any(t in r["ranking"][:k] for t in r["targets"]) for r in rows)
            assert abs(100 * hits / len(rows) - m[key]) < 1e-6, (cat, key)
    if dataset == "fashioniq":
        from config import resolve
        from data.formats import open_dataset
        fmt = open_dataset(resolve({"dataset": "fashioniq", "data_root": str(root)}))
        n_annotations = sum(len(json.loads(p.read_text())) for p in
                            (fmt.root / "annotations" / "captions").glob("cap.*.val.json"))
        assert len(rankings) == 2 * n_annotations
        assert all(" <and> " in r["text"] for r in rankings)
    if dataset == "fashion200k":
        assert any(len(r["targets"]) > 1 for r in rankings), "no query with several same-description targets"


def test_stage2_without_stage1_is_a_clear_error(tiny_root, tmp_path):
    run_cli("vocab.py", "--dataset", "shoes", "--data_root", tiny_root, "--vocab_dir", tmp_path / "v")
    proc = run_cli("train.py", "--dataset", "shoes", "--data_root", tiny_root, "--vocab_dir", tmp_path / "v",
                   "--output_dir", tmp_path, "--exp_name", "x", "--img_finetune", "--txt_finetune", *TINY_TRAIN,
                   check=False)
    assert proc.returncode != 0 and "stage-1 checkpoint" in proc.stderr
