"""The MANME objective (MANME.md §3, objective, overlap).

    L = sum_g CE(tau · S^g, diag)                       sim-level matching, tau = exp(kappa)
      + lambda_me · sum_g mean_i max(0, delta_g + rel_pre - rel_mod)   mutual exclusion
      + lambda_ov · sum_g mean_i sum_k min(A_mod, A_pre)               overlap (optional)

with rel_* = < m̂_i, L2(A_*_i ⊙ t_i) > and m̂ = L2(alpha m + (1 - alpha) Tr_m).
Every total in `parts` is the sum over grains. The mutual-exclusion and overlap
terms exist for variants with both attentions (manme, artemis); when their weight
is 0 they are still computed, detached, as diagnostics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import EPS
from models.base import l2
from models.products import full_precision


@dataclass
class LossOutput:
    total: Tensor
    parts: dict[str, Tensor]   # "sim/<g>", "sim", and where defined "me/<g>", "me", "overlap/<g>", "overlap"


def mutual_exclusion(query, targets: dict[str, Tensor], alpha: float, margins: dict[str, float]) -> dict[str, Tensor]:
    """grain -> mean_i max(0, margin + rel_pre_i - rel_mod_i), positives on the diagonal, where
    rel_*_i = <m̂_i, L2(a_i ⊙ t_i)> = <m̂_i ⊙ t_i, a_i> / ||a_i ⊙ t_i||."""
    projection = query.text_projection
    relevance = l2(alpha * query.text + (1 - alpha) * projection)   # m̂
    out = {}
    for g in query.modification_attention:
        t = targets[g].to(relevance.dtype)
        relevant = relevance * t
        rel = {}
        for part, a in (("mod", query.modification_attention[g]), ("pre", query.preserve_attention[g])):
            rel[part] = (relevant * a).sum(-1) / torch.linalg.vector_norm(a * t, dim=-1).clamp(min=EPS)
        out[g] = F.relu(margins[g] + rel["pre"] - rel["mod"]).mean()
    return out


class RetrievalLoss(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.alpha, self.margins = cfg.alpha, cfg.margin_list
        self.lambda_me, self.lambda_ov = cfg.lambda_me, cfg.lambda_ov

    def forward(self, model, query, targets: dict[str, Tensor]) -> LossOutput:
        model = getattr(model, "module", model)       # DDP / compile wrappers
        model = getattr(model, "_orig_mod", model)
        scores = model.score_per_grain(query, targets)
        n = next(iter(scores.values())).shape[0]
        labels = torch.arange(n, device=next(iter(scores.values())).device)
        scale = full_precision(model.log_temperature).exp()
        parts = {f"sim/{g}": F.cross_entropy(scale * s, labels) for g, s in scores.items()}
        parts["sim"] = sum(parts[f"sim/{g}"] for g in scores)
        total = parts["sim"]

        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and self.lambda_ov > 0):    # a detached diagnostic unless weighted
            overlap = model.attention_overlap(query)                  # grain -> (Q,); {} without both attentions
        if overlap:
            with torch.set_grad_enabled(grad and self.lambda_me > 0):
                me = mutual_exclusion(query, targets, self.alpha, self.margins)
            for g in overlap:
                parts[f"me/{g}"], parts[f"overlap/{g}"] = me[g], overlap[g].mean()
            parts["me"] = sum(me.values())
            parts["overlap"] = sum(parts[f"overlap/{g}"] for g in overlap)
            if self.lambda_me > 0:
                total = total + self.lambda_me * parts["me"]
            if self.lambda_ov > 0:
                total = total + self.lambda_ov * parts["overlap"]
        return LossOutput(total, parts)
