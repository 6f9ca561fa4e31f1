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

Grains and parts are computed together, not one by one (a training step is bound by launches, not
arithmetic: BENCHMARKS.md): the attention MLPs of every grain and part are one wide Linear and one batched
product, and the scores of every grain and part one batched product (the two parts of a grain share its
targets, so they are stacked as rows: a (K, P·Q, d) × (K, G, d) product for K grains and P parts).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import ComposedQuery, Retriever, l2
from .products import full_precision, pairwise_dot

log = logging.getLogger("manme")
EPS = 1e-12
PARTS = ("modified", "preserved")


def batched_pairwise_dot(a: Tensor, b: Tensor) -> Tensor:
    """a @ bᵀ for a (A, d), b (B, d), or batched: a (K, A, d), b (K, B, d). Large products outside
    autograd take pairwise_dot one batch entry at a time (its oneDNN path); the rest one bmm."""
    if a.dim() == 2:
        return pairwise_dot(a, b)
    if a.shape[1] * b.shape[1] >= 2**20 and not torch.is_grad_enabled():
        return torch.stack([pairwise_dot(x, y) for x, y in zip(a, b)])
    return torch.bmm(a, b.mT)


def product(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-d or 3-d (batched) operands: mm or bmm itself (matmul would add reshapes around it)."""
    return torch.mm(a, b) if a.dim() == 2 else torch.bmm(a, b)


class AttendedCosine(torch.autograd.Function):
    """(..., Q, G) scores <u_i, L2(a_i ⊙ t_j)> = ((u ⊙ a) @ tᵀ) · rsqrt((a ⊙ a) @ (t ⊙ t)ᵀ), for u, a
    (Q, d) and t (G, d), or a batch of them: (K, Q, d) and (K, G, d), one product for all K.

    The backward is written by hand: it keeps only u, a, t (alive anyway) and two (Q, G)
    matrices, where autograd would keep u ⊙ a, a ⊙ a, t ⊙ t and every (Q, G) intermediate."""

    @staticmethod
    def forward(ctx, u: Tensor, attention: Tensor, target: Tensor, target_squared: Tensor | None = None) -> Tensor:
        squared = target * target if target_squared is None else target_squared
        inv_norm = batched_pairwise_dot(attention * attention, squared).clamp_(min=EPS).rsqrt_()
        scores = batched_pairwise_dot(u * attention, target).mul_(inv_norm)
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
            grad_factor = product(grad_numerator, t)                        # d/d(u ⊙ a)
            grad_u = grad_factor * a if ctx.needs_input_grad[0] else None
            if ctx.needs_input_grad[1]:
                grad_a = torch.addcmul(grad_factor * u, a, product(grad_energy, t * t), value=2.0)
        if ctx.needs_input_grad[2]:
            grad_t = torch.addcmul(product(grad_numerator.mT, u * a), t, product(grad_energy.mT, a * a),
                                   value=2.0)
        return grad_u, grad_a, grad_t, None


def attended_cosine(u: Tensor, attention: Tensor, target: Tensor, target_squared: Tensor | None = None) -> Tensor:
    """(Q, G) matrix of <u_i, L2(a_i ⊙ t_j)> for u, a (Q, d) and targets t (G, d); batched: (K, Q, G)
    for u, a (K, Q, d) and t (K, G, d). `target_squared`: t ⊙ t, when the caller keeps it (the search server ranks
    the same targets for every query; for one query, squaring them costs as much memory traffic as the products),
    else computed here. It gets no gradient."""
    return AttendedCosine.apply(u, attention, target, target_squared)


@dataclass
class AttentionQuery(ComposedQuery):
    """Every grain and part stacked, the query count first (slicing, `.to()` and gathering stay generic).
    The per-grain dicts of earlier versions are views of the stacks (properties below)."""
    text: Tensor                      # m (Q, d)
    text_projection: Tensor | None    # Tr_m = L2(W m); None for is-only
    references: Tensor                # r (Q, K, d), K grains
    attentions: Tensor                # (Q, K, P, d): the parts' attentions, softmax over d; P = len(parts)
    preserved_references: Tensor | None  # L2(A_pre ⊙ r) (Q, K, d); None for em-only
    grains: tuple[str, ...]
    parts: tuple[str, ...]            # PARTS the variant has, in that order

    @classmethod
    def build(cls, text: Tensor, text_projection: Tensor | None, reference: dict[str, Tensor],
              modification_attention: dict[str, Tensor], preserve_attention: dict[str, Tensor]) -> AttentionQuery:
        """From per-grain dicts (A_mod^g, A_pre^g (Q, d)); the model's compose() builds the stacks directly."""
        grains = tuple(reference)
        parts = [(p, d) for p, d in zip(PARTS, (modification_attention, preserve_attention)) if d]
        attentions = torch.stack([torch.stack([d[g] for _, d in parts], 1) for g in grains], 1)
        return cls.from_stacks(text, text_projection, torch.stack([reference[g] for g in grains], 1), attentions,
                               grains, tuple(p for p, _ in parts))

    @classmethod
    def from_stacks(cls, text: Tensor, text_projection: Tensor | None, references: Tensor, attentions: Tensor,
                    grains: tuple[str, ...], parts: tuple[str, ...]) -> AttentionQuery:
        """Cast to float32 (scores are compared across a whole gallery) and precompute L2(A_pre ⊙ r)."""
        attentions, references = full_precision(attentions), full_precision(references)
        preserved = l2(attentions[:, :, parts.index("preserved")] * references) if "preserved" in parts else None
        return cls(text=full_precision(text),
                   text_projection=None if text_projection is None else full_precision(text_projection),
                   references=references, attentions=attentions, preserved_references=preserved,
                   grains=tuple(grains), parts=tuple(parts))

    def _part(self, part: str) -> dict[str, Tensor]:
        if part not in self.parts:
            return {}
        i = self.parts.index(part)
        return {g: self.attentions[:, k, i] for k, g in enumerate(self.grains)}

    @property
    def modification_attention(self) -> dict[str, Tensor]:
        """grain -> A_mod^g (Q, d); empty for is-only."""
        return self._part("modified")

    @property
    def preserve_attention(self) -> dict[str, Tensor]:
        """grain -> A_pre^g (Q, d); empty for em-only."""
        return self._part("preserved")

    @property
    def reference(self) -> dict[str, Tensor]:
        return {g: self.references[:, k] for k, g in enumerate(self.grains)}

    @property
    def preserved_reference(self) -> dict[str, Tensor]:
        """grain -> L2(A_pre^g ⊙ r^g) (Q, d); empty for em-only."""
        if self.preserved_references is None:
            return {}
        return {g: self.preserved_references[:, k] for k, g in enumerate(self.grains)}

    def scoring_rows(self) -> tuple[Tensor, Tensor]:
        """(u, a), each (K, P·Q, d): the rows every part scores against the grain's targets (part-major
        within a grain: rows p·Q .. p·Q + Q - 1 are part p)."""
        q, k, p, d = self.attentions.shape
        u = [self.text_projection.expand(k, q, d) if part == "modified" else self.preserved_references.transpose(0, 1)
             for part in self.parts]
        u = u[0] if p == 1 else torch.stack(u, 1)
        return u.reshape(k, p * q, d), self.attentions.permute(1, 2, 0, 3).reshape(k, p * q, d)


def attention_mlp(d: int) -> nn.Sequential:
    """Linear(d,d) -> ReLU -> Linear(d,d) -> softmax over the d channels. The modules hold the weights (and
    name them in checkpoints); compose() runs every grain's and part's MLP together (AttentionRetriever)."""
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d), nn.Softmax(dim=-1))


