"""Evaluation with the published protocols (MANME.md §6, evaluation protocols: galleries, queries and
recalls per dataset).

Every image that a split needs (galleries and references) is embedded once; queries are
composed once; the queries x gallery scores are produced chunk by chunk by the model's matmul
scoring and reduced to ranks and top-50 lists by engine.ranking. The protocol facts (recall
cut-offs, CIRR's subset cut-offs, the summary metric and selection rule, categories, the files
an evaluation server scores) come from the dataset format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.base import DatasetFormat, EvalSplit, Query, unique
from data.cache import PixelSource, open_pixel_source
from data.formats import open_dataset
from data.loaders import drop_missing_eval
from engine.inference import Trained, build_queries, embed_images, rank_gallery
from engine.ranking import RankResult, check_finite, rank_queries, recall_at
from models import ComposedQuery
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.io import check_output_dir, commit, discard, file_sha256, folder_lock, stage
from utils.logs import log
from utils.precision import ieee_float32

TOPK = 50
ALWAYS_REPORTED = (1, 5, 10, 50)  # recall cut-offs in metrics.json for every dataset, besides the published ones


@dataclass
class EvalResult:
    """A split's figures; a split whose targets are not public (CIRR test1) has none: `overall` is {} and each
    category holds its counts only."""
    dataset: str
    split: str
    columns: tuple[str, ...]                 # the published figures, in table order: "R@K" (CIRR: and "Rsubset@K")
    per_category: dict[str, dict]            # category -> {figure: %, "n_queries", "gallery_size", "queries_with_ties"}
    overall: dict[str, float]                # figures averaged over categories, the summary metric, queries_with_ties
    overlap: dict[str, float]                # grain -> mean shared attention mass
    score: float = float("nan")              # the best-checkpoint criterion: DatasetFormat.selection_score(overall)
    summary_metric: str | None = None        # its published name (FashionIQ: mR, CIRR: Avg), in overall
    summary_keys: tuple[str, ...] = ()       # the figures it averages
    rankings: list[dict] = field(default_factory=list)
    submission: dict[str, dict] = field(default_factory=dict)  # file name -> what an evaluation server scores
    note: str = ""                           # what to do with the submission files

    def to_json(self, checkpoint: str = "") -> dict:
        return {"dataset": self.dataset, "split": self.split, "checkpoint": checkpoint,
                "per_category": self.per_category, "overall": self.overall, "overlap": self.overlap,
                **({"submission_files": list(self.submission)} if self.submission else {})}

    def table(self) -> str:
        cols = self.columns if self.overall else ()
        width = {c: max(8, len(c) + 2) for c in cols}
        head = f"{'category':<10}" + "".join(f"{c:>{width[c]}}" for c in cols) + f"{'queries':>9}{'gallery':>9}"
        rows = [head, "-" * len(head)]
        for cat, m in self.per_category.items():
            rows.append(f"{cat:<10}" + "".join(f"{m[c]:{width[c]}.2f}" for c in cols)
                        + f"{m['n_queries']:9d}{m['gallery_size']:9d}")
        if not self.overall:
            return "\n".join(rows + [f"no recalls: the {self.split} queries carry no public targets"])
        if len(self.per_category) > 1:
            rows.append(f"{'mean':<10}" + "".join(f"{self.overall[c]:{width[c]}.2f}" for c in cols))
        if self.summary_metric:
            every_recall = set(self.summary_keys) == {c for c in self.columns if c.startswith("R@")}
            what = (f"the {len(self.summary_keys) * len(self.per_category)} recalls" if every_recall
                    else " and ".join(self.summary_keys))
            rows.append(f"{self.summary_metric} = {self.overall[self.summary_metric]:.2f}  (mean of {what})")
        if self.overall.get("queries_with_ties"):
            rows.append(f"{self.overall['queries_with_ties']} queries have a gallery image tied with their target "
                        f"(broken by gallery order, as rankings.jsonl lists them)")
        return "\n".join(rows)


def eval_splits(fmt: DatasetFormat, split: str) -> list[EvalSplit]:
    """The dataset's evaluation splits (one per category), without the queries and gallery images whose
    files are missing."""
    return [drop_missing_eval(fmt, s) for s in fmt.eval_splits(split)]


def embed_split_images(model, fmt: DatasetFormat, image_ids: list[str], cfg, device, dist_info=None, amp_dtype=None,
                       progress: bool = True, source: PixelSource | None = None) -> dict[str, torch.Tensor]:
    """grain -> (N, d) embeddings of the dataset images `image_ids`; an unreadable file is an error naming it.
    `source`: where the pixels come from (default: the --image_cache setting, opened quietly)."""
    source = source or open_pixel_source(cfg, log=lambda _: None)
    embedded = embed_images(model, [fmt.image_path(i) for i in image_ids], cfg.crop_size, device, cfg.eval_batch_size,
                            cfg.num_workers, dist_info, amp_dtype, progress, source=source)
    if embedded.errors:
        raise UserError(f"{len(embedded.errors)} unreadable image file(s) in the {fmt.name} evaluation images: "
                         + "; ".join(m for _, m in embedded.errors[:3])
                         + f" (`python -m data.check --dataset {fmt.name}` lists every such file)")
    return embedded.features


def gallery_positions(s: EvalSplit) -> dict[str, list[int]]:
    """image id -> its positions in `s`'s gallery (a gallery may list an image twice, as Fashion200k's label
    files do)."""
    at: dict[str, list[int]] = {}
    for n, image_id in enumerate(s.gallery):
        at.setdefault(image_id, []).append(n)
    return at


def rank_split(model, vocab, s: EvalSplit, queries: list[Query], features: dict[str, torch.Tensor],
               position: dict[str, int], cfg, device, topk: int = TOPK, progress: bool = False):
    """(composed queries, RankResult) of `queries` against `s`'s gallery, the protocol of MANME.md §6
    (evaluation protocols):
    the reference is left out of its own ranking, and every gallery entry of a correct image is a target."""
    rows = torch.tensor([position[i] for i in s.gallery], dtype=torch.long, device=device)
    gallery = {g: x[rows] for g, x in features.items()}
    at = gallery_positions(s)
    references = torch.tensor([position[q.reference] for q in queries], dtype=torch.long, device=device)
    query = build_queries(model, vocab, {g: x[references] for g, x in features.items()}, [q.text for q in queries],
                          device)
    result: RankResult = rank_gallery(
        model, query, gallery, targets=[[n for t in q.targets for n in at.get(t, [])] for q in queries],
        references=[at.get(q.reference, [-1])[0] for q in queries], topk=topk, query_chunk=cfg.eval_chunk,
        gallery_chunk=cfg.gallery_chunk, progress=progress)
    return query, result


@dataclass
class SubsetRanks:
    ranks: torch.Tensor          # (Q,) subset members scoring strictly above the target (the reference left out)
    rankings: list[list[str]]    # per query: its subset members other than the reference, best first


def rank_subsets(model, query: ComposedQuery, s: EvalSplit, features: dict[str, torch.Tensor],
                 position: dict[str, int], cfg) -> SubsetRanks:
    """CIRR's Recall_subset ranking: each query of `s` against its own Query.subset members only, the reference
    left out, with the model's scores and engine.ranking's rules (ties, exclusion) as for the gallery.

    Column j of query i is its j-th member; a query chunk is scored against the feature rows its members use,
    and each row reads its own columns. Members outside the gallery (missing files) are left out; shorter rows
    are padded with -inf columns, which never count and are dropped from the rankings (one at least, so that
    k = width - 1 keeps every member of a row whose reference is not among them)."""
    in_gallery = set(s.gallery)
    members = [unique(m for m in q.subset if m in in_gallery) for q in s.queries]
    width = 1 + max(map(len, members), default=0)
    device = next(iter(features.values())).device
    table = torch.tensor([[position[m] for m in row] + [-1] * (width - len(row)) for row in members],
                         dtype=torch.long, device=device).reshape(len(members), width)

    def score_fn(qs: slice, cs: slice) -> torch.Tensor:
        cols = table[qs, cs]
        needed, inverse = torch.unique(cols.clamp(min=0), return_inverse=True)
        block = check_finite(model.score(query[qs], {g: x[needed] for g, x in features.items()}).float(), "scores")
        return block.gather(1, inverse).masked_fill(cols < 0, float("-inf"))

    result = rank_queries(
        score_fn, n_queries=len(members), n_gallery=width, topk=width, query_chunk=cfg.eval_chunk,
        targets=[[j for j, m in enumerate(row) if m in q.targets] for row, q in zip(members, s.queries)],
        references=[row.index(q.reference) if q.reference in row else -1 for row, q in zip(members, s.queries)])
    rankings = [[row[j] for j in top if j < len(row) and row[j] != q.reference]
                for row, q, top in zip(members, s.queries, result.topk_index.tolist())]
    return SubsetRanks(result.ranks, rankings)


def has_targets(s: EvalSplit) -> bool:
    """Whether the split's targets are public (CIRR test1's are not: no recall is computed for it)."""
    return any(q.targets for q in s.queries)


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


def split_metrics(fmt: DatasetFormat, s: EvalSplit, result: RankResult, subsets: SubsetRanks | None) -> dict:
    """A category's recalls (R@K, and Rsubset@K for a format with subsets; none when its targets are not
    public), its query count, gallery size and the queries with a tie."""
    counts = {"n_queries": len(s.queries), "gallery_size": len(s.gallery)}
    if not has_targets(s):
        return counts
    report_unanswerable(s)
    recalls = recall_at(result.ranks, sorted(set(fmt.recall_ks) | set(ALWAYS_REPORTED)))
    if subsets is not None:
        recalls |= {"Rsubset" + key[1:]: value for key, value in recall_at(subsets.ranks, fmt.subset_ks).items()}
    return {**recalls, **counts, "queries_with_ties": int((result.ties > 0).sum())}


def overall_metrics(fmt: DatasetFormat, per_category: dict[str, dict]) -> dict[str, float]:
    """Every figure averaged over the categories, the summary metric and the tie count ({} without targets)."""
    if not all("queries_with_ties" in m for m in per_category.values()):
        return {}
    figures = [k for k in next(iter(per_category.values())) if k.startswith(("R@", "Rsubset@"))]
    overall = {k: sum(m[k] for m in per_category.values()) / len(per_category) for k in figures}
    if fmt.summary_metric:
        overall[fmt.summary_metric] = fmt.selection_score(overall)
    overall["queries_with_ties"] = sum(m["queries_with_ties"] for m in per_category.values())
    return overall


def ranking_rows(s: EvalSplit, result: RankResult, subsets: SubsetRanks | None, start: int) -> list[dict]:
    """rankings.jsonl lines of `s`'s queries: the top-50 gallery images, and for a format with subsets the
    query's pair id and subset members (the reference left out), best first."""
    rows = []
    for n, (q, top) in enumerate(zip(s.queries, result.topk_index.tolist())):
        row = {"query": start + n, "category": s.category, "reference": q.reference, "text": q.text,
               "targets": q.targets, "ranking": [s.gallery[j] for j in top]}
        if subsets is not None:
            row |= {"pair_id": q.pair_id, "subset_ranking": subsets.rankings[n]}
        rows.append(row)
    return rows


