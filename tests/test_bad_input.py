"""Bad input: each case gives a clear error naming the problem and its fix, or is handled correctly, and
never leaves a partial output file behind.

The cases: data root missing; unknown layout; unknown dataset name; empty caption;
punctuation-only and non-Latin captions; a 10,000-character caption; only unknown words; malformed JSON;
an annotation whose image is missing; a corrupt JPEG; grayscale, CMYK, RGBA and PNG images; a 10-pixel
image; a checkpoint whose vocabulary does not match; a checkpoint of another model variant or backbone;
--batch_size larger than the dataset; non-positive learning rate or epochs; an unknown --grains;
--device cuda without a GPU; an output directory that is not writable; evaluation of FashionIQ test.
(tests/test_formats.py, test_loaders.py and test_text.py test the readers these go through in more detail.)

Captions are never truncated: a 10,000-character caption is read in full (the GRU's cost is linear in its
length), and a caption with no usable word encodes to <start> <end>, which the text encoder reads.
"""
from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from config import Config
from data.formats import open_dataset
from data.text import Vocabulary, tokenize
from tests.helpers import ROOT, TINY, read_jsonl, write_fashioniq, write_image, write_shoes
from tests.helpers import evaluate_in_process as evaluate_main
from tests.helpers import train_in_process as train_main

LONG = ("has a longer hemline with pleats, thinner straps and a darker floral print; " * 140)[:10_000]


def nothing_partial(folder: Path) -> None:
    """No temporary file left, and every checkpoint / JSON file there is complete."""
    if not folder.exists():
        return
    from engine.checkpoint import load_checkpoint
    for path in folder.rglob("*"):
        assert not path.name.endswith(".tmp"), f"temporary file left behind: {path}"
        if path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())


@pytest.fixture(scope="module")
def fiq(ckpt, tiny_root):
    """(tiny FashionIQ manme/resnet18 checkpoint, its vocabulary folder, data root): trained by train.py
    as a command, so the tests that use it are marked slow."""
    return ckpt, ckpt.parents[2] / "vocab", tiny_root


@pytest.fixture(scope="module")
def fiq_data(tiny_root, tmp_path_factory):
    """(FashionIQ vocabulary folder, data root), without a checkpoint: for the flag checks."""
    import vocab
    folder = tmp_path_factory.mktemp("fiq_vocab")
    assert vocab.main(["--dataset", "fashioniq", "--data_root", str(tiny_root), "--vocab_dir", str(folder)]) == 0
    return folder, tiny_root


# ---------------------------------------------------------------- data root, layout, dataset name, JSON

def vocab_main(capsys, *argv) -> tuple[int, str]:
    import vocab
    code = vocab.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_data_root_missing(tmp_path, capsys):
    code, err = vocab_main(capsys, "--dataset", "shoes", "--data_root", tmp_path / "nowhere",
                           "--vocab_dir", tmp_path / "v")
    assert code == 2 and "data root" in err and "does not exist" in err and "--data_root" in err
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("dataset,folder,expected", [
    ("fashioniq", "fashionIQ", "no FashionIQ annotations; looked for annotations/captions/"),
    ("shoes", "shoes", "no Shoes annotations; looked for the prepared"),
    ("fashion200k", "fashion200k", "_train_detect_all.txt"),
])
def test_dataset_folder_in_unknown_layout(tmp_path, capsys, dataset, folder, expected):
    (tmp_path / folder / "stuff").mkdir(parents=True)
    (tmp_path / folder / "readme.txt").write_text("not the release layout")
    code, err = vocab_main(capsys, "--dataset", dataset, "--data_root", tmp_path, "--vocab_dir", tmp_path / "v")
    assert code == 2 and expected in err
    assert not (tmp_path / "v").exists()


def test_unknown_dataset_name(capsys):
    with pytest.raises(SystemExit) as stop:
        train_main("--dataset", "imagenet")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset: invalid choice: 'imagenet'" in err and "'fashioniq', 'shoes', 'fashion200k'" in err
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; use --dataset fashioniq\|shoes\|fashion200k"):
        open_dataset(Config(dataset="imagenet"))


