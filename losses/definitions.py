"""The MANME objective op by op, as MANME.md §2-3 write it: broadcast scores (a (Q, G, d) tensor per grain and
part), every step recorded by autograd. The reference the tests check CompositionObjective's values and
hand-written backward against, and benchmarks/bench_scoring.py's baseline (the formulation of the ARTEMIS
release). Not used in training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attended(a: Tensor, t: Tensor) -> Tensor:
    """L2(a_i ⊙ t_j) for every pair: (Q, G, d)."""
    return F.normalize(a[:, None, :] * t[None], dim=-1)


def objective_by_definition(model, cfg, text: Tensor, references: dict[str, Tensor], targets: dict[str, Tensor]
                            ) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, terms) of an attention variant: terms "sim/<g>", and with both parts "me/<g>" and "overlap/<g>";
    total = sum sim + lambda_me sum me + lambda_ov sum overlap."""
    tau = model.log_temperature.exp()
    both = model.text_projection is not None and model.has_preserved
    positives = torch.arange(len(text), device=text.device)
    terms = {}
    for g in model.grains:
        block, r, t, s = model.block(g), references[g], targets[g], 0
        if model.text_projection is not None:
            projection = F.normalize(model.text_projection(text), dim=-1)
            a_mod = block.modification(text)
            s = s + (projection[:, None] * attended(a_mod, t)).sum(-1)
        if block.preservation is not None:
            a_pre = block.preservation(text)
            s = s + (F.normalize(a_pre * r, dim=-1)[:, None] * attended(a_pre, t)).sum(-1)
        terms[f"sim/{g}"] = F.cross_entropy(tau * s, positives)
        if not both:
            continue
        relevance = F.normalize(cfg.alpha * text + (1 - cfg.alpha) * projection, dim=-1)
        positive_targets = t[:len(text)]
        rel_mod = (relevance * F.normalize(a_mod * positive_targets, dim=-1)).sum(-1)
        rel_pre = (relevance * F.normalize(a_pre * positive_targets, dim=-1)).sum(-1)
        terms[f"me/{g}"] = torch.clamp(cfg.margin_list[g] + rel_pre - rel_mod, min=0).mean()
        terms[f"overlap/{g}"] = torch.minimum(a_mod, a_pre).sum(-1).mean()
    total = sum(terms[f"sim/{g}"] for g in model.grains)
    if both:
        total = total + cfg.lambda_me * sum(terms[f"me/{g}"] for g in model.grains) \
            + cfg.lambda_ov * sum(terms[f"overlap/{g}"] for g in model.grains)
    return total, terms
