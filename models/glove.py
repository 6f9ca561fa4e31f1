"""GloVe word vectors for a vocabulary, read from the standard text format and cached.

Reading glove.840B.300d.txt takes minutes, so the vocabulary's slice is saved
(torch.save of a plain dict, loadable with weights_only=True) beside the
vocabulary file. The cache records the GloVe file's path, size and mtime and
the vocabulary words; any change makes it stale and the text file is read again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from utils.io import atomic_write

log = logging.getLogger("manme")


def glove_cache_path(vocab_path: str | Path, glove_path: str | Path) -> Path:
    """<vocab_dir>/<vocab stem>.<glove file stem>.pt, beside the vocabulary file."""
    vocab_path, glove_path = Path(vocab_path), Path(glove_path)
    return vocab_path.with_name(f"{vocab_path.stem}.{glove_path.stem}.pt")


def _file_key(path: Path) -> dict:
    stat = path.stat()
    return {"glove_path": str(path.resolve()), "glove_size": stat.st_size, "glove_mtime_ns": stat.st_mtime_ns}


def _read_text(path: Path, words: list[str]) -> tuple[Tensor, Tensor]:
    index = {}
    for i, w in enumerate(words):
        index.setdefault(w, i)
    vectors, found, dim = None, torch.zeros(len(words), dtype=torch.bool), None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, 1):
            word = line.split(" ", 1)[0]
            if dim is None:
                dim = len(line.rstrip().split(" ")) - 1
                if dim < 1:
                    raise ValueError(f"{path}:{line_number}: not a GloVe text file (expected 'word v1 v2 ...')")
                vectors = torch.zeros(len(words), dim)
            i = index.get(word)
            if i is None or found[i]:
                continue
            values = line.rstrip().split(" ")
            if len(values) != dim + 1:  # an entry whose "word" holds spaces, e.g. '. . .'
                continue
            try:
                vector = torch.tensor([float(v) for v in values[1:]])
            except ValueError as e:
                raise ValueError(f"{path}:{line_number}: the vector of {word!r} is not numbers ({e}); "
                                 f"re-download the GloVe file") from None
            if not torch.isfinite(vector).all():
                raise ValueError(f"{path}:{line_number}: the vector of {word!r} holds NaN or infinite values; "
                                 f"re-download the GloVe file") from None
            vectors[i] = vector
            found[i] = True
    if vectors is None:
        raise ValueError(f"{path}: empty GloVe file")
    return vectors, found


def load_glove(path: str | Path, vocab_words: list[str], cache_path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """(vectors (V, dim), found (V,) bool) for `vocab_words`; rows of words not in GloVe are zero."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GloVe file not found (--glove_path); leave --glove_path empty "
                                f"to initialise word embeddings at random")
    key = {**_file_key(path), "words": list(vocab_words)}
    cache_path = Path(cache_path) if cache_path else None
    if cache_path is not None and cache_path.is_file():
        try:
            cached = torch.load(cache_path, map_location="cpu", weights_only=True)
            if all(cached.get(k) == v for k, v in key.items()):
                vectors, found = cached["vectors"], cached["found"]
                log.info(f"GloVe: {int(found.sum())} of {len(vocab_words)} words found (cache {cache_path})")
                return vectors, found
            log.info(f"GloVe: cache {cache_path} is stale (GloVe file or vocabulary changed); re-reading {path}")
        except Exception as e:  # unreadable cache: rebuild it
            log.warning(f"GloVe: ignoring unreadable cache {cache_path} ({e})")
    vectors, found = _read_text(path, list(vocab_words))
    log.info(f"GloVe: {int(found.sum())} of {len(vocab_words)} words found in {path}")
    if cache_path is not None:
        try:
            atomic_write(cache_path, lambda f: torch.save({**key, "vectors": vectors, "found": found}, f), binary=True)
        except OSError as e:
            log.warning(f"GloVe: could not write cache {cache_path} ({e}); the text file will be read again next time")
    return vectors, found
