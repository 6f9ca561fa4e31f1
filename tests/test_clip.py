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
    flipped = crop_flip_normalize(pixels, torch.tensor([[0, 0, 1]]), 64, style)[0]
    assert torch.equal(flipped, want.flip(-1))


def test_clip_tokens_need_no_vocabulary(tmp_path):
    from tests.helpers import run_cli
    tokens = ClipTokens()
    ids = tokens.encode("is red <and> has sleeves")
    assert ids[0] == 49406 and ids[-1] == 49407 and len(tokens) == 49408
    assert tokens.decode(ids).strip().endswith("is red and has sleeves <end_of_text>")
    out = run_cli("vocab.py", "--text_encoder", "clip", "--vocab_dir", tmp_path / "v", "--data_root", tmp_path)
    assert "no vocabulary is needed" in out.stdout and not (tmp_path / "v").exists()
