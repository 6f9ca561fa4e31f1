"""The defaults reproduce the ARTEMIS release's recipe; the deliberate differences are switchable; metrics
carry R@1/R@5 and the tie count for every dataset."""
from __future__ import annotations

import json

import pytest
import torch

from config import resolve
from engine.ranking import rank_queries
from models import build_model
from models.baselines import GatedResidual
from tests.helpers import TINY, run_cli

# What the release's train.py / option.py / scripts/release_script.sh do, per dataset.
RELEASE = {
    "fashioniq": dict(backbone="resnet50", batch_size=32, finetune_epochs=50, finetune_step_lr=10),
    "shoes": dict(backbone="resnet50", batch_size=32, finetune_epochs=50, finetune_step_lr=10),
    "fashion200k": dict(backbone="resnet18", batch_size=128, finetune_epochs=100, finetune_step_lr=20),
}


@pytest.mark.parametrize("dataset", list(RELEASE))
def test_resolved_defaults_are_the_release_recipe(dataset):
    cfg = resolve({"dataset": dataset})
    expected = dict(lr=5e-4, lr_decay=0.5, num_epochs=8, step_lr=4, weight_decay=0.01,  # AdamW's own default
                    stage2_start="continue", fpn_smooth="full", temperature_init=2.65926, **RELEASE[dataset])
    assert {k: getattr(cfg, k) for k in expected} == expected


@pytest.mark.parametrize("model", ["tirg", "late-fusion", "cross-modal", "visual-search", "em-only", "is-only",
                                   "artemis"])
def test_baselines_default_to_the_release_granularity(model):
    assert resolve({"model": model}).grains == "coarse"
    if model != "artemis":  # multi-grained baselines stay one flag away
        assert resolve({"model": model, "grains": "coarse,mid,fine"}).grains == "coarse,mid,fine"
    assert resolve({"model": "manme"}).grains == "coarse,mid,fine"


def test_tirg_is_built_as_the_release_builds_it():
    composer = GatedResidual(8)
    gate, residual = [[type(m).__name__ for m in seq] for seq in (composer.gate, composer.residual)]
    assert gate == ["BatchNorm1d", "ReLU", "Linear"]
    assert residual == ["BatchNorm1d", "ReLU", "Linear", "ReLU", "Linear"]
    assert composer.gate[0].num_features == 16 and composer.gate[2].weight.shape == (8, 16)
    assert [m.weight.shape for m in composer.residual if isinstance(m, torch.nn.Linear)] == [(16, 16), (8, 16)]
    assert composer.weights.tolist() == [1.0, 1.0]


def small(**kw):
    return resolve({"backbone": "resnet18", "backbone_weights": "none", "embed_dim": 16, "word_dim": 8, **kw})


def test_frozen_backbone_batchnorm_statistics_are_a_switch():
    model = build_model(small(), vocab_size=10).train()
    assert not model.image_encoder.backbone.training  # ours: fixed statistics in stage 1
    model = build_model(small(frozen_bn_stats=False), vocab_size=10).train()
    assert model.image_encoder.backbone.training  # the release: statistics keep updating
    assert not any(p.requires_grad for p in model.image_encoder.backbone.parameters())


@pytest.mark.parametrize("separate", [False, True])
def test_backbone_passes_per_step(separate):
    model = build_model(small(separate_backbone_passes=separate), vocab_size=10).eval()
    calls = []
    model.image_encoder.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    images = torch.rand(6, 3, 32, 32)
    tokens, lengths = torch.ones(3, 4, dtype=torch.long), torch.tensor([4, 3, 2])
    inputs = model(images[:3], images[3:], tokens, lengths)
    assert calls == ([3, 3] if separate else [6])
    # in eval mode the passes give the same embeddings
    torch.testing.assert_close(inputs.references, model.encode_images(images[:3], stacked=True))
    torch.testing.assert_close(inputs.targets, model.encode_images(images[3:], stacked=True))
    torch.testing.assert_close(inputs.text, model.encode_texts(tokens, lengths))


