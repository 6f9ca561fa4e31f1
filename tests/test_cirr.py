"""CIRR: the format on the real annotation files and on synthetic data, the protocol (Recall over the
gallery, Recall_subset over the img_set, the "Avg" selection figure) and the test1 submission files."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from config import resolve
from data.base import EvalSplit, Query
from data.formats import build_vocabulary, open_dataset
from data.synthetic import generate, main
from engine.evaluation import evaluate, rank_subsets
from models import build_model
from tests.helpers import TINY_TRAIN, dataset_config, one_thread, read_jsonl, run_cli
from tools.data_commands import check_main
from utils.errors import UserError

SMALL = dict(size=32, seed=1, n_images=24, n_triplets=60)  # 4 image sets of six per eval split, 12 for train
RECALLS = ("R@1", "R@5", "R@10", "R@50")
SUBSET_RECALLS = ("Rsubset@1", "Rsubset@2", "Rsubset@3")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cirr_data")
    generate(out, "cirr", **SMALL)
    return out


# ---- the real annotation files ----

def test_real_val_and_test1(shared_data):
    cirr = open_dataset(dataset_config(shared_data, "cirr"))
    (val,), (test1,) = cirr.eval_splits("val"), cirr.eval_splits("test1")
    assert (len(val.queries), len(val.gallery)) == (4181, 2297)
    assert (len(test1.queries), len(test1.gallery)) == (4148, 2315)
    for split in (val, test1):
        gallery = set(split.gallery)
        assert split.category == "all" and len(gallery) == len(split.gallery)
        assert all(q.reference in gallery for q in split.queries)
        assert all(len(q.subset) == 6 and q.reference in q.subset for q in split.queries)
        assert all(set(q.subset) <= gallery for q in split.queries)
        assert len({q.pair_id for q in split.queries}) == len(split.queries)
    assert all(len(q.targets) == 1 and q.targets[0] in set(val.gallery) and q.targets[0] in q.subset
               for q in val.queries)
    assert all(q.targets == [] for q in test1.queries)
    first = val.queries[0]
    assert (first.reference, first.targets, first.pair_id) == ("dev-244-0-img0", ["dev-1028-1-img1"], "12060")
    assert first.text == "show three bottles of soft drink"


def test_real_image_lists_paths_and_missing_train_captions(shared_data):
    cirr = open_dataset(dataset_config(shared_data, "cirr"))
    assert {k: len(v) for k, v in cirr.image_lists().items()} == {
        ("all", "train"): 16939, ("all", "val"): 2297, ("all", "test1"): 2315}
    image_root = shared_data / "cirr" / "img_raw"
    assert cirr.image_path("dev-244-0-img0") == image_root / "dev" / "dev-244-0-img0.png"
    assert cirr.image_path("train-11041-2-img0") == image_root / "train" / "34" / "train-11041-2-img0.png"
    with pytest.raises(FileNotFoundError, match=r"cap\.rc2\.train\.json"):
        cirr.train_triplets()
    with pytest.raises(UserError, match="test1"):
        cirr.eval_splits("test")


# ---- the synthetic layout ----

def test_synthetic_layout(root):
    folder = root / "cirr"
    for split, prefix in (("train", "train"), ("val", "dev"), ("test1", "test1")):
        paths = read_json(folder / "image_splits" / f"split.rc2.{split}.json")
        entries = read_json(folder / "captions" / f"cap.rc2.{split}.json")
        assert paths and entries
        for name, relative in paths.items():
            parts = relative.split("/")
            assert parts[:2] == [".", prefix] and parts[-1] == f"{name}.png" and name.startswith(f"{prefix}-")
            assert len(parts) == (4 if split == "train" else 3) and (folder / "img_raw" / relative).is_file()
        for e in entries:
            test = split == "test1"
            assert list(e) == (["pairid", "reference", "caption", "img_set"] if test else
                               ["pairid", "reference", "target_hard", "target_soft", "caption", "img_set"])
            members = e["img_set"]["members"]
            assert len(members) == len(set(members)) == 6 and set(members) <= set(paths)
            assert e["reference"] in members and e["caption"].strip()
            assert members[e["img_set"]["reference_rank"]] == e["reference"]
            if not test:
                assert e["target_hard"] in members and e["target_hard"] != e["reference"]
                assert e["target_soft"] == {e["target_hard"]: 1.0}
    ids = [e["pairid"] for s in ("train", "val", "test1") for e in read_json(folder / "captions" / f"cap.rc2.{s}.json")]
    assert len(set(ids)) == len(ids)
    with open(next((folder / "img_raw" / "dev").glob("*.png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_synthetic_reader_vocabulary_and_determinism(root, tmp_path):
    cirr = open_dataset(dataset_config(root, "cirr"))
    triplets = cirr.train_triplets()
    assert len(triplets) == SMALL["n_triplets"] and all(t.category == "all" for t in triplets)
    assert all(cirr.image_path(i).is_file() for t in triplets for i in (t.reference, t.target))
    (val,) = cirr.eval_splits("val")
    assert len(val.gallery) == 24 and len(val.queries) == 16 and all(len(q.subset) == 6 for q in val.queries)
    vocab = build_vocabulary(dataset_config(root, "cirr"))
    assert vocab.dataset == "cirr" and vocab.words_count > 10
    again = generate(tmp_path / "again", "cirr", **SMALL)
    for p in sorted((root / "cirr").rglob("*")):
        if p.is_file():
            assert (again / p.relative_to(root / "cirr")).read_bytes() == p.read_bytes(), p
    with pytest.raises(ValueError, match="hard mode"):
        generate(tmp_path, "cirr", difficulty="hard")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--dataset", "cirr", "--difficulty", "hard"])


def test_folders_matched_ignoring_case_and_img_raw_beside(root, tmp_path):
    """CIRR/Captions, CIRR/Image_Splits and an IMG_RAW/ beside the dataset folder (CIRR's own README layout)."""
    source = root / "cirr"
    target = tmp_path / "CIRR"
    for sub, name in (("captions", "Captions"), ("image_splits", "Image_Splits")):
        (target / name).mkdir(parents=True)
        for p in (source / sub).iterdir():
            (target / name / p.name).write_bytes(p.read_bytes())
    (tmp_path / "IMG_RAW").symlink_to(source / "img_raw")
    cirr = open_dataset(dataset_config(tmp_path, "cirr"))
    (val,) = cirr.eval_splits("val")
    assert cirr.image_path(val.gallery[0]).is_file() and cirr.image_folders() == [tmp_path / "IMG_RAW"]
    (tmp_path / "empty" / "cirr").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="Unpack the CIRR annotation release"):
        open_dataset(dataset_config(tmp_path / "empty", "cirr"))