@torch.inference_mode()
@ieee_float32()  # no TF32: the figures do not move with the card or with the training's --tf32
def evaluate(model, fmt: DatasetFormat, vocab, cfg, split: str, device, dist_info: DistInfo | None = None,
             amp_dtype=None, keep_rankings: bool = True, progress: bool = True,
             source: PixelSource | None = None) -> EvalResult:
    """Run the dataset's protocol on `split` and return recalls, overlap and (optionally) rankings, with the
    files an evaluation server scores the split from when its targets are not public (CIRR test1).
    `source` gives the images' pixels (data.cache; default: as --image_cache says)."""
    was_training = model.training
    model.eval()
    splits = eval_splits(fmt, split)
    image_ids = sorted({i for s in splits for i in s.gallery} | {q.reference for s in splits for q in s.queries})
    position = {image_id: n for n, image_id in enumerate(image_ids)}
    features = embed_split_images(model, fmt, image_ids, cfg, device, dist_info, amp_dtype, progress, source)

    per_category, rankings, overlap_sums, n_total = {}, [], {}, 0
    for s in splits:
        query, result = rank_split(model, vocab, s, s.queries, features, position, cfg, device)
        subsets = rank_subsets(model, query, s, features, position, cfg) if fmt.subset_ks else None
        per_category[s.category] = split_metrics(fmt, s, result, subsets)
        for grain, value in model.attention_overlap(query).items():
            overlap_sums[grain] = overlap_sums.get(grain, 0.0) + float(value.sum())
        n_total += len(s.queries)
        if keep_rankings:
            rankings += ranking_rows(s, result, subsets, len(rankings))

    overall = overall_metrics(fmt, per_category)
    overlap = {g: v / n_total for g, v in overlap_sums.items()}
    model.train(was_training)
    columns = tuple(f"R@{k}" for k in fmt.recall_ks) + tuple(f"Rsubset@{k}" for k in fmt.subset_ks)
    return EvalResult(fmt.name, split, columns, per_category, overall, overlap,
                      score=fmt.selection_score(overall) if overall else float("nan"),
                      summary_metric=fmt.summary_metric, summary_keys=fmt.selection_keys(), rankings=rankings,
                      submission=fmt.submission_files(split, rankings) if keep_rankings else {},
                      note=fmt.submission_note)


