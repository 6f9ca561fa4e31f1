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
arithmetic: BENCHMARKS.md): the attention MLPs of every grain and part are stacked parameters (two baddbmm),
and the scores of every grain and part one batched product (the two parts of a grain share its targets, so
they are stacked as rows: a (K, P·Q, d) × (K, G, d) product for K grains and P parts). compose_forward and
compose_backward, and cosine_forward and cosine_backward, are that work written by hand, both ways: `Compose`
and `AttendedCosine` wrap them as autograd functions for inference and diagnostics, and training runs them
inside one function with the losses (losses.retrieval.CompositionObjective). Autograd would record every
normalisation, softmax and product op by op.
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import ComposedQuery, Retriever, stack_grains
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


def l2_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x / max(||x||, EPS), max(||x||, EPS)) over the last dimension: F.normalize's formula, with the clamped
    norm its backward reads."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_(min=EPS)
    return x / norm, norm


def l2_backward(grad: Tensor, y: Tensor, norm: Tensor, along: Tensor | None = None) -> Tensor:
    """d/dx of y = l2(x): (g - y <g, y>) / ||x||, or g / EPS where the norm was clamped (a constant there).
    `along`: <g, y> (keepdim), where the caller has it."""
    along = (grad * y).sum(-1, keepdim=True) if along is None else along
    along = along.masked_fill(norm <= EPS, 0.0)
    return torch.addcmul(grad, y, along, value=-1.0).div_(norm)