def test_ties_with_the_target_are_counted_and_broken_by_gallery_order():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1],    # target 0: item 1 above, items 2 and 3 tied
                           [0.2, 0.2, 0.3, 0.0, 0.2]])   # targets 1 and 4 (0.2): item 2 above, item 0 tied
    result = rank_queries(lambda q, g: scores[q, g], 2, 5, targets=[[0], [1, 4]], references=[-1, 3], topk=3)
    assert result.ranks.tolist() == [1, 2]  # equal scores in gallery order: item 0 comes before target 1
    assert result.ties.tolist() == [2, 1]   # query 1: item 0 ties; item 4 is a correct target, item 3 the reference


@pytest.fixture(scope="module")
def two_stage_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    run_cli("vocab.py", "--dataset", "shoes", "--data_root", tiny_root, "--vocab_dir", out / "vocab")
    common = ["--dataset", "shoes", "--data_root", tiny_root, "--vocab_dir", out / "vocab", "--output_dir", out,
              *TINY, "--batch_size", "8", "--log_every", "1", "--two_stage", "--num_epochs", "2", "--step_lr", "1",
              "--finetune_epochs", "1", "--max_steps", "2"]
    run_cli("train.py", *common, "--exp_name", "continue")
    run_cli("train.py", *common, "--exp_name", "best", "--stage2_start", "best")
    return out


def first_lr(run_dir, stage):
    return json.loads((run_dir / stage / "train_log.jsonl").read_text().splitlines()[0])["lr"]


@pytest.mark.slow
def test_stage2_continues_stage1_optimizer_and_decayed_lr(two_stage_run):
    run_dir = two_stage_run / "continue"
    assert first_lr(run_dir, "stage1") == pytest.approx(5e-4)
    # stage 1: --max_steps 2 ends it after its first epoch, whose end halves the rate
    last = torch.load(run_dir / "stage1" / "last.pt", weights_only=True)
    assert first_lr(run_dir, "stage2") == pytest.approx(last["optimizer"]["param_groups"][0]["lr"]) == 2.5e-4
    stage2 = torch.load(run_dir / "stage2" / "last.pt", weights_only=True)
    assert stage2["best_score"] >= last["best_score"]  # the best score is carried over
    assert (run_dir / "stage2" / "best.pt").is_file()
    assert first_lr(two_stage_run / "best", "stage2") == pytest.approx(5e-4)  # ours: a fresh optimizer


@pytest.mark.slow
def test_metrics_carry_r1_r5_and_ties_and_evaluation_is_float32_unless_asked(two_stage_run, tiny_root, tmp_path):
    ckpt = two_stage_run / "continue" / "stage2" / "best.pt"
    proc = run_cli("evaluate.py", "--ckpt", ckpt, "--data_root", tiny_root, "--output_dir", tmp_path / "e",
                   "--device", "cpu", "--num_workers", "0")
    assert "note: --amp" not in proc.stdout and "R@5 " not in proc.stdout.splitlines()[1]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for part in (metrics["overall"], *metrics["per_category"].values()):
        assert {"R@1", "R@5", "R@10", "R@50", "queries_with_ties"} <= set(part)
    proc = run_cli("evaluate.py", "--ckpt", ckpt, "--data_root", tiny_root, "--output_dir", tmp_path / "b",
                   "--device", "cpu", "--num_workers", "0", "--amp", "bf16")
    assert "note: --amp bf16" in proc.stdout


def test_a_saved_config_without_a_later_setting_means_what_it_was_trained_with(monkeypatch):
    """A checkpoint or config.json written before a model setting existed is read with the value it was
    trained with (config.SAVED_WITHOUT), not with today's default, by resolve and by check_compatible."""
    import config
    from engine.trainer import check_compatible
    saved = resolve({}).to_dict()
    del saved["fpn_relu"]
    monkeypatch.setattr(config, "SAVED_WITHOUT", {"fpn_relu": not config.Config.fpn_relu})
    assert resolve({}, base=saved).fpn_relu is (not config.Config.fpn_relu)
    assert resolve({"fpn_relu": config.Config.fpn_relu}, base=saved).fpn_relu is config.Config.fpn_relu  # a flag wins
    assert config.saved_setting(saved, "fpn_relu") is (not config.Config.fpn_relu)
    from engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="checkpoint has --fpn_relu .*; pass --(no-)?fpn_relu or"):
        check_compatible({"config": saved, "vocab": {"tokens": []}}, resolve({}), type("V", (), {"tokens": []}), "x")
