"""The dataset formats by name: the one place that knows every format."""
from __future__ import annotations

from data.base import DatasetFormat
from data.cirr import CIRR
from data.fashion200k import Fashion200k
from data.fashioniq import FashionIQ
from data.shoes import Shoes
from data.text import Vocabulary

FORMATS: dict[str, type[DatasetFormat]] = {f.name: f for f in (FashionIQ, Shoes, Fashion200k, CIRR)}


def open_dataset(cfg) -> DatasetFormat:
    """The dataset format named by cfg.dataset, reading cfg.data_root."""
    if cfg.dataset not in FORMATS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; use --dataset {'|'.join(FORMATS)}")
    return FORMATS[cfg.dataset](cfg)


def build_vocabulary(cfg) -> Vocabulary:
    """The vocabulary of `cfg.dataset`'s training captions (what vocab.py writes)."""
    fmt = open_dataset(cfg)
    return Vocabulary.build(fmt.train_captions(), extra_specials=fmt.vocab_specials, dataset=fmt.name)
