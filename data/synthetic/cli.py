"""The command line of the synthetic dataset generator (`main`; run by `python -m data.synthetic`).

    python -m data.synthetic --out DIR --dataset fashioniq|shoes|fashion200k|cirr [--size 64] [--seed N]
                             [--difficulty easy|hard] [--photo WxH]

writes DIR/fashionIQ/, DIR/shoes/, DIR/fashion200K/ or DIR/cirr/ so that `--data_root DIR` reads it,
and prints the sizes and chance levels of what it wrote. `--difficulty hard` writes the
near-miss benchmark (see data/synthetic/writers.py; not for cirr).
"""
from __future__ import annotations

import argparse
import sys

from data.synthetic.writers import DIFFICULTIES, FOLDERS, generate
from utils.errors import number_in


def photo_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT in pixels, e.g. 500x650") from None
    if min(width, height) < 16 or max(width, height) > 8192:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be between 16 and 8192 px")
    return width, height


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Write a small synthetic dataset (procedurally drawn garments or shoes, captions naming "
                    "the change) in the on-disk layout of FashionIQ, Shoes, Fashion200k or CIRR, so that "
                    "--data_root DIR reads it.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="Data root to write into; the dataset goes to DIR/fashionIQ, DIR/shoes, DIR/fashion200K "
                             "or DIR/cirr (replaced if an earlier synthetic run wrote it; a real dataset there is "
                             "never touched).")
    parser.add_argument("--dataset", required=True, choices=tuple(FOLDERS), help="Which dataset layout to write.")
    parser.add_argument("--size", type=number_in(int, 8, 2048), default=64,
                        help="Image side in pixels (8 to 2048; default: 64).")
    parser.add_argument("--seed", type=number_in(int, 0, 2**31 - 1), default=0,
                        help="Random seed; the same seed writes byte-identical files "
                             "(default: 0).")
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="easy",
                        help="easy (default; the same files as ever for a seed) or hard: every evaluation target has "
                             "near-misses in its gallery (same change, one untouched attribute different, mostly a "
                             "small detail such as a belt, buttons or a pocket), about half the edits change a small "
                             "detail, annotator-like captions, larger galleries (not for cirr).")
    parser.add_argument("--n_images", type=number_in(int, 1, 1_000_000), default=None,
                        help="Gallery size: fashioniq val images per category (train 1.5x, test 0.75x; default 200, "
                             "hard 600); shoes eval images (train 3x, hard 2x; default 250, hard 600); fashion200k "
                             "test images per category (train 4x; default 60, hard 200); cirr val and test1 images, "
                             "in sets of six (train 3x; default 240).")
    parser.add_argument("--n_triplets", type=number_in(int, 1, 1_000_000), default=None,
                        help="fashioniq train annotations per category (val 0.6x, test 0.4x; default 250, each gives "
                             "two queries; hard 1500, val and test one per near-miss group edge); shoes train triplets "
                             "(val 1/6, straddling ~1/6; default 1500; hard 3000, val one per edge); fashion200k test "
                             "queries (default 300, hard 600); cirr train triplets (at most 10 per image set; val and "
                             "test1: 4 per set; default 1200).")
    parser.add_argument("--photo", type=photo_size, default=None, metavar="WxH",
                        help="Write each image as a WxH product photo: the item drawn at min(W, H) px on a white "
                             "canvas (replaces --size). For benchmarks of the image path at the file sizes of the "
                             "real datasets, e.g. 500x650.")
    args = parser.parse_args(argv)
    try:
        generate(args.out, args.dataset, args.size, args.seed, args.n_images, args.n_triplets, verbose=True,
                 difficulty=args.difficulty, photo=args.photo)
    except (ValueError, FileExistsError) as error:
        sys.exit(f"error: {error}")

