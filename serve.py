"""Web pages over a search index or an evaluation (FastAPI + uvicorn; pip install -r requirements-web.txt).

  python serve.py search --index INDEX [--ckpt PATH] [--host 127.0.0.1] [--port 8000] [--max_upload_mb 10]
      the search page: browse the indexed images, click one (or upload a photo) as the reference, type the
      modification, see the top k with scores and, per result, the attention maps that explain it.
      Share a query as http://HOST:PORT/?ref=<indexed path>&text=<text>&k=<k>. The JSON API the page uses:
        curl 'http://127.0.0.1:8000/api/search?ref=a/b.jpg&text=is+red&k=10'
        curl -F image=@photo.jpg -F text='is red' -F k=10 http://127.0.0.1:8000/api/search
  python serve.py eval --run RUN/eval_val --data_root DIR [--ckpt PATH] [--host ...] [--port ...]
      the evaluation browser: the recall table of metrics.json and the queries of rankings.jsonl per category,
      worst first, with reference, text, target and top k; filters by category and target rank; the attention
      maps of a query on any image (needs the checkpoint: the one metrics.json names, or --ckpt).

Both load the model once and bind 127.0.0.1: only this machine can connect. --host 0.0.0.0 lets anyone who can
reach the machine query the model and see the served images; there is no login.
"""
import sys

from config import build_parser, given_flags
from utils.errors import UserError, number_in, run_command, subcommand

try:
    from tools.web.common import serve
    from tools.web.evaluation import EvalRun, create_eval_app
    from tools.web.search import SearchService, create_search_app
except ModuleNotFoundError as missing:  # the web stack is an optional extra
    serve = None
    MISSING = missing.name

COMMANDS = {"search": "Serve the search page of an index.", "eval": "Serve the browser of an evaluation."}


def parser_for(command: str):
    parser = build_parser("search", COMMANDS[command])
    parser.prog = f"serve.py {command}"
    if command == "search":
        parser.add_argument("--index", required=True, help="index file written by `retrieve.py index`")
        parser.add_argument("--ckpt", default="", help="the index's checkpoint, if it moved (default: recorded path)")
        parser.add_argument("--max_upload_mb", type=number_in(float, 0.01, 1024), default=10.0,
                            help="largest uploaded image, in MB (0.01 to 1024)")
    else:
        parser.add_argument("--run", required=True, help="evaluation folder holding metrics.json and rankings.jsonl")
        parser.add_argument("--data_root", required=True, help="data root holding the evaluated dataset's images")
        parser.add_argument("--ckpt", default="", help="the evaluated checkpoint, for explanations "
                                                       "(default: the one metrics.json names)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the pages, "
                             "without login, to every machine that can reach this one)")
    parser.add_argument("--port", type=number_in(int, 1, 65535), default=8000, help="port to listen on")
    return parser


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = subcommand(argv, COMMANDS, __doc__)
    if command is None:
        return
    if serve is None:
        raise UserError(f"serve.py needs the web extras ({MISSING} is not installed): "
                        f"pip install -r requirements-web.txt")
    args = parser_for(command).parse_args(argv[1:])
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: give a port between 1 and 65535")
    explicit = {k: v for k, v in given_flags(args).items() if k != "data_root"}
    if command == "search":
        service = SearchService(args.index, args.ckpt, explicit)
        print(f"{args.index}: {len(service.index)} images under {service.root}; {service.trained.cfg.model} on "
              f"{service.trained.device}")
        app = create_search_app(service, int(args.max_upload_mb * 1e6))
    else:
        run = EvalRun(args.run, args.data_root, args.ckpt, explicit)
        print(f"{args.run}: {run.metrics['dataset']} {run.metrics.get('split', '')}, {len(run.rows)} queries"
              + (f"; {run.why_no_explanations}" if run.why_no_explanations else ""))
        app = create_eval_app(run)
    serve(app, args.host, args.port)


if __name__ == "__main__":
    run_command(main)