def write_fiq_annotations(root: Path) -> Path:
    write_fashioniq(root)
    return root / "fashionIQ" / "annotations" / "captions" / "cap.dress.train.json"


def test_malformed_json(tmp_path, capsys):
    bad = write_fiq_annotations(tmp_path)
    bad.write_text('[\n  {"candidate": "A1",\n  "target" "A2"}\n]')
    code, err = vocab_main(capsys, "--dataset", "fashioniq", "--categories", "dress", "--data_root", tmp_path,
                           "--vocab_dir", tmp_path / "v")
    assert code == 2 and re.search(r"cap\.dress\.train\.json: malformed JSON at line 3, column 12.*fix the file", err)
    assert not (tmp_path / "v").exists()


def test_malformed_vocabulary_and_run_config(fiq_data, tmp_path):
    _, root = fiq_data
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "fashioniq_vocab.json").write_text('{"tokens": ["<pad>", ')
    with pytest.raises(ValueError, match=r"fashioniq_vocab\.json: malformed JSON at line 1"):
        train_main("--dataset", "fashioniq", "--data_root", root, "--vocab_dir", tmp_path / "v",
                   "--output_dir", tmp_path / "runs", *TINY)
    assert not list((tmp_path / "runs").rglob("*.pt"))
    (tmp_path / "runs" / "broken").mkdir(parents=True)
    (tmp_path / "runs" / "broken" / "config.json").write_text("{\n  \"dataset\": fashioniq\n}")
    with pytest.raises(ValueError, match=r"broken/config\.json: malformed JSON at line 2"):
        train_main("--output_dir", tmp_path / "runs", "--exp_name", "broken", "--resume", "auto")


def test_malformed_annotation_entry(tmp_path):
    bad = write_fiq_annotations(tmp_path)
    bad.write_text(json.dumps([{"candidate": "A1", "target": "A2", "captions": ["only one"]}]))
    with pytest.raises(ValueError,
                       match=r"cap\.dress\.train\.json entry 0: field 'captions' must be a list of two strings"):
        open_dataset(Config(dataset="fashioniq", data_root=str(tmp_path), categories="dress")).train_triplets()


# ---------------------------------------------------------------- captions

@pytest.mark.parametrize("caption,words", [
    ("", []),
    ("!!! ... ??? -- ;:", []),
    ("красное платье", []),
    ("红色连衣裙 👗", []),
    (LONG, tokenize(LONG)),
    ("zzyzx florbish", ["<unk>", "<unk>"]),
], ids=["empty", "punctuation-only", "cyrillic-only", "cjk-and-emoji-only", "10000-characters", "only-unknown-words"])
def test_caption_edge_cases_encode_and_embed(caption, words):
    from data.loaders import pad_tokens
    from models.text_encoder import TextEncoder
    vocab = Vocabulary.build(["is red", LONG])
    ids = vocab.encode(caption)
    assert vocab.decode(ids) == " ".join(["<start>", *words, "<end>"])   # never truncated, never empty
    if caption == LONG:
        assert len(ids) > 1500
    if words == ["<unk>", "<unk>"]:
        assert vocab.unknown_words(caption) == ["zzyzx", "florbish"]
    torch.manual_seed(0)
    encoder = TextEncoder(len(vocab), 16, 32)
    tokens, lengths = pad_tokens([ids, vocab.encode("is red")])
    out = encoder(tokens, lengths)
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))
    assert torch.allclose(out[1], encoder(*pad_tokens([vocab.encode("is red")]))[0], atol=1e-6), "padding leaked"


# ---------------------------------------------------------------- images

