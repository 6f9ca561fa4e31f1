"""Ablation study: train and evaluate every (variant, seed) with train.py and evaluate.py, then tabulate.

  python -m experiments.ablation --dataset fashioniq --data_root DIR --out runs/ablation \\
      --variants manme,artemis,manme:lambda_me=0,manme:grains=coarse,late-fusion,tirg --seeds 0,1,2 \\
      [--jobs N] [--dry_run] [any train.py flag, applied to every run]

A variant is a --model name, optionally followed by config overrides joined with ':'
(manme:grains=coarse:lambda_me=0; booleans take true/false/1/0). Each (variant, seed) is one run,
<out>/runs/<variant slug>_seed<seed>/: train.py, then evaluate.py on its best checkpoint (stage 2's
with --two_stage or fine-tuning flags, else stage 1's) into <run>/eval/; their output goes to
<run>/ablation.log. --model, --seed, --exp_name, --output_dir, --resume and --ckpt are set per run.

Rerunning the command skips finished runs (a line in results.jsonl and its metrics.json) and continues
interrupted ones (a run folder with config.json) with --resume auto; Ctrl-C (or SIGTERM) stops the runs after
their current step, saving a checkpoint. After every finished run <out>/results.jsonl,
<out>/results.md (mean ± std over seeds; the difference from the first variant paired by seed;
chance levels) and <out>/results.png (R@1 and attention overlap per variant) are rewritten.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from config import Config, build_parser, given_flags, resolve
from data.text import vocabulary_path
from experiments.report import figure, markdown, overlap_of
from models import VARIANTS
from tools.figures import save_png
from utils.errors import UserError, number_in, run_command
from utils.io import atomic_write_json, atomic_write_text, check_output_dir, read_json

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m experiments.ablation"
TRAIN_GROUPS = {"data", "model", "train", "eval", "run"}   # train.py's flags
EVAL_GROUPS = {"data", "eval", "run"}                      # evaluate.py's flags
PER_RUN = {"model": "--variants", "seed": "--seeds", "exp_name": "--variants and --seeds",
           "output_dir": "--out", "resume": "rerunning the command", "ckpt": "every run training from scratch"}
SAME_DATA = {"dataset", "data_root", "vocab_dir", "categories", "split"}  # every variant sees the same data
FIELDS = {f.name: f for f in fields(Config)}
OVERRIDABLE = sorted(n for n, f in FIELDS.items()
                     if f.metadata["groups"] & TRAIN_GROUPS and n not in PER_RUN and n not in SAME_DATA)
BOOLS = {"true": True, "1": True, "false": False, "0": False}
# <run>/ablation_time.json: {"train_seconds": train.py's wall time summed over its attempts, "trained": it succeeded}
TIMING = "ablation_time.json"


class VariantError(UserError):
    """A bad --variants entry; the message names the valid models, fields or values."""


# ----------------------------------------------------------------------------- variants

@dataclass
class Variant:
    spec: str                    # as given: manme:grains=coarse:lambda_me=0
    model: str
    overrides: dict[str, Any]    # Config field -> value, typed

    @property
    def slug(self) -> str:
        """A folder name: manme:grains=coarse,mid -> manme__grains-coarse+mid."""
        text = self.spec.replace(":", "__").replace("=", "-").replace(",", "+")
        return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def split_variants(text: str) -> list[str]:
    """The comma-separated specs of --variants. A piece with no ':' or '=' that is no model name
    continues the value before it, so manme:grains=coarse,mid,tirg is two variants."""
    specs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if specs and "=" in specs[-1] and ":" not in piece and "=" not in piece and piece not in VARIANTS:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def parse_value(name: str, text: str, spec: str) -> Any:
    """`text` as the type of Config field `name` (bool: true/false/1/0), within its choices."""
    kind = FIELDS[name].type if isinstance(FIELDS[name].type, str) else FIELDS[name].type.__name__
    choices = FIELDS[name].metadata.get("choices")
    try:
        value = BOOLS[text.lower()] if kind == "bool" else {"int": int, "float": float}.get(kind, str)(text)
    except (KeyError, ValueError):
        expected = "true, false, 1 or 0" if kind == "bool" else f"a value of type {kind}"
        raise VariantError(f"variant {spec!r}: {name}={text!r} is not {expected}") from None
    if choices and value not in choices:
        raise VariantError(f"variant {spec!r}: {name}={text!r}; choose one of {', '.join(choices)}")
    return value


def parse_variant(spec: str) -> Variant:
    """MODEL[:FIELD=VALUE...] -> Variant; a VariantError names the valid models or fields."""
    model, *pairs = spec.split(":")
    if model not in VARIANTS:
        raise VariantError(f"variant {spec!r}: unknown model {model!r}; models: {', '.join(VARIANTS)}")
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if name not in OVERRIDABLE or not equals:
            problem = (f"{pair!r} is not FIELD=VALUE" if not equals
                       else f"{name} is set per run by {PER_RUN[name]}" if name in PER_RUN
                       else f"{name} is the same for every variant (give it as a flag)" if name in SAME_DATA
                       else f"unknown field {name!r}")
            raise VariantError(f"variant {spec!r}: {problem}; overridable fields: {', '.join(OVERRIDABLE)}")
        if name in overrides:
            raise VariantError(f"variant {spec!r}: {name} is given twice")
        overrides[name] = parse_value(name, text, spec)
    return Variant(spec, model, overrides)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    return list(dict.fromkeys(seeds))


# ----------------------------------------------------------------------------- runs

@dataclass
class Run:
    variant: Variant
    seed: int
    runs_dir: Path               # <out>/runs, train.py's --output_dir
    flags: dict[str, Any]        # train.py settings: the shared flags, then the variant's overrides
    two_stages: bool             # the run ends in stage 2 (--two_stage or fine-tuning flags)

    @property
    def name(self) -> str:
        return f"{self.variant.slug}_seed{self.seed}"

    @property
    def folder(self) -> Path:
        return self.runs_dir / self.name

    @property
    def label(self) -> str:
        return f"{self.variant.spec} seed {self.seed}"

    @property
    def checkpoint(self) -> Path:
        return self.folder / ("stage2" if self.two_stages else "stage1") / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.folder / "eval" / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.folder / "ablation.log"

    @property
    def started(self) -> bool:
        """train.py has started this run before (it writes config.json first): continue it."""
        return (self.folder / "config.json").is_file()

    def train_args(self) -> list[str]:
        return ["--exp_name", self.name, "--output_dir", str(self.runs_dir), "--seed", str(self.seed),
                "--model", self.variant.model, *to_flags(self.flags)]

    def train_command(self) -> list[str]:
        resume = ["--resume", "auto"] if self.started else []
        return [sys.executable, str(ROOT / "train.py"), *self.train_args(), *resume]

    def eval_command(self) -> list[str]:
        shared = {k: v for k, v in self.flags.items() if FIELDS[k].metadata["groups"] & EVAL_GROUPS}
        return [sys.executable, str(ROOT / "evaluate.py"), "--ckpt", str(self.checkpoint),
                "--output_dir", str(self.folder / "eval"), *to_flags(shared)]


def to_flags(values: dict[str, Any]) -> list[str]:
    """Config values as command-line flags: --name value, --name / --no-name for booleans."""
    flags: list[str] = []
    for name, value in values.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", str(value)]
    return flags


def plan(variants: list[Variant], seeds: list[int], shared: dict[str, Any], out: Path) -> list[Run]:
    """Every (seed, variant), seed by seed so that partial results compare variants on the same seeds.
    Each variant's settings are checked with the config's own validation before anything runs."""
    shared = {**shared, "vocab_dir": shared.get("vocab_dir", Config.vocab_dir)}
    if not variants:
        raise VariantError("--variants: give at least one variant")
    folders: dict[str, str] = {}
    for v in variants:
        if v.slug in folders:
            raise VariantError(f"--variants lists {v.spec!r} twice" if folders[v.slug] == v.spec else
                               f"variants {folders[v.slug]!r} and {v.spec!r} share the folder name {v.slug!r}")
        folders[v.slug] = v.spec
    settings = {}
    for v in variants:
        flags = {**shared, **v.overrides}
        try:
            cfg = resolve({**flags, "model": v.model})
        except ValueError as e:
            raise VariantError(f"variant {v.spec!r}: {e}") from None
        settings[v.spec] = (flags, cfg.two_stage or cfg.img_finetune or cfg.txt_finetune)
    return [Run(v, seed, out / "runs", *settings[v.spec]) for seed in seeds for v in variants]


# ----------------------------------------------------------------------------- results

def read_results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: malformed line ({e.msg}); fix or delete it") from None
    return rows


def finished_row(run: Run, rows: list[dict]) -> dict | None:
    """The run's line in results.jsonl if its metrics file is there too, else None (to run)."""
    if not run.metrics_path.is_file():
        return None
    return next((r for r in rows if r["variant"] == run.variant.spec and r["seed"] == run.seed), None)


