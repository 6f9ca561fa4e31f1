"""Synthetic datasets in the exact on-disk layout of FashionIQ, Shoes, Fashion200k and CIRR.

    python -m data.synthetic --out DIR --dataset fashioniq|shoes|fashion200k|cirr [--size 64] [--seed N]
                             [--difficulty easy|hard]

writes DIR/fashionIQ/, DIR/shoes/, DIR/fashion200K/ or DIR/cirr/ so that `--data_root DIR` reads it.
`--difficulty hard` writes the near-miss benchmark (small details, near-misses beside every
target, annotator-like captions, larger galleries; see writers.py; not for cirr). Modules, each importing
only those above it:
- attributes: the attribute vocabulary (colours, patterns, kinds of item and their shape parts;
  the small details of hard mode);
- drawing: the garment and shoe images (PIL), with hard mode's small details;
- captions: the phrase tables, captions and Fashion200k descriptions (and hard mode's);
- hard: hard mode's sampling (near-miss groups, the share of small-detail edits, near-miss counts);
- writers: attribute sampling, the per-format file writers and `generate`;
- cli: the command line (`main`), which __main__ runs.
"""
from data.synthetic.attributes import F200K_CATEGORIES, HARD_KINDS, KINDS, SMALL_DETAILS
from data.synthetic.captions import captions_for, differ_by_one_word
from data.synthetic.cli import main
from data.synthetic.writers import ATTRIBUTES_FILE, MARKER, generate, sample_attributes, sample_pairs

__all__ = ["ATTRIBUTES_FILE", "F200K_CATEGORIES", "HARD_KINDS", "KINDS", "MARKER", "SMALL_DETAILS", "captions_for",
           "differ_by_one_word", "generate", "main", "sample_attributes", "sample_pairs"]
