"""serve.py: the search page's API against `retrieve.py query`, what the server must withstand (paths out of the
index, bad uploads, bad parameters, concurrent clients on a live server), the evaluation browser over
metrics.json / rankings.jsonl (FashionIQ and CIRR), and the page itself in headless Chromium.

One tiny untrained model and one index are built per module (seconds); nothing here trains."""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import shutil
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import read_png

NO_WEB = "the web extras are not installed (pip install -r requirements-web.txt)"
fastapi = pytest.importorskip("fastapi", reason=NO_WEB)
uvicorn = pytest.importorskip("uvicorn", reason=NO_WEB)
from fastapi.testclient import TestClient  # noqa: E402

import retrieve  # noqa: E402
import serve  # noqa: E402
from config import resolve  # noqa: E402
from data.formats import build_vocabulary, open_dataset  # noqa: E402
from data.synthetic import generate  # noqa: E402
from engine.checkpoint import save_checkpoint, vocab_state  # noqa: E402
from engine.evaluation import evaluate_trained  # noqa: E402
from engine.inference import build_queries, load_trained, rank_gallery  # noqa: E402
from models import build_model  # noqa: E402
from tools.search_index import build_index, save_index  # noqa: E402
from tools.web.evaluation import NOT_IN_TOP, EvalRun, create_eval_app  # noqa: E402
from tools.web.search import SearchService, create_search_app  # noqa: E402

CPU = torch.device("cpu")
UPLOAD_LIMIT = 300_000
SECRET = b"secret outside the indexed folder"


def tiny_checkpoint(data_root: Path, dataset: str, path: Path) -> Path:
    """An untrained tiny model of `dataset`, saved as train.py saves a checkpoint."""
    cfg = resolve({"dataset": dataset, "data_root": str(data_root), "backbone": "resnet18", "backbone_weights": "none",
                   "crop_size": 32, "embed_dim": 64, "word_dim": 32, "num_workers": 0, "device": "cpu",
                   "eval_batch_size": 64})
    vocab = build_vocabulary(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab))
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict(), "vocab": vocab_state(vocab)})
    return path


@pytest.fixture(scope="module")
def web_ckpt(tiny_root, tmp_path_factory) -> Path:
    return tiny_checkpoint(tiny_root, "fashioniq", tmp_path_factory.mktemp("web_ckpt") / "best.pt")


@pytest.fixture(scope="module")
def folder(tiny_root, tmp_path_factory):
    """The FashionIQ dress val gallery copied into a folder (half in a subfolder), with a link to a file outside
    it and a non-image file beside the images."""
    fmt = open_dataset(resolve({"dataset": "fashioniq", "data_root": str(tiny_root)}))
    split = next(s for s in fmt.eval_splits("val") if s.category == "dress")
    base = tmp_path_factory.mktemp("web_gallery")
    root = base / "images"
    (root / "more").mkdir(parents=True)
    for n, image_id in enumerate(split.gallery):
        source = fmt.image_path(image_id)
        shutil.copy(source, root / ("more" if n % 2 else "") / source.name)
    outside = base / "outside.jpg"
    shutil.copy(fmt.image_path(split.gallery[0]), outside)
    (base / "secret.txt").write_bytes(SECRET)
    (root / "link_out.jpg").symlink_to(outside)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def index_path(web_ckpt, folder, tmp_path_factory) -> Path:
    trained = load_trained(web_ckpt, {"device": "cpu"})
    index = build_index(trained.model, folder, web_ckpt, trained.cfg.crop_size, CPU, progress=False, cfg=trained.cfg)
    path = tmp_path_factory.mktemp("web_index") / "gallery.index"
    save_index(index, path)
    return path


@pytest.fixture(scope="module")
def service(index_path) -> SearchService:
    return SearchService(index_path, "", {"device": "cpu"})


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    return TestClient(create_search_app(service, UPLOAD_LIMIT))


