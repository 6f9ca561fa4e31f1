"""Figures of a trained model, as PNG sized for a paper column (1000 px wide by default).

  python visualize.py retrievals --ckpt PATH [--data_root DIR] [--split val] [--n 8] [--k 10] --out FILE.png
      one row per query: reference, modification text, top-k gallery images with scores
      (ranked as evaluate.py ranks them), the correct target framed green
  python visualize.py attention --ckpt PATH [--data_root DIR] [--n 4] --out FILE.png
      for each query and granularity: Grad-CAM on the target image of the modified-part and the
      preserved-part scores, side by side, with their attention overlap

Queries come from the split's first category (FashionIQ: pick it with --categories shirt),
spread evenly over it, so two checkpoints of the same data show the same queries.
"""
import sys

from config import build_parser, given_flags
from data.formats import open_dataset
from engine.inference import load_trained
from tools.figures import attention_figure, retrieval_figure, save_png
from utils.errors import number_in, run_command, subcommand
from utils.io import check_output_file

COMMANDS = ("retrievals", "attention")


def parser_for(command: str):
    parser = build_parser("data,eval,run", __doc__)
    parser.prog = f"visualize.py {command}"
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--n", type=number_in(int, 1, 100), default=8 if command == "retrievals" else 4,
                        help="queries (rows, 1 to 100)")
    if command == "retrievals":
        parser.add_argument("--k", type=number_in(int, 1, 50), default=10,
                            help="gallery images shown per query (1 to 50)")
    parser.add_argument("--width", type=number_in(int, 200, 10_000), default=1000,
                        help="figure width in pixels (200 to 10000)")
    parser.add_argument("--title", default="", help="title line (default: model, dataset, split)")
    parser.add_argument("--colors", type=number_in(int, 0, 256), default=0,
                        help="store with an adaptive palette of this many colours (<= 256; smaller files); "
                             "0: full colour")
    return parser


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = subcommand(argv, COMMANDS, __doc__)
    if command is None:
        return
    parser = parser_for(command)
    args = parser.parse_args(argv[1:])
    explicit = given_flags(args)
    if not explicit.get("ckpt"):
        parser.error("--ckpt PATH is required")

    check_output_file(args.out, "--out", {"--ckpt": explicit["ckpt"]})
    trained = load_trained(explicit["ckpt"], explicit)
    model, cfg, vocab, device = trained.model, trained.cfg, trained.vocab, trained.device
    fmt = open_dataset(cfg)
    if command == "retrievals":
        image = retrieval_figure(model, fmt, vocab, cfg, device, cfg.split, args.n, args.k, args.width, args.title,
                                 amp_dtype=trained.amp_dtype, progress=True)
    else:
        image, rows = attention_figure(model, fmt, vocab, cfg, device, cfg.split, args.n, args.width, args.title)
        for g in model.grains:
            values = [r.overlap[g] for r in rows if g in r.overlap]
            if values:
                print(f"{g}: attention overlap " + " ".join(f"{v:.3f}" for v in values)
                      + f" (mean {sum(values) / len(values):.3f}); maps overlap "
                      + " ".join(f"{r.map_overlap[g]:.3f}" for r in rows))
    save_png(image, args.out, args.colors)
    print(f"wrote {args.out} ({image.width}x{image.height})")


if __name__ == "__main__":
    run_command(main)
