"""Build the vocabulary of a dataset's training captions: <vocab_dir>/<dataset>_vocab.json.

    python vocab.py --dataset fashioniq|shoes|fashion200k|cirr [--data_root DIR] [--vocab_dir DIR]
"""
from __future__ import annotations

from config import build_parser, given_flags, resolve
from data.formats import build_vocabulary
from data.text import vocabulary_path
from utils.errors import command_status, run_command
from utils.io import check_output_file


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one `error: ...` line for bad input."""
    return command_status(build, argv)


def build(argv: list[str] | None) -> None:
    explicit = given_flags(build_parser("vocab", "Build the vocabulary from the training captions of --dataset.")
                           .parse_args(argv))
    if explicit.get("text_encoder") == "clip":
        print("--text_encoder clip uses open_clip's bundled BPE tokenizer: no vocabulary is needed, nothing written")
        return
    cfg = resolve(explicit)
    path = vocabulary_path(cfg)
    check_output_file(path, "--vocab_dir")
    vocab = build_vocabulary(cfg)
    vocab.save(path)
    print(f"Vocabulary size: {vocab.words_count} words")
    print(f"Wrote {path} ({len(vocab)} tokens with the special ones)")


if __name__ == "__main__":
    run_command(main)
