"""Choose settings on a development set, report once on a held-out test set (issue 24). The protocol, its
seeds and its rule are declared in docs/ablation.md, "Protocol: select on dev, report once on test".

  python -m experiments.select dev   --data_root DEV  --vocab_dir VOCAB_DEV  --out runs/select-dev  [--jobs 2]
  python -m experiments.select test  --data_root TEST --vocab_dir VOCAB_TEST --out runs/heldout [--jobs 2]
  python -m experiments.select apply [--write]

dev: the staged search SEARCH on the dev set (the hard synthetic FashionIQ of generator seed DEV_SEED), every
setting trained with 3 seeds at the declared SCHEDULE; after each stage RULE picks the setting the next
stage starts from. Writes docs/selection.json and docs/selection.md (--record) and prints the follow-up.
test: every variant of the README's grid, with the selected settings, on the test set (generator seed
TEST_SEED, the same design), 3 seeds (5 for manme, artemis and manme:lambda_me=0); writes
docs/heldout.md and docs/heldout.jsonl (--record). Each variant gets a selected model setting unless its
own preset fixes that field (artemis keeps lambda_me 0).
apply: turns a selection into defaults where MANME.md marks the value *(ours)*: prints what changes and,
with --write, edits config.py (the field's default, and its old value into SAVED_WITHOUT so that a saved
config without the key keeps meaning what it was trained with). A selected value that MANME.md fixes
otherwise stays an option; the crop size is this benchmark's resolution, not manme's.

Both run commands are experiments.ablation's machinery: rerunning skips finished runs and continues
interrupted ones; --jobs runs several at once; Ctrl-C saves and stops. Other train.py flags (--device cuda,
--num_workers) go to every run; the searched fields, --dataset and the per-run flags are refused.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Config, build_parser, given_flags
from data.synthetic.writers import FOLDERS, MARKER
from experiments.ablation import (
    PER_RUN,
    TRAIN_GROUPS,
    Variant,
    add_run_flags,
    check_ready,
    parse_seeds,
    parse_variant,
    plan,
    read_results,
    run_all,
    shared_flags,
    show_plan,
    stop_on_signals,
    write_reports,
)
from experiments.report import Stat, format_stat, mean_std, paired_difference
from models import VARIANTS
from utils.errors import UserError, run_command, subcommand
from utils.io import atomic_write_json, atomic_write_text, check_output_file, read_json

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m experiments.select"
COMMANDS = ("dev", "test", "apply")
DECLARED = "docs/ablation.md, \"Protocol: select on dev, report once on test\" (2026-12-05)"

# ----------------------------------------------------------------------------- the declared protocol

DEV_SEED, TEST_SEED = 0, 1  # generator seeds of the dev and the test set
GENERATE = ("python -m data.synthetic --out {out} --dataset fashioniq --size 64 --seed {seed} --difficulty hard "
            "--n_triplets 300")
SEEDS, EXTRA_SEEDS = "0,1,2", "3,4"  # training seeds; test: EXTRA_SEEDS too for FIVE_SEEDS
# the longer schedule of docs/ablation.md: one frozen epoch, five fine-tuning epochs (280 steps), from scratch
SCHEDULE: dict[str, Any] = dict(dataset="fashioniq", backbone="resnet18", backbone_weights="none", batch_size=32,
                                num_workers=0, device="cpu", two_stage=True, num_epochs=1, step_lr=4,
                                finetune_epochs=5, finetune_step_lr=4, validate=False, val_figure=False)
# the searched fields at MANME.md's values (and 64 px), where the search starts; the order names settings
BASE: dict[str, Any] = {"lambda_me": 1.0, "margins": "0.6,0.4,0.3", "fpn_relu": False, "fpn_smooth": "full",
                        "crop_size": 64}
HALF_MARGINS = "0.3,0.2,0.15"
# what a selected value may become: "ours" a default (MANME.md marks the value *(ours)*), "fixed" an option
# only (MANME.md fixes it), "protocol" the test report's flag (a setting of this benchmark, not of manme)
ROLES: dict[str, tuple[str, str]] = {
    "lambda_me": ("ours", "MANME.md §3: λ_me = 1 *(ours)*"),
    "margins": ("ours", "MANME.md §3: δ = (0.6, 0.4, 0.3) *(ours)*"),
    "fpn_relu": ("fixed", "MANME.md §1: no non-linearity after the smoothing convs"),
    "fpn_smooth": ("fixed", "MANME.md §1: the smoothing convs are dense 3×3 convs"),
    "crop_size": ("protocol", "MANME.md §5: 224 px on the real datasets; 64 or 96 px is this benchmark's resolution"),
}
README_GRID = ("manme", "artemis", "manme:lambda_me=0", "manme:grains=coarse", "manme:grains=fine", "late-fusion",
               "tirg", "em-only", "is-only", "visual-search")
FIVE_SEEDS = ("manme", "artemis", "manme:lambda_me=0")


@dataclass(frozen=True)
class Stage:
    name: str
    changes: tuple[dict, ...]        # each applied on top of the previous stage's winner; {} is that winner
    controls: tuple[dict, ...] = ()  # run and reported beside the candidates, never chosen


SEARCH = (
    Stage("loss: λ_me and the margins", ({}, {"lambda_me": 0.3}, {"lambda_me": 0.1}, {"margins": HALF_MARGINS},
                                          {"lambda_me": 0.3, "margins": HALF_MARGINS},
                                          {"lambda_me": 0.1, "margins": HALF_MARGINS}),
          # λ_me = 0 removes MANME.md §3's constraint: that is the grid's manme:lambda_me=0, not a manme setting
          controls=({"lambda_me": 0.0},)),
    Stage("top-down pathway", ({}, {"fpn_relu": True}, {"fpn_smooth": "depthwise"},
                               {"fpn_relu": True, "fpn_smooth": "depthwise"})),
    Stage("resolution", ({}, {"crop_size": 96})),
)
RULE = ("Per stage, among its candidates (not its controls), with every seed finished: the best is the highest "
        "mean mR over the seeds (mR: FashionIQ's mean of R@10 and R@50). A candidate is tied with the best when "
        "the best minus it, paired by seed, has a mean no larger than its sample std (within one paired std). "
        "Among the tied ones the winner is the one that departs from MANME.md's values (and 64 px) in the "
        "fewest fields, then the higher mean mR. The next stage starts from the winner.")


# ----------------------------------------------------------------------------- settings and the rule

def text_of(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def spec_of(setting: dict[str, Any], model: str = "manme") -> str:
    """A variant spec naming the fields that differ from BASE, in BASE's order: manme:lambda_me=0.1."""
    return ":".join([model] + [f"{k}={text_of(setting[k])}" for k in BASE if setting[k] != BASE[k]])


