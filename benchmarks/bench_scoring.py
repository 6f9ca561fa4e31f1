"""Training-time scoring + losses, forward and backward: matmul form (ours) vs the broadcast form.

Setting: B = 128 queries against their B in-batch targets, d = 512, three granularities,
manme (both attention parts, mutual exclusion, overlap). The inputs are the encoders' outputs
(text m, references r^g, targets t^g) as leaf tensors that require grad, the compositor's weights the
model's; the timed step is the composition, scores, CE, mutual exclusion and overlap, and their backward.
Ours is RetrievalLoss's training objective (MANME's two-matmul identity, one autograd function with a
hand-written backward); the baseline is the same objective op by op (losses.definitions), with the
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
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import resolve  # noqa: E402
from losses import RetrievalLoss  # noqa: E402
from losses.definitions import objective_by_definition  # noqa: E402
from models import TrainingInputs, build_model  # noqa: E402

GRAINS = ["coarse", "mid", "fine"]


def make_inputs(b, d, device, seed=0) -> TrainingInputs:
    """Unit-norm text, references and targets (three grains) as leaves that require grad."""
    gen = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, d, generator=gen), dim=-1).to(device).requires_grad_(True)
    return TrainingInputs(unit(b), unit(len(GRAINS), b), unit(len(GRAINS), b))


class Matmul:
    """Ours: RetrievalLoss's training objective (composition, scores and losses in one autograd function)."""

    def __init__(self, model, loss_fn):
        self.model, self.loss_fn = model, loss_fn

    def __call__(self, x: TrainingInputs) -> Tensor:
        return self.loss_fn(self.model, x).total


class Broadcast:
    """The baseline: the same objective op by op with broadcast scores (losses.definitions)."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg

    def __call__(self, x: TrainingInputs) -> Tensor:
        grains = self.model.grains
        return objective_by_definition(self.model, self.cfg, x.text, x.reference(grains),
                                       dict(zip(grains, x.targets.unbind(0))))[0]


def step(objective, x) -> Tensor:
    total = objective(x)
    total.backward()
    return total.detach()


def clear_grads(objective, x):
    for v in (x.text, x.references, x.targets):
        v.grad = None
    objective.model.zero_grad(set_to_none=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(objective, x, device) -> float:
    sync(device)
    start = time.perf_counter()
    step(objective, x)
    sync(device)
    clear_grads(objective, x)
    return time.perf_counter() - start


def time_both(ours, naive, x, device, rounds: int, per_round: int) -> tuple[float, float]:
    """Median step times, interleaved (one broadcast step, then `per_round` matmul steps, per round)
    so that both sides see the same machine load."""
    for objective in (ours, naive):  # warm-up
        timed(objective, x, device)
    t_ours, t_naive = [], []
    for _ in range(rounds):
        t_naive.append(timed(naive, x, device))
        t_ours += [timed(ours, x, device) for _ in range(per_round)]
    return statistics.median(t_ours), statistics.median(t_naive)


def peak_bytes(objective, x, device):
    """Peak of live tensor bytes allocated during one step (inputs and weights excluded)."""
    clear_grads(objective, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(objective, x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step(objective, x)
        with tempfile.TemporaryDirectory() as tmp:
            trace = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(trace)
            events = json.load(open(trace))["traceEvents"]
        totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
        peak = max(totals, default=0)
    clear_grads(objective, x)
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
    x = make_inputs(args.batch, args.dim, device)
    ours, naive = Matmul(model, RetrievalLoss(cfg)), Broadcast(model, cfg)

    # same loss value both ways
    ours_loss, naive_loss = step(ours, x), step(naive, x)
    clear_grads(ours, x)
    assert torch.allclose(ours_loss, naive_loss, atol=1e-4), (ours_loss, naive_loss)

    t_ours, t_naive = time_both(ours, naive, x, device, args.rounds, per_round=10)
    m_ours = peak_bytes(ours, x, device)
    m_naive = peak_bytes(naive, x, device)

    print(f"device {device}, threads {torch.get_num_threads()}, B={args.batch}, d={args.dim}, "
          f"grains {','.join(GRAINS)}; "
          f"loss {float(ours_loss):.4f} (both)")
    print(f"{'':10}{'time/step':>12}{'peak memory':>14}")
    print(f"{'matmul':10}{t_ours * 1e3:10.2f}ms{m_ours / 2**20:11.2f}MiB")
    print(f"{'broadcast':10}{t_naive * 1e3:10.2f}ms{m_naive / 2**20:11.2f}MiB")
    print(f"RESULT scoring {t_naive / t_ours:.1f}x time, {m_naive / m_ours:.1f}x memory")


if __name__ == "__main__":
    main()
