"""Ranking engine for evaluation: ranks, top-k lists and recalls in bounded memory.

`rank_queries` scores the queries against the gallery one block (query chunk x gallery chunk)
at a time, so memory is bounded by query_chunk x gallery_chunk, never queries x gallery.

The gallery order of a query is by score, best first, equal scores in gallery order (lower index
first), its reference image left out: the order of the top-k lists (rankings.jsonl), as a stable
sort gives it. A query's rank is the position in that order of its first correct target, so R@K
is exactly "a target is among the first K of the list" and a tie never lifts a model (the
published scripts sort, which breaks a tie by list order too; the rule before this one counted
every tie in the target's favour, which gave a collapsed model with all scores equal R@1 ~ 75).
`ties` counts, per query, the other gallery items scoring exactly the target's score, so a reader
can see whether ties matter. Conventions:
- references[i] == -1: the reference is not in the gallery (nothing is excluded).
- targets[i] may list several correct gallery indices (Fashion200k). Negative entries and the
  reference itself are ignored; a query left with no correct target in the gallery is a miss:
  rank = n_gallery, counted by no R@K with K <= n_gallery (larger K are degenerate anyway:
  every query with a target is then a hit).
- Scores must be finite: a NaN compares false with everything and would rank every target first.
  rank_queries refuses a NaN; the callers (engine.inference.rank_gallery, the CIRR subsets) check
  the model's scores with `check_finite` before anything is ranked.

Design. Counting "strictly higher" needs each query's best target score before its gallery
pass, and score_fn only scores slices. Two exact ways to get it (`target_scoring`):
- "pass": a first pass over the gallery chunks holding targets, reading the target columns of
  each block. Up to one more gallery pass but no extra calls; the last block of that pass is
  kept and reused, so a gallery that fits one chunk (FashionIQ, Shoes) is scored only once.
- "direct": one 1x1 score_fn call per (query, target). On a CPU a call costs tens of
  microseconds while a 1024 x 8192 block costs a few tenths of a second, so this halves the
  work on large galleries; on a GPU the calls cost kernel launches and a block ~1 ms.
"auto" takes "pass" when the gallery fits one chunk or scores live off the CPU, else "direct".
A 1x1 score may round differently from the same pair inside a block, so the count skips the
query's own target columns (in exact arithmetic none scores above the best one): a target
never counts against itself.
Top-k: each block gives its top k+1 (room for the excluded reference), equal scores in gallery
order (torch.topk leaves their order open: a row whose cut-off score is shared beyond the cut is
sorted stably instead), merged with the running top k in the same order.
"""
from dataclasses import dataclass

import torch
from tqdm import tqdm

from utils.errors import UserError


class NonFiniteScores(UserError):
    """The model gave NaN or infinite embeddings or scores: its weights are broken, nothing can be ranked."""


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """`x` itself; a NonFiniteScores naming `what` when any value is NaN or infinite."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteScores(
            f"{bad} of {x.numel()} {what} are NaN or infinite: the model's weights are broken (a diverged "
            f"update, e.g. a too large --lr), so nothing can be ranked and no figure is reported. Use an earlier "
            f"checkpoint, or train again with a lower --lr")
    return x


@dataclass
class RankResult:
    ranks: torch.Tensor  # (Q,) long: gallery items scoring strictly higher than the best target
    topk_index: torch.Tensor  # (Q, k) long: gallery indices, best first, reference excluded
    topk_score: torch.Tensor  # (Q, k)
    ties: torch.Tensor  # (Q,) long: other gallery items scoring exactly the best target's score


def _chunks(n, size):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _correct_targets(targets, references, n_queries, n_gallery) -> list[list[int]]:
    """Per query: its correct targets, sorted, reference and negatives dropped; bad input raises."""
    if len(targets) != n_queries or len(references) != n_queries:
        raise ValueError(f"{n_queries} queries but {len(targets)} target lists "
                         f"and {len(references)} references")
    if n_gallery < 1:
        raise ValueError("the gallery is empty")
    correct = []
    for i, (ts, ref) in enumerate(zip(targets, references)):
        if not -1 <= ref < n_gallery or any(t >= n_gallery for t in ts):
            raise ValueError(f"query {i}: reference {ref} or targets {list(ts)} outside "
                             f"the gallery of {n_gallery} items")
        correct.append(sorted({t for t in ts if t >= 0 and t != ref}))
    return correct


@dataclass
class _Chunk:
    """One query chunk's (row, column) pairs that are never counted: correct targets first, then references."""
    queries: slice
    rows: torch.Tensor
    cols: torch.Tensor
    is_target: torch.Tensor
    n_targets: int
    ref_col: torch.Tensor      # (nq, 1) each query's reference column, -1 for none

    @classmethod
    def build(cls, qs: slice, correct: list[list[int]], references: list[int], device) -> "_Chunk":
        nq = qs.stop - qs.start
        rows = [r for r in range(nq) for _ in correct[qs.start + r]]
        cols = [t for i in range(qs.start, qs.stop) for t in correct[i]]
        n_targets = len(rows)
        refs = references[qs.start:qs.stop]
        rows += [r for r in range(nq) if refs[r] >= 0]
        cols += [ref for ref in refs if ref >= 0]
        long = dict(dtype=torch.long, device=device)
        rows, cols = torch.tensor(rows, **long), torch.tensor(cols, **long)
        return cls(qs, rows, cols, torch.arange(len(rows), device=device) < n_targets, n_targets,
                   torch.tensor(refs, **long)[:, None])

    def in_block(self, gs: slice) -> torch.Tensor:
        return (self.cols >= gs.start) & (self.cols < gs.stop)


