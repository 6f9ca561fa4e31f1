"""The MANME objective (MANME.md §3, objective, overlap) against its definitions, per variant, and
double-precision gradchecks."""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from config import resolve
from losses import LossOutput, RetrievalLoss
from losses.definitions import objective_by_definition
from models import TrainingInputs, build_model
from models.base import stack_grains
from tests.helpers import ON_RESNET

D = 16


pytestmark = pytest.mark.usefixtures("single_thread")
BOTH_ATTENTIONS = ("manme", "artemis")


@functools.cache
def small(name, lambda_me=None, lambda_ov=0.0, dtype=torch.float32):
    if dtype != torch.float32:
        model, cfg = small(name, lambda_me, lambda_ov)
        return copy.deepcopy(model).to(dtype), cfg
    flags = dict(model=name, backbone="resnet18", backbone_weights="none", embed_dim=D, word_dim=8,
                 lambda_ov=lambda_ov)
    if lambda_me is not None:
        flags["lambda_me"] = lambda_me
    cfg = resolve(flags)
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=20), cfg


def batch(model, b=6, dtype=torch.float32, seed=3):
    gen = torch.Generator().manual_seed(seed)

    def unit():
        return F.normalize(torch.randn(b, D, generator=gen, dtype=dtype), dim=-1)
    return {g: unit() for g in model.grains}, unit(), {g: unit() for g in model.grains}


def inputs(model, reference, text, targets):
    """The loss's input from per-grain dicts (Retriever.forward's layout: grains stacked)."""
    return TrainingInputs(text, stack_grains(reference, model.grains), stack_grains(targets, model.grains))


def definitions(model, cfg, reference, text, targets):
    """sim/me/overlap per grain, written from MANME.md §2 (attention compositor, matmul scoring)-§3 with
    broadcast scores (me and overlap where the variant has both attentions); by autograd, op by op."""
    return objective_by_definition(model, cfg, text, reference, targets)[1]


@pytest.mark.parametrize("lambda_ov", [0.0, 0.5])
def test_manme_loss_matches_definitions(lambda_ov):
    model, cfg = small("manme", lambda_ov=lambda_ov)
    reference, text, targets = batch(model)
    with torch.no_grad():
        out = RetrievalLoss(cfg)(model, inputs(model, reference, text, targets))
        expected = definitions(model, cfg, reference, text, targets)
    assert isinstance(out, LossOutput)
    for key, value in expected.items():
        assert torch.allclose(out.parts[key], value, atol=1e-5), key
    for part in ("sim", "me", "overlap"):
        assert torch.allclose(out.parts[part], sum(out.parts[f"{part}/{g}"] for g in model.grains))
    expected_total = out.parts["sim"] + cfg.lambda_me * out.parts["me"] + lambda_ov * out.parts["overlap"]
    assert torch.allclose(out.total, expected_total)
    assert 0 < out.parts["overlap/coarse"] <= 1


def test_margins_and_alpha_come_from_config():
    model, cfg = small("manme")
    reference, text, targets = batch(model)
    other = resolve({**cfg.to_dict(), "margins": "0.9,0.1,0.0", "alpha": 0.8})
    with torch.no_grad():
        out = RetrievalLoss(other)(model, inputs(model, reference, text, targets))
        expected = definitions(model, other, reference, text, targets)
    for g in model.grains:
        assert torch.allclose(out.parts[f"me/{g}"], expected[f"me/{g}"], atol=1e-5)


@pytest.mark.parametrize("name", ON_RESNET)
def test_parts_per_variant(name):
    model, cfg = small(name)
    reference, text, targets = batch(model)
    out = RetrievalLoss(cfg)(model, inputs(model, reference, text, targets))
    keys = {f"sim/{g}" for g in model.grains} | {"sim"}
    if name in BOTH_ATTENTIONS:
        keys |= {f"{p}/{g}" for p in ("me", "overlap") for g in model.grains} | {"me", "overlap"}
    assert set(out.parts) == keys
    assert out.total.ndim == 0 and torch.isfinite(out.total)
    out.total.backward()
    assert model.log_temperature.grad is not None and model.log_temperature.grad != 0
    model.zero_grad(set_to_none=True)


