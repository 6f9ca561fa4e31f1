"""Multi-grained image encoder (MANME.md §1, encoders): ResNet C2/C3/C4, FPN-style top-down, GeM, projection, L2.

coarse = P4 = C4, mid = P3 = smooth3(C3 + up(lat4(P4))), fine = P2 = smooth2(C2 + up(lat3(P3))).
Only the levels the chosen grains need are built (coarse alone has no top-down path).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from utils.errors import UserError

log = logging.getLogger("manme")

WEIGHT_FILES = {"resnet50": "resnet50-0676ba61.pth", "resnet18": "resnet18-f37072fd.pth"}
CHANNELS = {"resnet50": (512, 1024, 2048), "resnet18": (128, 256, 512)}  # C2, C3, C4
DEPTH = {"coarse": 0, "mid": 1, "fine": 2}  # how many top-down steps a grain needs
GRAINS = tuple(DEPTH)  # coarse (P4), mid (P3), fine (P2)


def resolve_backbone_weights(backbone: str, weights: str) -> Path | None:
    """The state-dict file to load: None for 'none', torchvision's cache for 'default', else the path."""
    if weights == "none":
        return None
    if weights == "default":
        path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_FILES[backbone]
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {backbone} not found at {path}. Put torchvision's {WEIGHT_FILES[backbone]} "
            f"(https://download.pytorch.org/models/{WEIGHT_FILES[backbone]}) at {path}, pass its location with "
            f"--backbone_weights PATH, or pass --backbone_weights none to train the backbone from scratch "
            f"(nothing is downloaded).")
    return path


