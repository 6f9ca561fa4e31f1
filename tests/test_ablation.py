"""experiments.ablation: variant specs, the run plan, the report's statistics, and (slow) a tiny
two-variant study run twice: the second invocation must skip both finished runs."""
from __future__ import annotations

import json
import re

import pytest

from experiments.ablation import VariantError, main, parse_variant, plan, split_variants
from experiments.report import Stat, best_marks, format_stat, markdown, mean_std, paired_difference
from tests.helpers import ONE_THREAD_ENV, TINY, read_png, run_cli
from utils.errors import UserError, command_status

# ----------------------------------------------------------------------------- variant specs

def test_variant_with_typed_overrides():
    v = parse_variant("manme:grains=coarse:lambda_me=0")
    assert (v.model, v.overrides) == ("manme", {"grains": "coarse", "lambda_me": 0.0})
    assert isinstance(v.overrides["lambda_me"], float)
    assert v.slug == "manme__grains-coarse__lambda_me-0"
    assert parse_variant("artemis").overrides == {}
    assert parse_variant("manme:share_attention=true:num_epochs=3").overrides == {"share_attention": True,
                                                                                  "num_epochs": 3}
    assert parse_variant("manme:share_attention=0").overrides == {"share_attention": False}


def test_a_value_with_commas_stays_with_its_field():
    assert split_variants("manme,artemis,manme:grains=coarse,mid,tirg,manme:margins=0.5,0.4,0.3") == [
        "manme", "artemis", "manme:grains=coarse,mid", "tirg", "manme:margins=0.5,0.4,0.3"]


@pytest.mark.parametrize("spec, named", [
    ("manmee", ["unknown model 'manmee'", "manme", "artemis", "late-fusion", "visual-search"]),
    ("manme:lamda_me=0", ["unknown field 'lamda_me'", "lambda_me", "grains", "share_attention"]),
    ("manme:lambda_me", ["not FIELD=VALUE", "lambda_me"]),
    ("manme:seed=1", ["set per run", "lambda_me"]),
    ("manme:dataset=shoes", ["same for every variant", "lambda_me"]),
    ("manme:lambda_me=abc", ["lambda_me='abc'", "float"]),
    ("manme:share_attention=yes", ["true, false, 1 or 0"]),
    ("manme:backbone=vgg", ["resnet50", "resnet18"]),
    ("manme:lambda_me=0:lambda_me=1", ["twice"]),
])
def test_a_bad_variant_names_the_valid_choices(spec, named):
    with pytest.raises(VariantError) as error:
        parse_variant(spec)
    for text in named:
        assert text in str(error.value)


