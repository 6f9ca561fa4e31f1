"""The evaluation browser: an evaluation folder (metrics.json, rankings.jsonl as evaluate.py writes them) and its
dataset's images, with the failures first.

  GET /                                      the page
  GET /api/metrics                           metrics.json, and the columns of its recall table
  GET /api/queries?category=&min_rank=&max_rank=&offset=&limit=
                                             the queries of a category (all: every category in turn), the worst
                                             first: by target rank, the position of the first correct image in
                                             the top-50 ranking; a query whose target is not in it has rank
                                             null, counted as 51 (after every rank) by the filters
  GET /api/explain?query=&target=            PNG: the attention maps of a query on an image (needs the checkpoint)
  GET /thumb/<image id>, /image/<image id>   an image that the rankings name

CIRR's rows carry their subset ranking too (`subset_ranking`, `subset_rank`).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

from fastapi import FastAPI, Query

from config import resolve
from data.cache import open_pixel_source
from data.formats import open_dataset
from engine.inference import load_trained
from tools.figures import check_attention_parts
from tools.web.common import (
    MAX_PAGE,
    ServedFiles,
    Thumbnails,
    add_image_routes,
    add_static,
    explanation_png,
    fail,
    json_errors,
    page,
)
from utils.io import read_json

NOT_IN_TOP = 51  # the rank filters give a target outside the top 50 this rank


def first_hit(ranking: list[str], targets: list[str]) -> int | None:
    """1-based position of the first correct image in `ranking`, None when none is in it."""
    wanted = set(targets)
    return next((n + 1 for n, image_id in enumerate(ranking) if image_id in wanted), None)


def read_rankings(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["target_rank"] = first_hit(row["ranking"], row["targets"])
                if "subset_ranking" in row:
                    row["subset_rank"] = first_hit(row["subset_ranking"], row["targets"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a rankings.jsonl line as evaluate.py writes it ({e}); "
                                 f"rerun evaluate.py") from None
            rows.append(row)
    return rows


def find_checkpoint(run: Path, recorded: str, given: str) -> Path | None:
    """--ckpt, else the checkpoint metrics.json names (as given to evaluate.py, so relative to where it ran),
    else the file of that name beside the evaluation folder (eval_<split>/ sits beside best.pt by default)."""
    for candidate in ([Path(given)] if given else [Path(recorded), run.parent / Path(recorded).name]):
        if candidate.is_file():
            return candidate
    if given:
        raise FileNotFoundError(f"{given}: checkpoint not found (--ckpt)")
    return None


class EvalRun:
    def __init__(self, run: str | Path, data_root: str | Path, ckpt: str = "", explicit: dict | None = None):
        run = Path(run)
        metrics_path, rankings_path = run / "metrics.json", run / "rankings.jsonl"
        for path in (metrics_path, rankings_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found; --run takes the folder evaluate.py wrote "
                                        f"(eval_<split>/ beside the checkpoint, or its --output_dir)")
        self.metrics = read_json(metrics_path)
        if not isinstance(self.metrics, dict) or "per_category" not in self.metrics:
            raise ValueError(f"{metrics_path}: not a metrics.json as evaluate.py writes it; rerun evaluate.py")
        self.rows = read_rankings(rankings_path)
        dataset = self.metrics["dataset"]
        self.fmt = open_dataset(resolve({"dataset": dataset, "data_root": str(data_root)}))
        ids = {i for r in self.rows for i in [r["reference"], *r["targets"], *r["ranking"],
                                                   *r.get("subset_ranking", [])]}
        self.files = ServedFiles(None, {i: self.fmt.image_path(i) for i in ids})
        order = list(self.metrics["per_category"])
        self.categories = order + sorted({r["category"] for r in self.rows} - set(order))
        self.rows.sort(key=lambda r: (self.categories.index(r["category"]), -rank_of(r), r["query"]))
        self.by_query = {r["query"]: r for r in self.rows}
        self.trained, self.why_no_explanations = None, ""
        found = find_checkpoint(run, str(self.metrics.get("checkpoint", "")), ckpt)
        if found is None:
            self.why_no_explanations = (f"explanations need the checkpoint {self.metrics.get('checkpoint')!r}, "
                                        f"which is not there: pass serve.py eval --ckpt PATH")
            return
        self.trained = load_trained(found, {**(explicit or {}), "data_root": str(data_root)})
        if self.trained.cfg.dataset != dataset:
            raise ValueError(f"{found} was trained on {self.trained.cfg.dataset}, the evaluation in {run} is of "
                             f"{dataset}; pass the evaluated checkpoint with --ckpt")
        try:
            check_attention_parts(self.trained.model, self.trained.cfg.model)
        except ValueError as e:
            self.why_no_explanations = str(e)
        self.source = open_pixel_source(self.trained.cfg, log=lambda _: None)
        self.lock = threading.Lock()

    def explain(self, query: int, target: str):
        if self.why_no_explanations:
            fail(400, self.why_no_explanations)
        row = self.by_query.get(query)
        if row is None:
            fail(404, f"query: no query {query} in the rankings")
        t = self.trained
        with self.lock:
            return explanation_png(t.model, t.vocab, self.source, self.files.get(row["reference"]),
                                   self.files.get(target), row["text"], t.cfg.crop_size, t.device)


def rank_of(row: dict) -> int:
    return row["target_rank"] or NOT_IN_TOP


def create_eval_app(run: EvalRun) -> FastAPI:
    app = FastAPI(title="manme evaluation browser", docs_url=None, redoc_url=None, openapi_url=None)
    json_errors(app)
    add_static(app)
    thumbnails = Thumbnails(upright=False)  # dataset images are read as evaluation reads them
    first = next(iter(run.metrics["per_category"].values()), {})
    columns = [k for k in first if k.startswith(("R@", "Rsubset@"))]

    @app.get("/", include_in_schema=False)
    def home():
        return page("eval.html")

    @app.get("/api/metrics")
    def metrics():
        return {**run.metrics, "columns": columns, "categories": run.categories, "queries": len(run.rows),
                "explanations": run.why_no_explanations or "yes"}

    @app.get("/api/queries")
    def queries(category: str = "", min_rank: int = Query(1, ge=1), max_rank: int = Query(NOT_IN_TOP, ge=1),
                offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=MAX_PAGE)):
        if category and category not in run.categories:
            fail(404, f"category: {category!r} is not one of {', '.join(run.categories)}")
        if min_rank > max_rank:
            fail(400, "min_rank: greater than max_rank")
        found = [r for r in run.rows if (not category or r["category"] == category)
                 and min_rank <= rank_of(r) <= max_rank]
        return {"total": len(found), "offset": offset, "rows": found[offset:offset + limit]}

    add_image_routes(app, run.files, thumbnails)

    @app.get("/api/explain")
    def explain(query: int, target: str):
        return run.explain(query, target)

    return app
