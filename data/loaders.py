"""torch Datasets over a DatasetFormat, the triplet batch, and the missing-image filters."""
from __future__ import annotations

import functools
import os
import pickle
import signal
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, get_worker_info

from data.augment import crop_flip_normalize, draw_train_crop
from data.base import DatasetFormat, EvalSplit, Triplet
from data.cache import PixelSource
from data.images import IMAGENET, ImageStyle
from data.text import Vocabulary


def pad_tokens(sequences: list[list[int]] | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Lmax) LongTensor padded with 0 (<pad>) and the (B,) lengths."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.zeros(len(sequences), int(lengths.max()) if len(sequences) else 0, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return tokens, lengths


@dataclass
class TripletBatch:
    reference: torch.Tensor  # (B, S, S, 3) uint8 prepared pixels; images() crops and normalises them
    target: torch.Tensor  # (B, S, S, 3) uint8
    crops: torch.Tensor  # (B, 2, 3) long: (top, left, flip) of the reference and of the target
    tokens: torch.Tensor  # (B, Lmax), 0-padded
    lengths: torch.Tensor  # (B,); pack_padded_sequence wants them on the CPU
    index: torch.Tensor  # (B,) positions in the TripletImages dataset

    HOST_FIELDS = ("crops", "lengths")  # read as numbers on the host: on a GPU, reading them back would wait for it

    def to(self, device, non_blocking: bool = False) -> TripletBatch:
        """The batch on `device`, but for HOST_FIELDS, which stay where they are."""
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self) if f.name not in self.HOST_FIELDS})

    def pin_memory(self) -> TripletBatch:  # called by DataLoader(pin_memory=True)
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def images(self, crop: int, style: ImageStyle = IMAGENET) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's (reference, target) inputs, (B, 3, crop, crop) float32, made where the batch is
        (move it to the GPU first: the pixels travel as uint8)."""
        return (crop_flip_normalize(self.reference, self.crops[:, 0], crop, style),
                crop_flip_normalize(self.target, self.crops[:, 1], crop, style))

    def __len__(self) -> int:
        return len(self.index)


class TripletImages(Dataset):
    """Items: dict(reference=pixels, target=pixels, crops=(2, 3), tokens=LongTensor, index=int).

    The crops and flips are drawn here, in the order torchvision's per-image train_transform draws them,
    from the generator given to item() (by default one seeded with i; EpochTriplets seeds one per epoch
    and item); the batch applies them."""

    def __init__(self, fmt: DatasetFormat, triplets: list[Triplet], vocab: Vocabulary, source: PixelSource,
                 crop: int):
        self.triplets = triplets
        # Resolve paths and tokens once here, so workers need neither the format's index nor the vocabulary.
        self.paths = [(str(fmt.image_path(t.reference)), str(fmt.image_path(t.target))) for t in triplets]
        self.tokens = [vocab.encode(t.text) for t in triplets]
        self.source, self.crop = source, crop

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict:
        return self.item(i, torch.Generator().manual_seed(i))

    def item(self, i: int, generator: torch.Generator) -> dict:
        reference, target = (torch.from_numpy(self.source(p)) for p in self.paths[i])
        crops = [draw_train_crop(self.source.size, self.crop, generator) for _ in range(2)]  # reference, target
        return dict(reference=reference, target=target, crops=torch.tensor(crops, dtype=torch.long),
                    tokens=torch.tensor(self.tokens[i], dtype=torch.long), index=i)


class ImageList(Dataset):
    """Items: dict(image=prepared pixels, index=i), or dict(error=message, index=i) when the file cannot be
    read, so that whoever embeds a list decides what an unreadable file means (evaluation refuses, search
    skips). center_crop_normalize makes the model's input of a batch."""

    def __init__(self, paths: list[str | Path], source: PixelSource):
        self.paths = [str(p) for p in paths]
        self.source = source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            return dict(image=torch.from_numpy(self.source(self.paths[i])), index=i)
        except (OSError, ValueError) as e:
            return dict(error=str(e), index=i)


