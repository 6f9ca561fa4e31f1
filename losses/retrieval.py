"""The MANME objective (MANME.md §3, objective, overlap).

    L = sum_g CE(tau · S^g, diag)                       sim-level matching, tau = exp(kappa)
      + lambda_me · sum_g mean_i max(0, delta_g + rel_pre - rel_mod)   mutual exclusion
      + lambda_ov · sum_g mean_i sum_k min(A_mod, A_pre)               overlap (optional)

with rel_* = < m̂_i, L2(A_*_i ⊙ t_i) > and m̂ = L2(alpha m + (1 - alpha) Tr_m).
Every total in `parts` is the sum over grains. The mutual-exclusion and overlap
terms exist for variants with both attentions (manme, artemis); when their weight
is 0 they are still computed, detached, as diagnostics.

Every term is computed for all grains at once, on the grains' scores stacked (K, Q, G): one cross-entropy,
one mutual-exclusion computation (a training step is bound by launches, not arithmetic: BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import EPS
from models.base import l2, stack_grains
from models.products import full_precision


@dataclass
class LossOutput:
    total: Tensor
    parts: dict[str, Tensor]   # "sim/<g>", "sim", and where defined "me/<g>", "me", "overlap/<g>", "overlap"


def cross_entropy_per_grain(logits: Tensor) -> Tensor:
    """(K,) CE(logits[k], diag) for logits (K, Q, G), G >= Q: mean_i logsumexp_j l_ij - l_ii."""
    return (logits.logsumexp(-1) - logits.diagonal(dim1=-2, dim2=-1)).mean(-1)


def mutual_exclusion(query, targets: Tensor, alpha: float, margins: Tensor) -> Tensor:
    """(K,) mean_i max(0, margin_k + rel_pre_i - rel_mod_i) for every grain k at once, positives on the
    diagonal (targets (K, Q, d) stacked as the query's grains), where
    rel_*_i = <m̂_i, L2(a_i ⊙ t_i)> = <m̂_i ⊙ t_i, a_i> / ||a_i ⊙ t_i||."""
    relevance = l2(torch.lerp(query.text_projection, query.text, alpha))   # m̂ = L2(α m + (1 - α) Tr_m)
    t = targets.to(relevance.dtype).transpose(0, 1).unsqueeze(2)           # (Q, K, 1, d)
    a = query.attentions                                                   # (Q, K, 2, d): modified, preserved
    rel = (relevance[:, None, None] * t * a).sum(-1) / torch.linalg.vector_norm(a * t, dim=-1).clamp(min=EPS)
    return F.relu(margins + rel[..., 1] - rel[..., 0]).mean(0)


def unbind_grains(prefix: str, values: Tensor, grains) -> dict[str, Tensor]:
    return {f"{prefix}/{g}": v for g, v in zip(grains, values.unbind(0))}


class RetrievalLoss(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.alpha, self.margins = cfg.alpha, cfg.margin_list
        self.lambda_me, self.lambda_ov = cfg.lambda_me, cfg.lambda_ov
        self._margin_tensors: dict = {}

    def margin_tensor(self, grains, device) -> Tensor:
        """(K,) the margins of `grains`, made once per grain set and device (no copy to the device per step)."""
        key = (tuple(grains), str(device))
        if key not in self._margin_tensors:
            self._margin_tensors[key] = torch.tensor([self.margins[g] for g in grains], device=device)
        return self._margin_tensors[key]

    def forward(self, model, query, targets: dict[str, Tensor]) -> LossOutput:
        model = getattr(model, "module", model)       # DDP / compile wrappers
        model = getattr(model, "_orig_mod", model)
        if hasattr(model, "grain_scores"):
            grains = list(model.grains)
            stacked_targets = stack_grains(targets, grains)
            scores = model.grain_scores(query, stacked_targets)               # (K, Q, G)
        else:  # anything with score_per_grain (benchmarks' reference scorers)
            per_grain = model.score_per_grain(query, targets)
            grains, scores = list(per_grain), torch.stack(list(per_grain.values()))
            stacked_targets = stack_grains(targets, grains)
        scale = full_precision(model.log_temperature).exp()
        sim = cross_entropy_per_grain(scale * scores)
        parts = unbind_grains("sim", sim, grains)
        parts["sim"] = total = sim.sum()

        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and self.lambda_ov > 0):    # a detached diagnostic unless weighted
            overlap = model.attention_overlap(query)                  # grain -> (Q,); {} without both attentions
            overlap = torch.stack([overlap[g] for g in grains]).mean(-1) if overlap else None
        if overlap is not None:
            with torch.set_grad_enabled(grad and self.lambda_me > 0):
                me = mutual_exclusion(query, stacked_targets, self.alpha, self.margin_tensor(grains, sim.device))
            parts.update(unbind_grains("me", me, grains))
            parts.update(unbind_grains("overlap", overlap, grains))
            parts["me"], parts["overlap"] = me.sum(), overlap.sum()
            if self.lambda_me > 0:
                total = total + self.lambda_me * parts["me"]
            if self.lambda_ov > 0:
                total = total + self.lambda_ov * parts["overlap"]
        return LossOutput(total, parts)