def cosine_forward(u: Tensor, a: Tensor, t: Tensor, t_squared: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """(scores, inverse norms), each (..., Q, G): <u_i, L2(a_i ⊙ t_j)> = ((u ⊙ a) @ tᵀ) · rsqrt((a ⊙ a) @ (t ⊙ t)ᵀ);
    and the products (u ⊙ a, a ⊙ a, t ⊙ t), which the backward reads again where they are kept. `t_squared`:
    t ⊙ t where the caller keeps it (the search server: the same gallery for every query)."""
    products = (u * a, a * a, t * t if t_squared is None else t_squared)
    inv_norm = batched_pairwise_dot(products[1], products[2]).clamp_(min=EPS).rsqrt_()
    return batched_pairwise_dot(products[0], t).mul_(inv_norm), inv_norm, products


def cosine_backward(grad: Tensor, u: Tensor, a: Tensor, t: Tensor, scores: Tensor, inv_norm: Tensor,
                    needs: tuple[bool, bool, bool], products: tuple[Tensor, Tensor, Tensor] | None = None
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients of cosine_forward's scores for u, a, t (those `needs` asks for), from two (Q, G) matrices
    (and the forward's products, or they are formed again)."""
    grad_numerator = grad * inv_norm                             # d/d((u ⊙ a) tᵀ)
    # -2 d/dE for the energies E = (a ⊙ a)(t ⊙ t)ᵀ (ds/dE = -s / (2E)); the -1/2 goes into the products' value=
    grad_energy = (grad_numerator * scores).mul_(inv_norm)
    grad_energy.masked_fill_(inv_norm >= EPS ** -0.5, 0.0)       # clamped entries
    grad_u = grad_a = grad_t = None
    if needs[0] or needs[1]:
        grad_factor = product(grad_numerator, t)                        # d/d(u ⊙ a)
        grad_u = grad_factor * a if needs[0] else None
        if needs[1]:
            t_squared = t * t if products is None else products[2]
            grad_a = torch.addcmul(grad_factor * u, a, product(grad_energy, t_squared), value=-1.0)  # 2 a (-E/2)
    if needs[2]:
        u_a, a_squared = (u * a, a * a) if products is None else products[:2]
        grad_t = torch.addcmul(product(grad_numerator.mT, u_a), t, product(grad_energy.mT, a_squared), value=-1.0)
    return grad_u, grad_a, grad_t


class AttendedCosine(torch.autograd.Function):
    """(..., Q, G) scores <u_i, L2(a_i ⊙ t_j)> for u, a (Q, d) and t (G, d), or a batch of them: (K, Q, d) and
    (K, G, d), one product for all K.

    The backward is written by hand: it keeps only u, a, t (alive anyway) and two (Q, G)
    matrices, where autograd would keep u ⊙ a, a ⊙ a, t ⊙ t and every (Q, G) intermediate."""

    @staticmethod
    def forward(ctx, u: Tensor, attention: Tensor, target: Tensor, target_squared: Tensor | None = None) -> Tensor:
        scores, inv_norm, _ = cosine_forward(u, attention, target, target_squared)
        ctx.save_for_backward(u, attention, target, scores, inv_norm)
        return scores

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return (*cosine_backward(grad, *ctx.saved_tensors, ctx.needs_input_grad[:3]), None)


def attended_cosine(u: Tensor, attention: Tensor, target: Tensor, target_squared: Tensor | None = None) -> Tensor:
    """(Q, G) matrix of <u_i, L2(a_i ⊙ t_j)> for u, a (Q, d) and targets t (G, d); batched: (K, Q, G)
    for u, a (K, Q, d) and t (K, G, d). `target_squared`: t ⊙ t, when the caller keeps it (the search server ranks
    the same targets for every query; for one query, squaring them costs as much memory traffic as the products),
    else computed here. It gets no gradient."""
    return AttendedCosine.apply(u, attention, target, target_squared)


@dataclass
class Composition:
    """What compose_forward computes and compose_backward reads. Rows and attentions are (K, P·Q, d): the parts
    of a grain stacked as rows (rows p·Q .. p·Q + Q - 1 are part p), the layout of the scores' batched product."""
    rows: Tensor              # what each part scores with: Tr_m = L2(W m) (every grain), L2(A_pre ⊙ r)
    attentions: Tensor        # A^{g,p}
    hidden: Tensor            # (n, Q, d) the MLPs' hidden layers, n = blocks · parts
    softmax: Tensor           # (n, Q, d) the attentions of every block (fewer than K·P with one shared block)
    norms: Tensor             # (K, P·Q, 1) the rows' norms before L2
    texts: Tensor             # (n, Q, d) the text, broadcast to every block and part (a view)

    def tensors(self) -> tuple[Tensor, ...]:
        """The fields in order (for save_for_backward; Composition(*saved) rebuilds it)."""
        return self.rows, self.attentions, self.hidden, self.softmax, self.norms, self.texts


def compose_forward(text: Tensor, references: Tensor, projection_weight: Tensor | None, hidden_weight: Tensor,
                    hidden_bias: Tensor, output_weight: Tensor, output_bias: Tensor, parts: tuple[str, ...]
                    ) -> Composition:
    """Every grain's and part's composition at once (MANME.md §2), for text m (Q, d) and references r (K, Q, d):
        A^{b,p} = softmax(W2^{b,p} relu(W1^{b,p} m + b1^{b,p}) + b2^{b,p})   every block b and part p
        Tr_m = L2(W m)   (modified part),   L2(A_pre^g ⊙ r^g)   (preserved part, every grain g)
    The layers' weights are (n, d, d) and biases (n, 1, d), n = blocks · parts. A dozen batched operations: two
    baddbmm, one L2 for the rows of every grain and part (Tr_m is normalised once per grain: Q×d work, one launch
    fewer)."""
    n, d = output_weight.shape[:2]
    q, k, p = text.shape[0], references.shape[0], len(parts)
    texts = text.expand(n, q, d)
    hidden = torch.baddbmm(hidden_bias, texts, hidden_weight.mT).relu_()                          # (n, Q, d)
    softmax = torch.baddbmm(output_bias, hidden, output_weight.mT).softmax(-1)
    attentions = softmax.view(n // p, p * q, d)
    if n // p < k:                          # one shared block: every grain reads it
        attentions = attentions.expand(k, p * q, d).contiguous()
    raw = []
    if parts[0] == "modified":
        raw.append(torch.mm(text, projection_weight.t()).expand(k, q, d))
    if parts[-1] == "preserved":
        raw.append(attentions[:, -q:] * references)
    rows, norms = l2_forward(torch.cat(raw, 1) if len(raw) > 1 else raw[0])
    return Composition(rows, attentions, hidden, softmax, norms, texts)


def compose_backward(c: Composition, grad_rows: Tensor | None, grad_attentions: Tensor | None, text: Tensor,
                     references: Tensor, projection_weight: Tensor | None, hidden_weight: Tensor,
                     output_weight: Tensor, parts: tuple[str, ...]) -> tuple:
    """The gradients of compose_forward's inputs (text, references, projection, hidden weight and bias, output
    weight and bias) from those of its rows and attentions (K, P·Q, d; either None). `grad_attentions`, where
    given, is written in place."""
    (n, q, d), k, p = c.softmax.shape, references.shape[0], len(parts)
    grad_references = grad_projection_weight = grad_projection = None
    if grad_attentions is None:
        grad_attentions = references.new_zeros(k, p * q, d)
    if grad_rows is not None:
        grad_raw = l2_backward(grad_rows, c.rows, c.norms)                                # (K, P·Q, d)
        if parts[-1] == "preserved":
            grad_preserved = grad_raw[:, -q:]
            grad_references = grad_preserved * c.attentions[:, -q:]
            grad_attentions[:, -q:].addcmul_(grad_preserved, references)
        if parts[0] == "modified":
            grad_projection = (grad_raw[:, :q] if p > 1 else grad_raw).sum(0)               # (Q, d)
            grad_projection_weight = torch.mm(grad_projection.t(), text)
    if n // p < k:
        grad_attentions = grad_attentions.sum(0)
    grad_logits = torch._softmax_backward_data(grad_attentions.view(n, q, d), c.softmax, -1, c.softmax.dtype)
    grad_output_weight, grad_output_bias = torch.bmm(grad_logits.mT, c.hidden), grad_logits.sum(1, keepdim=True)
    grad_hidden = torch.ops.aten.threshold_backward(torch.bmm(grad_logits, output_weight), c.hidden, 0)
    grad_hidden_weight = torch.bmm(grad_hidden.mT, c.texts)
    grad_hidden_bias = grad_hidden.sum(1, keepdim=True)
    grad_text = torch.bmm(grad_hidden, hidden_weight).sum(0)
    if grad_projection is not None:
        grad_text = torch.addmm(grad_text, grad_projection, projection_weight)
    return (grad_text, grad_references, grad_projection_weight, grad_hidden_weight, grad_hidden_bias,
            grad_output_weight, grad_output_bias)


class Compose(torch.autograd.Function):
    """compose_forward as an autograd function with compose_backward: returns (rows, attentions), each
    (K, P·Q, d). (Training runs the composition inside the objective's function, losses.retrieval.)"""

    @staticmethod
    def forward(ctx, text: Tensor, references: Tensor, projection_weight: Tensor | None, hidden_weight: Tensor,
                hidden_bias: Tensor, output_weight: Tensor, output_bias: Tensor, parts: tuple[str, ...]):
        ctx.set_materialize_grads(False)
        c = compose_forward(text, references, projection_weight, hidden_weight, hidden_bias, output_weight,
                            output_bias, parts)
        ctx.parts = parts
        ctx.save_for_backward(text, references, projection_weight, hidden_weight, output_weight, *c.tensors())
        return c.rows, c.attentions

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows: Tensor | None, grad_attentions: Tensor | None):
        grad_attentions = None if grad_attentions is None else grad_attentions.clone()   # written in place
        text, references, projection_weight, hidden_weight, output_weight, *saved = ctx.saved_tensors
        return (*compose_backward(Composition(*saved), grad_rows, grad_attentions, text, references, projection_weight,
                                  hidden_weight, output_weight, ctx.parts), None)


@dataclass
class AttentionQuery(ComposedQuery):
    """Every grain and part stacked, the query count first (slicing, `.to()` and gathering stay generic); Compose
    makes `attentions` and `rows` as views of (K, P·Q, d) stacks, which scoring reads without a copy.
    The per-grain dicts of earlier versions are views of the stacks (properties below)."""
    text: Tensor                      # m (Q, d)
    references: Tensor                # r (Q, K, d), K grains
    attentions: Tensor                # (Q, K, P, d): the parts' attentions, softmax over d; P = len(parts)
    rows: Tensor                      # (Q, K, P, d): what each part scores with: Tr_m = L2(W m), L2(A_pre ⊙ r)
    grains: tuple[str, ...]
    parts: tuple[str, ...]            # PARTS the variant has, in that order

    @property
    def text_projection(self) -> Tensor | None:
        """Tr_m = L2(W m) (Q, d); None for is-only."""
        return self.rows[:, 0, 0] if "modified" in self.parts else None

    @property
    def preserved_references(self) -> Tensor | None:
        """L2(A_pre ⊙ r) (Q, K, d); None for em-only."""
        return self.rows[:, :, -1] if "preserved" in self.parts else None

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
        if "preserved" not in self.parts:
            return {}
        return {g: self.rows[:, k, -1] for k, g in enumerate(self.grains)}

    def scoring_rows(self) -> tuple[Tensor, Tensor]:
        """(u, a), each (K, P·Q, d): the rows every part scores against the grain's targets (part-major
        within a grain: rows p·Q .. p·Q + Q - 1 are part p). Views where Compose made the stacks."""
        q, k, p, d = self.attentions.shape
        return (self.rows.permute(1, 2, 0, 3).reshape(k, p * q, d),
                self.attentions.permute(1, 2, 0, 3).reshape(k, p * q, d))


def linear_init_(weight: Tensor, bias: Tensor) -> None:
    """nn.Linear's initialisation (reset_parameters), on a slice of a stacked weight."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(weight.shape[1])
    nn.init.uniform_(bias, -bound, bound)


class AttentionMLPs(nn.Module):
    """The attention MLPs of every block (a grain, or "shared") and part: Linear(d, d) -> ReLU -> Linear(d, d) ->
    softmax over the d channels, as stacked weights (each layer's weights (n, d, d) and biases (n, 1, d);
    n = blocks · parts), so that compose_forward runs them all in two baddbmm and the optimizer updates four
    tensors.

    Checkpoints keep the per-block names of the earlier nn.Sequential layout (`<block>.modification.0.weight`,
    `.0.bias`, `.2.weight`, `.2.bias`, and `preservation`): _save_to_state_dict and _load_from_state_dict
    translate. The initial values are nn.Linear's, drawn in the earlier modules' order (the same seed gives the
    same weights)."""

    MODULE_NAMES = {"modified": "modification", "preserved": "preservation"}
    TENSORS = (("hidden_weight", "0.weight"), ("hidden_bias", "0.bias"), ("output_weight", "2.weight"),
               ("output_bias", "2.bias"))

    def __init__(self, blocks: list[str], parts: tuple[str, ...], d: int):
        super().__init__()
        self.block_names, self.parts = list(blocks), tuple(parts)
        n = len(self.block_names) * len(self.parts)
        self.hidden_weight, self.output_weight = nn.Parameter(torch.empty(n, d, d)), nn.Parameter(torch.empty(n, d, d))
        self.hidden_bias, self.output_bias = nn.Parameter(torch.empty(n, 1, d)), nn.Parameter(torch.empty(n, 1, d))
        with torch.no_grad():
            for i in range(n):
                linear_init_(self.row("hidden_weight", i), self.row("hidden_bias", i))
                linear_init_(self.row("output_weight", i), self.row("output_bias", i))

    def row(self, name: str, i: int) -> Tensor:
        """Block-and-part i's slice of a stacked parameter: (d, d) weights, (d,) biases."""
        value = getattr(self, name)[i]
        return value[0] if name.endswith("bias") else value

    def index(self, block: str, part: str) -> int:
        return self.block_names.index(block) * len(self.parts) + self.parts.index(part)

    def keys(self, prefix: str) -> dict[str, tuple[str, int]]:
        """checkpoint key -> (stacked parameter, row)."""
        return {f"{prefix}{block}.{self.MODULE_NAMES[part]}.{suffix}": (name, self.index(block, part))
                for block in self.block_names for part in self.parts for name, suffix in self.TENSORS}

    def attention(self, block: str, part: str, text: Tensor) -> Tensor:
        """(Q, d) one block's and part's attention, alone (diagnostics and tests; Compose runs them all)."""
        i = self.index(block, part)
        hidden = F.relu(F.linear(text, self.row("hidden_weight", i), self.row("hidden_bias", i)))
        return F.linear(hidden, self.row("output_weight", i), self.row("output_bias", i)).softmax(-1)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, (name, row) in self.keys(prefix).items():
            value = self.row(name, row)
            destination[key] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        expected = self.keys(prefix)
        with torch.no_grad():
            for key, (name, row) in expected.items():
                if key not in state_dict:
                    missing_keys.append(key)
                    continue
                target, value = self.row(name, row), state_dict[key]
                if value.shape != target.shape:
                    error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} "
                                      f"from checkpoint, the shape in current model is {tuple(target.shape)}.")
                    continue
                target.copy_(value)
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in expected)


