"""The interface every variant implements, and the query container they return.

A `Retriever` embeds images once (every granularity), embeds texts, composes
queries, and scores any Q queries against any G targets as a Q×G matrix made
of matrix products (MANME.md §2, attention compositor, matmul scoring). Variants differ only in `compose` and
`score_per_grain`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import ClipResNet, ClipTextEncoder, ViTImageEncoder, create_clip, is_clip
from .image_encoder import ImageEncoder
from .text_encoder import TextEncoder


def map_tensors(obj, fn):
    """Rebuild `obj` (dataclass, dict, list, tuple, nesting of them) with `fn` applied to every tensor."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def first_tensor(obj) -> Tensor:
    found = []
    map_tensors(obj, lambda t: found.append(t) or t)
    if not found:
        raise ValueError(f"{type(obj).__name__} holds no tensor")
    return found[0]


@dataclass
class ComposedQuery:
    """Base of the per-variant query dataclasses: every field is a tensor or a dict grain -> tensor,
    all with the query count as leading dimension, so slicing, `.to()` and gathering are generic."""

    def __len__(self) -> int:
        return first_tensor(self).shape[0]

    def __getitem__(self, index) -> ComposedQuery:
        return map_tensors(self, lambda t: t[index])

    def slice(self, start: int, stop: int) -> ComposedQuery:
        return self[start:stop]

    def to(self, *args, **kwargs) -> ComposedQuery:
        return map_tensors(self, lambda t: t.to(*args, **kwargs))

    def detach(self) -> ComposedQuery:
        return map_tensors(self, Tensor.detach)


@dataclass
class TrainingInputs:
    """One training step's embeddings, before composition (the loss composes: for the attention variants one
    autograd function runs composition, scores and losses). Grains stacked in the model's order."""
    text: Tensor          # m (Q, d)
    references: Tensor    # r (K, Q, d)
    targets: Tensor       # t (K, G, d): the first Q are the positives

    BATCH_DIMS = {"text": 0, "references": 1, "targets": 1}

    def reference(self, grains) -> dict[str, Tensor]:
        """grain -> (Q, d)."""
        return dict(zip(grains, self.references.unbind(0)))

    def map_batch(self, fn) -> TrainingInputs:
        """fn(tensor, the dimension its batch runs along) on every field (gathering the batch across ranks)."""
        return TrainingInputs(*(fn(getattr(self, name), dim) for name, dim in self.BATCH_DIMS.items()))


