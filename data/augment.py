"""The random and per-pixel part of the image transform, on whole batches (on the GPU when training there).

Workers hand over each image as prepared pixels: RGB, padded to a white square, resized to
resize_size(crop) (uint8, H x W x 3; from the JPEG or from the prepared cache, data.cache). What
is left, crop, flip, scaling to [0, 1] and ImageNet normalisation, runs here once per batch.

The result equals, bit for bit, torchvision's per-image train_transform / eval_transform
(data.images) with the same seed: the crop offsets and flips are drawn with the same calls in the
same order (draw_train_crop), and the arithmetic is the same float32 operations (ToTensor's
division by 255, then Normalize's subtraction and division). tests/test_cache.py checks it.
"""
from __future__ import annotations

import torch

from data.images import IMAGENET_MEAN, IMAGENET_STD


def draw_train_crop(size: int, crop: int) -> tuple[int, int, bool]:
    """(top, left, flip) of one training image, drawn from torch's global generator exactly as
    transforms.RandomCrop(crop) then RandomHorizontalFlip() draw them on a size x size image."""
    if size < crop:
        raise ValueError(f"image of {size} px is smaller than the crop of {crop} px")
    top = left = 0
    if size != crop:  # RandomCrop draws nothing when the image is already the crop's size
        top = int(torch.randint(0, size - crop + 1, size=(1,)).item())
        left = int(torch.randint(0, size - crop + 1, size=(1,)).item())
    flip = bool(torch.rand(1) < 0.5)
    return top, left, flip


def center_crop_offset(size: int, crop: int) -> int:
    """transforms.CenterCrop's offset on a size x size image."""
    return int(round((size - crop) / 2.0))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, contiguous: ToTensor then Normalize(ImageNet)."""
    x = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=x.device)[:, None, None]
    return x.sub_(mean).div_(std)


def crop_flip_normalize(pixels: torch.Tensor, crops: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, S, S, 3) uint8 prepared pixels and (B, 3) int (top, left, flip) -> (B, 3, crop, crop) model input."""
    steps = torch.arange(crop, device=pixels.device)
    crops = crops.to(pixels.device)
    rows = crops[:, 0:1] + steps                                           # (B, crop)
    cols = crops[:, 1:2] + torch.where(crops[:, 2:3].bool(), crop - 1 - steps, steps)  # flipped: right to left
    batch = torch.arange(len(pixels), device=pixels.device)[:, None, None]
    return normalize(pixels[batch, rows[:, :, None], cols[:, None, :]])


def center_crop_normalize(pixels: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, S, S, 3) uint8 prepared pixels -> (B, 3, crop, crop) model input, as eval_transform."""
    offset = center_crop_offset(pixels.shape[1], crop)
    return normalize(pixels[:, offset:offset + crop, offset:offset + crop])
