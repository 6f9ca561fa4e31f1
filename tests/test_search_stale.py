"""The search index notices changed files (issue 22, case 9): a file deleted or replaced after indexing used to
be returned with its old score (and `--png` then failed on it); now it is left out, reported, and the message
gives the command that rebuilds the index."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.helpers import read_png


@pytest.mark.slow
def test_deleted_and_replaced_files_are_left_out_and_reported(ckpt, tiny_root, tmp_path, capsys):
    import retrieve
    from engine.inference import load_trained
    from tools.search_index import load_index, search
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((tiny_root / "fashionIQ").rglob("*.jpg"))[:8]:
        shutil.copy2(image, folder / image.name)
    index_path = tmp_path / "my.index"
    retrieve.main(["index", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(index_path), "--device", "cpu",
                   "--num_workers", "0"])
    reference = tmp_path / "reference.jpg"
    shutil.copy2(sorted(folder.iterdir())[0], reference)
    trained = load_trained(ckpt, {"device": "cpu"})
    index = load_index(index_path)
    assert len(index.stamps) == len(index) == 8
    before = search(trained.model, trained.vocab, index, reference, "is red", 3, trained.device)
    assert not before.stale
    deleted, replaced = before.paths[0], before.paths[1]
    deleted.unlink()
    shutil.copy(sorted(folder.iterdir())[-1], replaced)  # another picture under the same name
    os.utime(replaced, ns=(replaced.stat().st_atime_ns, replaced.stat().st_mtime_ns + 10**9))
    after = search(trained.model, trained.vocab, index, reference, "is red", 3, trained.device)
    assert len(after.paths) == 3 and deleted not in after.paths and replaced not in after.paths
    assert set(after.stale) == {deleted, replaced}
    assert after.paths[0] == before.paths[2]  # the rest keep their order
    capsys.readouterr()
    png = tmp_path / "results.png"
    retrieve.main(["query", "--index", str(index_path), "--image", str(reference), "--text", "is red", "--k", "3",
                   "--png", str(png), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert str(deleted) not in out and str(replaced) not in out and len(out.splitlines()) == 3
    assert "2 indexed file(s) deleted or changed" in err
    assert f"python retrieve.py index --ckpt {ckpt.resolve()} --images {folder.resolve()} --out {index_path}" in err
    assert read_png(png).width == 1000


def test_an_index_without_stamps_still_loads(tmp_path):
    from tools.search_index import SearchIndex, load_index, save_index
    (tmp_path / "a.jpg").write_bytes(b"x")
    index = SearchIndex(root=str(tmp_path), paths=["a.jpg"], embeddings={"coarse": torch.ones(1, 4) / 2},
                        checkpoint={"path": "c.pt", "sha256": "0" * 64}, crop_size=32)
    save_index(index, tmp_path / "old.index")
    state = torch.load(tmp_path / "old.index", weights_only=True)
    del state["stamps"]  # as an index written before stamps were recorded
    torch.save(state, tmp_path / "old.index")
    loaded = load_index(tmp_path / "old.index")
    assert loaded.stamps == [] and not loaded.changed(0)
    (tmp_path / "a.jpg").unlink()
    assert loaded.changed(0)  # deleted files are noticed all the same
