"""The two-stage training loop (MANME.md §5): stage 1 frozen, stage 2 fine-tunes.

Layout of a run: <output_dir>/<exp_name>/{config.json, vocab.json, train.log, tensorboard/,
stage1/, stage2/}; each stage folder holds last.pt, best.pt and train_log.jsonl.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config import Config
from data.base import open_dataset
from data.images import train_transform
from data.loaders import TripletImages, collate_triplets, drop_missing, ignore_stop_signals
from data.text import Vocabulary, load_vocabulary
from losses import RetrievalLoss
from models import build_model
from models.base import map_tensors
from utils.checkpoint import (CheckpointError, load_checkpoint, previous_path, rng_state,
                              save_checkpoint, set_rng_state, strip_ddp_prefix)
from utils.distributed import (DistInfo, all_reduce_mean, any_rank, barrier, cleanup, gather_with_grad,
                               init_distributed)
from utils.evaluation import evaluate
from utils.io import atomic_write, read_json
from utils.logs import StepLog, log, setup_logging
from utils.sampler import ResumableSampler


# A stop signal repeated within this many seconds is one request delivered twice, not "stop now".
REPEAT_SIGNAL_WINDOW_S = 5.0


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    pass


# ----------------------------------------------------------------------------- set-up helpers

def pick_device(cfg: Config, dist_info: DistInfo | None = None) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu (or auto)")
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", dist_info.local_rank if dist_info else 0)


def amp_dtype(cfg: Config, device: torch.device):
    """The autocast dtype, or None for full precision."""
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{folder}: output directory is not writable ({e.strerror}); "
                              f"choose another with --output_dir") from None


class EpochTriplets(Dataset):
    """Training triplets keyed by (epoch, index), with augmentation seeded from (seed, epoch, index).

    Seeding per item makes every crop and flip independent of worker count and of
    where a run was resumed. Fashion200k draws new pairs each epoch.
    """

    def __init__(self, fmt, vocab, crop_size: int, seed: int, triplets_epoch0, missing: set[str]):
        self.fmt, self.vocab, self.seed, self.missing = fmt, vocab, seed, missing
        self.transform = train_transform(crop_size)
        self.length = len(triplets_epoch0)
        self._epoch, self._items = 0, TripletImages(fmt, triplets_epoch0, vocab, self.transform)

    def _items_for(self, epoch: int) -> TripletImages:
        if epoch != self._epoch:
            triplets = [t for t in self.fmt.train_triplets(epoch)
                        if t.reference not in self.missing and t.target not in self.missing]
            self._epoch, self._items = epoch, TripletImages(self.fmt, triplets, self.vocab, self.transform)
        return self._items

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        epoch, index = key
        items = self._items_for(epoch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return items[index % len(items)]


@dataclass
class Stage:
    number: int            # 1 frozen, 2 fine-tune
    epochs: int
    step_lr: int
    folder: Path


# ----------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, cfg: Config, stage: Stage, dist_info: DistInfo, run_dir: Path, writer):
        self.cfg, self.stage, self.dist, self.run_dir, self.writer = cfg, stage, dist_info, run_dir, writer
        self.device = pick_device(cfg, dist_info)
        self.amp_dtype = amp_dtype(cfg, self.device)
        if self.device.type == "cuda":  # fixed input sizes: let cuDNN pick the fastest kernels once
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)

        self.fmt = open_dataset(cfg)
        self.vocab = load_vocabulary(cfg)
        triplets = self.fmt.train_triplets(0)
        usable = drop_missing(self.fmt, triplets)
        missing = {i for t in triplets for i in (t.reference, t.target)} - {i for t in usable for i in (t.reference, t.target)}
        global_batch = cfg.batch_size * dist_info.world_size
        if len(usable) < global_batch:
            raise ValueError(f"--batch_size {cfg.batch_size} (x{dist_info.world_size} processes) is larger than the "
                             f"{len(usable)} usable training triplets; lower --batch_size")
        self.train_set = EpochTriplets(self.fmt, self.vocab, cfg.crop_size, cfg.seed, usable, missing)
        self.sampler = ResumableSampler(len(self.train_set), cfg.batch_size, cfg.seed,
                                        dist_info.rank, dist_info.world_size)
        workers = cfg.num_workers
        self.loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
                                 collate_fn=collate_triplets, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", drop_last=True,
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                                 worker_init_fn=ignore_stop_signals)

        self.model = build_model(cfg, len(self.vocab), vocab_path=Path(cfg.vocab_dir) / f"{cfg.dataset}_vocab.json").to(self.device)
        self.model.set_finetune(img=cfg.img_finetune, txt=cfg.txt_finetune)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = RetrievalLoss(cfg).to(self.device)
        trainable, total = self.model.parameter_counts()
        log.info(f"stage {stage.number}: model {cfg.model}/{cfg.backbone}, grains {cfg.grains}; "
                 f"{trainable:,} trainable of {total:,} parameters; device {self.device}"
                 f"{', amp ' + str(self.amp_dtype).split('.')[-1] if self.amp_dtype else ''}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, stage.step_lr, cfg.lr_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        forward: torch.nn.Module = self.model   # Retriever.forward: one step's (query, targets)
        if dist_info.enabled:
            forward = torch.nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(forward) if cfg.compile else forward
        self.epoch, self.epoch_step, self.step, self.best_score = 0, 0, 0, -math.inf
        self.skipped = 0
        self.saved_step: int | None = None   # step of the newest last.pt
        self.stop_signal: int | None = None

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                "stage": self.stage.number, "best_score": self.best_score, "skipped": self.skipped,
                "global_batch": self.sampler.global_batch,
                "rng": rng_state(), "config": self.cfg.to_dict(), "vocab": vocab_state(self.vocab)}

    def load_weights(self, checkpoint: dict, source: str) -> None:
        check_compatible(checkpoint, self.cfg, self.vocab, source)
        try:
            self.model.load_state_dict(strip_ddp_prefix(checkpoint["model"]))
        except RuntimeError as e:  # a setting check_compatible does not compare
            raise CheckpointError(f"{source}: its weights do not fit this model ({str(e).splitlines()[0][:200]} ...); "
                                  f"use the model flags of the checkpoint's config, or another checkpoint") from None

    def restore(self, checkpoint: dict, source: str) -> None:
        """Continue exactly where `checkpoint` stopped."""
        self.load_weights(checkpoint, source)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.epoch_step, self.step = checkpoint["epoch"], checkpoint["epoch_step"], checkpoint["step"]
        saved_batch = checkpoint.get("global_batch", self.sampler.global_batch)
        if self.epoch_step and saved_batch != self.sampler.global_batch:
            # another process count (or --batch_size): continue the epoch's order at the same triplet, rounded down
            done = self.epoch_step * saved_batch
            self.epoch_step = done // self.sampler.global_batch
            log.warning(f"{source}: saved with a global batch of {saved_batch}, resumed with "
                        f"{self.sampler.global_batch} (--batch_size x processes); epoch {self.epoch + 1} goes on "
                        f"after {self.epoch_step * self.sampler.global_batch} of its {done} triplets already seen")
        self.best_score, self.skipped = checkpoint["best_score"], checkpoint.get("skipped", 0)
        self.saved_step = self.step
        set_rng_state(checkpoint["rng"])
        log.info(f"resumed from {source}: epoch {self.epoch + 1}, step {self.step}")

    def save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.stage.folder / name, self.state(), keep_previous=name == "last.pt")
        if name == "last.pt":
            self.saved_step = self.step

    # -- one optimizer step ----------------------------------------------------------------------
    def train_step(self, batch):
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            reference, target = batch.reference, batch.target
            if self.cfg.channels_last:
                reference = reference.contiguous(memory_format=torch.channels_last)
                target = target.contiguous(memory_format=torch.channels_last)
            query, target = self.forward(reference, target, batch.tokens, batch.lengths)
            if self.dist.enabled and self.cfg.gather_negatives:
                query = map_tensors(query, gather_with_grad)
                target = {g: gather_with_grad(x) for g, x in target.items()}
            out = self.loss_fn(self.model, query, target)
        return out

    def run(self) -> None:
        cfg, stage = self.cfg, self.stage
        steps_per_epoch = self.sampler.steps_per_epoch()
        step_log = StepLog(stage.folder / "train_log.jsonl", resume_step=self.step) if self.dist.is_main else None
        pending: list[tuple[int, int, object, float]] = []   # (step, epoch, loss parts on device, lr)

        def flush():
            if not pending:
                return
            if self.dist.enabled and not cfg.gather_negatives:
                # per-rank negatives: each rank's loss covers its own batch, so log the mean over ranks
                # (one collective per flush; every rank flushes at the same steps)
                keys = list(pending[0][2])
                means = all_reduce_mean(torch.stack([torch.stack([p[k].float() for k in keys])
                                                     for _, _, p, _ in pending]))
                pending[:] = [(s, e, dict(zip(keys, m)), lr) for (s, e, _, lr), m in zip(pending, means)]
            rows, bad = [], None
            for step, epoch, parts, lr in pending:
                values = {k: float(v) for k, v in parts.items()}
                finite = all(math.isfinite(v) for v in values.values())
                if not finite and bad is None:
                    bad = (step, dict(values))
                rows.append({"step": step, "epoch": epoch + 1, "loss": values.pop("total"), **values, "lr": lr,
                             **({"skipped": True} if not finite and cfg.skip_nonfinite else {})})
            pending.clear()
            if step_log is not None:
                step_log.write(rows)
            if self.writer is not None:
                last = rows[-1]
                for key, value in last.items():
                    if key not in ("step", "epoch"):
                        self.writer.add_scalar(f"stage{stage.number}/train/{key}", value, last["step"])
            if bad is not None and not cfg.skip_nonfinite:
                last_pt = stage.folder / "last.pt"
                raise NonFiniteLoss(f"non-finite loss at step {bad[0]}: " +
                                    ", ".join(f"{k}={v:.4g}" for k, v in bad[1].items()) +
                                    (f". The last good checkpoint is {last_pt}"
                                     + (f" (step {self.saved_step})" if self.saved_step is not None else "")
                                     if last_pt.is_file() else ". No checkpoint was written before it") +
                                    "; lower --lr, or pass --skip_nonfinite to skip such batches.")
            return rows[-1]

        while self.epoch < stage.epochs:
            self.sampler.set_epoch(self.epoch, self.epoch_step)
            bar = tqdm(self.loader, total=steps_per_epoch, initial=self.epoch_step, disable=not self.dist.is_main,
                       desc=f"stage {stage.number} epoch {self.epoch + 1}/{stage.epochs}", dynamic_ncols=True)
            t0, seen = time.perf_counter(), 0
            for batch in bar:
                out = self.train_step(batch)
                # the flag needs the decision now; under DDP every rank skips, or none does
                if cfg.skip_nonfinite and any_rank(not bool(torch.isfinite(out.total)), self.device):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped += 1
                    log.warning(f"step {self.step + 1}: non-finite loss, batch skipped ({self.skipped} so far)")
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(out.total).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                self.step += 1
                self.epoch_step += 1
                seen += batch.reference.shape[0] * self.dist.world_size
                parts = {"total": out.total.detach(), **{k: v.detach() for k, v in out.parts.items()},
                         "temperature": self.model.log_temperature.detach().exp()}
                pending.append((self.step, self.epoch, parts, self.optimizer.param_groups[0]["lr"]))
                at_save = cfg.save_every_steps and self.step % cfg.save_every_steps == 0
                at_log = self.step % cfg.log_every == 0 or at_save
                stop = self.stop_signal is not None
                if self.dist.enabled:  # ranks agree at log steps, so that all stop after the same step
                    stop = bool(at_log) and any_rank(stop, self.device)
                if at_log or stop:
                    row = flush()
                    bar.set_postfix(loss=f"{row['loss']:.3f}", trip_s=f"{seen / (time.perf_counter() - t0):.1f}")
                if at_save or stop:
                    self.save("last.pt")
                if stop:
                    raise Interrupted(self.stop_signal)
                if cfg.max_steps and self.step >= cfg.max_steps:
                    break
            bar.close()
            flush()
            self.epoch += 1
            self.epoch_step = 0
            self.scheduler.step()
            self.end_of_epoch()
            if cfg.max_steps and self.step >= cfg.max_steps:
                log.info(f"stage {stage.number}: stopped after --max_steps {cfg.max_steps} steps")
                break
        if self.skipped:
            log.warning(f"stage {stage.number}: {self.skipped} batch(es) skipped for a non-finite loss "
                        f"(--skip_nonfinite; marked \"skipped\" in {stage.folder / 'train_log.jsonl'})")

    def end_of_epoch(self) -> None:
        cfg = self.cfg
        if cfg.validate:
            result = evaluate(self.model, self.fmt, self.vocab, cfg, "val", self.device, self.dist,
                              self.amp_dtype, keep_rankings=False, progress=True)
            if self.dist.is_main:
                log.info(f"stage {self.stage.number} epoch {self.epoch} validation:\n{result.table()}")
                if result.overlap:
                    log.info("overlap " + ", ".join(f"{g} {v:.3f}" for g, v in result.overlap.items()))
                if self.writer is not None:
                    for key, value in result.overall.items():
                        self.writer.add_scalar(f"stage{self.stage.number}/val/{key}", value, self.step)
                    for grain, value in result.overlap.items():
                        self.writer.add_scalar(f"stage{self.stage.number}/overlap/{grain}", value, self.step)
                    if cfg.val_figure:
                        from utils.figures import log_retrieval_figure
                        log_retrieval_figure(self.writer, f"stage{self.stage.number}/val/retrievals", self.step,
                                             self.model, self.fmt, self.vocab, cfg, self.device,
                                             amp_dtype=self.amp_dtype)
            score = result.score
        else:
            score = -float(self.epoch)  # without validation the latest epoch counts as best
        improved = score > self.best_score
        if improved:
            self.best_score = score
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        barrier()


# ----------------------------------------------------------------------------- orchestration

def check_compatible(checkpoint: dict, cfg: Config, vocab: Vocabulary, source: str) -> None:
    """Refuse a checkpoint that cannot mean the same thing as this run's model and data."""
    saved = checkpoint["config"]
    for key in ("model", "backbone", "grains", "embed_dim", "word_dim", "share_attention", "fpn_smooth"):
        if saved.get(key) != getattr(cfg, key):
            raise CheckpointError(f"{source}: checkpoint has --{key} {saved.get(key)!r} but this run uses "
                                  f"{getattr(cfg, key)!r}; pass --{key} {saved.get(key)} or another checkpoint")
    if list(checkpoint["vocab"]["tokens"]) != list(vocab.tokens):
        raise CheckpointError(f"{source}: checkpoint vocabulary ({len(checkpoint['vocab']['tokens'])} tokens) does not "
                              f"match {cfg.vocab_dir}/{cfg.dataset}_vocab.json ({len(vocab.tokens)} tokens); use the "
                              f"vocabulary saved in the run folder (vocab.json) or retrain")