def departures(setting: dict[str, Any]) -> int:
    return sum(setting[k] != BASE[k] for k in BASE)


def mr_of(metrics: dict) -> float:
    overall = metrics["overall"]
    return overall["mR"] if "mR" in overall else (overall["R@10"] + overall["R@50"]) / 2


@dataclass
class Candidate:
    setting: dict[str, Any]          # every field of BASE
    control: bool = False
    mr: dict[int, float] = field(default_factory=dict)   # seed -> mR
    gap: Stat | None = None          # the best minus this, paired by seed
    tied: bool = False

    @property
    def spec(self) -> str:
        return spec_of(self.setting)


def candidates(stage: Stage, start: dict[str, Any]) -> list[Candidate]:
    """The stage's settings on top of `start`, candidates first; a setting listed twice is run once."""
    out: dict[str, Candidate] = {}
    for changes, control in [*((c, False) for c in stage.changes), *((c, True) for c in stage.controls)]:
        c = Candidate({**start, **changes}, control)
        out.setdefault(c.spec, c)
    return list(out.values())


def decide(cands: list[Candidate], seeds: list[int]) -> Candidate:
    """RULE: fills each candidate's gap and tied, returns the winner; every candidate needs every seed."""
    missing = [f"{c.spec} seed {s}" for c in cands for s in seeds if s not in c.mr]
    if missing:
        raise UserError(f"no decision yet: {', '.join(missing)} not finished; rerun the same command")
    chosen = [c for c in cands if not c.control]
    best = max(chosen, key=lambda c: mean_std([c.mr[s] for s in seeds]).mean)
    for c in cands:
        c.gap = paired_difference({s: c.mr[s] for s in seeds}, {s: best.mr[s] for s in seeds})
        c.tied = not c.control and c.gap.mean <= (c.gap.std or 0.0)
    order = {id(c): i for i, c in enumerate(chosen)}
    return min((c for c in chosen if c.tied),
               key=lambda c: (departures(c.setting), -mean_std([c.mr[s] for s in seeds]).mean, order[id(c)]))


# ----------------------------------------------------------------------------- the data