@pytest.mark.parametrize("name,mode,size", [
    ("gray.jpg", "L", (30, 40)),
    ("cmyk.jpg", "CMYK", (30, 40)),
    ("rgba.png", "RGBA", (30, 40)),
    ("rgb.png", "RGB", (30, 40)),
    ("ten_pixels.png", "RGB", (10, 1)),
    ("ten_by_ten.jpg", "RGB", (10, 10)),
], ids=["grayscale", "cmyk", "rgba", "png", "10-pixel", "10x10"])
def test_image_modes_and_tiny_images_load(tmp_path, name, mode, size):
    from data.images import eval_transform, load_image, train_transform
    image = load_image(write_image(tmp_path / name, mode=mode, size=size))
    assert image.mode == "RGB" and image.size == (max(size),) * 2
    for transform in (train_transform(32), eval_transform(32)):
        x = transform(image)
        assert x.shape == (3, 32, 32) and torch.isfinite(x).all()


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty"])
def test_corrupt_jpeg_names_the_file(tmp_path, damage):
    from data.images import load_image
    data = write_image(tmp_path / "full.jpg", size=(64, 64)).read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes({"corrupt": b"\xff\xd8\xff\xe0 not really a jpeg", "truncated": data[:len(data) // 2],
                     "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"bad\.jpg: (unreadable image|empty image file).*re-download it.*data\.check"):
        load_image(bad)


def odd_shoes(root: Path, corrupt: str | None = None) -> Path:
    """A Shoes release whose images and captions are all odd: every image mode, a 10-pixel image, empty,
    punctuation-only, non-Latin, 10,000-character and unknown-word captions."""
    images = root / "shoes" / "images" / "women"
    train = [("rgb.jpg", "RGB", (40, 30)), ("gray.jpg", "L", (30, 40)), ("cmyk.jpg", "CMYK", (32, 32)),
             ("rgba.png", "RGBA", (36, 20)), ("tiny.jpg", "RGB", (10, 1)), ("pal.png", "P", (24, 24))]
    evals = [(f"e{i}.jpg", "RGB", (20 + 4 * i, 30)) for i in range(4)]
    for n, (name, mode, size) in enumerate(train + evals):
        write_image(images / name, mode=mode, size=size, color=(40 * n % 255, 90, 200 - 15 * n))
    if corrupt:
        (images / corrupt).write_bytes(b"\xff\xd8\xff\xe0 broken")
    captions = ["", "!!! ... ???", "красное платье", "红色连衣裙 👗", LONG, "is darker"]
    names = [n for n, _, _ in train]
    rows = [{"ReferenceImageName": a, "ImageName": b, "RelativeCaption": c}
            for a, b, c in zip(names, names[1:] + names[:1], captions)]
    enames = [n for n, _, _ in evals]
    rows += [{"ReferenceImageName": a, "ImageName": b, "RelativeCaption": c}
             for a, b, c in zip(enames, enames[1:] + enames[:1], ["zzyzx florbish", "", "is darker", "黑色"])]
    write_shoes(root, rows, names, enames)
    return root


def test_odd_images_and_captions_train_and_evaluate(tmp_path, capsys):
    root = odd_shoes(tmp_path / "data")
    assert vocab_main(capsys, "--dataset", "shoes", "--data_root", root, "--vocab_dir", tmp_path / "v")[0] == 0
    train_main("--dataset", "shoes", "--data_root", root, "--vocab_dir", tmp_path / "v", "--output_dir", tmp_path,
               "--exp_name", "odd", "--batch_size", "3", "--num_epochs", "1", "--log_every", "1", *TINY)
    rows = read_jsonl(tmp_path / "odd" / "stage1" / "train_log.jsonl")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    evaluate_main("--ckpt", tmp_path / "odd" / "stage1" / "best.pt", "--data_root", root, "--device", "cpu",
                  "--num_workers", "0", "--output_dir", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["per_category"]["shoes"]["n_queries"] == 4
    nothing_partial(tmp_path)


def test_corrupt_image_in_training_names_it_and_keeps_no_partial_file(tmp_path, capsys):
    root = odd_shoes(tmp_path / "data", corrupt="gray.jpg")
    assert vocab_main(capsys, "--dataset", "shoes", "--data_root", root, "--vocab_dir", tmp_path / "v")[0] == 0
    with pytest.raises(ValueError, match=r"gray\.jpg: unreadable image.*re-download it.*data\.check"):
        train_main("--dataset", "shoes", "--data_root", root, "--vocab_dir", tmp_path / "v", "--output_dir",
                   tmp_path, "--exp_name", "odd", "--batch_size", "6", "--num_epochs", "1", *TINY)
    assert not (tmp_path / "odd" / "stage1" / "last.pt").exists()
    nothing_partial(tmp_path)


def test_annotation_whose_image_is_missing(tmp_path, capsys):
    from data.loaders import drop_missing, drop_missing_eval
    root = odd_shoes(tmp_path)
    (root / "shoes" / "images" / "women" / "cmyk.jpg").unlink()
    fmt = open_dataset(Config(dataset="shoes", data_root=str(root)))
    kept = drop_missing(fmt, fmt.train_triplets())
    assert len(kept) == 4   # the two triplets using cmyk.jpg are skipped, and said so
    out = capsys.readouterr().out
    assert "2 of 6 triplets skipped: image files missing" in out and "cmyk.jpg" in out and "data.check" in out
    (root / "shoes" / "images" / "women" / "e1.jpg").unlink()
    (split,) = fmt.eval_splits("val")
    assert len(drop_missing_eval(fmt, split).queries) == 2
    for name in ("rgb.jpg", "gray.jpg", "rgba.png", "tiny.jpg", "pal.png"):
        (root / "shoes" / "images" / "women" / name).unlink()
    with pytest.raises(FileNotFoundError, match="no shoes triplet has both image files; searched .*--data_root"):
        drop_missing(fmt, fmt.train_triplets())


# ---------------------------------------------------------------- checkpoints

def stage2(fiq, tmp_path, *extra):
    ckpt, vocab_dir, root = fiq
    return ["--dataset", "fashioniq", "--data_root", root, "--output_dir", tmp_path, "--exp_name", "s2",
            "--img_finetune", "--txt_finetune", "--ckpt", ckpt, *TINY, *extra]


@pytest.mark.slow
def test_checkpoint_whose_vocabulary_does_not_match(fiq, tmp_path):
    from engine.checkpoint import CheckpointError
    ckpt, vocab_dir, root = fiq
    vocab = json.loads((vocab_dir / "fashioniq_vocab.json").read_text())
    vocab["tokens"].append("zzyzx")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "fashioniq_vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint vocabulary \(\d+ tokens\) does not match "
                                              r".*fashioniq_vocab\.json \(\d+ tokens\); use the vocabulary saved"):
        train_main(*stage2(fiq, tmp_path, "--vocab_dir", tmp_path / "v"))
    assert not list(tmp_path.rglob("*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("flag,value,saved", [("--model", "tirg", "'manme'"), ("--backbone", "resnet50", "'resnet18'"),
                                              ("--embed_dim", "32", "64")])
def test_checkpoint_of_another_model_or_backbone(fiq, tmp_path, flag, value, saved):
    from engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint has {flag} {saved} but this run uses")
                       + f".*pass {flag} {saved.strip(chr(39))}"):
        train_main(*stage2(fiq, tmp_path, "--vocab_dir", fiq[1], flag, value))
    assert not list(tmp_path.rglob("*.pt"))


# ---------------------------------------------------------------- flags

def fiq_flags(fiq_data, tmp_path, *extra):
    vocab_dir, root = fiq_data
    return ["--dataset", "fashioniq", "--data_root", root, "--vocab_dir", vocab_dir, "--output_dir", tmp_path,
            *TINY, *extra]


def test_batch_size_larger_than_the_dataset(fiq_data, tmp_path):
    with pytest.raises(ValueError, match=r"--batch_size 5000 .* larger than the \d+ usable training triplets; "
                                         r"lower --batch_size"):
        train_main(*fiq_flags(fiq_data, tmp_path, "--batch_size", "5000"))
    assert not list(tmp_path.rglob("*.pt"))
    nothing_partial(tmp_path)


@pytest.mark.parametrize("flag,value", [("--lr", "0"), ("--lr", "-0.001"), ("--lr", "nan"), ("--num_epochs", "0"),
                                        ("--num_epochs", "-3"), ("--batch_size", "0")])
def test_non_positive_learning_rate_or_epochs(fiq_data, tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"{flag} must be positive"):
        train_main(*fiq_flags(fiq_data, tmp_path, flag, value))
    assert not any(tmp_path.iterdir()), "nothing is written for a bad flag"


@pytest.mark.parametrize("grains", ["coarse,huge", "", "fine,,medium"])
def test_grains_naming_an_unknown_granularity(fiq_data, tmp_path, grains):
    with pytest.raises(ValueError, match=r"--grains .*unknown granularity.*use a subset of coarse,mid,fine"):
        train_main(*fiq_flags(fiq_data, tmp_path, "--grains", grains))
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
@pytest.mark.slow
def test_device_cuda_without_a_gpu(fiq, fiq_data, tmp_path):
    with pytest.raises(RuntimeError, match="--device cuda was asked for but no CUDA GPU is visible; use --device cpu"):
        train_main(*fiq_flags(fiq_data, tmp_path, "--device", "cuda"))
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        evaluate_main("--ckpt", fiq[0], "--data_root", fiq[2], "--device", "cuda", "--output_dir", tmp_path / "e")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_output_directory_not_writable(fiq, fiq_data, tmp_path):
    # tests may run as root, for whom no permission bit blocks a write: a folder below a regular file cannot be made
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(PermissionError, match=r"file/sub/.*output directory is not writable.*--output_dir"):
        train_main(*fiq_flags(fiq_data, tmp_path, "--output_dir", tmp_path / "file" / "sub"))
    with pytest.raises(PermissionError, match=r"file/sub: output directory is not writable.*--output_dir"):
        evaluate_main("--ckpt", fiq[0], "--data_root", fiq[2], "--device", "cpu",
                      "--output_dir", tmp_path / "file" / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["fashioniq", "shoes"])
def test_evaluation_on_a_split_without_annotations(fiq, tmp_path, dataset):
    ckpt = fiq[0]
    if dataset == "shoes":   # a FashionIQ checkpoint is not evaluated as another dataset's
        expected = r"--dataset shoes: .*was trained with --dataset fashioniq"
    else:
        expected = r"FashionIQ test captions carry no targets; evaluate on val \(--split val\)"
    with pytest.raises(ValueError, match=expected):
        evaluate_main("--ckpt", ckpt, "--data_root", fiq[2], "--device", "cpu", "--num_workers", "0",
                      "--split", "test", "--output_dir", tmp_path / "eval", "--dataset", dataset)
    assert not (tmp_path / "eval").exists(), "a failed evaluation left its output folder"


def test_resume_without_anything_to_resume(tmp_path):
    from engine.checkpoint import CheckpointError
    with pytest.raises(FileNotFoundError, match=r"--resume auto: .*config\.json not found; nothing to resume"):
        train_main("--output_dir", tmp_path, "--exp_name", "never", "--resume", "auto")
    with pytest.raises(CheckpointError, match=r"gone\.pt: checkpoint not found"):
        train_main("--output_dir", tmp_path, "--resume", tmp_path / "gone.pt")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- what the command line shows

@pytest.mark.parametrize("script,argv,expected", [
    ("train.py", ["--lr", "0"], "error: --lr must be positive, got 0.0"),
    ("train.py", ["--grains", "coarse,huge"], "error: --grains 'coarse,huge': unknown granularity"),
    ("evaluate.py", ["--ckpt", "/nonexistent/best.pt"], "error: /nonexistent/best.pt: checkpoint not found"),
])
def test_command_line_prints_one_error_line(monkeypatch, capsys, script, argv, expected):
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith(expected) and len(err.splitlines()) == 1
