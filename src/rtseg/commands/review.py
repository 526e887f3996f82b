"""``rtseg review``: check pseudo masks in the browser; decisions go to DATASET/review.json."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET_DIR", help="a folder made by `rtseg label`")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")


def run(args: argparse.Namespace) -> int:
    from ..review.server import make_server

    server = make_server(args.dataset, args.host, args.port)
    counts = server.session.state()["counts"]
    print(f"reviewing {counts['total']} samples ({counts['left']} left) of {args.dataset}")
    print(f"open {server.url} (keys: a accept, r reject, f flip teacher, arrows move); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"decisions are in {server.session.layout.review_path}")
    return 0
