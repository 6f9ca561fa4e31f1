"""Benchmark: the evaluation ranking engine (engine/ranking.py) against the strongest baselines.

    python benchmarks/bench_eval.py                      # the three FashionIQ val sizes
    python benchmarks/bench_eval.py --gallery 1000000 --queries 10000   # one synthetic size

Default: queries x gallery of the FashionIQ val splits (dress 4034 x 3817, shirt 4076 x 6346,
toptee 3922 x 5373), d=512, three grains, one target and one reference per query. Ours is
engine.ranking.rank_queries scoring with models.products.pairwise_dot. The contenders:
(a) the ARTEMIS release's form: one query at a time, `q @ G.T` against the whole gallery, the
    reference set to -inf, a full argsort, the target's position;
(b) the CLIP4Cir form: the whole queries x gallery score matrix at once, with our product
    (pairwise_dot over the concatenated grains), the references set to -inf, one full
    descending sort over dim=1 (torch.sort: the sort torch.argsort runs, values kept), each
    rank by a binary search of the target's score in its sorted row;
(c) the limit: our products alone (pairwise_dot over the blocks rank_queries scores), no ranking.
Every contender and ours are timed alike: the median of --repeats runs (default 5 at the
FashionIQ sizes). Ranks of (a) and (b) must equal ours. Printed per size and in total: a and b
as their time over ours, c as our time over the products'; the last line is
`RESULT eval <a>x artemis_form <b>x full_sort <c>x of_products`. Goals: >= 20x over
(a), >= 3x over (b), within 1.25x of (c).

Embeddings are random, L2-normalised per grain, then rounded to multiples of 2^-11. Every
product is then a multiple of 2^-22 and every partial sum is below 4 in magnitude
(Cauchy-Schwarz over three unit vectors), so each score is exact in float32 whatever the
summation order: one-row products, the whole matrix and our blocks agree bit for bit, and
"identical ranks" is a meaningful check. Exact ties with the target remain possible; the
protocol counts only strictly higher scores, so (a) takes the target's position minus the items
tied with it that the sort put ahead, and (b) the position of the first item tied with it (the
same number, found by torch.searchsorted instead of two passes over the matrix).

score(q, g) = sum over grains of q_grain . g_grain, computed as one product of the grains
concatenated along d (the same sum). pairwise_dot is the product the models score with (oneDNN
for large float32 CPU products); (a) writes `q @ G.T` as the ARTEMIS code does.

Single size (--gallery N --queries M): the embeddings are float32 in memory, generated chunk by
chunk into one preallocated tensor: N x d x grains x 4 bytes (1M x 512 x 3 = 6.1 GB) plus the
ranking's O(query_chunk x gallery_chunk) blocks. Use --dim/--grains to shrink it. The contenders
run only with --baseline (repeats default 1 there): (a) takes hours at 1M, and (b) holds the
whole M x N matrix with the sort's values and int64 indices, about 16 bytes per pair (10000 x 1M:
160 GB), so shrink --queries for it. Without --baseline the last line is
`RESULT eval_time <seconds>s`. Peak RSS is printed.
"""
import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.ranking import rank_queries  # noqa: E402
from models.products import pairwise_dot  # noqa: E402

FASHIONIQ_VAL = [("dress", 4034, 3817), ("shirt", 4076, 6346), ("toptee", 3922, 5373)]
CONTENDERS = {"artemis_form": "(a) per query, q @ G.T, argsort",
              "full_sort": "(b) whole matrix, pairwise_dot, sort",
              "of_products": "(c) pairwise_dot alone, our blocks"}


def embeddings(n, dim, grains, gen, chunk=65536):
    """(n, grains * dim) float32: per grain L2-normalised, rounded to multiples of 2^-11."""
    out = torch.empty(n, grains * dim)
    for i in range(0, n, chunk):
        for g in range(grains):
            x = F.normalize(torch.randn(min(chunk, n - i), dim, generator=gen), dim=1)
            out[i:i + chunk, g * dim:(g + 1) * dim] = torch.round(x * 2048) / 2048
    return out


def make_problem(n_queries, n_gallery, dim, grains, seed):
    gen = torch.Generator().manual_seed(seed)
    queries = embeddings(n_queries, dim, grains, gen)
    gallery = embeddings(n_gallery, dim, grains, gen)
    targets = torch.randint(0, n_gallery, (n_queries,), generator=gen)
    references = (targets + torch.randint(1, n_gallery, (n_queries,), generator=gen)) % n_gallery
    ours = lambda q, g: pairwise_dot(queries[q], gallery[g])  # noqa: E731
    peers = lambda q, g: queries[q] @ gallery[g].T  # noqa: E731
    return ours, peers, targets.tolist(), references.tolist()