@dataclass(frozen=True)
class CompositorBlock:
    """One granularity's modification and preservation attentions over the text: text (Q, d) -> (Q, d), or None
    where the variant lacks the part."""
    modification: Callable[[Tensor], Tensor] | None
    preservation: Callable[[Tensor], Tensor] | None


class AttentionRetriever(Retriever):
    has_modified = True     # s_mod, the text-explicit matching of the modified part
    has_preserved = True    # s_pre, the implicit similarity of the preserved part

    def __init__(self, cfg, vocab_size: int, grains: list[str] | None = None, **kw):
        super().__init__(cfg, vocab_size, grains, **kw)
        d = cfg.embed_dim
        self.text_projection = nn.Linear(d, d, bias=False) if self.has_modified else None
        self.parts = tuple(p for p, has in zip(PARTS, (self.has_modified, self.has_preserved)) if has)
        self.blocks = AttentionMLPs(["shared"] if cfg.share_attention else self.grains, self.parts, d)

    def block(self, grain: str) -> CompositorBlock:
        name = grain if grain in self.blocks.block_names else "shared"
        mlp = {p: functools.partial(self.blocks.attention, name, p) for p in self.parts}
        return CompositorBlock(mlp.get("modified"), mlp.get("preserved"))

    def compositor_weights(self) -> tuple[Tensor | None, Tensor, Tensor, Tensor, Tensor]:
        """compose_forward's weights: the text projection W (None for is-only), then the attention MLPs' stacked
        hidden weight and bias, output weight and bias."""
        return (None if self.text_projection is None else self.text_projection.weight, self.blocks.hidden_weight,
                self.blocks.hidden_bias, self.blocks.output_weight, self.blocks.output_bias)

    def compose(self, reference: dict[str, Tensor], text: Tensor) -> AttentionQuery:
        """In float32 whatever the autocast (a few (Q, d) × (d, d) products; scores compare across a gallery)."""
        references = full_precision(stack_grains(reference, self.grains))   # (K, Q, d)
        text = full_precision(text)
        with torch.autocast(text.device.type, enabled=False):
            rows, attentions = Compose.apply(text, references, *self.compositor_weights(), self.parts)
        k, p, q, d = len(self.grains), len(self.parts), *text.shape
        return AttentionQuery(text=text, references=references.transpose(0, 1),
                              attentions=attentions.view(k, p, q, d).permute(2, 0, 1, 3),
                              rows=rows.view(k, p, q, d).permute(2, 0, 1, 3), grains=tuple(self.grains),
                              parts=self.parts)

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
