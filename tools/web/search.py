"""The search page: a search index and its checkpoint loaded once, queried from the browser or with curl.

  GET  /                                   the page (a share URL: /?ref=<indexed path>&text=<text>&k=<k>)
  GET  /api/images?filter=&offset=&limit=  the indexed files, paged, filtered by a substring of the name
  GET  /api/search?ref=&text=&k=           {"results": [{"path", "rank", "score"}], "unknown_words": [...]}
  POST /api/search  (multipart: image, text, k)   the same for an uploaded reference
  GET  /api/explain?ref=|upload=&text=&target=    PNG: the attention maps of the query on a result
  GET  /thumb/<path>, /image/<path>        an indexed file, as a thumbnail or as it is

Results are computed by tools.search_index.search, the function `retrieve.py query` calls, so a page shows the
ranking the command prints. One model serves every request: a lock lets one query through at a time (the CPU's
cores go to that query's matrix products; queries take milliseconds, so waiting is short).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, UploadFile

from data.cache import PixelSource
from data.images import resize_size
from engine.inference import load_trained
from tools.figures import check_attention_parts
from tools.search_index import check_checkpoint, load_index, search
from tools.web.common import (
    MAX_K,
    MAX_PAGE,
    ServedFiles,
    Thumbnails,
    Uploads,
    add_image_routes,
    add_static,
    check_query,
    check_upload,
    explanation_png,
    fail,
    json_errors,
    limit_body,
    page,
)


class SearchService:
    """An index, the checkpoint that built it (checked by sha256, as `retrieve.py query` checks it), and the
    files the page may serve."""

    def __init__(self, index_path: str | Path, ckpt: str = "", explicit: dict | None = None):
        self.index = index = load_index(index_path)
        ckpt = ckpt or index.checkpoint["path"]
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"{ckpt}: the checkpoint that built {index_path} is not there; "
                                    f"pass its new location with --ckpt")
        check_checkpoint(index, ckpt, index_path)
        self.trained = load_trained(ckpt, explicit or {})
        # the grains stacked and t ⊙ t of them, made once for every query (as much memory again as the embeddings,
        # for the attention variants): squaring the gallery per query took half of a query's time at 100k images
        index.keep_stacked(self.trained.model, self.trained.device)
        self.root = Path(index.root)
        self.files = ServedFiles(self.root, {p: self.root / p for p in index.paths})
        self.names = [p for p in index.paths if p in self.files]  # the indexed files the page shows and serves
        self.source = PixelSource(resize_size(index.crop_size), upright=True)  # a user's photos: EXIF applied
        self.lock = threading.Lock()
        try:
            check_attention_parts(self.trained.model, self.trained.cfg.model)
            self.explains = ""
        except ValueError as e:
            self.explains = str(e)

    def query(self, image: Path, text: str, k: int) -> dict:
        t = self.trained
        with self.lock:
            try:
                result = search(t.model, t.vocab, self.index, image, text, k, t.device, t.amp_dtype)
            except ValueError as e:  # the reference could not be read
                fail(400, str(e).removeprefix("--image: "))
        return {"results": [{"path": p.relative_to(self.root).as_posix(), "rank": n + 1, "score": round(s, 6)}
                            for n, (p, s) in enumerate(zip(result.paths, result.scores))],
                "unknown_words": list(dict.fromkeys(result.unknown_words))}

    def explain(self, image: Path, target: Path, text: str):
        if self.explains:
            fail(400, self.explains)
        t = self.trained
        with self.lock:
            return explanation_png(t.model, t.vocab, self.source, image, target, text, self.index.crop_size,
                                   t.device)


def create_search_app(service: SearchService, max_upload_bytes: int = 10_000_000) -> FastAPI:
    app = FastAPI(title="manme search", docs_url=None, redoc_url=None, openapi_url=None)
    json_errors(app)
    limit_body(app, max_upload_bytes + 100_000)  # room for the form's other fields
    add_static(app)
    thumbnails, uploads = Thumbnails(), Uploads()
    names = service.names

    @app.get("/", include_in_schema=False)
    def home():
        return page("search.html")

    @app.get("/api/info")
    def info():
        cfg = service.trained.cfg
        return {"images": len(names), "root": service.root.name, "model": cfg.model, "dataset": cfg.dataset,
                "max_k": MAX_K, "explanations": service.explains or "yes"}

    @app.get("/api/images")
    def images(filter: str = "", offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=MAX_PAGE)):
        wanted = filter.strip().lower()
        found = [p for p in names if wanted in p.lower()] if wanted else names
        return {"total": len(found), "offset": offset, "paths": found[offset:offset + limit]}

    add_image_routes(app, service.files, thumbnails)

    def reference(ref: str) -> Path:
        if ref not in service.files:
            fail(404, f"ref: {ref!r} is not an indexed image")
        return service.files.get(ref)

    @app.get("/api/search")
    def search_indexed(ref: str, text: str, k: int = 10):
        text = check_query(text, k)
        return {**service.query(reference(ref), text, k), "reference": ref}

    @app.post("/api/search")
    def search_upload(image: Annotated[UploadFile, File()], text: Annotated[str, Form()],
                      k: Annotated[int, Form()] = 10):
        text = check_query(text, k)
        data = image.file.read(max_upload_bytes + 1)
        key, path = uploads.add(data, check_upload(data, max_upload_bytes))
        return {**service.query(path, text, k), "upload": key}

    @app.get("/api/explain")
    def explain(text: str, target: str, ref: str = "", upload: str = ""):
        text = check_query(text, 1)
        if bool(ref) == bool(upload):
            fail(400, "give ref (an indexed image) or upload (the id a POST /api/search answered), not both")
        return service.explain(reference(ref) if ref else uploads.get(upload), service.files.get(target), text)

    return app
