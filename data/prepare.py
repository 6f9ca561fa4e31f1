"""Prepare a dataset's images once: decode, RGB, pad to a white square, resize, stored as uint8 arrays.

    python -m data.prepare --dataset fashioniq --data_root DIR [--size 256] [--out DIR/cache] [--workers N]

Writes, per split, <out>/<dataset>-<split>-<size>.npy (N x size x size x 3 uint8, read memory-mapped)
and its index <dataset>-<split>-<size>.json (image id, file, file size and mtime per row), plus
<dataset>-<split>-<size>.done.npy, which rows are written. Training, evaluation and the tools read
the cache (--image_cache, found in <data_root>/cache by default) and get the same pixels as from
the image files, several times faster: only crop, flip and normalisation remain per batch.

Interrupted, it continues where it stopped when run again; run again after images changed, it
redoes only those. Missing and unreadable images are listed (as `python -m data.check` lists them)
and stay out of the cache; a run reads them from their files, and fails on them as it would without
a cache. --size is resize_size(--crop_size): 256 for the default crop of 224.
"""
from __future__ import annotations

import json
import os
import signal
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from config import build_parser, given_flags, resolve
from data.cache import CACHE_FORMAT, CACHE_VERSION, cache_stem, default_cache_folder, file_stamp, read_index
from data.formats import open_dataset
from data.images import IMAGENET, ImageStyle, prepared_pixels
from utils.errors import UserError, command_status
from utils.io import atomic_write_text
from utils.runlock import RunLock

CHUNK = 64  # images a worker writes between two updates of the done flags


def parser():
    p = build_parser("data", __doc__.split("\n")[0])
    p.description = __doc__
    p.add_argument("--size", type=int, default=None,
                   help="Side of the stored square in pixels (default: resize_size(--crop_size), 256 for 224; "
                        "with a CLIP --backbone, the crop size itself, target-padded by --pad_ratio).")
    p.add_argument("--out", default=None, help="Cache folder (default: <data_root>/cache, where runs look for it).")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="Processes decoding images (default: one per CPU core; 0 decodes in this process).")
    return p


def main(argv: list[str] | None = None) -> int:
    """0 when every image was prepared, 1 when some are missing or unreadable, 2 for bad input."""
    return command_status(prepare, argv)


