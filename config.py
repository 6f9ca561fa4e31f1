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
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data.formats import FORMATS
from data.images import IMAGENET, ImageStyle, clip_style
from models import CLIP_BACKBONES, CLIP_INPUT_SIZES, GRAINS, VARIANTS, is_clip
from utils.errors import UserError
from utils.io import atomic_write_text, read_json

FIELD_TYPES = {"bool": bool, "int": int, "float": (int, float), "str": str}
TYPE_NAMES = {bool: "true or false", int: "a whole number", (int, float): "a number", str: "a string"}


def at_least(low):
    return lambda v: None if v >= low else "must be positive" if low == 1 else f"must be at least {low}"


def between(low, high, why: str = ""):
    """low <= v <= high; `why` says what a larger value would break."""
    low_check = at_least(low)
    return lambda v: low_check(v) or (f"must be at most {high}{why}" if v > high else None)


def above(low, high, why: str = ""):
    """low < v <= high (low is 0 here: "positive")."""
    return lambda v: (None if v > low else "must be positive" if low == 0 else f"must be above {low}") or (
        f"must be at most {high}{why}" if v > high else None)


# Ranges keep memory and arithmetic finite (issue 22): sizes a machine can hold, counts an int64 step
# counter and the per-item seeds ((seed * 1_000_003 + epoch) * 10_000_019 + index < 2**64) can carry.
MANY = 10 ** 9
# tau = exp(kappa) in float32: overflows above log(3.4e38) ~ 88.7 and is 0 below ~ -103; either leaves a
# loss that cannot train
KAPPA = (-80.0, 80.0)
MARGIN = (0.0, 2.0)  # the relevances are cosines in [-1, 1]: a margin above 2 is never met


