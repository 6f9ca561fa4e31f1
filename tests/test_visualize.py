"""visualize.py (retrieval grid, attention maps), the TensorBoard hook, and the model profile,
on a tiny FashionIQ checkpoint trained for two steps."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import read_png, run_cli
from utils.errors import UserError


@pytest.fixture(scope="module")
def loaded(ckpt, tiny_root):
    from data.formats import open_dataset
    from engine.inference import load_trained
    trained = load_trained(ckpt, {"data_root": str(tiny_root), "device": "cpu", "num_workers": 0})
    model, cfg, vocab = trained.model, trained.cfg, trained.vocab
    return model, cfg, vocab, open_dataset(cfg)


def not_blank(image: Image.Image) -> bool:
    return int(np.asarray(image).std()) > 10


@pytest.mark.slow
def test_retrievals_png(ckpt, tiny_root, tmp_path, capsys):
    import visualize
    out = tmp_path / "retrievals.png"
    visualize.main(["retrievals", "--ckpt", str(ckpt), "--data_root", str(tiny_root), "--n", "3", "--k", "4",
                    "--width", "600", "--num_workers", "0", "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    image = read_png(out)
    assert image.width == 600 and 200 < image.height < 1200 and not_blank(image)


@pytest.mark.slow
def test_attention_png_and_overlaps(ckpt, tiny_root, tmp_path, capsys):
    import visualize
    out = tmp_path / "attention.png"
    visualize.main(["attention", "--ckpt", str(ckpt), "--data_root", str(tiny_root), "--n", "2", "--colors", "128",
                    "--out", str(out)])
    stdout = capsys.readouterr().out
    image = read_png(out)
    assert image.width == 1000 and 200 < image.height < 1000 and not_blank(image)
    for grain in ("coarse", "mid", "fine"):
        assert f"{grain}: attention overlap" in stdout


@pytest.mark.slow
def test_errors_are_clear(ckpt, tmp_path, capsys):
    import visualize
    with pytest.raises(UserError, match="give a command"):
        visualize.main(["draw", "--ckpt", str(ckpt), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit):
        visualize.main(["retrievals", "--out", str(tmp_path / "x.png")])
    assert "--ckpt PATH is required" in capsys.readouterr().err
    proc = run_cli("visualize.py", "retrievals", "--ckpt", tmp_path / "missing.pt", "--out", tmp_path / "x.png",
                   check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("error:") and "missing.pt" in proc.stderr


@pytest.mark.slow
def test_retrieval_rows_match_evaluation(loaded):
    """The figure ranks as evaluate() does: same top-k, reference excluded, target framed when retrieved."""
    from engine.evaluation import evaluate
    from tools.figures import retrieval_rows
    model, cfg, vocab, fmt = loaded
    rows = retrieval_rows(model, fmt, vocab, cfg, torch.device("cpu"), "val", n=48, k=5)
    result = evaluate(model, fmt, vocab, replace(cfg, categories="dress"), "val", torch.device("cpu"), progress=False)
    expected = {(r["reference"], r["text"]): r["ranking"][:5] for r in result.rankings if r["category"] == "dress"}
    assert rows and all(r.category == "dress" for r in rows)
    for row in rows:
        assert row.reference not in row.results
        assert [p.stem for p in row.results] == expected[(row.reference.stem, row.text)]
        assert row.scores == sorted(row.scores, reverse=True)


@pytest.mark.slow
def test_tensorboard_hook(loaded):
    from tools.figures import log_retrieval_figure

    class Writer:
        def add_image(self, tag, image, step, dataformats):
            self.call = (tag, image, step, dataformats)

    model, cfg, vocab, fmt = loaded
    writer = Writer()
    log_retrieval_figure(writer, "val/retrievals", 7, model, fmt, vocab, cfg, torch.device("cpu"), n=2, k=3, width=500)
    tag, image, step, dataformats = writer.call
    assert (tag, step, dataformats) == ("val/retrievals", 7, "HWC")
    assert image.dtype == np.uint8 and image.shape[1] == 500 and image.shape[2] == 3


@pytest.mark.slow
def test_attention_maps_are_grad_cam_of_each_part(loaded):
    from engine.inference import embed_texts
    from tools.figures import attention_maps
    model, cfg, vocab, fmt = loaded
    torch.manual_seed(0)
    reference, target = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    text = embed_texts(model, vocab, ["is red <and> has stripes"], torch.device("cpu")).clone()
    found = attention_maps(model, reference, target, text)
    maps, scores, overlap, map_overlap = found.maps, found.part_scores, found.overlap, found.map_overlap
    feature_shapes = {g: x.shape[-2:] for g, x in model.image_encoder.feature_maps(target).items()}
    with torch.no_grad():
        query = model.compose(model.encode_images(reference), text)
        parts = model.score_parts(query, model.encode_images(target))
        expected_overlap = model.attention_overlap(query)
    for g in model.grains:
        for part in ("modified", "preserved"):
            heat = maps[g][part]
            assert heat.shape == tuple(feature_shapes[g]) and heat.min() >= 0 and heat.max() <= 1 + 1e-6
            assert scores[g][part] == pytest.approx(float(parts[f"{part}/{g}"][0, 0]), abs=1e-5)
        assert overlap[g] == pytest.approx(float(expected_overlap[g][0]), abs=1e-6)
        assert 0 <= map_overlap[g] <= 1 + 1e-6


@pytest.mark.slow
def test_attention_needs_score_parts(loaded):
    from config import resolve
    from models import build_model
    from tools.figures import attention_rows
    model, cfg, vocab, fmt = loaded
    tirg_cfg = resolve({"model": "tirg", "backbone": "resnet18", "backbone_weights": "none", "embed_dim": 64,
                        "word_dim": 32, "crop_size": 32})
    with pytest.raises(ValueError, match="modified/preserved"):
        attention_rows(build_model(tirg_cfg, len(vocab)), fmt, vocab, tirg_cfg, torch.device("cpu"))


def test_draw_retrievals_layout(tmp_path):
    from tools.figures import RetrievalRow, draw_retrievals
    paths = []
    for i, color in enumerate(["red", "blue", "green", "black"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), color).save(paths[-1])
    row = RetrievalRow(paths[0], "is blue <and> has long sleeves", paths[1:], [3.0, 2.5, 2.0], {paths[2]})
    image = draw_retrievals([row, row], width=700, title="t")
    assert image.width == 700 and image.height > 2 * (700 - 20) // 4
    pixels = np.asarray(image)
    assert ((pixels[..., 1] > 140) & (pixels[..., 0] < 60) & (pixels[..., 2] < 90)).any(), "no green frame"
    with pytest.raises(ValueError):
        draw_retrievals([])


@pytest.mark.slow
def test_profile(loaded):
    from tools.profile import format_profile, profile_model
    model, cfg, vocab, fmt = loaded
    profile = profile_model(model, cfg, torch.device("cpu"))
    trainable, total = model.parameter_counts()
    assert profile["trainable_params"] == trainable and profile["total_params"] == total
    assert 0 < trainable < total  # stage 1: backbone frozen
    assert profile["gflops_per_query"] == pytest.approx(profile["gflops_image"] + profile["gflops_text_compose"])
    assert 0 < profile["gflops_text_compose"] < profile["gflops_image"]
    # resnet18 at 32 px: about 1.8 GFLOPs * (32/224)^2 for the backbone, plus the top-down convs
    assert 0.02 < profile["gflops_image"] < 0.2
    # at least one d-sized dot product per gallery image (a product the counter misses would read 0)
    assert profile["gflops_score_per_1k"] * 1e9 >= 2 * cfg.embed_dim * 1000
    text = format_profile(profile)
    assert "trainable" in text and "GFLOPs per query" in text