def prepare(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    cfg = resolve(given_flags(args))
    style = cfg.image_style  # a CLIP --backbone: CLIP4Cir's target padding at the crop size (data.images)
    size = args.size or style.prepared_size(cfg.crop_size)
    if size < 1 or args.workers < 0:
        raise UserError("--size must be positive and --workers at least 0")
    fmt = open_dataset(cfg)  # first: a wrong --data_root is reported before anything is created
    out = Path(args.out).expanduser() if args.out else default_cache_folder(cfg.data_root)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(cfg.data_root).expanduser()
    # two writers would mix their rows
    lock = RunLock(out / f"{fmt.name}-{size}{style.cache_tag}", "pass another --out")
    note = lock.acquire()
    if note:
        print(note)
    print(f"{fmt.name} at {fmt.root} -> {out}, {size} x {size} px{style.cache_tag}, {args.workers} worker(s)")
    problems = {}
    try:
        for split, ids in fmt.split_images().items():
            files = [os.path.abspath(fmt.image_path(i)) for i in ids]
            problems.update(prepare_split(out / cache_stem(fmt.name, split, size, style), ids, files, data_root, size,
                                          args.workers, split, style))
    finally:
        lock.release()
    if problems:
        print(f"{len(problems)} image(s) missing or unreadable, not cached (runs read them from their files, "
              f"and fail on them as without a cache):")
        for path, why in sorted(problems.items())[:20]:
            print(f"  {why}\t{path}")
        if len(problems) > 20:
            print(f"  ... {len(problems) - 20} more: `python -m data.check --dataset {fmt.name}` lists all")
        return 1
    return 0


def prepare_split(stem: Path, ids: list[str], files: list[str], data_root: Path, size: int, workers: int,
                  split: str, style: ImageStyle = IMAGENET) -> dict[str, str]:
    """Write (or complete) one split's array; returns file -> why, for the images left out."""
    array_path, index_path, done_path = (stem.with_suffix(s) for s in (".npy", ".json", ".done.npy"))
    stamps = [file_stamp(f) for f in files]
    rows = [[i, os.path.relpath(f, data_root), *(s or (-1, -1))] for i, f, s in zip(ids, files, stamps)]
    done = reusable_rows(array_path, index_path, done_path, rows, size)
    # The order makes a kill at any point safe: no row is ever served whose flag, stamp and pixels disagree.
    if done is None:  # a new cache: the old flags go first, then a sparse file, filled as the rows are written
        done_path.unlink(missing_ok=True)
        np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3)).flush()
        done = np.zeros(len(ids), dtype=bool)
    partial = done_path.with_name(done_path.name + ".partial.npy")
    np.save(partial, done)
    os.replace(partial, done_path)  # the flags of changed files are cleared before their new stamps are written
    write_index(index_path, stem, rows, size, complete=False, split=split)
    todo = [r for r in range(len(ids)) if not done[r] and stamps[r] is not None]
    problems = {files[r]: "missing" for r in range(len(ids)) if stamps[r] is None}
    if todo:
        done_map = np.load(done_path, mmap_mode="r+")
        tasks = [(str(array_path), size, [(r, files[r]) for r in todo[i:i + CHUNK]], style)
                 for i in range(0, len(todo), CHUNK)]
        bar = tqdm(total=len(todo), desc=f"{split}: {len(ids) - len(todo)} of {len(ids)} already prepared",
                   unit="img", dynamic_ncols=True)
        for written, failed in run_tasks(tasks, workers):
            done_map[written] = True
            done_map.flush()  # what a rerun continues from
            problems.update({files[r]: why for r, why in failed})
            bar.update(len(written) + len(failed))
        bar.close()
        del done_map
    else:
        print(f"{split}: all {len(ids)} images already prepared")
    write_index(index_path, stem, rows, size, complete=True, split=split,
                problems=[[r, files[r], problems[files[r]]] for r in range(len(ids)) if files[r] in problems])
    return problems


def reusable_rows(array_path: Path, index_path: Path, done_path: Path, rows: list, size: int):
    """The done flags of an earlier (maybe interrupted) run over the same images at the same size, cleared
    where a file changed since; None when there is nothing to continue."""
    if not (array_path.is_file() and index_path.is_file() and done_path.is_file()):
        return None
    old = read_index(index_path)
    if old["size"] != size or [r[0] for r in old["images"]] != [r[0] for r in rows]:
        return None  # another image list (new annotations): start over
    done = np.load(done_path)
    return done & np.array([list(a) == list(b) for a, b in zip(old["images"], rows)], dtype=bool)


def write_index(path: Path, stem: Path, rows: list, size: int, complete: bool, problems: list | None = None,
                split: str | None = None) -> None:
    dataset, _, rest = stem.name.partition("-")
    split = rest.rpartition("-")[0] if split is None else split
    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "dataset": dataset, "split": split,
             "size": size, "complete": complete, "images": rows, "problems": problems or []}
    atomic_write_text(path, json.dumps(index) + "\n")


def run_tasks(tasks, workers: int):
    """Yield each task's (rows written, [(row, why)] failed), in order, from `workers` processes (0: here)."""
    if workers == 0:
        yield from map(write_rows, tasks)
        return
    with get_context().Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        yield from pool.imap(write_rows, tasks)


def write_rows(task) -> tuple[list[int], list[tuple[int, str]]]:
    array_path, size, items, style = task
    array = np.load(array_path, mmap_mode="r+")
    written, failed = [], []
    for row, path in items:
        try:
            array[row] = prepared_pixels(path, size, style=style)
            written.append(row)
        except (OSError, ValueError) as e:
            failed.append((row, str(e).removeprefix(f"{path}: ")))
    array.flush()
    return written, failed


if __name__ == "__main__":
    raise SystemExit(main())