def read_backbone_weights(path: Path, name: str, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """The torchvision state dict in `path`, or a UserError saying what the file is instead."""
    fix = (f"--backbone_weights must be torchvision's {name} ImageNet state dict ({WEIGHT_FILES[name]}); "
           f"pass --backbone_weights none to train from scratch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a weights file
        raise UserError(f"{path}: not a PyTorch weights file ({type(e).__name__}); {fix}") from None
    if isinstance(state, dict) and "model" in state and "config" in state:
        raise UserError(f"{path} is a manme checkpoint, not backbone weights; {fix} (use --ckpt or --resume for "
                        f"manme checkpoints)")
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict; {fix}")
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or wrong:
        raise UserError(f"{path}: not {name} weights ({len(missing)} of {len(expected)} tensors missing, "
                        f"{len(wrong)} of another shape, e.g. {(missing + wrong)[0]}); {fix}")
    return state


class Backbone(nn.Module):
    """A torchvision ResNet without pooling and classifier; returns C2, C3, C4."""

    def __init__(self, name: str, weights: str):
        super().__init__()
        resnet = getattr(torchvision.models, name)(weights=None)
        path = resolve_backbone_weights(name, weights)
        if path is not None:
            resnet.load_state_dict(read_backbone_weights(path, name, resnet.state_dict()))
            log.info(f"{name}: ImageNet weights loaded from {path}")
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
        self.layer2, self.layer3, self.layer4 = resnet.layer2, resnet.layer3, resnet.layer4
        self.channels = CHANNELS[name]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c2 = self.layer2(self.stem(images))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


def gem(x: Tensor, p: float, eps: float = 1e-6) -> Tensor:
    """Generalized-mean pooling over the spatial dimensions: (N, C, H, W) -> (N, C), in float32
    (x**3 overflows float16)."""
    return x.float().clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class ImageEncoder(nn.Module):
    """`backbone`: a torchvision ResNet name (with `weights`), or a module returning C2, C3, C4 with their
    `channels` (models.clip.ClipResNet). `attnpool` pools the coarse grain with the backbone's own `pool`
    (CLIP's attention pooling) instead of GeM; `raw` (the combiner variants) returns that pooled vector itself."""

    def __init__(self, backbone: str | nn.Module, weights: str, grains: list[str], embed_dim: int,
                 gem_p: float = 3.0, smooth: str = "full", frozen_bn_stats: bool = True, fpn_relu: bool = False,
                 attnpool: bool = False):
        super().__init__()
        self.grains, self.gem_p, self.finetune = list(grains), gem_p, False
        self.fpn_relu, self.attnpool, self.raw = fpn_relu, attnpool, False
        self.frozen_bn_stats = frozen_bn_stats
        self.backbone = Backbone(backbone, weights) if isinstance(backbone, str) else backbone
        c2, c3, c4 = self.backbone.channels
        depth = max(DEPTH[g] for g in self.grains)
        # A dense 3x3 smoothing conv at C3/C2 width (1024/512 channels for resnet50) costs as much
        # as the whole backbone at 224 px; the depthwise one has few FLOPs (faster on CPUs), yet on an H100
        # in bf16 the image encoder took longer with it (14.9 against 11.5 ms in stage 1, BENCHMARKS.md).
        def smoothing(channels: int) -> nn.Conv2d:
            return nn.Conv2d(channels, channels, 3, padding=1, groups=channels if smooth == "depthwise" else 1)

        if depth >= 1:
            self.lat4, self.smooth3 = nn.Conv2d(c4, c3, 1), smoothing(c3)
        if depth >= 2:
            self.lat3, self.smooth2 = nn.Conv2d(c3, c2, 1), smoothing(c2)
        width = {"coarse": self.backbone.pooled_dim if attnpool else c4, "mid": c3, "fine": c2}
        self.projections = nn.ModuleDict({g: nn.Linear(width[g], embed_dim) for g in self.grains})
        self.depth = depth

    def set_finetune(self, finetune: bool) -> None:
        self.finetune = finetune
        for p in self.backbone.parameters():
            p.requires_grad_(finetune)
        if hasattr(self.backbone, "pool_parameters"):  # CLIP's attention pooling: trained only where it is used
            for p in self.backbone.pool_parameters():
                p.requires_grad_(finetune and self.attnpool)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        # a frozen backbone stays in eval mode, its BatchNorm statistics fixed, unless asked otherwise
        self.backbone.train(mode and (self.finetune or not self.frozen_bn_stats))
        return self

    def feature_maps(self, images: Tensor) -> dict[str, Tensor]:
        """grain -> P level feature map."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune):
            c2, c3, c4 = self.backbone(images)
        # the smoothing convs end the top-down path with signed values, which GeM's clamp zeroes (and
        # passes no gradient through); fpn_relu makes them non-negative like C4, what GeM expects
        finish = F.relu if self.fpn_relu else (lambda x: x)
        levels = {"coarse": c4}
        if self.depth >= 1:
            levels["mid"] = finish(self.smooth3(c3 + upsample(self.lat4(c4), c3)))
        if self.depth >= 2:
            levels["fine"] = finish(self.smooth2(c2 + upsample(self.lat3(levels["mid"]), c2)))
        return {g: levels[g] for g in self.grains}

    def pooled(self, grain: str, x: Tensor) -> Tensor:
        if grain == "coarse" and self.attnpool:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune):  # part of the backbone
                return self.backbone.pool(x)
        return gem(x, self.gem_p)

    def forward(self, images: Tensor, stacked: bool = False) -> dict[str, Tensor] | Tensor:
        """grain -> (N, d) embeddings, or `stacked` (K, N, d) (the grains' order)."""
        if self.raw:
            return grain_embeddings({"coarse": self.pooled("coarse", self.feature_maps(images)["coarse"])}, stacked,
                                    normalize=False)
        maps = self.feature_maps(images)
        return grain_embeddings({g: self.projections[g](self.pooled(g, x)) for g, x in maps.items()}, stacked)


def grain_embeddings(vectors: dict[str, Tensor], stacked: bool, normalize: bool = True) -> dict[str, Tensor] | Tensor:
    """An image encoder's output from each grain's vectors (N, d): stacked, in float32, L2-normalised in one go
    (one launch for every grain); returned (K, N, d), or as grain -> (N, d) views."""
    x = torch.stack(list(vectors.values())).float()
    if normalize:
        x = F.normalize(x, dim=-1)
    return x if stacked else dict(zip(vectors, x.unbind(0)))


def upsample(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
