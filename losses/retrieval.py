"""The MANME objective (MANME.md §3, objective, overlap).

    L = sum_g CE(tau · S^g, diag)                       sim-level matching, tau = exp(kappa)
      + lambda_me · sum_g mean_i max(0, delta_g + rel_pre - rel_mod)   mutual exclusion
      + lambda_ov · sum_g mean_i sum_k min(A_mod, A_pre)               overlap (optional)

with rel_* = < m̂_i, L2(A_*_i ⊙ t_i) > and m̂ = L2(alpha m + (1 - alpha) Tr_m).
Every total in `parts` is the sum over grains. The mutual-exclusion and overlap
terms exist for variants with both attentions (manme, artemis); when their weight
is 0 they are still computed, as diagnostics.

For the attention variants, composition, scores and every term are one autograd function (`CompositionObjective`)
over the stacked grains and parts, with a hand-written backward: a training step is bound by launches, not
arithmetic (BENCHMARKS.md). Other variants take the generic path: their compose(), grain scores, one
cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from models.attention import (
    Composition,
    compose_backward,
    compose_forward,
    cosine_backward,
    cosine_forward,
    l2_backward,
    l2_forward,
)
from models.base import TrainingInputs
from models.products import full_precision


@dataclass
class LossOutput:
    total: Tensor
    terms: Tensor                 # (T, K): each term's value per grain, for logging (no gradient for the parts
    names: tuple[str, ...]        #   of the attention objective): "sim", and where defined "me", "overlap"
    grains: tuple[str, ...]

    @property
    def parts(self) -> dict[str, Tensor]:
        """"sim/<g>", "sim", and where defined "me/<g>", "me", "overlap/<g>", "overlap" (a term: its grains' sum)."""
        return name_terms(self.terms, self.names, self.grains)


def name_terms(terms, names, grains) -> dict:
    """{"<term>/<grain>": value, "<term>": the sum over grains} from (T, K) values: a tensor, or lists of floats."""
    out = {}
    for name, row in zip(names, terms):
        out.update({f"{name}/{g}": v for g, v in zip(grains, row)})
        out[name] = row.sum() if isinstance(row, Tensor) else sum(row)
    return out


def cross_entropy_per_grain(logits: Tensor) -> Tensor:
    """(K,) CE(logits[k], diag) for logits (K, Q, G), G >= Q: mean_i logsumexp_j l_ij - l_ii."""
    return (logits.logsumexp(-1) - logits.diagonal(dim1=-2, dim2=-1)).mean(-1)


class CompositionObjective(torch.autograd.Function):
    """The attention variants' whole training head as one autograd function: the composition of every grain and
    part (models.attention.compose_forward), their scores against the targets, the cross-entropy, the mutual
    exclusion and the overlap, with one hand-written backward (a training step is bound by launches, not
    arithmetic: BENCHMARKS.md). Inputs: text m (Q, d), references r (K, Q, d), targets t (K, G, d) (the first Q
    are the positives), compose_forward's weights, the log-temperature kappa, and constants (below). Returns the
    total, sum_g sim + lambda_me sum_g me + lambda_ov sum_g overlap, and the terms (T, K) (sim; me and overlap
    with both parts): values to log, without a gradient. Terms of weight 0 are computed in the forward only (for
    the log; the backward skips them)."""

    @staticmethod
    def forward(ctx, text: Tensor, references: Tensor, targets: Tensor, projection_weight: Tensor | None,
                hidden_weight: Tensor, hidden_bias: Tensor, output_weight: Tensor, output_bias: Tensor,
                log_temperature: Tensor, margins: Tensor, signs: Tensor, weights: Tensor, parts: tuple[str, ...],
                alpha: float, lambda_me: float, lambda_ov: float):
        """margins (K, 1, 1); signs (2, 1, 1): (-1, 1), the parts' signs in the hinge; weights (T, 1): each term's
        weight in the total, (1, lambda_me, lambda_ov), or (1,) without both parts: constants on the device."""
        ctx.set_materialize_grads(False)
        c = compose_forward(text, references, projection_weight, hidden_weight, hidden_bias, output_weight,
                            output_bias, parts)
        (k, pq, d), q = c.rows.shape, text.shape[0]
        p = pq // q
        scores, inv_norm, products = cosine_forward(c.rows, c.attentions, targets)        # (K, P·Q, G)
        grain_scores = scores.view(k, p, q, -1).sum(1) if p > 1 else scores                 # (K, Q, G)
        scale = log_temperature.exp()
        logits = grain_scores * scale
        terms = [(logits.logsumexp(-1) - logits.diagonal(dim1=-2, dim2=-1)).mean(-1)]        # sim
        attentions = positives = attended = attended_norm = relevance = relevance_norm = rel = hinge = None
        if p == 2:
            attentions, positives = c.attentions.view(k, p, q, d), targets[:, None, :q]     # (K, 2, Q, d), (K, 1, Q, d)
            relevance, relevance_norm = l2_forward(torch.lerp(c.rows[0, :q], text, alpha))   # m̂ (Q, d)
            attended, attended_norm = l2_forward(attentions * positives)                # L2(a ⊙ t_i) (K, 2, Q, d)
            rel = (attended * relevance).sum(-1, keepdim=True)                                # (K, 2, Q, 1)
            hinge = (rel * signs).sum(1).add_(margins).relu_()           # rel_pre - rel_mod + margin (K, Q, 1)
            overlap = attentions.amin(1).sum(-1).mean(-1)
            terms += [hinge.mean((1, 2)), overlap]
        terms = torch.stack(terms)
        total = (terms * weights).sum()
        ctx.mark_non_differentiable(terms)
        ctx.constants = (parts, alpha, lambda_me, lambda_ov)
        ctx.save_for_backward(text, references, targets, projection_weight, hidden_weight, output_weight, scores,
                              inv_norm, grain_scores, logits, scale, attentions, positives, attended, attended_norm,
                              relevance, relevance_norm, rel, hinge, signs, *products, *c.tensors())
        return total, terms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: Tensor | None, grad_terms: None):
        if grad_total is None:
            return (None,) * 16
        (text, references, targets, projection_weight, hidden_weight, output_weight, scores, inv_norm, grain_scores,
         logits, scale, attentions, positives, attended, attended_norm, relevance, relevance_norm, rel, hinge, signs,
         *saved) = ctx.saved_tensors
        products, c = saved[:3], Composition(*saved[3:])
        parts, alpha, lambda_me, lambda_ov = ctx.constants
        (k, pq, d), q = c.rows.shape, text.shape[0]
        p = pq // q
        per_query = grad_total / q                                                # every term is a mean over Q
        # cross-entropy: d/dlogits = (softmax - I) / Q per grain; the temperature's gradient reads it before the
        # scale that makes it the scores' gradient
        grad_scores = logits.softmax(-1)
        grad_scores.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        grad_scores.mul_(per_query * scale)                                                 # d/d(grain scores)
        grad_log_temperature = (grad_scores * grain_scores).sum()
        grad_rows, grad_attentions, grad_t = cosine_backward(
            grad_scores.repeat(1, p, 1) if p > 1 else grad_scores, c.rows, c.attentions, targets, scores, inv_norm,
            (True, True, True), products)                                                   # every part's rows
        grad_mixed = None
        if p == 2:
            grad_attentions_parts = grad_attentions.view(k, p, q, d)
        if p == 2 and lambda_me:
            # hinge: d/drel_p = sign_p per active query, / Q; rel = <m̂, n̂>, n̂ = L2(a ⊙ t_i). The L2s' backward
            # (g - y <g, y>) / ||x|| reads <g, y> from rel: <grad_rel m̂, n̂> = grad_rel rel, summed for m̂
            w = (hinge > 0) * (per_query * lambda_me)                                         # (K, Q, 1)
            grad_rel = w.unsqueeze(1) * signs                                                 # (K, 2, Q, 1)
            along = grad_rel * rel
            grad_product = l2_backward(grad_rel * relevance, attended, attended_norm, along)  # d/d(a ⊙ t_i)
            grad_attentions_parts.addcmul_(grad_product, positives)
            grad_positives = grad_t if grad_t.shape[1] == q else grad_t[:, :q]   # no view where G == Q
            grad_positives.add_((grad_product * attentions).sum(1))
            grad_mixed = l2_backward((grad_rel * attended).sum((0, 1)), relevance, relevance_norm, along.sum((0, 1)))
            grad_rows[0, :q].add_(grad_mixed, alpha=1.0 - alpha)
        if p == 2 and lambda_ov:
            # the minimum's gradient: to the smaller attention, halved on ties (torch.minimum's)
            modified, preserved = attentions[:, 0], attentions[:, 1]
            w = per_query * lambda_ov
            tie = (modified == preserved) * 0.5
            grad_attentions_parts[:, 0].addcmul_((modified < preserved) + tie, w)
            grad_attentions_parts[:, 1].addcmul_((preserved < modified) + tie, w)
        grad_text, grad_references, *grad_weights = compose_backward(
            c, grad_rows, grad_attentions, text, references, projection_weight, hidden_weight, output_weight, parts)
        if grad_mixed is not None:
            grad_text.add_(grad_mixed, alpha=alpha)
        return (grad_text, grad_references, grad_t, *grad_weights, grad_log_temperature, *(None,) * 7)