def record(out: Path, run: Run, train_seconds: float) -> None:
    """Put the run's line into results.jsonl (replacing an older line of the same run)."""
    row = {"variant": run.variant.spec, "seed": run.seed, "metrics": read_json(run.metrics_path),
           "train_seconds": round(train_seconds, 1), "checkpoint": str(run.checkpoint),
           "run_dir": str(run.folder), "train_args": run.train_args()}
    rows = [r for r in read_results(out) if (r["variant"], r["seed"]) != (row["variant"], row["seed"])]
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in [*rows, row]))


def write_reports(out: Path, order: list[str], command: str) -> None:
    """results.md and results.png, from results.jsonl."""
    rows = read_results(out)
    if rows:
        atomic_write_text(out / "results.md", markdown(rows, order, command))
        save_png(figure(rows, order), out / "results.png")


# ----------------------------------------------------------------------------- execution

@dataclass
class Outcome:
    run: Run
    ok: bool
    seconds: float
    train_seconds: float = 0.0
    error: str = ""


class Runner:
    """Runs each run's train.py and evaluate.py as child processes, output to the run's log;
    `stop` forwards Ctrl-C to them (train.py then saves a checkpoint) and starts nothing more."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def call(self, command: list[str], log) -> int:
        log.write(f"\n$ {shlex.join(command)}\n")
        log.flush()
        with self.lock:
            if self.stopping:
                return 130
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env)
            self.children.add(child)
        try:
            return child.wait()
        finally:
            with self.lock:
                self.children.discard(child)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for child in self.children:
                child.send_signal(signal.SIGINT)

    def execute(self, run: Run) -> Outcome:
        """Train (unless an earlier invocation finished that), then evaluate."""
        start = time.monotonic()
        tqdm.write(f"{clock()} start  {run.label}{' (continues)' if run.started else ''}, log: {run.log_path}")
        run.folder.mkdir(parents=True, exist_ok=True)
        timing = run.folder / TIMING
        spent = read_json(timing) if timing.is_file() else {"train_seconds": 0.0, "trained": False}
        with open(run.log_path, "a") as log:
            if not (spent["trained"] and run.checkpoint.is_file()):
                status = self.call(run.train_command(), log)
                spent = {"train_seconds": spent["train_seconds"] + time.monotonic() - start, "trained": status == 0}
                atomic_write_json(timing, spent)
                if status != 0:
                    return Outcome(run, False, time.monotonic() - start, error=f"train.py exited with status {status}")
            status = self.call(run.eval_command(), log)
        if status != 0:
            return Outcome(run, False, time.monotonic() - start, error=f"evaluate.py exited with status {status}")
        return Outcome(run, True, time.monotonic() - start, spent["train_seconds"])


def clock() -> str:
    return time.strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[-200:] if lines else ""


def summary(metrics: dict) -> str:
    overall = metrics["overall"]
    text = ", ".join(f"{k} {overall[k]:.2f}" for k in ("R@1", "R@10", "R@50"))
    overlap = overlap_of(metrics)
    return text + (f", overlap {overlap:.3f}" if overlap is not None else "")


def run_all(runs: list[Run], out: Path, jobs: int, order: list[str], command: str) -> int:
    """Run what is not finished, `jobs` at a time; returns the exit status (0: every run finished)."""
    rows = read_results(out)
    done = {run.name: finished_row(run, rows) for run in runs}
    todo = [run for run in runs if done[run.name] is None]
    for run in runs:
        if done[run.name] is not None:
            other = ("; made with other train.py flags (train_args in results.jsonl), kept: use another --out to "
                     "redo it" if done[run.name].get("train_args") != run.train_args() else "")
            print(f"skipped {run.label} (finished: {run.metrics_path}){other}")
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    runner, failed = Runner(env), []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", desc="ablation", dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(runner.execute, run) for run in todo]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                run = outcome.run
                if outcome.ok:
                    record(out, run, outcome.train_seconds)
                    write_reports(out, order, command)
                    tqdm.write(f"{clock()} done   {run.label} in {duration(outcome.seconds)} "
                               f"(train {duration(outcome.train_seconds)}): {summary(read_json(run.metrics_path))}")
                else:
                    failed.append(run)
                    tqdm.write(f"{clock()} FAILED {run.label} after {duration(outcome.seconds)}: {outcome.error}; "
                               f"see {run.log_path}: {last_line(run.log_path)}")
                bar.update(1)
        except KeyboardInterrupt:
            runner.stop()
            for future in futures:
                future.cancel()
            tqdm.write(f"{clock()} interrupted: the runs save a checkpoint and stop; rerun the same command to "
                       f"continue them")
            return 130
        finally:
            bar.close()
    write_reports(out, order, command)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(r.label for r in failed)}. Rerun the same "
              f"command to retry them (finished runs are skipped).")
        return 1
    if (out / "results.md").is_file():
        print(f"wrote {out / 'results.jsonl'}, {out / 'results.md'} and {out / 'results.png'}")
    return 0


# ----------------------------------------------------------------------------- command line

def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """--out, --jobs and --dry_run: how a set of runs is executed (this tool's and experiments.select's)."""
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="Output folder: runs/<variant>_seed<seed>/, results.jsonl, results.md, results.png.")
    parser.add_argument("--jobs", type=number_in(int, 1, 64), default=1, metavar="N",
                        help="Runs at once (1 to 64; default: 1). With more than one, each gets cores/jobs OpenMP "
                             "threads unless OMP_NUM_THREADS is set.")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the commands of the runs it would start, then exit.")


def build_cli() -> argparse.ArgumentParser:
    """This tool's flags, then every train.py flag (from the config), in one parser."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--variants", required=True, metavar="V[,V...]",
                     help="Comma-separated variants: a --model name (" + ", ".join(VARIANTS) + "), optionally with "
                          "config overrides joined by ':', e.g. manme:grains=coarse:lambda_me=0. A value may hold "
                          "commas (manme:grains=coarse,mid) when its parts are no model names. The first variant is "
                          "the reference of the paired differences.")
    own.add_argument("--seeds", default="0", metavar="S[,S...]",
                     help="Comma-separated seeds; each variant runs once per seed (default: 0).")
    add_run_flags(own)
    train = build_parser(",".join(sorted(TRAIN_GROUPS)), "")
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, parents=[own, train], add_help=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage=f"{PROG} --variants V[,V...] --out DIR [--seeds S[,S...]] [--jobs N] "
                                           f"[--dry_run] [train.py flags]",
                                     epilog="The options from --dataset on are train.py's, given to every run "
                                            "(evaluate.py gets those it takes). Set per run, and refused here: "
                                            + ", ".join(f"--{k}" for k in PER_RUN) + ".")
    return parser