def data_marker(data_root: str) -> dict[str, str]:
    """The generator command that wrote <data_root>/fashionIQ (from its SYNTHETIC.txt) as {flag: value}."""
    path = Path(data_root) / FOLDERS["fashioniq"] / MARKER
    if not path.is_file():
        raise UserError(f"{path}: not found; --data_root must be a hard synthetic FashionIQ set written by "
                        f"`{GENERATE.format(out='DIR', seed='N')}`")
    words = shlex.split(path.read_text().splitlines()[0].partition("written by: ")[2])
    flags = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            flags[word[2:]] = "" if nxt.startswith("--") or not nxt else nxt
    flags.pop("out", None)
    return flags


def check_data(data_root: str, seed: int, which: str) -> dict[str, str]:
    """The data root holds the hard synthetic FashionIQ of generator seed `seed`; returns its marker flags."""
    flags = data_marker(data_root)
    hard = flags.get("difficulty") == "hard"
    if flags.get("dataset") != "fashioniq" or not hard or flags.get("seed") != str(seed):
        raise UserError(f"--data_root {data_root}: written with seed {flags.get('seed')}"
                        f"{'' if hard else ', not --difficulty hard'}; the {which} set is "
                        f"`{GENERATE.format(out='DIR', seed=seed)}`")
    return flags


# ----------------------------------------------------------------------------- dev: the search

def search(stages, seeds: list[int], shared: dict[str, Any], out: Path, jobs: int, command: str,
           dry_run: bool = False) -> tuple[int, list[dict]]:
    """Run the stages in order, each from the previous winner. Returns (status, per stage: its candidates and
    winner); with dry_run, prints the commands of the first unfinished stage and stops there."""
    start, done, order = dict(BASE), [], []
    for stage in stages:
        cands = candidates(stage, start)
        order += [c.spec for c in cands if c.spec not in order]
        runs = plan([parse_variant(c.spec) for c in cands], seeds, shared, out)
        if dry_run:
            rows = read_results(out)
            if not all(finished(rows, c.spec, s) for c in cands for s in seeds):
                print(f"# stage {len(done) + 1}, {stage.name}; the later stages start from its winner")
                show_plan(runs, out)
                return 0, done
        else:
            status = run_all(runs, out, jobs, [c.spec for c in cands], command)
            if status:
                return status, done
            rows = read_results(out)
        for c in cands:
            c.mr = {r["seed"]: mr_of(r["metrics"]) for r in rows if r["variant"] == c.spec and r["seed"] in seeds}
        winner = decide(cands, seeds)
        done.append({"stage": stage.name, "candidates": cands, "winner": winner})
        if not dry_run:
            print(stage_table(stage.name, cands, winner, seeds))
        start = winner.setting
    if not dry_run:
        write_reports(out, order, command)
    return 0, done


def finished(rows: list[dict], spec: str, seed: int) -> bool:
    return any(r["variant"] == spec and r["seed"] == seed for r in rows)


def stage_table(name: str, cands: list[Candidate], winner: Candidate, seeds: list[int]) -> str:
    lines = [f"### {name}", "", "| setting | departures | mR per seed | mR | best − it, paired | tied |",
             "|---|---|---|---|---|---|"]
    for c in cands:
        per_seed = ", ".join(f"{c.mr[s]:.2f}" for s in seeds)
        mark = "control" if c.control else "**winner**" if c is winner else "yes" if c.tied else "no"
        lines.append(f"| `{c.spec}` | {departures(c.setting)} | {per_seed} | "
                     f"{format_stat(mean_std([c.mr[s] for s in seeds]), 2)} | "
                     f"{format_stat(c.gap, 2, signed=True)} | {mark} |")
    return "\n".join(lines) + "\n"


def adoption(selected: dict[str, Any]) -> dict[str, dict]:
    """What the selection becomes, by ROLES: config defaults (ours, where they differ from today's), options
    (fixed by MANME.md, where the selection departs from it) and the test report's protocol flags."""
    result: dict[str, dict] = {"defaults": {}, "options": {}, "protocol": {}}
    for name, (role, _) in ROLES.items():
        value = selected[name]
        if role == "ours" and value != getattr(Config, name):
            result["defaults"][name] = {"from": getattr(Config, name), "to": value}
        elif role == "fixed" and value != BASE[name]:
            result["options"][name] = value
        elif role == "protocol":
            result["protocol"][name] = value
    return result