def test_bad_annotations_name_the_entry(root, tmp_path):
    folder = tmp_path / "cirr"
    (folder / "captions").mkdir(parents=True)
    (folder / "image_splits").mkdir()
    (folder / "image_splits" / "split.rc2.val.json").write_text(json.dumps({"dev-0-0-img0": "./dev/dev-0-0-img0.png"}))
    cirr = open_dataset(dataset_config(tmp_path, "cirr"))
    entry = {"pairid": 3, "reference": "dev-0-0-img0", "target_hard": "x", "caption": "c", "img_set": {"id": 0}}
    (folder / "captions" / "cap.rc2.val.json").write_text(json.dumps([entry]))
    with pytest.raises(UserError, match=r"cap\.rc2\.val\.json entry 0: field 'img_set'"):
        cirr.eval_splits("val")
    entry["img_set"] = {"members": ["dev-0-0-img0"]}
    (folder / "captions" / "cap.rc2.val.json").write_text(json.dumps([{**entry, "pairid": None}]))
    with pytest.raises(UserError, match="entry 0: field 'pairid'"):
        cirr.eval_splits("val")
    (folder / "captions" / "cap.rc2.val.json").write_text(json.dumps([entry]))
    assert cirr.eval_splits("val")[0].queries[0].subset == ["dev-0-0-img0"]
    (folder / "image_splits" / "split.rc2.val.json").write_text(json.dumps(["dev-0-0-img0"]))
    with pytest.raises(UserError, match=r"split\.rc2\.val\.json: expected a JSON object"):
        cirr.eval_splits("val")


