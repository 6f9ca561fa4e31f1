"""Figures of what a model does, drawn with PIL at paper-column size (1000 px wide ≈ 3.3 in at 300 dpi).

- Retrieval grid: one row per query: the reference, the modification text, the top-k gallery
  images with their scores, the correct target framed in green. `retrieval_figure` also serves
  TensorBoard during training.
- Attention maps: for each query and granularity g, where on the *target* image the
  modified-part score s_mod^g and the preserved-part score s_pre^g come from: Grad-CAM of each
  score part on g's feature map (gradient of the part w.r.t. the map, averaged over space, weights
  the map's channels; ReLU; normalised to [0, 1]), side by side. Under each pair: the attention
  overlap of MANME.md §3 (objective, overlap), sum_k min(A_mod_k, A_pre_k) (what evaluation reports and the
  mutual-exclusion constraint lowers), and the overlap of the two maps themselves
  (sum min(p_mod, p_pre) of the maps normalised to sum 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from data.cache import open_pixel_source
from data.images import IMAGENET_MEAN, IMAGENET_STD, load_image
from engine.evaluation import embed_split_images, eval_splits, has_targets, rank_split
from engine.inference import embed_texts, model_inputs
from models import map_tensors
from models.image_encoder import gem
from utils.errors import UserError
from utils.io import atomic_write

WIDTH = 1000
MARGIN = 10
GAP = 4
GREEN = (20, 160, 60)
GREY = (120, 120, 120)
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


# ----------------------------------------------------------------------------- drawing helpers

def font(size: int) -> ImageFont.ImageFont:
    """PIL's default font at `size` px (scalable with FreeType; the fixed bitmap font otherwise)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def text_width(draw: ImageDraw.ImageDraw, text: str, face) -> float:
    return draw.textlength(text, font=face)


def wrap(draw: ImageDraw.ImageDraw, text: str, face, width: float) -> list[str]:
    """Greedy word wrap to `width` pixels."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and text_width(draw, candidate, face) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines or [""]


def line_height(face) -> int:
    box = face.getbbox("Ag(")
    return int(box[3] - box[1]) + 4


def centred(draw, x0: float, width: float, y: float, text: str, face, fill=BLACK) -> None:
    draw.text((x0 + (width - text_width(draw, text, face)) / 2, y), text, font=face, fill=fill)


def thumbnail(image: Image.Image, side: int) -> Image.Image:
    return image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)


def frame(draw, x: int, y: int, side: int, color, thickness: int) -> None:
    for t in range(thickness):
        draw.rectangle([x - 1 - t, y - 1 - t, x + side + t, y + side + t], outline=color)


def tensor_to_image(image: torch.Tensor) -> Image.Image:
    """A normalised (3, H, W) model input back to the RGB picture the model saw."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (image.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte()
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def jet(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, blue (0) through green and yellow to red (1)."""
    x = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`heat` (h, w) in [0, 1], resized bilinearly to the image, blended over it."""
    heat_image = Image.fromarray(jet(heat)).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), heat_image, alpha)


def save_png(image: Image.Image, path: str | Path, colors: int = 0) -> None:
    """Write `image` as PNG atomically, readable by others (umask); `colors` > 0 stores it with an
    adaptive palette of that many colours (about 3x smaller, for README figures)."""
    if colors:
        image = image.convert("RGB").quantize(min(256, colors), method=Image.Quantize.MEDIANCUT)
    atomic_write(path, lambda f: image.save(f, format="PNG", optimize=True), binary=True)


# ----------------------------------------------------------------------------- retrieval grid

@dataclass
class RetrievalRow:
    reference: Path
    text: str
    results: list[Path]                               # best first
    scores: list[float]
    targets: set[Path] = field(default_factory=set)   # results to frame (correct answers)
    category: str = ""


