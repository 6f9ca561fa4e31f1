import pytest
import torch

from engine.ranking import rank_queries, recall_at

CHUNKS = [(1000, 1000), (37, 101), (7, 10), (16, 33), (5, 1), (1, 7)]  # (query, gallery)


def naive(scores, targets, references, topk=50):
    """One query at a time against the whole gallery, the protocol written out plainly: the gallery sorted
    (stably: equal scores in gallery order), the reference left out; the rank is the first target's place."""
    n_gallery = scores.shape[1]
    k = min(topk, n_gallery - 1 if any(r >= 0 for r in references) else n_gallery)
    ranks, top_index, top_score = [], [], []
    for row, ts, ref in zip(scores, targets, references):
        keep = [g for g in range(n_gallery) if g != ref]
        correct = {t for t in ts if t >= 0 and t != ref}
        order = sorted(keep, key=lambda g: -row[g].item())
        ranks.append(next((n for n, g in enumerate(order) if g in correct), n_gallery))
        top_index.append(order[:k])
        top_score.append([row[g].item() for g in order[:k]])
    return torch.tensor(ranks), torch.tensor(top_index), torch.tensor(top_score)


def problem(n_queries=37, n_gallery=101, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_queries, n_gallery, generator=gen)
    references = torch.randint(0, n_gallery, (n_queries,), generator=gen).tolist()
    targets = [[t] for t in torch.randint(0, n_gallery, (n_queries,), generator=gen).tolist()]
    references[3] = -1  # reference outside the gallery
    targets[4] = [references[4], (references[4] + 1) % n_gallery]  # reference among targets
    targets[5] = [1, 50, 77, 50, -1]  # several targets, a duplicate, a missing one
    targets[6] = []  # no correct target: a miss
    targets[7] = [references[7]]  # only the reference: a miss
    return scores, targets, references


def views(scores):
    return lambda q, g: scores[q, g]  # a view: the engine must not write into it


@pytest.mark.parametrize("mode", ["auto", "pass", "direct"])
@pytest.mark.parametrize("query_chunk,gallery_chunk", CHUNKS)
def test_chunked_equals_naive(mode, query_chunk, gallery_chunk):
    scores, targets, references = problem()
    before = scores.clone()
    ranks, index, score = naive(scores, targets, references, topk=20)
    out = rank_queries(views(scores), *scores.shape, targets, references, topk=20,
                       query_chunk=query_chunk, gallery_chunk=gallery_chunk, target_scoring=mode)
    assert torch.equal(out.ranks, ranks)
    assert torch.equal(out.topk_index, index)
    assert torch.equal(out.topk_score, score)
    assert torch.equal(scores, before)
    assert out.ranks[6] == out.ranks[7] == scores.shape[1]


def test_matmul_score_fn_chunked_equals_unchunked():
    # entries on a 2^-10 grid: every dot product is exact, whatever the matmul blocking
    gen = torch.Generator().manual_seed(1)
    queries = torch.round(torch.randn(300, 32, generator=gen) * 256) / 1024
    gallery = torch.round(torch.randn(500, 32, generator=gen) * 256) / 1024
    targets = [[t] for t in torch.randint(0, 500, (300,), generator=gen).tolist()]
    references = torch.randint(0, 500, (300,), generator=gen).tolist()
    score_fn = lambda q, g: queries[q] @ gallery[g].T  # noqa: E731
    full = rank_queries(score_fn, 300, 500, targets, references, query_chunk=300, gallery_chunk=500)
    ranks, index, score = naive(queries @ gallery.T, targets, references)
    assert torch.equal(full.ranks, ranks) and torch.equal(full.topk_score, score)
    for mode in ("pass", "direct"):
        out = rank_queries(score_fn, 300, 500, targets, references, query_chunk=64,
                           gallery_chunk=96, target_scoring=mode)
        assert torch.equal(out.ranks, full.ranks)
        assert torch.equal(out.topk_index, full.topk_index)
        assert torch.equal(out.topk_score, full.topk_score)


@pytest.mark.parametrize("mode", ["pass", "direct"])
@pytest.mark.parametrize("query_chunk,gallery_chunk", [(9, 13), (40, 60), (3, 7)])
def test_ties_are_broken_by_list_order_as_the_rankings_list_them(mode, query_chunk, gallery_chunk):
    """A tie never lifts a model: the rank is the first target's place in the top-k list (equal scores in
    gallery order), so R@K read from rankings.jsonl equals the reported one."""
    gen = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 4, (40, 60), generator=gen).float()  # many ties
    targets = [[t] for t in torch.randint(0, 60, (40,), generator=gen).tolist()]
    targets[0] = [5, 30, 31]  # several targets, some tied with each other
    references = torch.randint(0, 60, (40,), generator=gen).tolist()
    ranks, index, top_score = naive(scores, targets, references, topk=59)
    out = rank_queries(views(scores), 40, 60, targets, references, topk=59, query_chunk=query_chunk,
                       gallery_chunk=gallery_chunk, target_scoring=mode)
    assert torch.equal(out.ranks, ranks)
    assert torch.equal(out.topk_index, index) and torch.equal(out.topk_score, top_score)
    listed = [next((n for n, g in enumerate(row) if g in ts), 60) for row, ts in zip(out.topk_index.tolist(), targets)]
    assert out.ranks.tolist() == listed
    # every score equal (a collapsed model): the targets are where the gallery order puts them, no better
    flat = torch.zeros(2, 5)
    out = rank_queries(views(flat), 2, 5, [[3], [0]], [1, -1], target_scoring=mode)
    assert out.ranks.tolist() == [2, 0] and out.ties.tolist() == [3, 4]
    assert out.topk_index.tolist() == [[0, 2, 3, 4], [0, 1, 2, 3]]