# ---- the protocol ----

class DotModel:
    """model.score of a single grain: query rows x gallery rows dot products."""

    def score(self, query, gallery):
        return query @ gallery["coarse"].T


def test_rank_subsets_reads_each_querys_members():
    """Scores are gallery values; each query ranks its own members, the reference left out, a member missing
    from the gallery skipped; ties broken by member order, as in the gallery ranking."""
    values = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0, "f": 0.0}
    position = {name: n for n, name in enumerate(values)}
    features = {"coarse": torch.tensor([[v] for v in values.values()])}
    queries = [Query("a", "t", ["d"], "all", ["a", "b", "c", "d", "e", "f"]),   # d below b, c: rank 2
               Query("c", "t", ["b"], "all", ["f", "b", "c", "zz"]),            # zz not in the gallery
               Query("f", "t", ["e"], "all", ["e", "f", "d"])]                   # reference f; e below d
    split = EvalSplit("all", queries, list(values))
    query = torch.ones(3, 1)
    found = rank_subsets(DotModel(), query, split, features, position, SimpleNamespace(eval_chunk=2))
    assert found.ranks.tolist() == [2, 0, 1]
    assert found.rankings == [["b", "c", "d", "e", "f"], ["b", "f"], ["d", "e"]]
    tied = {"coarse": torch.tensor([[5.0], [1.0], [0.0], [1.0], [0.0], [0.0]])}  # a (the reference) on top, b = d
    tie = Query("a", "t", ["d"], "all", ["a", "b", "c", "d"])
    found = rank_subsets(DotModel(), query[:1], EvalSplit("all", [tie], list(values)), tied, position,
                         SimpleNamespace(eval_chunk=8))
    assert found.ranks.tolist() == [1] and found.rankings[0][:2] == ["b", "d"]


def test_selection_score_is_the_published_avg(root):
    cirr = open_dataset(dataset_config(root, "cirr"))
    assert cirr.selection_keys() == ("R@5", "Rsubset@1") and cirr.summary_metric == "Avg"
    assert cirr.selection_score({"R@1": 1.0, "R@5": 40.0, "R@10": 3.0, "R@50": 4.0, "Rsubset@1": 60.0}) == 50.0
    assert cirr.recall_ks == (1, 5, 10, 50) and cirr.subset_ks == (1, 2, 3)


def check_rankings(metrics: dict, rankings: list[dict], subsets: dict[str, list[str]]) -> None:
    """Every CIRR figure of metrics.json recomputed from rankings.jsonl (Recall_subset from the img_set)."""
    (m,) = metrics["per_category"].values()
    assert len(rankings) == m["n_queries"]
    for row in rankings:
        assert row["reference"] not in row["ranking"] and len(row["ranking"]) == min(50, m["gallery_size"] - 1)
        assert sorted(row["subset_ranking"]) == sorted(x for x in subsets[row["pair_id"]] if x != row["reference"])
    for key in RECALLS + SUBSET_RECALLS:
        k, listed = int(key.split("@")[1]), "subset_ranking" if key.startswith("Rsubset") else "ranking"
        hits = sum(row["targets"][0] in row[listed][:k] for row in rankings)
        assert m[key] == pytest.approx(100 * hits / len(rankings), abs=1e-9), key
        assert metrics["overall"][key] == pytest.approx(m[key]), key
    assert metrics["overall"]["Avg"] == pytest.approx((m["R@5"] + m["Rsubset@1"]) / 2)


def check_submission(folder: Path, split_paths: dict[str, str], queries: list[Query]) -> None:
    """The two CIRR server files: version, metric, one key per pairid, 50 gallery names / 3 subset members,
    never the reference."""
    by_pair = {q.pair_id: q for q in queries}
    for metric, n in (("recall", 50), ("recall_subset", 3)):
        content = read_json(folder / f"cirr_test1_{metric}.json")
        assert content.pop("version") == "rc2" and content.pop("metric") == metric
        assert set(content) == set(by_pair)
        for pair, names in content.items():
            q = by_pair[pair]
            candidates = len(split_paths) - 1 if metric == "recall" else 5  # every image or member but the reference
            assert len(names) == min(n, candidates) == len(set(names))
            assert q.reference not in names and set(names) <= set(split_paths)
            if metric == "recall_subset":
                assert set(names) <= set(q.subset)


