"""Search your own images with a trained checkpoint (CPU, or the GPU when present).

  python retrieve.py index --ckpt PATH --images DIR --out INDEX
      embeds every JPEG/PNG/WebP file under DIR (recursively) into INDEX; unreadable files are
      listed and skipped. INDEX holds tensors, strings and numbers only (loaded with
      torch.load(weights_only=True)) and the checkpoint's sha256.
  python retrieve.py query --index INDEX --image REF --text "..." [--k 10] [--png OUT.png]
      prints the k best files with their scores, best first. --text is tokenised as evaluation
      does and also takes FashionIQ's two-caption form as rankings.jsonl writes it
      ("first caption <and> second caption"). Words outside the vocabulary are reported.
      As in evaluation, the reference never ranks against itself: when REF is one of the indexed
      files (same path or the same file), it is left out of the results.
      The checkpoint is the one recorded in the index (--ckpt to point at a moved copy of it);
      any other checkpoint is refused.
"""
import sys
from pathlib import Path

from config import build_parser, given_flags
from engine.inference import load_trained
from tools.figures import RetrievalRow, draw_retrievals, save_png
from tools.search_index import IMAGE_SUFFIXES, build_index, check_checkpoint, load_index, save_index, search
from utils.errors import UserError, number_in, run_command, subcommand
from utils.io import check_output_file

COMMANDS = {"index": "Embed a folder of images.", "query": "Query an index."}


def parser_for(command: str):
    """The config's search flags (device, precision, batch size, workers) plus the command's own."""
    parser = build_parser("search", COMMANDS[command])
    parser.prog = f"retrieve.py {command}"
    if command == "index":
        parser.add_argument("--ckpt", required=True, help="trained checkpoint (best.pt)")
        parser.add_argument("--images", required=True, help="folder to index (recursively)")
        parser.add_argument("--out", required=True, help="index file to write")
        return parser
    parser.add_argument("--index", required=True, help="index file written by `retrieve.py index`")
    parser.add_argument("--image", required=True, help="reference image")
    parser.add_argument("--text", required=True, help='modification text; FashionIQ form "first <and> second" accepted')
    parser.add_argument("--k", type=number_in(int, 1, 10_000), default=10, help="results to print (1 to 10000)")
    parser.add_argument("--png", default="", help="also draw the results, as in the retrieval figure")
    parser.add_argument("--ckpt", default="", help="the index's checkpoint, if it moved (default: recorded path)")
    return parser


def run_index(args) -> None:
    check_output_file(args.out, "--out", {"--ckpt": args.ckpt})
    if Path(args.out).suffix.lower() in IMAGE_SUFFIXES and Path(args.images).is_dir() and \
            Path(args.out).resolve().is_relative_to(Path(args.images).resolve()):
        raise UserError(f"--out {args.out} is an image file in the folder being indexed (--images {args.images}): "
                        f"writing it would destroy that image; give the index another name (e.g. my_images.index)")
    trained = load_trained(args.ckpt, given_flags(args))
    cfg, device = trained.cfg, trained.device
    print(f"indexing {args.images} with {args.ckpt} ({cfg.model}, {cfg.crop_size} px) on {device}")
    index = build_index(trained.model, args.images, args.ckpt, cfg.crop_size, device, cfg.eval_batch_size,
                        cfg.num_workers, trained.amp_dtype, cfg)
    if index.skipped:
        print(f"{len(index.skipped)} unreadable file(s) skipped:", file=sys.stderr)
        for line in index.skipped:
            print(f"  {line}", file=sys.stderr)
    if len(index) == 0:
        raise ValueError(f"{args.images}: no readable image; nothing indexed")
    save_index(index, args.out)
    print(f"wrote {args.out}: {len(index)} images, grains {', '.join(index.embeddings)}")


def run_query(args) -> None:
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"{args.image}: reference image not found (--image)")
    if args.png:
        check_output_file(args.png, "--png", {"--image": args.image, "--index": args.index, "--ckpt": args.ckpt})
    index = load_index(args.index)
    ckpt = args.ckpt or index.checkpoint["path"]
    if args.png:
        check_output_file(args.png, "--png", {"the checkpoint": ckpt})
        if Path(args.png).exists() and index.position(args.png) >= 0:
            raise UserError(f"--png {args.png} is one of the indexed images: writing it would destroy that image; "
                            f"choose another --png")
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"{ckpt}: the checkpoint that built {args.index} is not there; "
                                f"pass its new location with --ckpt")
    check_checkpoint(index, ckpt, args.index)
    trained = load_trained(ckpt, given_flags(args))
    result = search(trained.model, trained.vocab, index, args.image, args.text, args.k, trained.device,
                    trained.amp_dtype)
    if result.unknown_words:
        print(f"warning: not in the vocabulary, read as <unk>: {', '.join(dict.fromkeys(result.unknown_words))}",
              file=sys.stderr)
    if result.excluded is not None:
        print(f"note: the reference {result.excluded} is in the index and left out of the ranking", file=sys.stderr)
    if result.stale:
        print(f"warning: {len(result.stale)} indexed file(s) deleted or changed since the index was built, left out "
              f"of the results: {', '.join(map(str, result.stale[:5]))}{' ...' if len(result.stale) > 5 else ''}; "
              f"rebuild the index: {index.rebuild_command(args.index)}", file=sys.stderr)
    if not index.stamps:
        print(f"note: {args.index} predates file stamps, so only deleted files are noticed; rebuild it to notice "
              f"changed ones: {index.rebuild_command(args.index)}", file=sys.stderr)
    for path, score in zip(result.paths, result.scores):
        print(f"{score:8.4f}  {path}")
    if args.png:
        save_png(draw_retrievals([RetrievalRow(Path(args.image), args.text, result.paths, result.scores)],
                                 title=f"{trained.cfg.model} · {Path(index.root).name}", upright=True), args.png)
        print(f"wrote {args.png}", file=sys.stderr)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = subcommand(argv, COMMANDS, __doc__)
    if command is None:
        return
    run = run_index if command == "index" else run_query
    run(parser_for(command).parse_args(argv[1:]))


if __name__ == "__main__":
    run_command(main)