def evaluate_trained(trained: Trained, checkpoint_path: str | Path, output_dir: str | Path | None = None,
                     extra: dict | None = None) -> tuple[EvalResult, Path]:
    """evaluate.py: run the protocol of the checkpoint's dataset and write metrics.json (plus `extra`),
    rankings.jsonl and any evaluation-server files (CIRR test1) to `output_dir` (default: eval_<split>/ beside
    the checkpoint)."""
    cfg = trained.cfg
    out_dir = Path(output_dir) if output_dir else Path(checkpoint_path).parent / f"eval_{cfg.split}"
    created = not out_dir.exists()
    check_output_dir(out_dir, "--output_dir")  # writable, before any embedding
    try:
        result = evaluate(trained.model, open_dataset(cfg), trained.vocab, cfg, cfg.split, trained.device,
                          amp_dtype=trained.amp_dtype, source=open_pixel_source(cfg))
    except BaseException:
        if created and not any(out_dir.iterdir()):  # leave nothing behind for a failed evaluation
            out_dir.rmdir()
        raise
    write_outputs(out_dir, {**result.to_json(str(checkpoint_path)), **(extra or {})}, result)
    return result, out_dir


def write_outputs(out_dir: Path, metrics: dict, result: EvalResult) -> None:
    """metrics.json, rankings.jsonl and any submission files of one evaluation, as one unit: every file is
    written to a temporary file first (a full disk leaves the folder as it was), then all are renamed into
    place under a lock on the folder (two evaluations take turns, never mixing their files), metrics.json
    last: its "files" names the sha256 of the others, so a reader can check that they belong together."""
    files = {"rankings.jsonl": lambda f: f.writelines(json.dumps(r) + "\n" for r in result.rankings),
             **{name: json_writer(content) for name, content in result.submission.items()}}
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in files.items():
            staged.append((stage(out_dir / name, write), out_dir / name))
        metrics["files"] = {path.name: {"sha256": file_sha256(tmp), "bytes": tmp.stat().st_size}
                            for tmp, path in staged}
        staged.append((stage(out_dir / "metrics.json", json_writer(metrics)), out_dir / "metrics.json"))
        with folder_lock(out_dir):
            commit(staged)
    finally:
        discard(staged)  # what was not renamed into place


def json_writer(content):
    return lambda f: f.write(json.dumps(content, indent=2) + "\n")
