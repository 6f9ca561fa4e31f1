"""Search your own images: embed a folder once into an index file, then query it.

An index file is `torch.save` of plain values only (tensors, strings, numbers, lists, dicts)
and is read with `torch.load(weights_only=True)`, which refuses anything that could run code:

    format "manme-search-index", version 1
    root        the indexed folder (absolute); `paths` are relative to it (POSIX form)
    paths       [N] image files, sorted
    embeddings  grain -> (N, d) float32, L2-normalised, row i is paths[i]
    checkpoint  {"path", "sha256", "model", "dataset"}: the checkpoint that made the embeddings
    crop_size   the evaluation crop the images were embedded at
    skipped     ["<path>: <why>"] unreadable files left out
    stamps      [N] [bytes, mtime in ns] of each file when it was embedded (absent in older indexes)

A query with any other checkpoint is refused: its embeddings would not be comparable. A result
whose file was deleted or changed since (another size or mtime, as the image cache tells) is left
out of the results and reported with the command that rebuilds the index.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from data.cache import file_stamp
from engine.inference import build_queries, embed_images, rank_gallery
from models.base import stack_grains
from utils.errors import UserError
from utils.io import atomic_write, file_sha256

FORMAT, VERSION = "manme-search-index", 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class SearchIndex:
    root: str
    paths: list[str]
    embeddings: dict[str, torch.Tensor]
    checkpoint: dict
    crop_size: int
    skipped: list[str] = field(default_factory=list)
    stamps: list[list[int]] = field(default_factory=list)  # per row (bytes, mtime ns); [] in an older index
    _kept: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # what queries reuse

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, i: int) -> Path:
        return Path(self.root) / self.paths[i]

    def changed(self, i: int) -> bool:
        """Whether row i's file is gone or (with stamps) another file now: its embedding is not the file's."""
        now = file_stamp(self.file(i))
        return now is None or bool(self.stamps) and tuple(self.stamps[i]) != now

    def rebuild_command(self, index_path: str | Path) -> str:
        return (f"python retrieve.py index --ckpt {self.checkpoint['path']} --images {self.root} "
                f"--out {index_path}")

    def keep_stacked(self, model, device) -> None:
        """Prepare, once, what every later search reads instead (a server's queries): the model's grains stacked
        (K, N, d) on `device`, so that one product per part scores all grains (fewer products: on a busy CPU each
        one waits for its threads), and model.target_squares of the stack (t ⊙ t, squared once, not per query).
        On the CPU the index's embeddings become views of the stack (no second copy); the squares take as much
        memory again as the embeddings (N x d x grains float32: 614 MB for 100k images at d = 512, 3 grains).
        Without it (`retrieve.py query`, one query) a search scores grain by grain in blocks and keeps nothing.
        An index lacking the model's grains is left alone: search() reports it."""
        if any(g not in self.embeddings for g in model.grains):
            return
        stacked = stack_grains(self.embeddings, model.grains).to(device)
        if stacked.device.type == "cpu":
            self.embeddings.update({g: stacked[k] for k, g in enumerate(model.grains)})
        self._kept[str(device)] = stacked, model.target_squares(stacked)

    def kept_stack(self, device) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(stacked embeddings, their squares or None) that keep_stacked made for `device`, or None."""
        return self._kept.get(str(device))

    @cached_property
    def rows(self) -> dict[str, int]:
        """Relative path -> row, built once: every query looks its reference up here."""
        return {p: i for i, p in enumerate(self.paths)}

    def position(self, image: str | Path) -> int:
        """Row of `image` when that very file is in the index (same path after resolving links,
        or the same file on disk), else -1."""
        image = Path(image).resolve()
        try:
            rel = image.relative_to(Path(self.root).resolve()).as_posix()
        except ValueError:
            rel = None
        if rel in self.rows:
            return self.rows[rel]
        for i, p in enumerate(self.paths):  # the same file reached through another path
            candidate = Path(self.root) / p
            if candidate.name == image.name and candidate.exists() and os.path.samefile(candidate, image):
                return i
        return -1


def checkpoint_identity(path: str | Path, cfg=None) -> dict:
    """What ties an index to the weights that built it: the sha256 of the checkpoint file (the path,
    model and dataset are kept for messages)."""
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path),
            "model": getattr(cfg, "model", ""), "dataset": getattr(cfg, "dataset", "")}


def check_checkpoint(index: SearchIndex, checkpoint_path: str | Path, index_path: str | Path = "the index") -> None:
    """Raise ValueError unless `checkpoint_path` is the file the index was built with."""
    digest = file_sha256(checkpoint_path)
    if digest != index.checkpoint["sha256"]:
        raise ValueError(f"{checkpoint_path} (sha256 {digest[:12]}) is not the checkpoint that built {index_path} "
                         f"({index.checkpoint['path']}, sha256 {index.checkpoint['sha256'][:12]}): embeddings of "
                         f"different weights cannot be compared. "
                         f"Query with the checkpoint the index was built with (omit --ckpt, or point it at a copy "
                         f"of that file), or rebuild the index with "
                         f"`retrieve.py index --ckpt {checkpoint_path} --images {index.root} --out ...`")


def list_images(folder: str | Path) -> list[Path]:
    """Every JPEG/PNG/WebP file under `folder`, recursively (hidden entries skipped), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (--images)")
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def build_index(model, folder: str | Path, checkpoint_path: str | Path, crop_size: int, device,
                batch_size: int = 64, num_workers: int = 0, amp_dtype=None, cfg=None,
                progress: bool = True) -> SearchIndex:
    """Embed every image under `folder`; unreadable files are recorded in `skipped`, not embedded."""
    root = Path(folder).resolve()
    files = list_images(root)
    if not files:
        raise FileNotFoundError(f"{folder}: no image files (.jpg, .jpeg, .png, .webp) in it or its subfolders")
    stamps = [file_stamp(f) for f in files]  # before embedding: a file changed meanwhile reads as changed
    embedded = embed_images(model, files, crop_size, device, batch_size, num_workers, amp_dtype=amp_dtype,
                            progress=progress, desc="index images", upright=True)
    skipped = [message if message.startswith(str(files[i])) else f"{files[i]}: {message}"
               for i, message in embedded.errors]
    return SearchIndex(root=str(root), paths=[files[i].relative_to(root).as_posix() for i in embedded.kept],
                       embeddings={g: x.cpu() for g, x in embedded.features.items()},
                       checkpoint=checkpoint_identity(checkpoint_path, cfg), crop_size=crop_size, skipped=skipped,
                       stamps=[list(stamps[i] or (-1, -1)) for i in embedded.kept])


def save_index(index: SearchIndex, path: str | Path) -> None:
    state = {"format": FORMAT, "version": VERSION, "root": index.root, "paths": list(index.paths),
             "embeddings": {g: x.contiguous() for g, x in index.embeddings.items()},
             "checkpoint": dict(index.checkpoint), "crop_size": int(index.crop_size), "skipped": list(index.skipped),
             "stamps": [list(map(int, st)) for st in index.stamps]}
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_index(path: str | Path) -> SearchIndex:
    """Read an index safely (no pickle code); any fault raises ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index file not found; build it with `retrieve.py index`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to load: the file holds Python objects other than tensors and plain "
                         f"values ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: truncated or corrupt index ({type(e).__name__}); rebuild it with "
                         f"`retrieve.py index`") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a manme search index (build one with `retrieve.py index`)")
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: index version {state.get('version')}, this code reads version {VERSION}; "
                         f"rebuild it with `retrieve.py index`")
    check_index_state(state, path)
    return SearchIndex(root=state["root"], paths=list(state["paths"]), embeddings=dict(state["embeddings"]),
                       checkpoint=dict(state["checkpoint"]), crop_size=int(state["crop_size"]),
                       skipped=list(state["skipped"]), stamps=[list(st) for st in state.get("stamps", [])])


def check_index_state(state: dict, path: Path) -> None:
    """Shapes, dtypes, finite values and matching counts of a loaded index; a UserError names the fault."""
    rebuild = "rebuild it with `retrieve.py index`"
    paths, embeddings = state.get("paths"), state.get("embeddings")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise UserError(f"{path}: 'paths' is not a list of file names; {rebuild}")
    if not isinstance(embeddings, dict) or not embeddings:
        raise UserError(f"{path}: no embeddings; {rebuild}")
    widths = set()
    for grain, x in embeddings.items():
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype != torch.float32:
            raise UserError(f"{path}: {grain} embeddings are not an (N, d) float32 matrix; {rebuild}")
        if x.shape[0] != len(paths):
            raise UserError(f"{path}: {x.shape[0]} {grain} embeddings for {len(paths)} image paths; {rebuild}")
        if not torch.isfinite(x).all():
            raise UserError(f"{path}: {grain} embeddings hold NaN or infinite values; {rebuild}")
        widths.add(x.shape[1])
    if len(widths) > 1:
        raise UserError(f"{path}: embeddings of different widths {sorted(widths)}; {rebuild}")
    if not isinstance(state.get("checkpoint"), dict) or "sha256" not in state["checkpoint"]:
        raise UserError(f"{path}: no record of the checkpoint that built it; {rebuild}")
    if not isinstance(state.get("crop_size"), int) or not isinstance(state.get("root"), str):
        raise UserError(f"{path}: 'crop_size' or 'root' missing or of the wrong type; {rebuild}")
    stamps = state.get("stamps", [])
    if not isinstance(stamps, list) or (stamps and (len(stamps) != len(paths) or not all(
            isinstance(st, list) and len(st) == 2 and all(isinstance(v, int) for v in st) for st in stamps))):
        raise UserError(f"{path}: 'stamps' is not one [bytes, mtime] pair per image; {rebuild}")


@dataclass
class SearchResult:
    paths: list[Path]          # best first
    scores: list[float]
    excluded: Path | None      # the query image itself, when it is in the index
    unknown_words: list[str]   # words of the text outside the vocabulary (read as <unk>)
    stale: list[Path] = field(default_factory=list)  # files deleted or changed since indexing, left out


@torch.inference_mode()
def search(model, vocab, index: SearchIndex, image: str | Path, text: str, k: int, device,
           amp_dtype=None) -> SearchResult:
    """The k indexed images that best match (reference `image`, modification `text`), best first.

    The text is tokenised as evaluation does (FashionIQ's "first <and> second" included). As in
    evaluation, the reference is never ranked against itself: when `image` is one of the indexed
    files (same path, or the same file through a link), that row is left out of the ranking."""
    if len(index) == 0:
        raise ValueError("the index holds no image")
    gallery = {g: x.to(device) for g, x in index.embeddings.items()}
    missing = [g for g in model.grains if g not in gallery]
    if missing:
        raise UserError(f"the index has no {', '.join(missing)} embeddings; rebuild it with this checkpoint")
    if any(x.shape[1] != model.embed_dim for x in gallery.values()):
        raise UserError(f"the index's embeddings are not {model.embed_dim} wide like this model's; rebuild it "
                        f"with this checkpoint")
    own = index.position(image)
    if own >= 0 and not index.changed(own):
        # an indexed, unchanged reference: its row is what this model embedded for the file (the index's
        # checkpoint and crop), so the backbone pass, most of a query's time on a CPU, is skipped
        features = {g: x[own:own + 1] for g, x in gallery.items()}
    else:
        reference = embed_images(model, [Path(image)], index.crop_size, device, amp_dtype=amp_dtype, progress=False,
                                 upright=True)
        if reference.errors:
            raise ValueError(f"--image: {reference.errors[0][1]}")
        features = reference.features
    query = build_queries(model, vocab, features, [text], device)
    kept = index.kept_stack(device)
    # kept (a server): one query's scores over the whole index are one block (N floats), from one product per part
    # for all grains; else grain by grain in blocks of 8192 rows, squared per block, nothing copied whole
    ranked, squares, chunk = (kept[0], kept[1], len(index)) if kept else (gallery, None, 8192)
    want = k
    while True:  # rows whose file changed since indexing are left out: rank deeper until k are current
        result = rank_gallery(model, query, ranked, targets=[[]], references=[own], topk=want, query_chunk=1,
                              gallery_chunk=chunk, squares=squares)
        rows, scores = result.topk_index[0].tolist(), result.topk_score[0].tolist()
        stale = [i for i in rows if index.changed(i)]
        if len(rows) - len(stale) >= k or len(rows) < want:  # enough, or the whole index is ranked
            break
        want = min(len(index), 2 * want + len(stale))
    kept = [(i, score) for i, score in zip(rows, scores) if i not in set(stale)][:k]
    return SearchResult(paths=[index.file(i) for i, _ in kept], scores=[score for _, score in kept],
                        excluded=index.file(own) if own >= 0 else None, unknown_words=vocab.unknown_words(text),
                        stale=[index.file(i) for i in stale])
