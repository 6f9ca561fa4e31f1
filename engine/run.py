"""Training runs: the stages a config asks for, resume, and stop signals that save before exiting.

Layout of a run: <output_dir>/<exp_name>/{config.json, vocab.json, train.log, tensorboard/,
stage1/, stage2/}; each stage folder holds last.pt (and last.prev.pt, the one before), best.pt
and train_log.jsonl.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from config import Config, resolve
from data.text import vocabulary_path
from engine.checkpoint import CheckpointError, load_checkpoint, previous_path
from engine.trainer import Interrupted, Stage, Trainer, ValidationHook
from models import VARIANTS
from utils.distributed import DistInfo, any_rank, cleanup, init_distributed
from utils.errors import UserError
from utils.io import atomic_write, check_output_dir, read_json
from utils.logs import close_logging, log, setup_logging
from utils.precision import pick_device
from utils.runlock import RunLock

STAGE_FILES = ("last.pt", "best.pt", "train_log.jsonl")  # a stage folder holding any of these has run
# A stop signal repeated within this many seconds is one request delivered twice, not "stop now".
REPEAT_SIGNAL_WINDOW_S = 5.0


def find_resume(stage_folder: Path, move_damaged: bool = True) -> Path | None:
    """The newest loadable checkpoint of a stage, falling back to the previous one when last.pt is damaged.

    A damaged last.pt is moved aside (to last.damaged-<date-time>.pt, kept for inspection; on the main
    process, `move_damaged`), so that the next save cannot rotate it over the good last.prev.pt.
    None when the stage has no checkpoint yet; CheckpointError when every checkpoint there is damaged."""
    last = stage_folder / "last.pt"
    damaged = []
    for candidate in (last, previous_path(last)):
        if candidate.exists():
            try:
                load_checkpoint(candidate)
            except CheckpointError as e:
                log.warning(f"{e}")
                damaged.append(candidate)
                continue
            if candidate != last:
                log.warning(f"--resume auto: {last.name} is {'damaged' if damaged else 'missing'}; "
                            f"falling back to the previous checkpoint {candidate}")
            if damaged and move_damaged:
                aside = last.with_name(f"last.damaged-{time.strftime('%Y%m%d-%H%M%S')}.pt")
                last.rename(aside)
                log.warning(f"--resume auto: moved the damaged {last.name} to {aside} (kept for inspection)")
            return candidate
    if damaged:
        raise CheckpointError(f"--resume auto: no loadable checkpoint in {stage_folder} "
                              f"({', '.join(p.name for p in damaged)} damaged); pass --resume PATH to another "
                              f"checkpoint, or move the folder away to start the stage over")
    log.info(f"--resume auto: no checkpoint in {stage_folder} yet; stage starts from the beginning")
    return None


def train(cfg: Config, validation_hook: ValidationHook | None = None) -> Path:
    """Run the stage(s) `cfg` asks for; returns the run folder. `validation_hook` is called after
    each validation on the main process (train.py adds the retrieval figure to TensorBoard with it)."""
    check_negatives(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    dist_info = init_distributed(pick_device(cfg.device).type)
    run_dir = Path(cfg.output_dir) / cfg.exp_name
    stages = plan_stages(cfg, run_dir)
    lock = take_run_folder(cfg, run_dir, [stage for _, stage in stages], dist_info)
    setup_logging(run_dir / "train.log", dist_info.is_main)
    writer = None
    try:
        if dist_info.is_main:
            writer = SummaryWriter(str(run_dir / "tensorboard"))
            cfg.save(run_dir / "config.json")
            vocab_src = vocabulary_path(cfg)
            if vocab_src.is_file():
                atomic_write(run_dir / "vocab.json", lambda f: f.write(vocab_src.read_bytes()), binary=True)
        for stage_cfg, stage in stages:
            stage.folder.mkdir(parents=True, exist_ok=True)
            run_stage(stage_cfg, stage, dist_info, run_dir, writer, validation_hook)
    finally:
        if writer is not None:
            writer.close()
        if lock is not None:
            lock.release()
        close_logging()
        cleanup()
    return run_dir


def check_negatives(cfg: Config, world_size: int) -> None:
    """The in-batch contrastive loss needs a negative for every query: a batch of one triplet gives every
    retrieval loss exactly 0 and trains nothing. Under torchrun the negatives are the global batch
    (--gather_negatives) or the process's own (--no-gather_negatives)."""
    gathered = cfg.gather_negatives and world_size > 1
    per_loss = cfg.batch_size * (world_size if gathered else 1)
    if per_loss < 2:
        where = "per process " if world_size > 1 else ""
        raise UserError(f"--batch_size {cfg.batch_size}: a batch of one triplet {where}has no in-batch negative, so "
                        f"every retrieval loss is exactly 0 and nothing is learned; use --batch_size 2 or more"
                        + (" (or --gather_negatives to share negatives across processes)" if world_size > 1 else ""))