def test_a_collapsed_model_is_not_lifted_by_ties():
    """All scores equal: R@1 is the share of queries whose target comes first in gallery order (~1/G), not
    ~100% as when ties counted for the target."""
    n = 200
    gen = torch.Generator().manual_seed(3)
    targets = [[t] for t in torch.randint(0, n, (n,), generator=gen).tolist()]
    references = list(range(n))
    out = rank_queries(views(torch.ones(n, n)), n, n, targets, references, gallery_chunk=64)
    first = [0 if r != 0 else 1 for r in references]  # the first gallery item other than the reference
    assert recall_at(out.ranks, ks=(1,))["R@1"] == pytest.approx(
        100.0 * sum(t[0] == f for t, f in zip(targets, first)) / n)
    assert recall_at(out.ranks, ks=(1,))["R@1"] < 5.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_refused_not_ranked(bad):
    """A NaN compares false with everything: ranked, every target would come first (R@1 = 100)."""
    from engine.ranking import NonFiniteScores, check_finite
    scores = torch.randn(4, 6)
    scores[2, 3] = bad
    with pytest.raises(NonFiniteScores, match="NaN or infinite"):
        check_finite(scores, "scores")
    if bad != bad:  # NaN: rank_queries itself refuses it, whoever calls it, with or without a top k
        wide = torch.randn(4, 300)
        wide[2, 123] = bad
        for topk in (0, 5):
            with pytest.raises(NonFiniteScores):
                rank_queries(views(wide), 4, 300, [[0]] * 4, [1] * 4, topk=topk, gallery_chunk=64)


def test_reference_excluded_from_topk_and_count():
    scores, targets, references = problem()
    scores[torch.arange(37), torch.tensor(references).clamp(min=0)] = 100.0  # references on top
    out = rank_queries(views(scores), 37, 101, targets, references, topk=100, gallery_chunk=16)
    assert out.topk_index.shape == (37, 100)
    for i, ref in enumerate(references):
        assert ref not in out.topk_index[i].tolist()
        assert len(set(out.topk_index[i].tolist())) == 100
    assert torch.equal(out.ranks, naive(scores, targets, references)[0])


def test_multiple_targets_take_the_best():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    for ts, rank in [([4, 2], 2), ([5, 1, 3], 1), ([0], 0), ([5], 5)]:
        out = rank_queries(views(scores), 1, 6, [ts], [-1], gallery_chunk=4)
        assert out.ranks.tolist() == [rank]
    # the reference (index 0) neither counts nor is a target
    assert rank_queries(views(scores), 1, 6, [[0, 2]], [0], gallery_chunk=4).ranks.tolist() == [1]


def test_direct_mode_target_never_counts_against_itself():
    # 1x1 calls round differently from blocks (here: slightly lower), as a GEMV vs a GEMM can
    scores, targets, references = problem()

    def score_fn(q, g):
        block = scores[q, g]
        return block - 1e-6 * block.abs() if block.shape == (1, 1) else block

    out = rank_queries(score_fn, 37, 101, targets, references, gallery_chunk=10,
                       target_scoring="direct")
    assert torch.equal(out.ranks, naive(scores, targets, references)[0])


def test_k_small_gallery_and_empty():
    scores = torch.randn(3, 5)
    assert rank_queries(views(scores), 3, 5, [[0]] * 3, [1, 2, 3]).topk_index.shape == (3, 4)
    assert rank_queries(views(scores), 3, 5, [[0]] * 3, [-1] * 3).topk_index.shape == (3, 5)
    out = rank_queries(views(scores), 0, 5, [], [])
    assert out.ranks.shape == (0,) and out.topk_index.shape == (0, 5)


def test_bad_inputs():
    scores = torch.randn(2, 5)
    with pytest.raises(ValueError, match="query 1"):
        rank_queries(views(scores), 2, 5, [[0], [5]], [-1, -1])
    with pytest.raises(ValueError, match="empty"):
        rank_queries(views(scores), 2, 0, [[], []], [-1, -1])
    with pytest.raises(ValueError, match="2 queries"):
        rank_queries(views(scores), 2, 5, [[0]], [-1, -1])


def test_recall_at():
    ranks = torch.tensor([0, 5, 9, 10, 49, 50, 100, 0])
    assert recall_at(ranks) == {"R@1": 25.0, "R@10": 50.0, "R@50": 75.0}
    assert recall_at([0, 1], ks=(1, 2)) == {"R@1": 50.0, "R@2": 100.0}


def test_a_reference_tied_with_the_target_never_counts():
    """The reference scores exactly the target's score and comes first in the gallery: it is left out, so the
    target is first (rank 0); another tie before the target counts."""
    scores = torch.tensor([[0.5, 0.1, 0.5, 0.2], [0.5, 0.5, 0.5, 0.2]])
    out = rank_queries(views(scores), 2, 4, [[2], [2]], [0, 0])
    assert out.ranks.tolist() == [0, 1] and out.ties.tolist() == [0, 1]
