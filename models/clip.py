"""CLIP towers from open_clip (the optional extra in requirements-clip.txt): architectures, weight files,
the image tower's grains and the text tower.

Nothing is downloaded: the architectures are open_clip's configurations (or our small ones, for tests and
synthetic runs), the weights a state-dict file the user names. The RN towers give the stage maps C2/C3/C4
(`layer2`-`layer4`) to models.image_encoder's top-down pathway; the ViT towers have one grid size at every
depth, so their grains come from depth (ViT_DEPTHS).
"""
from __future__ import annotations

import importlib
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.errors import UserError

from .image_encoder import grain_embeddings

if TYPE_CHECKING:
    from open_clip.model import CLIP

log = logging.getLogger("manme")

# --backbone name -> open_clip configuration name (OpenAI's weights: add -quickgelu, see clip_config)
ARCHITECTURES = {"clip-rn50": "RN50", "clip-rn50x4": "RN50x4", "clip-vit-b-32": "ViT-B-32",
                 "clip-vit-b-16": "ViT-B-16"}
_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# (ours) small configurations for CPU tests and synthetic runs, random init or files saved from them
SMALL_CONFIGS = {
    "clip-rn-tiny": {"embed_dim": 64, "text_cfg": _TEXT,
                     "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None}},
    "clip-vit-tiny": {"embed_dim": 64, "text_cfg": _TEXT,
                      "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "head_width": 32,
                                     "patch_size": 16}},
}
BACKBONES = tuple(ARCHITECTURES) + tuple(SMALL_CONFIGS)
INPUT_SIZES = {"clip-rn50": 224, "clip-rn50x4": 288, "clip-vit-b-32": 224, "clip-vit-b-16": 224,
               "clip-rn-tiny": 64, "clip-vit-tiny": 64}  # the position tables' size (tests/test_clip.py checks)
# ViT grains from depth: the block (1-based, as a fraction of the depth) whose tokens each grain pools
ViT_DEPTHS = {"coarse": 1.0, "mid": 2 / 3, "fine": 1 / 3}
# keys of OpenAI's state dicts that are settings, not tensors of the model
OPENAI_SETTINGS = ("input_resolution", "context_length", "vocab_size")


def is_clip(backbone: str) -> bool:
    return backbone in BACKBONES


def open_clip_package(what: str):
    """open_clip, imported when a CLIP setting needs it (an optional extra; its import costs the default path
    a second)."""
    try:
        return importlib.import_module("open_clip")
    except ImportError:  # pragma: no cover - the core install
        raise UserError(f"{what} needs open_clip: `pip install -r requirements-clip.txt`") from None


def safetensors_torch():
    """safetensors' torch functions (installed with open_clip)."""
    open_clip_package("a .safetensors weights file")
    return importlib.import_module("safetensors.torch")


def clip_config(backbone: str, quick_gelu: bool) -> tuple[str, dict]:
    """(configuration name, open_clip model configuration) of a clip-* backbone."""
    open_clip = open_clip_package(f"--backbone {backbone}")
    if backbone in SMALL_CONFIGS:
        config = {**SMALL_CONFIGS[backbone], "quick_gelu": quick_gelu}
        return backbone + ("-quickgelu" if quick_gelu else ""), config
    name = ARCHITECTURES[backbone] + ("-quickgelu" if quick_gelu else "")
    config = open_clip.get_model_config(name)
    if config is None:  # pragma: no cover - every ARCHITECTURES entry ships with open_clip 3.x
        raise UserError(f"open_clip {open_clip.__version__} has no {name} configuration")
    return name, config


def create_clip(backbone: str, weights: str, quick_gelu: bool = True) -> CLIP:
    """The open_clip model of a clip-* backbone with the weights of the file `weights` ('none': random init)."""
    name, config = clip_config(backbone, quick_gelu)
    model = open_clip_package(f"--backbone {backbone}").model.CLIP(**config)
    activation = "QuickGELU (OpenAI's weights)" if quick_gelu else "GELU (--no-clip_quickgelu)"
    if weights == "none":
        log.info(f"{backbone}: open_clip {name}, random init (--backbone_weights none); text tower {activation}")
        return model
    path = clip_weights_path(backbone, weights)
    model.load_state_dict(read_clip_weights(path, backbone, name, model.state_dict()))
    log.info(f"{backbone}: open_clip {name} weights loaded from {path}; text tower {activation}")
    return model