def per_query_ranks(score_fn, n_queries, n_gallery, targets, references):
    """(a) The ARTEMIS form: one query against the whole gallery, full argsort, target's
    position minus the items tied with it that the sort put ahead."""
    ranks = []
    for i in range(n_queries):
        scores = score_fn(slice(i, i + 1), slice(0, n_gallery))[0]
        scores[references[i]] = float("-inf")
        order = torch.argsort(scores, descending=True)
        position = int((order == targets[i]).nonzero())
        tied_ahead = int((scores[order[:position]] == scores[targets[i]]).sum())
        ranks.append(position - tied_ahead)
    return torch.tensor(ranks)


def full_sort_ranks(score_fn, n_queries, n_gallery, targets, references):
    """(b) The CLIP4Cir form: the whole score matrix, one descending sort per row. The target's
    position minus the items tied with it that the sort put ahead is the position of the first
    item scoring the target's score, which a binary search over the sorted row finds."""
    scores = score_fn(slice(0, n_queries), slice(0, n_gallery))
    rows = torch.arange(n_queries)
    scores[rows, references] = float("-inf")
    target_scores = scores[rows, targets, None]
    values, _ = scores.sort(dim=1, descending=True)
    return torch.searchsorted(values.neg_(), target_scores.neg())[:, 0]


def bare_scoring(score_fn, n_queries, n_gallery, args):
    """(c) The limit: the products of rank_queries' blocks, nothing else."""
    for q in range(0, n_queries, args.query_chunk):
        for g in range(0, n_gallery, args.gallery_chunk):
            score_fn(slice(q, q + args.query_chunk), slice(g, g + args.gallery_chunk))


def timed(fn, repeats):
    """(last output, median seconds over `repeats` runs): this shared VM has bursts of noise."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def ratios(t):
    """(a) and (b): their time over ours; (c): ours over the products' alone."""
    return (t["artemis_form"] / t["ours"], t["full_sort"] / t["ours"],
            t["ours"] / t["of_products"])


def report(times):
    """One line per contender: its time and its ratio."""
    for (label, what), ratio in zip(CONTENDERS.items(), ratios(times)):
        how = f"ours takes {ratio:.2f}x" if label == "of_products" else f"{ratio:5.1f}x ours"
        print(f"{'':>8} {what:<36} {times[label]:8.2f} s: {how}", flush=True)


def run(name, n_queries, n_gallery, args, baseline=True):
    """{"ours": seconds, and with baseline each contender's}; ranks of (a) and (b) checked."""
    score_ours, score_peers, targets, references = make_problem(n_queries, n_gallery, args.dim,
                                                                args.grains, args.seed)
    ours, t_ours = timed(lambda: rank_queries(
        score_ours, n_queries, n_gallery, [[t] for t in targets], references, topk=50,
        query_chunk=args.query_chunk, gallery_chunk=args.gallery_chunk, progress=args.progress),
        args.repeats)
    gflop = 2 * n_queries * n_gallery * args.dim * args.grains / 1e9
    print(f"{name:>8} {n_queries} x {n_gallery}: ours {t_ours:8.2f} s "
          f"({n_queries / t_ours:8.0f} queries/s, {gflop / t_ours:5.1f} GFLOP/s)", flush=True)
    times = {"ours": t_ours}
    if not baseline:
        return times
    problem = (n_queries, n_gallery, targets, references)
    for label, fn in [("artemis_form", lambda: per_query_ranks(score_peers, *problem)),
                      ("full_sort", lambda: full_sort_ranks(score_ours, *problem)),
                      ("of_products", lambda: bare_scoring(score_ours, *problem[:2], args))]:
        ranks, times[label] = timed(fn, args.repeats)
        if ranks is not None:
            differ = int((ranks != ours.ranks).sum())
            assert not differ, f"{name} {label}: {differ} ranks differ"
    report(times)
    print(f"{'':>8} ranks of (a) and (b) identical to ours", flush=True)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, help="run one synthetic size instead")
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--baseline", action="store_true", help="the contenders at --gallery too")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--grains", type=int, default=3)
    parser.add_argument("--query_chunk", type=int, default=1024)
    parser.add_argument("--gallery_chunk", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, help="every timing, ours and each contender's, is "
                        "the median of this many runs (default 5 at the FashionIQ sizes, 1 with "
                        "--gallery)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    args.repeats = args.repeats or (1 if args.gallery else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={args.dim}, "
          f"{args.grains} grains, chunks {args.query_chunk} x {args.gallery_chunk}, "
          f"median of {args.repeats} runs", flush=True)
    with torch.inference_mode():
        if args.gallery:
            times = run("custom", args.queries, args.gallery, args, args.baseline)
        else:
            per_size = [run(*size, args) for size in FASHIONIQ_VAL]
            times = {label: sum(t[label] for t in per_size) for label in per_size[0]}
            print(f"{'total':>8}: ours {times['ours']:.2f} s")
            report(times)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak_gb:.2f} GB")
    if len(times) == 1:
        print(f"RESULT eval_time {times['ours']:.1f}s")
    else:
        print("RESULT eval {:.1f}x artemis_form {:.1f}x full_sort {:.2f}x of_products"
              .format(*ratios(times)))


if __name__ == "__main__":
    main()
