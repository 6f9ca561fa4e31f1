"""Build the vocabulary of a dataset's training captions: <vocab_dir>/<dataset>_vocab.json.

    python vocab.py --dataset fashioniq|shoes|fashion200k [--data_root DIR] [--vocab_dir DIR]
"""
from __future__ import annotations

import sys

from config import parse_config
from data.formats import build_vocabulary
from data.text import vocabulary_path


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config("vocab", "Build the vocabulary from the training captions of --dataset.", argv)
    try:
        vocab = build_vocabulary(cfg)
    except (FileNotFoundError, ValueError) as e:  # data-layout problems: the message names the fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = vocabulary_path(cfg)
    vocab.save(path)
    print(f"Vocabulary size: {vocab.words_count} words")
    print(f"Wrote {path} ({len(vocab)} tokens with the special ones)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