def weights_hint(backbone: str) -> str:
    arch = ARCHITECTURES.get(backbone, backbone)
    return (f"--backbone {backbone} expects open_clip's {arch} weights as a state-dict file (.safetensors, "
            f".bin, or an open_clip epoch_N.pt); convert OpenAI's {arch}.pt once with "
            f"`python -m tools.convert_clip {arch}.pt {arch}.safetensors`, or pass --backbone_weights none "
            f"for random init (nothing is downloaded)")


def clip_weights_path(backbone: str, weights: str) -> Path:
    if weights == "default":
        raise UserError(f"--backbone {backbone} has no default weights file: pass --backbone_weights PATH. "
                        f"{weights_hint(backbone)}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--backbone_weights {path}: no such file. {weights_hint(backbone)}")
    return path


def read_state_dict(path: Path) -> dict:
    """A weights file's tensors, read without running code: safetensors, or torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        load_file = safetensors_torch().load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a damaged or foreign file
            raise UserError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a weights file
        if zipfile.is_zipfile(path) and "TorchScript" in str(e):
            raise UserError(f"{path} is a TorchScript archive (OpenAI's release format), which cannot be read "
                            f"without running its code; convert it once with `python -m tools.convert_clip "
                            f"{path} {path.with_suffix('.safetensors')}` and pass the .safetensors file") from None
        raise UserError(f"{path}: not a PyTorch weights file ({type(e).__name__})") from None


def read_clip_weights(path: Path, backbone: str, name: str, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """The CLIP state dict in `path` (unwrapped from open_clip's and CLIP4Cir's checkpoints), or a UserError
    saying what the file is instead."""
    fix = weights_hint(backbone)
    state = read_state_dict(path)
    if isinstance(state, dict) and "model" in state and "config" in state:
        raise UserError(f"{path} is a manme checkpoint, not CLIP weights; {fix} (use --ckpt or --resume for "
                        f"manme checkpoints)")
    for wrapper in ("state_dict", "CLIP"):  # open_clip's epoch_N.pt, CLIP4Cir's checkpoints
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path}: holds no state dict of tensors; {fix}")
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in OPENAI_SETTINGS}
    if "fc.weight" in state and not any(k.startswith("visual.") for k in state):
        raise UserError(f"{path} holds a torchvision ResNet (ImageNet classifier), not CLIP weights; {fix}; "
                        f"torchvision files go with --backbone resnet50/resnet18")
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    extra = [k for k in state if k not in expected]
    if missing or wrong or extra:
        example = (wrong and f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, {name} has "
                             f"{tuple(expected[wrong[0]].shape)}") or (missing and f"{missing[0]} missing") \
            or f"{extra[0]} unexpected"
        raise UserError(f"{path}: not {name} weights ({len(missing)} of {len(expected)} tensors missing, "
                        f"{len(wrong)} of another shape, {len(extra)} unexpected; e.g. {example}); {fix}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# --- image towers ---------------------------------------------------------------------------------------
class ClipResNet(nn.Module):
    """open_clip's ModifiedResNet as a backbone: C2, C3, C4 = layer2, layer3, layer4 (strides 8, 16, 32),
    and its attention pooling (`pool`), sized for the checkpoint's input (`image_size`)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.channels = tuple(layer[-1].conv3.out_channels for layer in (visual.layer2, visual.layer3, visual.layer4))
        self.pooled_dim, self.image_size = visual.output_dim, visual.image_size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        v = self.visual
        c2 = v.layer2(v.layer1(v.stem(images)))
        c3 = v.layer3(c2)
        return c2, c3, v.layer4(c3)

    def pool(self, c4: Tensor) -> Tensor:
        return self.visual.attnpool(c4)

    def pool_parameters(self):
        """The attention pooling's: trained only where the coarse grain uses it (DDP refuses unused ones)."""
        return self.visual.attnpool.parameters()


