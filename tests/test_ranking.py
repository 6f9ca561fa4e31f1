import pytest
import torch

from engine.ranking import rank_queries, recall_at

CHUNKS = [(1000, 1000), (37, 101), (7, 10), (16, 33), (5, 1), (1, 7)]  # (query, gallery)


def naive(scores, targets, references, topk=50):
    """One query at a time against the whole gallery, the protocol written out plainly."""
    n_gallery = scores.shape[1]
    k = min(topk, n_gallery - 1 if any(r >= 0 for r in references) else n_gallery)
    ranks, top_index, top_score = [], [], []
    for row, ts, ref in zip(scores, targets, references):
        keep = [g for g in range(n_gallery) if g != ref]
        correct = [t for t in ts if t >= 0 and t != ref]
        best = max(row[t].item() for t in correct) if correct else None
        ranks.append(n_gallery if best is None else sum(row[g].item() > best for g in keep))
        order = sorted(keep, key=lambda g: -row[g].item())[:k]
        top_index.append(order)
        top_score.append([row[g].item() for g in order])
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
def test_ties_do_not_count_against_the_target(mode):
    gen = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 4, (40, 60), generator=gen).float()  # many ties
    targets = [[t] for t in torch.randint(0, 60, (40,), generator=gen).tolist()]
    references = torch.randint(0, 60, (40,), generator=gen).tolist()
    ranks, _, top_score = naive(scores, targets, references, topk=10)
    out = rank_queries(views(scores), 40, 60, targets, references, topk=10, query_chunk=9,
                       gallery_chunk=13, target_scoring=mode)
    assert torch.equal(out.ranks, ranks)
    assert torch.equal(out.topk_score, top_score)  # indices among equal scores may differ
    assert torch.equal(scores.gather(1, out.topk_index), out.topk_score)
    # a target tied with every other item has rank 0
    flat = torch.zeros(2, 5)
    out = rank_queries(views(flat), 2, 5, [[3], [0]], [1, -1], target_scoring=mode)
    assert out.ranks.tolist() == [0, 0]


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
