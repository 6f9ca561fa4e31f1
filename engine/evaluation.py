"""Evaluation with the published protocols (MANME.md §6, evaluation protocols: galleries, queries and
recalls per dataset).

Every image that a split needs (galleries and references) is embedded once; queries are
composed once; the queries x gallery scores are produced chunk by chunk by the model's matmul
scoring and reduced to ranks and top-50 lists by engine.ranking. The protocol facts (recall
cut-offs, the summary metric, categories) come from the dataset format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.base import DatasetFormat, EvalSplit, Query
from data.formats import open_dataset
from data.loaders import drop_missing_eval
from engine.inference import Trained, build_queries, embed_images, rank_gallery
from engine.ranking import RankResult, recall_at
from utils.distributed import DistInfo
from utils.io import atomic_write, atomic_write_json
from utils.logs import log

TOPK = 50
ALWAYS_REPORTED = (1, 5, 10, 50)  # recall cut-offs in metrics.json for every dataset, besides the published ones


@dataclass
class EvalResult:
    dataset: str
    split: str
    recall_ks: tuple[int, ...]               # the dataset's published cut-offs
    per_category: dict[str, dict]            # category -> {"R@K": %, "n_queries", "gallery_size"}
    overall: dict[str, float]                # "R@K" averaged over categories, the summary metric, queries_with_ties
    overlap: dict[str, float]                # grain -> mean shared attention mass
    rankings: list[dict] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The published model-selection criterion: the mean of every reported recall (FashionIQ's mR)."""
        return sum(self.overall[f"R@{k}"] for k in self.recall_ks) / len(self.recall_ks)

    def to_json(self, checkpoint: str = "") -> dict:
        return {"dataset": self.dataset, "split": self.split, "checkpoint": checkpoint,
                "per_category": self.per_category, "overall": self.overall, "overlap": self.overlap}

    def table(self) -> str:
        ks = self.recall_ks
        head = f"{'category':<10}" + "".join(f"{'R@' + str(k):>8}" for k in ks) + f"{'queries':>9}{'gallery':>9}"
        rows = [head, "-" * len(head)]
        for cat, m in self.per_category.items():
            rows.append(f"{cat:<10}" + "".join(f"{m[f'R@{k}']:8.2f}" for k in ks)
                        + f"{m['n_queries']:9d}{m['gallery_size']:9d}")
        summary = [k for k in self.overall if not k.startswith("R@") and k != "queries_with_ties"]
        if len(self.per_category) > 1 or summary:
            rows.append(f"{'mean':<10}" + "".join(f"{self.overall[f'R@{k}']:8.2f}" for k in ks))
        for name in summary:
            rows.append(f"{name} = {self.overall[name]:.2f}  (mean of the {len(ks) * len(self.per_category)} recalls)")
        if self.overall.get("queries_with_ties"):
            rows.append(f"{self.overall['queries_with_ties']} queries have a gallery image tied with their target "
                        f"(counted in the target's favour)")
        return "\n".join(rows)


def eval_splits(fmt: DatasetFormat, split: str) -> list[EvalSplit]:
    """The dataset's evaluation splits (one per category), without the queries and gallery images whose
    files are missing."""
    return [drop_missing_eval(fmt, s) for s in fmt.eval_splits(split)]


