"""The multi-grained attention compositor (MANME.md §2, attention compositor, matmul scoring) and the
variants built from it:
manme, artemis (coarse only), em-only (modified part only), is-only (preserved part only).

For query i and target j at grain g (t_j L2-normalised):
    s_mod(i, j) = < Tr_m_i, L2(A_mod_i ⊙ t_j) >
    s_pre(i, j) = < L2(A_pre_i ⊙ r_i), L2(A_pre_i ⊙ t_j) >
Both have the form <u_i, L2(a_i ⊙ t_j)> = ((u ⊙ a) @ tᵀ) / sqrt((a ⊙ a) @ (t ⊙ t)ᵀ): two
matrix products per part, never a Q×G×d tensor. compose() computes every per-query vector
(Tr_m, the attentions, L2(A_pre ⊙ r)); `AttendedCosine` forms u ⊙ a and a ⊙ a on the fly
(Q×d work, negligible next to the Q×G×d products) so that training keeps no extra (Q, d)
tensors for backward.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import ComposedQuery, Retriever, l2
from .products import full_precision, pairwise_dot

log = logging.getLogger("manme")
EPS = 1e-12


class AttendedCosine(torch.autograd.Function):
    """(Q, G) scores <u_i, L2(a_i ⊙ t_j)> = ((u ⊙ a) @ tᵀ) · rsqrt((a ⊙ a) @ (t ⊙ t)ᵀ).

    The backward is written by hand: it keeps only u, a, t (alive anyway) and two (Q, G)
    matrices, where autograd would keep u ⊙ a, a ⊙ a, t ⊙ t and every (Q, G) intermediate."""

    @staticmethod
    def forward(ctx, u: Tensor, attention: Tensor, target: Tensor) -> Tensor:
        inv_norm = pairwise_dot(attention * attention, target * target).clamp_(min=EPS).rsqrt_()
        scores = pairwise_dot(u * attention, target).mul_(inv_norm)
        ctx.save_for_backward(u, attention, target, scores, inv_norm)
        return scores

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        u, a, t, scores, inv_norm = ctx.saved_tensors
        grad_numerator = grad * inv_norm                             # d/d((u ⊙ a) tᵀ)
        grad_energy = grad_numerator * scores * inv_norm * -0.5       # d/d((a ⊙ a)(t ⊙ t)ᵀ) = -s / (2 E)
        grad_energy.masked_fill_(inv_norm >= EPS ** -0.5, 0.0)       # clamped entries
        grad_u = grad_a = grad_t = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_factor = grad_numerator @ t                          # d/d(u ⊙ a)
            grad_u = grad_factor * a if ctx.needs_input_grad[0] else None
            if ctx.needs_input_grad[1]:
                grad_a = torch.addcmul(grad_factor * u, a, grad_energy @ (t * t), value=2.0)
        if ctx.needs_input_grad[2]:
            grad_t = torch.addcmul(grad_numerator.T @ (u * a), t, grad_energy.T @ (a * a), value=2.0)
        return grad_u, grad_a, grad_t


def attended_cosine(u: Tensor, attention: Tensor, target: Tensor) -> Tensor:
    """(Q, G) matrix of <u_i, L2(a_i ⊙ t_j)> for u, a (Q, d) and targets t (G, d)."""
    return AttendedCosine.apply(u, attention, target)


@dataclass
class AttentionQuery(ComposedQuery):
    text: Tensor                                 # m (Q, d)
    text_projection: Tensor | None               # Tr_m = L2(W m); None for is-only
    reference: dict[str, Tensor]                 # r^g (Q, d)
    modification_attention: dict[str, Tensor]    # A_mod^g (Q, d), softmax over d; empty for is-only
    preserve_attention: dict[str, Tensor]        # A_pre^g; empty for em-only
    preserved_reference: dict[str, Tensor]       # L2(A_pre^g ⊙ r^g)

    @classmethod
    def build(cls, text: Tensor, text_projection: Tensor | None, reference: dict[str, Tensor],
              modification_attention: dict[str, Tensor], preserve_attention: dict[str, Tensor]) -> AttentionQuery:
        """Cast to float32 (scores are compared across a whole gallery) and precompute L2(A_pre ⊙ r)."""
        mod = {g: full_precision(a) for g, a in modification_attention.items()}
        pre = {g: full_precision(a) for g, a in preserve_attention.items()}
        reference = {g: full_precision(r) for g, r in reference.items()}
        return cls(text=full_precision(text),
                   text_projection=None if text_projection is None else full_precision(text_projection),
                   reference=reference, modification_attention=mod, preserve_attention=pre,
                   preserved_reference={g: l2(a * reference[g]) for g, a in pre.items()})


def attention_mlp(d: int) -> nn.Sequential:
    """Linear(d,d) -> ReLU -> Linear(d,d) -> softmax over the d channels."""
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d), nn.Softmax(dim=-1))


class CompositorBlock(nn.Module):
    """One granularity's modification and preservation attentions over the text."""

    def __init__(self, d: int, modification: bool = True, preservation: bool = True):
        super().__init__()
        self.modification = attention_mlp(d) if modification else None
        self.preservation = attention_mlp(d) if preservation else None


