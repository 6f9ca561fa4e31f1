"""The command lines of the dataset tools, above the data layer they drive (data/check/__main__.py and
data/prepare/__main__.py run them, so `python -m data.check` and `python -m data.prepare` work as ever):

    python -m data.check --dataset fashioniq [--data_root DIR] [--write_missing FILE] [--allow_missing]
    python -m data.prepare --dataset fashioniq --data_root DIR [--size 256] [--out DIR/cache] [--workers N]
"""
from __future__ import annotations

import os
from pathlib import Path

import data.check
import data.prepare
from config import build_parser, given_flags, resolve
from data.cache import default_cache_folder
from data.formats import open_dataset
from utils.errors import UserError, command_status, number_in
from utils.io import check_output_file


def check_parser():
    p = build_parser("data,run",
                     "Report missing and unreadable images of a dataset and the triplets/queries they cost.")
    p.prog = "python -m data.check"
    p.add_argument("--write_missing", metavar="FILE", default=None,
                   help="Also write the missing and unreadable image files to FILE (status<TAB>path[<TAB>reason]).")
    p.add_argument("--allow_missing", action="store_true",
                   help="Exit with status 0 even when images are missing or unreadable (default: status 1).")
    return p


def check_main(argv: list[str] | None = None) -> int:
    """0 when every listed image decodes, 1 when some are missing or unreadable (0 with --allow_missing),
    2 with one `error: ...` line for bad input."""
    return command_status(_check, argv)


def _check(argv: list[str] | None) -> int:
    args = check_parser().parse_args(argv)
    cfg = resolve(given_flags(args))
    if args.write_missing:
        check_output_file(args.write_missing, "--write_missing")
    fmt = open_dataset(cfg)
    if args.write_missing:
        check_not_dataset_file(args.write_missing, fmt.root)
    return data.check.check_dataset(fmt, args.write_missing, args.allow_missing)


def check_not_dataset_file(path: str, dataset_folder: Path) -> None:
    """--write_missing may not replace a file of the dataset (an annotation or split file, an image): only a
    listing an earlier data.check wrote there."""
    path = Path(path)
    if not (path.is_file() and path.resolve().is_relative_to(dataset_folder.resolve())):
        return
    with open(path, "rb") as f:
        head = f.read(12)
    if head and not head.startswith((b"missing\t", b"unreadable\t")):
        raise UserError(f"--write_missing {path} is a file of the dataset in {dataset_folder} (not a listing "
                        f"data.check wrote): writing it would destroy it; choose another --write_missing")


def prepare_parser():
    p = build_parser("data", data.prepare.__doc__.split("\n")[0])
    p.prog = "python -m data.prepare"
    p.description = data.prepare.__doc__
    p.add_argument("--size", type=number_in(int, 8, 4096), default=None,
                   help="Side of the stored square in pixels (default: resize_size(--crop_size), 256 for 224; "
                        "with a CLIP --backbone, the crop size itself, target-padded by --pad_ratio).")
    p.add_argument("--out", default=None, help="Cache folder (default: <data_root>/cache, where runs look for it).")
    p.add_argument("--workers", type=number_in(int, 0, 256), default=os.cpu_count() or 1,
                   help="Processes decoding images (default: one per CPU core; 0 decodes in this process).")
    return p


def prepare_main(argv: list[str] | None = None) -> int:
    """0 when every image was prepared, 1 when some are missing or unreadable, 2 for bad input."""
    return command_status(_prepare, argv)


def _prepare(argv: list[str] | None) -> int:
    args = prepare_parser().parse_args(argv)
    cfg = resolve(given_flags(args))
    style = cfg.image_style  # a CLIP --backbone: CLIP4Cir's target padding at the crop size (data.images)
    size = args.size or style.prepared_size(cfg.crop_size)
    if size < 1 or args.workers < 0:
        raise UserError("--size must be positive and --workers at least 0")
    fmt = open_dataset(cfg)  # first: a wrong --data_root is reported before anything is created
    out = Path(args.out).expanduser() if args.out else default_cache_folder(cfg.data_root)
    return data.prepare.prepare_dataset(fmt, cfg.data_root, out, size, args.workers, style)
