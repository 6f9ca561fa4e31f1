"""retrieve.py: index a folder, query it; the index of a folder holding a gallery returns the
rankings evaluate.py writes."""
from __future__ import annotations

import contextlib
import io
import shutil

import pytest
import torch

from tests.helpers import read_jsonl, read_png, run_cli
from utils.errors import UserError


@pytest.fixture(scope="module")
def gallery(tiny_root, tmp_path_factory):
    """A folder holding copies of the FashionIQ dress val gallery, in a subfolder too, plus broken files."""
    from config import resolve
    from data.formats import open_dataset
    fmt = open_dataset(resolve({"dataset": "fashioniq", "data_root": str(tiny_root)}))
    split = next(s for s in fmt.eval_splits("val") if s.category == "dress")
    folder = tmp_path_factory.mktemp("my_images")
    (folder / "more").mkdir()
    for n, image_id in enumerate(split.gallery):
        source = fmt.image_path(image_id)
        shutil.copy(source, folder / ("more" if n % 2 else "") / source.name)
    (folder / "more" / "broken.jpg").write_bytes(b"not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image file, not indexed")
    return folder, split


@pytest.fixture(scope="module")
def index(ckpt, gallery, tmp_path_factory):
    folder, split = gallery
    import retrieve
    path = tmp_path_factory.mktemp("index") / "my_images.index"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        retrieve.main(["index", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(path), "--device", "cpu",
                       "--num_workers", "0"])
    return path, stderr.getvalue()


@pytest.fixture(scope="module")
def rankings(ckpt, tiny_root, tmp_path_factory):
    import evaluate
    out = tmp_path_factory.mktemp("eval")
    evaluate.main(["--ckpt", str(ckpt), "--data_root", str(tiny_root), "--output_dir", str(out), "--device", "cpu",
                   "--num_workers", "0", "--categories", "dress"])
    return read_jsonl(out / "rankings.jsonl")


def find(folder, image_id):
    return next(folder.rglob(f"{image_id}.*"))


@pytest.mark.slow
def test_index_file(index, gallery, ckpt):
    from tools.search_index import file_sha256
    path, stderr = index
    folder, split = gallery
    state = torch.load(path, weights_only=True)  # safe: tensors and plain values only
    assert state["format"] == "manme-search-index"
    assert sorted(p.rsplit("/", 1)[-1].split(".")[0] for p in state["paths"]) == sorted(split.gallery)
    assert any(p.startswith("more/") for p in state["paths"]), "paths are relative to the indexed folder"
    assert state["checkpoint"]["sha256"] == file_sha256(ckpt)
    for grain in ("coarse", "mid", "fine"):
        x = state["embeddings"][grain]
        assert x.shape == (len(split.gallery), 64) and torch.allclose(x.norm(dim=1), torch.ones(len(x)), atol=1e-4)
    # unreadable files are listed and skipped
    assert "2 unreadable file(s) skipped" in stderr
    assert "broken.jpg" in stderr and "empty.png" in stderr
    assert len(state["skipped"]) == 2 and "notes.txt" not in stderr


@pytest.mark.slow
def test_query_matches_evaluation_rankings(index, gallery, rankings):
    path, _ = index
    folder, _ = gallery
    row = rankings[0]
    assert " <and> " in row["text"]  # FashionIQ's two-caption form, exactly as rankings.jsonl writes it
    proc = run_cli("retrieve.py", "query", "--index", path, "--image", find(folder, row["reference"]),
                   "--text", row["text"], "--k", "10", "--device", "cpu")
    lines = proc.stdout.strip().splitlines()
    got = [line.split()[1].rsplit("/", 1)[-1].split(".")[0] for line in lines]
    scores = [float(line.split()[0]) for line in lines]
    assert got == row["ranking"][:10]
    assert scores == sorted(scores, reverse=True)
    assert row["reference"] not in got and "left out of the ranking" in proc.stderr


@pytest.mark.slow
def test_every_query_matches_in_process(ckpt, index, gallery, rankings):
    from engine.inference import load_trained
    from tools.search_index import load_index, search
    path, _ = index
    folder, _ = gallery
    trained = load_trained(ckpt, {"device": "cpu"})
    model, vocab = trained.model, trained.vocab
    loaded = load_index(path)
    for row in rankings[::6]:
        result = search(model, vocab, loaded, find(folder, row["reference"]), row["text"], 10, torch.device("cpu"))
        assert [p.stem for p in result.paths] == row["ranking"][:10], row["query"]


