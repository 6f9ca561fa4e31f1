"""The variant registry (`--model` name -> class) and the one constructor every entry point uses.

The CLI's --model choices and the per-variant config presets come from here."""
from __future__ import annotations

from pathlib import Path

from .attention import ARTEMIS, MANME, EMOnly, ISOnly
from .base import Retriever
from .baselines import TIRG, CrossModal, LateFusion, VisualSearch
from .combiner import ClipSum, Combiner
from .glove import glove_cache_path

VARIANTS: dict[str, type[Retriever]] = {
    "manme": MANME,
    "artemis": ARTEMIS,
    "tirg": TIRG,
    "late-fusion": LateFusion,
    "em-only": EMOnly,
    "is-only": ISOnly,
    "cross-modal": CrossModal,
    "visual-search": VisualSearch,
    "combiner": Combiner,
    "clip-sum": ClipSum,
}


def build_model(cfg, vocab_size: int, vocab_path: str | Path | None = None,
                vocab_words: list[str] | None = None) -> Retriever:
    """The variant named by cfg.model. With cfg.glove_path, `vocab_words` (the vocabulary's tokens)
    pick the GloVe rows, and the slice is cached beside the vocabulary file `vocab_path`."""
    if cfg.model not in VARIANTS:
        raise ValueError(f"--model {cfg.model!r}: unknown; choose one of {', '.join(VARIANTS)}")
    glove_cache = None
    if cfg.glove_path:
        if vocab_words is None or vocab_path is None:
            raise ValueError("--glove_path needs the vocabulary: pass vocab_words and vocab_path to build_model")
        glove_cache = glove_cache_path(vocab_path, cfg.glove_path)
    return VARIANTS[cfg.model](cfg, vocab_size, vocab_words=vocab_words, glove_cache=glove_cache)