def embed_split_images(model, fmt: DatasetFormat, image_ids: list[str], cfg, device, dist_info=None, amp_dtype=None,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """grain -> (N, d) embeddings of the dataset images `image_ids`; an unreadable file is an error naming it."""
    embedded = embed_images(model, [fmt.image_path(i) for i in image_ids], cfg.crop_size, device, cfg.eval_batch_size,
                            cfg.num_workers, dist_info, amp_dtype, progress)
    if embedded.errors:
        raise ValueError(f"{len(embedded.errors)} unreadable image file(s) in the {fmt.name} evaluation images: "
                         + "; ".join(m for _, m in embedded.errors[:3])
                         + f" (`python -m data.check --dataset {fmt.name}` lists every such file)")
    return embedded.features


def rank_split(model, vocab, s: EvalSplit, queries: list[Query], features: dict[str, torch.Tensor],
               position: dict[str, int], cfg, device, topk: int = TOPK, progress: bool = False):
    """(composed queries, RankResult) of `queries` against `s`'s gallery, the protocol of MANME.md §6
    (evaluation protocols):
    the reference is left out of its own ranking, and every gallery entry of a correct image is a target
    (a gallery may list an image twice, as Fashion200k's label files do)."""
    rows = torch.tensor([position[i] for i in s.gallery], dtype=torch.long, device=device)
    gallery = {g: x[rows] for g, x in features.items()}
    at: dict[str, list[int]] = {}
    for n, image_id in enumerate(s.gallery):
        at.setdefault(image_id, []).append(n)
    references = torch.tensor([position[q.reference] for q in queries], dtype=torch.long, device=device)
    query = build_queries(model, vocab, {g: x[references] for g, x in features.items()}, [q.text for q in queries],
                          device)
    result: RankResult = rank_gallery(
        model, query, gallery, targets=[[n for t in q.targets for n in at.get(t, [])] for q in queries],
        references=[at.get(q.reference, [-1])[0] for q in queries], topk=topk, query_chunk=cfg.eval_chunk,
        gallery_chunk=cfg.gallery_chunk, progress=progress)
    return query, result


def report_unanswerable(s: EvalSplit) -> None:
    """Say how many queries count as misses whatever the model does: every target is the reference itself
    (left out of its own ranking), or no target is in the gallery."""
    in_gallery = set(s.gallery)
    own = sum(all(t == q.reference for t in q.targets) for q in s.queries)
    absent = sum(not any(t in in_gallery and t != q.reference for t in q.targets) for q in s.queries) - own
    if own or absent:
        log.warning(f"{s.category}: {own + absent} of {len(s.queries)} queries count as misses whatever the model "
                    f"does ({own} whose target is the reference image itself, {absent} whose target is not in the "
                    f"gallery); the annotation files list them so")


@torch.inference_mode()
def evaluate(model, fmt: DatasetFormat, vocab, cfg, split: str, device, dist_info: DistInfo | None = None,
             amp_dtype=None, keep_rankings: bool = True, progress: bool = True) -> EvalResult:
    """Run the dataset's protocol on `split` and return recalls, overlap and (optionally) rankings."""
    was_training = model.training
    model.eval()
    splits = eval_splits(fmt, split)
    image_ids = sorted({i for s in splits for i in s.gallery} | {q.reference for s in splits for q in s.queries})
    position = {image_id: n for n, image_id in enumerate(image_ids)}
    features = embed_split_images(model, fmt, image_ids, cfg, device, dist_info, amp_dtype, progress)

    ks = fmt.recall_ks
    reported = sorted(set(ks) | set(ALWAYS_REPORTED))
    per_category, rankings, overlap_sums, n_total = {}, [], {}, 0
    for s in splits:
        report_unanswerable(s)
        query, result = rank_split(model, vocab, s, s.queries, features, position, cfg, device)
        per_category[s.category] = {**recall_at(result.ranks, reported), "n_queries": len(s.queries),
                                    "gallery_size": len(s.gallery),
                                    "queries_with_ties": int((result.ties > 0).sum())}
        for grain, value in model.attention_overlap(query).items():
            overlap_sums[grain] = overlap_sums.get(grain, 0.0) + float(value.sum())
        n_total += len(s.queries)
        if keep_rankings:
            top = result.topk_index.tolist()
            for n, q in enumerate(s.queries):
                rankings.append({"query": len(rankings), "category": s.category, "reference": q.reference,
                                 "text": q.text, "targets": q.targets, "ranking": [s.gallery[j] for j in top[n]]})

    overall = {f"R@{k}": sum(m[f"R@{k}"] for m in per_category.values()) / len(per_category) for k in reported}
    if fmt.summary_metric:
        overall[fmt.summary_metric] = sum(overall[f"R@{k}"] for k in ks) / len(ks)
    overall["queries_with_ties"] = sum(m["queries_with_ties"] for m in per_category.values())
    overlap = {g: v / n_total for g, v in overlap_sums.items()}
    model.train(was_training)
    return EvalResult(fmt.name, split, ks, per_category, overall, overlap, rankings)


def evaluate_trained(trained: Trained, checkpoint_path: str | Path, output_dir: str | Path | None = None,
                     extra: dict | None = None) -> tuple[EvalResult, Path]:
    """evaluate.py: run the protocol of the checkpoint's dataset and write metrics.json (plus `extra`)
    and rankings.jsonl to `output_dir` (default: eval_<split>/ beside the checkpoint)."""
    cfg = trained.cfg
    out_dir = Path(output_dir) if output_dir else Path(checkpoint_path).parent / f"eval_{cfg.split}"
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{out_dir}: cannot create the output directory ({e.strerror}); "
                              f"pass --output_dir") from None
    try:
        result = evaluate(trained.model, open_dataset(cfg), trained.vocab, cfg, cfg.split, trained.device,
                          amp_dtype=trained.amp_dtype)
    except BaseException:
        if created and not any(out_dir.iterdir()):  # leave nothing behind for a failed evaluation
            out_dir.rmdir()
        raise
    metrics = {**result.to_json(str(checkpoint_path)), **(extra or {})}
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write(out_dir / "rankings.jsonl", lambda f: f.writelines(json.dumps(r) + "\n" for r in result.rankings))
    return result, out_dir
