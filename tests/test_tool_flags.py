"""Every numeric flag a tool defines itself (outside config.py) has a range (issue 22, case 11): past it, the
command stops at the door with argparse's one-line error and status 2, before any file is read."""
import pytest

import retrieve
import serve
import visualize
from data.synthetic import cli as synthetic_cli
from experiments import ablation
from tools import data_commands

CASES = [
    (retrieve.main, ["query", "--index", "i", "--image", "x.jpg", "--text", "t", "--k", "0"], "--k"),
    (retrieve.main, ["query", "--index", "i", "--image", "x.jpg", "--text", "t", "--k", "10000000"], "--k"),
    (visualize.main, ["retrievals", "--ckpt", "c.pt", "--out", "o.png", "--n", "0"], "--n"),
    (visualize.main, ["retrievals", "--ckpt", "c.pt", "--out", "o.png", "--k", "1000"], "--k"),
    (visualize.main, ["retrievals", "--ckpt", "c.pt", "--out", "o.png", "--width", "99999999"], "--width"),
    (visualize.main, ["attention", "--ckpt", "c.pt", "--out", "o.png", "--colors", "100000"], "--colors"),
    (serve.main, ["search", "--index", "i", "--max_upload_mb", "nan"], "--max_upload_mb"),
    (serve.main, ["search", "--index", "i", "--port", "70000"], "--port"),
    (ablation.main, ["--dataset", "shoes", "--data_root", "d", "--out", "o", "--variants", "manme", "--jobs", "0"],
     "--jobs"),
    (synthetic_cli.main, ["--out", "o", "--dataset", "shoes", "--size", "100000"], "--size"),
    (synthetic_cli.main, ["--out", "o", "--dataset", "shoes", "--n_images", "-3"], "--n_images"),
    (synthetic_cli.main, ["--out", "o", "--dataset", "shoes", "--n_triplets", "1e12"], "--n_triplets"),
    (synthetic_cli.main, ["--out", "o", "--dataset", "shoes", "--photo", "99999x10"], "--photo"),
    (data_commands.prepare_main, ["--dataset", "shoes", "--data_root", "d", "--size", "0"], "--size"),
    (data_commands.prepare_main, ["--dataset", "shoes", "--data_root", "d", "--workers", "100000"], "--workers"),
]


@pytest.mark.parametrize("main, argv, flag", CASES, ids=[f"{m.__module__}{f}-{a[-1]}" for m, a, f in CASES])
def test_a_tool_flag_out_of_range_is_refused_at_the_door(main, argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing named in argv exists here: the range is checked before any file
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(("error:", "usage:")) or ": error: " in err, err
    assert flag in err, err
    assert not list(tmp_path.iterdir())  # nothing written
