"""The prepared image cache (written by `python -m data.prepare`) and the pixel source that reads it.

A cache folder holds, per dataset split, `<dataset>-<split>-<size>.npy`: a (N, size, size, 3)
uint8 array (a .npy file read memory-mapped), and `<dataset>-<split>-<size>.json`, its index: per
row the image id, its file relative to the data root, and the file's size and mtime when it was
prepared. A row holds the deterministic part of the transform (RGB, white square, resize), so a run
with --crop_size C uses the cache of size resize_size(C) (256 for 224).

PixelSource gives the prepared pixels of an image file: the cache's row when the cache holds the
file unchanged (same size and mtime), else the file itself, decoded as data.images does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.images import IMAGENET, ImageStyle, prepared_pixels
from utils.errors import UserError

CACHE_FORMAT = "manme-image-cache"
CACHE_VERSION = 1


def cache_stem(dataset: str, split: str, size: int, style: ImageStyle = IMAGENET) -> str:
    return f"{dataset}-{split}-{size}{style.cache_tag}"


def file_stamp(path: str | Path) -> tuple[int, int] | None:
    """(bytes, mtime in ns) of a file, None when it is missing: what says whether a cached row is current."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class CacheRow:
    array: str   # the .npy file
    row: int


def read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable cache index ({e}); run `python -m data.prepare` again") from None
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        raise UserError(f"{path}: not a manme image-cache index; point --image_cache at a folder written by "
                        f"`python -m data.prepare`")
    if index.get("version") != CACHE_VERSION:
        raise UserError(f"{path}: image-cache version {index.get('version')}, this code reads version "
                        f"{CACHE_VERSION}; run `python -m data.prepare` again")
    return index


def cache_indexes(folder: Path, dataset: str, size: int, style: ImageStyle = IMAGENET) -> list[Path]:
    """The index files (complete or partial) of `dataset` at `size` in `style` in `folder`."""
    return sorted(folder.glob(f"{cache_stem(dataset, '*', size, style)}.json")) if folder.is_dir() else []


def current_rows(folder: Path, dataset: str, size: int, data_root: Path,
                 style: ImageStyle = IMAGENET) -> tuple[dict[str, CacheRow], int]:
    """(absolute file path -> its cached row, for every row whose file is unchanged; rows found stale).
    Rows a partial prepare has not reached yet are left out: their images come from the files."""
    rows: dict[str, CacheRow] = {}
    stale = 0
    for index_path in cache_indexes(folder, dataset, size, style):
        index = read_index(index_path)
        array, done_path = index_path.with_suffix(".npy"), index_path.with_suffix(".done.npy")
        try:
            done = np.load(done_path)
        except (OSError, ValueError):  # absent or cut short: this split's images come from their files
            continue
        if not array.is_file() or len(done) != len(index["images"]):
            continue
        name = str(array)  # one string for every row: the rows travel to each DataLoader worker
        for row, (_, relative, n_bytes, mtime_ns) in enumerate(index["images"]):
            if not done[row]:
                continue
            path = os.path.abspath(data_root / relative)
            if file_stamp(path) == (n_bytes, mtime_ns):
                rows.setdefault(path, CacheRow(name, row))
            else:
                stale += 1
    return rows, stale


class PixelSource:
    """Prepared pixels ((size, size, 3) uint8) of image files: cached rows where current, else the files.

    Pickled into DataLoader workers: each process opens the memory-mapped arrays itself, on first use."""

    def __init__(self, size: int, rows: dict[str, CacheRow] | None = None, upright: bool = False,
                 draft: bool = False, style: ImageStyle = IMAGENET):
        self.size, self.rows, self.upright, self.draft, self.style = size, rows or {}, upright, draft, style
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self):
        return {**self.__dict__, "_arrays": {}}

    def cached(self, path: str | Path) -> bool:
        return os.path.abspath(path) in self.rows

    def __call__(self, path: str | Path) -> np.ndarray:
        hit = None if self.upright else self.rows.get(os.path.abspath(path))
        if hit is None:  # user images (upright) are always read from the file: the cache ignores EXIF, as datasets do
            return prepared_pixels(path, self.size, self.upright, self.draft, self.style)
        array = self._arrays.get(hit.array)
        if array is None:
            array = self._arrays[hit.array] = np.load(hit.array, mmap_mode="r")
        return np.array(array[hit.row])  # a copy: the batch must not hold the map open


def default_cache_folder(data_root: str | Path) -> Path:
    return Path(data_root).expanduser() / "cache"


def open_pixel_source(cfg, log=print, training: bool = False) -> PixelSource:
    """The pixel source for a run: --image_cache auto (the data root's cache/ folder, when it holds this
    dataset at this crop's size and the backbone's image style), none (image files only) or a folder.
    --jpeg_draft applies to `training` sources only: evaluation reads exact pixels."""
    style = cfg.image_style
    size = style.prepared_size(cfg.crop_size)
    draft = training and cfg.jpeg_draft
    if cfg.image_cache == "none":
        return PixelSource(size, draft=draft, style=style)
    data_root = Path(cfg.data_root).expanduser()
    folder = default_cache_folder(data_root) if cfg.image_cache == "auto" else Path(cfg.image_cache).expanduser()
    if cfg.image_cache != "auto" and not folder.is_dir():
        raise UserError(f"--image_cache {folder}: no such folder; write it with `python -m data.prepare --dataset "
                        f"{cfg.dataset} --data_root {cfg.data_root} --out {folder}`, or pass --image_cache none")
    if not cache_indexes(folder, cfg.dataset, size, style):
        other = sorted(p.name for p in folder.glob(f"{cfg.dataset}-*.json")) if folder.is_dir() else []
        if other or cfg.image_cache != "auto":
            log(f"image cache {folder} has no {cfg.dataset} images at {size} px{style.cache_tag} (--crop_size "
                f"{cfg.crop_size}, --backbone {cfg.backbone}{'; it holds ' + ', '.join(other) if other else ''}); "
                f"reading the image files. `python -m data.prepare --dataset {cfg.dataset} --size {size}"
                f"{f' --backbone {cfg.backbone}' if style.cache_tag else ''}` writes one")
        return PixelSource(size, draft=draft, style=style)
    rows, stale = current_rows(folder, cfg.dataset, size, data_root, style)
    log(f"using the prepared image cache {folder} ({len(rows)} {cfg.dataset} images at {size} px{style.cache_tag}"
        f"{f'; {stale} changed since and read from their files' if stale else ''}; --image_cache none reads "
        f"the image files)")
    return PixelSource(size, rows, draft=draft, style=style)
