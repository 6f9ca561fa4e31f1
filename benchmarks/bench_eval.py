"""Benchmark: the evaluation ranking engine (engine/ranking.py) vs the per-query loop of peers.

    python benchmarks/bench_eval.py                      # the three FashionIQ val sizes
    python benchmarks/bench_eval.py --gallery 1000000 --queries 10000   # one synthetic size

Default: queries x gallery of the FashionIQ val splits (dress 4034 x 3817, shirt 4076 x 6346,
toptee 3922 x 5373), d=512, three grains, one target and one reference per query. The baseline
is the way peer code evaluates: per query, score it against the whole gallery, exclude the
reference, argsort the gallery, find the target's position. Ranks must be identical; the last
line is `RESULT eval <baseline time / our time>x`. Our time is the median of --repeats runs, the
baseline's one run (seconds long, it averages this VM's noise bursts out by itself).

Embeddings are random, L2-normalised per grain, then rounded to multiples of 2^-11. Every
product is then a multiple of 2^-22 and every partial sum is below 4 in magnitude
(Cauchy-Schwarz over three unit vectors), so each score is exact in float32 whatever the
summation order: the baseline's one-row products and our blocked ones agree bit for bit, and
"identical ranks" is a meaningful check. Exact ties with the target remain possible; the
protocol counts only strictly higher scores, so the baseline takes the target's position
minus the items tied with it that the sort put ahead.

score(q, g) = sum over grains of q_grain . g_grain, computed as one product of the grains
concatenated along d (the same sum). Ours takes it from models.products.pairwise_dot, the product
the models score with (oneDNN for large float32 CPU products); the per-query loop writes
`q @ G.T` as peer code does. The printed "bare products" line times both products alone on our
blocks, so the share of the ratio that comes from the product and from ranking can be read off.

Single size (--gallery N --queries M): the embeddings are float32 in memory, generated chunk by
chunk into one preallocated tensor: N x d x grains x 4 bytes (1M x 512 x 3 = 6.1 GB) plus the
ranking's O(query_chunk x gallery_chunk) blocks. Use --dim/--grains to shrink it. The per-query
baseline (hours at 1M) runs only with --baseline; without it the last line is
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
    """The peer way: one query against the whole gallery, full argsort, target's position."""
    ranks = []
    for i in range(n_queries):
        scores = score_fn(slice(i, i + 1), slice(0, n_gallery))[0]
        scores[references[i]] = float("-inf")
        order = torch.argsort(scores, descending=True)
        position = int((order == targets[i]).nonzero())
        tied_ahead = int((scores[order[:position]] == scores[targets[i]]).sum())
        ranks.append(position - tied_ahead)
    return torch.tensor(ranks)


def bare_scoring(score_fn, n_queries, n_gallery, args):
    for q in range(0, n_queries, args.query_chunk):
        for g in range(0, n_gallery, args.gallery_chunk):
            score_fn(slice(q, q + args.query_chunk), slice(g, g + args.gallery_chunk))


def timed(fn, repeats=1):
    """(last output, median seconds over `repeats` runs): this shared VM has bursts of noise that
    a half-second run either catches or misses, while the long baseline averages them out."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run(name, n_queries, n_gallery, args, baseline=True):
    score_ours, score_peers, targets, references = make_problem(n_queries, n_gallery, args.dim,
                                                                args.grains, args.seed)
    ours, t_ours = timed(lambda: rank_queries(
        score_ours, n_queries, n_gallery, [[t] for t in targets], references, topk=50,
        query_chunk=args.query_chunk, gallery_chunk=args.gallery_chunk, progress=args.progress),
        args.repeats)
    gflop = 2 * n_queries * n_gallery * args.dim * args.grains / 1e9
    print(f"{name:>8} {n_queries} x {n_gallery}: ours {t_ours:8.2f} s "
          f"({n_queries / t_ours:8.0f} queries/s, {gflop / t_ours:5.1f} GFLOP/s)", flush=True)
    if not baseline:
        return t_ours, None
    _, t_bare = timed(lambda: bare_scoring(score_ours, n_queries, n_gallery, args), args.repeats)
    _, t_bare_peers = timed(lambda: bare_scoring(score_peers, n_queries, n_gallery, args),
                           args.repeats)
    print(f"{'':>8} bare products of the same blocks: pairwise_dot {t_bare:.2f} s, q @ G.T "
          f"{t_bare_peers:.2f} s; ranking adds {100 * (t_ours / t_bare - 1):.0f} % to pairwise_dot",
          flush=True)
    ranks, t_base = timed(lambda: per_query_ranks(score_peers, n_queries, n_gallery, targets,
                                                  references))
    assert torch.equal(ranks, ours.ranks), f"{name}: {(ranks != ours.ranks).sum()} ranks differ"
    print(f"{'':>8} per-query loop {t_base:8.2f} s ({n_queries / t_base:6.0f} queries/s): "
          f"{t_base / t_ours:.1f}x, ranks identical", flush=True)
    return t_ours, t_base


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, help="run one synthetic size instead")
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--baseline", action="store_true", help="per-query loop at --gallery too")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--grains", type=int, default=3)
    parser.add_argument("--query_chunk", type=int, default=1024)
    parser.add_argument("--gallery_chunk", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, help="our timings are the median of this many runs "
                        "(default 5 at the FashionIQ sizes, 1 with --gallery); the baseline runs once")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    args.repeats = args.repeats or (1 if args.gallery else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={args.dim}, "
          f"{args.grains} grains, chunks {args.query_chunk} x {args.gallery_chunk}", flush=True)
    with torch.inference_mode():
        if args.gallery:
            t_ours, t_base = run("custom", args.queries, args.gallery, args, args.baseline)
        else:
            times = [run(*size, args) for size in FASHIONIQ_VAL]
            t_ours, t_base = (sum(t) for t in zip(*times))
            print(f"{'total':>8}: ours {t_ours:.2f} s, per-query loop {t_base:.2f} s")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak_gb:.2f} GB")
    print(f"RESULT eval {t_base / t_ours:.1f}x" if t_base else f"RESULT eval_time {t_ours:.1f}s")


if __name__ == "__main__":
    main()