def collate_images(items: list[dict]) -> dict:
    """A batch of ImageList items: the readable images stacked, their indices, and (index, message) errors."""
    good = [x for x in items if "image" in x]
    return dict(image=torch.stack([x["image"] for x in good]) if good else None,
                index=[x["index"] for x in good], errors=[(x["index"], x["error"]) for x in items if "error" in x])


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: a worker ignores SIGINT and SIGTERM sent to the whole process group (Ctrl-C,
    a cluster scheduler), so the main process can finish its step and save. A SIGTERM from the main process
    itself (multiprocessing terminates daemon workers at exit), or any SIGTERM once it is gone, ends the
    worker: ignoring every SIGTERM hung a run that stopped on an error, waiting at exit for its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no sender to tell apart (not Linux): ignore, as before
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    parent = os.getppid()
    # blocked here, and in every thread started from now on: the watcher takes each SIGTERM with its sender
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_parents_sigterm, args=(parent,), daemon=True).start()


def _end_on_parents_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)


class LoadFailure:
    """What a DataLoader worker hands back instead of raising (see `worker_failures`): torch would re-raise
    the error in the main process with the worker's traceback as its message; the main process raises the
    error itself, so the message and exit status are those of a run with --num_workers 0."""

    def __init__(self, error: Exception):
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # an error that does not survive the trip to the main process: its text does
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


def worker_failures(getitem):
    """Decorates a Dataset's __getitem__: in a DataLoader worker, an error is returned as a LoadFailure
    (collate passes it on, the training loop raises it); in the main process it is raised as it is."""
    @functools.wraps(getitem)
    def item(self, key):
        if get_worker_info() is None:
            return getitem(self, key)
        try:
            return getitem(self, key)
        except Exception as e:
            return LoadFailure(e)
    return item


def collate_triplets(items: list[dict]) -> TripletBatch | LoadFailure:
    failed = next((x for x in items if isinstance(x, LoadFailure)), None)
    if failed is not None:
        return failed
    tokens, lengths = pad_tokens([x["tokens"] for x in items])
    return TripletBatch(reference=torch.stack([x["reference"] for x in items]),
                        target=torch.stack([x["target"] for x in items]),
                        crops=torch.stack([x["crops"] for x in items]),
                        tokens=tokens, lengths=lengths,
                        index=torch.tensor([x["index"] for x in items], dtype=torch.long))


def _present(fmt: DatasetFormat, image_ids) -> dict[str, bool]:
    return {i: fmt.has_image(i) for i in set(image_ids)}


def _examples(fmt: DatasetFormat, missing: list[str]) -> str:
    return ", ".join(str(fmt.image_path(i)) for i in missing[:3])


def drop_missing(fmt: DatasetFormat, triplets: list[Triplet]) -> list[Triplet]:
    """The triplets whose two image files exist; reports what it drops, fails when nothing is left."""
    present = _present(fmt, [x for t in triplets for x in (t.reference, t.target)])
    kept = [t for t in triplets if present[t.reference] and present[t.target]]
    if len(kept) < len(triplets):
        missing = sorted(i for i, ok in present.items() if not ok)
        print(f"{len(triplets) - len(kept)} of {len(triplets)} triplets skipped: image files missing "
              f"(e.g. {_examples(fmt, missing)}); `python -m data.check --dataset {fmt.name}` lists them")
    if triplets and not kept:
        raise FileNotFoundError(f"no {fmt.name} triplet has both image files; searched "
                                f"{', '.join(str(p) for p in fmt.image_folders())}. Put the images there "
                                f"or pass --data_root")
    return kept


def drop_missing_eval(fmt: DatasetFormat, split: EvalSplit) -> EvalSplit:
    """The split without missing images: gallery images, targets, and queries whose reference or every
    target is missing (a query listing no target, as CIRR test1's, needs its reference only)."""
    present = _present(fmt, split.gallery + [x for q in split.queries for x in (q.reference, *q.targets)])
    gallery = [i for i in split.gallery if present[i]]
    queries = [replace(q, targets=[t for t in q.targets if present[t]]) for q in split.queries
               if present[q.reference] and (not q.targets or any(present[t] for t in q.targets))]
    if len(gallery) < len(split.gallery) or len(queries) < len(split.queries):
        missing = sorted(i for i, ok in present.items() if not ok)
        print(f"{split.category}: {len(split.queries) - len(queries)} of {len(split.queries)} queries and "
              f"{len(split.gallery) - len(gallery)} of {len(split.gallery)} gallery images skipped: image files "
              f"missing (e.g. {_examples(fmt, missing)})")
    if split.queries and not queries:
        raise FileNotFoundError(f"no {fmt.name} {split.category} query has its images; searched "
                                f"{', '.join(str(p) for p in fmt.image_folders())}")
    return EvalSplit(split.category, queries, gallery)
