"""Evaluation with the published protocols (MANME.md §6).

Every image that a split needs (galleries and references) is embedded once;
queries are composed once; the Q×G scores are produced chunk by chunk by the
model's matmul scoring and reduced to ranks and top-50 lists by utils.ranking.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.images import eval_transform
from data.loaders import ImageFolderList, drop_missing_eval, ignore_stop_signals, pad_tokens
from models.base import map_tensors
from utils.distributed import DistInfo, gather_no_grad
from utils.ranking import rank_queries, recall_at

TOPK = 50


def recall_ks(dataset: str) -> tuple[int, ...]:
    return (10, 50) if dataset == "fashioniq" else (1, 10, 50)


@dataclass
class EvalResult:
    dataset: str
    split: str
    per_category: dict[str, dict]            # category -> {"R@K": %, "n_queries", "gallery_size"}
    overall: dict[str, float]
    overlap: dict[str, float]                # grain -> mean shared attention mass
    rankings: list[dict] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The published model-selection criterion."""
        if self.dataset == "fashioniq":
            return self.overall["mR"]
        return sum(self.overall[f"R@{k}"] for k in (1, 10, 50)) / 3

    def to_json(self, checkpoint: str = "") -> dict:
        return {"dataset": self.dataset, "split": self.split, "checkpoint": checkpoint,
                "per_category": self.per_category, "overall": self.overall, "overlap": self.overlap}

    def table(self) -> str:
        ks = recall_ks(self.dataset)
        head = f"{'category':<10}" + "".join(f"{'R@' + str(k):>8}" for k in ks) + f"{'queries':>9}{'gallery':>9}"
        rows = [head, "-" * len(head)]
        for cat, m in self.per_category.items():
            rows.append(f"{cat:<10}" + "".join(f"{m[f'R@{k}']:8.2f}" for k in ks)
                        + f"{m['n_queries']:9d}{m['gallery_size']:9d}")
        if len(self.per_category) > 1 or self.dataset == "fashioniq":
            rows.append(f"{'mean':<10}" + "".join(f"{self.overall[f'R@{k}']:8.2f}" for k in ks))
        if "mR" in self.overall:
            rows.append(f"mR = {self.overall['mR']:.2f}  (mean of the {len(ks) * len(self.per_category)} recalls)")
        return "\n".join(rows)


