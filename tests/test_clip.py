"""CLIP towers (open_clip): weight files of every accepted kind load, our stage maps and text features equal
open_clip's own forward for the same input, a frozen stage 1 keeps every tower tensor, wrong files are refused,
and images get CLIP's preprocessing. Small configurations of our own (models.clip.SMALL_CONFIGS), seconds each."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

open_clip = pytest.importorskip("open_clip")

from open_clip.model import CLIP  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import config  # noqa: E402
from data.augment import center_crop_normalize, crop_flip_normalize  # noqa: E402
from data.cache import PixelSource  # noqa: E402
from data.images import CLIP_MEAN, CLIP_STD, clip_style, target_pad  # noqa: E402
from data.loaders import pad_tokens  # noqa: E402
from data.text import ClipTokens  # noqa: E402
from models import build_model  # noqa: E402
from models.clip import ARCHITECTURES, INPUT_SIZES, SMALL_CONFIGS  # noqa: E402
from tools.convert_clip import convert  # noqa: E402
from utils.errors import UserError  # noqa: E402

TEXTS = ["is red and has long sleeves", "darker <and> shorter", ""]


def reference_clip(backbone: str, seed: int = 0) -> CLIP:
    """A random-weight open_clip model of one of our small configurations."""
    torch.manual_seed(seed)
    return CLIP(**SMALL_CONFIGS[backbone], quick_gelu=True).eval()


def save_as(model: CLIP, kind: str, folder) -> str:
    """The model's state dict written as one of the file kinds --backbone_weights accepts."""
    state = model.state_dict()
    if kind == "safetensors":
        path = folder / "clip.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif kind == "bin":
        path = folder / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    elif kind == "epoch":  # open_clip's training checkpoint: wrapped, DDP prefix
        path = folder / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "x", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif kind == "clip4cir":
        path = folder / "tuned_clip_best.pt"
        torch.save({"epoch": 1, "CLIP": state}, path)
    else:  # OpenAI's release format, converted once
        scripted = folder / "openai.pt"
        torch.jit.save(torch.jit.script(model), scripted)
        path = folder / "openai.safetensors"
        convert(scripted, path)
    return str(path)


def ours(backbone: str, weights: str, **kw):
    cfg = config.resolve(dict(backbone=backbone, backbone_weights=weights, crop_size=64, text_encoder="clip",
                              embed_dim=32, **kw))
    return build_model(cfg, 0).eval()


@pytest.mark.parametrize("kind", ["safetensors", "bin", "epoch", "clip4cir", "openai"])
def test_weight_files_give_open_clips_stage_maps_and_text_features(kind, tmp_path):
    reference = reference_clip("clip-rn-tiny")
    model = ours("clip-rn-tiny", save_as(reference, kind, tmp_path))
    images = torch.randn(2, 3, 64, 64)
    tokens, lengths = pad_tokens([ClipTokens().encode(t) for t in TEXTS])
    with torch.no_grad():
        c2, c3, c4 = model.image_encoder.backbone(images)
        want = reference.visual.forward_intermediates(images, indices=[2, 3, 4], intermediates_only=True)
        for got, expected in zip((c2, c3, c4), want["image_intermediates"]):
            assert torch.equal(got, expected)
        assert torch.equal(model.image_encoder.backbone.pool(c4), reference.encode_image(images))
        full = open_clip.get_tokenizer("RN50")([t.replace(" <and> ", " and ") for t in TEXTS])
        assert torch.equal(model.text_encoder.tower(tokens), reference.encode_text(full))


def test_vit_grains_from_depth_are_open_clips_intermediates(tmp_path):
    reference = reference_clip("clip-vit-tiny")
    model = ours("clip-vit-tiny", save_as(reference, "safetensors", tmp_path), clip_pool="attnpool")
    assert model.image_encoder.backbone.blocks == {"coarse": 3, "mid": 2, "fine": 1}
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        grids, pooled = model.image_encoder.backbone(images, pooled=True)
        want = reference.visual.forward_intermediates(images, indices=[0, 1, 2], normalize_intermediates=True)
        for grain, block in (("fine", 0), ("mid", 1), ("coarse", 2)):
            assert torch.equal(grids[grain], want["image_intermediates"][block])
        assert torch.equal(pooled, reference.encode_image(images))


