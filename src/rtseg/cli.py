"""``rtseg`` command line: parses, calls the library, prints.

Each sub-command lives in ``rtseg/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. User errors (:class:`~rtseg.errors.RtsegError`, and as a safety net any
``OSError`` such as an unwritable output) print one line naming the file and exit non-zero;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

from .errors import RtsegError

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("rtseg.commands.models", "list the available models"),
    "predict": ("rtseg.commands.predict", "segment images, folders and videos"),
    "train": ("rtseg.commands.train", "train a model on a dataset"),
    "eval": ("rtseg.commands.evaluate", "evaluate a model (mIoU / COCO AP)"),
    "label": ("rtseg.commands.label", "pseudo-label portrait images/videos with a face detector and teachers"),
    "review": ("rtseg.commands.review", "review pseudo masks in the browser (accept / reject / flip)"),
    "export": ("rtseg.commands.export", "export a model to ONNX and check it in onnxruntime"),
    "bench": ("rtseg.commands.bench", "benchmark parameters, FLOPs, latency and memory per backend"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtseg", description="Real-time, lightweight image segmentation.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except RtsegError as e:
        if debug:
            raise
        print(f"rtseg {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system refused (permission, not a folder, disk full, ...)
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        detail = e.strerror.lower() if e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
        print(f"rtseg {args.command}: error: {where}{detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rtseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
