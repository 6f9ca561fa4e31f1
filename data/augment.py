"""The random and per-pixel part of the image transform, on whole batches (on the GPU when training there).

Workers hand over each image as prepared pixels: RGB, padded to a white square, resized to
resize_size(crop) (uint8, H x W x 3; from the JPEG or from the prepared cache, data.cache). What
is left, crop, flip, scaling to [0, 1] and ImageNet normalisation, runs here once per batch.

The result equals, bit for bit, torchvision's per-image train_transform / eval_transform
(data.images) with the same seed: the crop offsets and flips are drawn with the same calls in the
same order, from a generator seeded as the global one would be (draw_train_crop), and the arithmetic
is the same float32 operations (ToTensor's division by 255, then Normalize's subtraction and
division). tests/test_cache.py checks it.
"""
from __future__ import annotations

import functools

import torch

from data.images import IMAGENET, ImageStyle


def draw_train_crop(size: int, crop: int, generator: torch.Generator) -> tuple[int, int, bool]:
    """(top, left, flip) of one training image, drawn exactly as transforms.RandomCrop(crop) then
    RandomHorizontalFlip() draw them on a size x size image from torch's global generator, when that
    generator is in the state `generator` is in."""
    if size < crop:
        raise ValueError(f"image of {size} px is smaller than the crop of {crop} px")
    top = left = 0
    if size != crop:  # RandomCrop draws nothing when the image is already the crop's size
        top = int(torch.randint(0, size - crop + 1, size=(1,), generator=generator).item())
        left = int(torch.randint(0, size - crop + 1, size=(1,), generator=generator).item())
    flip = bool(torch.rand(1, generator=generator) < 0.5)
    return top, left, flip


def center_crop_offset(size: int, crop: int) -> int:
    """transforms.CenterCrop's offset on a size x size image."""
    return int(round((size - crop) / 2.0))


@functools.cache
def normalize_constants(device: torch.device, style: ImageStyle = IMAGENET
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """255, the style's mean and std on `device`, made once: building a CUDA tensor from numbers
    copies them from the host with a blocking copy, a wait for the GPU at every batch otherwise."""
    levels = torch.tensor(255.0, dtype=torch.float32).to(device)
    mean = torch.tensor(style.mean, dtype=torch.float32)[:, None, None].to(device)
    std = torch.tensor(style.std, dtype=torch.float32)[:, None, None].to(device)
    return levels, mean, std


def normalize(pixels: torch.Tensor, style: ImageStyle = IMAGENET) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, contiguous: ToTensor then Normalize(the style's mean, std)."""
    n, height, width, _ = pixels.shape
    # one pass converts and transposes, then three in place: allocating a new tensor per operation made
    # this several times slower on a CPU core (the same operations in the same order: the same values)
    x = torch.empty(n, 3, height, width, dtype=torch.float32, device=pixels.device)
    x.copy_(pixels.permute(0, 3, 1, 2))
    # 255 as a tensor, not a number: CUDA turns a division by a CPU scalar into a multiplication by
    # its reciprocal, one ulp off ToTensor's division on some pixels
    levels, mean, std = normalize_constants(x.device, style)
    return x.div_(levels).sub_(mean).div_(std)


def crop_flip_normalize(pixels: torch.Tensor, crops: torch.Tensor, crop: int,
                        style: ImageStyle = IMAGENET) -> torch.Tensor:
    """(B, S, S, 3) uint8 prepared pixels and (B, 3) int (top, left, flip) -> (B, 3, crop, crop) model input."""
    if not style.flip:  # (CLIP towers) the flips drawn are not applied
        crops = crops * torch.tensor([1, 1, 0], dtype=crops.dtype, device=crops.device)
    if pixels.device.type != "cpu":
        return normalize(gather_crops(pixels, crops, crop), style)
    # one slice (a view) per image, copied once by stack: on a CPU core ten times faster than one gather
    # with index tensors (on a GPU, each copy would be a kernel to launch: gather_crops)
    views = []
    for b, (top, left, flip) in enumerate(crops.tolist()):
        view = pixels[b, top:top + crop, left:left + crop]
        views.append(view.flip(1) if flip else view)  # axis 1 of (H, W, 3) is the width: a horizontal flip
    return normalize(torch.stack(views), style)


def gather_crops(pixels: torch.Tensor, crops: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, crop, crop, 3): every image's crop and flip in one gather. The indices are made on the host
    and sent from pinned memory, so that the CPU never waits for the GPU here."""
    crops = crops.cpu()
    offsets = torch.arange(crop)
    rows = crops[:, 0:1] + offsets
    cols = crops[:, 1:2] + torch.where(crops[:, 2:3].bool(), offsets.flip(0), offsets)  # flipped: right to left
    index = torch.stack([rows, cols])
    if pixels.device.type == "cuda":
        index = index.pin_memory()
    rows, cols = index.to(pixels.device, non_blocking=True)
    images = torch.arange(len(crops), device=pixels.device)
    return pixels[images[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop_normalize(pixels: torch.Tensor, crop: int, style: ImageStyle = IMAGENET) -> torch.Tensor:
    """(B, S, S, 3) uint8 prepared pixels -> (B, 3, crop, crop) model input, as eval_transform."""
    offset = center_crop_offset(pixels.shape[1], crop)
    return normalize(pixels[:, offset:offset + crop, offset:offset + crop], style)