def show_plan(runs: list[Run], out: Path) -> None:
    """--dry_run: the commands of every run still to do."""
    rows = read_results(out)
    for run in runs:
        if finished_row(run, rows) is not None:
            print(f"# {run.label}: finished, skipped")
            continue
        print(f"# {run.label}{' (continues)' if run.started else ''}")
        print(shlex.join(run.train_command()))
        print(shlex.join(run.eval_command()))


def main(argv: list[str] | None = None) -> int:
    """The command; a mistake in its input is a UserError, raised before anything trains."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_cli().parse_args(argv)
    shared = shared_flags(args)
    variants = [parse_variant(spec) for spec in split_variants(args.variants)]
    runs = plan(variants, parse_seeds(args.seeds), shared, args.out)
    if args.dry_run:
        show_plan(runs, args.out)
        return 0
    check_ready(shared, args.out)
    stop_on_signals()
    return run_all(runs, args.out, args.jobs, [v.spec for v in variants], shlex.join([*PROG.split(), *argv]))


def shared_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The train.py flags given on the command line, for every run; refuses those set per run and a bad --jobs."""
    shared = given_flags(args)
    refused = [k for k in shared if k in PER_RUN]
    if refused:
        raise UserError(f"--{refused[0]} is set per run by this tool; use {PER_RUN[refused[0]]} instead")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    return shared


def check_ready(shared: dict[str, Any], out: Path) -> None:
    """Before anything trains: the vocabulary exists and --out is a folder we may write."""
    cfg = resolve(shared)
    if cfg.text_encoder != "clip" and not vocabulary_path(cfg).is_file():  # CLIP's tokenizer needs none
        raise UserError(f"{vocabulary_path(cfg)}: no vocabulary; build it first with `python vocab.py --dataset "
                        f"{cfg.dataset} --data_root {cfg.data_root} --vocab_dir {cfg.vocab_dir}`")
    check_output_dir(out, "--out")


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the grid the same way (the runs save and stop), also when the tool was
    started in the background by a non-interactive shell, which starts it with SIGINT ignored."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    run_command(main)
