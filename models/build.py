"""`--model` name -> variant class, and the one constructor every entry point uses."""
from __future__ import annotations

from pathlib import Path

from .attention import ARTEMIS, MANME, EMOnly, ISOnly
from .base import Retriever
from .baselines import TIRG, CrossModal, LateFusion, VisualSearch
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
}


def build_model(cfg, vocab_size: int, vocab_path: str | Path | None = None,
                vocab_words: list[str] | None = None) -> Retriever:
    """The variant named by cfg.model. With cfg.glove_path, the vocabulary's words come from
    `vocab_words` or the vocabulary file (`vocab_path`, default <vocab_dir>/<dataset>_vocab.json),
    and the GloVe slice is cached beside that file."""
    if cfg.model not in VARIANTS:
        raise ValueError(f"--model {cfg.model!r}: unknown; choose one of {', '.join(VARIANTS)}")
    glove_cache = None
    if cfg.glove_path:
        vocab_path = Path(vocab_path or Path(cfg.vocab_dir) / f"{cfg.dataset}_vocab.json")
        if vocab_words is None:
            from data.text import Vocabulary
            vocab_words = Vocabulary.load(vocab_path).tokens
        glove_cache = glove_cache_path(vocab_path, cfg.glove_path)
    return VARIANTS[cfg.model](cfg, vocab_size, vocab_words=vocab_words, glove_cache=glove_cache)