def test_cli_refuses_a_bad_variant_before_training(capsys, tmp_path):
    out = tmp_path / "out"
    assert issubclass(VariantError, UserError)  # the project's error: one `error: ...` line, status 2
    assert command_status(main, ["--variants", "manme,tirgg", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "late-fusion" in err
    assert command_status(main, ["--variants", "manme:grains=huge", "--out", str(out)]) == 2  # config's check
    assert "granularity" in capsys.readouterr().err
    assert command_status(main, ["--variants", "manme", "--out", str(out), "--seed", "1"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a mistyped train.py flag: argparse's error
        main(["--variants", "manme", "--out", str(out), "--lamda_me", "0"])
    assert exit_.value.code == 2
    assert not out.exists()
    proc = run_cli("-m", "experiments.ablation", "--variants", "manme:lamda_me=0", "--out", out, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "lambda_me" in proc.stderr


def test_dry_run_prints_every_command_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["--variants", "manme:lambda_me=0,tirg", "--seeds", "0,1", "--out", str(out), "--dry_run",
                 "--max_steps", "2", "--two_stage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = [line for line in lines if "train.py" in line]
    evaluate = [line for line in lines if "evaluate.py" in line]
    assert len(train) == len(evaluate) == 4
    assert "--exp_name manme__lambda_me-0_seed1" in train[2] and "--seed 1" in train[2]
    assert "--lambda_me 0.0" in train[0] and "--max_steps 2" in train[0] and "--two_stage" in train[0]
    assert "--model tirg" in train[1] and "--lambda_me" not in train[1]
    assert "stage2/best.pt" in evaluate[0] and "--max_steps" not in evaluate[0]
    assert not out.exists()


def test_plan_resumes_a_started_run(tmp_path):
    run, = plan([parse_variant("tirg")], [3], {"data_root": "data"}, tmp_path)
    assert run.folder == tmp_path / "runs" / "tirg_seed3"
    assert run.checkpoint == run.folder / "stage1" / "best.pt" and "--resume" not in run.train_command()
    run.folder.mkdir(parents=True)
    (run.folder / "config.json").write_text("{}")
    assert run.train_command()[-2:] == ["--resume", "auto"]
    run, = plan([parse_variant("tirg:img_finetune=true")], [0], {}, tmp_path)
    assert run.checkpoint.parent.name == "stage2"


# ----------------------------------------------------------------------------- statistics and tables

def test_paired_difference_uses_the_seeds_both_have():
    reference = {0: 10.0, 1: 12.0, 2: 11.0}
    other = {0: 12.0, 1: 15.0, 3: 99.0}
    diff = paired_difference(reference, other)
    assert (diff.n, diff.mean) == (2, 2.5)
    assert diff.std == pytest.approx(0.5 ** 0.5)  # sample std of [2, 3]
    assert paired_difference(reference, {5: 1.0}) is None
    assert paired_difference({0: 1.0}, {0: 3.5}) == Stat(2.5, None, 1)


def test_mean_std_and_formatting():
    assert mean_std([1.0, 2.0, 3.0]) == Stat(2.0, 1.0, 3)
    assert format_stat(mean_std([5.0]), 2) == "5.00 ± n/a"
    assert format_stat(Stat(2.0, 1.0, 3), 2, bold=True) == "**2.00 ± 1.00**"
    assert format_stat(Stat(-0.5, 0.25, 2), 3, signed=True) == "-0.500 ± 0.250"
    assert format_stat(None, 2) == "—"


def test_best_marks_highest_or_lowest_ties_included():
    stats = [Stat(10.0, None, 1), Stat(12.0, None, 1), None, Stat(12.001, None, 1)]
    assert best_marks(stats) == [False, True, False, True]  # equal as displayed (2 decimals)
    assert best_marks(stats, lowest=True) == [True, False, False, False]
    assert best_marks([None, None]) == [False, False]


def metrics(r1: float, overlap: dict | None = None) -> dict:
    return {"dataset": "fashioniq", "split": "val", "overlap": overlap or {},
            "per_category": {"dress": {"gallery_size": 11}, "shirt": {"gallery_size": 21}},
            "overall": {"R@1": r1, "R@5": r1 + 10, "R@10": r1 + 20, "R@50": r1 + 30}}


def table(text: str, header: str) -> dict[str, list[str]]:
    """The markdown table whose header starts with `header`: variant -> its other cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_markdown_bolds_the_best_and_pairs_by_seed():
    rows = [{"variant": "manme", "seed": 0, "metrics": metrics(10.0, {"coarse": 0.2, "fine": 0.4})},
            {"variant": "manme", "seed": 1, "metrics": metrics(12.0, {"coarse": 0.4, "fine": 0.6})},
            {"variant": "tirg", "seed": 0, "metrics": metrics(13.0)},
            {"variant": "tirg", "seed": 1, "metrics": metrics(14.0)},
            {"variant": "tirg", "seed": 2, "metrics": metrics(30.0)},
            {"variant": "artemis", "seed": 1, "metrics": metrics(5.0, {"coarse": 0.1})}]
    text = markdown(rows, ["manme", "tirg", "artemis"], "python -m experiments.ablation ...")
    main_table = table(text, "| variant | seeds |")
    assert list(main_table) == ["manme", "tirg", "artemis"]
    assert main_table["manme"] == ["2", "11.00 ± 1.41", "21.00 ± 1.41", "31.00 ± 1.41", "41.00 ± 1.41",
                                   "0.400 ± 0.141"]
    assert main_table["tirg"][:2] == ["3", "**19.00 ± 9.54**"] and main_table["tirg"][-1] == "—"
    assert main_table["artemis"][1:] == ["5.00 ± n/a", "15.00 ± n/a", "25.00 ± n/a", "35.00 ± n/a", "**0.100 ± n/a**"]
    assert "lowest" in text.split("## Difference")[0].split("| artemis")[-1]  # said under the table
    diff = table(text, "| variant | paired seeds |")
    assert diff["tirg"] == ["2", "+2.50 ± 0.71", "+2.50 ± 0.71", "+2.50 ± 0.71", "+2.50 ± 0.71", "—"]
    assert diff["artemis"] == ["1", "-7.00 ± n/a", "-7.00 ± n/a", "-7.00 ± n/a", "-7.00 ± n/a", "-0.400 ± n/a"]
    assert "manme" not in diff
    # chance: K / (G - 1) of galleries of 11 and 21, averaged, capped at 100 %
    assert "R@1 7.50, R@5 37.50, R@10 75.00, R@50 100.00" in text
    assert "6 runs: 3 variants × seeds 0, 1, 2" in text and "`python -m experiments.ablation ...`" in text


# ----------------------------------------------------------------------------- the tool on tiny data

CELL = re.compile(r"\**([+-]?\d+\.\d+) ± (n/a|\d+\.\d+)\**")


@pytest.mark.slow
def test_tiny_ablation_writes_the_reports_and_skips_finished_runs(tiny_root, tmp_path):
    vocab, out = tmp_path / "vocab", tmp_path / "ablation"
    run_cli("vocab.py", "--dataset", "fashioniq", "--data_root", tiny_root, "--vocab_dir", vocab)
    command = ["-m", "experiments.ablation", "--dataset", "fashioniq", "--data_root", tiny_root,
               "--vocab_dir", vocab, "--out", out, "--variants", "manme:grains=coarse,fine,tirg", "--seeds", "0",
               "--jobs", "2", "--max_steps", "2", "--num_epochs", "1", *TINY, "--batch_size", "8"]
    first = run_cli(*command, env=ONE_THREAD_ENV)
    assert first.stdout.count(" done ") == 2, first.stdout

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["variant"] for r in rows) == ["manme:grains=coarse,fine", "tirg"]
    for row in rows:
        assert row["seed"] == 0 and row["train_seconds"] > 0 and row["checkpoint"].endswith("stage1/best.pt")
        assert set(row["metrics"]["overall"]) >= {"R@1", "R@5", "R@10", "R@50"}
    by_variant = {r["variant"]: r["metrics"] for r in rows}
    assert set(by_variant["manme:grains=coarse,fine"]["overlap"]) == {"coarse", "fine"}  # the override reached train.py
    assert by_variant["tirg"]["overlap"] == {}
    image = read_png(out / "results.png")
    assert image.width == 1000 and image.height > 200

    # the table's numbers are results.jsonl's (one seed: "± n/a")
    text = (out / "results.md").read_text()
    main_table = table(text, "| variant | seeds |")
    for variant, m in by_variant.items():
        cells = main_table[variant]
        assert cells[0] == "1"
        for key, cell in zip(("R@1", "R@5", "R@10", "R@50"), cells[1:5]):
            assert CELL.fullmatch(cell).groups() == (f"{m['overall'][key]:.2f}", "n/a"), (variant, key)
        overlap = m["overlap"]
        expected = f"{sum(overlap.values()) / len(overlap):.3f}" if overlap else None
        assert (CELL.fullmatch(cells[5]).group(1) if expected else cells[5]) == (expected or "—")
    best = max(m["overall"]["R@1"] for m in by_variant.values())
    for variant, m in by_variant.items():
        assert main_table[variant][1].startswith("**") == (f"{m['overall']['R@1']:.2f}" == f"{best:.2f}")
    diff = table(text, "| variant | paired seeds |")["tirg"]
    delta = by_variant["tirg"]["overall"]["R@1"] - by_variant["manme:grains=coarse,fine"]["overall"]["R@1"]
    assert CELL.fullmatch(diff[1]).group(1) == f"{delta:+.2f}"
    assert "Chance level" in text

    # a rerun skips both runs: no train.py, nothing under runs/ touched, results.jsonl unchanged
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    results = (out / "results.jsonl").read_bytes()
    second = run_cli(*command, env=ONE_THREAD_ENV)
    assert second.stdout.count("skipped") == 2 and " start " not in second.stdout, second.stdout
    assert (out / "results.jsonl").read_bytes() == results
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == before
    run_dirs = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert sorted(p.name for p in run_dirs) == ["manme__grains-coarse+fine_seed0", "tirg_seed0"]
    for run_dir in run_dirs:
        log = (run_dir / "ablation.log").read_text()
        assert sum(line.startswith("$ ") and "train.py" in line for line in log.splitlines()) == 1
