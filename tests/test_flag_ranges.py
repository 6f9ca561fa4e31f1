"""Settings that cannot train, and numbers past what memory and arithmetic hold, are refused at the door
(issue 22, cases 8 and 11): one `error:` line naming the flag, exit status 2, nothing written."""
from __future__ import annotations

import pytest

import train
from config import resolve
from engine.run import check_negatives
from utils.errors import UserError, command_status


@pytest.mark.parametrize("argv,expected", [
    (["--batch_size", "1"], "--batch_size 1: a batch of one triplet has no in-batch negative"),
    (["--margins", "nan,0.4,0.3"], "--margins 'nan,0.4,0.3': each margin must be a number between 0 and 2"),
    (["--margins", "0.6,inf,0.3"], "--margins '0.6,inf,0.3': each margin must be a number between 0 and 2"),
    (["--margins", "0.6,0.4,-0.1"], "--margins '0.6,0.4,-0.1': each margin must be a number between 0 and 2"),
    (["--temperature_init", "100"], "--temperature_init must be at most 80.0 (tau = exp(kappa) must be a finite"),
    (["--temperature_init", "-1000"], "--temperature_init must be at least -80.0"),
    (["--lr", "1e39"], "--lr must be at most 1e+30 (a float32 must hold it)"),
    (["--lr_decay", "3"], "--lr_decay must be at most 1 (a factor above 1 grows the learning rate without bound)"),
    (["--seed", "10000000"], "--seed must be at most 999999 (the per-item seeds derived from it must fit 64 bits)"),
    (["--crop_size", "100000"], "--crop_size must be at most 2048"),
    (["--embed_dim", "1000000000"], "--embed_dim must be at most 16384"),
    (["--num_workers", "100000"], "--num_workers must be at most 256"),
    (["--lambda_me", "1e300"], "--lambda_me must be at most 1000"),
    (["--gem_p", "1000"], "--gem_p must be at most 10 (x**p of the pooled features overflows float32 beyond)"),
    (["--eval_batch_size", "10000000"], "--eval_batch_size must be at most 16384"),
    (["--eval_chunk", "65536", "--gallery_chunk", "1048576"], "more than 2**28 scores held at once"),
], ids=lambda v: v if isinstance(v, str) and v.startswith("--") else None)
def test_settings_that_cannot_train_are_refused_naming_the_flag(tmp_path, capsys, argv, expected):
    runs = tmp_path / "runs"
    status = command_status(train.main, ["--output_dir", str(runs), "--data_root", str(tmp_path / "data"), *argv])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert expected in line, line
    assert not runs.exists(), "refused before anything is written"


def test_no_negative_per_process_under_torchrun_without_gathering():
    cfg = resolve({"batch_size": 1, "gather_negatives": False})
    with pytest.raises(UserError, match="--batch_size 1: a batch of one triplet per process has no in-batch negative"):
        check_negatives(cfg, world_size=4)
    check_negatives(resolve({"batch_size": 1}), world_size=4)      # gathered: the global batch holds 4
    check_negatives(resolve({"batch_size": 2, "gather_negatives": False}), world_size=4)


def test_a_hand_edited_config_is_held_to_the_same_ranges():
    with pytest.raises(UserError, match=r"--margins 'nan,nan,nan'"):
        resolve({}, base={"margins": "nan,nan,nan"}, source="runs/x/config.json")
    with pytest.raises(UserError, match=r"--temperature_init must be at most 80"):
        resolve({}, base={"temperature_init": 1e6}, source="runs/x/config.json")