@contextlib.contextmanager
def live(app):
    """`app` served by uvicorn on 127.0.0.1 in a thread; yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def live_port(service):
    with live(create_search_app(service, UPLOAD_LIMIT)) as port:
        yield port


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side normalisation of `..`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


def retrieve_query(index_path: Path, image: Path, text: str, k: int, capsys) -> tuple[list[str], list[float]]:
    """What `retrieve.py query` prints: (files, scores), best first."""
    capsys.readouterr()
    retrieve.main(["query", "--index", str(index_path), "--image", str(image), "--text", text, "--k", str(k),
                   "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    return [line.split(None, 1)[1] for line in lines], [float(line.split()[0]) for line in lines]


def jpeg_bytes(path: Path, **save) -> bytes:
    out = io.BytesIO()
    Image.open(path).save(out, format="JPEG", **save)
    return out.getvalue()


# ----------------------------------------------------------------------------- the search API

@pytest.mark.parametrize("ref", ["more/%s", "%s"])
def test_get_search_equals_retrieve_query(client, service, folder, index_path, capsys, ref):
    names = [p for p in service.names if p.startswith("more/") == ref.startswith("more/")]
    name = names[len(names) // 2]
    text = "is red instead of white <and> has shorter sleeves"
    body = client.get("/api/search", params={"ref": name, "text": text, "k": 8}).json()
    files, scores = retrieve_query(index_path, folder / name, text, 8, capsys)
    assert [str(folder / r["path"]) for r in body["results"]] == files
    assert [r["rank"] for r in body["results"]] == list(range(1, 9))
    assert [round(r["score"], 4) for r in body["results"]] == pytest.approx(scores, abs=1e-4)
    assert name not in [r["path"] for r in body["results"]]  # the reference is left out, as the command does
    assert body["unknown_words"] == []


def test_post_upload_equals_retrieve_query_with_exif(client, folder, index_path, tmp_path, capsys):
    """An upload is read as retrieve.py reads --image: EXIF orientation applied (a sideways phone photo)."""
    source = next(folder.glob("*.jpg"))
    image = Image.open(source).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 clockwise to view": undoes the rotation above
    photo = tmp_path / "photo.jpg"
    image.save(photo, format="JPEG", exif=exif)
    text = "is blue <and> has florbish sleeves"
    body = client.post("/api/search", files={"image": ("photo.jpg", photo.read_bytes(), "image/jpeg")},
                       data={"text": text, "k": "6"}).json()
    files, _ = retrieve_query(index_path, photo, text, 6, capsys)
    assert [str(folder / r["path"]) for r in body["results"]] == files
    assert body["unknown_words"] == ["florbish"]
    assert len(body["upload"]) == 64
    # upright, the photo is the source again: its own file ranks first (it is not the indexed file, so not left out)
    assert body["results"][0]["path"] == source.name


def test_search_reuses_the_kept_stack_and_scores_as_evaluation_does(client, service):
    """The service stacks the index's grains and keeps t ⊙ t of them from its start (the index's embeddings are
    views of the stack: no second copy); every query reads those and ranks the whole index as one block. Its
    results equal evaluation's path (rank_gallery grain by grain in small chunks, each squared per block, nothing
    kept; `retrieve.py query` ranks so, in blocks of 8192) within float32 rounding, in the same order."""
    model, index = service.trained.model, service.index
    stacked, squares = index.kept_stack(CPU)
    assert torch.equal(squares, stacked * stacked)
    for k, g in enumerate(model.grains):
        assert index.embeddings[g].data_ptr() == stacked[k].data_ptr()
    name = service.names[3]
    text = "is red instead of white <and> has shorter sleeves"
    body = client.get("/api/search", params={"ref": name, "text": text, "k": 10}).json()
    assert index.kept_stack(CPU)[1] is squares  # not made again
    own = index.rows[name]
    query = build_queries(model, service.trained.vocab, {g: x[own:own + 1] for g, x in index.embeddings.items()},
                          [text], CPU)
    plain = rank_gallery(model, query, dict(index.embeddings), targets=[[]], references=[own], topk=10,
                         query_chunk=1, gallery_chunk=7)
    assert [r["path"] for r in body["results"]] == [index.paths[i] for i in plain.topk_index[0].tolist()]
    assert [r["score"] for r in body["results"]] == pytest.approx(plain.topk_score[0].tolist(), rel=1e-5, abs=1e-6)


def test_gallery_listing_thumbnails_and_images(client, service, folder):
    listed = client.get("/api/images", params={"limit": 200}).json()
    assert listed["total"] == len(listed["paths"]) > 10
    assert "link_out.jpg" not in listed["paths"] and "notes.txt" not in listed["paths"]
    page = client.get("/api/images", params={"filter": "MORE/", "offset": 2, "limit": 3}).json()
    assert page["total"] == sum(p.startswith("more/") for p in listed["paths"]) and len(page["paths"]) == 3
    name = page["paths"][0]
    thumb = client.get(f"/thumb/{name}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 160
    assert client.get(f"/image/{name}").content == (folder / name).read_bytes()
    assert "manme search" in client.get("/").text
    assert client.get("/api/info").json()["images"] == len(service.names) == len(service.index) - 1


def test_explanation_png_for_indexed_and_uploaded_reference(client, service):
    ref, target = service.names[0], service.names[1]
    png = client.get("/api/explain", params={"ref": ref, "text": "is red", "target": target})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).width == 900
    data = (Path(service.index.root) / ref).read_bytes()
    upload = client.post("/api/search", files={"image": ("r.jpg", data, "image/jpeg")},
                         data={"text": "is red", "k": "3"}).json()["upload"]
    again = client.get("/api/explain", params={"upload": upload, "text": "is red", "target": target})
    assert again.status_code == 200 and again.content == png.content
    assert client.get("/api/explain", params={"upload": "0" * 64, "text": "x", "target": target}).status_code == 404


# ----------------------------------------------------------------------------- what it must withstand

@pytest.mark.parametrize("path", [
    "/image/../../secret.txt", "/thumb/../outside.jpg", "/image/%2e%2e/%2e%2e/secret.txt",
    "/image/%2E%2E%2Fsecret.txt", "/image/more/..%2f..%2fsecret.txt", "ABSOLUTE", "/image/link_out.jpg",
    "/thumb/link_out.jpg", "/image/notes.txt", "/image/more", "/image/"],
    ids=["dotdot", "dotdot-thumb", "encoded", "encoded-slash", "encoded-inside", "absolute", "symlink-out",
         "symlink-out-thumb", "not-indexed", "folder", "empty"])
def test_only_indexed_images_are_served(live_port, folder, path):
    if path == "ABSOLUTE":
        path = f"/image/{folder.parent / 'secret.txt'}"
    status, body = raw_get(live_port, path)
    assert status == 404, (path, status)
    assert SECRET not in body and b"Traceback" not in body
    assert raw_get(live_port, f"/image/{next(folder.glob('*.jpg')).name}")[0] == 200  # a listed file is served


@pytest.mark.parametrize("ref", ["../outside.jpg", "link_out.jpg", "/etc/hostname", "missing.jpg", "notes.txt"])
def test_reference_outside_the_index_is_404(client, ref):
    response = client.get("/api/search", params={"ref": ref, "text": "is red", "k": 5})
    assert response.status_code == 404 and "not an indexed image" in response.json()["error"]


@pytest.mark.parametrize("params", [
    {"k": 0}, {"k": -3}, {"k": 101}, {"k": 10 ** 9}, {"k": "ten"}, {"text": ""}, {"text": "   "},
    {"text": "x" * 501}, {"text": None}, {"ref": None}])
def test_bad_parameters_are_4xx_with_a_message(client, service, params):
    query = {"ref": service.names[0], "text": "is red", "k": 5, **params}
    response = client.get("/api/search", params={k: v for k, v in query.items() if v is not None})
    assert 400 <= response.status_code < 500
    assert response.json()["error"] and "Traceback" not in response.text


def test_post_bad_parameters_are_4xx(client, folder):
    image = ("x.jpg", jpeg_bytes(next(folder.glob("*.jpg"))), "image/jpeg")
    for files, data in (({}, {"text": "is red", "k": "3"}), ({"image": image}, {"text": "is red", "k": "0"}),
                        ({"image": image}, {"text": " ", "k": "3"}), ({"image": image}, {"k": "3"}),
                        ({"image": image}, {"text": "is red", "k": "many"})):
        response = client.post("/api/search", files=files, data=data)
        assert 400 <= response.status_code < 500 and response.json()["error"], (files.keys(), data)


def test_explain_bad_parameters(client, service):
    ref, target = service.names[0], service.names[1]
    both = client.get("/api/explain", params={"ref": ref, "upload": "0" * 64, "text": "x", "target": target})
    assert both.status_code == 400
    outside = client.get("/api/explain", params={"ref": ref, "text": "x", "target": "../outside.jpg"})
    assert outside.status_code == 404


def upload(client, data: bytes, name: str = "x.jpg"):
    return client.post("/api/search", files={"image": (name, data, "application/octet-stream")},
                       data={"text": "is red", "k": "3"})


def test_upload_not_an_image_or_truncated_is_400(client, folder):
    good = jpeg_bytes(next(folder.glob("*.jpg")), quality=95)
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    for data in (b"", b"hello, not an image", good[:len(good) // 2], gif.getvalue(), b"\x89PNG\r\n\x1a\n" + b"0" * 50):
        response = upload(client, data)
        assert response.status_code == 400, data[:20]
        assert response.json()["error"].startswith("the upload is not a complete JPEG, PNG or WebP image")
    webp = io.BytesIO()
    Image.open(next(folder.glob("*.jpg"))).save(webp, format="WEBP")
    assert upload(client, webp.getvalue(), "x.webp").status_code == 200


def test_upload_size_limit_and_decompression_bomb(client, folder, monkeypatch):
    big = io.BytesIO()
    Image.effect_noise((400, 400), 64).convert("RGB").save(big, format="PNG")  # noise: > 300 kB as PNG
    assert len(big.getvalue()) > UPLOAD_LIMIT
    response = upload(client, big.getvalue(), "big.png")
    assert response.status_code == 413 and "--max_upload_mb" in response.json()["error"]
    declared = client.post("/api/search", content=b"x" * 10, headers={"content-length": str(10 ** 9)})
    assert declared.status_code == 413
    small = jpeg_bytes(next(folder.glob("*.jpg")))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the guard: a file that decodes to more pixels is refused
    bomb = upload(client, small)
    assert bomb.status_code == 400 and "safe size" in bomb.json()["error"]


def test_eight_clients_25_queries_each_on_a_live_server(live_port, service):
    """8 clients x 25 queries in parallel against uvicorn on 127.0.0.1: every answer is the one a lone
    query gets."""
    texts = ["is red", "is blue <and> has long sleeves", "has stripes", "is shorter", "is green and plain"]
    distinct = [(service.names[3 * n], texts[n % len(texts)], 1 + n) for n in range(10)]
    queries = [distinct[(7 * n) % 10] for n in range(200)]  # each client asks a mix of them
    expected = {q: service.query(Path(service.index.root) / q[0], q[1], q[2])["results"] for q in set(queries)}

    def client_run(c: int) -> list[bool]:
        connection = http.client.HTTPConnection("127.0.0.1", live_port, timeout=60)
        ok = []
        for q in queries[c * 25:(c + 1) * 25]:
            connection.request("GET", "/api/search?" + urllib.parse.urlencode({"ref": q[0], "text": q[1], "k": q[2]}))
            response = connection.getresponse()
            body = json.loads(response.read())
            ok.append(response.status == 200 and body["results"] == expected[q])
        connection.close()
        return ok

    with ThreadPoolExecutor(8) as pool:
        answers = [ok for result in pool.map(client_run, range(8)) for ok in result]
    assert len(answers) == 200 and all(answers)


def test_serve_binds_loopback_unless_host_says(index_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    serve.main(["search", "--index", str(index_path), "--device", "cpu", "--port", "8123"])
    assert started[-1]["host"] == "127.0.0.1" and started[-1]["port"] == 8123
    assert "warning" not in capsys.readouterr().err
    serve.main(["search", "--index", str(index_path), "--device", "cpu", "--host", "0.0.0.0"])
    assert started[-1]["host"] == "0.0.0.0" and "there is no login" in capsys.readouterr().err


def test_serve_command_errors(tmp_path, index_path):
    from utils.errors import UserError
    with pytest.raises(UserError, match="give a command"):
        serve.main([])
    with pytest.raises(FileNotFoundError, match="index file not found"):
        serve.main(["search", "--index", str(tmp_path / "missing.index")])
    with pytest.raises(FileNotFoundError, match="metrics.json: not found"):
        serve.main(["eval", "--run", str(tmp_path), "--data_root", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:  # argparse's range (tests/test_tool_flags.py): status 2
        serve.main(["search", "--index", str(index_path), "--max_upload_mb", "0"])
    assert stop.value.code == 2


# ----------------------------------------------------------------------------- the evaluation browser

def evaluation(data_root: Path, dataset: str, folder: Path, **extra) -> Path:
    ckpt = tiny_checkpoint(data_root, dataset, folder / "best.pt")
    trained = load_trained(ckpt, {"device": "cpu", "num_workers": 0, "data_root": str(data_root), **extra})
    evaluate_trained(trained, ckpt, folder / "eval_val")
    return folder / "eval_val"


@pytest.fixture(scope="module")
def fashioniq_eval(tiny_root, tmp_path_factory):
    run = evaluation(tiny_root, "fashioniq", tmp_path_factory.mktemp("fiq_eval"))
    return run, TestClient(create_eval_app(EvalRun(run, tiny_root, "", {"device": "cpu"})))


@pytest.fixture(scope="module")
def cirr_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("cirr_web")
    generate(root, "cirr", size=32, seed=1, n_images=24, n_triplets=60)
    run = evaluation(root, "cirr", tmp_path_factory.mktemp("cirr_eval"))
    return run, TestClient(create_eval_app(EvalRun(run, root, "", {"device": "cpu"})))


def all_rows(client, **params) -> list[dict]:
    body = client.get("/api/queries", params={"limit": 200, **params}).json()
    rows = body["rows"]
    while len(rows) < body["total"]:
        rows += client.get("/api/queries", params={"limit": 200, "offset": len(rows), **params}).json()["rows"]
    return rows


def test_eval_browser_worst_first_and_recalls_agree(fashioniq_eval):
    run, client = fashioniq_eval
    metrics = json.loads((run / "metrics.json").read_text())
    shown = client.get("/api/metrics").json()
    assert shown["per_category"] == metrics["per_category"] and shown["overall"] == metrics["overall"]
    assert shown["columns"][:2] == ["R@1", "R@5"] and shown["categories"] == list(metrics["per_category"])
    total = 0
    for category, figures in metrics["per_category"].items():
        rows = all_rows(client, category=category)
        total += len(rows)
        assert len(rows) == figures["n_queries"] and {r["category"] for r in rows} == {category}
        ranks = [r["target_rank"] or NOT_IN_TOP for r in rows]
        assert ranks == sorted(ranks, reverse=True)  # worst first
        if figures["queries_with_ties"] == 0:
            for k in (1, 5, 10):
                assert 100 * sum(r <= k for r in ranks) / len(ranks) == pytest.approx(figures[f"R@{k}"])
    assert total == len(all_rows(client)) == shown["queries"]
    some = all_rows(client, min_rank=2, max_rank=5)
    assert some and all(2 <= r["target_rank"] <= 5 for r in some)
    assert client.get("/api/queries", params={"min_rank": 5, "max_rank": 2}).status_code == 400
    assert client.get("/api/queries", params={"category": "socks"}).status_code == 404
    assert client.get("/api/queries", params={"limit": 0}).status_code == 422


def test_eval_browser_images_and_explanation(fashioniq_eval, tiny_root):
    run, client = fashioniq_eval
    row = client.get("/api/queries", params={"limit": 1}).json()["rows"][0]
    fmt = open_dataset(resolve({"dataset": "fashioniq", "data_root": str(tiny_root)}))
    assert client.get(f"/image/{row['reference']}").content == fmt.image_path(row["reference"]).read_bytes()
    assert client.get(f"/thumb/{row['ranking'][0]}").headers["content-type"] == "image/jpeg"
    png = client.get("/api/explain", params={"query": row["query"], "target": row["targets"][0]})
    assert png.status_code == 200 and read_png_bytes(png.content).width == 900
    for bad in ("../" + row["reference"], "/etc/hostname", "%2e%2e/x"):
        assert client.get(f"/image/{bad}").status_code == 404
    assert client.get("/api/explain", params={"query": 10 ** 6, "target": row["targets"][0]}).status_code == 404
    assert "evaluation" in client.get("/").text


def read_png_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_eval_browser_cirr_subset_rankings(cirr_eval):
    run, client = cirr_eval
    metrics = json.loads((run / "metrics.json").read_text())["per_category"]
    (category,) = metrics
    rows = all_rows(client, category=category)
    assert rows and all("subset_ranking" in r and "pair_id" in r for r in rows)
    assert all(r["reference"] not in r["subset_ranking"] for r in rows)
    if metrics[category]["queries_with_ties"] == 0:
        subset_ranks = [r["subset_rank"] or NOT_IN_TOP for r in rows]
        assert 100 * sum(r <= 1 for r in subset_ranks) / len(rows) == pytest.approx(metrics[category]["Rsubset@1"])


def test_eval_browser_without_the_checkpoint(fashioniq_eval, tiny_root, tmp_path):
    run, _ = fashioniq_eval
    moved = tmp_path / "eval_val"
    shutil.copytree(run, moved)
    metrics = json.loads((moved / "metrics.json").read_text())
    metrics["checkpoint"] = str(tmp_path / "gone" / "best.pt")
    (moved / "metrics.json").write_text(json.dumps(metrics))
    client = TestClient(create_eval_app(EvalRun(moved, tiny_root)))
    assert "--ckpt" in client.get("/api/metrics").json()["explanations"]
    row = client.get("/api/queries", params={"limit": 1}).json()["rows"][0]
    response = client.get("/api/explain", params={"query": row["query"], "target": row["ranking"][0]})
    assert response.status_code == 400 and "--ckpt" in response.json()["error"]


# ----------------------------------------------------------------------------- in a real browser


def browser(profile: Path):
    """A headless Chromium driven by Selenium through the system chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                                                 "(pip install -r requirements-web.txt)")
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no Chromium or chromedriver on PATH (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_search_page_in_headless_chromium(live_port, service, tmp_path):
    driver = browser(tmp_path / "profile")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    ref, text, k = service.names[3], "is red <and> has long sleeves", 6
    expected = [r["path"] for r in service.query(Path(service.index.root) / ref, text, k)["results"]]
    try:
        url = f"http://127.0.0.1:{live_port}/?" + urllib.parse.urlencode({"ref": ref, "text": text, "k": k})
        driver.get(url)

        def shown(d):
            try:
                return [c.get_attribute("data-path") for c in d.find_elements(By.CSS_SELECTOR, "#results .result")]
            except StaleElementReferenceException:  # the grid was being redrawn
                return []

        WebDriverWait(driver, 30).until(lambda d: shown(d) == expected)
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .result .name")]
        assert names == expected and driver.find_element(By.ID, "ref-name").text == ref
        # click a thumbnail of the gallery: it becomes the reference and the query runs again
        other = service.names[8]
        thumb = f'#gallery .card[data-path="{other}"] img'
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, thumb))
        driver.find_element(By.CSS_SELECTOR, thumb).click()
        again = [r["path"] for r in service.query(Path(service.index.root) / other, text, k)["results"]]
        assert again != expected
        WebDriverWait(driver, 30).until(lambda d: shown(d) == again)
        shared = urllib.parse.parse_qs(urllib.parse.urlparse(driver.current_url).query)
        assert shared == {"ref": [other], "text": [text], "k": [str(k)]}  # the share URL follows the query
        driver.save_screenshot(str(tmp_path / "search.png"))
        assert read_png(tmp_path / "search.png").width > 600
    finally:
        driver.quit()


def test_eval_page_in_headless_chromium(fashioniq_eval, tiny_root, tmp_path):
    run, client = fashioniq_eval
    worst = client.get("/api/queries", params={"limit": 3}).json()["rows"]
    driver = browser(tmp_path / "profile")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        with live(create_eval_app(EvalRun(run, tiny_root, "", {"device": "cpu"}))) as port:
            driver.get(f"http://127.0.0.1:{port}/")
            WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".query")) == 20)
            shown = [int(e.get_attribute("data-query")) for e in driver.find_elements(By.CSS_SELECTOR, ".query")]
            assert shown[:3] == [r["query"] for r in worst]  # the first category's worst queries first
            rows = driver.find_elements(By.CSS_SELECTOR, "#recalls tr")
            assert rows[1].text.split()[0] == "dress" and len(rows) >= 4
            driver.find_element(By.CSS_SELECTOR, ".query .card.target img").click()
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                "const i = document.querySelector('.explanation img'); return i && i.complete && i.naturalWidth > 0"))
            driver.save_screenshot(str(tmp_path / "eval.png"))
    finally:
        driver.quit()
    assert read_png(tmp_path / "eval.png").width > 600
