"""Synthetic datasets in the exact on-disk layout of FashionIQ, Shoes and Fashion200k.

    python -m data.synthetic --out DIR --dataset fashioniq|shoes|fashion200k [--size 64] [--seed N]

writes DIR/fashionIQ/, DIR/shoes/ or DIR/fashion200K/ so that `--data_root DIR` reads it.
Modules, each importing only those above it:
- attributes: the attribute vocabulary (colours, patterns, kinds of item and their shape parts);
- drawing: the garment and shoe images (PIL);
- captions: the phrase tables, captions and Fashion200k descriptions;
- writers: attribute sampling, the per-format file writers and `generate`;
- cli: the command line (`main`), which __main__ runs.
"""
from data.synthetic.attributes import F200K_CATEGORIES, KINDS
from data.synthetic.captions import captions_for, differ_by_one_word
from data.synthetic.cli import main
from data.synthetic.writers import MARKER, generate, sample_attributes, sample_pairs

__all__ = ["F200K_CATEGORIES", "KINDS", "MARKER", "captions_for", "differ_by_one_word", "generate", "main",
           "sample_attributes", "sample_pairs"]
