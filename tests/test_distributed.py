"""torchrun + DDP on the CPU (gloo, 2 processes) against a single process, on tiny synthetic Shoes data.

The runs use the commands docs/distributed.md (Training on several GPUs) documents:
  torchrun --standalone --nproc_per_node 2 train.py ... --batch_size 4      (A: 2 processes x 4)
  python train.py ... --batch_size 8                                        (B: 1 process x 8)
  python evaluate.py --ckpt A/stage1/last.pt ...                            (C)
  python train.py ... --resume auto --batch_size 8                          (D: A's DDP checkpoint, 1 process)
  torchrun --nnodes 1 --nproc_per_node 2 --rdzv_backend c10d --rdzv_endpoint localhost:PORT --rdzv_id ID
      train.py ... --resume auto --batch_size 4 --no-gather_negatives      (E: B's 1-process checkpoint, DDP)
With gathered negatives the 2x4 run must train like the 1x8 run: same first-step loss, same gradients.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.trainer import TIMINGS
from tests.helpers import ROOT, read_jsonl

pytestmark = [
    pytest.mark.slow,  # torchrun and train.py as commands
    pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                       reason="this PyTorch build has no gloo backend"),
]
TORCHRUN = ([str(Path(sys.executable).parent / "torchrun")] if (Path(sys.executable).parent / "torchrun").exists()
            else [sys.executable, "-m", "torch.distributed.run"])
# the model of tests.helpers.TINY; the validation figure stays on, evaluation batches of 16 split the gallery
FLAGS = ["--backbone", "resnet18", "--backbone_weights", "none", "--crop_size", "32", "--embed_dim", "64",
         "--word_dim", "32", "--num_workers", "0", "--device", "cpu", "--eval_batch_size", "16",
         "--log_every", "1", "--seed", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(command: list, cwd: Path):
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_py(*args):
    return [ROOT / "train.py", *args]


def rows(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "stage1" / "train_log.jsonl")


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = {}
    for event_file in sorted((run_dir / "tensorboard").iterdir()):
        events = EventAccumulator(str(event_file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in events.Scalars(tag))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: torchrun 2 x batch 4; B: one process x batch 8; one optimizer step each (then validation in A)."""
    import vocab as vocab_cli
    from data.synthetic import generate
    tmp = tmp_path_factory.mktemp("dist")
    # an odd gallery (41 val images) makes the two evaluation shards unequal
    generate(tmp / "data", "shoes", size=32, seed=0, n_images=41, n_triplets=60)
    vocab_argv = ["--dataset", "shoes", "--data_root", str(tmp / "data"), "--vocab_dir", str(tmp / "vocab")]
    assert vocab_cli.main(vocab_argv) in (0, None)
    common = ["--dataset", "shoes", "--data_root", tmp / "data", "--vocab_dir", tmp / "vocab",
              "--output_dir", tmp / "runs", "--num_epochs", "2", "--max_steps", "1", *FLAGS]
    # cwd is an empty folder: nothing may be written outside --output_dir; each rank's output goes to --log-dir
    a = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "--log-dir", tmp / "torchrun_logs", "--redirects", "3",
             *train_py(*common, "--exp_name", "a", "--batch_size", "4")], cwd=tmp / "cwd_a")
    b = run([sys.executable, *train_py(*common, "--exp_name", "b", "--batch_size", "8", "--no-validate")],
            cwd=tmp / "cwd_b")
    return {"tmp": tmp, "a": tmp / "runs" / "a", "b": tmp / "runs" / "b", "common": common, "proc_a": a, "proc_b": b}