@torch.inference_mode()
def embed_images(model, fmt, image_ids: list[str], crop_size: int, device, batch_size: int = 64,
                 num_workers: int = 0, dist_info: DistInfo | None = None, amp_dtype=None,
                 progress: bool = True) -> dict[str, torch.Tensor]:
    """grain -> (N, d) float32 embeddings of `image_ids`, sharded across ranks under torchrun."""
    dist_info = dist_info or DistInfo()
    n = len(image_ids)
    per_rank = -(-n // dist_info.world_size)
    mine = image_ids[dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank]
    loader = DataLoader(ImageFolderList(fmt, mine, eval_transform(crop_size)), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_stop_signals)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(loader, desc="embed images", disable=not (progress and dist_info.is_main), leave=False):
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            feats = model.encode_images(images)
        for grain, x in feats.items():
            parts.setdefault(grain, []).append(x.float())
    embed_dim = model.embed_dim
    out = {}
    for grain in model.grains:
        local = torch.cat(parts[grain]) if grain in parts else torch.zeros(0, embed_dim, device=device)
        if dist_info.enabled:  # pad to equal size, gather, trim
            padded = torch.zeros(per_rank, local.shape[1], device=device)
            padded[:len(local)] = local
            local = gather_no_grad(padded)[:n]
        out[grain] = local
    return out


@torch.inference_mode()
def embed_texts(model, vocab, texts: list[str], device, batch_size: int = 512) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        tokens, lengths = pad_tokens([vocab.encode(t) for t in texts[start:start + batch_size]])
        out.append(model.encode_texts(tokens.to(device), lengths).float())
    return torch.cat(out)


@torch.inference_mode()
def evaluate(model, fmt, vocab, cfg, split: str, device, dist_info: DistInfo | None = None,
             amp_dtype=None, keep_rankings: bool = True, progress: bool = True) -> EvalResult:
    """Run the dataset's protocol on `split` and return recalls, overlap and (optionally) rankings."""
    was_training = model.training
    model.eval()
    splits = fmt.eval_splits(split)
    if cfg.dataset == "fashioniq":
        wanted = cfg.category_list
        splits = [s for s in splits if s.category in wanted]
    splits = [drop_missing_eval(fmt, s) for s in splits]

    image_ids = sorted({i for s in splits for i in s.gallery} | {q.reference for s in splits for q in s.queries})
    position = {image_id: n for n, image_id in enumerate(image_ids)}
    feats = embed_images(model, fmt, image_ids, cfg.crop_size, device, cfg.eval_batch_size,
                         cfg.num_workers, dist_info, amp_dtype, progress)

    ks = recall_ks(cfg.dataset)
    per_category, rankings, overlap_sums, n_total = {}, [], {}, 0
    for s in splits:
        gallery_rows = torch.tensor([position[i] for i in s.gallery], device=device)
        gallery = {g: x[gallery_rows] for g, x in feats.items()}
        in_gallery = {image_id: n for n, image_id in enumerate(s.gallery)}
        reference_rows = torch.tensor([position[q.reference] for q in s.queries], device=device)
        text = embed_texts(model, vocab, [q.text for q in s.queries], device)
        query = model.compose({g: x[reference_rows] for g, x in feats.items()}, text)

        result = rank_queries(
            lambda qs, gs: model.score(map_tensors(query, lambda t: t[qs]), {g: x[gs] for g, x in gallery.items()}).float(),
            n_queries=len(s.queries), n_gallery=len(s.gallery),
            targets=[[in_gallery[t] for t in q.targets if t in in_gallery] for q in s.queries],
            references=[in_gallery.get(q.reference, -1) for q in s.queries],
            topk=TOPK, query_chunk=cfg.eval_chunk, gallery_chunk=cfg.gallery_chunk)
        metrics = recall_at(result.ranks.cpu(), ks)
        per_category[s.category] = {**metrics, "n_queries": len(s.queries), "gallery_size": len(s.gallery)}

        for grain, value in model.attention_overlap(query).items():
            overlap_sums[grain] = overlap_sums.get(grain, 0.0) + float(value.sum())
        n_total += len(s.queries)
        if keep_rankings:
            top = result.topk_index.cpu().tolist()
            for n, q in enumerate(s.queries):
                rankings.append({"query": len(rankings), "category": s.category, "reference": q.reference,
                                 "text": q.text, "targets": q.targets, "ranking": [s.gallery[j] for j in top[n]]})

    overall = {f"R@{k}": sum(m[f"R@{k}"] for m in per_category.values()) / len(per_category) for k in ks}
    if cfg.dataset == "fashioniq":
        overall["mR"] = sum(overall.values()) / len(overall)
    overlap = {g: v / n_total for g, v in overlap_sums.items()}
    model.train(was_training)
    return EvalResult(cfg.dataset, split, per_category, overall, overlap, rankings)


def load_trained(checkpoint_path: str | Path, explicit: dict | None = None):
    """(model in eval mode on its device, config, vocabulary) rebuilt from a checkpoint alone.

    `explicit` holds command-line overrides (data_root, device, split, ...)."""
    from config import resolve
    from data.text import Vocabulary
    from models import build_model
    from utils.checkpoint import load_checkpoint, strip_ddp_prefix
    from utils.trainer import pick_device

    checkpoint = load_checkpoint(checkpoint_path)
    overrides = {k: v for k, v in (explicit or {}).items() if k not in ("ckpt", "resume")}
    cfg = resolve(overrides, base=checkpoint["config"])
    device = pick_device(cfg)
    vocab = Vocabulary(list(checkpoint["vocab"]["tokens"]), checkpoint["vocab"]["words_count"])
    # the weights come from the checkpoint: no ImageNet file or GloVe needed
    model = build_model(replace(cfg, backbone_weights="none", glove_path=""), len(vocab))
    model.load_state_dict(strip_ddp_prefix(checkpoint["model"]))
    return model.to(device).eval(), cfg, vocab


def evaluate_checkpoint(checkpoint_path: str, explicit: dict) -> tuple[EvalResult, Path]:
    """evaluate.py: rebuild model, vocabulary and data settings from a checkpoint; write metrics and rankings."""
    from data.base import open_dataset
    from utils.io import atomic_write, atomic_write_json
    from utils.trainer import amp_dtype

    model, cfg, vocab = load_trained(checkpoint_path, explicit)
    device = next(model.parameters()).device
    out_dir = Path(explicit["output_dir"]) if "output_dir" in explicit else Path(checkpoint_path).parent / f"eval_{cfg.split}"
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{out_dir}: cannot create the output directory ({e.strerror}); pass --output_dir") from None
    try:
        fmt = open_dataset(cfg)
        result = evaluate(model, fmt, vocab, cfg, cfg.split, device, amp_dtype=amp_dtype(cfg, device))
    except BaseException:
        if created and not any(out_dir.iterdir()):  # leave nothing behind for a failed evaluation
            out_dir.rmdir()
        raise
    metrics = result.to_json(str(checkpoint_path))
    if cfg.profile:
        from utils.profile import format_profile, profile_model
        metrics["profile"] = profile_model(model, cfg, device)
        print(format_profile(metrics["profile"]))
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write(out_dir / "rankings.jsonl", lambda f: f.writelines(json.dumps(r) + "\n" for r in result.rankings))
    return result, out_dir
