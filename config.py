"""One typed configuration for every entry point.

Every option lives in `Config`; the command-line parsers of vocab.py, train.py,
evaluate.py (and the other tools) are generated from its fields, so a flag is
declared once. Precedence, lowest first: field default < dataset preset <
checkpoint config (evaluate) < flags given on the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data.formats import FORMATS
from models import GRAINS, VARIANTS
from utils.io import atomic_write_text


def opt(default, help: str, groups: str = "train", choices=None, **kw):
    """A config field with its --help text and the entry points that expose it."""
    meta = {"help": help, "groups": set(groups.split(",")), "choices": choices}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# groups: vocab (vocab.py) · data, run (train, evaluate, tools) · model, train (train) · eval (train, evaluate)
# · search (retrieve.py)
@dataclass
class Config:
    # --- data ---
    dataset: str = opt("fashioniq", "Dataset format to read.", "data,vocab", choices=tuple(FORMATS))
    data_root: str = opt(os.environ.get("MANME_DATA_ROOT", "./datasets"),
                         "Folder holding one folder per dataset in the ARTEMIS release layout "
                         "($MANME_DATA_ROOT when set).", "data,vocab")
    vocab_dir: str = opt("./vocab", "Where vocab.py writes, and train.py reads, <dataset>_vocab.json.", "data,vocab")
    categories: str = opt("dress,shirt,toptee", "FashionIQ categories, comma-separated (ignored for other datasets).", "data,eval,vocab")
    crop_size: int = opt(224, "Image crop size in pixels; images are resized to crop_size*256/224 first.", "data,model")
    num_workers: int = opt(4, "DataLoader worker processes (0 loads in the main process).", "train,eval,search")
    # --- model ---
    model: str = opt("manme", "Model variant (MANME.md §4, variants).", "model", choices=tuple(VARIANTS))
    backbone: str = opt("resnet50", "Image backbone.", "model", choices=("resnet50", "resnet18"))
    backbone_weights: str = opt("default",
                                "ImageNet state dict for the backbone: a PATH, 'default' (torchvision's cache: "
                                "$TORCH_HOME/hub/checkpoints/<arch>-<hash>.pth), or 'none' to train from scratch. "
                                "Never downloaded.", "model")
    embed_dim: int = opt(512, "Joint embedding size d.", "model")
    word_dim: int = opt(300, "Word embedding size.", "model")
    glove_path: str = opt("", "GloVe text file (glove.*.300d.txt) to initialise word embeddings; empty = random init.", "model")
    grains: str = opt("coarse,mid,fine", "Granularities to use, comma-separated subset of coarse,mid,fine.", "model")
    share_attention: bool = opt(False, "(ours) Share the compositor block's weights across granularities.", "model")
    gem_p: float = opt(3.0, "Generalized-mean pooling exponent.", "model")
    fpn_smooth: str = opt("full", "3x3 smoothing convs of the top-down pathway: full (dense, as MANME.md §1 specifies; "
                          "as many FLOPs as the resnet50 backbone itself at 224 px) or depthwise (ours: nearly free, "
                          "a speed option).", "model", choices=("full", "depthwise"))
    frozen_bn_stats: bool = opt(True, "(ours) Stage 1: keep the frozen backbone's BatchNorm statistics fixed (eval mode); "
                                "--no-frozen_bn_stats updates them as the ARTEMIS release does.", "model")
    separate_backbone_passes: bool = opt(False, "Embed reference and target images in two backbone passes, as the "
                                         "ARTEMIS release does (BatchNorm batch statistics per image set); default "
                                         "(ours): one pass over both.", "model")
    # --- loss ---
    temperature_init: float = opt(2.65926, "Initial log-temperature kappa (tau = exp(kappa)), learnable.", "model")
    alpha: float = opt(0.4, "(ours) Mix of the text embedding and its projection in the mutual-exclusion relevance.", "model")
    margins: str = opt("0.6,0.4,0.3", "(ours) Mutual-exclusion margins for coarse,mid,fine.", "model")
    lambda_me: float = opt(1.0, "(ours) Weight of the mutual-exclusion loss (0 disables it).", "model")
    lambda_ov: float = opt(0.0, "(ours) Weight of the optional overlap regulariser.", "model")
    # --- training ---
    img_finetune: bool = opt(False, "Stage 2: fine-tune the image backbone.", "train")
    txt_finetune: bool = opt(False, "Stage 2: fine-tune the word embeddings.", "train")
    two_stage: bool = opt(False, "Run stage 1 (--num_epochs) then stage 2 (--finetune_epochs) in one command.", "train")
    ckpt: str = opt("", "Checkpoint to start stage 2 from (train) or to evaluate (evaluate).", "train,eval")
    stage2_start: str = opt("continue", "How stage 2 starts: continue (the ARTEMIS release: the last stage-1 "
                            "checkpoint, with its optimizer state, decayed learning rate and best score) or best "
                            "(ours: the best stage-1 weights, a fresh optimizer at --lr).", "train",
                            choices=("continue", "best"))
    num_epochs: int = opt(8, "Stage-1 epochs.", "train")
    finetune_epochs: int = opt(50, "Stage-2 epochs (used with --two_stage or when fine-tuning).", "train")
    batch_size: int = opt(32, "Training triplets per optimizer step (per process under torchrun).", "train")
    lr: float = opt(5e-4, "AdamW learning rate.", "train")
    weight_decay: float = opt(0.01, "AdamW weight decay (0.01: torch's default, which the ARTEMIS release uses "
                              "by setting none).", "train")
    step_lr: int = opt(4, "Halve the learning rate every step_lr epochs (stage 1).", "train")
    finetune_step_lr: int = opt(10, "Halve the learning rate every finetune_step_lr epochs (stage 2).", "train")
    lr_decay: float = opt(0.5, "Learning-rate factor applied every step.", "train")
    seed: int = opt(0, "Random seed (data order, initialisation, augmentation).", "train")
    output_dir: str = opt("./runs", "Runs are written under <output_dir>/<exp_name>/.", "run")
    exp_name: str = opt("default", "Experiment name.", "train")
    log_every: int = opt(10, "Print/TensorBoard interval in optimizer steps.", "train")
    save_every_steps: int = opt(0, "Also write last.pt every N optimizer steps (0: only at epoch end).", "train")
    resume: str = opt("", "'auto' (newest good checkpoint of the experiment) or a checkpoint PATH.", "train")
    skip_nonfinite: bool = opt(False, "Skip batches whose loss is NaN/inf instead of stopping.", "train")
    max_steps: int = opt(0, "Stop each stage after this many optimizer steps (0: no limit; for smoke tests).", "train")
    validate: bool = opt(True, "Validate after every epoch.", "train")
    val_figure: bool = opt(True, "Add a retrieval figure to TensorBoard at each validation.", "train")
    # --- performance / device ---
    device: str = opt("auto", "cpu, cuda or auto (cuda when available).", "run,search", choices=("auto", "cpu", "cuda"))
    amp: str = opt("auto", "Mixed precision: bf16, fp16, off, or auto (bf16 on CUDA when supported, off on CPU). "
                   "Training only: evaluation, validation and search run in float32 unless --amp is given to them.",
                   "run,search", choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = opt(False, "Use channels-last memory format for the backbone.", "run")
    compile: bool = opt(False, "torch.compile the model.", "train")
    gather_negatives: bool = opt(True, "Under torchrun, use the whole global batch as in-batch negatives.", "train")
    # --- evaluation ---
    split: str = opt("val", "Split to evaluate.", "eval", choices=("val", "test"))
    eval_batch_size: int = opt(64, "Images per batch when embedding the gallery.", "eval,train,search")
    eval_chunk: int = opt(1024, "Queries scored per chunk.", "eval,train")
    gallery_chunk: int = opt(8192, "Gallery images scored per chunk.", "eval,train")
    profile: bool = opt(False, "evaluate.py: also report trainable/total parameters and GFLOPs per query.", "eval")

    # ---- derived views ----
    @property
    def grain_list(self) -> list[str]:
        return [g.strip() for g in self.grains.split(",") if g.strip()]

    @property
    def margin_list(self) -> dict[str, float]:
        values = [float(x) for x in self.margins.split(",")]
        return dict(zip(GRAINS, values))

    @property
    def category_list(self) -> list[str]:
        return [c.strip() for c in self.categories.split(",") if c.strip()]

    def validate_values(self) -> None:
        """Reject impossible settings with a message that names the fix."""
        bad = [g for g in self.grain_list if g not in GRAINS]
        if bad or not self.grain_list:
            raise ValueError(f"--grains {self.grains!r}: unknown granularity {bad}; use a subset of {','.join(GRAINS)}")
        if len(self.margins.split(",")) != 3:
            raise ValueError(f"--margins {self.margins!r}: give three values for coarse,mid,fine")
        for name in ("num_epochs", "batch_size", "crop_size", "embed_dim", "eval_chunk", "gallery_chunk", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.finetune_epochs < 0:
            raise ValueError(f"--finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.step_lr <= 0 or self.finetune_step_lr <= 0:
            raise ValueError("--step_lr and --finetune_step_lr must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))


# Per-dataset defaults: the ARTEMIS release recipe (MANME.md §5 (training recipe); its scripts/release_script.sh):
# stage 1 runs 8 epochs halving every 4; stage 2 runs 50 epochs halving every 10, and
# Fashion200k uses resnet18, batch 128, and 100 stage-2 epochs halving every 20.
PRESETS: dict[str, dict[str, Any]] = {
    "fashioniq": dict(backbone="resnet50", batch_size=32, num_epochs=8, step_lr=4, finetune_epochs=50, finetune_step_lr=10),
    "shoes": dict(backbone="resnet50", batch_size=32, num_epochs=8, step_lr=4, finetune_epochs=50, finetune_step_lr=10),
    "fashion200k": dict(backbone="resnet18", batch_size=128, num_epochs=8, step_lr=4, finetune_epochs=100, finetune_step_lr=20),
}


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    help_text = f"{meta['help']} (default: {default})"
    name = "--" + f.name
    # default=None everywhere so we can tell which flags the user actually gave.
    if f.type in ("bool", bool):
        parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        parser.add_argument(name, type=typ, default=None, choices=meta.get("choices"), help=help_text,
                            metavar=f.name.upper() if not meta.get("choices") else None)


def build_parser(groups: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser exposing the Config fields whose groups intersect `groups`."""
    wanted = set(groups.split(","))
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Config):
        if f.metadata["groups"] & wanted:
            _add_field(parser, f)
    return parser


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user set explicitly on the command line."""
    return {k: v for k, v in vars(args).items() if v is not None and k in {f.name for f in fields(Config)}}


def resolve(explicit: dict[str, Any], base: dict[str, Any] | None = None) -> Config:
    """Field defaults < dataset preset < model preset < `base` (e.g. a checkpoint's config) < explicit flags."""
    values: dict[str, Any] = {}
    merged = {**(base or {}), **explicit}
    dataset = merged.get("dataset", Config.dataset)
    if base is None:
        values.update(PRESETS.get(dataset, {}))
        variant = VARIANTS.get(merged.get("model", Config.model))
        values.update(variant.preset if variant else {})
    values.update(merged)
    cfg = Config.from_dict(values)
    cfg.validate_values()
    return cfg


def parse_config(groups: str, description: str, argv: list[str] | None = None) -> Config:
    args = build_parser(groups, description).parse_args(argv)
    return resolve(given_flags(args))
