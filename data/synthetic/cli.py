"""The command line of the synthetic dataset generator (`main`; run by `python -m data.synthetic`).

    python -m data.synthetic --out DIR --dataset fashioniq|shoes|fashion200k [--size 64] [--seed N]

writes DIR/fashionIQ/, DIR/shoes/ or DIR/fashion200K/ so that `--data_root DIR` reads it,
and prints the sizes and chance levels of what it wrote.
"""
from __future__ import annotations

import argparse
import sys

from data.synthetic.writers import FOLDERS, generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Write a small synthetic dataset (procedurally drawn garments or shoes, captions naming "
                    "the change) in the on-disk layout of FashionIQ, Shoes or Fashion200k, so that "
                    "--data_root DIR reads it.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="Data root to write into; the dataset goes to DIR/fashionIQ, DIR/shoes or DIR/fashion200K "
                             "(replaced if an earlier synthetic run wrote it; a real dataset there is never touched).")
    parser.add_argument("--dataset", required=True, choices=tuple(FOLDERS), help="Which dataset layout to write.")
    parser.add_argument("--size", type=int, default=64, help="Image side in pixels (default: 64).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; the same seed writes byte-identical files "
                                                            "(default: 0).")
    parser.add_argument("--n_images", type=int, default=None,
                        help="Gallery size: fashioniq val images per category (train 1.5x, test 0.75x; default 200); "
                             "shoes eval images (train 3x; default 250); fashion200k test images per category "
                             "(train 4x; default 60).")
    parser.add_argument("--n_triplets", type=int, default=None,
                        help="fashioniq train annotations per category (val 0.6x, test 0.4x; default 250, each gives "
                             "two queries); shoes train triplets (val 1/6, straddling ~1/6; default 1500); "
                             "fashion200k test queries (default 300).")
    args = parser.parse_args(argv)
    try:
        generate(args.out, args.dataset, args.size, args.seed, args.n_images, args.n_triplets, verbose=True)
    except (ValueError, FileExistsError) as error:
        sys.exit(f"error: {error}")