def finite(v) -> bool:
    """A number a float can hold (an int of config.json may be too large for one), not NaN or infinite."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def opt(default, help: str, groups: str = "train", choices=None, check=None):
    """A config field with its --help text, the entry points that expose it, and its range check
    (a function of the value returning what is wrong, or None)."""
    meta = {"help": help, "groups": set(groups.split(",")), "choices": choices, "check": check}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# groups: vocab (vocab.py) · data, run (train, evaluate, tools) · model, train (train) · eval (train, evaluate)
# · search (retrieve.py) · zeroshot (evaluate.py without a checkpoint)
@dataclass
class Config:
    # --- data ---
    dataset: str = opt("fashioniq", "Dataset format to read.", "data,vocab", choices=tuple(FORMATS))
    data_root: str = opt(os.environ.get("MANME_DATA_ROOT", "./datasets"),
                         "Folder holding one folder per dataset in the ARTEMIS release layout "
                         "($MANME_DATA_ROOT when set); docs/datasets.md.", "data,vocab")
    vocab_dir: str = opt("./vocab", "Where vocab.py writes, and train.py reads, <dataset>_vocab.json.", "data,vocab")
    categories: str = opt("dress,shirt,toptee", "FashionIQ categories, comma-separated (ignored for other datasets).",
                          "data,eval,vocab")
    crop_size: int = opt(224, "Image crop size in pixels; images are resized to crop_size*256/224 first.",
                         "data,model", check=between(32, 2048))
    image_cache: str = opt("auto", "Prepared image cache (`python -m data.prepare`): auto (the data root's cache/ "
                           "folder, when it holds this dataset at this --crop_size), none (read the image files), "
                           "or a FOLDER. Images it lacks, or whose file changed since, are read from their files; "
                           "the pixels are the same either way (docs/image-cache.md).", "data")
    jpeg_draft: bool = opt(False, "(ours) Decode JPEG files at 1/2, 1/4 or 1/8 scale where the resize needs no "
                           "more (PIL's draft mode): about twice as fast on photos of 500 px and more, pixels off "
                           "by under 1 of 255 levels on average (tests/test_cache.py). Training only: cached "
                           "images and evaluation are exact.", "train")
    caption_orders: str = opt("both", "FashionIQ training texts: both (each annotation twice, its captions in both "
                              "orders, as the ARTEMIS release) or random4 (CLIP4Cir, the combiner variants' preset: "
                              "each annotation once per epoch as 'c1 and c2', 'c2 and c1', c1 or c2, drawn anew "
                              "every epoch). Evaluation always uses both orders.", "train", choices=("both", "random4"))
    num_workers: int = opt(4, "DataLoader worker processes (0 loads in the main process).", "train,eval,search",
                           check=between(0, 256))
    # --- model ---
    model: str = opt("manme", "Model variant (MANME.md §4, variants; combiner and clip-sum: the CLIP4Cir baselines "
                     "on CLIP towers). evaluate.py without --ckpt: --model clip-sum evaluates the CLIP towers of "
                     "--backbone_weights zero-shot.", "model,zeroshot", choices=tuple(VARIANTS))
    backbone: str = opt("resnet50", "Image backbone: a torchvision ResNet, or a CLIP image tower (open_clip, "
                        "requirements-clip.txt): clip-rn50/clip-rn50x4 feed their stage maps to the top-down "
                        "pathway; clip-vit-b-32/-b-16 have one grid size at every depth, so their grains come from "
                        "depth (blocks 4, 8, 12 of 12: fine, mid, coarse); clip-rn-tiny/clip-vit-tiny are our small "
                        "configurations for tests and synthetic runs.", "model,data",
                        choices=("resnet50", "resnet18") + CLIP_BACKBONES)
    backbone_weights: str = opt("default",
                                "Weights of the backbone: a PATH, 'default' (ResNets: torchvision's cache, "
                                "$TORCH_HOME/hub/checkpoints/<arch>-<hash>.pth), or 'none' to train from scratch. "
                                "CLIP towers: open_clip's state-dict file of the whole CLIP model (.safetensors, "
                                ".bin, epoch_N.pt), whose text half --text_encoder clip uses; OpenAI's TorchScript "
                                ".pt files need `python -m tools.convert_clip IN.pt OUT.safetensors` once. "
                                "Never downloaded.", "model,zeroshot")
    clip_pool: str = opt("gem", "CLIP towers: pooling of the coarse grain: gem (as the other grains), or attnpool "
                         "(CLIP's own pooled embedding: RN attention pooling, ViT class token, then projected to "
                         "--embed_dim; it needs the tower's input size as --crop_size: 224, 288 for clip-rn50x4).",
                         "model", choices=("gem", "attnpool"))
    clip_quickgelu: bool = opt(True, "CLIP towers: build open_clip's -quickgelu configuration (QuickGELU, as "
                               "OpenAI's weights were trained; for RN towers it changes the text tower only); "
                               "--no-clip_quickgelu for weights trained with GELU (e.g. LAION's ViT files).",
                               "model,zeroshot")
    pad_ratio: float = opt(1.25, "CLIP towers: CLIP4Cir's target padding: images whose long/short side ratio "
                           "exceeds this are padded with black to it, then resized (bicubic, short side) and "
                           "centre-cropped to --crop_size; normalised with CLIP's mean and std. (ResNets pad to a "
                           "white square as the ARTEMIS release.)", "model,data",
                           check=between(1, 100, " (a wider pad leaves no image to see)"))
    text_encoder: str = opt("gru", "Text encoder: gru (word embeddings + BiGRU, needs vocab.py's vocabulary) or "
                            "clip (the CLIP text transformer of the --backbone_weights file with open_clip's "
                            "bundled BPE tokenizer: no vocabulary; needs a clip-* --backbone).", "model,vocab",
                            choices=("gru", "clip"))
    embed_dim: int = opt(512, "Joint embedding size d.", "model", check=between(1, 16384))
    word_dim: int = opt(300, "Word embedding size.", "model", check=between(1, 4096))
    glove_path: str = opt("", "GloVe text file (glove.*.300d.txt) to initialise word embeddings; empty = random init.",
                          "model")
    grains: str = opt("coarse,mid,fine", "Granularities to use, comma-separated subset of coarse,mid,fine.", "model")
    share_attention: bool = opt(False, "(ours) Share the compositor block's weights across granularities.", "model")
    gem_p: float = opt(3.0, "Generalized-mean pooling exponent.", "model",
                        check=between(1, 10, " (x**p of the pooled features overflows float32 beyond)"))
    fpn_smooth: str = opt("full", "3x3 smoothing convs of the top-down pathway: full (dense, as MANME.md §1 specifies; "
                          "as many FLOPs as the resnet50 backbone itself at 224 px) or depthwise (ours: few FLOPs, "
                          "faster on CPUs; on an H100 in bf16 it was no faster, BENCHMARKS.md).", "model",
                          choices=("full", "depthwise"))
    fpn_relu: bool = opt(False, "(ours) ReLU after each top-down smoothing conv, so that GeM pools non-negative "
                         "features at mid and fine (its clamp otherwise zeroes negative activations and their "
                         "gradient); MANME.md §1 has none.", "model")
    frozen_bn_stats: bool = opt(True, "(ours) Stage 1: keep the frozen backbone's BatchNorm statistics fixed "
                                "(eval mode); "
                                "--no-frozen_bn_stats updates them as the ARTEMIS release does.", "model")
    separate_backbone_passes: bool = opt(False, "Embed reference and target images in two backbone passes, as the "
                                         "ARTEMIS release does (BatchNorm batch statistics per image set); default "
                                         "(ours): one pass over both.", "model")
    # --- loss ---
    temperature_init: float = opt(2.65926, "Initial log-temperature kappa (tau = exp(kappa)), learnable.", "model",
                                  check=between(*KAPPA, " (tau = exp(kappa) must be a finite, non-zero float32)"))
    alpha: float = opt(0.4, "(ours) Mix of the text embedding and its projection in the mutual-exclusion relevance.",
                       "model", check=between(0, 1))
    margins: str = opt("0.3,0.2,0.15", "(ours) Mutual-exclusion margins for coarse,mid,fine; chosen on the dev set "
                       "(docs/selection.md), MANME.md's are 0.6,0.4,0.3.", "model")
    lambda_me: float = opt(0.1, "(ours) Weight of the mutual-exclusion loss (0 disables it); chosen on the dev set "
                           "(docs/selection.md), MANME.md's is 1.", "model",
                           check=between(0, 1000))
    lambda_ov: float = opt(0.0, "(ours) Weight of the optional overlap regulariser.", "model",
                           check=between(0, 1000))
    # --- training ---
    img_finetune: bool = opt(False, "Stage 2: fine-tune the image backbone.", "train")
    txt_finetune: bool = opt(False, "Stage 2: fine-tune the word embeddings (the CLIP text tower with "
                             "--text_encoder clip).", "train")
    clip_lr_mult: float = opt(0.01, "(ours) Stage 2: learning-rate multiplier of the CLIP towers (text, and "
                              "image when the backbone is CLIP) against --lr; pretrained transformers do not "
                              "survive the compositor's lr (CLIP4Cir fine-tunes them at 2e-6).", "train",
                              check=above(0, 1e6, " (--lr times it must stay a usable learning rate)"))
    towers_ckpt: str = opt("", "A checkpoint of a CLIP run (e.g. --model clip-sum fine-tuned: CLIP4Cir's stage 1) "
                           "whose CLIP towers this run starts from instead of --backbone_weights' (same --backbone).",
                           "train")
    two_stage: bool = opt(False, "Run stage 1 (--num_epochs) then stage 2 (--finetune_epochs) in one command.", "train")
    ckpt: str = opt("", "Checkpoint to start stage 2 from (train) or to evaluate (evaluate).", "train,eval")
    stage2_start: str = opt("continue", "How stage 2 starts: continue (the ARTEMIS release: the last stage-1 "
                            "checkpoint, with its optimizer state, decayed learning rate and best score) or best "
                            "(ours: the best stage-1 weights, a fresh optimizer at --lr).", "train",
                            choices=("continue", "best"))
    num_epochs: int = opt(8, "Stage-1 epochs.", "train", check=between(1, 100_000))
    finetune_epochs: int = opt(50, "Stage-2 epochs (used with --two_stage or when fine-tuning).", "train",
                               check=between(0, 100_000))
    batch_size: int = opt(32, "Training triplets per optimizer step (per process under torchrun: "
                          "docs/distributed.md); at least 2, so that every query has an in-batch negative.", "train",
                          check=between(1, 16384))
    lr: float = opt(5e-4, "AdamW learning rate.", "train", check=above(0, 1e30, " (a float32 must hold it)"))
    weight_decay: float = opt(0.01, "AdamW weight decay (0.01: torch's default, which the ARTEMIS release uses "
                              "by setting none).", "train", check=between(0, 100))
    step_lr: int = opt(4, "Halve the learning rate every step_lr epochs (stage 1).", "train",
                      check=between(1, 100_000))
    finetune_step_lr: int = opt(10, "Halve the learning rate every finetune_step_lr epochs (stage 2).", "train",
                                check=between(1, 100_000))
    lr_decay: float = opt(0.5, "Learning-rate factor applied every step.", "train",
                          check=above(0, 1, " (a factor above 1 grows the learning rate without bound)"))
    seed: int = opt(0, "Random seed (data order, initialisation, augmentation).", "train",
                    check=between(0, 999_999, " (the per-item seeds derived from it must fit 64 bits)"))
    output_dir: str = opt("./runs", "Runs are written under <output_dir>/<exp_name>/.", "run")
    exp_name: str = opt("default", "Experiment name.", "train")
    log_every: int = opt(10, "Print/TensorBoard interval in optimizer steps.", "train", check=between(1, MANY))
    save_every_steps: int = opt(0, "Also write last.pt every N optimizer steps (0: only at epoch end).", "train",
                                check=between(0, MANY))
    resume: str = opt("", "'auto' (newest good checkpoint of the experiment) or a checkpoint PATH "
                      "(docs/failures.md).", "train")
    overwrite: bool = opt(False, "Start over in an existing run folder: the old run is moved aside to "
                          "<exp_name>.old-<date-time>/ (never deleted).", "train")
    skip_nonfinite: bool = opt(False, "Skip batches whose loss is NaN/inf instead of stopping.", "train")
    max_steps: int = opt(0, "Stop each stage after this many optimizer steps (0: no limit; for smoke tests).", "train",
                         check=between(0, MANY))
    validate: bool = opt(True, "Validate after every epoch.", "train")
    val_figure: bool = opt(True, "Add a retrieval figure to TensorBoard at each validation.", "train")
    # --- performance / device ---
    device: str = opt("auto", "cpu, cuda or auto (cuda when available).", "run,search", choices=("auto", "cpu", "cuda"))
    amp: str = opt("auto", "Mixed precision: bf16, fp16, off, or auto (bf16 on CUDA when supported, off on CPU). "
                   "Training only: evaluation, validation and search run in float32 unless --amp is given to them.",
                   "run,search", choices=("auto", "bf16", "fp16", "off"))
    tf32: bool = opt(True, "Training on a CUDA GPU: float32 matmuls and convolutions in TF32 (Ampere and newer; "
                     "--no-tf32: full IEEE float32). Evaluation and validation always use full float32.", "train")
    cudnn_benchmark: bool = opt(True, "Training on a CUDA GPU: let cuDNN time its convolution algorithms once for "
                                "the fixed input size and keep the fastest.", "train")
    channels_last: bool = opt(False, "Use channels-last memory format for the backbone.", "run")
    compile: bool = opt(False, "torch.compile the training step: model forward and loss, with their backward "
                                "(CUDA graphs on a GPU: the last, smaller batch of an epoch is dropped, so every "
                                "step has the same shapes; docs/performance.md).", "train")
    gather_negatives: bool = opt(True, "Under torchrun, use the whole global batch as in-batch negatives "
                                 "(docs/distributed.md).", "train")
    # --- evaluation ---
    split: str = opt("val", "Split to evaluate: val; test (Fashion200k, whose val reads the test queries too); test1 "
                     "(CIRR: no public targets; writes the CIRR evaluation server's two submission files).", "eval",
                     choices=("val", "test", "test1"))
    eval_batch_size: int = opt(64, "Images per batch when embedding the gallery.", "eval,train,search",
                               check=between(1, 16384))
    eval_chunk: int = opt(1024, "Queries scored per chunk.", "eval,train", check=between(1, 65536))
    gallery_chunk: int = opt(8192, "Gallery images scored per chunk; eval_chunk x gallery_chunk scores are held at "
                             "once (at most 2**28).", "eval,train", check=between(1, 1 << 20))
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
    def image_style(self) -> ImageStyle:
        """How images become this backbone's input (data.images): CLIP towers have their own."""
        return clip_style(self.pad_ratio) if is_clip(self.backbone) else IMAGENET

    @property
    def category_list(self) -> list[str]:
        return [c.strip() for c in self.categories.split(",") if c.strip()]

    def validate_values(self) -> None:
        """Types and ranges of every field, then the settings that depend on each other; a UserError names
        the flag (or config.json key) and the fix."""
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            expected = FIELD_TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise UserError(f"--{f.name} {value!r}: expected {TYPE_NAMES[expected]}, got {type(value).__name__}")
            if meta["choices"] and value not in meta["choices"]:
                raise UserError(f"--{f.name} {value!r}: choose one of {', '.join(meta['choices'])}")
            problem = meta["check"](value) if meta["check"] else None
            if problem is None and expected == FIELD_TYPES["float"] and not finite(value):
                problem = "must be a finite number"
            if problem:
                raise UserError(f"--{f.name} {problem}, got {value!r}")
        bad = [g for g in self.grain_list if g not in GRAINS]
        if bad or not self.grain_list:
            raise UserError(f"--grains {self.grains!r}: unknown granularity {bad}; use a subset of {','.join(GRAINS)}")
        try:
            if len(self.margin_list) != 3 or len(self.margins.split(",")) != 3:
                raise ValueError
        except ValueError:
            raise UserError(f"--margins {self.margins!r}: give three numbers for coarse,mid,fine") from None
        if not all(MARGIN[0] <= m <= MARGIN[1] for m in self.margin_list.values()):  # NaN fails too
            raise UserError(f"--margins {self.margins!r}: each margin must be a number between {MARGIN[0]:g} and "
                            f"{MARGIN[1]:g} (the relevances it separates are cosines in [-1, 1])")
        if self.eval_chunk * self.gallery_chunk > 1 << 28:
            raise UserError(f"--eval_chunk {self.eval_chunk} x --gallery_chunk {self.gallery_chunk}: more than 2**28 "
                            f"scores held at once (1 GiB); lower either")
        if self.exp_name in ("", ".", "..") or "/" in self.exp_name or "\\" in self.exp_name:
            raise UserError(f"--exp_name {self.exp_name!r}: give a plain folder name (no path separator, not "
                            f"empty, not . or ..); the run goes to --output_dir/<exp_name>")
        self.validate_clip()
        if (self.two_stage or self.img_finetune or self.txt_finetune) and self.finetune_epochs < 1:
            raise UserError(f"--finetune_epochs {self.finetune_epochs}: stage 2 needs at least one epoch; "
                            f"drop --two_stage/--img_finetune/--txt_finetune to train stage 1 only")

    def validate_clip(self) -> None:
        """The settings that need a CLIP tower, and the input size CLIP's pooling is fixed to."""
        if not is_clip(self.backbone):
            if self.text_encoder == "clip":
                raise UserError(f"--model {self.model} with --text_encoder clip takes the text tower of a CLIP model: "
                                f"pass a clip-* --backbone (with its --backbone_weights), not --backbone "
                                f"{self.backbone}")
            if self.clip_pool != "gem":
                raise UserError(f"--model {self.model} with --clip_pool {self.clip_pool} needs a clip-* --backbone, "
                                f"not --backbone {self.backbone}")
            return
        size = CLIP_INPUT_SIZES[self.backbone]
        vit = "vit" in self.backbone
        if (vit or self.clip_pool == "attnpool") and self.crop_size != size:
            why = "its position table" if vit else "--clip_pool attnpool: its position table"
            raise UserError(f"--crop_size {self.crop_size}: --backbone {self.backbone} needs {size} ({why} is fixed "
                            f"to the weights' input size); pass --crop_size {size}"
                            + ("" if vit else " or --clip_pool gem"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the configuration") -> Config:
        """A Config from a mapping (a config.json, a checkpoint's config); an unknown key is an error."""
        if not isinstance(values, dict):
            raise UserError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise UserError(f"{source}: unknown setting(s) {', '.join(map(str, unknown))}; "
                            f"`python train.py --help` lists the valid ones")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        cfg = cls.from_dict(read_json(path), str(path))
        cfg.validate_values()
        return cfg


# Per-dataset defaults: the ARTEMIS release recipe (MANME.md §5 (training recipe); its scripts/release_script.sh):
# stage 1 runs 8 epochs halving every 4; stage 2 runs 50 epochs halving every 10, and
# Fashion200k uses resnet18, batch 128, and 100 stage-2 epochs halving every 20.
PRESETS: dict[str, dict[str, Any]] = {
    "fashioniq": dict(backbone="resnet50", batch_size=32, num_epochs=8, step_lr=4,
                      finetune_epochs=50, finetune_step_lr=10),
    "shoes": dict(backbone="resnet50", batch_size=32, num_epochs=8, step_lr=4,
                  finetune_epochs=50, finetune_step_lr=10),
    "fashion200k": dict(backbone="resnet18", batch_size=128, num_epochs=8, step_lr=4,
                        finetune_epochs=100, finetune_step_lr=20),
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


# Model settings added after runs had been saved, with the value a saved config (a checkpoint's, a run's
# config.json) that lacks the key was trained with, which today's default need not be.
SAVED_WITHOUT: dict[str, Any] = {"fpn_relu": False, "text_encoder": "gru", "clip_pool": "gem", "clip_quickgelu": True,
                                 "pad_ratio": 1.25, "lambda_me": 1.0, "margins": "0.6,0.4,0.3"}


def saved_setting(saved: dict[str, Any], key: str) -> Any:
    """A saved config's value of `key`: its own, else what configs saved before the key existed meant."""
    return saved.get(key, SAVED_WITHOUT.get(key, getattr(Config, key)))


def resolve(explicit: dict[str, Any], base: dict[str, Any] | None = None, source: str = "the configuration") -> Config:
    """Field defaults < dataset preset < model preset < `base` (e.g. a checkpoint's config) < explicit flags.
    `source` names `base` in errors (a config.json, a checkpoint)."""
    if base is not None and not isinstance(base, dict):  # a hand-edited config.json holding a list, a number, ...
        raise UserError(f"{source}: expected a JSON object of settings, got {type(base).__name__}")
    values: dict[str, Any] = {}
    if base is not None:
        base = {**SAVED_WITHOUT, **base}
    merged = {**(base or {}), **explicit}
    dataset = merged.get("dataset", Config.dataset)
    if base is None:
        values.update(PRESETS.get(dataset, {}))
        variant = VARIANTS.get(merged.get("model", Config.model))
        values.update(variant.preset if variant else {})
    values.update(merged)
    cfg = Config.from_dict(values, source)
    cfg.validate_values()
    return cfg


def parse_config(groups: str, description: str, argv: list[str] | None = None) -> Config:
    args = build_parser(groups, description).parse_args(argv)
    return resolve(given_flags(args))