class RetrievalLoss(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.alpha, self.margins = cfg.alpha, cfg.margin_list
        self.lambda_me, self.lambda_ov = cfg.lambda_me, cfg.lambda_ov
        self._constants: dict = {}

    def objective_constants(self, grains: tuple[str, ...], both_parts: bool, device) -> tuple[Tensor, Tensor, Tensor]:
        """CompositionObjective's constants (margins (K, 1, 1), the hinge's signs (2, 1, 1), the terms' weights
        (T, 1)) on `device`, made once per grain set and device: no copy to the device per step."""
        key = (grains, both_parts, str(device))
        if key not in self._constants:
            weights = [[1.0], [self.lambda_me], [self.lambda_ov]] if both_parts else [[1.0]]
            self._constants[key] = (torch.tensor([[[self.margins[g]]] for g in grains], device=device),
                                    torch.tensor([[[-1.0]], [[1.0]]], device=device),
                                    torch.tensor(weights, device=device))
        return self._constants[key]

    def forward(self, model, inputs: TrainingInputs) -> LossOutput:
        """The objective of one step's embeddings (Retriever.forward's): the attention variants compose inside
        CompositionObjective; the others compose with their own compose() and take one cross-entropy per grain."""
        model = getattr(model, "module", model)       # DDP / compile wrappers
        model = getattr(model, "_orig_mod", model)
        grains = tuple(model.grains)
        if hasattr(model, "compositor_weights"):
            with torch.autocast(inputs.text.device.type, enabled=False):
                total, terms = CompositionObjective.apply(
                    full_precision(inputs.text), full_precision(inputs.references), full_precision(inputs.targets),
                    *model.compositor_weights(), full_precision(model.log_temperature),
                    *self.objective_constants(grains, len(model.parts) == 2, inputs.text.device), model.parts,
                    self.alpha, self.lambda_me, self.lambda_ov)
            return LossOutput(total, terms, ("sim", "me", "overlap")[:len(terms)], grains)
        query = model.compose(inputs.reference(grains), inputs.text)
        scores = model.grain_scores(query, inputs.targets)                                   # (K, Q, G)
        sim = cross_entropy_per_grain(full_precision(model.log_temperature).exp() * scores)
        return LossOutput(sim.sum(), sim.unsqueeze(0), ("sim",), grains)