@pytest.fixture(scope="module")
def untrained(root):
    cfg = resolve({"dataset": "cirr", "data_root": str(root), "backbone": "resnet18", "backbone_weights": "none",
                   "crop_size": 32, "embed_dim": 64, "word_dim": 32, "num_workers": 0, "device": "cpu"})
    vocab = build_vocabulary(cfg)
    torch.manual_seed(0)
    return build_model(cfg, len(vocab)).eval(), cfg, vocab


def test_evaluate_val_and_test1_in_process(untrained, root):
    model, cfg, vocab = untrained
    fmt = open_dataset(cfg)
    with one_thread():
        val = evaluate(model, fmt, vocab, replace(cfg, eval_chunk=5), "val", torch.device("cpu"), progress=False)
        test1 = evaluate(model, fmt, vocab, cfg, "test1", torch.device("cpu"), progress=False)
    (split,) = fmt.eval_splits("val")
    check_rankings(val.to_json(), val.rankings, {q.pair_id: q.subset for q in split.queries})
    assert val.score == val.overall["Avg"] and "Avg = " in val.table() and "Rsubset@3" in val.table()
    assert not val.submission
    assert test1.overall == {} and test1.per_category["all"] == {"n_queries": 16, "gallery_size": 24}
    assert "no public targets" in test1.table() and "cirr.cecs.anu.edu.au" in test1.note
    assert set(test1.submission) == {"cirr_test1_recall.json", "cirr_test1_recall_subset.json"}


def test_data_check(root, capsys):
    assert check_main(["--dataset", "cirr", "--data_root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "test1" in out and "0 missing, 0 unreadable" in out


# ---- end to end ----

@pytest.mark.slow
def test_two_stage_run_and_evaluate(root, tmp_path):
    vocab_dir = tmp_path / "vocab"
    run_cli("vocab.py", "--dataset", "cirr", "--data_root", root, "--vocab_dir", vocab_dir)
    run_cli("train.py", "--dataset", "cirr", "--data_root", root, "--vocab_dir", vocab_dir, "--output_dir", tmp_path,
            "--exp_name", "t", "--two_stage", "--num_epochs", "1", "--finetune_epochs", "1", "--max_steps", "3",
            *TINY_TRAIN)
    fmt = open_dataset(dataset_config(root, "cirr"))
    (val,), (test1,) = fmt.eval_splits("val"), fmt.eval_splits("test1")
    common = ["--data_root", root, "--device", "cpu", "--num_workers", "0"]

    # the best stage-1 checkpoint was chosen by Avg: its best_score is the Avg evaluate.py reports
    stage1 = tmp_path / "t" / "stage1" / "best.pt"
    proc = run_cli("evaluate.py", "--ckpt", stage1, "--output_dir", tmp_path / "e1", *common)
    metrics = read_json(tmp_path / "e1" / "metrics.json")
    assert torch.load(stage1, weights_only=True)["best_score"] == pytest.approx(metrics["overall"]["Avg"], abs=1e-3)
    assert "Avg = " in proc.stdout and "Rsubset@1" in proc.stdout
    check_rankings(metrics, read_jsonl(tmp_path / "e1" / "rankings.jsonl"), {q.pair_id: q.subset for q in val.queries})

    out = tmp_path / "e_test1"
    proc = run_cli("evaluate.py", "--ckpt", tmp_path / "t" / "stage2" / "best.pt", "--split", "test1",
                   "--output_dir", out, *common)
    assert "cirr.cecs.anu.edu.au" in proc.stdout and "cirr_test1_recall_subset.json" in proc.stdout
    assert read_json(out / "metrics.json")["overall"] == {}
    check_submission(out, read_json(root / "cirr" / "image_splits" / "split.rc2.test1.json"), test1.queries)
    assert [r["pair_id"] for r in read_jsonl(out / "rankings.jsonl")] == [q.pair_id for q in test1.queries]
