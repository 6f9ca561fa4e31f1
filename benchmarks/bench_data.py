"""Training DataLoader throughput from JPEG files on disk, per number of workers.

Writes a synthetic FashionIQ-format dataset with images of --size pixels (a temporary folder,
or --data_root to reuse one), then times the exact loader train.py uses (EpochTriplets:
load, pad to square, resize, random crop, flip, normalise, two images per triplet; sampler,
collate, pinned memory on CUDA) for each worker count. Compare the figure with
bench_train.py's triplets/s to see whether loading keeps up with the GPU.

  .venv/bin/python benchmarks/bench_data.py --size 256 --crop 224 --workers 0,1,2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import resolve  # noqa: E402
from data.formats import open_dataset  # noqa: E402
from data.loaders import collate_triplets  # noqa: E402
from data.synthetic import generate  # noqa: E402
from data.text import Vocabulary  # noqa: E402
from engine.sampler import ResumableSampler  # noqa: E402
from engine.trainer import EpochTriplets  # noqa: E402


def throughput(dataset, batch: int, workers: int, batches: int, pin: bool) -> float:
    """Triplets per second over `batches` batches, after the workers' first batch."""
    sampler = ResumableSampler(len(dataset), batch, seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=collate_triplets,
                        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None)
    it = iter(loader)
    next(it)  # start-up (worker spawn, first decode) is not throughput
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it))
        except StopIteration:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="pixel size of the JPEG files written")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--data_root", default="", help="reuse a FashionIQ-format data root instead of generating one")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or tmp
        if not args.data_root:
            t0 = time.perf_counter()
            generate(tmp, "fashioniq", size=args.size, seed=0)
            print(f"wrote synthetic FashionIQ at {args.size}px in {time.perf_counter() - t0:.1f} s")
        cfg = resolve({"dataset": "fashioniq", "data_root": str(root), "crop_size": args.crop})
        fmt = open_dataset(cfg)
        triplets = fmt.train_triplets(0)
        vocab = Vocabulary.build(fmt.train_captions())
        dataset = EpochTriplets(fmt, vocab, args.crop, 0, triplets, set())
        pin = torch.cuda.is_available()
        results = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            results[workers] = throughput(dataset, args.batch, workers, args.batches, pin)
            print(f"{workers:3d} workers: {results[workers]:8.1f} triplets/s ({2 * results[workers]:8.1f} images/s)")
    best = max(results, key=results.get)
    speedup = results[best] / results[min(results)]
    print(f"RESULT data {results[best]:.1f} triplets/s with {best} workers, {speedup:.2f}x "
          f"over {min(results)} workers")


if __name__ == "__main__":
    main()
