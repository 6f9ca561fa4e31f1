"""Baselines whose query is one vector per grain, scored by a dot product with the target (MANME.md §4, variants):
tirg (gated residual of r and m), late-fusion (L2(r + m)), cross-modal (m), visual-search (r)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import ComposedQuery, Retriever, l2
from .products import full_precision, pairwise_dot


@dataclass
class EmbeddingQuery(ComposedQuery):
    composed: dict[str, Tensor]   # grain -> (Q, d) L2-normalised query vector


class EmbeddingRetriever(Retriever):
    # the release's baselines use the global (coarse) embedding; --grains coarse,mid,fine makes them multi-grained
    preset = {"grains": "coarse"}

    def combine(self, grain: str, reference: Tensor, text: Tensor) -> Tensor:
        """The (Q, d) L2-normalised query vector of one grain."""
        raise NotImplementedError

    def compose(self, reference: dict[str, Tensor], text: Tensor) -> EmbeddingQuery:
        return EmbeddingQuery({g: full_precision(self.combine(g, reference[g], text)) for g in self.grains})

    def score_per_grain(self, query: EmbeddingQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.autocast(next(iter(query.composed.values())).device.type, enabled=False):
            return {g: pairwise_dot(query.composed[g], full_precision(targets[g])) for g in self.grains}


class GatedResidual(nn.Module):
    """TIRG's composition as the ARTEMIS release builds it: w_gate · sigmoid(gate([r, m])) ⊙ r + w_res · res([r, m]),
    gate = BN(2d) → ReLU → Linear(2d, d), res = BN(2d) → ReLU → Linear(2d, 2d) → ReLU → Linear(2d, d), w = (1, 1)."""

    def __init__(self, d: int):
        super().__init__()
        self.gate = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.residual = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d), nn.ReLU(),
                                      nn.Linear(2 * d, d))
        self.weights = nn.Parameter(torch.ones(2))

    def forward(self, reference: Tensor, text: Tensor) -> Tensor:
        both = torch.cat([reference.to(text.dtype), text], dim=-1)
        return self.weights[0] * torch.sigmoid(self.gate(both)) * reference + self.weights[1] * self.residual(both)


class TIRG(EmbeddingRetriever):
    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None, **kw):
        super().__init__(cfg, vocab_size, grains, **kw)
        keys = ["shared"] if cfg.share_attention else self.grains
        self.composers = nn.ModuleDict({k: GatedResidual(cfg.embed_dim) for k in keys})

    def combine(self, grain, reference, text):
        composer = self.composers[grain] if grain in self.composers else self.composers["shared"]
        return l2(composer(reference, text))


class LateFusion(EmbeddingRetriever):
    def combine(self, grain, reference, text):
        return l2(reference + text)


class CrossModal(EmbeddingRetriever):
    def combine(self, grain, reference, text):
        return text


class VisualSearch(EmbeddingRetriever):
    uses_text = False

    def combine(self, grain, reference, text):
        return reference