def selection_record(done: list[dict], seeds: list[int], shared: dict, marker: dict, out: Path) -> dict:
    rows = read_results(out)
    specs = {c.spec for stage in done for c in stage["candidates"]}
    used = [r for r in rows if r["variant"] in specs and r["seed"] in seeds]
    selected = done[-1]["winner"].setting
    return {
        "protocol": DECLARED, "rule": RULE, "metric": "mR", "seeds": seeds,
        "data": {"generator": marker, "command": GENERATE.format(out="DEV", seed=marker.get("seed"))},
        "flags": {k: v for k, v in shared.items() if k not in ("data_root", "vocab_dir")},
        "stages": [{"stage": s["stage"], "winner": s["winner"].spec,
                    "settings": [{"spec": c.spec, "setting": c.setting, "control": c.control,
                                  "departures": departures(c.setting), "mR": {str(k): v for k, v in c.mr.items()},
                                  "best_minus_it": None if c.gap is None else vars(c.gap), "tied": c.tied}
                                 for c in s["candidates"]]} for s in done],
        "selected": selected, "selected_spec": spec_of(selected), "adopt": adoption(selected),
        "runs": len(used), "train_seconds": round(sum(r.get("train_seconds", 0.0) for r in used), 1),
    }


def selection_markdown(record: dict, done: list[dict], follow_up: list[str]) -> str:
    seeds = record["seeds"]
    lines = ["# Selection on the development set", "",
             f"Protocol: {record['protocol']}. Data: `{record['data']['command']}`. Seeds "
             f"{', '.join(map(str, seeds))}; {record['runs']} runs, {record['train_seconds'] / 3600:.2f} h of "
             f"training in all (summed over runs, not wall time).", "", f"Rule: {RULE}", "",
             "Flags of every run: `" + " ".join(f"--{k} {text_of(v)}" for k, v in record["flags"].items()) + "`",
             ""]
    lines += [stage_table(s["stage"], s["candidates"], s["winner"], seeds) for s in done]
    lines += [f"**Selected: `{record['selected_spec']}`.**", "", "| field | MANME.md | searched from | selected | "
              "becomes |", "|---|---|---|---|---|"]
    adopt = record["adopt"]
    for name, (role, where) in ROLES.items():
        value = record["selected"][name]
        becomes = ("the default (`apply --write`)" if name in adopt["defaults"] else
                   f"an option (`--{name}`), not the default" if name in adopt["options"] else
                   f"the test report's `--{name}`" if role == "protocol" else "unchanged")
        lines.append(f"| `{name}` | {where} | {text_of(BASE[name])} | {text_of(value)} | {becomes} |")
    return "\n".join(lines + ["", "Next:", "", "```", *follow_up, "```", ""])


def follow_up(record_path: Path) -> list[str]:
    selection = f"{record_path.with_suffix('.json')}"
    return [f"python -m experiments.select apply --selection {selection} --write   # the *(ours)* values become "
            "defaults (config.py, SAVED_WITHOUT)",
            GENERATE.format(out="TEST", seed=TEST_SEED),
            "python vocab.py --dataset fashioniq --data_root TEST --vocab_dir VOCAB_TEST",
            f"python -m experiments.select test --selection {selection} --data_root TEST --vocab_dir VOCAB_TEST "
            "--out runs/heldout --jobs 2"]


def run_dev(args, shared: dict, argv: list[str]) -> int:
    marker = check_data(shared["data_root"], DEV_SEED, "dev")
    seeds = parse_seeds(args.seeds)
    if not args.dry_run:
        check_ready(shared, args.out)
        check_output_file(args.record.with_suffix(".json"), "--record")
        stop_on_signals()
    status, done = search(SEARCH, seeds, shared, args.out, args.jobs, shlex.join([*PROG.split(), *argv]),
                          args.dry_run)
    if status or args.dry_run:
        return status
    record = selection_record(done, seeds, shared, marker, args.out)
    steps = follow_up(args.record)
    atomic_write_json(args.record.with_suffix(".json"), record)
    atomic_write_text(args.record.with_suffix(".md"), selection_markdown(record, done, steps))
    print(f"selected on dev: {record['selected_spec']}; wrote {args.record.with_suffix('.json')} and "
          f"{args.record.with_suffix('.md')}")
    for name, change in record["adopt"]["defaults"].items():
        print(f"  default {name}: {text_of(change['from'])} -> {text_of(change['to'])} (MANME.md marks it ours)")
    for name, value in record["adopt"]["options"].items():
        print(f"  option --{name} {text_of(value)}: not a default ({ROLES[name][1]}); document it")
    print("Next, in this order:\n  " + "\n  ".join(steps))
    return 0