class AttentionRetriever(Retriever):
    has_modified = True     # s_mod, the text-explicit matching of the modified part
    has_preserved = True    # s_pre, the implicit similarity of the preserved part

    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None, **kw):
        super().__init__(cfg, vocab_size, grains, **kw)
        d = cfg.embed_dim
        self.text_projection = nn.Linear(d, d, bias=False) if self.has_modified else None
        keys = ["shared"] if cfg.share_attention else self.grains
        self.blocks = nn.ModuleDict({k: CompositorBlock(d, self.has_modified, self.has_preserved) for k in keys})

    def block(self, grain: str) -> CompositorBlock:
        return self.blocks[grain] if grain in self.blocks else self.blocks["shared"]

    def compose(self, reference: dict[str, Tensor], text: Tensor) -> AttentionQuery:
        projection = l2(self.text_projection(text)) if self.has_modified else None
        mod = {g: self.block(g).modification(text) for g in self.grains if self.has_modified}
        pre = {g: self.block(g).preservation(text) for g in self.grains if self.has_preserved}
        return AttentionQuery.build(text, projection, {g: reference[g] for g in self.grains}, mod, pre)

    def part_scores(self, query: AttentionQuery, targets: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        """{"modified": grain -> (Q, G), "preserved": grain -> (Q, G)} (the parts the variant has)."""
        out = {"modified": {}, "preserved": {}}
        with torch.autocast(query.text.device.type, enabled=False):
            for g in self.grains:
                t = full_precision(targets[g])
                if self.has_modified:
                    out["modified"][g] = attended_cosine(query.text_projection, query.modification_attention[g], t)
                if self.has_preserved:
                    out["preserved"][g] = attended_cosine(query.preserved_reference[g], query.preserve_attention[g], t)
        return out

    def score_per_grain(self, query: AttentionQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        parts = self.part_scores(query, targets)
        return {g: sum(parts[p][g] for p in ("modified", "preserved") if g in parts[p]) for g in self.grains}

    def score_parts(self, query: AttentionQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        parts = self.part_scores(query, targets)
        out = {}
        for g in self.grains:
            out[f"score/{g}"] = sum(parts[p][g] for p in ("modified", "preserved") if g in parts[p])
            for p in ("modified", "preserved"):
                if g in parts[p]:
                    out[f"{p}/{g}"] = parts[p][g]
            if g in query.modification_attention:
                out[f"modification_attention/{g}"] = query.modification_attention[g]
            if g in query.preserve_attention:
                out[f"preserve_attention/{g}"] = query.preserve_attention[g]
        return out

    def attention_overlap(self, query: AttentionQuery) -> dict[str, Tensor]:
        return {g: torch.minimum(query.modification_attention[g], query.preserve_attention[g]).sum(-1)
                for g in self.grains if g in query.modification_attention and g in query.preserve_attention}


class MANME(AttentionRetriever):
    """Multi-grained attention with both parts; the loss adds the mutual-exclusion constraint."""


class ARTEMIS(AttentionRetriever):
    """MANME's blocks at the coarse granularity only, without the mutual-exclusion loss."""
    preset = {"grains": "coarse", "lambda_me": 0.0}

    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None, **kw):
        if cfg.grain_list != ["coarse"]:
            log.warning(f"--model artemis uses the coarse granularity only; ignoring --grains {cfg.grains}")
        super().__init__(cfg, vocab_size, ["coarse"], **kw)


class EMOnly(AttentionRetriever):
    """Only the modified-part score s_mod (text-explicit matching); the release's ablation, at the coarse grain."""
    has_preserved = False
    preset = {"grains": "coarse", "lambda_me": 0.0}


class ISOnly(AttentionRetriever):
    """Only the preserved-part score s_pre (implicit similarity); the release's ablation, at the coarse grain."""
    preset = {"grains": "coarse", "lambda_me": 0.0}
    has_modified = False