def test_two_processes_train_like_one_with_the_global_batch(runs):
    a, b = rows(runs["a"]), rows(runs["b"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1]
    for key, value in b[0].items():
        if key not in TIMINGS:  # wall-clock times differ from run to run
            assert abs(a[0][key] - value) < 1e-5, (key, a[0][key], value)
    ckpt_a = torch.load(runs["a"] / "stage1" / "last.pt", weights_only=True)
    ckpt_b = torch.load(runs["b"] / "stage1" / "last.pt", weights_only=True)
    # the checkpoint of a DDP run is the plain model's: same keys and shapes as a single process's
    assert {k: v.shape for k, v in ckpt_a["model"].items()} == {k: v.shape for k, v in ckpt_b["model"].items()}
    assert not any(k.startswith("module.") for k in ckpt_a["model"])
    # after one AdamW step, exp_avg = (1 - beta1) * grad and exp_avg_sq = (1 - beta2) * grad^2: the DDP
    # gradient (all_gather backward summed, then DDP's mean) must equal the batch-8 gradient, scale included
    state_a, state_b = ckpt_a["optimizer"]["state"], ckpt_b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and len(state_b) > 10
    for index in state_b:
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = state_a[index][key], state_b[index][key]
            assert (x - y).abs().max() <= 1e-3 * y.abs().max() + 1e-12, (index, key)


def test_only_rank_zero_writes_and_reports(runs):
    tmp, run_dir = runs["tmp"], runs["a"]
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    event_files = [w for w in written if w.startswith("tensorboard/")]
    assert len(event_files) == 1, written
    assert sorted(set(written) - set(event_files)) == [
        "config.json", "stage1/best.pt", "stage1/last.pt", "stage1/train_log.jsonl", "train.log", "vocab.json"]
    assert not any((tmp / "cwd_a").iterdir()), "a rank wrote into the working directory"
    assert (run_dir / "train.log").read_text().count("stage 1: model") == 1
    # torchrun --redirects 3 kept each rank's streams apart: rank 1 shows no progress bar and no log lines
    logs = {p.parent.name + "/" + p.name: p.read_text() for p in (tmp / "torchrun_logs").rglob("*.log")}
    assert {"0/stdout.log", "1/stdout.log", "0/stderr.log", "1/stderr.log"} <= set(logs), sorted(logs)
    assert "stage 1 epoch 1/2" in logs["0/stderr.log"] and "validation" in logs["0/stdout.log"]
    assert logs["1/stdout.log"].strip() == "", logs["1/stdout.log"]
    assert "stage 1 epoch" not in logs["1/stderr.log"] and "embed images" not in logs["1/stderr.log"]


def test_sharded_validation_equals_single_process_evaluate(runs):
    """A validated on 2 shards at the end of its epoch, then saved last.pt; evaluate.py (1 process) must agree."""
    tmp = runs["tmp"]
    out = tmp / "eval_a"
    run([sys.executable, ROOT / "evaluate.py", "--ckpt", runs["a"] / "stage1" / "last.pt", "--data_root", tmp / "data",
         "--output_dir", out, "--device", "cpu", "--num_workers", "0", "--eval_batch_size", "16"], cwd=tmp / "cwd_c")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_category"]["shoes"]["gallery_size"] == 41
    logged = scalars(runs["a"])
    for key, value in metrics["overall"].items():
        assert logged[f"stage1/val/{key}"] == [pytest.approx(value, abs=1e-4)], key
    for grain, value in metrics["overlap"].items():
        assert logged[f"stage1/overlap/{grain}"] == [pytest.approx(value, abs=1e-6)], grain


def expected_rows(run_dir: Path, checkpoint: Path, batch_size: int, n_batches: int) -> dict[str, float]:
    """The loss parts of the first step of epoch 2 from `checkpoint`, recomputed in this process with
    `n_batches` batches of `batch_size` (their mean: what per-rank negatives log under DDP)."""
    from config import resolve
    from engine.checkpoint import load_checkpoint
    from engine.trainer import Stage, Trainer
    from utils.distributed import DistInfo
    cfg = resolve({"batch_size": batch_size}, base=json.loads((run_dir / "config.json").read_text()))
    trainer = Trainer(cfg, Stage(1, 2, cfg.step_lr, run_dir / "unused"), DistInfo(), run_dir, None)
    trainer.restore(load_checkpoint(checkpoint), str(checkpoint))
    trainer.sampler.set_epoch(trainer.epoch, trainer.epoch_step)
    parts = []
    with torch.no_grad():
        for _, batch in zip(range(n_batches), trainer.loader):
            out = trainer.train_step(batch)
            parts.append({"loss": float(out.total), **{k: float(v) for k, v in out.parts.items()}})
    return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}


def test_resume_across_world_sizes(runs):
    """D: A's DDP checkpoint resumed by one process; E: B's single-process checkpoint resumed under torchrun
    with per-rank negatives, whose logged loss must be the mean over ranks."""
    tmp = runs["tmp"]
    for source, name in (("a", "d"), ("b", "e")):
        shutil.copytree(runs[source], tmp / "runs" / name)
    resume = ["--output_dir", tmp / "runs", "--resume", "auto", "--max_steps", "2", "--no-validate"]
    run([sys.executable, *train_py("--exp_name", "d", "--batch_size", "8", *resume)], cwd=tmp / "cwd_d")
    # E uses the multi-node form of docs/distributed.md (Training on several GPUs) (c10d rendezvous), with one node
    run([*TORCHRUN, "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
         "--rdzv_endpoint", f"localhost:{free_port()}", "--rdzv_id", "test_e",
         *train_py("--exp_name", "e", "--batch_size", "4", "--no-gather_negatives", *resume)], cwd=tmp / "cwd_e")
    for name, source, batch_size, n_batches in (("d", "a", 8, 1), ("e", "b", 4, 2)):
        run_dir = tmp / "runs" / name
        logged = rows(run_dir)
        assert [r["step"] for r in logged] == [1, 2] and logged[1]["epoch"] == 2, (name, logged)
        state = torch.load(run_dir / "stage1" / "last.pt", weights_only=True)
        assert (state["step"], state["epoch"]) == (2, 2)
        assert len(list((run_dir / "tensorboard").iterdir())) == 2     # the source run's and this run's
        expected = expected_rows(run_dir, runs[source] / "stage1" / "last.pt", batch_size, n_batches)
        for key, value in expected.items():
            assert abs(logged[1][key] - value) < 1e-5, (name, key, logged[1][key], value)


def test_mid_epoch_resume_with_another_global_batch(runs):
    """A checkpoint from 2 x 4 resumed by 1 x 8 mid-epoch continues at the same triplet of the epoch's order."""
    from config import resolve
    from engine.trainer import Stage, Trainer
    from utils.distributed import DistInfo
    run_dir = runs["b"]
    cfg = resolve({"batch_size": 8}, base=json.loads((run_dir / "config.json").read_text()))
    trainer = Trainer(cfg, Stage(1, 2, cfg.step_lr, run_dir / "unused"), DistInfo(), run_dir, None)
    checkpoint = torch.load(run_dir / "stage1" / "last.pt", weights_only=True)
    assert checkpoint["global_batch"] == 8
    for saved_batch, epoch_step, expected in ((4, 3, 1), (4, 4, 2), (8, 3, 3), (16, 2, 4)):
        trainer.restore({**checkpoint, "epoch": 0, "epoch_step": epoch_step, "global_batch": saved_batch}, "test")
        assert trainer.epoch_step == expected, (saved_batch, epoch_step)
