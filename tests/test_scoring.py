"""Matmul scoring (MANME.md §2, attention compositor, matmul scoring) against a naive broadcast reference that
materialises A_i ⊙ t_j for all pairs."""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from config import resolve
from models import VARIANTS, build_model, map_tensors
from models.attention import AttentionQuery, AttentionRetriever
from models.base import stack_grains
from models.baselines import EmbeddingQuery
from tests.helpers import ON_RESNET

D = 16


pytestmark = pytest.mark.usefixtures("single_thread")


@functools.cache
def small_model(name, grains="coarse,mid,fine", dtype=torch.float32, share_attention=False):
    if dtype != torch.float32:
        model, cfg = small_model(name, grains, torch.float32, share_attention)
        return copy.deepcopy(model).to(dtype), cfg
    cfg = resolve(dict(model=name, backbone="resnet18", backbone_weights="none", embed_dim=D, word_dim=8,
                       grains=grains, share_attention=share_attention))
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=20), cfg


def random_inputs(model, q=5, g=7, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)

    def unit(n):
        return F.normalize(torch.randn(n, D, generator=gen, dtype=dtype), dim=-1)
    reference = {grain: unit(q) for grain in model.grains}
    targets = {grain: unit(g) for grain in model.grains}
    return reference, unit(q), targets


def pairwise_attended_cosine(u, a, t):
    """<u_i, L2(a_i ⊙ t_j)> by broadcasting: materialises the (Q, G, d) tensor a_i ⊙ t_j."""
    return (u[:, None, :] * F.normalize(a[:, None, :] * t[None, :, :], dim=-1)).sum(-1)


def broadcast_scores(model, reference, text, targets):
    """grain -> (Q, G), written from MANME.md §2 (attention compositor, matmul scoring)/§4 independently of the
    models' scoring code."""
    name = type(model).__name__
    out = {}
    for g in model.grains:
        r, t = reference[g], targets[g]
        if name in ("MANME", "ARTEMIS", "EMOnly", "ISOnly"):
            block, s = model.block(g), 0
            if block.modification is not None:
                projection = F.normalize(model.text_projection(text), dim=-1)
                s = s + pairwise_attended_cosine(projection, block.modification(text), t)
            if block.preservation is not None:
                a = block.preservation(text)
                s = s + pairwise_attended_cosine(F.normalize(a * r, dim=-1), a, t)
        else:
            if name == "TIRG":
                composed = F.normalize(model.composers[g if g in model.composers else "shared"](r, text), dim=-1)
            elif name == "LateFusion":
                composed = F.normalize(r + text, dim=-1)
            elif name == "CrossModal":
                composed = text
            elif name == "VisualSearch":
                composed = r
            else:
                raise KeyError(name)
            s = (composed[:, None, :] * t[None, :, :]).sum(-1)
        out[g] = s
    return out


def test_cli_model_choices_come_from_the_registry():
    from config import build_parser
    action = next(a for a in build_parser("model", "")._actions if a.dest == "model")
    assert list(action.choices) == list(VARIANTS)


@pytest.mark.parametrize("name", ON_RESNET)
@pytest.mark.parametrize("share", [False, True])
def test_matmul_scores_equal_broadcast_reference(name, share):
    model, _ = small_model(name, share_attention=share)
    reference, text, targets = random_inputs(model)
    with torch.no_grad():
        query = model.compose(reference, text)
        ours = model.score_per_grain(query, targets)
        naive = broadcast_scores(model, reference, text, targets)
        total = model.score(query, targets)
    assert set(ours) == set(model.grains)
    for g in model.grains:
        assert ours[g].shape == (5, 7)
        assert (ours[g] - naive[g]).abs().max() <= 1e-5, (name, g)
    assert (total - sum(naive.values())).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ON_RESNET)
