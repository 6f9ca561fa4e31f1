"""Evaluate a checkpoint with its dataset's published protocol.

Model, vocabulary, dataset and crop size come from the checkpoint; prints the
recall table and writes metrics.json and rankings.jsonl (default: beside the
checkpoint, in eval_<split>/). CIRR's test1 has no public targets: `--split test1`
writes cirr_test1_recall.json and cirr_test1_recall_subset.json there instead of
recalls, the files the CIRR evaluation server scores.

  python evaluate.py --ckpt runs/fiq/stage2/best.pt --split val --data_root datasets
  python evaluate.py --ckpt runs/cirr/stage2/best.pt --split test1 --data_root datasets
  python evaluate.py --model clip-sum --backbone clip-rn50 --backbone_weights RN50.safetensors --dataset fashioniq
      (zero-shot: CLIP's own embeddings, no training; written to --output_dir/zero-shot-<backbone>/eval_<split>)
"""
import signal
from pathlib import Path

from config import build_parser, given_flags
from engine.evaluation import evaluate_trained
from engine.inference import load_trained, load_zero_shot
from tools.profile import format_profile, profile_model
from utils.errors import run_command


def stop_on_sigterm(signum, frame) -> None:
    # an exception unwinds the evaluation, so the output folder it created is removed
    raise KeyboardInterrupt


def main(argv=None) -> None:
    parser = build_parser("data,eval,run,zeroshot", __doc__)
    args = parser.parse_args(argv)
    explicit = given_flags(args)
    if not explicit.get("ckpt") and "model" not in explicit:
        parser.error("--ckpt PATH is required (or --model clip-sum with --backbone_weights for a zero-shot row)")
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    if explicit.get("ckpt"):
        trained, label, out = load_trained(explicit["ckpt"], explicit), explicit["ckpt"], explicit.get("output_dir")
    else:
        trained = load_zero_shot(explicit)
        label = f"zero-shot {trained.cfg.model} {trained.cfg.backbone} {trained.cfg.backbone_weights}"
        out = Path(trained.cfg.output_dir) / f"zero-shot-{trained.cfg.backbone}" / f"eval_{trained.cfg.split}"
    if trained.amp_dtype is not None:
        print(f"note: --amp {explicit['amp']}: images are embedded under autocast; recalls may differ in the last "
              f"digits from the default float32 evaluation")
    extra = {}
    if trained.cfg.profile:
        extra["profile"] = profile_model(trained.model, trained.cfg, trained.device)
        print(format_profile(extra["profile"]))
    result, out_dir = evaluate_trained(trained, label, out, extra)
    print(f"{result.dataset} {result.split} — {label}")
    print(result.table())
    if result.overlap:
        print("attention overlap: " + ", ".join(f"{g} {v:.3f}" for g, v in result.overlap.items()))
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'rankings.jsonl'}")
    if result.submission:
        print(f"wrote {' and '.join(str(out_dir / name) for name in result.submission)}: {result.note}")


if __name__ == "__main__":
    run_command(main)