def test_wrong_weight_files_are_refused_naming_the_expected_file(tmp_path):
    vit = save_as(reference_clip("clip-vit-tiny"), "bin", tmp_path)
    with pytest.raises(UserError, match=r"not clip-rn-tiny-quickgelu weights.*expects open_clip's"):
        ours("clip-rn-tiny", vit)
    resnet = tmp_path / "resnet18-f37072fd.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, resnet)
    with pytest.raises(UserError, match="torchvision ResNet"):
        ours("clip-rn-tiny", str(resnet))
    manme = tmp_path / "best.pt"
    torch.save({"model": {}, "config": {}}, manme)
    with pytest.raises(UserError, match="manme checkpoint"):
        ours("clip-rn-tiny", str(manme))
    scripted = tmp_path / "RN50.pt"
    torch.jit.save(torch.jit.script(reference_clip("clip-rn-tiny")), scripted)
    with pytest.raises(UserError, match="tools.convert_clip"):
        ours("clip-rn-tiny", str(scripted))
    with pytest.raises(UserError, match="--backbone_weights PATH"):
        ours("clip-rn-tiny", "default")
    with pytest.raises(FileNotFoundError, match="convert_clip"):
        ours("clip-rn-tiny", str(tmp_path / "absent.safetensors"))


def test_settings_that_need_a_clip_tower_or_its_input_size():
    for name, arch in ARCHITECTURES.items():  # our table of input sizes is open_clip's
        assert open_clip.get_model_config(arch)["vision_cfg"]["image_size"] == INPUT_SIZES[name]
    for name, cfg in SMALL_CONFIGS.items():
        assert cfg["vision_cfg"]["image_size"] == INPUT_SIZES[name]
    with pytest.raises(UserError, match="pass --crop_size 224 or --clip_pool gem"):
        config.resolve(dict(backbone="clip-rn50", clip_pool="attnpool", crop_size=256))
    with pytest.raises(UserError, match="pass --crop_size 288"):
        config.resolve(dict(backbone="clip-rn50x4", clip_pool="attnpool"))
    with pytest.raises(UserError, match="pass --crop_size 224"):
        config.resolve(dict(backbone="clip-vit-b-32", crop_size=256))
    config.resolve(dict(backbone="clip-rn50", crop_size=256))  # GeM pools any size
    with pytest.raises(UserError, match="clip-\\* --backbone"):
        config.resolve(dict(text_encoder="clip"))