@pytest.mark.slow
def test_query_outside_index_png_and_unknown_words(index, gallery, tiny_root, tmp_path, capsys):
    import retrieve
    from config import resolve
    from data.formats import open_dataset
    path, _ = index
    fmt = open_dataset(resolve({"dataset": "fashioniq", "data_root": str(tiny_root)}))
    outside = fmt.image_path(next(s for s in fmt.eval_splits("val") if s.category == "shirt").gallery[0])
    png = tmp_path / "result.png"
    retrieve.main(["query", "--index", str(path), "--image", str(outside), "--text",
                   "is blue <and> has florbish sleeves", "--k", "5", "--png", str(png), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 5
    assert "warning: not in the vocabulary" in err and "florbish" in err
    assert "left out" not in err
    assert read_png(png).width == 1000


@pytest.mark.slow
def test_wrong_checkpoint_is_refused(index, gallery, ckpt, tmp_path):
    import retrieve
    path, _ = index
    folder, split = gallery
    state = torch.load(ckpt, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(ValueError, match="is not the checkpoint that built"):
        retrieve.main(["query", "--index", str(path), "--image", str(find(folder, split.gallery[0])), "--text", "red",
                       "--ckpt", str(other), "--device", "cpu"])


def test_unsafe_or_foreign_index_is_refused(tmp_path):
    from pathlib import Path

    from tools.search_index import load_index
    unsafe = tmp_path / "unsafe.index"
    torch.save({"format": "manme-search-index", "root": Path("/")}, unsafe)  # a pickled Python object
    with pytest.raises(ValueError, match="refused"):
        load_index(unsafe)
    foreign = tmp_path / "foreign.index"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a manme search index"):
        load_index(foreign)
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing.index")


@pytest.mark.slow
def test_index_errors(ckpt, tmp_path):
    import retrieve
    (tmp_path / "empty_folder").mkdir()
    proc = run_cli("retrieve.py", "index", "--ckpt", ckpt, "--images", tmp_path / "empty_folder",
                   "--out", tmp_path / "x.index", check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("error:") and "no image files" in proc.stderr
    with pytest.raises(FileNotFoundError, match="no such folder"):
        retrieve.main(["index", "--ckpt", str(ckpt), "--images", str(tmp_path / "absent"),
                       "--out", str(tmp_path / "x.index"), "--device", "cpu"])
    with pytest.raises(UserError, match="give a command"):
        retrieve.main(["search"])


def test_an_indexed_reference_reads_its_row_and_ranks_as_its_embedding_would(ckpt, index, gallery, rankings,
                                                                              tmp_path, monkeypatch):
    """A reference that is an unchanged indexed file is not embedded again (its row is the model's embedding of
    it); a copy of the same file outside the index is embedded, and ranks the gallery the same way."""
    import tools.search_index as search_index
    from engine.inference import load_trained
    path, _ = index
    folder, _ = gallery
    trained = load_trained(ckpt, {"device": "cpu"})
    loaded = search_index.load_index(path)
    row = rankings[0]
    indexed = find(folder, row["reference"])
    outside = tmp_path / indexed.name
    shutil.copy(indexed, outside)
    fresh = search_index.search(trained.model, trained.vocab, loaded, outside, row["text"], 11, torch.device("cpu"))
    embedded = []
    real = search_index.embed_images
    monkeypatch.setattr(search_index, "embed_images", lambda *a, **k: embedded.append(a[1]) or real(*a, **k))
    reused = search_index.search(trained.model, trained.vocab, loaded, indexed, row["text"], 10, torch.device("cpu"))
    assert embedded == []  # no backbone pass for an indexed reference
    # the copy is another file: the original is then a candidate (and should come first); leave it out
    kept = [(p, s) for p, s in zip(fresh.paths, fresh.scores) if p.resolve() != indexed.resolve()][:10]
    assert [p for p, _ in kept] == reused.paths
    assert reused.scores == pytest.approx([s for _, s in kept], abs=1e-5)