class CompositorBlock(nn.Module):
    """One granularity's modification and preservation attentions over the text."""

    def __init__(self, d: int, modification: bool = True, preservation: bool = True):
        super().__init__()
        self.modification = attention_mlp(d) if modification else None
        self.preservation = attention_mlp(d) if preservation else None

    def mlp(self, part: str) -> nn.Sequential:
        return self.modification if part == "modified" else self.preservation


class AttentionRetriever(Retriever):
    has_modified = True     # s_mod, the text-explicit matching of the modified part
    has_preserved = True    # s_pre, the implicit similarity of the preserved part

    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None, **kw):
        super().__init__(cfg, vocab_size, grains, **kw)
        d = cfg.embed_dim
        self.text_projection = nn.Linear(d, d, bias=False) if self.has_modified else None
        keys = ["shared"] if cfg.share_attention else self.grains
        self.blocks = nn.ModuleDict({k: CompositorBlock(d, self.has_modified, self.has_preserved) for k in keys})
        self.parts = tuple(p for p, has in zip(PARTS, (self.has_modified, self.has_preserved)) if has)

    def block(self, grain: str) -> CompositorBlock:
        return self.blocks[grain] if grain in self.blocks else self.blocks["shared"]

    def attentions(self, text: Tensor) -> Tensor:
        """(Q, K, P, d): every grain's and part's attention MLP at once. The first layers read the same
        text: one Linear with the weights side by side; the second layers, one batched product.

        The weights stay one Linear per block and part (concatenated here, per step) so that checkpoints,
        optimizer states and --share_attention keep their layout; the concatenation is a few copies of
        d×d matrices, no launch per grain."""
        mlps = [block.mlp(p) for block in self.blocks.values() for p in self.parts]
        q, d, n = text.shape[0], text.shape[-1], len(mlps)
        hidden = F.relu(F.linear(text, torch.cat([m[0].weight for m in mlps]), torch.cat([m[0].bias for m in mlps])))
        weight, bias = torch.stack([m[2].weight for m in mlps]), torch.stack([m[2].bias for m in mlps])
        out = torch.baddbmm(bias.unsqueeze(1), hidden.view(q, n, d).transpose(0, 1), weight.mT).softmax(-1)
        out = out.view(len(self.blocks), len(self.parts), q, d).permute(2, 0, 1, 3)   # (Q, blocks, P, d)
        return out.expand(q, len(self.grains), len(self.parts), d) if len(self.blocks) < len(self.grains) else out

    def compose(self, reference: dict[str, Tensor], text: Tensor) -> AttentionQuery:
        projection = l2(self.text_projection(text)) if self.has_modified else None
        references = torch.stack([reference[g] for g in self.grains], 1)
        return AttentionQuery.from_stacks(text, projection, references, self.attentions(text), self.grains, self.parts)

    def stacked_part_scores(self, query: AttentionQuery, targets: Tensor, squares: Tensor | None = None) -> Tensor:
        """(K, P, Q, G) scores of every grain and part against targets (K, G, d): one batched product.
        `squares`: target_squares(targets), or None to compute them."""
        with torch.autocast(query.text.device.type, enabled=False):
            u, a = query.scoring_rows()
            k, q, p = len(query.grains), len(query), len(query.parts)
            return attended_cosine(u, a, full_precision(targets), squares).view(k, p, q, -1)

    def grain_scores(self, query: AttentionQuery, targets: Tensor, squares: Tensor | None = None) -> Tensor:
        parts = self.stacked_part_scores(query, targets, squares)
        return parts[:, 0] if parts.shape[1] == 1 else parts.sum(1)

    def target_squares(self, targets: Tensor) -> Tensor:
        """t ⊙ t (float32) of stacked targets (K, G, d): the energy product's operand, the same for every query."""
        targets = full_precision(targets)
        return targets * targets

    def part_scores(self, query: AttentionQuery, targets: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        """{"modified": grain -> (Q, G), "preserved": grain -> (Q, G)} (the parts the variant has). One
        product per grain (evaluation-sized galleries are not stacked, and keep pairwise_dot's oneDNN path)."""
        out = {"modified": {}, "preserved": {}}
        q = len(query)
        with torch.autocast(query.text.device.type, enabled=False):
            u, a = query.scoring_rows()
            for k, g in enumerate(self.grains):
                scores = attended_cosine(u[k], a[k], full_precision(targets[g]))
                for i, part in enumerate(query.parts):
                    out[part][g] = scores[i * q:(i + 1) * q]
        return out

    def score_per_grain(self, query: AttentionQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        parts = self.part_scores(query, targets)
        return {g: sum(parts[p][g] for p in PARTS if g in parts[p]) for g in self.grains}

    def score_parts(self, query: AttentionQuery, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        parts = self.part_scores(query, targets)
        out = {}
        for g in self.grains:
            out[f"score/{g}"] = sum(parts[p][g] for p in PARTS if g in parts[p])
            for p in PARTS:
                if g in parts[p]:
                    out[f"{p}/{g}"] = parts[p][g]
            if g in query.modification_attention:
                out[f"modification_attention/{g}"] = query.modification_attention[g]
            if g in query.preserve_attention:
                out[f"preserve_attention/{g}"] = query.preserve_attention[g]
        return out

    def stacked_overlap(self, query: AttentionQuery) -> Tensor | None:
        """(Q, K) sum_k min(A_mod, A_pre), or None without both attentions."""
        if len(query.parts) < 2:
            return None
        return torch.minimum(query.attentions[:, :, 0], query.attentions[:, :, 1]).sum(-1)

    def attention_overlap(self, query: AttentionQuery) -> dict[str, Tensor]:
        overlap = self.stacked_overlap(query)
        return {} if overlap is None else dict(zip(self.grains, overlap.unbind(1)))


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
