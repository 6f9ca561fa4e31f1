"""Device and numeric-precision choices, made in one place for training, evaluation and the tools."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


def set_precision(device: torch.device, tf32: bool, cudnn_benchmark: bool) -> dict[str, object]:
    """The process-wide numeric settings of training, set in this one place (train.py and
    benchmarks/bench_train.py call it; the flags are --tf32 and --cudnn_benchmark, saved in config.json):
    float32 matmuls and convolutions in TF32 on CUDA GPUs that have it, and cuDNN's autotuning of
    convolution algorithms for fixed input sizes. Returns what it set, for the log."""
    mode = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cudnn.benchmark = cudnn_benchmark and device.type == "cuda"
    return {"float32 matmul/conv": mode, "cudnn_benchmark": torch.backends.cudnn.benchmark}


@contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 matmuls and convolutions at full IEEE precision inside (no TF32), the settings restored after:
    evaluation's figures then do not move with the card or with the training's --tf32."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved
