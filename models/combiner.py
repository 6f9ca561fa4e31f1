"""The CLIP4Cir baselines on CLIP's own embeddings (CLIP.md, the Combiner): clip-sum, L2(image + text), and
the Combiner network. Both read the raw (unnormalised) CLIP image and text embeddings, compare a query with
L2-normalised targets and scale the logits by a fixed 100.

Their recipe (the variants' presets; see docs): clip-sum fine-tunes the towers (AdamW, lr 2e-6: our stage 2,
with no stage 1, since nothing else trains); the Combiner trains on frozen towers (Adam, lr 2e-5) from image
features embedded once (engine.trainer), optionally starting from a fine-tuned clip-sum run's towers
(--towers_ckpt).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Retriever, l2
from .baselines import EmbeddingQuery
from .products import full_precision, pairwise_dot

LOGIT_SCALE = 100.0  # CLIP4Cir's fixed logit scale


class CombinerNetwork(nn.Module):
    """Text and image projections d -> p (ReLU, dropout 0.5), concatenated -> h (ReLU, dropout 0.5) -> d, plus a
    learned scalar lambda mixing the raw inputs: out = that + lambda text + (1 - lambda) image, L2-normalised."""

    def __init__(self, d: int, p: int, h: int):
        super().__init__()
        self.text_projection = nn.Sequential(nn.Linear(d, p), nn.ReLU(), nn.Dropout(0.5))
        self.image_projection = nn.Sequential(nn.Linear(d, p), nn.ReLU(), nn.Dropout(0.5))
        self.combine = nn.Sequential(nn.Linear(2 * p, h), nn.ReLU(), nn.Dropout(0.5), nn.Linear(h, d))
        self.mix = nn.Sequential(nn.Linear(2 * p, h), nn.ReLU(), nn.Dropout(0.5), nn.Linear(h, 1), nn.Sigmoid())

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        both = torch.cat([self.text_projection(text), self.image_projection(image)], dim=-1)
        mix = self.mix(both)
        return l2(self.combine(both) + mix * text + (1 - mix) * image)


class ClipEmbeddingRetriever(Retriever):
    """CLIP's raw pooled embeddings in, one coarse query vector out, scored against L2(target) at scale 100."""

    preset = {"grains": "coarse", "text_encoder": "clip", "clip_pool": "attnpool", "caption_orders": "random4"}
    trains_frozen = True      # something besides the towers trains in stage 1

    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None, **kw):
        super().__init__(cfg, vocab_size, ["coarse"], **kw)
        if cfg.text_encoder != "clip" or cfg.clip_pool != "attnpool":
            raise ValueError(f"--model {cfg.model} reads CLIP's own embeddings: it needs --text_encoder clip and "
                             f"--clip_pool attnpool")
        for encoder in (self.image_encoder, self.text_encoder):
            encoder.raw = True
        # the projections to --embed_dim are not used: the variant works at CLIP's embedding size
        self.image_encoder.projections = nn.ModuleDict()
        self.text_encoder.projection = None
        self.embed_dim = self.text_encoder.tower.output_dim
        self.log_temperature.data.fill_(math.log(LOGIT_SCALE))
        self.log_temperature.requires_grad_(False)

    def combine(self, image: Tensor, text: Tensor) -> Tensor:
        raise NotImplementedError

    def compose(self, reference: dict[str, Tensor], text: Tensor) -> EmbeddingQuery:
        return EmbeddingQuery({"coarse": full_precision(self.combine(reference["coarse"].to(text.dtype), text))})

    def score_per_grain(self, query: EmbeddingQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.autocast(query.composed["coarse"].device.type, enabled=False):
            return {"coarse": pairwise_dot(query.composed["coarse"], l2(full_precision(targets["coarse"])))}


class ClipSum(ClipEmbeddingRetriever):
    """L2(image + text) on CLIP's embeddings: with no training a zero-shot row, fine-tuned CLIP4Cir's stage 1."""

    preset = {**ClipEmbeddingRetriever.preset, "lr": 2e-6, "clip_lr_mult": 1.0, "img_finetune": True,
              "txt_finetune": True}
    trains_frozen = False

    def combine(self, image: Tensor, text: Tensor) -> Tensor:
        return l2(image + text)


class Combiner(ClipEmbeddingRetriever):
    """CLIP4Cir's Combiner on frozen CLIP towers (p = 4d, h = 8d)."""

    preset = {**ClipEmbeddingRetriever.preset, "lr": 2e-5, "weight_decay": 0.0}

    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None, **kw):
        super().__init__(cfg, vocab_size, grains, **kw)
        d = self.embed_dim
        self.combiner = CombinerNetwork(d, 4 * d, 8 * d)

    def combine(self, image: Tensor, text: Tensor) -> Tensor:
        return self.combiner(image, text)
