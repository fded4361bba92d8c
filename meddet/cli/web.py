"""Serve the meddet web app (Flask app of `webapp`, under waitress) with one model loaded once.

meddet web --model PATH_OR_REPO_ID [--port 8000]      (also meddet-web, python webapp/web.py)
"""

from __future__ import annotations

import argparse
import logging
import sys

HELP = "serve the web app with a model bundle"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="model bundle folder or Hugging Face repo id (ORG/NAME)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=4, help="waitress worker threads")
    ap.add_argument("--max-upload-mb", type=float, default=64)
    ap.add_argument("--max-pixels", type=int, default=80_000_000)
    ap.add_argument("--max-queue", type=int, default=4, help="requests waiting or running before 503")
    ap.add_argument(
        "--max-memory",
        type=float,
        default=None,
        metavar="MB",
        help="memory budget of the requests in flight, in MB (default: half the machine's memory); "
        "each reserves its decoded size plus the model's working set, 503 when full",
    )
    ap.add_argument("--cors-origin", action="append", default=[], help="origin allowed to call the API (repeat)")
    ap.add_argument("--device", default=None, help="cpu | cuda | mps (default: the bundle's, auto)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The standalone parser (meddet-web, webapp/web.py)."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return ap


def execute(args: argparse.Namespace) -> int:
    """Load the model once, serve until interrupted; a model that does not load is one error line, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from meddet.errors import MeddetError
    from meddet.hub import load_predictor
    from webapp.app import create_app
    from webapp.server import private_tmp, serve_app

    private_tmp()  # before anything may write a temporary file; stale ones of crashed runs removed

    try:
        predictor = load_predictor(args.model, device=args.device)
    except MeddetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(
        predictor,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_queue=args.max_queue,
        cors_origins=args.cors_origin,
        max_memory_mb=args.max_memory,
    )
    budget = app.config["MEDDET_SERVICE"].budget.capacity
    print(f"serving http://{args.host}:{args.port}/ (request memory budget {budget / 2**20:,.0f} MiB)", file=sys.stderr)
    serve_app(app, host=args.host, port=args.port, threads=args.threads, max_upload_mb=args.max_upload_mb)
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`meddet-web` (and webapp/web.py): parse `argv`, load the model once, serve until interrupted."""
    return execute(build_parser(prog).parse_args(argv))