def l2(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


def stack_grains(per_grain: dict[str, Tensor], grains) -> Tensor:
    """(K, N, d) from grain -> (N, d), in the order of `grains`."""
    return torch.stack([per_grain[g] for g in grains])


def build_image_encoder(cfg, grains: list[str], clip=None) -> nn.Module:
    """The multi-grained image encoder of cfg.backbone: a torchvision ResNet, or `clip`'s image tower
    (RN: its stage maps through the top-down pathway; ViT: grains from depth)."""
    if clip is None:
        return ImageEncoder(cfg.backbone, cfg.backbone_weights, grains, cfg.embed_dim, cfg.gem_p, cfg.fpn_smooth,
                            cfg.frozen_bn_stats, cfg.fpn_relu)
    if hasattr(clip.visual, "attnpool"):
        return ImageEncoder(ClipResNet(clip.visual), "none", grains, cfg.embed_dim, cfg.gem_p, cfg.fpn_smooth,
                            cfg.frozen_bn_stats, cfg.fpn_relu, attnpool=cfg.clip_pool == "attnpool")
    return ViTImageEncoder(clip.visual, grains, cfg.embed_dim, cfg.clip_pool, cfg.frozen_bn_stats)


class Retriever(nn.Module):
    """Image and text encoders, the learnable temperature, freezing; variants add composition and scoring."""

    uses_text = True          # visual-search ignores the text: its encoder is then never trained
    trains_frozen = True      # has weights to train with frozen towers (stage 1); clip-sum has none
    preset: dict = {}         # config values the variant fixes (applied below the user's flags)

    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None,
                 vocab_words: list[str] | None = None, glove_cache: str | None = None):
        super().__init__()
        self.grains = list(grains or cfg.grain_list)
        self.embed_dim = cfg.embed_dim
        self.image_style = getattr(cfg, "image_style", None)  # how images become its input (data.images)
        clip = create_clip(cfg.backbone, cfg.backbone_weights, cfg.clip_quickgelu) if is_clip(cfg.backbone) else None
        self.image_encoder = build_image_encoder(cfg, self.grains, clip)
        self.separate_backbone_passes = cfg.separate_backbone_passes
        if cfg.text_encoder == "clip":
            self.text_encoder = ClipTextEncoder(clip, cfg.embed_dim)
        else:
            self.text_encoder = TextEncoder(vocab_size, cfg.word_dim, cfg.embed_dim, cfg.glove_path,
                                            vocab_words, glove_cache)
        self.log_temperature = nn.Parameter(torch.tensor(float(cfg.temperature_init)))
        self.set_finetune(cfg.img_finetune, cfg.txt_finetune)

    # --- embeddings -------------------------------------------------------------------------------
    def encode_images(self, images: Tensor, stacked: bool = False) -> dict[str, Tensor] | Tensor:
        """grain -> (N, d) L2-normalised embeddings, or `stacked` (K, N, d) in self.grains' order."""
        return self.image_encoder(images, stacked=stacked)

    def encode_texts(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(Q, d) L2-normalised text embeddings `m`."""
        return self.text_encoder(tokens, lengths)

    def forward(self, reference_images: Tensor, target_images: Tensor, tokens: Tensor, lengths: Tensor
                ) -> TrainingInputs:
        """One training step's embeddings, grains stacked: by default one backbone pass for both image sets
        (two with separate_backbone_passes, as the ARTEMIS release: BatchNorm then normalises each set alone).
        The loss composes them (losses.RetrievalLoss)."""
        if self.separate_backbone_passes:
            reference = self.encode_images(reference_images, stacked=True)
            target = self.encode_images(target_images, stacked=True)
        else:
            features = self.encode_images(torch.cat([reference_images, target_images]), stacked=True)
            n = reference_images.shape[0]
            reference, target = features.split([n, features.shape[1] - n], 1)
        return TrainingInputs(self.encode_texts(tokens, lengths), reference, target)

    # --- composition and scoring (variants) ---------------------------------------------------------
    def compose(self, reference: dict[str, Tensor], text: Tensor) -> ComposedQuery:
        raise NotImplementedError

    def score_per_grain(self, query: ComposedQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """grain -> (Q, G) scores."""
        raise NotImplementedError

    def grain_scores(self, query: ComposedQuery, targets: Tensor, squares: Tensor | None = None) -> Tensor:
        """(K, Q, G) scores of every grain (self.grains order) for targets stacked (K, G, d) (stack_grains):
        what the loss and the search server read. Variants that batch their grains compute it in one go.
        `squares`: target_squares(targets) (the same rows), kept by a caller that scores one gallery for many
        queries, or None."""
        return torch.stack(list(self.score_per_grain(query, dict(zip(self.grains, targets.unbind(0)))).values()))

    def target_squares(self, targets: Tensor) -> Tensor | None:
        """What grain_scores() can reuse across queries for stacked targets (K, G, d) (the attention variants:
        t ⊙ t); None where the scores need nothing more than the targets (dot products)."""
        return None

    def score(self, query: ComposedQuery, targets: dict[str, Tensor]) -> Tensor:
        """(Q, G) retrieval score S = sum over the model's grains."""
        return sum(self.score_per_grain(query, targets).values())

    def score_parts(self, query: ComposedQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Diagnostics by name: "score/<grain>" (Q, G), plus what the variant has
        ("modified/<grain>", "preserved/<grain>" (Q, G), "modification_attention/<grain>",
        "preserve_attention/<grain>" (Q, d))."""
        return {f"score/{g}": s for g, s in self.score_per_grain(query, targets).items()}

    def attention_overlap(self, query: ComposedQuery) -> dict[str, Tensor]:
        """grain -> (Q,) shared mass sum_k min(A_mod, A_pre); empty for variants without both attentions."""
        return {}

    # --- freezing -----------------------------------------------------------------------------------
    def backbone_parameters(self):
        return self.image_encoder.backbone.parameters()

    def word_embedding_parameters(self):
        """The text side's pretrained part: the word embeddings, or the whole CLIP text tower."""
        return self.text_encoder.pretrained_parameters()

    def parameter_groups(self, lr: float, text_tower_lr_mult: float) -> list[dict]:
        """The optimizer's parameter groups: one, or with the CLIP text tower a second at its own learning rate."""
        if not isinstance(self.text_encoder, ClipTextEncoder):
            return [{"params": list(self.parameters())}]
        tower = {id(p) for p in self.word_embedding_parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in tower]},
                {"params": list(self.word_embedding_parameters()), "lr": lr * text_tower_lr_mult}]

    def set_finetune(self, img: bool, txt: bool) -> None:
        """Stage 1 (False, False): backbone frozen and kept in eval mode, word embeddings frozen."""
        self.image_encoder.set_finetune(img)
        for p in self.text_encoder.parameters():
            p.requires_grad_(self.uses_text)
        for p in self.word_embedding_parameters():
            p.requires_grad_(txt and self.uses_text)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