# ----------------------------------------------------------------------------- test: the held-out report

def grid(selection: dict) -> tuple[list[Variant], dict[str, Any]]:
    """The README's variants with the selected model settings (where their preset leaves the field free), and an
    extra manme row with the selected options MANME.md does not allow as defaults; plus the protocol flags."""
    adopt, selected = selection["adopt"], selection["selected"]
    model = {k: (selected[k] if ROLES[k][0] == "ours" else BASE[k]) for k in ROLES if ROLES[k][0] != "protocol"}
    specs = list(README_GRID)
    if adopt["options"]:
        specs.append(":".join(["manme"] + [f"{k}={text_of(v)}" for k, v in adopt["options"].items()]))
    variants = []
    for spec in specs:
        v = parse_variant(spec)
        preset = VARIANTS[v.model].preset
        variants.append(Variant(spec, v.model, {**{k: x for k, x in model.items() if k not in preset}, **v.overrides}))
    return variants, adopt["protocol"]


def run_test(args, shared: dict, argv: list[str]) -> int:
    selection = read_json(args.selection)
    marker = check_data(shared["data_root"], TEST_SEED, "test")
    dev = {k: v for k, v in selection["data"]["generator"].items() if k != "seed"}
    if {k: v for k, v in marker.items() if k != "seed"} != dev:
        raise UserError(f"--data_root {shared['data_root']}: not the dev set's design with another seed "
                        f"(dev: {dev}); write it with `{GENERATE.format(out='TEST', seed=TEST_SEED)}`")
    variants, protocol = grid(selection)
    # the dev runs' flags without the searched fields: those come per variant (presets win) or as protocol
    shared = {**{k: v for k, v in selection["flags"].items() if k not in BASE}, **shared, **protocol}
    seeds, extra = parse_seeds(args.seeds), parse_seeds(args.extra_seeds)
    five = [v for v in variants if v.spec in FIVE_SEEDS]
    runs = plan(variants, seeds, shared, args.out) + plan(five, [s for s in extra if s not in seeds], shared, args.out)
    if args.dry_run:
        show_plan(runs, args.out)
        return 0
    check_ready(shared, args.out)
    check_output_file(args.record.with_suffix(".md"), "--record")
    stop_on_signals()
    status = run_all(runs, args.out, args.jobs, [v.spec for v in variants], shlex.join([*PROG.split(), *argv]))
    if status == 0:
        head = (f"Held-out report: the test set `{GENERATE.format(out='TEST', seed=TEST_SEED)}`, with the "
                f"settings selected on dev ({args.selection}: `{selection['selected_spec']}`). Protocol: "
                f"{DECLARED}.\n\n")
        atomic_write_text(args.record.with_suffix(".md"), head + (args.out / "results.md").read_text())
        atomic_write_text(args.record.with_suffix(".jsonl"), (args.out / "results.jsonl").read_text())
        print(f"wrote {args.record.with_suffix('.md')} and {args.record.with_suffix('.jsonl')}")
    return status


# ----------------------------------------------------------------------------- apply: selection -> defaults

def python_literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def apply_to_config(source: str, defaults: dict[str, dict]) -> str:
    """config.py's text with each field's default changed ("from" -> "to") and its old value added to
    SAVED_WITHOUT (unless there already: a config saved before the field existed keeps that older meaning)."""
    for name, change in defaults.items():
        pattern = re.compile(rf'^(    {name}: \w+ = opt\()("[^"]*"|[^,]+)(,)', re.M)
        match = pattern.search(source)
        if match is None or ast.literal_eval(match.group(2)) != change["from"]:
            raise UserError(f"config.py: no field {name} with default {change['from']!r}; edit it by hand")
        source = source[:match.start(2)] + python_literal(change["to"]) + source[match.end(2):]
    head = "SAVED_WITHOUT: dict[str, Any] = "
    match = re.search(r"^" + re.escape(head) + r"(\{[^}]*\})$", source, re.M)
    if match is None:
        raise UserError("config.py: no SAVED_WITHOUT = {...} of literals; add the old defaults to it by hand")
    saved = ast.literal_eval(match.group(1))
    for name, change in defaults.items():
        saved.setdefault(name, change["from"])
    return source[:match.start(1)] + wrapped_dict(saved, indent=len(head) + 1) + source[match.end(1):]


