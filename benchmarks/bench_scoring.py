"""Training-time scoring + losses, forward and backward: matmul form (ours) vs the broadcast form.

Setting: B = 128 queries against their B in-batch targets, d = 512, three granularities,
manme (both attention parts, mutual exclusion, overlap). The inputs are the compositor's
outputs (text m, Tr_m, reference r^g, A_mod^g, A_pre^g, targets t^g) as leaf tensors that
require grad; the timed step is AttentionQuery.build (L2(A_pre ⊙ r) per grain) + RetrievalLoss
(scores, CE, mutual exclusion, overlap) + backward. The two sides share everything except
`score_per_grain`: ours is MANME's two-matmul identity, the baseline (written here) is the
ARTEMIS-style broadcast that materialises A_i ⊙ t_j for all B×B pairs.

Time: median wall time per step after warm-up, the two sides interleaved so both see the same
load. One intra-op thread by default: on this shared 2-core machine two OpenMP threads make
every small op wait for a descheduled thread, so timings measure the scheduler (the matmul
step varied 20-390 ms with --threads 2 at the same code; one thread: 20-45 ms). Both sides
use the same setting; `--threads 0` keeps torch's default.
Memory: peak bytes of live tensors allocated during one step, from the PyTorch profiler
(profile_memory=True records every CPU-allocator allocation and free with the running
"Total Allocated"; the peak of that series is the step's extra memory). Process RSS is not
used: on CPU it is dominated by library pages and malloc caching, not by the step. On CUDA
torch.cuda.max_memory_allocated is used instead.

Run: .venv/bin/python benchmarks/bench_scoring.py [--batch 128] [--dim 512] [--device cpu] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import resolve  # noqa: E402
from losses import RetrievalLoss  # noqa: E402
from models import build_model  # noqa: E402
from models.attention import AttentionQuery  # noqa: E402

GRAINS = ["coarse", "mid", "fine"]


def pairwise_attended_cosine(u, a, t):
    """<u_i, L2(a_i ⊙ t_j)> for all pairs by broadcasting: a (Q, G, d) tensor per step."""
    return (u[:, None, :] * F.normalize(a[:, None, :] * t[None, :, :], dim=-1)).sum(-1)


class BroadcastScorer:
    """MANME's scores in the broadcast formulation; everything else delegates to the model."""

    def __init__(self, model):
        self.model, self.log_temperature = model, model.log_temperature

    def score_per_grain(self, query, targets):
        out = {}
        for g in self.model.grains:
            a_mod, a_pre, t = query.modification_attention[g], query.preserve_attention[g], targets[g]
            out[g] = (pairwise_attended_cosine(query.text_projection, a_mod, t)
                      + pairwise_attended_cosine(F.normalize(a_pre * query.reference[g], dim=-1), a_pre, t))
        return out

    def attention_overlap(self, query):
        return self.model.attention_overlap(query)


def make_inputs(b, d, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    def unit():
        return F.normalize(torch.randn(b, d, generator=gen), dim=-1)

    def attention():
        return torch.softmax(3 * torch.randn(b, d, generator=gen), dim=-1)

    leaves = {"text": unit(), "projection": unit(),
              **{f"reference/{g}": unit() for g in GRAINS}, **{f"target/{g}": unit() for g in GRAINS},
              **{f"mod/{g}": attention() for g in GRAINS}, **{f"pre/{g}": attention() for g in GRAINS}}
    return {k: v.to(device).requires_grad_(True) for k, v in leaves.items()}


def step(scorer, loss_fn, x):
    query = AttentionQuery.build(x["text"], x["projection"], {g: x[f"reference/{g}"] for g in GRAINS},
                                 {g: x[f"mod/{g}"] for g in GRAINS}, {g: x[f"pre/{g}"] for g in GRAINS})
    out = loss_fn(scorer, query, {g: x[f"target/{g}"] for g in GRAINS})
    out.total.backward()
    return out.total.detach()


def clear_grads(scorer, x):
    for v in x.values():
        v.grad = None
    scorer.log_temperature.grad = None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(scorer, loss_fn, x, device) -> float:
    sync(device)
    start = time.perf_counter()
    step(scorer, loss_fn, x)
    sync(device)
    clear_grads(scorer, x)
    return time.perf_counter() - start


def time_both(ours, naive, loss_fn, x, device, rounds: int, per_round: int) -> tuple[float, float]:
    """Median step times, interleaved (one broadcast step, then `per_round` matmul steps, per round)
    so that both sides see the same machine load."""
    for scorer in (ours, naive):  # warm-up
        timed(scorer, loss_fn, x, device)
    t_ours, t_naive = [], []
    for _ in range(rounds):
        t_naive.append(timed(naive, loss_fn, x, device))
        t_ours += [timed(ours, loss_fn, x, device) for _ in range(per_round)]
    return statistics.median(t_ours), statistics.median(t_naive)


def peak_bytes(scorer, loss_fn, x, device):
    """Peak of live tensor bytes allocated during one step (inputs and weights excluded)."""
    clear_grads(scorer, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(scorer, loss_fn, x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step(scorer, loss_fn, x)
        with tempfile.TemporaryDirectory() as tmp:
            trace = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(trace)
            events = json.load(open(trace))["traceEvents"]
        totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
        peak = max(totals, default=0)
    clear_grads(scorer, x)
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7,
                        help="timing rounds: one broadcast step and 10 matmul steps each")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default). 1 by default: see the module docstring")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = resolve(dict(model="manme", backbone="resnet18", backbone_weights="none", embed_dim=args.dim,
                       grains=",".join(GRAINS)))
    model = build_model(cfg, vocab_size=10).to(device)
    loss_fn = RetrievalLoss(cfg)
    x = make_inputs(args.batch, args.dim, device)
    broadcast = BroadcastScorer(model)

    # same loss value both ways
    ours_loss, naive_loss = step(model, loss_fn, x), step(broadcast, loss_fn, x)
    clear_grads(model, x)
    assert torch.allclose(ours_loss, naive_loss, atol=1e-4), (ours_loss, naive_loss)

    t_ours, t_naive = time_both(model, broadcast, loss_fn, x, device, args.rounds, per_round=10)
    m_ours = peak_bytes(model, loss_fn, x, device)
    m_naive = peak_bytes(broadcast, loss_fn, x, device)

    print(f"device {device}, threads {torch.get_num_threads()}, B={args.batch}, d={args.dim}, "
          f"grains {','.join(GRAINS)}; "
          f"loss {float(ours_loss):.4f} (both)")
    print(f"{'':10}{'time/step':>12}{'peak memory':>14}")
    print(f"{'matmul':10}{t_ours * 1e3:10.2f}ms{m_ours / 2**20:11.2f}MiB")
    print(f"{'broadcast':10}{t_naive * 1e3:10.2f}ms{m_naive / 2**20:11.2f}MiB")
    print(f"RESULT scoring {t_naive / t_ours:.1f}x time, {m_naive / m_ours:.1f}x memory")


if __name__ == "__main__":
    main()