def take_run_folder(cfg: Config, run_dir: Path, stages: list[Stage], dist_info: DistInfo) -> RunLock | None:
    """Rank 0 locks the run folder and checks that the run may go there; under torchrun every rank stops
    when rank 0 refuses. Returns rank 0's lock (None on the other ranks)."""
    # its DataLoader workers only read: the lock dies with this process, so a killed run resumes at once
    lock = RunLock(run_dir, children_hold=False) if dist_info.is_main else None
    refused = None
    if lock is not None:
        try:
            check_output_dir(run_dir, "--output_dir")
            note = lock.acquire()
            if note:
                print(f"{run_dir}: {note}")
            claim_run_folder(cfg, run_dir, stages)
            check_output_dir(run_dir, "--output_dir")  # again: --overwrite moved it aside
        except (UserError, PermissionError) as e:
            lock.release()
            refused = e
    if dist_info.enabled and any_rank(refused is not None, pick_device(cfg.device, dist_info.local_rank)):
        raise refused or UserError(f"{run_dir}: refused by rank 0 (see its message)")
    if refused is not None:
        raise refused
    return lock


def plan_stages(cfg: Config, run_dir: Path) -> list[tuple[Config, Stage]]:
    """The stages `cfg` asks for, each with its own config (stage 1 frozen, stage 2 fine-tuning)."""
    stage1 = Stage(1, cfg.num_epochs, cfg.step_lr, run_dir / "stage1")
    stage2 = Stage(2, cfg.finetune_epochs, cfg.finetune_step_lr, run_dir / "stage2")
    if cfg.two_stage and not VARIANTS[cfg.model].trains_frozen:  # clip-sum: nothing trains with frozen towers
        return [(replace(cfg, img_finetune=True, txt_finetune=True), stage2)]
    if cfg.two_stage:
        return [(replace(cfg, img_finetune=False, txt_finetune=False), stage1),
                (replace(cfg, img_finetune=True, txt_finetune=True), stage2)]
    if cfg.img_finetune or cfg.txt_finetune:
        return [(cfg, stage2)]
    return [(cfg, stage1)]


def claim_run_folder(cfg: Config, run_dir: Path, stages: list[Stage]) -> None:
    """Never start a stage over in place: a stage folder that already holds a run needs --resume (continue it)
    or --overwrite (move the whole old run aside, to <exp_name>.old-<date-time>/)."""
    if cfg.resume:
        return
    done = [f"{stage.folder.name}/{name}" for stage in stages for name in STAGE_FILES
            if (stage.folder / name).exists()]
    if not done:
        return
    if not cfg.overwrite:
        raise UserError(f"{run_dir} already holds a run ({', '.join(done)}); pass --resume auto to continue it, "
                        f"--overwrite to move it aside and start over, or choose another --exp_name")
    aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    print(f"--overwrite: moved the previous run {run_dir} to {aside}")


