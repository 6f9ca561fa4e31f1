"""The prepared image cache (data.prepare, data.cache) and the batch-level transform (data.augment).

Exactness is the point: a batch from the cache equals, bit for bit, the batch torchvision's per-image
transforms make from the image files with the same seed, for every dataset format, and evaluation
from the cache gives the same rankings.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data.prepare as prepare
from data.augment import center_crop_normalize, crop_flip_normalize, gather_crops, normalize
from data.cache import PixelSource, open_pixel_source
from data.formats import open_dataset
from data.images import eval_transform, load_image, prepared_pixels, resize_size, train_transform
from data.loaders import ImageList, collate_images, collate_triplets
from data.synthetic import generate
from data.text import Vocabulary
from engine.evaluation import evaluate
from engine.trainer import EpochTriplets
from models import build_model
from tests.helpers import dataset_config, one_thread
from tools.data_commands import prepare_main

FORMATS = ("fashioniq", "shoes", "fashion200k", "cirr")
CROP = 32  # prepared size resize_size(32) = 37
SIZES = {"fashioniq": dict(n_images=16, n_triplets=8), "shoes": dict(n_images=16, n_triplets=24),
         "fashion200k": dict(n_images=8, n_triplets=8), "cirr": dict(n_images=24, n_triplets=24)}


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    """Every format, its images written as non-square photos (padding to a square matters)."""
    root = tmp_path_factory.mktemp("photos")
    for dataset in FORMATS:
        generate(root, dataset, seed=0, photo=(44, 60), **SIZES[dataset])
    return root


def prepared_copy(photo_root, tmp_path, *flags):
    """A copy of the data root with its cache written by `python -m data.prepare` (in process)."""
    root = tmp_path / "data"
    shutil.copytree(photo_root, root, copy_function=shutil.copy2)  # copy2 keeps mtimes: the cache stays current
    for dataset in FORMATS:
        assert prepare_main(["--dataset", dataset, "--data_root", str(root), "--crop_size", str(CROP),
                             "--workers", "0", *flags]) == 0
    return root


def train_batch(fmt, source, keys):
    vocab = Vocabulary.build(fmt.train_captions(), fmt.vocab_specials)
    dataset = EpochTriplets(fmt, vocab, source, CROP, seed=3, triplets_epoch0=fmt.train_triplets(0), missing=set())
    return dataset, collate_triplets([dataset[k] for k in keys])


def torchvision_batch(dataset, keys):
    """The same items through the per-image torchvision train_transform, seeded as EpochTriplets seeds them."""
    transform, references, targets = train_transform(CROP), [], []
    for epoch, index in keys:
        items = dataset._items_for(epoch)
        reference, target = items.paths[index % len(items)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(dataset.item_seed(epoch, index))
            references.append(transform(load_image(reference)))
            targets.append(transform(load_image(target)))
    return torch.stack(references), torch.stack(targets)


@pytest.mark.parametrize("dataset", FORMATS)
def test_batches_from_files_and_cache_equal_torchvision_bit_for_bit(photo_root, tmp_path, dataset):
    root = prepared_copy(photo_root, tmp_path)
    cfg = dataset_config(root, dataset, crop_size=CROP)
    fmt = open_dataset(cfg)
    keys = [(0, i) for i in range(8)] + [(1, i) for i in range(4)]  # Fashion200k draws other pairs in epoch 1
    messages = []
    cache = open_pixel_source(cfg, log=messages.append)
    assert len(cache.rows) > 0 and "using the prepared image cache" in messages[0]
    dataset_files, from_files = train_batch(fmt, PixelSource(resize_size(CROP)), keys)
    _, from_cache = train_batch(fmt, cache, keys)
    used = [p for items in (dataset_files._items_for(0), dataset_files._items_for(1)) for pair in items.paths
            for p in pair]
    assert all(cache.cached(p) for p in used)  # the cache really served every image
    expected = torchvision_batch(dataset_files, keys)
    for batch in (from_files, from_cache):
        assert batch.reference.dtype == torch.uint8
        for got, want in zip(batch.images(CROP), expected):
            assert got.dtype == want.dtype and torch.equal(got, want)
    flips = from_files.crops[:, :, 2].flatten()
    assert 0 < int(flips.sum()) < len(flips)  # both branches of the flip were exercised
    assert len({tuple(c) for c in from_files.crops[:, :, :2].reshape(-1, 2).tolist()}) > 3

    # evaluation images: ImageList + center_crop_normalize equals eval_transform per image
    paths = [fmt.image_path(i) for i in fmt.eval_splits(fmt.eval_split_names[0])[0].gallery[:6]]
    transform = eval_transform(CROP)
    want = torch.stack([transform(load_image(p)) for p in paths])
    for source in (PixelSource(resize_size(CROP)), cache):
        batch = collate_images([ImageList(paths, source)[i] for i in range(len(paths))])
        assert torch.equal(center_crop_normalize(batch["image"], CROP), want)


def test_evaluation_from_cache_gives_the_same_rankings(photo_root, tmp_path):
    root = prepared_copy(photo_root, tmp_path)
    torch.manual_seed(0)
    results = {}
    for cache in ("none", "auto"):
        cfg = dataset_config(root, "fashioniq", crop_size=CROP, backbone="resnet18", backbone_weights="none",
                             embed_dim=32, word_dim=16, num_workers=0, eval_batch_size=16, image_cache=cache)
        fmt = open_dataset(cfg)
        vocab = Vocabulary.build(fmt.train_captions(), fmt.vocab_specials)
        if not results:
            model = build_model(cfg, len(vocab)).eval()
        with one_thread():
            results[cache] = evaluate(model, fmt, vocab, cfg, "val", torch.device("cpu"), progress=False,
                                      source=open_pixel_source(cfg))
    files, cached = results["none"], results["auto"]
    assert files.per_category == cached.per_category and files.overall == cached.overall
    assert [r["ranking"] for r in files.rankings] == [r["ranking"] for r in cached.rankings]


def cache_files(root):
    return {p.name: p.read_bytes() for p in sorted((root / "cache").iterdir())}


def test_interrupted_prepare_continues_where_it_stopped(photo_root, tmp_path, monkeypatch, capsys):
    complete = prepared_copy(photo_root, tmp_path / "complete")
    root = tmp_path / "data"
    shutil.copytree(photo_root, root, copy_function=shutil.copy2)
    args = ["--dataset", "fashioniq", "--data_root", str(root), "--crop_size", str(CROP), "--workers", "0"]
    write_rows, calls = prepare.write_rows, []

    def dies_on_third_chunk(task):
        calls.append(len(task[2]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write_rows(task)

    monkeypatch.setattr(prepare, "CHUNK", 4)
    monkeypatch.setattr(prepare, "write_rows", dies_on_third_chunk)
    assert prepare_main(args) == 130  # Ctrl-C: exit 130, what was written stays

    # a run meanwhile reads the 8 written rows from the cache and every other image from its file
    cfg = dataset_config(root, "fashioniq", crop_size=CROP)
    partial = open_pixel_source(cfg, log=lambda _: None)
    assert len(partial.rows) == 8
    fmt = open_dataset(cfg)
    for image_id in fmt.split_images()["train"][:12]:
        path = fmt.image_path(image_id)
        assert np.array_equal(partial(path), prepared_pixels(path, resize_size(CROP)))

    monkeypatch.setattr(prepare, "write_rows", write_rows)
    capsys.readouterr()
    assert prepare_main(args) == 0
    assert "train: 8 of" in capsys.readouterr().err  # the progress bar starts after the rows already written
    fresh = cache_files(complete)
    assert {k: v for k, v in cache_files(root).items() if k.startswith("fashioniq")} == \
        {k: v for k, v in fresh.items() if k.startswith("fashioniq")}


def test_changed_missing_and_unreadable_images(photo_root, tmp_path, capsys):
    root = prepared_copy(photo_root, tmp_path)
    cfg = dataset_config(root, "shoes", crop_size=CROP)
    fmt = open_dataset(cfg)
    changed, missing, broken = (fmt.image_path(i) for i in fmt.split_images()["train"][:3])
    shutil.copy(fmt.image_path(fmt.split_images()["train"][5]), changed)  # another picture under the same name
    messages = []
    source = open_pixel_source(cfg, log=messages.append)
    assert "1 changed since and read from their files" in messages[0] and not source.cached(changed)
    assert np.array_equal(source(changed), prepared_pixels(changed, resize_size(CROP)))

    missing.unlink()
    broken.write_bytes(b"not a jpeg")
    capsys.readouterr()
    status = prepare_main(["--dataset", "shoes", "--data_root", str(root), "--crop_size", str(CROP),
                           "--workers", "0"])
    out = capsys.readouterr().out
    assert status == 1 and "2 image(s) missing or unreadable" in out
    assert "missing\t" in out and missing.name in out and f"\t{broken}" in out
    source = open_pixel_source(cfg, log=lambda _: None)
    assert source.cached(changed) and not source.cached(missing) and not source.cached(broken)
    with pytest.raises(ValueError, match="unreadable image"):  # as without a cache: the file's own error
        source(broken)


def test_cache_settings(photo_root, tmp_path):
    root = prepared_copy(photo_root, tmp_path)
    messages = []
    # another crop size needs another prepared size: said, and the files are read
    other = open_pixel_source(dataset_config(root, "fashioniq", crop_size=64), log=messages.append)
    assert other.rows == {} and "no fashioniq images at 73 px" in messages[0] and "--size 73" in messages[0]
    assert open_pixel_source(dataset_config(root, "fashioniq", crop_size=CROP, image_cache="none")).rows == {}
    with pytest.raises(ValueError, match="--image_cache .*nowhere: no such folder.*data.prepare"):
        open_pixel_source(dataset_config(root, "fashioniq", crop_size=CROP, image_cache=str(tmp_path / "nowhere")))
    moved = tmp_path / "elsewhere"
    shutil.move(root / "cache", moved)
    explicit = open_pixel_source(dataset_config(root, "fashioniq", crop_size=CROP, image_cache=str(moved)),
                                 log=lambda _: None)
    assert len(explicit.rows) > 0
    # flags cut short (a disk filled up, a copy broke off): that split's images come from their files
    flags = next(moved.glob("fashioniq-train-*.done.npy"))
    flags.write_bytes(flags.read_bytes()[:20])
    cut = open_pixel_source(dataset_config(root, "fashioniq", crop_size=CROP, image_cache=str(moved)),
                            log=lambda _: None)
    assert 0 < len(cut.rows) < len(explicit.rows)
    # user photos (retrieve.py) are read from their files with the EXIF rotation, never from a cache
    upright = PixelSource(explicit.size, explicit.rows, upright=True)
    path = next(iter(explicit.rows))
    assert np.array_equal(upright(path), prepared_pixels(path, explicit.size, upright=True))


def test_precision_settings_are_set_in_one_place_and_evaluation_runs_in_ieee_float32():
    from utils.precision import ieee_float32, set_precision
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark
    try:
        assert set_precision(torch.device("cpu"), tf32=True, cudnn_benchmark=True) == \
            {"float32 matmul/conv": "tf32", "cudnn_benchmark": False}  # cuDNN autotuning is for CUDA only
        assert matmul.fp32_precision == conv.fp32_precision == "tf32"
        with ieee_float32():
            assert matmul.fp32_precision == conv.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"  # restored
        set_precision(torch.device("cpu"), tf32=False, cudnn_benchmark=True)
        assert matmul.fp32_precision == conv.fp32_precision == "ieee"
    finally:
        matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark = saved


def test_bench_train_uses_the_training_precision_settings():
    from tests.helpers import run_cli
    proc = run_cli("benchmarks/bench_train.py", "--crop", "32", "--batch", "4", "--steps", "1", "--warmup", "0",
                   "--device", "cpu", "--no-tf32", "--profile", "3")
    assert "float32 matmul/conv ieee" in proc.stdout and "RESULT train_overhead" in proc.stdout
    # the split of the time outside the backbone, and the profile's table of the costliest operations
    assert "top-down pathway" in proc.stdout and "Self CPU" in proc.stdout


def test_jpeg_draft_stays_within_its_stated_tolerance(tmp_path):
    """--jpeg_draft decodes at a reduced scale: on product photos (500x650 JPEGs of sharp-edged drawings, a
    hard case) the prepared pixels differ from the exact ones by under 1 of 255 levels on average."""
    generate(tmp_path, "fashioniq", seed=0, photo=(500, 650), n_images=16, n_triplets=8)
    files = sorted((tmp_path / "fashionIQ" / "img").glob("*.jpg"))[:24]
    exact = np.stack([prepared_pixels(f, 256) for f in files]).astype(np.int16)
    draft = np.stack([prepared_pixels(f, 256, draft=True) for f in files]).astype(np.int16)
    difference = np.abs(exact - draft)
    assert 0 < difference.mean() < 1.0
    png = tmp_path / "x.png"
    Image.open(files[0]).save(png)
    assert np.array_equal(prepared_pixels(png, 256, draft=True), prepared_pixels(png, 256))  # JPEG only


def test_training_with_jpeg_draft_and_exact_evaluation(photo_root, tmp_path):
    import vocab
    from tests.helpers import TINY_TRAIN, read_jsonl, train_in_process
    cfg = dataset_config(photo_root, "fashioniq", crop_size=CROP, jpeg_draft=True, image_cache="none")
    assert open_pixel_source(cfg, training=True).draft and not open_pixel_source(cfg).draft
    vocab.main(["--dataset", "fashioniq", "--data_root", str(photo_root), "--vocab_dir", str(tmp_path / "vocab")])
    train_in_process("--dataset", "fashioniq", "--data_root", photo_root, "--vocab_dir", tmp_path / "vocab",
                     "--output_dir", tmp_path / "runs", "--exp_name", "draft", "--num_epochs", "1", "--max_steps",
                     "2", "--jpeg_draft", "--image_cache", "none", *TINY_TRAIN)
    assert json.loads((tmp_path / "runs" / "draft" / "config.json").read_text())["jpeg_draft"] is True
    assert len(read_jsonl(tmp_path / "runs" / "draft" / "stage1" / "train_log.jsonl")) == 2  # a row per step


def random_crops(n: int, size: int, crop: int, generator: torch.Generator):
    pixels = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)
    crops = torch.stack([torch.randint(0, size - crop + 1, (n,), generator=generator),
                         torch.randint(0, size - crop + 1, (n,), generator=generator),
                         torch.randint(0, 2, (n,), generator=generator)], dim=1)
    return pixels, crops


def test_the_gpu_s_one_gather_crops_as_the_cpu_s_slices():
    """On a GPU the crops and flips are one gather (gather_crops) instead of a copy per image."""
    pixels, crops = random_crops(12, 40, 32, torch.Generator().manual_seed(0))
    crops[0], crops[1] = torch.tensor([0, 0, 1]), torch.tensor([8, 8, 0])   # both corners, both flips
    assert torch.equal(normalize(gather_crops(pixels, crops, 32)), crop_flip_normalize(pixels, crops, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs it)")
def test_batch_step_on_the_gpu_equals_the_cpu():
    """train.py crops, flips and normalises on the GPU: the same float32 values as on the CPU."""
    pixels, crops = random_crops(16, 256, 224, torch.Generator().manual_seed(0))
    on_cpu = crop_flip_normalize(pixels, crops, 224)
    assert torch.equal(crop_flip_normalize(pixels.cuda(), crops, 224).cpu(), on_cpu)
    assert torch.equal(crop_flip_normalize(pixels.cuda(), crops.cuda(), 224).cpu(), on_cpu)
    assert torch.equal(center_crop_normalize(pixels.cuda(), 224).cpu(), center_crop_normalize(pixels, 224))


def test_two_prepares_of_one_cache_do_not_mix_their_rows(photo_root, tmp_path, capsys):
    from utils.runlock import RunLock
    root = tmp_path / "data"
    shutil.copytree(photo_root, root, copy_function=shutil.copy2)
    held = RunLock(root / "cache" / f"shoes-{resize_size(CROP)}", "pass another --out")
    held.acquire()  # another process is writing this cache
    try:
        assert prepare_main(["--dataset", "shoes", "--data_root", str(root), "--crop_size", str(CROP)]) == 2
        assert "is in use by" in capsys.readouterr().err and not list((root / "cache").glob("*.npy"))
    finally:
        held.release()
    assert prepare_main(["--dataset", "shoes", "--data_root", str(root), "--crop_size", str(CROP),
                         "--workers", "0"]) == 0


def test_prepare_with_a_wrong_data_root_creates_nothing(tmp_path, capsys):
    assert prepare_main(["--dataset", "fashioniq", "--data_root", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
