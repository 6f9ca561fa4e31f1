"""The MANME objective (MANME.md §3, objective, overlap).

    L = sum_g CE(tau · S^g, diag)                       sim-level matching, tau = exp(kappa)
      + lambda_me · sum_g mean_i max(0, delta_g + rel_pre - rel_mod)   mutual exclusion
      + lambda_ov · sum_g mean_i sum_k min(A_mod, A_pre)               overlap (optional)

with rel_* = < m̂_i, L2(A_*_i ⊙ t_i) > and m̂ = L2(alpha m + (1 - alpha) Tr_m).
Every total in `parts` is the sum over grains. The mutual-exclusion and overlap
terms exist for variants with both attentions (manme, artemis); when their weight
is 0 they are still computed, as diagnostics.

For the attention compositor's queries, scores and every term are one autograd function (`AttentionObjective`)
over the stacked grains and parts, with a hand-written backward: a training step is bound by launches, not
arithmetic (BENCHMARKS.md). Other variants take the generic path: their grain scores, one cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from models.attention import AttentionQuery, cosine_backward, cosine_forward, l2_backward, l2_forward
from models.base import stack_grains
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


class AttentionObjective(torch.autograd.Function):
    """Scores, cross-entropy, mutual exclusion and overlap of every grain at once, from Compose's stacks:
    rows u and attentions a (K, P, Q, d), the text m (Q, d), targets t (K, G, d) (the first Q are the positives),
    the log-temperature kappa and the margins (K, 1). Returns the total, sum_g sim + lambda_me sum_g me +
    lambda_ov sum_g overlap, and the terms (T, K) (sim; me and overlap with both parts): values to log, without
    a gradient. Terms of weight 0 are computed in the forward only."""

    @staticmethod
    def forward(ctx, rows: Tensor, attentions: Tensor, text: Tensor, targets: Tensor, log_temperature: Tensor,
                margins: Tensor, alpha: float, lambda_me: float, lambda_ov: float):
        ctx.set_materialize_grads(False)
        k, p, q, d = rows.shape
        u, a = rows.view(k, p * q, d), attentions.view(k, p * q, d)
        scores, inv_norm, products = cosine_forward(u, a, targets)
        scores, inv_norm = scores.view(k, p, q, -1), inv_norm.view(k, p, q, -1)
        grain_scores = scores.sum(1)                                                        # (K, Q, G)
        scale = log_temperature.exp()
        logits = grain_scores * scale
        log_normaliser = logits.logsumexp(-1, keepdim=True)                                 # (K, Q, 1)
        sim = (log_normaliser.squeeze(-1) - logits.diagonal(dim1=-2, dim2=-1)).mean(-1)
        total, terms = sim.sum(), [sim]
        attended = attended_norm = relevance = relevance_norm = hinge = None
        if p == 2:
            relevance, relevance_norm = l2_forward(torch.lerp(rows[0, 0], text, alpha))     # m̂ (Q, d)
            attended, attended_norm = l2_forward(attentions * targets[:, None, :q])   # L2(a ⊙ t_i) (K, 2, Q, d)
            rel = (attended * relevance).sum(-1)                                              # (K, 2, Q)
            hinge = torch.add(rel[:, 1] - rel[:, 0], margins).relu_()                          # margins (K, 1)
            overlap = torch.minimum(attentions[:, 0], attentions[:, 1]).sum(-1).mean(-1)
            terms += [hinge.mean(-1), overlap]
            if lambda_me:
                total = total + lambda_me * terms[1].sum()
            if lambda_ov:
                total = total + lambda_ov * overlap.sum()
        terms = torch.stack(terms)
        ctx.mark_non_differentiable(terms)
        ctx.constants = (alpha, lambda_me, lambda_ov)
        ctx.save_for_backward(u, a, attentions, text, targets, scores, inv_norm, grain_scores, logits, log_normaliser,
                              scale, attended, attended_norm, relevance, relevance_norm, hinge, *products)
        return total, terms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: Tensor | None, grad_terms: None):
        if grad_total is None:
            return (None,) * 9
        (u, a, attentions, text, targets, scores, inv_norm, grain_scores, logits, log_normaliser, scale,
         attended, attended_norm, relevance, relevance_norm, hinge, *products) = ctx.saved_tensors
        alpha, lambda_me, lambda_ov = ctx.constants
        k, p, q, d = attentions.shape
        # cross-entropy: d/dlogits = (softmax - I) / Q per grain; the temperature's gradient reads it before the
        # scale that makes it the scores' gradient
        grad_logits = logits.sub(log_normaliser).exp_()
        grad_logits.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        grad_scores = grad_logits.mul_(grad_total * scale / q)                              # d/d(grain scores)
        grad_log_temperature = torch.dot(grad_scores.view(-1), grain_scores.view(-1))
        grad_u, grad_a, grad_t = cosine_backward(grad_scores.unsqueeze(1), u, a, targets, scores, inv_norm,
                                                 (True, True, True), products)            # both parts
        grad_rows, grad_attentions, grad_text = grad_u.view(k, p, q, d), grad_a.view(k, p, q, d), None
        if p == 2 and lambda_me:
            # hinge: d/drel_pre = +1, d/drel_mod = -1 per active query, / Q; rel = <m̂, n̂>, n̂ = L2(a ⊙ t)
            w = (hinge > 0) * (grad_total * (lambda_me / q))                                 # (K, Q)
            grad_rel = torch.stack((-w, w), 1).unsqueeze(-1)                                  # (K, 2, Q, 1)
            grad_product = l2_backward(grad_rel * relevance, attended, attended_norm)        # d/d(a ⊙ t)
            grad_attentions.addcmul_(grad_product, targets[:, None, :q])
            grad_t[:, :q].add_((grad_product * attentions).sum(1))
            grad_mixed = l2_backward((grad_rel * attended).sum((0, 1)), relevance, relevance_norm)
            grad_text = grad_mixed * alpha
            grad_rows[0, 0].add_(grad_mixed, alpha=1.0 - alpha)
        if p == 2 and lambda_ov:
            # torch.minimum's gradient: to the smaller attention, halved on ties
            modified, preserved = attentions[:, 0], attentions[:, 1]
            w = grad_total * (lambda_ov / q)
            tie = (modified == preserved) * 0.5
            grad_attentions[:, 0].addcmul_((modified < preserved) + tie, w)
            grad_attentions[:, 1].addcmul_((preserved < modified) + tie, w)
        return grad_rows, grad_attentions, grad_text, grad_t, grad_log_temperature, None, None, None, None


class RetrievalLoss(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.alpha, self.margins = cfg.alpha, cfg.margin_list
        self.lambda_me, self.lambda_ov = cfg.lambda_me, cfg.lambda_ov
        self._margin_tensors: dict = {}

    def margin_tensor(self, grains, device) -> Tensor:
        """(K, 1) the margins of `grains`, made once per grain set and device (no copy to the device per step)."""
        key = (tuple(grains), str(device))
        if key not in self._margin_tensors:
            self._margin_tensors[key] = torch.tensor([[self.margins[g]] for g in grains], device=device)
        return self._margin_tensors[key]

    def forward(self, model, query, targets: dict[str, Tensor]) -> LossOutput:
        model = getattr(model, "module", model)       # DDP / compile wrappers
        model = getattr(model, "_orig_mod", model)
        if isinstance(query, AttentionQuery):
            return self.attention_objective(model, query, targets)
        if hasattr(model, "grain_scores"):
            grains = list(model.grains)
            scores = model.grain_scores(query, stack_grains(targets, grains))              # (K, Q, G)
        else:  # anything with score_per_grain (benchmarks' reference scorers)
            per_grain = model.score_per_grain(query, targets)
            grains, scores = list(per_grain), torch.stack(list(per_grain.values()))
        scale = full_precision(model.log_temperature).exp()
        sim = cross_entropy_per_grain(scale * scores)
        return LossOutput(sim.sum(), sim.unsqueeze(0), ("sim",), tuple(grains))

    def attention_objective(self, model, query: AttentionQuery, targets: dict[str, Tensor]) -> LossOutput:
        grains = query.grains
        with torch.autocast(query.text.device.type, enabled=False):
            total, terms = AttentionObjective.apply(
                *query.stacked(), query.text, full_precision(stack_grains(targets, grains)),
                full_precision(model.log_temperature), self.margin_tensor(grains, query.text.device), self.alpha,
                self.lambda_me, self.lambda_ov)
        return LossOutput(total, terms, ("sim", "me", "overlap")[:len(terms)], grains)
