"""One training stage (MANME.md §5, training recipe: stage 1 frozen, stage 2 fine-tunes): data, model,
optimizer, the loop.

engine.run chains the stages, resumes and handles stop signals; this module is one stage's
steps, logs, validation and checkpoints (stage folder: last.pt, last.prev.pt, best.pt,
train_log.jsonl).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config import Config, saved_setting
from data.augment import crop_flip_normalize
from data.cache import PixelSource, open_pixel_source
from data.formats import open_dataset
from data.loaders import (
    LoadFailure,
    TripletImages,
    collate_triplets,
    drop_missing,
    ignore_stop_signals,
    worker_failures,
)
from data.text import Vocabulary, load_vocabulary, vocabulary_path
from engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    strip_ddp_prefix,
    vocab_state,
)
from engine.evaluation import EvalResult, evaluate
from engine.sampler import ResumableSampler
from losses import LossOutput, RetrievalLoss, name_terms
from models import TrainingInputs, build_model
from utils.distributed import DistInfo, all_reduce_mean, any_rank, barrier, gather_with_grad
from utils.errors import UserError
from utils.logs import StepLog, log
from utils.precision import amp_dtype, autocast, pick_device, set_precision

# Called after each validation on the main process with (writer, tag, step, trainer): how the
# tools add a figure to TensorBoard without the engine depending on them.
ValidationHook = Callable[[object, str, int, "Trainer"], None]


UNKNOWN_WORDS_WARNING = 0.05  # share of caption words outside the vocabulary above which training warns
TIMINGS = ("step_ms", "load_wait_ms")  # train_log.jsonl columns that are timings, not loss parts


def compile_step(loss_step: Callable, device: torch.device, backend: str = "inductor") -> Callable:
    """torch.compile of the model's forward with the loss (AOTAutograd compiles their backward with them).
    On CUDA, mode "reduce-overhead" replays the step as CUDA graphs: every step has the same shapes, since the
    loader drops the last, smaller batch of an epoch (drop_last=True). Where torch cannot trace (the text
    encoder's packed GRU), the graph breaks and that piece runs eagerly."""
    mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
    return torch.compile(loss_step, backend=backend, mode=mode)


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    pass


class EpochTriplets(Dataset):
    """Training triplets keyed by (epoch, index), with augmentation seeded from (seed, epoch, index).

    Seeding per item makes every crop and flip independent of worker count and of
    where a run was resumed. Fashion200k draws new pairs each epoch.
    """

    def __init__(self, fmt, vocab, source: PixelSource, crop_size: int, seed: int, triplets_epoch0,
                 missing: set[str]):
        self.fmt, self.vocab, self.seed, self.missing = fmt, vocab, seed, missing
        self.source, self.crop_size = source, crop_size
        self.length = len(triplets_epoch0)
        self._epoch, self._items = 0, TripletImages(fmt, triplets_epoch0, vocab, source, crop_size)

    def paths(self, epoch: int) -> list[tuple[str, str]]:
        """(reference, target) image file of each item of `epoch`."""
        return self._items_for(epoch).paths

    def _items_for(self, epoch: int) -> TripletImages:
        if epoch != self._epoch:
            triplets = [t for t in self.fmt.train_triplets(epoch)
                        if t.reference not in self.missing and t.target not in self.missing]
            self._epoch, self._items = epoch, TripletImages(self.fmt, triplets, self.vocab, self.source,
                                                            self.crop_size)
        return self._items

    def __len__(self) -> int:
        return self.length

    def item_seed(self, epoch: int, index: int) -> int:
        return (self.seed * 1_000_003 + epoch) * 10_000_019 + index

    @worker_failures
    def __getitem__(self, key):
        epoch, index = key
        items = self._items_for(epoch)
        # a generator of its own: torch.manual_seed would also reseed every accelerator, at a cost per item
        return items.item(index % len(items), torch.Generator().manual_seed(self.item_seed(epoch, index)))


@dataclass
class Stage:
    number: int            # 1 frozen, 2 fine-tune
    epochs: int
    step_lr: int
    folder: Path


@dataclass
class PendingStep:
    """A step's loss values, still on the device (one tensor: total, temperature, then the loss's terms (T, K)
    row by row): read back (one sync) and named only at log steps."""
    step: int
    epoch: int
    values: torch.Tensor
    terms: tuple[tuple[str, ...], tuple[str, ...]]   # the terms' names and grains (LossOutput.names, .grains)
    lr: float
    load_wait_ms: float = 0.0  # time the loop waited for this batch: an upper bound on the GPU's idle time
    step_ms: float = 0.0       # wall time per step over the log interval, everything included


def check_compatible(checkpoint: dict, cfg: Config, vocab: Vocabulary, source: str) -> None:
    """Refuse a checkpoint that cannot mean the same thing as this run's model and data."""
    saved = checkpoint["config"]
    for key in ("model", "backbone", "grains", "embed_dim", "word_dim", "share_attention", "fpn_smooth", "fpn_relu",
                "text_encoder", "clip_pool"):
        value = saved_setting(saved, key)  # a setting added later: what older checkpoints were trained with
        if value != getattr(cfg, key):
            flag = (f"--{key}" if value else f"--no-{key}") if isinstance(value, bool) else f"--{key} {value}"
            raise CheckpointError(f"{source}: checkpoint has --{key} {value!r} but this run uses "
                                  f"{getattr(cfg, key)!r}; pass {flag} or another checkpoint")
    if list(checkpoint["vocab"]["tokens"]) != list(vocab.tokens):
        raise CheckpointError(f"{source}: checkpoint vocabulary ({len(checkpoint['vocab']['tokens'])} tokens) does not "
                              f"match {vocabulary_path(cfg)} ({len(vocab.tokens)} tokens); use the "
                              f"vocabulary saved in the run folder (vocab.json) or retrain")


def load_towers(model, cfg: Config) -> None:
    """Copy the CLIP towers of the checkpoint --towers_ckpt (a run on the same --backbone) into `model`."""
    source = cfg.towers_ckpt
    checkpoint = load_checkpoint(source)
    if saved_setting(checkpoint["config"], "backbone") != cfg.backbone:
        raise UserError(f"--towers_ckpt {source}: trained with --backbone {checkpoint['config'].get('backbone')}, "
                        f"this run uses {cfg.backbone}; pass a checkpoint of a {cfg.backbone} run")
    saved = strip_ddp_prefix(checkpoint["model"])
    prefixes = ("image_encoder.backbone.", "text_encoder.tower.")
    own = model.state_dict()
    towers = {k: v for k, v in saved.items() if k.startswith(prefixes) and k in own and v.shape == own[k].shape}
    wanted = [k for k in own if k.startswith(prefixes)]
    if len(towers) != len(wanted):
        raise UserError(f"--towers_ckpt {source}: holds {len(towers)} of this model's {len(wanted)} tower tensors; "
                        f"pass a checkpoint of a run with the same --backbone and --text_encoder")
    model.load_state_dict(towers, strict=False)
    log.info(f"CLIP towers ({len(towers)} tensors) from {source}")


def loss_values(row: dict) -> dict[str, float]:
    """A log row's loss parts, with the loss itself named "total" first, as the error message shows them."""
    parts = {k: v for k, v in row.items() if k not in ("step", "epoch", "loss", "lr", "skipped") + TIMINGS}
    return {"total": row["loss"], **parts}


class Trainer:
    def __init__(self, cfg: Config, stage: Stage, dist_info: DistInfo, run_dir: Path, writer,
                 validation_hook: ValidationHook | None = None):
        self.cfg, self.stage, self.dist, self.run_dir, self.writer = cfg, stage, dist_info, run_dir, writer
        self.validation_hook = validation_hook
        self.device = pick_device(cfg.device, dist_info.local_rank)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.precision = set_precision(self.device, cfg.tf32, cfg.cudnn_benchmark)
        torch.manual_seed(cfg.seed)
        self.fmt = open_dataset(cfg)
        self.vocab = load_vocabulary(cfg)
        self._build_data()
        self._build_model()
        self.epoch, self.epoch_step, self.step, self.best_score = 0, 0, 0, -math.inf
        self.skipped = 0
        self.saved_step: int | None = None   # step of the newest last.pt
        self.stop_signal: int | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def _build_data(self) -> None:
        cfg, dist_info = self.cfg, self.dist
        triplets = self.fmt.train_triplets(0)
        unknown = self.vocab.unknown_share(t.text for t in triplets)
        if unknown > UNKNOWN_WORDS_WARNING:
            log.warning(f"{100 * unknown:.1f} % of the training captions' words are not in {vocabulary_path(cfg)} "
                        f"and are read as <unk>; was it built from these captions? Rebuild it with vocab.py")
        usable = drop_missing(self.fmt, triplets)
        images = {i for t in triplets for i in (t.reference, t.target)}
        missing = images - {i for t in usable for i in (t.reference, t.target)}
        global_batch = cfg.batch_size * dist_info.world_size
        if len(usable) < global_batch:
            raise UserError(f"--batch_size {cfg.batch_size} (x{dist_info.world_size} processes) is larger than the "
                             f"{len(usable)} usable training triplets; lower --batch_size")
        say = log.info if dist_info.is_main else lambda _: None
        source = open_pixel_source(cfg, log=say, training=True)
        # validation: the same rows, never --jpeg_draft
        self.eval_source = PixelSource(source.size, source.rows, style=source.style)
        self.train_set = EpochTriplets(self.fmt, self.vocab, source, cfg.crop_size, cfg.seed, usable, missing)
        self.sampler = ResumableSampler(len(self.train_set), cfg.batch_size, cfg.seed,
                                        dist_info.rank, dist_info.world_size)
        workers = cfg.num_workers
        self.loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
                                 collate_fn=collate_triplets, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", drop_last=True,
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                                 worker_init_fn=ignore_stop_signals)

    def _build_model(self) -> None:
        cfg, stage = self.cfg, self.stage
        self.model = build_model(cfg, len(self.vocab), vocab_path=vocabulary_path(cfg),
                                 vocab_words=self.vocab.tokens).to(self.device)
        if cfg.towers_ckpt:
            load_towers(self.model, cfg)
        self.model.set_finetune(img=cfg.img_finetune, txt=cfg.txt_finetune)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = RetrievalLoss(cfg).to(self.device)
        trainable, total = self.model.parameter_counts()
        if not trainable:
            raise UserError(f"--model {cfg.model} has nothing to train in stage {stage.number} (frozen towers); "
                            f"fine-tune them with --img_finetune --txt_finetune")
        # frozen towers whose inputs never change (CLIP: no crop, no flip): each training image is embedded
        # once, at its first batch, and read from memory after (CLIP4Cir's large speed-up for the Combiner)
        frozen = not any(p.requires_grad for p in self.model.image_encoder.parameters())
        self.image_features: dict[str, torch.Tensor] | None = (   # image -> (K, d)
            {} if frozen and not self.train_set.source.style.flip and self.train_set.source.style.pad != "square"
            and not self.dist.enabled and not cfg.compile else None)
        if self.image_features is not None:
            log.info(f"stage {stage.number}: image towers frozen, inputs fixed: each training image is embedded "
                     f"once, at its first batch, and its features reused")
        log.info(f"stage {stage.number}: model {cfg.model}/{cfg.backbone}, grains {cfg.grains}; "
                 f"{trainable:,} trainable of {total:,} parameters; device {self.device}"
                 f"{', amp ' + str(self.amp_dtype).split('.')[-1] if self.amp_dtype else ''}"
                 + (f"; {', '.join(f'{k} {v}' for k, v in self.precision.items())}" if self.device.type == "cuda"
                    else ""))
        # Every parameter, frozen ones too (AdamW skips those without a gradient), as the ARTEMIS
        # release does: stage 2 can then continue with stage 1's optimizer state.
        self.optimizer = torch.optim.AdamW(self.model.parameter_groups(cfg.lr, cfg.clip_lr_mult), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, stage.step_lr, cfg.lr_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        forward: torch.nn.Module = self.model   # Retriever.forward: one step's TrainingInputs
        if self.dist.enabled:
            forward = torch.nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = forward
        self.loss_step = compile_step(self._loss_step, self.device) if cfg.compile else self._loss_step

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

    def continue_from(self, checkpoint: dict, source: str) -> None:
        """Stage 2 as the ARTEMIS release starts it: stage 1's weights, optimizer state (so its decayed
        learning rate) and best validation score; the epoch count starts again."""
        self.load_weights(checkpoint, source)
        self.load_optimizer(checkpoint, source, "pass --stage2_start best to start stage 2 from its weights with a "
                                                "fresh optimizer")
        self.best_score = checkpoint["best_score"]
        log.info(f"stage 2 continues {source}: learning rate {self.optimizer.param_groups[0]['lr']:.3g}, "
                 f"best score so far {self.best_score:.2f}")

    def load_optimizer(self, checkpoint: dict, source: str, way_out: str) -> None:
        """The optimizer state of `checkpoint`, refused (CheckpointError naming `way_out`) where it does not fit the
        parameters: another count (torch says so), or another shape per parameter (torch does not check; the step
        would fail later), e.g. written before the compositor's weights were stacked or reshaped (issue 23)."""
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    saved = self.optimizer.state.get(p, {}).get("exp_avg")
                    if saved is not None and saved.shape != p.shape:
                        raise ValueError(f"a state of shape {tuple(saved.shape)} for a parameter of shape "
                                         f"{tuple(p.shape)}")
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{source}: its optimizer state does not fit this model's parameters ({e}); "
                                  f"{way_out}") from None

    def restore(self, checkpoint: dict, source: str) -> None:
        """Continue exactly where `checkpoint` stopped."""
        self.load_weights(checkpoint, source)
        self.load_optimizer(checkpoint, source, "it was written by another version of manme. Its weights still load "
                                                "(evaluate.py, retrieve.py); to train, start the run again in a new "
                                                "folder")
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
        if self.image_features is not None:
            return self.cached_train_step(batch)
        batch = batch.to(self.device, non_blocking=True)  # uint8 pixels; crop, flip, normalise run here
        reference, target = batch.images(self.cfg.crop_size, self.train_set.source.style)
        if self.cfg.channels_last:
            reference = reference.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are read by now
        return self.loss_step(reference, target, batch.tokens, batch.lengths)

    def _loss_step(self, reference, target, tokens, lengths) -> LossOutput:
        """Model forward and loss: what --compile compiles (its backward with it)."""
        with autocast(self.device, self.amp_dtype):
            inputs = self.forward(reference, target, tokens, lengths)
            if self.dist.enabled and self.cfg.gather_negatives:
                inputs = inputs.map_batch(gather_with_grad)
            return self.loss_fn(self.model, inputs)

    @property
    def cudagraphs(self) -> bool:
        return self.cfg.compile and self.device.type == "cuda"

    def cached_train_step(self, batch):
        """train_step with frozen image features embedded once per image (self.image_features)."""
        paths = self.train_set.paths(self.epoch)
        keys = [paths[i] for i in batch.index.tolist()]
        batch = batch.to(self.device, non_blocking=True)
        style, features = self.train_set.source.style, []
        for side, pixels in enumerate((batch.reference, batch.target)):
            names = [k[side] for k in keys]
            new = [n for n, name in enumerate(names) if name not in self.image_features]
            if new:
                with torch.no_grad(), autocast(self.device, self.amp_dtype):
                    images = crop_flip_normalize(pixels[new], batch.crops[new, side], self.cfg.crop_size, style)
                    embedded = self.model.encode_images(images, stacked=True)          # (K, N, d)
                for j, n in enumerate(new):
                    self.image_features[names[n]] = embedded[:, j]
            features.append(torch.stack([self.image_features[name] for name in names], 1))   # (K, Q, d)
        reference, target = features
        with autocast(self.device, self.amp_dtype):
            text = self.model.encode_texts(batch.tokens, batch.lengths)
            return self.loss_fn(self.model, TrainingInputs(text, reference, target))

    def optimize(self, out) -> None:
        """Backward and update, or skip the batch when its loss is not finite and --skip_nonfinite asks to."""
        self.optimizer.zero_grad(set_to_none=True)
        # the flag needs the decision now; under DDP every rank skips, or none does
        if self.cfg.skip_nonfinite and any_rank(not bool(torch.isfinite(out.total)), self.device):
            self.skipped += 1
            log.warning(f"step {self.step + 1}: non-finite loss, batch skipped ({self.skipped} so far)")
            return
        self.scaler.scale(out.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # -- logging ---------------------------------------------------------------------------------
    def log_rows(self, pending: list[PendingStep]) -> list[dict]:
        """The pending steps as train_log.jsonl rows (the one device sync of a log interval)."""
        if self.dist.enabled and not self.cfg.gather_negatives:
            # per-rank negatives: each rank's loss covers its own batch, so log the mean over ranks
            # (one collective per flush; every rank flushes at the same steps)
            means = all_reduce_mean(torch.stack([p.values for p in pending]))
            pending = [replace(p, values=m) for p, m in zip(pending, means)]
        rows = []
        for p in pending:
            (total, temperature, *terms), (names, grains) = p.values.tolist(), p.terms
            per_term = [terms[i:i + len(grains)] for i in range(0, len(terms), len(grains))]
            values = {"total": total, **name_terms(per_term, names, grains), "temperature": temperature}
            finite = all(math.isfinite(v) for v in values.values())
            rows.append({"step": p.step, "epoch": p.epoch + 1, "loss": values.pop("total"), **values, "lr": p.lr,
                         "step_ms": round(p.step_ms, 2), "load_wait_ms": round(p.load_wait_ms, 2),
                         **({"skipped": True} if not finite and self.cfg.skip_nonfinite else {})})
        return rows

    def flush(self, pending: list[PendingStep], step_log: StepLog | None) -> dict | None:
        """Write the pending steps to the step log and TensorBoard; stop on a non-finite loss unless skipped."""
        if not pending:
            return None
        rows = self.log_rows(pending)
        pending.clear()
        bad = next((r for r in rows if not all(math.isfinite(v) for v in loss_values(r).values())), None)
        if step_log is not None:
            step_log.write(rows)
        if self.writer is not None:
            last = rows[-1]
            for key, value in last.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(f"stage{self.stage.number}/train/{key}", value, last["step"])
        if bad is not None and not self.cfg.skip_nonfinite:
            self.raise_nonfinite(bad)
        return rows[-1]

    def raise_nonfinite(self, row: dict) -> None:
        last_pt = self.stage.folder / "last.pt"
        values = loss_values(row)
        saved = (f". The last good checkpoint is {last_pt}"
                 + (f" (step {self.saved_step})" if self.saved_step is not None else "")
                 if last_pt.is_file() else ". No checkpoint was written before it")
        raise NonFiniteLoss(f"non-finite loss at step {row['step']}: "
                            + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                            + saved + "; lower --lr, or pass --skip_nonfinite to skip such batches.")

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        step_log = StepLog(self.stage.folder / "train_log.jsonl", resume_step=self.step) if self.dist.is_main else None
        while self.epoch < self.stage.epochs:
            self.run_epoch(step_log)
            self.epoch += 1
            self.epoch_step = 0
            self.scheduler.step()
            self.end_of_epoch()
            if self.at_max_steps():
                log.info(f"stage {self.stage.number}: stopped after --max_steps {self.cfg.max_steps} steps")
                break
        if self.skipped:
            log.warning(f"stage {self.stage.number}: {self.skipped} batch(es) skipped for a non-finite loss "
                        f"(--skip_nonfinite; marked \"skipped\" in {self.stage.folder / 'train_log.jsonl'})")

    def stop_workers(self) -> None:
        """End the persistent DataLoader workers now: the loader keeps its iterator, and with it the workers,
        alive; left to the interpreter's exit, they are terminated and reported as "exited unexpectedly"."""
        iterator, self.loader._iterator = self.loader._iterator, None
        if iterator is not None:
            iterator._shutdown_workers()

    def at_max_steps(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def run_epoch(self, step_log: StepLog | None) -> None:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.epoch_step)
        bar = tqdm(self.loader, total=self.sampler.steps_per_epoch(), initial=self.epoch_step,
                   disable=not self.dist.is_main, dynamic_ncols=True,
                   desc=f"stage {self.stage.number} epoch {self.epoch + 1}/{self.stage.epochs}")
        pending: list[PendingStep] = []
        t0, seen = time.perf_counter(), 0
        step_end = last_flush = time.perf_counter()
        for batch in bar:
            if isinstance(batch, LoadFailure):  # a worker's error: raised as with --num_workers 0
                raise batch.error
            step_start = time.perf_counter()
            out = self.train_step(batch)
            self.optimize(out)
            self.step += 1
            self.epoch_step += 1
            seen += batch.reference.shape[0] * self.dist.world_size
            # one small tensor a step (a copy, so CUDA graphs may reuse their output memory at the next step)
            values = torch.cat([out.total.detach().float().view(1), self.model.log_temperature.detach().exp().view(1),
                                out.terms.detach().float().flatten()])
            pending.append(PendingStep(self.step, self.epoch, values, (out.names, out.grains),
                                       self.optimizer.param_groups[0]["lr"],
                                       load_wait_ms=1e3 * (step_start - step_end)))
            at_save = cfg.save_every_steps and self.step % cfg.save_every_steps == 0
            at_log = self.step % cfg.log_every == 0 or at_save
            stop = self.stop_signal is not None
            if self.dist.enabled:  # ranks agree at log steps, so that all stop after the same step
                stop = bool(at_log) and any_rank(stop, self.device)
            if at_log or stop:
                last_flush = self.time_steps(pending, last_flush)
                row = self.flush(pending, step_log)
                bar.set_postfix(loss=f"{row['loss']:.3f}", trip_s=f"{seen / (time.perf_counter() - t0):.1f}")
            if at_save or stop:
                self.save("last.pt")
            if stop:
                raise Interrupted(self.stop_signal)
            if self.at_max_steps():
                break
            step_end = time.perf_counter()
        bar.close()
        self.time_steps(pending, last_flush)
        self.flush(pending, step_log)

    def time_steps(self, pending: list[PendingStep], since: float) -> float:
        """Give the pending steps their share of the wall time since the last log, once the device has
        finished them; returns now. (A step alone has no wall time of its own: the device runs behind.)"""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the log reads the losses back anyway: no extra wait
        now = time.perf_counter()
        for p in pending:
            p.step_ms = 1e3 * (now - since) / len(pending)
        return now

    def validate(self) -> EvalResult:
        # in float32, as evaluate.py: the selection score does not move with the training precision
        result = evaluate(self.model, self.fmt, self.vocab, self.cfg, "val", self.device, self.dist,
                          amp_dtype=None, keep_rankings=False, progress=True, source=self.eval_source)
        if self.dist.is_main:
            number = self.stage.number
            log.info(f"stage {number} epoch {self.epoch} validation:\n{result.table()}")
            if result.overlap:
                log.info("overlap " + ", ".join(f"{g} {v:.3f}" for g, v in result.overlap.items()))
            if self.writer is not None:
                for key, value in result.overall.items():
                    self.writer.add_scalar(f"stage{number}/val/{key}", value, self.step)
                for grain, value in result.overlap.items():
                    self.writer.add_scalar(f"stage{number}/overlap/{grain}", value, self.step)
                if self.validation_hook is not None:
                    self.validation_hook(self.writer, f"stage{number}/val", self.step, self)
        return result

    def end_of_epoch(self) -> None:
        broken = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if broken:  # never saved, never best: last.pt keeps the previous epoch's weights
            raise UserError(f"after step {self.step} the weights hold NaN or infinite values ({', '.join(broken[:3])}"
                            f"{' ...' if len(broken) > 3 else ''}): the training diverged, so this epoch is neither "
                            f"validated nor saved. Resume from last.pt with a lower --lr")
        if self.cfg.validate:
            score = self.validate().score
            improved = math.isfinite(score) and score > self.best_score
            if improved:
                self.best_score = score
        else:
            improved = True  # without validation the latest epoch counts as best
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        barrier()
