"""Device and numeric-precision choices, made in one place for training, evaluation and the tools."""
from __future__ import annotations

import torch


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """`device` is cpu, cuda or auto (cuda when a GPU is visible); `local_rank` picks the GPU under torchrun."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu (or auto)")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --amp (auto: bf16 on a CUDA GPU that supports it, else off), or None."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, a no-op context when dtype is None (full precision)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
