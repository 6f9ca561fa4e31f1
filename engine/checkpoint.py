"""Checkpoints: plain tensors and JSON-like values only, written atomically, loaded without pickle.

A checkpoint is a dict: model, optimizer, scheduler, scaler (state dicts); stage (1 or 2),
epoch, step, epoch_step (optimizer steps done inside `epoch`), global_batch (to continue an
epoch under another process count), best_score, skipped (batches skipped for a non-finite
loss), rng (every RNG state), config (dict) and vocab ({"tokens", "words_count", "dataset"}).
`torch.load(weights_only=True)` refuses anything that could run code when read.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.text import ClipTokens, Vocabulary
from utils.io import atomic_write


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: bool = True) -> None:
    """Write `state` to `path` atomically; the file it replaces is kept as `<name>.prev.pt`."""
    path = Path(path)
    if keep_previous and path.exists():
        previous = previous_path(path)
        link = previous.with_name(f".{previous.name}.link")
        try:  # path stays in place until the new file replaces it
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, previous)
        except OSError:  # no hard links on this file system
            os.replace(path, previous)
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; any fault raises CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; name the file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    earlier = previous_path(path)  # named only when it is there: best.pt and last.prev.pt have none
    corrupt = (f"{path}: truncated or corrupt checkpoint ({{}}). Use an earlier checkpoint"
               + (f" (e.g. {earlier.name})." if earlier.is_file() else "."))
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index sits at the very end
        size = path.stat().st_size
        raise CheckpointError(corrupt.format(f"{size} bytes, not the complete zip archive torch.save writes"))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain values, "
            f"which could run code when read ({_unpickling_reason(e)}). Only load checkpoints written "
            f"by manme's train.py.") from None
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # anything else a damaged archive raises (RuntimeError, EOFError, KeyError, ...)
        raise CheckpointError(corrupt.format(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                                             )) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a manme checkpoint (no model/config entries)")
    return state


def _unpickling_reason(error: Exception) -> str:
    """The informative line of torch's weights-only refusal (e.g. 'unsupported GLOBAL posix.system ...')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return (useful or lines or [type(error).__name__])[0][:200]


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain values (safe for weights_only loading)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def strip_ddp_prefix(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from DDP- or compile-wrapped models load into a plain model."""
    out = {}
    for key, value in model_state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def checkpoint_vocabulary(checkpoint: dict, source: str | Path) -> Vocabulary:
    """The vocabulary a checkpoint was trained with (saved in it, so evaluation needs no vocabulary file)."""
    saved = checkpoint.get("vocab")
    if not isinstance(saved, dict) or "tokens" not in saved:
        raise CheckpointError(f"{source}: the checkpoint holds no vocabulary; is it a manme checkpoint "
                              f"(written by train.py)?")
    if saved.get("kind") == ClipTokens.kind:
        return ClipTokens(saved.get("dataset", ""))
    try:
        return Vocabulary(list(saved["tokens"]), saved.get("words_count", 0), saved.get("dataset", ""))
    except ValueError as e:
        raise CheckpointError(f"{source}: its vocabulary is damaged ({e}); use another checkpoint") from None


def vocab_state(vocab: Vocabulary) -> dict:
    kind = {"kind": vocab.kind} if isinstance(vocab, ClipTokens) else {}
    return {"tokens": list(vocab.tokens), "words_count": vocab.words_count, "dataset": vocab.dataset, **kind}