def _best_target_scores(score_fn, chunk: _Chunk, g_chunks, mode: str, dtype, device, n_gallery: int):
    """(each query's best target score, the first gallery column of a target with that score (n_gallery for
    none), (gallery slice, block) kept from the target pass or None)."""
    qs = chunk.queries
    nq = qs.stop - qs.start
    best = torch.full((nq,), float("-inf"), dtype=dtype, device=device)
    block = cached = None
    rows, cols, values = chunk.rows[:0], chunk.cols[:0], best[:0]
    if mode == "pass":
        found = []
        for gs in g_chunks:
            sel = chunk.is_target & chunk.in_block(gs)
            if sel.any():
                block = cached = None  # release the previous block before scoring the next
                block = score_fn(qs, gs)
                r, c = chunk.rows[sel], chunk.cols[sel]
                found.append((r, c, block[r, c - gs.start].to(dtype)))
                cached = (gs, block)
        if found:
            rows, cols, values = (torch.cat(x) for x in zip(*found))
    elif chunk.n_targets:
        n = chunk.n_targets
        rows, cols = chunk.rows[:n], chunk.cols[:n]
        values = torch.stack([score_fn(slice(qs.start + r, qs.start + r + 1), slice(c, c + 1)).reshape(())
                              for r, c in zip(rows.tolist(), cols.tolist())]).to(dtype)
    best.scatter_reduce_(0, rows, values, "amax")
    first = torch.full((nq,), n_gallery, dtype=torch.long, device=device)
    at_best = values == best[rows]
    first.scatter_reduce_(0, rows[at_best], cols[at_best], "amin")
    return best, first, cached


@torch.inference_mode()
def rank_queries(score_fn, n_queries, n_gallery, targets, references, topk=50,
                 query_chunk=1024, gallery_chunk=8192, progress=False, target_scoring="auto"):
    """Rank every query against the gallery; see the module docstring for the rules.

    score_fn(q: slice, g: slice) -> Tensor (nq, ng): scores of queries q against gallery items g;
    never written into, but one block may be kept across calls, so no reused output buffers.
    target_scoring: "auto", "pass" or "direct", how best-target scores are found (all exact).
    progress: a tqdm bar over query chunks. Returns a RankResult on the CPU with
    k = min(topk, n_gallery - 1), or min(topk, n_gallery) when no reference is in the gallery.
    """
    if target_scoring not in ("auto", "pass", "direct"):
        raise ValueError(f"target_scoring must be auto, pass or direct, not {target_scoring!r}")
    correct = _correct_targets(targets, references, n_queries, n_gallery)
    k = max(0, min(topk, n_gallery - 1 if any(r >= 0 for r in references) else n_gallery))
    if n_queries == 0:
        return RankResult(torch.empty(0, dtype=torch.long), torch.empty(0, k, dtype=torch.long),
                          torch.empty(0, k), torch.empty(0, dtype=torch.long))

    probe = score_fn(slice(0, 1), slice(0, 1))
    device, dtype = probe.device, probe.dtype
    g_chunks = _chunks(n_gallery, min(gallery_chunk, 2**24))  # 2^24: float32 counts stay exact
    mode = target_scoring
    if mode == "auto":
        mode = "pass" if len(g_chunks) == 1 or device.type != "cpu" else "direct"

    ranks, top_index, top_score, ties = [], [], [], []
    above = None  # (query chunk, gallery chunk) float32 buffer for the "scores above best" count
    for qs in tqdm(_chunks(n_queries, query_chunk), desc="ranking", disable=not progress):
        chunk = _Chunk.build(qs, correct, references, device)
        best, first, cached = _best_target_scores(score_fn, chunk, g_chunks, mode, dtype, device, n_gallery)
        nq = qs.stop - qs.start
        count = torch.zeros(nq, dtype=torch.long, device=device)   # items scoring above the best target
        tied = torch.zeros(nq, dtype=torch.long, device=device)    # items scoring the same
        before = torch.zeros(nq, dtype=torch.long, device=device)  # ... and listed before its first target
        run_score = torch.empty(nq, 0, dtype=dtype, device=device)
        run_index = torch.empty(nq, 0, dtype=torch.long, device=device)
        # Each block is released before the next is scored, so that the allocator can hand its
        # memory to the next one: a fresh allocation costs a page fault per 4 KiB page.
        order = g_chunks if cached is None else [cached[0]] + [g for g in g_chunks if g != cached[0]]
        for gs in order:
            if cached is not None and gs == cached[0]:
                block, cached = cached[1], None
            else:
                block = None
                block = score_fn(qs, gs)
            # Comparing into a reused float buffer and summing it is 2-8x faster on the CPU than
            # summing a bool mask, which torch first copies to an integer tensor. Counts stay
            # exact in float32 (chunks have at most 2^24 columns).
            if above is None or above.shape != block.shape:
                above = torch.empty(block.shape, dtype=torch.float32, device=device)
            sel = chunk.in_block(gs)
            r, c = chunk.rows[sel], chunk.cols[sel]
            own = block[r, c - gs.start]  # the query's own targets and reference never count
            same = own == best[r]
            count += torch.gt(block, best[:, None], out=above).sum(1).long()
            count.scatter_add_(0, r, -(own > best[r]).long())
            n_tied = torch.eq(block, best[:, None], out=above).sum(1).long()
            n_tied.scatter_add_(0, r, -same.long())
            tied += n_tied
            # Which tied items come before the first target in gallery order: read only the rows that have
            # one (few, but for a collapsed model), with their own columns taken out again.
            with_ties = n_tied.nonzero().squeeze(1)
            if len(with_ties):
                columns = torch.arange(gs.start, gs.stop, device=device)
                earlier = columns[None, :] < first[with_ties, None]
                before.index_add_(0, with_ties, (above[with_ties] * earlier).sum(1).long())
                read = torch.zeros(nq, dtype=torch.bool, device=device)
                read[with_ties] = True
                before.scatter_add_(0, r, -(same & (c < first[r]) & read[r]).long())
            if k:
                run_score, run_index = _merge_topk(block, gs, chunk.ref_col, k, run_score, run_index)
            # a NaN compares false with everything: it would rank every target first. torch.topk takes NaN
            # for the largest value, so the running top k shows one; without a top k the block is read
            if torch.isnan(run_score if k else block).any():
                raise NonFiniteScores("the scores hold NaN: nothing can be ranked (see engine.ranking)")
        block = None
        has_target = torch.tensor([len(correct[i]) > 0 for i in range(qs.start, qs.stop)], device=device)
        ranks.append(torch.where(has_target, count + before, n_gallery).cpu())
        ties.append(torch.where(has_target, tied, 0).cpu())
        top_index.append(run_index.cpu())
        top_score.append(run_score.cpu())
    return RankResult(torch.cat(ranks), torch.cat(top_index), torch.cat(top_score), torch.cat(ties))


def _in_order(score, index):
    """Each row's (score, index) pairs by score, best first, equal scores by index (a stable sort)."""
    index, by_index = index.sort(dim=1, stable=True)
    score, by_score = score.gather(1, by_index).sort(dim=1, descending=True, stable=True)
    return score, index.gather(1, by_score)


def _block_topk(block, m: int):
    """Each row's first m (score, column) in gallery order: torch.topk, but for the rows whose m-th score
    is shared beyond the cut (topk then picks among the tied columns freely), which are sorted stably."""
    if m >= block.shape[1]:
        return block.sort(dim=1, descending=True, stable=True)
    score, index = block.topk(m + 1, dim=1)
    cut = score[:, m - 1] == score[:, m]
    score, index = score[:, :m], index[:, :m]
    if cut.any():
        rows = cut.nonzero().squeeze(1)
        s, i = block[rows].sort(dim=1, descending=True, stable=True)
        score[rows], index[rows] = s[:, :m], i[:, :m]
    return score, index


def _merge_topk(block, gs: slice, ref_col, k: int, run_score, run_index):
    """The running top k merged with the block's top k+1 (room for the excluded reference), in gallery order."""
    score, index = _block_topk(block, min(k + 1, block.shape[1]))
    index = index + gs.start
    score = score.masked_fill(index == ref_col, float("-inf"))
    score, index = _in_order(torch.cat([run_score, score], 1), torch.cat([run_index, index], 1))
    return score[:, :k], index[:, :k]


def recall_at(ranks, ks=(1, 10, 50)):
    """{"R@k": percent of queries whose rank is below k} (NaN for no queries)."""
    ranks = torch.as_tensor(ranks)
    return {f"R@{k}": 100.0 * (ranks < k).double().mean().item() for k in ks}
