"""The one inference path: load a trained model, embed images and texts, build queries, rank a gallery.

Evaluation, validation, the figures and the search index all go through these functions, so a
number in metrics.json, a row of a figure and a search result are computed the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import resolve
from data.augment import center_crop_normalize
from data.cache import PixelSource
from data.images import IMAGENET, ImageStyle
from data.loaders import ImageList, collate_images, ignore_stop_signals, pad_tokens
from data.text import ClipTokens, Vocabulary
from engine.checkpoint import CheckpointError, checkpoint_vocabulary, load_checkpoint, strip_ddp_prefix
from engine.ranking import RankResult, check_finite, rank_queries
from models import ComposedQuery, Retriever, build_model
from utils.distributed import DistInfo, any_rank, gather_no_grad
from utils.errors import UserError
from utils.precision import amp_dtype, autocast, pick_device

# settings the weights and the vocabulary were trained for
FIXED_BY_CHECKPOINT = ("dataset", "crop_size", "model", "backbone", "grains", "embed_dim", "word_dim", "text_encoder",
                       "clip_quickgelu", "pad_ratio")
ZERO_SHOT = ("clip-sum",)  # variants that evaluate.py can run with no training (from --backbone_weights)


@dataclass
class Trained:
    """A model rebuilt from a checkpoint, ready for inference."""
    model: Retriever          # in eval mode, on `device`
    cfg: object               # config.Config: the checkpoint's, with command-line overrides
    vocab: Vocabulary
    device: torch.device
    amp_dtype: torch.dtype | None


def load_trained(checkpoint_path: str | Path, explicit: dict | None = None) -> Trained:
    """Rebuild model, config and vocabulary from a checkpoint alone.

    `explicit` holds command-line overrides (data_root, device, split, ...). Inference runs in float32
    unless `explicit` names --amp, whatever precision the model was trained in."""
    checkpoint = load_checkpoint(checkpoint_path)
    overrides = {k: v for k, v in (explicit or {}).items() if k not in ("ckpt", "resume")}
    saved = checkpoint["config"]
    for key in FIXED_BY_CHECKPOINT:  # what the weights were trained for: not a flag's to change
        if key in overrides and isinstance(saved, dict) and overrides[key] != saved.get(key):
            raise UserError(f"--{key} {overrides[key]}: {checkpoint_path} was trained with --{key} {saved.get(key)}, "
                            f"which evaluation and the tools take from the checkpoint; drop --{key}, or use a "
                            f"checkpoint trained for {overrides[key]}")
    cfg = resolve(overrides, base=saved, source=f"{checkpoint_path} (its config)")
    device = pick_device(cfg.device)
    vocab = checkpoint_vocabulary(checkpoint, checkpoint_path)
    # the weights come from the checkpoint: no ImageNet file or GloVe needed
    model = build_model(replace(cfg, backbone_weights="none", glove_path=""), len(vocab))
    try:
        model.load_state_dict(strip_ddp_prefix(checkpoint["model"]))
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{checkpoint_path}: its weights do not fit the --model {cfg.model} its config names "
                              f"({str(e).splitlines()[0][:160]}); was the config edited? "
                              f"Use an unedited checkpoint") from None
    # float32 unless the caller asks: recalls then do not move with the GPU's autocast
    precision = amp_dtype((explicit or {}).get("amp", "off"), device)
    return Trained(model.to(device).eval(), cfg, vocab, device, precision)


def load_zero_shot(explicit: dict) -> Trained:
    """A variant that needs no training (clip-sum: CLIP's image + text embeddings), from --backbone_weights."""
    cfg = resolve({k: v for k, v in explicit.items() if k not in ("ckpt", "resume")})
    if cfg.model not in ZERO_SHOT:
        raise UserError(f"--model {cfg.model} needs training: pass --ckpt PATH (only {', '.join(ZERO_SHOT)} "
                        f"evaluates without a checkpoint)")
    device = pick_device(cfg.device)
    model = build_model(cfg, 0)
    return Trained(model.to(device).eval(), cfg, ClipTokens(cfg.dataset), device,
                   amp_dtype(explicit.get("amp", "off"), device))


@dataclass
class ImageEmbeddings:
    features: dict[str, torch.Tensor]   # grain -> (len(kept), d) float32, row r is paths[kept[r]]
    kept: list[int]                     # indices of the embedded paths
    errors: list[tuple[int, str]]       # (index, message) of the files that could not be read


@torch.inference_mode()
def embed_images(model, paths: list[str | Path], crop_size: int, device, batch_size: int = 64,
                 num_workers: int = 0, dist_info: DistInfo | None = None, amp_dtype=None,
                 progress: bool = True, desc: str = "embed images", upright: bool = False,
                 source: PixelSource | None = None) -> ImageEmbeddings:
    """Embed image files at the evaluation crop; unreadable files are reported in `errors`, not embedded.

    `source` gives the prepared pixels (data.cache: the image cache where it holds a file) in its image style;
    by default the files are read in the model's image style (config.image_style), with their EXIF orientation
    applied when `upright` (a user's photos).

    Under torchrun each rank embeds a shard and the features are gathered; a distributed caller
    gets every row or, when any rank met an unreadable file, a ValueError on every rank."""
    dist_info = dist_info or DistInfo()
    n = len(paths)
    per_rank = -(-n // dist_info.world_size)
    offset = dist_info.rank * per_rank
    style: ImageStyle = getattr(model, "image_style", None) or IMAGENET
    source = source or PixelSource(style.prepared_size(crop_size), upright=upright, style=style)
    loader = DataLoader(ImageList(paths[offset:offset + per_rank], source),
                        batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    parts: dict[str, list[torch.Tensor]] = {g: [] for g in model.grains}
    kept, errors = [], []
    for batch in tqdm(loader, desc=desc, disable=not (progress and dist_info.is_main), leave=False):
        errors += [(offset + i, message) for i, message in batch["errors"]]
        if batch["image"] is None:
            continue
        with autocast(device, amp_dtype):
            pixels = batch["image"].to(device, non_blocking=True)  # uint8: crop and normalise where the model is
            feats = model.encode_images(center_crop_normalize(pixels, crop_size, source.style))
        for grain in model.grains:
            parts[grain].append(feats[grain].float())
        kept += [offset + i for i in batch["index"]]
    features = {g: check_finite(torch.cat(x), f"{g} image embeddings") if x else
                torch.zeros(0, model.embed_dim, device=device) for g, x in parts.items()}
    if dist_info.enabled:
        if any_rank(bool(errors), device):
            raise UserError("unreadable image files: " + ("; ".join(m for _, m in errors[:3]) or "on another rank")
                             + " (`python -m data.check` lists every such file)")
        for grain, local in features.items():  # pad to equal size, gather, trim
            padded = torch.zeros(per_rank, local.shape[1], device=device)
            padded[:len(local)] = local
            features[grain] = gather_no_grad(padded)[:n]
        kept = list(range(n))
    return ImageEmbeddings(features, kept, errors)


def model_inputs(source: PixelSource, paths: list[str | Path], crop_size: int, device) -> torch.Tensor:
    """(len(paths), 3, crop, crop) evaluation inputs of a few image files, made as embed_images makes them."""
    pixels = torch.stack([torch.from_numpy(source(p)) for p in paths]).to(device)
    return center_crop_normalize(pixels, crop_size, source.style)


@torch.inference_mode()
def embed_texts(model, vocab: Vocabulary, texts: list[str], device, batch_size: int = 512) -> torch.Tensor:
    """(len(texts), d) float32 text embeddings; texts are tokenised as the training captions are."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens, lengths = pad_tokens([vocab.encode(t) for t in texts[start:start + batch_size]])
        out.append(model.encode_texts(tokens.to(device), lengths).float())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim, device=device)


@torch.inference_mode()
def build_queries(model, vocab: Vocabulary, reference: dict[str, torch.Tensor], texts: list[str],
                  device) -> ComposedQuery:
    """Compose each reference embedding (grain -> (Q, d)) with its modification text."""
    return model.compose(reference, embed_texts(model, vocab, texts, device))


@torch.inference_mode()
def rank_gallery(model, query: ComposedQuery, gallery: dict[str, torch.Tensor] | torch.Tensor,
                 targets: list[list[int]], references: list[int], topk: int = 50, query_chunk: int = 1024,
                 gallery_chunk: int = 8192, progress: bool = False, squares: torch.Tensor | None = None) -> RankResult:
    """Rank every query against the gallery with the model's matmul scoring; engine.ranking states the rules
    (ties, the excluded reference, several targets). Non-finite scores raise engine.ranking.NonFiniteScores: they
    are never ranked.

    `gallery`: grain -> (G, d), scored grain by grain (model.score: evaluation); or the model's grains stacked
    (K, G, d), scored together (model.grain_scores: fewer and larger products, the search server's few queries),
    with `squares` = model.target_squares(gallery) where the caller keeps them. The two agree within float32
    rounding."""
    stacked = isinstance(gallery, torch.Tensor)
    n_gallery = gallery.shape[1] if stacked else len(next(iter(gallery.values())))

    def score(qs: slice, gs: slice) -> torch.Tensor:
        if stacked:
            scores = model.grain_scores(query[qs], gallery[:, gs], None if squares is None else squares[:, gs]).sum(0)
        else:
            scores = model.score(query[qs], {g: x[gs] for g, x in gallery.items()})
        return check_finite(scores.float(), "scores")

    return rank_queries(
        score,
        n_queries=len(query), n_gallery=n_gallery, targets=targets, references=references, topk=topk,
        query_chunk=query_chunk, gallery_chunk=gallery_chunk, progress=progress)