def vocab_state(vocab: Vocabulary) -> dict:
    return {"tokens": list(vocab.tokens), "words_count": vocab.words_count}


def find_resume(stage_folder: Path) -> Path | None:
    """The newest loadable checkpoint of a stage, falling back to the previous one when last.pt is damaged.

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
            return candidate
    if damaged:
        raise CheckpointError(f"--resume auto: no loadable checkpoint in {stage_folder} "
                              f"({', '.join(p.name for p in damaged)} damaged); pass --resume PATH to another "
                              f"checkpoint, or move the folder away to start the stage over")
    log.info(f"--resume auto: no checkpoint in {stage_folder} yet; stage starts from the beginning")
    return None


def train(cfg: Config) -> Path:
    """Run the stage(s) `cfg` asks for; returns the run folder."""
    dist_info = init_distributed("cuda" if pick_device(cfg).type == "cuda" else "cpu")
    run_dir = Path(cfg.output_dir) / cfg.exp_name
    if dist_info.is_main:
        check_writable(run_dir)
    setup_logging(run_dir / "train.log", dist_info.is_main)
    writer = None
    if dist_info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tensorboard"))
        cfg.save(run_dir / "config.json")
        vocab_src = Path(cfg.vocab_dir) / f"{cfg.dataset}_vocab.json"
        if vocab_src.is_file():
            atomic_write(run_dir / "vocab.json", lambda f: f.write(vocab_src.read_bytes()), binary=True)

    stages = []
    if cfg.two_stage:
        stages.append((replace(cfg, img_finetune=False, txt_finetune=False), Stage(1, cfg.num_epochs, cfg.step_lr, run_dir / "stage1")))
        stages.append((replace(cfg, img_finetune=True, txt_finetune=True), Stage(2, cfg.finetune_epochs, cfg.finetune_step_lr, run_dir / "stage2")))
    elif cfg.img_finetune or cfg.txt_finetune:
        stages.append((cfg, Stage(2, cfg.finetune_epochs, cfg.finetune_step_lr, run_dir / "stage2")))
    else:
        stages.append((cfg, Stage(1, cfg.num_epochs, cfg.step_lr, run_dir / "stage1")))

    try:
        for stage_cfg, stage in stages:
            stage.folder.mkdir(parents=True, exist_ok=True)
            run_stage(stage_cfg, stage, dist_info, run_dir, writer)
    finally:
        if writer is not None:
            writer.close()
        cleanup()
    return run_dir


def run_stage(cfg: Config, stage: Stage, dist_info: DistInfo, run_dir: Path, writer) -> None:
    if stage.epochs == 0:
        return
    resume_from = None
    if cfg.resume == "auto":
        resume_from = find_resume(stage.folder)
    elif cfg.resume:  # a PATH resumes its own stage: earlier stages are done, later ones start afresh
        saved_stage = load_checkpoint(cfg.resume).get("stage", stage.number)
        if saved_stage > stage.number:
            log.info(f"stage {stage.number}: skipped (--resume {cfg.resume} is a stage-{saved_stage} checkpoint)")
            return
        if saved_stage == stage.number:
            resume_from = Path(cfg.resume)
    trainer = Trainer(cfg, stage, dist_info, run_dir, writer)
    if resume_from is not None:
        trainer.restore(load_checkpoint(resume_from, trainer.device), str(resume_from))
        if trainer.epoch >= stage.epochs:
            log.info(f"stage {stage.number} already finished ({stage.epochs} epochs)")
            return
    elif stage.number == 2:
        start = Path(cfg.ckpt) if cfg.ckpt else run_dir / "stage1" / "best.pt"
        if not start.is_file():
            raise FileNotFoundError(f"stage 2 starts from a stage-1 checkpoint, but {start} does not exist; "
                                    f"train stage 1 first (same --exp_name, without --img_finetune/--txt_finetune), "
                                    f"pass --ckpt PATH, or use --two_stage")
        trainer.load_weights(load_checkpoint(start, trainer.device), str(start))
        log.info(f"stage 2 starts from {start}")
    elif cfg.ckpt:
        trainer.load_weights(load_checkpoint(cfg.ckpt, trainer.device), cfg.ckpt)

    first_signal_at = []

    def on_signal(signum, _frame):
        # Asked twice: stop now (files are written atomically). A repeat within a few seconds is
        # the same request delivered twice (SLURM signals every process, torchrun forwards it again).
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
        trainer.run()
    except Interrupted:
        log.warning(f"saved {stage.folder / 'last.pt'} at step {trainer.step}. Resume with the same command "
                    f"plus --resume auto, or `python train.py --output_dir {cfg.output_dir} --exp_name "
                    f"{cfg.exp_name} --resume auto` (the other settings are read from {run_dir / 'config.json'})")
        raise SystemExit(130)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def resume_config(explicit: dict) -> dict | None:
    """With --resume, the saved config of the run is the base, so the original flags need not be repeated."""
    if not explicit.get("resume"):
        return None
    if explicit["resume"] == "auto":
        saved = Path(explicit.get("output_dir", Config.output_dir)) / explicit.get("exp_name", Config.exp_name) / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume auto: {saved} not found; nothing to resume (check --output_dir "
                                    f"and --exp_name, or drop --resume to start a new run)")
        return read_json(saved)
    return load_checkpoint(explicit["resume"])["config"]
