"""A broken model is never reported as a good one (issue 22, case 2): NaN or infinite embeddings or scores stop
validation, evaluation, indexing and search with one clear error, and such weights are never saved as best."""
from __future__ import annotations

import pytest
import torch

from engine.ranking import NonFiniteScores
from tests.helpers import TINY_TRAIN, one_thread


def broken(ckpt):
    """The tiny checkpoint's model with NaN weights, as a diverged update leaves it."""
    from engine.inference import load_trained
    trained = load_trained(ckpt, {"device": "cpu"})
    with torch.no_grad():
        for p in trained.model.parameters():
            p.fill_(float("nan"))
    return trained


@pytest.mark.slow
def test_evaluation_and_search_refuse_a_nan_model(ckpt, tiny_root, tmp_path):
    from data.formats import open_dataset
    from engine.evaluation import evaluate
    from tools.search_index import build_index
    trained = broken(ckpt)
    cfg = trained.cfg.__class__(**{**vars(trained.cfg), "data_root": str(tiny_root)})
    with one_thread(), pytest.raises(NonFiniteScores, match="NaN or infinite"):
        evaluate(trained.model, open_dataset(cfg), trained.vocab, cfg, "val", trained.device, progress=False)
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((tiny_root / "fashionIQ").rglob("*.jpg"))[:4]:
        (folder / image.name).write_bytes(image.read_bytes())
    with one_thread(), pytest.raises(NonFiniteScores):
        build_index(trained.model, folder, ckpt, cfg.crop_size, trained.device, 8, 0, None, cfg)


@pytest.mark.slow
def test_a_diverged_run_is_neither_validated_nor_saved_as_best(tiny_root, tmp_path, capsys):
    """--lr 1e20: the first update makes the weights non-finite; before, validation gave mR = 100 and saved
    best.pt."""
    import train
    import vocab
    assert vocab.main(["--dataset", "fashioniq", "--data_root", str(tiny_root), "--vocab_dir",
                       str(tmp_path / "vocab")]) == 0
    argv = ["--dataset", "fashioniq", "--data_root", tiny_root, "--vocab_dir", tmp_path / "vocab", "--output_dir",
            tmp_path / "runs", "--exp_name", "r", "--num_epochs", "1", "--max_steps", "1", "--lr", "1e20",
            *TINY_TRAIN]
    from utils.errors import command_status
    with one_thread():
        status = command_status(train.main, [str(a) for a in argv])
    assert status == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "r" / "stage1" / "best.pt").exists()
