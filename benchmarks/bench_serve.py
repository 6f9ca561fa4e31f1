"""Query latency of the search page's API (serve.py search) for indexes of 10k and 100k images.

Setting: an untrained model of the given backbone/crop (default: the FashionIQ preset, resnet50 at 224 px, d =
512, three grains); an index of N synthetic embeddings (random unit vectors per grain: the ranking's cost does
not depend on what the vectors are) whose first 20 entries are real JPEG files on disk, used as the
references, and whose other entries are hard links to them (a search leaves out rows whose file is gone, so
every indexed file must exist). A query is `GET /api/search?ref=<indexed file>&text=...&k=10` through
FastAPI's TestClient (in process: the app's validation, the model and the JSON, without a network), as the
page sends it; the reference is an indexed, unchanged file, so its row of the index is its embedding (as
`retrieve.py query` does since 2026-12-05: no backbone pass), composed with the text, and all N images are
ranked.

Printed per index size: p50 / p95 / max over the timed queries (after warm-up), the median time of embedding
a reference that is not in the index (the CNN on one image: an uploaded one, say) and of composing + ranking
(tools.search_index.search for the indexed reference: the query without the web layer), timed apart on the
first --breakdown queries, and p95 against the goal (150 ms at 100k).

Run: .venv/bin/python benchmarks/bench_serve.py [--sizes 10000 100000] [--queries 40] [--threads 0]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastapi.testclient import TestClient  # noqa: E402

from config import resolve  # noqa: E402
from data.text import SPECIALS, Vocabulary  # noqa: E402
from engine.checkpoint import save_checkpoint, vocab_state  # noqa: E402
from engine.inference import embed_images  # noqa: E402
from models import build_model  # noqa: E402
from tools.search_index import SearchIndex, checkpoint_identity, save_index, search  # noqa: E402
from tools.web.search import SearchService, create_search_app  # noqa: E402

GOAL_MS = 150.0
TEXTS = ["is red with shorter sleeves", "is blue <and> has a collar", "has stripes and is longer", "is plain black"]
WORDS = sorted({w for t in TEXTS for w in t.replace("<and>", "").split()})


def write_setup(folder: Path, n: int, backbone: str, crop: int, refs: int = 20) -> Path:
    """A checkpoint of an untrained model and an index of n images (the first `refs` real files); the index path."""
    cfg = resolve({"dataset": "fashioniq", "backbone": backbone, "backbone_weights": "none", "crop_size": crop,
                   "device": "cpu"})
    vocab = Vocabulary([*SPECIALS, *WORDS], len(WORDS), "fashioniq")
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab))
    ckpt = folder / "best.pt"
    if not ckpt.exists():
        save_checkpoint(ckpt, {"model": model.state_dict(), "config": cfg.to_dict(), "vocab": vocab_state(vocab)})
    images = folder / "images"
    images.mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    for i in range(refs):  # photo-sized references (decoding and resizing them is part of the query)
        pixels = torch.randint(0, 256, (480, 360, 3), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(pixels).save(images / f"{i:07d}.jpg", quality=90)
    paths = [f"{i:07d}.jpg" for i in range(n)]
    for i in range(refs, n):  # every indexed file exists (search leaves out rows whose file is gone): links
        target = images / paths[i]
        if not target.exists():
            os.link(images / paths[i % refs], target)
    embeddings = {g: F.normalize(torch.randn(n, cfg.embed_dim, generator=generator), dim=-1) for g in model.grains}
    index = SearchIndex(str(images.resolve()), paths, embeddings, checkpoint_identity(ckpt, cfg), crop)
    path = folder / f"{n}.index"
    save_index(index, path)
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def phases(service: SearchService, ref: Path, text: str) -> tuple[float, float]:
    """Seconds of the reference's embedding and of composing + ranking, measured apart (the query does both)."""
    t, index = service.trained, service.index
    start = time.perf_counter()
    embed_images(t.model, [ref], index.crop_size, t.device, progress=False, upright=True)
    middle = time.perf_counter()
    search(t.model, t.vocab, index, ref, text, 10, t.device, t.amp_dtype)  # an indexed ref: compose + rank
    return middle - start, time.perf_counter() - middle


def bench(folder: Path, n: int, args) -> dict:
    index_path = write_setup(folder, n, args.backbone, args.crop_size)
    service = SearchService(index_path, "", {"device": "cpu"})
    client = TestClient(create_search_app(service))
    refs = [f"{i:07d}.jpg" for i in range(20)]
    asks = [(refs[i % len(refs)], TEXTS[i % len(TEXTS)]) for i in range(args.warmup + args.queries)]
    latencies, embed, rank = [], [], []
    worker = ThreadPoolExecutor(1)
    for n_query, (ref, text) in enumerate(asks):
        start = time.perf_counter()
        response = client.get("/api/search", params={"ref": ref, "text": text, "k": 10})
        elapsed = time.perf_counter() - start
        assert response.status_code == 200 and len(response.json()["results"]) == 10, response.text
        if n_query >= args.warmup:
            latencies.append(elapsed * 1000)
            if len(embed) < args.breakdown:  # in a worker thread, as the server runs a query
                e, r = worker.submit(phases, service, service.root / ref, text).result()
                embed.append(e * 1000)
                rank.append(r * 1000)
    return {"n": n, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95), "max": max(latencies),
            "embed": statistics.median(embed), "rank": statistics.median(rank)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="index sizes")
    parser.add_argument("--queries", type=int, default=40, help="timed queries per size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries first")
    parser.add_argument("--breakdown", type=int, default=10, help="queries also timed part by part")
    parser.add_argument("--backbone", default="resnet50", choices=("resnet50", "resnet18"))
    parser.add_argument("--crop_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.backbone} at {args.crop_size} px; load average "
          f"{os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            r = bench(Path(tmp), n, args)
            print(f"N={n:>7}: query p50 {r['p50']:6.1f} ms  p95 {r['p95']:6.1f} ms  max {r['max']:6.1f} ms  "
                  f"(median parts: embedding a reference outside the index {r['embed']:.1f} ms, "
                  f"compose+rank {r['rank']:.1f} ms); "
                  f"p95 / goal {GOAL_MS:.0f} ms = {r['p95'] / GOAL_MS:.2f}")
    print(f"RESULT serve_p95 {r['p95']:.0f} ms at N={r['n']} ({r['p95'] / GOAL_MS:.2f}x the {GOAL_MS:.0f} ms goal)")


if __name__ == "__main__":
    main()