def draw_retrievals(rows: list[RetrievalRow], width: int = WIDTH, title: str = "",
                    upright: bool = False) -> Image.Image:
    """One row per query: reference | top-k with scores; caption above; correct targets framed green.
    `upright` applies EXIF orientation, for a user's own photos (retrieve.py)."""
    if not rows:
        raise ValueError("no query to draw")
    k = max(1, max(len(r.results) for r in rows))
    separator = 14
    side = (width - 2 * MARGIN - separator - k * GAP) // (k + 1)
    if side < 24:
        raise UserError(f"{k} results do not fit {width} px; lower --k or raise --width")
    big, small = font(max(12, width // 48)), font(max(11, width // 60))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [wrap(probe, f"“{r.text}”", big, width - 2 * MARGIN) for r in rows]
    head = (line_height(big) + 6 if title else 0) + line_height(small) + 4
    row_heights = [len(c) * line_height(big) + 2 + side + line_height(small) + 12 for c in captions]
    canvas = Image.new("RGB", (width, head + sum(row_heights) + MARGIN), WHITE)
    draw = ImageDraw.Draw(canvas)
    y = MARGIN // 2
    if title:
        draw.text((MARGIN, y), title, font=big, fill=BLACK)
        y += line_height(big) + 6
    legend = f"reference | top {k}, best first, with scores"
    if any(r.targets for r in rows):
        legend += "; green frame = correct target"
    draw.text((MARGIN, y), legend, font=small, fill=GREY)
    y += line_height(small) + 4
    for row, caption, height in zip(rows, captions, row_heights):
        top = y
        for line in caption:
            draw.text((MARGIN, y), line, font=big, fill=BLACK)
            y += line_height(big)
        y += 2
        canvas.paste(thumbnail(load_image(row.reference, upright), side), (MARGIN, y))
        centred(draw, MARGIN, side, y + side + 1, "reference", small, GREY)
        x_line = MARGIN + side + separator // 2
        draw.line([x_line, y, x_line, y + side], fill=GREY, width=2)
        for j, (path, score) in enumerate(zip(row.results, row.scores)):
            x = MARGIN + side + separator + j * (side + GAP)
            canvas.paste(thumbnail(load_image(path, upright), side), (x, y))
            hit = path in row.targets
            if hit:
                frame(draw, x, y, side, GREEN, 3)
            centred(draw, x, side, y + side + 1, f"{score:.2f}", small, GREEN if hit else BLACK)
        y = top + height
        draw.line([MARGIN, y - 5, width - MARGIN, y - 5], fill=(225, 225, 225), width=1)
    return canvas


def pick(items: list, n: int) -> list:
    """n items spread evenly over the list (deterministic: the same queries for every model)."""
    if n >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)] if n > 1 else [items[0]]


def first_split(fmt, split: str):
    """The split's first category (FashionIQ: the first of --categories), missing images dropped."""
    splits = eval_splits(fmt, split)
    if not splits:
        raise UserError(f"{fmt.name} {split}: no evaluation split")
    return splits[0]


@torch.inference_mode()
def retrieval_rows(model, fmt, vocab, cfg, device, split: str = "val", n: int = 4, k: int = 5,
                   amp_dtype=None, progress: bool = False, source=None) -> list[RetrievalRow]:
    """Top-k of n queries of the split's first category, ranked exactly as evaluation ranks them
    (the category's whole gallery, the reference excluded); `source` as for embed_split_images."""
    s = first_split(fmt, split)
    queries = pick(s.queries, n)
    was_training = model.training
    model.eval()
    image_ids = list(dict.fromkeys(s.gallery + [q.reference for q in queries]))
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    features = embed_split_images(model, fmt, image_ids, cfg, device, amp_dtype=amp_dtype, progress=progress,
                                  source=source)
    _, result = rank_split(model, vocab, s, queries, features, position, cfg, device, topk=k)
    model.train(was_training)
    return [RetrievalRow(fmt.image_path(q.reference), q.text, [fmt.image_path(s.gallery[j]) for j in top], scores,
                         {fmt.image_path(t) for t in q.targets}, s.category)
            for q, top, scores in zip(queries, result.topk_index.tolist(), result.topk_score.tolist())]


def retrieval_figure(model, fmt, vocab, cfg, device, split: str = "val", n: int = 4, k: int = 5,
                     width: int = WIDTH, title: str = "", amp_dtype=None, progress: bool = False,
                     source=None) -> Image.Image:
    """The retrieval grid of n queries of `split`'s first category (for visualize.py and TensorBoard).

    Embeds that category's gallery once (FashionIQ dress val: 3817 images)."""
    rows = retrieval_rows(model, fmt, vocab, cfg, device, split, n, k, amp_dtype, progress, source)
    return draw_retrievals(rows, width, title or f"{cfg.model} · {cfg.dataset} {split} {rows[0].category}".strip())


def log_retrieval_figure(writer, tag: str, step: int, model, fmt, vocab, cfg, device, **kw) -> None:
    """Add `retrieval_figure(...)` to a TensorBoard SummaryWriter as an HWC uint8 image."""
    image = retrieval_figure(model, fmt, vocab, cfg, device, **kw)
    writer.add_image(tag, np.asarray(image), step, dataformats="HWC")


def validation_figure(writer, tag: str, step: int, trainer) -> None:
    """engine.trainer's validation hook: the retrieval figure of the model being trained."""
    log_retrieval_figure(writer, f"{tag}/retrievals", step, trainer.model, trainer.fmt, trainer.vocab, trainer.cfg,
                         trainer.device, source=trainer.eval_source)  # the cache already opened, not again


# ----------------------------------------------------------------------------- attention maps

PARTS = ("modified", "preserved")