def test_clip_preprocessing_target_pad_and_normalisation(tmp_path):
    assert (CLIP_MEAN, CLIP_STD) == (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    tall = Image.new("RGB", (40, 100), (200, 30, 30))
    padded = target_pad(tall, 1.25)
    assert padded.size == (80, 100) and padded.getpixel((0, 0)) == (0, 0, 0)  # black, both sides
    assert target_pad(Image.new("RGB", (90, 100)), 1.25).size == (90, 100)  # within the ratio: unchanged
    path = tmp_path / "tall.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (100, 40, 3), dtype=np.uint8)).save(path)
    style = clip_style(1.25)
    source = PixelSource(style.prepared_size(64), style=style)
    pixels = torch.from_numpy(source(path))[None]
    assert pixels.shape == (1, 64, 64, 3)
    # per image, with torchvision: the same pixels and the same input, bit for bit
    per_image = transforms.Compose([
        transforms.Lambda(lambda im: target_pad(im, 1.25)),
        transforms.Resize(64, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(64),
        transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    want = per_image(Image.open(path).convert("RGB"))
    assert torch.equal(center_crop_normalize(pixels, 64, style)[0], want)
    # training draws the flip as ever, but CLIP inputs are used as they are (CLIP4Cir): same at every epoch
    assert torch.equal(crop_flip_normalize(pixels, torch.tensor([[0, 0, 1]]), 64, style)[0], want)


def test_clip_tokens_need_no_vocabulary(tmp_path):
    from tests.helpers import run_cli
    tokens = ClipTokens()
    ids = tokens.encode("is red <and> has sleeves")
    assert ids[0] == 49406 and ids[-1] == 49407 and len(tokens) == 49408
    assert tokens.decode(ids).strip().endswith("is red and has sleeves <end_of_text>")
    out = run_cli("vocab.py", "--text_encoder", "clip", "--vocab_dir", tmp_path / "v", "--data_root", tmp_path)
    assert "no vocabulary is needed" in out.stdout and not (tmp_path / "v").exists()


# ---- training and evaluation on synthetic data (train.py / evaluate.py in this process) ----

def clip_flags(root, out, weights: str) -> list[str]:
    return ["--dataset", "fashioniq", "--data_root", root, "--output_dir", out, "--backbone", "clip-rn-tiny",
            "--backbone_weights", weights, "--crop_size", "64", "--num_workers", "0", "--device", "cpu",
            "--batch_size", "8", "--log_every", "1", "--no-val_figure", "--max_steps", "2"]


def tower_tensors(checkpoint_path) -> dict[str, torch.Tensor]:
    """The CLIP tensors of a manme checkpoint under open_clip's names."""
    model = torch.load(checkpoint_path, weights_only=True)["model"]
    names = {"image_encoder.backbone.": "", "text_encoder.tower.": ""}
    return {k.replace(p, n): v for k, v in model.items() for p, n in names.items() if k.startswith(p)}


@pytest.mark.slow
def test_manme_on_clip_keeps_the_towers_in_stage_1_then_fine_tunes_and_evaluates(tiny_root, tmp_path):
    from tests.helpers import evaluate_in_process, read_jsonl, train_in_process
    reference = reference_clip("clip-rn-tiny")
    weights = save_as(reference, "safetensors", tmp_path)
    train_in_process(*clip_flags(tiny_root, tmp_path, weights), "--exp_name", "m", "--text_encoder", "clip",
                     "--embed_dim", "32", "--two_stage", "--num_epochs", "1", "--finetune_epochs", "1")
    stage1 = tower_tensors(tmp_path / "m" / "stage1" / "last.pt")
    expected = {k: v for k, v in reference.state_dict().items() if k != "logit_scale"}
    assert stage1.keys() == expected.keys()
    assert all(torch.equal(stage1[k], v) for k, v in expected.items())  # bit for bit, BatchNorm statistics too
    stage2 = tower_tensors(tmp_path / "m" / "stage2" / "last.pt")
    changed = [k for k in expected if not torch.equal(stage2[k], expected[k])]
    assert any(k.startswith("visual.") for k in changed) and any(k.startswith("transformer.") for k in changed)
    saved = torch.load(tmp_path / "m" / "stage2" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in saved] == pytest.approx([5e-4, 5e-6])  # the towers at --clip_lr_mult 0.01
    assert len(read_jsonl(tmp_path / "m" / "stage2" / "train_log.jsonl")) == 2
    evaluate_in_process("--ckpt", tmp_path / "m" / "stage2" / "last.pt", "--data_root", tiny_root, "--device", "cpu",
                        "--num_workers", "0", "--output_dir", tmp_path / "eval")
    metrics = __import__("json").loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["overall"]["mR"] <= 100


@pytest.mark.slow
def test_combiner_both_stages_and_the_zero_shot_row(tiny_root, tmp_path):
    from tests.helpers import evaluate_in_process, train_in_process
    reference = reference_clip("clip-rn-tiny")
    weights = save_as(reference, "bin", tmp_path)
    # stage 1 of CLIP4Cir: the towers fine-tuned with the element-wise sum (clip-sum's preset: no frozen stage)
    train_in_process(*clip_flags(tiny_root, tmp_path, weights), "--model", "clip-sum", "--exp_name", "sum",
                     "--finetune_epochs", "1")
    tuned = tower_tensors(tmp_path / "sum" / "stage2" / "last.pt")
    assert not all(torch.equal(tuned[k], v) for k, v in reference.state_dict().items() if k in tuned)
    # stage 2: the Combiner on those towers, frozen, each image embedded once
    train_in_process(*clip_flags(tiny_root, tmp_path, weights), "--model", "combiner", "--exp_name", "comb",
                     "--num_epochs", "1", "--towers_ckpt", tmp_path / "sum" / "stage2" / "last.pt")
    assert "embedded once" in (tmp_path / "comb" / "train.log").read_text()
    combined = tower_tensors(tmp_path / "comb" / "stage1" / "last.pt")
    assert all(torch.equal(combined[k], v) for k, v in tuned.items())
    saved = torch.load(tmp_path / "comb" / "stage1" / "last.pt", weights_only=True)
    assert saved["config"]["lr"] == 2e-5 and saved["config"]["weight_decay"] == 0.0
    assert float(saved["model"]["log_temperature"].exp()) == pytest.approx(100.0)
    evaluate_in_process("--ckpt", tmp_path / "comb" / "stage1" / "last.pt", "--data_root", tiny_root,
                        "--device", "cpu", "--num_workers", "0", "--output_dir", tmp_path / "eval")
    assert (tmp_path / "eval" / "metrics.json").is_file()
    evaluate_in_process("--model", "clip-sum", "--backbone", "clip-rn-tiny", "--backbone_weights", weights,
                        "--crop_size", "64", "--dataset", "fashioniq", "--data_root", tiny_root, "--device", "cpu",
                        "--num_workers", "0", "--output_dir", tmp_path / "zs")
    assert (tmp_path / "zs" / "zero-shot-clip-rn-tiny" / "eval_val" / "metrics.json").is_file()


@pytest.mark.slow
def test_wrong_weight_file_is_one_error_line_and_status_2(tiny_root, tmp_path):
    from tests.helpers import run_cli
    resnet = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, resnet)
    proc = run_cli("train.py", *clip_flags(tiny_root, tmp_path, str(resnet)), "--exp_name", "bad", "--text_encoder",
                   "clip", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "torchvision ResNet" in lines[0]


def test_fashioniq_caption_orders_random4_as_clip4cir(tmp_path):
    from data.formats import open_dataset
    from tests.helpers import dataset_config, write_fashioniq
    annotations = [{"candidate": f"A{i}", "target": f"B{i}", "captions": [f"first {i}", f"second {i}"]}
                   for i in range(40)]
    write_fashioniq(tmp_path, annotations=annotations)
    both = open_dataset(dataset_config(tmp_path, "fashioniq", categories="dress")).train_triplets(0)
    assert len(both) == 80
    fmt = open_dataset(dataset_config(tmp_path, "fashioniq", categories="dress", caption_orders="random4", seed=1))
    epochs = [fmt.train_triplets(e) for e in range(3)]
    assert all(len(t) == 40 for t in epochs) and epochs[0] == fmt.train_triplets(0)
    forms = {i: {f"first {i} <and> second {i}", f"second {i} <and> first {i}", f"first {i}", f"second {i}"}
             for i in range(40)}
    assert all(t.text in forms[i] and t.reference == f"A{i}" for e in epochs for i, t in enumerate(e))
    assert len({t.text.count("<and>") for t in epochs[0]}) == 2 and epochs[0] != epochs[1]
    assert config.resolve(dict(model="combiner", backbone="clip-rn-tiny", crop_size=64)).caption_orders == "random4"


@pytest.mark.parametrize("backbone,pool", [("clip-rn-tiny", "gem"), ("clip-rn-tiny", "attnpool"),
                                           ("clip-vit-tiny", "gem"), ("clip-vit-tiny", "attnpool")])
def test_a_manme_step_on_clip_trains_what_it_uses(backbone, pool):
    from losses import RetrievalLoss
    cfg = config.resolve(dict(backbone=backbone, backbone_weights="none", crop_size=64, text_encoder="clip",
                              embed_dim=32, clip_pool=pool, img_finetune=True, txt_finetune=True))
    model = build_model(cfg, 0).train()
    pooling = list(model.image_encoder.backbone.pool_parameters())
    assert all(p.requires_grad == (pool == "attnpool") for p in pooling)  # an unused pooling never trains
    tokens, lengths = pad_tokens([ClipTokens().encode(t) for t in ("red", "longer <and> blue", "a", "b")])
    RetrievalLoss(cfg)(model, model(torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64), tokens, lengths)
                       ).total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