def test_artemis_preset_has_no_mutual_exclusion_in_total():
    model, cfg = small("artemis")
    assert cfg.lambda_me == 0 and model.grains == ["coarse"]
    reference, text, targets = batch(model)
    out = RetrievalLoss(cfg)(model, inputs(model, reference, text, targets))
    assert torch.equal(out.total, out.parts["sim"])
    assert not out.parts["me"].requires_grad and not out.parts["overlap"].requires_grad  # diagnostics only


def test_parts_are_logged_values_and_the_total_weights_them():
    for lambda_me, lambda_ov in ((1.0, 0.0), (0.0, 0.5)):
        model, cfg = small("manme", lambda_me=lambda_me, lambda_ov=lambda_ov)
        reference, text, targets = batch(model)
        out = RetrievalLoss(cfg)(model, inputs(model, reference, text, targets))
        assert out.total.requires_grad and not any(v.requires_grad for v in out.parts.values())
        expected = out.parts["sim"] + lambda_me * out.parts["me"] + lambda_ov * out.parts["overlap"]
        torch.testing.assert_close(out.total.detach(), expected)


@pytest.mark.parametrize("name,lambda_me,lambda_ov,share", [
    ("manme", 1.0, 0.0, False), ("manme", 0.3, 0.5, False), ("manme", 0.0, 0.0, True), ("artemis", None, 0.0, False),
    ("em-only", None, 0.0, False), ("is-only", None, 0.0, False)])
def test_hand_written_backwards_match_autograd_of_the_definitions(name, lambda_me, lambda_ov, share):
    """CompositionObjective's backward against autograd through `definitions` (op by op), float64:
    the gradient of every parameter (the stacked MLPs, the projection, the temperature) and of the embeddings."""
    flags = dict(model=name, backbone="resnet18", backbone_weights="none", embed_dim=D, word_dim=8,
                 lambda_ov=lambda_ov, share_attention=share, **({} if lambda_me is None else {"lambda_me": lambda_me}))
    cfg = resolve(flags)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=20).double()
    reference, text, targets = batch(model, b=5, dtype=torch.float64)
    embeddings = [*reference.values(), text, *targets.values()]
    for x in embeddings:
        x.requires_grad_(True)

    def gradients(total):
        params = [p for p in model.parameters() if p.requires_grad and p.dtype == torch.float64]
        return torch.autograd.grad(total, params + embeddings, allow_unused=True)

    out = RetrievalLoss(cfg)(model, inputs(model, reference, text, targets))
    expected_total, _ = objective_by_definition(model, cfg, text, reference, targets)
    torch.testing.assert_close(out.total, expected_total)
    for got, want in zip(gradients(out.total), gradients(expected_total)):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_temperature_scales_logits():
    model, cfg = small("cross-modal")
    reference, text, targets = batch(model)
    with torch.no_grad():
        out = RetrievalLoss(cfg)(model, inputs(model, reference, text, targets))
        logits = model.log_temperature.exp() * (text @ targets["coarse"].T)
        assert torch.allclose(out.parts["sim/coarse"], F.cross_entropy(logits, torch.arange(6)), atol=1e-6)


class WithTemperature:
    """The model's scoring with the log-temperature as a gradcheck input."""

    def __init__(self, model, kappa):
        self.model, self.log_temperature = model, kappa

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.mark.parametrize("name", ["manme", "artemis", "tirg", "em-only", "is-only", "late-fusion"])
@pytest.mark.parametrize("lambda_me,lambda_ov", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.5)])
def test_gradcheck_losses(name, lambda_me, lambda_ov):
    """The total, w.r.t. embeddings and kappa, with each term alone beside the cross-entropy."""
    model, cfg = small(name, lambda_me=lambda_me, lambda_ov=lambda_ov, dtype=torch.float64)
    loss_fn = RetrievalLoss(cfg)
    reference, text, targets = batch(model, b=3, dtype=torch.float64)
    grains = model.grains
    leaves = [reference[g] for g in grains] + [text] + [targets[g] for g in grains]
    kappa = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    leaves = [x.clone().requires_grad_(True) for x in leaves] + [kappa]

    def loss(*xs):
        k = len(grains)
        ref, txt, tgt, kappa = dict(zip(grains, xs[:k])), xs[k], dict(zip(grains, xs[k + 1:2 * k + 1])), xs[-1]
        return loss_fn(WithTemperature(model, kappa), inputs(model, ref, txt, tgt)).total

    assert torch.autograd.gradcheck(loss, leaves, eps=1e-6, atol=1e-5)
