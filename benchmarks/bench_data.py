"""Training input throughput per CPU core: the JPEG path as it was, the JPEG path now, and the prepared cache.

Writes a synthetic FashionIQ-format dataset whose images are JPEG product photos of --photo
pixels (a temporary folder, or --data_root to reuse one), prepares its cache (python -m
data.prepare), then times three ways of making the same training batches, each with the exact
loader train.py uses (EpochTriplets keys, ResumableSampler, collate; pinned memory on CUDA):

  jpeg_torchvision  the path before the cache: per image in the worker, decode, pad, resize,
                    torchvision RandomCrop/RandomHorizontalFlip/ToTensor/Normalize; float batches
  jpeg              the path now without a cache: decode, pad, resize in the worker (uint8);
                    crop, flip and normalisation once per batch (TripletBatch.images)
  jpeg_draft        the same with --jpeg_draft: JPEGs decoded at a reduced scale where the resize
                    needs no more (pixels off by under 1 of 255 levels on average; an option)
  cache             the prepared cache: a row of the memory-mapped array in the worker; the same
                    batch-level crop, flip and normalisation

All but jpeg_draft give the same tensors (tests/test_cache.py). Each batch is moved to --device and made
into model inputs there, as train.py does (the batch-level step on the GPU when there is one; on
this process's CPU thread otherwise), and timed with the batch. With --workers 0 (the default) the
loading runs in this process on one thread: triplets/s per CPU core. A fourth line, "cache, loader
side", times the cache's batches without the batch-level step: what the CPU does per triplet when
a GPU takes that step. The last line is `RESULT data_cache <cache / jpeg_torchvision>x` on --device.

  .venv/bin/python benchmarks/bench_data.py                        # 500x650 photos, crop 224
  .venv/bin/python benchmarks/bench_data.py --workers 0,8,16 --batches 100 --triplets 1500   # many cores

--photo: real FashionIQ and Shoes files are JPEG product photos of a few hundred pixels a side, of
varied aspect ratios; 500x650 is our stand-in (no real images were at hand to measure), pass the
size of your own copy. Decoding cost grows with the pixel count.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import resolve  # noqa: E402
from data.cache import PixelSource, open_pixel_source  # noqa: E402
from data.formats import open_dataset  # noqa: E402
from data.images import load_image, resize_size, train_transform  # noqa: E402
from data.loaders import collate_triplets  # noqa: E402
from data.synthetic import generate  # noqa: E402
from data.synthetic.cli import photo_size  # noqa: E402
from data.text import Vocabulary  # noqa: E402
from engine.sampler import ResumableSampler  # noqa: E402
from engine.trainer import EpochTriplets  # noqa: E402
from tools.data_commands import prepare_main  # noqa: E402
from utils.precision import pick_device  # noqa: E402


class TorchvisionTriplets(Dataset):
    """The JPEG path before the cache: torchvision's per-image transform in the worker, float tensors."""

    def __init__(self, triplets: EpochTriplets, crop: int):
        self.triplets, self.transform = triplets, train_transform(crop)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, key):
        epoch, index = key
        items = self.triplets._items_for(epoch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.triplets.item_seed(epoch, index))
            return [self.transform(load_image(p)) for p in items.paths[index % len(items)]]


def stack_pairs(items):
    return torch.stack([r for r, _ in items]), torch.stack([t for _, t in items])


def throughput(dataset, collate, to_inputs, batch: int, workers: int, batches: int, pin: bool) -> float:
    """Triplets per second over `batches` batches, after the first (worker start-up is not throughput);
    `to_inputs(batch)` returns the model's reference inputs, on the device, finished."""
    sampler = ResumableSampler(len(dataset), batch, seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=collate, num_workers=workers,
                        pin_memory=pin, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    it = iter(loader)
    to_inputs(next(it))
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(to_inputs(next(it)))
        except StopIteration:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", type=photo_size, default=(500, 650), metavar="WxH",
                   help="size of the JPEG photos written (default 500x650)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="timed batches per contender")
    p.add_argument("--triplets", type=int, default=400,
                   help="training annotations per category written (3 categories: 1200 triplets, 37 batches of 32; "
                        "raise it with --batches)")
    p.add_argument("--workers", default="0", help="comma-separated DataLoader worker counts (0: per core)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the batches go and the batch-level step runs (auto: cuda when available)")
    p.add_argument("--data_root", default="", help="reuse a FashionIQ-format data root (its cache is prepared "
                                                  "in <data_root>/cache if absent)")
    args = p.parse_args()
    torch.set_num_threads(1)  # per core: the batch-level step on one thread too

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or tmp
        if not args.data_root:
            t0 = time.perf_counter()
            generate(tmp, "fashioniq", seed=0, photo=args.photo, n_images=60, n_triplets=args.triplets)
            print(f"wrote synthetic FashionIQ, {args.photo[0]}x{args.photo[1]} JPEGs, in "
                  f"{time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        prepare_main(["--dataset", "fashioniq", "--data_root", str(root), "--crop_size", str(args.crop)])
        print(f"prepared the cache in {time.perf_counter() - t0:.1f} s")
        cfg = resolve({"dataset": "fashioniq", "data_root": str(root), "crop_size": args.crop})
        fmt = open_dataset(cfg)
        triplets = fmt.train_triplets(0)
        vocab = Vocabulary.build(fmt.train_captions())
        files = EpochTriplets(fmt, vocab, PixelSource(resize_size(args.crop)), args.crop, 0, triplets, set())
        drafts = EpochTriplets(fmt, vocab, PixelSource(resize_size(args.crop), draft=True), args.crop, 0, triplets,
                               set())
        cached = EpochTriplets(fmt, vocab, open_pixel_source(cfg), args.crop, 0, triplets, set())
        device = pick_device(args.device)
        pin = device.type == "cuda"

        def finished(x: torch.Tensor) -> torch.Tensor:
            if pin:
                torch.cuda.synchronize(device)
            return x

        def floats_on_device(pair):  # the float batches of the old path, moved as train.py moved them
            reference, _ = (x.to(device, non_blocking=True) for x in pair)
            return finished(reference)  # the sync waits for both

        def made_on_device(batch):  # uint8 batches, cropped and normalised on the device, as train.py does
            reference, _ = batch.to(device, non_blocking=True).images(args.crop)
            return finished(reference)

        contenders = {"jpeg_torchvision": (TorchvisionTriplets(files, args.crop), stack_pairs, floats_on_device),
                      "jpeg": (files, collate_triplets, made_on_device),
                      "jpeg_draft": (drafts, collate_triplets, made_on_device),
                      "cache": (cached, collate_triplets, made_on_device),
                      "cache, loader side": (cached, collate_triplets, lambda batch: batch.reference)}
        results: dict[tuple[str, int], float] = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            for name, (dataset, collate, to_inputs) in contenders.items():
                rate = throughput(dataset, collate, to_inputs, args.batch, workers, args.batches, pin)
                results[name, workers] = rate
                print(f"{name:>18} {workers:3d} workers: {rate:8.1f} triplets/s ({2 * rate:8.1f} images/s)",
                      flush=True)
    low = min(w for _, w in results)
    base = results["jpeg_torchvision", low]
    ratios = ", ".join(f"{name} {results[name, low] / base:.2f}x" for name in list(contenders)[1:])
    print(f"at {low} workers{' (per core)' if low == 0 else ''}, batches made on {device}, over jpeg_torchvision: "
          f"{ratios}")
    print(f"RESULT data_cache {results['cache', low] / base:.1f}x")


if __name__ == "__main__":
    main()