def test_kept_target_squares_score_as_computed_ones(name):
    """The search server keeps model.target_squares of its stacked index (t ⊙ t, attention variants) and hands
    them to every query's grain_scores(): the scores are those computed without them, bit for bit, and the kept
    squares are what is read (another row's squares change the scores). Summed over the grains they are score()'s
    within float32 rounding."""
    model, _ = small_model(name)
    reference, text, targets = random_inputs(model)
    stacked = stack_grains(targets, model.grains)
    with torch.no_grad():
        query = model.compose(reference, text)
        squares = model.target_squares(stacked)
        plain = model.grain_scores(query, stacked)
        assert torch.equal(model.grain_scores(query, stacked, squares), plain)
        assert (plain.sum(0) - model.score(query, targets)).abs().max() <= 1e-6
        if squares is None:  # dot-product variants: nothing to keep
            assert not isinstance(model, AttentionRetriever)
            return
        assert torch.equal(squares, stacked * stacked)
        shifted = squares.roll(1, 1)
        assert not torch.allclose(model.grain_scores(query, stacked, shifted), plain, atol=1e-3)


@pytest.mark.parametrize("grains", ["coarse", "mid", "fine", "coarse,fine", "coarse,mid,fine"])
def test_score_sums_the_configured_grains(grains):
    model, _ = small_model("manme", grains)
    reference, text, targets = random_inputs(model)
    with torch.no_grad():
        query = model.compose(reference, text)
        parts = model.score_per_grain(query, targets)
        assert list(parts) == grains.split(",")
        assert torch.allclose(model.score(query, targets), sum(parts.values()))


def test_score_parts_are_named_and_consistent():
    model, _ = small_model("manme")
    reference, text, targets = random_inputs(model)
    with torch.no_grad():
        query = model.compose(reference, text)
        parts = model.score_parts(query, targets)
        per_grain = model.score_per_grain(query, targets)
    for g in model.grains:
        assert torch.allclose(parts[f"modified/{g}"] + parts[f"preserved/{g}"], parts[f"score/{g}"])
        assert torch.allclose(parts[f"score/{g}"], per_grain[g])
        for a in ("modification_attention", "preserve_attention"):
            assert parts[f"{a}/{g}"].shape == (5, D)
            assert torch.allclose(parts[f"{a}/{g}"].sum(-1), torch.ones(5))  # softmax over channels
    em_only = small_model("em-only")[0]
    with torch.no_grad():
        parts = em_only.score_parts(em_only.compose(reference, text), targets)
    assert "modified/coarse" in parts and "preserved/coarse" not in parts and "preserve_attention/coarse" not in parts


@pytest.mark.parametrize("name", ["manme", "tirg"])
def test_query_slicing_and_map_tensors(name):
    model, _ = small_model(name)
    reference, text, targets = random_inputs(model, q=6)
    with torch.no_grad():
        query = model.compose(reference, text)
        full = model.score(query, targets)
        assert len(query) == 6
        assert isinstance(query, AttentionQuery if name == "manme" else EmbeddingQuery)
        assert torch.allclose(model.score(query[2:5], targets), full[2:5])
        assert torch.allclose(model.score(query.slice(0, 2), targets), full[:2])
        index = torch.tensor([4, 1])
        assert torch.allclose(model.score(map_tensors(query, lambda t: t[index]), targets), full[index])
        double = query.to(torch.float64)
        assert first_dtype(double) == torch.float64 and len(double) == 6
        assert torch.allclose(model.score(query, {g: t[3:] for g, t in targets.items()}), full[:, 3:])


def first_dtype(query):
    dtypes = []
    map_tensors(query, lambda t: dtypes.append(t.dtype) or t)
    return dtypes[0]


def test_map_tensors_on_nested_containers():
    obj = {"a": [torch.ones(3), (torch.zeros(3), 5)], "b": "text", "c": None}
    out = map_tensors(obj, lambda t: t[:2])
    assert out["a"][0].shape == (2,) and out["a"][1][0].shape == (2,) and out["a"][1][1] == 5
    assert out["b"] == "text" and out["c"] is None


