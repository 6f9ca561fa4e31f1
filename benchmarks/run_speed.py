"""Speed of a real training run, read from its train_log.jsonl: images/s and whether the loader kept up.

    python benchmarks/run_speed.py runs/<exp_name>/stage1/train_log.jsonl [--batch 32] [--skip 20]

Each row of train_log.jsonl carries step_ms (wall time per step over its log interval, the device
finished) and load_wait_ms (how long the loop waited for that step's batch). Over the steps after
the first --skip (start-up, cuDNN autotuning), it prints the median step time, images/s (reference
and target images: 2 x batch per step) and the mean loader wait per step, which bounds the GPU's
idle time per step from above: near zero, the loader kept up.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", type=Path, help="a stage's train_log.jsonl")
    p.add_argument("--batch", type=int, default=32, help="triplets per step (--batch_size of the run)")
    p.add_argument("--skip", type=int, default=20, help="first steps left out (start-up)")
    args = p.parse_args()
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()][args.skip:]
    if not rows:
        raise SystemExit(f"{args.log}: no steps after the first {args.skip}")
    step_ms = statistics.median(r["step_ms"] for r in rows)
    wait_ms = statistics.fmean(r["load_wait_ms"] for r in rows)
    print(f"{args.log}: {len(rows)} steps; median step {step_ms:.1f} ms, {2 * args.batch * 1e3 / step_ms:.0f} "
          f"images/s; loader wait {wait_ms:.2f} ms per step ({100 * wait_ms / step_ms:.1f} % of the step)")
    print(f"RESULT run {2 * args.batch * 1e3 / step_ms:.0f} images/s, loader wait {100 * wait_ms / step_ms:.1f}%")


if __name__ == "__main__":
    main()