@dataclass
class AttentionMaps:
    maps: dict[str, dict[str, np.ndarray]]    # grain -> part -> (h, w) Grad-CAM in [0, 1] (feature resolution)
    part_scores: dict[str, dict[str, float]]  # grain -> part -> s_part(query, target)
    overlap: dict[str, float]                 # grain -> sum_k min(A_mod, A_pre) (MANME.md §3, objective, overlap)
    map_overlap: dict[str, float]             # grain -> sum min(p_mod, p_pre) of the maps normalised to sum 1


@dataclass
class AttentionRow(AttentionMaps):
    reference: Image.Image = None             # what the model saw (centre crop)
    target: Image.Image = None
    text: str = ""


def grad_cam(score: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
    """(h, w) map in [0, 1]: ReLU(sum_c mean_hw(d score / d F_c) · F_c), normalised by its maximum."""
    grad, = torch.autograd.grad(score, feature_map, retain_graph=True)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * feature_map).sum(1))[0]
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).detach()


def shared_mass(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum min(a / sum a, b / sum b) in [0, 1] (0 when either map is empty)."""
    if a.sum() <= 0 or b.sum() <= 0:
        return 0.0
    return float(torch.minimum(a / a.sum(), b / b.sum()).sum())


def attention_maps(model, reference: torch.Tensor, target: torch.Tensor, text: torch.Tensor) -> AttentionMaps:
    """Grad-CAM of every score part of (reference (1,3,H,W), text embedding (1,d)) against `target`
    (1,3,H,W) on each grain's feature map."""
    encoder = model.image_encoder
    with torch.no_grad():
        query = map_tensors(model.compose(model.encode_images(reference), text), torch.Tensor.clone)
        feature_maps = encoder.feature_maps(target)
    with torch.enable_grad():
        leaves = {g: x.detach().float().clone().requires_grad_(True) for g, x in feature_maps.items()}
        # the tail of ImageEncoder.forward, from each grain's feature map
        targets = {g: F.normalize(encoder.projections[g](gem(x, encoder.gem_p)).float(), dim=-1)
                   for g, x in leaves.items()}
        parts = model.score_parts(query, targets)
        maps, scores = {}, {}
        for g in model.grains:
            maps[g], scores[g] = {}, {}
            for part in PARTS:
                if f"{part}/{g}" in parts:
                    value = parts[f"{part}/{g}"][0, 0]
                    maps[g][part] = grad_cam(value, leaves[g]).cpu()
                    scores[g][part] = float(value.detach())
    overlap = {g: float(v[0]) for g, v in model.attention_overlap(query).items()}
    map_overlap = {g: shared_mass(m["modified"], m["preserved"]) for g, m in maps.items()
                   if "modified" in m and "preserved" in m}
    return AttentionMaps({g: {p: m.numpy() for p, m in ms.items()} for g, ms in maps.items()}, scores, overlap,
                         map_overlap)


def check_attention_parts(model, name: str) -> None:
    """Raise ValueError unless the model scores modified and preserved parts (what attention maps show)."""
    if not any(k.startswith(("modified/", "preserved/")) for k in _part_names(model)):
        raise ValueError(f"--model {name} has no modified/preserved score "
                         f"parts; attention maps need manme, artemis, em-only or is-only")


def attention_row(model, vocab, source, reference: Path, target: Path, text: str, crop_size: int,
                  device) -> AttentionRow:
    """The attention maps of one query (reference file, text) on one target file; `source` reads the pixels
    (data.cache.PixelSource: dataset images as evaluation reads them, or a user's photos upright)."""
    reference_input, target_input = model_inputs(source, [reference, target], crop_size, device).split(1)
    text_embedding = embed_texts(model, vocab, [text], device).clone()
    found = attention_maps(model, reference_input, target_input, text_embedding)
    return AttentionRow(**vars(found), reference=tensor_to_image(reference_input[0]),
                        target=tensor_to_image(target_input[0]), text=text)


def attention_rows(model, fmt, vocab, cfg, device, split: str = "val", n: int = 4) -> list[AttentionRow]:
    """Attention maps of n queries of the split's first category, on each query's (first) target."""
    check_attention_parts(model, cfg.model)
    s = first_split(fmt, split)
    if not has_targets(s):
        raise UserError(f"attention maps are drawn on each query's target, and the {fmt.name} {split} queries carry "
                        f"none; use --split val")
    was_training = model.training
    model.eval()
    source = open_pixel_source(cfg, log=lambda _: None)
    rows = []
    for q in pick(s.queries, n):
        rows.append(attention_row(model, vocab, source, fmt.image_path(q.reference), fmt.image_path(q.targets[0]),
                                  q.text, cfg.crop_size, device))
    model.train(was_training)
    return rows


def _part_names(model) -> list[str]:
    d = model.embed_dim
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # one probe query: BatchNorm layers (TIRG's) need eval mode for a batch of one
    with torch.no_grad():
        unit = F.normalize(torch.ones(1, d, device=device), dim=-1)
        grains = {g: unit for g in model.grains}
        names = list(model.score_parts(model.compose(grains, unit), grains))
    model.train(was_training)
    return names


def draw_attention(rows: list[AttentionRow], grains: list[str], width: int = WIDTH, title: str = "") -> Image.Image:
    """Rows: reference | target | per grain: modified-part map | preserved-part map, on the target."""
    if not rows:
        raise ValueError("no query to draw")
    columns = 2 + 2 * len(grains)
    group_gap = 12
    side = (width - 2 * MARGIN - (columns - 1) * GAP - len(grains) * group_gap) // columns
    if side < 24:
        raise ValueError(f"{columns} columns do not fit {width} px; raise --width")
    big, small = font(max(12, width // 48)), font(max(11, width // 62))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [wrap(probe, f"“{r.text}”", big, width - 2 * MARGIN) for r in rows]
    lh_big, lh_small = line_height(big), line_height(small)
    legend = wrap(probe, "Grad-CAM of each score part on the target image; s = the part's score; overlap = "
                         "sum min(A_mod, A_pre) of the two channel attentions; maps = shared mass of the two maps",
                  small, width - 2 * MARGIN)
    head = (lh_big + 6 if title else 0) + (len(legend) + 2) * lh_small + 8
    row_heights = [len(c) * lh_big + 2 + side + 2 * lh_small + 12 for c in captions]
    canvas = Image.new("RGB", (width, head + sum(row_heights) + MARGIN), WHITE)
    draw = ImageDraw.Draw(canvas)

    def column_x(c: int) -> int:
        groups = 0 if c < 2 else 1 + (c - 2) // 2
        return MARGIN + c * (side + GAP) + groups * group_gap

    y = MARGIN // 2
    if title:
        draw.text((MARGIN, y), title, font=big, fill=BLACK)
        y += lh_big + 6
    for line in legend:
        draw.text((MARGIN, y), line, font=small, fill=GREY)
        y += lh_small
    y += 4
    centred(draw, column_x(0), side, y + lh_small, "reference", small, GREY)
    centred(draw, column_x(1), side, y + lh_small, "target", small, GREY)
    for i, g in enumerate(grains):
        x0 = column_x(2 + 2 * i)
        centred(draw, x0, 2 * side + GAP, y, g, small, BLACK)
        centred(draw, x0, side, y + lh_small, "modified", small, GREY)
        centred(draw, x0 + side + GAP, side, y + lh_small, "preserved", small, GREY)
    y += 2 * lh_small + 4
    for row, caption, height in zip(rows, captions, row_heights):
        top = y
        for line in caption:
            draw.text((MARGIN, y), line, font=big, fill=BLACK)
            y += lh_big
        y += 2
        target = thumbnail(row.target, side)
        canvas.paste(thumbnail(row.reference, side), (column_x(0), y))
        canvas.paste(target, (column_x(1), y))
        for i, g in enumerate(grains):
            for j, part in enumerate(PARTS):
                x = column_x(2 + 2 * i + j)
                heat = row.maps.get(g, {}).get(part)
                if heat is None:
                    draw.rectangle([x, y, x + side - 1, y + side - 1], fill=(235, 235, 235))
                    centred(draw, x, side, y + side / 2 - lh_small / 2, "n/a", small, GREY)
                    continue
                canvas.paste(overlay(target, heat), (x, y))
                centred(draw, x, side, y + side + 1, f"s={row.part_scores[g][part]:.2f}", small, BLACK)
            if g in row.overlap:
                label = f"overlap {row.overlap[g]:.2f} · maps {row.map_overlap.get(g, 0.0):.2f}"
                centred(draw, column_x(2 + 2 * i), 2 * side + GAP, y + side + 1 + lh_small, label, small, GREY)
        y = top + height
        draw.line([MARGIN, y - 5, width - MARGIN, y - 5], fill=(225, 225, 225), width=1)
    return canvas


def attention_figure(model, fmt, vocab, cfg, device, split: str = "val", n: int = 4, width: int = WIDTH,
                     title: str = "") -> tuple[Image.Image, list[AttentionRow]]:
    rows = attention_rows(model, fmt, vocab, cfg, device, split, n)
    if not title:
        means = {g: sum(r.overlap[g] for r in rows) / len(rows) for g in model.grains
                 if all(g in r.overlap for r in rows)}
        title = f"{cfg.model} (lambda_me {cfg.lambda_me:g}) · {cfg.dataset} {split}"
        if means:
            title += " · mean overlap " + ", ".join(f"{g} {v:.2f}" for g, v in means.items())
    return draw_attention(rows, list(model.grains), width, title), rows