class ClipViT(nn.Module):
    """open_clip's VisionTransformer as a backbone: the token grid after the blocks the grains name
    (ViT_DEPTHS), each through the final LayerNorm, and CLIP's pooled embedding (class token + projection)."""

    def __init__(self, visual: nn.Module, grains: list[str]):
        super().__init__()
        self.visual = visual
        blocks = len(visual.transformer.resblocks)
        self.blocks = {g: max(1, round(ViT_DEPTHS[g] * blocks)) for g in grains}
        self.channels = visual.transformer.width
        self.pooled_dim = visual.output_dim
        self.image_size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size

    def forward(self, images: Tensor, pooled: bool = False) -> tuple[dict[str, Tensor], Tensor | None]:
        """(grain -> (N, width, h, w) token grid, the pooled CLIP embedding when `pooled`)."""
        indices = sorted(set(b - 1 for b in self.blocks.values()))
        out = self.visual.forward_intermediates(images, indices=indices, normalize_intermediates=True,
                                                intermediates_only=not pooled)
        grid = dict(zip(indices, out["image_intermediates"]))
        return {g: grid[b - 1] for g, b in self.blocks.items()}, out.get("image_features")

    def pool_parameters(self):
        """The pooled embedding's projection: trained only where the coarse grain uses it."""
        return [self.visual.proj]


class ViTImageEncoder(nn.Module):
    """Grains from depth on a CLIP ViT: each grain's token grid mean-pooled (the tokens are signed, which GeM's
    clamp would zero), projected to d, L2. `attnpool` makes the coarse grain CLIP's own pooled embedding
    (class token, projection) projected to d; `raw` (the combiner variants) returns that embedding itself."""

    def __init__(self, visual: nn.Module, grains: list[str], embed_dim: int, clip_pool: str = "gem",
                 frozen_bn_stats: bool = True):
        super().__init__()
        self.grains, self.finetune, self.raw = list(grains), False, False
        self.clip_pool, self.frozen_bn_stats = clip_pool, frozen_bn_stats
        self.backbone = ClipViT(visual, self.grains)
        self.projections = nn.ModuleDict({
            g: nn.Linear(self.backbone.pooled_dim if self.attn_pooled(g) else self.backbone.channels, embed_dim)
            for g in self.grains})

    def attn_pooled(self, grain: str) -> bool:
        return grain == "coarse" and self.clip_pool == "attnpool"

    def set_finetune(self, finetune: bool) -> None:
        self.finetune = finetune
        self.backbone.requires_grad_(finetune)
        for p in self.backbone.pool_parameters():
            p.requires_grad_(finetune and self.clip_pool == "attnpool")
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.train(mode and (self.finetune or not self.frozen_bn_stats))  # dropout off while frozen
        return self

    def forward(self, images: Tensor, stacked: bool = False) -> dict[str, Tensor] | Tensor:
        """grain -> (N, d) embeddings, or `stacked` (K, N, d) (the grains' order)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune):
            grids, pooled = self.backbone(images, pooled=self.clip_pool == "attnpool")
        if self.raw:
            return grain_embeddings({"coarse": pooled}, stacked, normalize=False)
        return grain_embeddings({g: self.projections[g](pooled if self.attn_pooled(g) else grids[g].mean(dim=(2, 3)))
                                 for g in self.grains}, stacked)


# --- text tower -----------------------------------------------------------------------------------------
class ClipTextTower(nn.Module):
    """The text half of an open_clip CLIP model, under the names open_clip gives its tensors."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.transformer, self.token_embedding = clip.transformer, clip.token_embedding
        self.positional_embedding, self.ln_final = clip.positional_embedding, clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.context_length, self.output_dim = clip.context_length, clip.text_projection.shape[1]

    def pad(self, tokens: Tensor) -> Tensor:
        """(B, L) ids ending at the end-of-text token -> (B, 77): the positional table is that long."""
        return F.pad(tokens, (0, self.context_length - tokens.shape[1]))

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids (open_clip's tokenizer, 0-padded) -> (B, embed) pooled end-of-text features,
        computed as open_clip's CLIP.encode_text computes them."""
        tokens = self.pad(tokens)
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # the end-of-text token
        return x @ self.text_projection


class ClipTextEncoder(nn.Module):
    """--text_encoder clip: the CLIP text transformer's pooled feature, projected to d, L2 (`m`).
    `raw` (the combiner variants): the CLIP text embedding itself."""

    def __init__(self, clip: CLIP, embed_dim: int):
        super().__init__()
        self.tower = ClipTextTower(clip)
        self.projection = nn.Linear(self.tower.output_dim, embed_dim)
        self.raw = False

    def pretrained_parameters(self):
        """What stage 1 freezes and --txt_finetune trains (at its own learning-rate multiplier)."""
        return self.tower.parameters()

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        finetune = any(p.requires_grad for p in self.tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and finetune):
            pooled = self.tower(tokens)
        if self.raw:
            return pooled.float()
        return F.normalize(self.projection(pooled).float(), dim=-1)