def test_scores_stay_float32_under_autocast():
    model, _ = small_model("manme")
    reference, text, targets = random_inputs(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        query = model.compose(reference, text)
        scores = model.score(query, {g: t.bfloat16() for g, t in targets.items()})
    assert scores.dtype == torch.float32


@pytest.mark.parametrize("name", ON_RESNET)
def test_gradcheck_scoring(name):
    model, _ = small_model(name, dtype=torch.float64)
    reference, text, targets = random_inputs(model, q=2, g=3, dtype=torch.float64)
    grains = model.grains
    inputs = [reference[g] for g in grains] + [text] + [targets[g] for g in grains]
    inputs = [x.clone().requires_grad_(True) for x in inputs]

    def scores(*xs):
        k = len(grains)
        ref, txt, tgt = dict(zip(grains, xs[:k])), xs[k], dict(zip(grains, xs[k + 1:]))
        return model.score(model.compose(ref, txt), tgt)

    assert torch.autograd.gradcheck(scores, inputs, eps=1e-6, atol=1e-5)


def test_attended_cosine_backward_and_inference_mode():
    from models.attention import attended_cosine
    gen = torch.Generator().manual_seed(4)
    u, t = torch.randn(3, 6, generator=gen, dtype=torch.float64), torch.randn(4, 6, generator=gen, dtype=torch.float64)
    a = torch.softmax(torch.randn(3, 6, generator=gen, dtype=torch.float64), -1)
    inputs = [x.clone().requires_grad_(True) for x in (u, a, t)]
    assert torch.autograd.gradcheck(attended_cosine, inputs, eps=1e-6, atol=1e-7)
    only_target = [u, a, t.clone().requires_grad_(True)]                  # partial needs_input_grad
    assert torch.autograd.gradcheck(attended_cosine, only_target, eps=1e-6, atol=1e-7)
    with torch.inference_mode():
        scores = attended_cosine(u.float(), a.float(), t.float())
    assert (scores - pairwise_attended_cosine(u, a, t)).abs().max() <= 1e-5


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the products that take the oneDNN path (skips where this torch lacks it)."""
    from models import products
    if products._ONEDNN_MATMUL is None:
        pytest.skip("this torch build has no oneDNN matmul")
    calls, onednn = [], products._ONEDNN_MATMUL

    def counted(*args):
        calls.append(args[0].shape)
        return onednn(*args)
    monkeypatch.setattr(products, "_ONEDNN_MATMUL", counted)
    return calls


def test_pairwise_dot_paths_agree(onednn_calls):
    from models.products import ONEDNN_MIN_OUTPUTS, pairwise_dot
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(1030, 24, generator=gen), torch.randn(ONEDNN_MIN_OUTPUTS // 1000, 24, generator=gen)
    exact = (a.double() @ b.double().T).float()
    with torch.inference_mode():
        assert torch.allclose(pairwise_dot(a, b), exact, atol=1e-5) and len(onednn_calls) == 1
        assert torch.allclose(pairwise_dot(a[:10], b), exact[:10], atol=1e-5) and len(onednn_calls) == 1
        pairwise_dot(a.double(), b.double())                       # float64: torch's product
    assert len(onednn_calls) == 1
    leaf = a.clone().requires_grad_(True)                          # autograd: torch's product
    pairwise_dot(leaf, b).sum().backward()
    assert len(onednn_calls) == 1 and torch.allclose(leaf.grad, b.sum(0).expand_as(a))


def query_rows(query, start, stop):
    """Queries start:stop of a composed query batch."""
    return map_tensors(query, lambda t: t[start:stop])


@pytest.mark.parametrize("name", ["manme", "tirg"])
def test_evaluation_sized_scores_match_small_chunks(name, onednn_calls):
    """A 1024 x 1100 block (oneDNN) scores the same as 64-query slices of it (torch's product)."""
    model, _ = small_model(name)
    reference, text, targets = random_inputs(model, q=1024, g=1100)
    with torch.inference_mode():
        query = model.compose(reference, text)
        whole = model.score(query, targets)
        assert onednn_calls, "the evaluation-sized product did not take the oneDNN path"
        n_calls = len(onednn_calls)
        sliced = torch.cat([model.score(query_rows(query, i, i + 64), targets) for i in range(0, 1024, 64)])
    assert len(onednn_calls) == n_calls
    assert torch.allclose(whole, sliced, atol=1e-5)