def wrapped_dict(values: dict[str, Any], indent: int, width: int = 120) -> str:
    """A dict literal whose lines stay within `width` (the lint's line length), continued under its first key."""
    items = [f"{json.dumps(k)}: {python_literal(v)}" for k, v in values.items()]
    lines, line = [], "{"
    for n, item in enumerate(items):
        piece = item + ("}" if n == len(items) - 1 else ",")
        if len(line) > 1 and indent - 1 + len(line) + 1 + len(piece) > width:
            lines.append(line)
            line = " " * indent + piece
        else:
            line += ("" if line == "{" else " ") + piece
    return "\n".join(lines + [line if items else "{}"])


def run_apply(args) -> int:
    selection = read_json(args.selection)
    adopt = adoption(selection["selected"])  # against today's defaults: applying twice changes nothing
    for name, change in adopt["defaults"].items():
        print(f"default {name}: {text_of(change['from'])} -> {text_of(change['to'])}; SAVED_WITHOUT keeps "
              f"{text_of(change['from'])} for saved configs without the key")
    for name, value in adopt["options"].items():
        print(f"option --{name} {text_of(value)}: stays an option ({ROLES[name][1]}); the default is unchanged")
    for name, value in adopt["protocol"].items():
        print(f"protocol --{name} {text_of(value)}: the test report's flag ({ROLES[name][1]})")
    if not adopt["defaults"]:
        print("no default changes")
        return 0
    if not args.write:
        print("dry run: add --write to edit config.py")
        return 0
    path = ROOT / "config.py"
    atomic_write_text(path, apply_to_config(path.read_text(), adopt["defaults"]))
    print(f"wrote {path}. Then: update the docs that state these defaults (README, docs/ablation.md), "
          f"rerun `make demo` and the tests, and commit with the selection file.")
    return 0


# ----------------------------------------------------------------------------- command line

def build_cli(command: str) -> argparse.ArgumentParser:
    own = argparse.ArgumentParser(add_help=False)
    default_record = {"dev": "docs/selection", "test": "docs/heldout"}.get(command)
    if command in ("test", "apply"):
        own.add_argument("--selection", type=Path, default=Path("docs/selection.json"), metavar="FILE",
                         help="The dev selection (default: docs/selection.json).")
    if command == "apply":
        own.add_argument("--write", action="store_true", help="Edit config.py (default: only print).")
        return argparse.ArgumentParser(prog=f"{PROG} apply", parents=[own], description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    own.add_argument("--record", type=Path, default=Path(default_record), metavar="PATH",
                     help=f"Results to commit, without suffix (default: {default_record}): "
                          + ("PATH.json and PATH.md." if command == "dev" else "PATH.md and PATH.jsonl."))
    own.add_argument("--seeds", default=SEEDS, metavar="S[,S...]", help=f"Training seeds (default: {SEEDS}).")
    if command == "test":
        own.add_argument("--extra_seeds", default=EXTRA_SEEDS, metavar="S[,S...]",
                         help=f"More seeds for {', '.join(FIVE_SEEDS)} (default: {EXTRA_SEEDS}).")
    add_run_flags(own)
    train = build_parser(",".join(sorted(TRAIN_GROUPS)), "")
    return argparse.ArgumentParser(prog=f"{PROG} {command}", parents=[own, train], description=__doc__, add_help=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=f"Refused: --{', --'.join(BASE)} (searched), --dataset, and "
                                          f"--{', --'.join(PER_RUN)} (per run).")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = subcommand(argv, COMMANDS, __doc__)
    if command is None:
        return 0
    args = build_cli(command).parse_args(argv[1:])
    if command == "apply":
        return run_apply(args)
    per_run = [k for k in given_flags(args) if k in PER_RUN]
    if per_run:
        raise UserError(f"--{per_run[0]}: set per run by this command")
    given = shared_flags(args)
    refused = [k for k in given if k in BASE or k == "dataset"]
    if refused:
        raise UserError(f"--{refused[0]}: " + ("the protocol is FashionIQ" if refused[0] == "dataset" else
                                               "the search chooses it" if command == "dev" else
                                               "the selection sets it (--selection)"))
    if "data_root" not in given:
        raise UserError(f"give --data_root: the {command} set (`{GENERATE.format(out='DIR', seed='N')}`)")
    shared = {**SCHEDULE, **BASE, **given} if command == "dev" else given
    return (run_dev if command == "dev" else run_test)(args, shared, argv)


if __name__ == "__main__":
    run_command(main)