def run_stage(cfg: Config, stage: Stage, dist_info: DistInfo, run_dir: Path, writer,
              validation_hook: ValidationHook | None = None) -> None:
    if stage.epochs == 0:
        return
    resume_from = None
    if cfg.resume == "auto":
        resume_from = find_resume(stage.folder, dist_info.is_main)
    elif cfg.resume:  # a PATH resumes its own stage: earlier stages are done, later ones start afresh
        saved_stage = load_checkpoint(cfg.resume).get("stage", stage.number)
        if saved_stage > stage.number:
            log.info(f"stage {stage.number}: skipped (--resume {cfg.resume} is a stage-{saved_stage} checkpoint)")
            return
        if saved_stage == stage.number:
            resume_from = Path(cfg.resume)
    trainer = Trainer(cfg, stage, dist_info, run_dir, writer, validation_hook)
    if resume_from is not None:
        trainer.restore(load_checkpoint(resume_from, trainer.device), str(resume_from))
        if trainer.epoch >= stage.epochs:
            log.info(f"stage {stage.number} already finished ({stage.epochs} epochs)")
            return
    elif stage.number == 2:
        start_stage2(trainer, cfg, run_dir)
    elif cfg.ckpt:
        trainer.load_weights(load_checkpoint(cfg.ckpt, trainer.device), cfg.ckpt)

    with stop_signals_save(trainer):
        try:
            trainer.run()
        except Interrupted:
            log.warning(f"saved {stage.folder / 'last.pt'} at step {trainer.step}. Resume with the same command "
                        f"plus --resume auto, or `python train.py --output_dir {cfg.output_dir} --exp_name "
                        f"{cfg.exp_name} --resume auto` (the other settings are read from {run_dir / 'config.json'})")
            raise SystemExit(130) from None
        finally:
            trainer.stop_workers()
    if stage.number == 2 and not (stage.folder / "best.pt").exists() and (run_dir / "stage1" / "best.pt").is_file():
        # the carried-over best score was never beaten: the run's best model is stage 1's
        best = run_dir / "stage1" / "best.pt"
        atomic_write(stage.folder / "best.pt", lambda f: f.write(best.read_bytes()), binary=True)
        log.info(f"stage 2 did not beat the stage-1 best score ({trainer.best_score:.2f}); "
                 f"{stage.folder / 'best.pt'} is a copy of {best}")


def start_stage2(trainer: Trainer, cfg: Config, run_dir: Path) -> None:
    """Stage 2 starts from --ckpt, else from stage 1's last.pt (--stage2_start continue) or best.pt (best)."""
    continuing = cfg.stage2_start == "continue"
    start = Path(cfg.ckpt) if cfg.ckpt else run_dir / "stage1" / ("last.pt" if continuing else "best.pt")
    if not cfg.ckpt and not VARIANTS[cfg.model].trains_frozen:
        log.info(f"stage 2: --model {cfg.model} has no stage 1; it starts from the tower weights")
        return
    if not start.is_file():
        raise FileNotFoundError(f"stage 2 starts from a stage-1 checkpoint, but {start} does not exist; "
                                f"train stage 1 first (same --exp_name, without --img_finetune/--txt_finetune), "
                                f"pass --ckpt PATH, or use --two_stage")
    checkpoint = load_checkpoint(start, trainer.device)
    if continuing:
        trainer.continue_from(checkpoint, str(start))
    else:
        trainer.load_weights(checkpoint, str(start))
        log.info(f"stage 2 starts from the weights of {start} with a fresh optimizer")


@contextlib.contextmanager
def stop_signals_save(trainer: Trainer):
    """While training, SIGINT/SIGTERM ask the trainer to finish its step and save; asked twice, it stops
    at once (files are written atomically). A repeat within a few seconds is the same request delivered
    twice (SLURM signals every process, torchrun forwards it again)."""
    first_signal_at = []

    def on_signal(signum, _frame):
        if trainer.stop_signal is not None:
            if time.monotonic() - first_signal_at[0] < REPEAT_SIGNAL_WINDOW_S:
                return
            log.warning(f"received {signal.Signals(signum).name} again: stopping without saving")
            raise SystemExit(130)
        trainer.stop_signal = signum
        first_signal_at.append(time.monotonic())
        log.warning(f"received {signal.Signals(signum).name}: finishing the current step, then saving")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def resolve_run_config(explicit: dict) -> Config:
    """The run's config. With --resume, the saved config of the run is the base, so the original flags
    need not be repeated; a hand-edited config.json is checked like the flags."""
    if not explicit.get("resume"):
        return resolve(explicit)
    if explicit["resume"] == "auto":
        run_dir = Path(explicit.get("output_dir", Config.output_dir)) / explicit.get("exp_name", Config.exp_name)
        saved = run_dir / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume auto: {saved} not found; nothing to resume (check --output_dir "
                                    f"and --exp_name, or drop --resume to start a new run)")
        return resolve(explicit, base=read_json(saved), source=str(saved))
    saved = load_checkpoint(explicit["resume"])["config"]
    return resolve(explicit, base=saved, source=f"{explicit['resume']} (its config)")
