"""An output is never one of the inputs (issue 22, case 4): each command with an output path refuses, before
any work, an output that names one of its input files (same path once resolved, or the same file through a
link), where it used to overwrite it."""
from __future__ import annotations

import os

import pytest
import torch

import retrieve
import visualize
from tests.helpers import write_fashioniq, write_image
from tools.data_commands import check_main
from tools.search_index import SearchIndex, save_index
from utils.errors import command_status


@pytest.fixture()
def files(tmp_path):
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"a checkpoint the user needs")
    images = tmp_path / "images"
    write_image(images / "a.jpg")
    write_image(images / "b.png")
    return ckpt, images


def spellings(path):
    """The same file under other names: `..` in the path, a symlink, a hard link."""
    (path.parent / "sub").mkdir(exist_ok=True)
    link, hard = path.parent / f"link-{path.name}", path.parent / f"hard-{path.name}"
    link.symlink_to(path)
    os.link(path, hard)
    return [path, path.parent / "sub" / ".." / path.name, link, hard]


def refused(capsys, main, argv, *must_stay):
    before = [p.read_bytes() for p in must_stay]
    assert command_status(main, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "destroy" in err, err
    assert [p.read_bytes() for p in must_stay] == before
    return err


def test_retrieve_index_out_is_not_the_checkpoint_or_an_indexed_image(files, capsys):
    ckpt, images = files
    for out in spellings(ckpt):
        err = refused(capsys, retrieve.main, ["index", "--ckpt", ckpt, "--images", images, "--out", out], ckpt)
        assert "--ckpt" in err
    refused(capsys, retrieve.main, ["index", "--ckpt", ckpt, "--images", images, "--out", images / "a.jpg"],
            images / "a.jpg")


def test_retrieve_query_png_is_not_the_reference_or_an_indexed_image(files, tmp_path, capsys):
    ckpt, images = files
    index = tmp_path / "my.index"
    save_index(SearchIndex(root=str(images), paths=["a.jpg", "b.png"],
                           embeddings={"coarse": torch.nn.functional.normalize(torch.randn(2, 8), dim=1)},
                           checkpoint={"path": str(ckpt), "sha256": "0" * 64}, crop_size=32), index)
    query = ["query", "--index", index, "--text", "is red", "--ckpt", ckpt]
    for png in spellings(images / "b.png"):
        err = refused(capsys, retrieve.main, [*query, "--image", images / "b.png", "--png", png], images / "b.png")
        assert "--image" in err
    refused(capsys, retrieve.main, [*query, "--image", images / "b.png", "--png", index], index)
    refused(capsys, retrieve.main, [*query, "--image", images / "b.png", "--png", ckpt], ckpt)
    err = refused(capsys, retrieve.main, [*query, "--image", tmp_path / "images" / "a.jpg", "--png",
                                          images / "b.png"], images / "b.png")
    assert "indexed images" in err


def test_visualize_out_is_not_the_checkpoint(files, capsys):
    ckpt, _ = files
    for out in spellings(ckpt):
        refused(capsys, visualize.main, ["retrievals", "--ckpt", ckpt, "--out", out], ckpt)


def test_data_check_write_missing_is_not_a_dataset_file(tmp_path, capsys):
    write_fashioniq(tmp_path)
    captions = tmp_path / "fashionIQ" / "annotations" / "captions" / "cap.dress.train.json"
    argv = ["--dataset", "fashioniq", "--data_root", tmp_path, "--categories", "dress", "--allow_missing"]
    refused(capsys, check_main, [*argv, "--write_missing", captions], captions)
    listing = tmp_path / "fashionIQ" / "missing.txt"  # a listing of its own, written again: allowed
    assert check_main([str(a) for a in [*argv, "--write_missing", listing]]) == 0
    assert check_main([str(a) for a in [*argv, "--write_missing", listing]]) == 0
    assert listing.read_text().startswith("missing\t")
