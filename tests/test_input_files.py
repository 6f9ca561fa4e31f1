"""Every input file a user names gets a message saying which file, and for text files which line (issue 22,
case 11)."""
from __future__ import annotations

import pytest

from engine.checkpoint import CheckpointError, load_checkpoint
from models.glove import load_glove


@pytest.mark.parametrize("line,expected", [
    ("red 0.3 abc", "the vector of 'red' is not numbers"),
    ("red nan 0.2", "the vector of 'red' holds NaN or infinite values"),
    ("red 1e999 0.2", "the vector of 'red' holds NaN or infinite values"),
], ids=["not-a-number", "nan", "overflow"])
def test_a_damaged_glove_line_is_named(tmp_path, line, expected):
    glove = tmp_path / "glove.txt"
    glove.write_text(f"the 0.1 0.2\n{line}\nblue 0.5 0.6\n")
    with pytest.raises(ValueError) as refused:
        load_glove(glove, ["the", "red", "blue"])
    assert str(refused.value).startswith(f"{glove}:2: {expected}"), refused.value


def test_a_folder_given_as_checkpoint_is_named_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}: is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
