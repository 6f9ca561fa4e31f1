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

import errno
import json
import os
import shutil
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.base import DatasetFormat
from data.cache import CACHE_FORMAT, CACHE_VERSION, cache_stem, file_stamp, read_index
from data.images import IMAGENET, ImageStyle, prepared_pixels
from utils.errors import UserError
from utils.io import atomic_write_text
from utils.runlock import RunLock

CHUNK = 64  # images a worker writes between two updates of the done flags
SPARE = 64 << 20  # bytes kept free beyond the arrays: the indexes, the done flags, the file system's own needs
FIX = "free space there, or pass --out on a larger disk (or a smaller --size)"


def prepare_dataset(fmt: DatasetFormat, data_root: str | Path, out: Path, size: int, workers: int,
                    style: ImageStyle = IMAGENET) -> int:
    """Write (or complete) the cache of every split of `fmt` into `out`: 0 when every image was prepared, 1 when
    some are missing or unreadable (listed)."""
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_root).expanduser()
    images = fmt.split_images()
    splits = {split: [os.path.abspath(fmt.image_path(i)) for i in ids] for split, ids in images.items()}
    # two writers would mix their rows
    lock = RunLock(out / f"{fmt.name}-{size}{style.cache_tag}", "pass another --out")
    note = lock.acquire()
    if note:
        print(note)
    print(f"{fmt.name} at {fmt.root} -> {out}, {size} x {size} px{style.cache_tag}, {workers} worker(s)")
    problems = {}
    try:
        stems = {split: out / cache_stem(fmt.name, split, size, style) for split in splits}
        check_space(out, [(stems[s].with_suffix(".npy"), len(files) * size * size * 3) for s, files in splits.items()])
        for split, ids in images.items():
            problems.update(prepare_split(stems[split], ids, splits[split], data_root, size, workers, split,
                                          style))
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
    if done is None:  # a new cache: the old flags go first, then the array, filled as the rows are written
        done_path.unlink(missing_ok=True)
        np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3)).flush()
        done = np.zeros(len(ids), dtype=bool)
    reserve(array_path)
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


def allocated(path: Path) -> int:
    """Bytes of disk `path` already occupies (0 when absent): a sparse array's holes need space yet."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def check_space(out: Path, arrays: list[tuple[Path, int]]) -> None:
    """Refuse, before anything is written, when the disk holding `out` cannot take the arrays (path, bytes)."""
    need = sum(max(0, n - allocated(path)) for path, n in arrays) + SPARE
    free = shutil.disk_usage(out).free
    if free < need:
        raise UserError(f"{out}: the image cache needs {need / 2**30:.2f} GiB more, and the disk holding it has "
                        f"{free / 2**30:.2f} GiB free; {FIX}")


def reserve(array_path: Path) -> None:
    """Give every byte of the array its disk blocks now: writing into a hole of a sparse file on a full disk
    kills the writer with SIGBUS, where this fails with ENOSPC, which is reported."""
    fd = os.open(array_path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{array_path}: the disk is full (or the quota reached): cannot reserve "
                            f"{os.fstat(fd).st_size / 2**30:.2f} GiB for the image cache; {FIX}. The rows written "
                            f"so far are kept") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system without it: go on
            raise
    finally:
        os.close(fd)


def run_tasks(tasks, workers: int):
    """Yield each task's (rows written, [(row, why)] failed), in order, from `workers` processes (0: here).
    A worker that dies (a signal, the OOM killer) ends the command with an error naming the array: a
    multiprocessing.Pool would wait for its lost task for ever."""
    if workers == 0:
        yield from map(write_rows, tasks)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context(), initializer=signal.signal,
                               initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        yield from pool.map(write_rows, tasks)
    except BrokenProcessPool:
        raise UserError(f"a data.prepare worker died writing {tasks[0][0]} (killed by a signal: SIGBUS when the "
                        f"disk is full, SIGKILL when memory ran out); {FIX}, or pass fewer --workers. The rows "
                        f"written so far are kept: run the command again to continue") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


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
    try:
        array.flush()
    except OSError as e:  # a full disk or a failing device: name the file, not "[Errno 28]" alone
        raise UserError(f"{array_path}: could not be written ({e.strerror}); {FIX}. The rows written so far are "
                        f"kept") from None
    return written, failed
