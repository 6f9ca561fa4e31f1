"""What both pages share: JSON errors, the files a page may serve, thumbnails, upload checks, the attention
explanation as a PNG, the HTML pages and the server.

Every error a client can cause is a 4xx with {"error": "<one line>"}; anything else is a 500 with the same shape
(the traceback goes to the server's log, never to the client).
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import threading
import traceback
from collections import OrderedDict
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image, ImageOps

from tools.figures import attention_row, draw_attention
from utils.errors import UserError

PAGES = Path(__file__).parent / "pages"
MAX_K = 100                  # results a query may ask for
MAX_TEXT = 500               # characters of a modification text
MAX_PAGE = 200               # thumbnails or queries in one page of a listing
THUMB_SIDE = 160
UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def fail(status: int, message: str):
    raise HTTPException(status, message)


def json_errors(app: FastAPI) -> None:
    """Every error as {"error": message}: HTTP errors as raised, bad parameters 422, a user's bad input
    (UserError, ValueError from the model's path) 400, anything else 500 without a traceback."""
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body"))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid value')}".strip(": ")}, status_code=422)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        traceback.print_exception(e, file=sys.stderr)
        return JSONResponse({"error": f"internal error ({type(e).__name__}); see the server's log"}, status_code=500)


def page(name: str) -> HTMLResponse:
    return HTMLResponse((PAGES / name).read_text(encoding="utf-8"))


def add_static(app: FastAPI) -> None:
    @app.get("/static/style.css", include_in_schema=False)
    def style():
        return Response((PAGES / "style.css").read_bytes(), media_type="text/css")

    @app.get("/static/common.js", include_in_schema=False)
    def script():
        return Response((PAGES / "common.js").read_bytes(), media_type="text/javascript")


def add_image_routes(app: FastAPI, files: ServedFiles, thumbnails: Thumbnails) -> None:
    """/thumb/NAME and /image/NAME: a served file's thumbnail and the file itself; any other name is a 404."""
    @app.get("/thumb/{name:path}")
    def thumb(name: str):
        return thumbnails(files.get(name))

    @app.get("/image/{name:path}")
    def image(name: str):
        return FileResponse(files.get(name))


class ServedFiles:
    """The only files a page serves: name -> file, looked up by exact name, so `../`, `%2e%2e`, an absolute path
    or a name not listed is a 404. With a `root`, a file that is outside it once links are resolved is left out
    too (a link in an indexed folder pointing elsewhere); a dataset's files, named by its format, may be links
    to where the images are stored (root None)."""

    def __init__(self, root: str | Path | None, names: dict[str, Path]):
        root = Path(root).resolve() if root is not None else None
        self.files = {}
        for name, path in names.items():
            real = Path(os.path.realpath(path))
            if root is None or real.is_relative_to(root):
                self.files[name] = real

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> Path:
        path = self.files.get(name)
        if path is None or not path.is_file():
            fail(404, f"{name}: not a served image")
        return path


class Thumbnails:
    """JPEG thumbnails made on first request and kept in memory (the most recent `keep`)."""

    def __init__(self, side: int = THUMB_SIDE, keep: int = 20000, upright: bool = True):
        self.side, self.keep, self.upright = side, keep, upright
        self.cache: OrderedDict[Path, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> Response:
        with self.lock:
            data = self.cache.get(path)
            if data is not None:
                self.cache.move_to_end(path)
        if data is None:
            data = self.make(path)
            with self.lock:
                self.cache[path] = data
                while len(self.cache) > self.keep:
                    self.cache.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    def make(self, path: Path) -> bytes:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (self.side, self.side))
                image = ImageOps.exif_transpose(image) if self.upright else image
                image = image.convert("RGB")
                image.thumbnail((self.side, self.side))
        except (OSError, ValueError, Image.DecompressionBombError):
            fail(404, f"{path.name}: unreadable image")
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()


def check_upload(data: bytes, limit: int) -> str:
    """The file suffix of an uploaded JPEG, PNG or WebP image that decodes completely; 413 over `limit` bytes,
    400 for anything else, with Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS) applied."""
    if len(data) > limit:
        fail(413, f"the upload is larger than {limit / 1e6:g} MB (serve.py --max_upload_mb)")
    unreadable = "the upload is not a complete JPEG, PNG or WebP image"
    if not data:
        fail(400, f"{unreadable} (it is empty)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in UPLOAD_FORMATS:
                fail(400, f"{unreadable} (it is {image.format})")
            width, height = image.size
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height} pixels")
            image.load()
            return UPLOAD_FORMATS[image.format]
    except Image.DecompressionBombError as e:
        fail(400, f"{unreadable} of a safe size ({e}; at most {Image.MAX_IMAGE_PIXELS} pixels)")
    except Image.UnidentifiedImageError:
        fail(400, f"{unreadable} (not an image file)")
    except (OSError, SyntaxError, ValueError) as e:
        fail(400, f"{unreadable} ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})")


class Uploads:
    """Uploaded images kept as files (the model reads files) under a private temporary folder, named by their
    sha256 so that an explanation can name the upload its query used; the most recent `keep` are kept."""

    def __init__(self, keep: int = 64):
        self.folder = tempfile.TemporaryDirectory(prefix="manme-uploads-")
        self.keep = keep
        self.files: OrderedDict[str, Path] = OrderedDict()
        self.lock = threading.Lock()

    def add(self, data: bytes, suffix: str) -> tuple[str, Path]:
        key = hashlib.sha256(data).hexdigest()
        path = Path(self.folder.name) / f"{key}{suffix}"
        with self.lock:
            if key not in self.files:
                path.write_bytes(data)
                self.files[key] = path
            self.files.move_to_end(key)
            while len(self.files) > self.keep:
                self.files.popitem(last=False)[1].unlink(missing_ok=True)
        return key, path

    def get(self, key: str) -> Path:
        with self.lock:
            path = self.files.get(key)
        if path is None:
            fail(404, "unknown upload (uploads are kept for the last queries only); upload the image again")
        return path


def check_query(text: str, k: int) -> str:
    text = text.strip()
    if not text:
        fail(400, "text: give the modification text")
    if len(text) > MAX_TEXT:
        fail(400, f"text: at most {MAX_TEXT} characters")
    if not 1 <= k <= MAX_K:
        fail(400, f"k: between 1 and {MAX_K}")
    return text


def explanation_png(model, vocab, source, reference: Path, target: Path, text: str, crop_size: int, device,
                    title: str = "", width: int = 900) -> Response:
    """visualize.py attention's drawing of one query on one result: the modified- and preserved-part
    Grad-CAM at each grain, with their scores and overlaps."""
    row = attention_row(model, vocab, source, reference, target, text, crop_size, device)
    image = draw_attention([row], list(model.grains), width, title)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return Response(out.getvalue(), media_type="image/png")


def limit_body(app: FastAPI, limit: int) -> None:
    """Refuse a request whose declared body is over `limit` bytes before reading it (413)."""
    @app.middleware("http")
    async def body_size(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return JSONResponse({"error": f"the request is larger than {limit / 1e6:g} MB "
                                          f"(serve.py --max_upload_mb)"}, status_code=413)
        return await call_next(request)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run `app` with uvicorn until Ctrl-C; say what binding another address than loopback means."""
    if host not in LOOPBACK:
        print(f"warning: --host {host}: anyone who can reach this machine on port {port} can query the model and "
              f"see every served image; there is no login. Serve on 127.0.0.1 (the default) unless that is meant.",
              file=sys.stderr)
    print(f"serving on http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
