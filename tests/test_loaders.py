"""Image loading, transforms, Datasets/collate, missing-image filters and data.check, on tiny fixtures."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from config import Config
from data.cache import PixelSource
from data.formats import open_dataset
from data.images import eval_transform, load_image, resize_size, train_transform
from data.loaders import (
    ImageList,
    TripletBatch,
    TripletImages,
    collate_images,
    collate_triplets,
    drop_missing,
    drop_missing_eval,
)
from data.text import Vocabulary
from tests.helpers import write_fashion200k, write_fashioniq, write_image, write_shoes
from tools.data_commands import check_main


def fashioniq_with_images(root):
    """fashionIQ/ with 4 images (A1..A4) and 2 annotations per split -> 4 triplets / queries."""
    rows = [{"candidate": "A1", "target": "A2", "captions": ["is red", "has long sleeves"]},
            {"candidate": "A3", "target": "A4", "captions": ["is blue", "is shorter"]}]
    write_fashioniq(root, annotations=rows)
    for i, size in enumerate([(12, 20), (20, 12), (1, 1), (30, 30)], 1):
        write_image(root / "fashionIQ" / "img" / f"A{i}.jpg", size=size)
    return open_dataset(Config(dataset="fashioniq", data_root=str(root), categories="dress"))


# ---- images ----

@pytest.mark.parametrize("mode,kw", [("L", {}), ("CMYK", {}), ("RGBA", {}), ("P", {}), ("I;16", {}), ("1", {})])
def test_load_image_any_mode_to_rgb(tmp_path, mode, kw):
    suffix = ".jpg" if mode in ("CMYK", "L") else ".png"
    image = load_image(write_image(tmp_path / f"x{suffix}", mode=mode, size=(8, 8)))
    assert image.mode == "RGB" and image.size == (8, 8)


def test_transparency_and_padding_are_white(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.save(tmp_path / "pal.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "pal.png")).min() == 255
    tall = np.asarray(load_image(write_image(tmp_path / "tall.png", size=(2, 6), color=(0, 0, 0))))
    assert tall.shape == (6, 6, 3) and tall[:, 0].min() == 255 and tall[:, 2:4].max() == 0
    assert load_image(write_image(tmp_path / "dot.png", size=(1, 1))).size == (1, 1)


def test_empty_and_corrupt_images_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jpg: empty image file \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"junk\.jpg: unreadable image"):
        load_image(tmp_path / "junk.jpg")
    data = write_image(tmp_path / "full.jpg", size=(64, 64)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg: unreadable image"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(FileNotFoundError, match=r"gone\.jpg"):
        load_image(tmp_path / "gone.jpg")


def test_transforms_scale_with_crop_size(tmp_path):
    assert resize_size(224) == 256 and resize_size(64) == 73
    image = load_image(write_image(tmp_path / "x.png", size=(50, 90)))
    for transform in (train_transform(64), eval_transform(64)):
        x = transform(image)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    white = eval_transform(32)(Image.new("RGB", (40, 40), (255, 255, 255)))
    assert torch.allclose(white[0], torch.full((32, 32), (1 - 0.485) / 0.229), atol=1e-5)


# ---- datasets and batches ----

def test_triplet_loader_end_to_end(tmp_path):
    fmt = fashioniq_with_images(tmp_path)
    triplets = fmt.train_triplets()
    vocab = Vocabulary.build(fmt.train_captions())
    data = TripletImages(fmt, triplets, vocab, PixelSource(resize_size(32)), 32)
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_triplets)))
    assert isinstance(batch, TripletBatch) and len(batch) == 4
    assert batch.reference.shape == batch.target.shape == (4, 37, 37, 3) and batch.reference.dtype == torch.uint8
    reference, target = batch.images(32)
    assert reference.shape == target.shape == (4, 3, 32, 32) and reference.dtype == torch.float32
    expected = [len(vocab.encode(t.text)) for t in triplets]
    assert batch.lengths.tolist() == expected and batch.tokens.shape == (4, max(expected))
    for row, n in zip(batch.tokens, expected):
        assert row[0] == vocab.start_id and row[n - 1] == vocab.end_id and (row[n:] == vocab.pad_id).all()
        assert (row[:n] == vocab.and_id).sum() == 1
    assert batch.index.tolist() == [0, 1, 2, 3]
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, TripletBatch) and moved.tokens.dtype == torch.long
    on_device = batch.to("meta")  # stands in for a GPU: the pixels move, what the host reads stays
    assert on_device.reference.is_meta and on_device.tokens.is_meta
    assert on_device.crops.device.type == on_device.lengths.device.type == "cpu"
    if torch.cuda.is_available():
        assert batch.pin_memory().reference.is_pinned()


def test_gallery_loader(tmp_path):
    fmt = fashioniq_with_images(tmp_path)
    (val,) = fmt.eval_splits("val")
    paths = [fmt.image_path(i) for i in val.gallery]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    loader = DataLoader(ImageList(paths[:3] + [tmp_path / "broken.jpg"], PixelSource(37)), batch_size=4,
                        collate_fn=collate_images)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 37, 37, 3) and batch["index"] == [0, 1, 2]
    assert [i for i, _ in batch["errors"]] == [3] and "broken.jpg" in batch["errors"][0][1]


def test_drop_missing_reports_and_fails_when_empty(tmp_path, capsys):
    fmt = fashioniq_with_images(tmp_path)
    (tmp_path / "fashionIQ" / "img" / "A4.jpg").unlink()
    fmt = open_dataset(fmt.cfg)  # a fresh image index
    kept = drop_missing(fmt, fmt.train_triplets())
    assert [t.reference for t in kept] == ["A1", "A1"]
    out = capsys.readouterr().out
    assert "2 of 4 triplets skipped: image files missing (e.g. " in out and "A4.jpg" in out
    (val,) = fmt.eval_splits("val")
    filtered = drop_missing_eval(fmt, val)
    assert len(filtered.queries) == 2 and filtered.gallery == ["A1", "A2", "A3"]
    for name in ("A1", "A2"):
        (tmp_path / "fashionIQ" / "img" / f"{name}.jpg").unlink()
    fmt = open_dataset(fmt.cfg)
    with pytest.raises(FileNotFoundError, match=r"searched .*fashionIQ/img"):
        drop_missing(fmt, fmt.train_triplets())


def test_shoes_and_fashion200k_load_through_dataloader(tmp_path):
    write_shoes(tmp_path, [{"ImageName": "b.jpg", "ReferenceImageName": "a.jpg", "RelativeCaption": "is darker"}],
                ["a.jpg", "b.jpg"], ["c.jpg"])
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "shoes" / "images" / "womens" / "boots" / name)
    write_fashion200k(tmp_path, {"dress": [("women/d/0.jpeg", "red dress"), ("women/d/1.jpeg", "blue dress")]})
    for i in (0, 1):
        write_image(tmp_path / "fashion200K" / "women" / "d" / f"{i}.jpeg")
    for dataset in ("shoes", "fashion200k"):
        fmt = open_dataset(Config(dataset=dataset, data_root=str(tmp_path)))
        vocab = Vocabulary.build(fmt.train_captions(), fmt.vocab_specials)
        triplets = drop_missing(fmt, fmt.train_triplets(1))
        batch = next(iter(DataLoader(TripletImages(fmt, triplets, vocab, PixelSource(resize_size(16)), 16),
                                     batch_size=2, collate_fn=collate_triplets)))
        assert batch.images(16)[0].shape[1:] == (3, 16, 16)
        assert vocab.unk_id not in batch.tokens.tolist()[0]


# ---- the dataset doctor ----

def test_check_reports_missing_and_unreadable(tmp_path, capsys):
    fashioniq_with_images(tmp_path)
    (tmp_path / "fashionIQ" / "img" / "A2.jpg").unlink()
    (tmp_path / "fashionIQ" / "img" / "A3.jpg").write_bytes(b"")
    listing = tmp_path / "missing.txt"
    assert check_main(["--dataset", "fashioniq", "--data_root", str(tmp_path), "--categories", "dress",
                       "--write_missing", str(listing)]) == 1  # images are missing: a script can tell
    out = capsys.readouterr().out
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("dress")]
    # images table (listed, missing, unreadable), then the items table (triplets/queries, lost to each)
    assert rows == [["train", "4", "1", "1"], ["val", "4", "1", "1"], ["train", "4", "2", "2"], ["val", "4", "2", "2"]]
    assert "4 images: 1 missing, 1 unreadable" in out
    lines = listing.read_text().splitlines()
    assert lines[0].startswith("missing\t") and lines[0].endswith("A2.jpg")
    assert lines[1].startswith("unreadable\t") and "A3.jpg\tempty file" in lines[1]
    assert check_main(["--dataset", "fashioniq", "--data_root", str(tmp_path), "--categories", "dress",
                       "--allow_missing"]) == 0
