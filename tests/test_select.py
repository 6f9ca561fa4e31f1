"""experiments.select: setting names, the declared rule on fabricated metrics, what a selection becomes (config
defaults, options, protocol flags; config.py rewritten and still loading), the held-out grid, the data checks,
a search decided from finished runs without training, and (slow) a tiny search run twice."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from config import SAVED_WITHOUT, Config
from experiments import select
from experiments.ablation import parse_variant, plan
from experiments.select import (
    BASE,
    HALF_MARGINS,
    README_GRID,
    Candidate,
    Stage,
    adoption,
    apply_to_config,
    candidates,
    decide,
    departures,
    grid,
    main,
    spec_of,
)
from tests.helpers import ONE_THREAD_ENV, ROOT, TINY, run_cli
from utils.errors import UserError, command_status


def setting(**changes):
    return {**BASE, **changes}


@pytest.fixture
def manme_md_defaults(monkeypatch):
    """config's defaults as they were before the dev selection was applied (MANME.md's values), which the
    adoption tests start from (adoption compares with today's defaults)."""
    for name in ("lambda_me", "margins"):
        monkeypatch.setattr(select.Config, name, BASE[name])


# ----------------------------------------------------------------------------- settings

def test_a_setting_is_named_by_its_departures_from_manme_md():
    assert spec_of(BASE) == "manme" and departures(BASE) == 0
    chosen = setting(lambda_me=0.1, margins=HALF_MARGINS, fpn_relu=True, crop_size=96)
    spec = spec_of(chosen)
    assert spec == "manme:lambda_me=0.1:margins=0.3,0.2,0.15:fpn_relu=true:crop_size=96"
    assert departures(chosen) == 4
    assert parse_variant(spec).overrides == {"lambda_me": 0.1, "margins": HALF_MARGINS, "fpn_relu": True,
                                             "crop_size": 96}
    assert spec_of(setting(lambda_me=0.0)) == "manme:lambda_me=0"  # the README grid's name of the control


def test_a_stage_starts_from_the_previous_winner():
    stage = Stage("fpn", ({}, {"fpn_relu": True}, {"fpn_relu": True}), controls=({"lambda_me": 0.0},))
    cands = candidates(stage, setting(lambda_me=0.1))
    assert [c.spec for c in cands] == ["manme:lambda_me=0.1", "manme:lambda_me=0.1:fpn_relu=true",
                                       "manme:lambda_me=0"]  # the duplicate runs once
    assert [c.control for c in cands] == [False, False, True]
    assert [len(s.changes) for s in select.SEARCH] == [6, 4, 2]  # the declared search: 6 + 4 + 2 candidates
    assert {k for s in select.SEARCH for c in s.changes for k in c} == set(BASE)  # every factor is searched


# ----------------------------------------------------------------------------- the rule

def cand(control=False, **changes_and_mr):
    mr = changes_and_mr.pop("mr")
    return Candidate(setting(**changes_and_mr), control, dict(enumerate(mr)))


def test_the_rule_picks_the_highest_mean_mr_when_it_is_clear():
    cands = [cand(mr=[50.0, 51.0, 52.0]), cand(lambda_me=0.3, mr=[53.0, 54.5, 55.0]),
             cand(lambda_me=0.1, mr=[56.0, 57.0, 59.0])]
    winner = decide(cands, [0, 1, 2])
    assert winner.spec == "manme:lambda_me=0.1"
    # best minus manme, per seed +6, +6, +7: mean 6.33, std 0.58: not tied
    assert cands[0].gap.mean == pytest.approx(19 / 3) and not cands[0].tied
    assert cands[2].gap.mean == 0 and cands[2].tied


def test_a_tie_within_one_paired_std_goes_to_manme_md_values():
    # lambda_me=0.1 has the higher mean, but seed by seed it is +3, -2, +2 over manme: mean 1 < std 2.65
    cands = [cand(mr=[50.0, 55.0, 52.0]), cand(lambda_me=0.1, mr=[53.0, 53.0, 54.0])]
    assert decide(cands, [0, 1, 2]).spec == "manme"
    assert cands[0].tied and cands[0].gap.mean == pytest.approx(1.0)
    # among tied ones with as many departures, the higher mean wins
    cands = [cand(mr=[40.0, 41.0, 40.0]), cand(lambda_me=0.1, mr=[53.0, 55.0, 52.0]),
             cand(lambda_me=0.3, mr=[54.0, 53.0, 54.0])]
    assert decide(cands, [0, 1, 2]).spec == "manme:lambda_me=0.3"  # 53.67 vs 53.33, each tied with the best
    two = [cand(lambda_me=0.1, margins=HALF_MARGINS, mr=[60.0, 60.0, 61.0]), cand(lambda_me=0.1, mr=[59.0, 61.0, 60.0])]
    assert decide(two, [0, 1, 2]).spec == "manme:lambda_me=0.1"  # one departure beats two when tied


def test_a_control_is_reported_but_never_chosen():
    cands = [cand(mr=[50.0, 51.0, 52.0]), cand(control=True, lambda_me=0.0, mr=[70.0, 71.0, 72.0])]
    assert decide(cands, [0, 1, 2]).spec == "manme"
    assert cands[1].gap.mean == pytest.approx(-20.0) and not cands[1].tied


def test_no_decision_before_every_seed_has_finished():
    cands = [cand(mr=[50.0, 51.0, 52.0]), cand(lambda_me=0.1, mr=[60.0, 61.0])]
    with pytest.raises(UserError, match=r"manme:lambda_me=0.1 seed 2 not finished"):
        decide(cands, [0, 1, 2])


# ----------------------------------------------------------------------------- what a selection becomes

def test_ours_become_defaults_fixed_become_options_crop_is_protocol(manme_md_defaults):
    adopt = adoption(setting(lambda_me=0.1, fpn_smooth="depthwise", crop_size=96))
    assert adopt == {"defaults": {"lambda_me": {"from": 1.0, "to": 0.1}},
                     "options": {"fpn_smooth": "depthwise"}, "protocol": {"crop_size": 96}}
    assert adoption(BASE) == {"defaults": {}, "options": {}, "protocol": {"crop_size": 64}}


def load_config(path, monkeypatch):
    """The config module at `path`, imported under another name (dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("config_applied", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "config_applied", module)
    spec.loader.exec_module(module)
    return module


def test_apply_rewrites_config_defaults_and_saved_without(tmp_path, monkeypatch):
    source, today = (ROOT / "config.py").read_text(), Config()
    changes = {"lambda_me": {"from": today.lambda_me, "to": 0.5}, "alpha": {"from": today.alpha, "to": 0.7}}
    (tmp_path / "config.py").write_text(apply_to_config(source, changes))
    applied = load_config(tmp_path / "config.py", monkeypatch)
    assert (applied.Config().lambda_me, applied.Config().alpha) == (0.5, 0.7)
    assert applied.Config().margins == today.margins and applied.Config().lambda_ov == 0.0  # nothing else moved
    # a config saved without a key keeps what it was trained with: a key already in SAVED_WITHOUT keeps its older
    # value there (lambda_me: MANME.md's 1, from before the dev selection), a new one gets today's default
    assert applied.SAVED_WITHOUT == {**SAVED_WITHOUT, "alpha": today.alpha}
    old = applied.resolve({}, base={"model": "manme"})
    assert (old.lambda_me, old.alpha) == (SAVED_WITHOUT["lambda_me"], today.alpha)
    assert applied.resolve({}).lambda_me == 0.5
    assert "--lambda_me LAMBDA_ME" in applied.build_parser("model", "").format_help()
    with pytest.raises(UserError, match="lambda_me"):  # the default is not what the selection started from
        apply_to_config(source, {"lambda_me": {"from": 0.25, "to": 0.1}})


def test_apply_prints_and_writes_nothing_without_write(tmp_path, capsys, manme_md_defaults):
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"selected": setting(lambda_me=0.1, fpn_relu=True, crop_size=96)}))
    before = (ROOT / "config.py").read_bytes()
    assert main(["apply", "--selection", str(path)]) == 0
    out = capsys.readouterr().out
    assert "default lambda_me: 1 -> 0.1" in out and "option --fpn_relu true: stays an option" in out
    assert "protocol --crop_size 96" in out and "add --write" in out
    assert (ROOT / "config.py").read_bytes() == before


# ----------------------------------------------------------------------------- the held-out grid

def fake_selection(**chosen):
    selected = setting(**chosen)
    return {"selected": selected, "selected_spec": spec_of(selected), "adopt": adoption(selected),
            "flags": {**select.SCHEDULE, **BASE}, "data": {"generator": {}}}


def test_the_grid_gets_the_selected_settings_where_presets_leave_them_free(tmp_path):
    variants, protocol = grid(fake_selection(lambda_me=0.1, fpn_relu=True, crop_size=96))
    assert [v.spec for v in variants] == [*README_GRID, "manme:fpn_relu=true"]
    assert protocol == {"crop_size": 96}
    by_spec = {v.spec: v.overrides for v in variants}
    assert by_spec["manme"]["lambda_me"] == 0.1 and by_spec["manme"]["fpn_relu"] is False
    assert by_spec["manme:lambda_me=0"]["lambda_me"] == 0.0  # the variant's own setting wins
    assert by_spec["manme:fpn_relu=true"]["fpn_relu"] is True and by_spec["manme:fpn_relu=true"]["lambda_me"] == 0.1
    assert "lambda_me" not in by_spec["artemis"] and "grains" not in by_spec["tirg"]  # their presets fix them
    runs = {r.variant.spec: r for r in plan(variants, [0], {"crop_size": 96}, tmp_path)}
    artemis = runs["artemis"].train_command()
    assert "--lambda_me" not in artemis and "--crop_size" in artemis and "96" in artemis
    assert runs["manme"].flags["lambda_me"] == 0.1


# ----------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def hard_roots(tmp_path_factory):
    """Tiny hard synthetic FashionIQ sets of generator seeds 0 (dev) and 1 (test), one design."""
    from data.synthetic import generate
    roots = {}
    for seed in (0, 1):
        roots[seed] = tmp_path_factory.mktemp(f"hard{seed}")
        generate(roots[seed], "fashioniq", size=32, seed=seed, n_images=16, n_triplets=8, difficulty="hard")
    return roots


def test_the_commands_refuse_what_the_protocol_fixes(hard_roots, tmp_path, capsys):
    out = tmp_path / "out"
    dev = ["dev", "--out", str(out), "--dry_run"]
    assert command_status(main, [*dev, "--data_root", str(hard_roots[0]), "--lambda_me", "0.1"]) == 2
    assert "the search chooses it" in capsys.readouterr().err
    assert command_status(main, [*dev, "--data_root", str(hard_roots[1])]) == 2  # the test set
    assert "--seed 0 --difficulty hard" in capsys.readouterr().err
    assert command_status(main, [*dev, "--data_root", str(tmp_path)]) == 2
    assert "SYNTHETIC.txt: not found" in capsys.readouterr().err
    easy = tmp_path / "easy" / "fashionIQ"
    easy.mkdir(parents=True)
    (easy / "SYNTHETIC.txt").write_text("Synthetic fashioniq data written by: python -m data.synthetic --out DIR "
                                        "--dataset fashioniq --size 64 --seed 0 --n_images 200 --n_triplets 250\n")
    assert command_status(main, [*dev, "--data_root", str(easy.parent)]) == 2
    assert "seed 0, not --difficulty hard" in capsys.readouterr().err
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps(fake_selection() | {"data": {"generator": {"dataset": "fashioniq"}}}))
    assert command_status(main, ["test", "--selection", str(selection), "--out", str(out), "--dry_run",
                                 "--data_root", str(hard_roots[1])]) == 2
    assert "not the dev set's design" in capsys.readouterr().err
    assert not out.exists()


def test_dry_runs_print_the_first_stage_and_the_whole_grid(hard_roots, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["dev", "--data_root", str(hard_roots[0]), "--out", str(out), "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = [line for line in lines if "train.py" in line]
    assert len(train) == 7 * 3 and lines[0].startswith("# stage 1")  # stage 1 only: the rest depends on it
    assert all("--finetune_epochs 5" in line and "--crop_size 64" in line for line in train)
    selection = tmp_path / "selection.json"
    dev_design = select.data_marker(hard_roots[0])
    selection.write_text(json.dumps(fake_selection(lambda_me=0.1, crop_size=96) | {"data": {"generator": dev_design}}))
    assert main(["test", "--selection", str(selection), "--data_root", str(hard_roots[1]), "--out", str(out),
                 "--dry_run"]) == 0
    train = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(train) == 10 * 3 + 3 * 2  # 3 seeds, 5 for manme, artemis and manme:lambda_me=0
    assert sum("--seed 4 " in line for line in train) == 3
    assert all("--crop_size 96" in line for line in train)
    assert not out.exists()


def fake_metrics(mr: float) -> dict:
    return {"dataset": "fashioniq", "split": "val", "overlap": {},
            "per_category": {"dress": {"gallery_size": 16}},
            "overall": {"R@1": 1.0, "R@5": 2.0, "R@10": mr - 5, "R@50": mr + 5, "mR": mr}}


def test_a_search_of_finished_runs_decides_every_stage_without_training(tmp_path, monkeypatch, capsys,
                                                                        manme_md_defaults):
    """Every run's results are there: nothing trains, the first stage's winner is where the second starts."""
    stages = (Stage("loss", ({}, {"lambda_me": 0.1})), Stage("fpn", ({}, {"fpn_relu": True})))
    mr = {"manme": [50, 51, 52], "manme:lambda_me=0.1": [55, 56, 58],
          "manme:lambda_me=0.1:fpn_relu=true": [55, 57, 57]}
    out, rows = tmp_path / "out", []
    for spec, values in mr.items():
        for seed, value in enumerate(values):
            run, = plan([parse_variant(spec)], [seed], {"two_stage": True}, out)
            run.metrics_path.parent.mkdir(parents=True)
            run.metrics_path.write_text(json.dumps(fake_metrics(float(value))))
            rows.append({"variant": spec, "seed": seed, "metrics": fake_metrics(float(value))})
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status, done = select.search(stages, [0, 1, 2], {"two_stage": True}, out, 1, "cmd")
    printed = capsys.readouterr().out
    assert status == 0 and printed.count("skipped") == 12 and " start " not in printed  # 6 runs per stage
    assert [s["winner"].spec for s in done] == ["manme:lambda_me=0.1", "manme:lambda_me=0.1"]  # relu: tied, simpler
    assert [c.spec for c in done[1]["candidates"]] == ["manme:lambda_me=0.1", "manme:lambda_me=0.1:fpn_relu=true"]
    record = select.selection_record(done, [0, 1, 2], {"data_root": "x"}, {"seed": "0"}, out)
    assert record["selected_spec"] == "manme:lambda_me=0.1" and record["runs"] == 9
    assert record["adopt"]["defaults"] == {"lambda_me": {"from": 1.0, "to": 0.1}}
    text = select.selection_markdown(record, done, select.follow_up(tmp_path / "sel"))
    assert "| `manme:lambda_me=0.1` | 1 | 55.00, 56.00, 58.00 | 56.33 ± 1.53 | +0.00 ± 0.00 | **winner** |" in text
    assert "apply --selection" in text and "--seed 1 --difficulty hard" in text


# ----------------------------------------------------------------------------- the tool on tiny data

@pytest.mark.slow
def test_tiny_selection_runs_decides_and_skips_finished_runs(hard_roots, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(select, "SEARCH", (Stage("tiny", ({}, {"lambda_me": 0.1})),))
    monkeypatch.setitem(select.BASE, "crop_size", 32)  # tiny images
    monkeypatch.setattr(select, "stop_on_signals", lambda: None)  # keep pytest's handlers
    for key, value in ONE_THREAD_ENV.items():
        monkeypatch.setenv(key, value)
    vocab, out, record = tmp_path / "vocab", tmp_path / "out", tmp_path / "selection"
    run_cli("vocab.py", "--dataset", "fashioniq", "--data_root", hard_roots[0], "--vocab_dir", vocab)
    at = TINY.index("--crop_size")
    tiny = TINY[:at] + TINY[at + 2:]  # the crop is BASE's
    command = ["dev", "--data_root", str(hard_roots[0]), "--vocab_dir", str(vocab), "--out", str(out),
               "--record", str(record), "--seeds", "0,1", "--jobs", "2", "--max_steps", "2", "--batch_size", "8",
               "--finetune_epochs", "1", *tiny]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert printed.count(" done ") == 4 and "selected on dev: manme" in printed and "experiments.select test" in printed
    saved = json.loads(record.with_suffix(".json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("manme", 0), ("manme", 1),
                                                               ("manme:lambda_me=0.1", 0), ("manme:lambda_me=0.1", 1)]
    settings = saved["stages"][0]["settings"]
    for row in rows:  # the decision is made on the runs' own metrics
        entry = next(s for s in settings if s["spec"] == row["variant"])
        assert entry["mR"][str(row["seed"])] == row["metrics"]["overall"]["mR"]
    means = {s["spec"]: sum(s["mR"].values()) / 2 for s in settings}
    assert saved["selected_spec"] == saved["stages"][0]["winner"] in means
    if saved["selected_spec"] != "manme":  # the simpler setting loses only when it is not tied
        assert not next(s for s in settings if s["spec"] == "manme")["tied"]
    assert "Selected:" in record.with_suffix(".md").read_text()

    before = (out / "results.jsonl").read_bytes()
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 4 and " start " not in printed
    assert (out / "results.jsonl").read_bytes() == before
    assert json.loads(record.with_suffix(".json").read_text())["selected_spec"] == saved["selected_spec"]
