"""Arguments and helpers shared by several sub-commands."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Optional

from ..errors import RtsegError

DEFAULT_MODEL = "sinet"


def add_model_arguments(p: argparse.ArgumentParser, default_model: Optional[str] = DEFAULT_MODEL) -> None:
    p.add_argument("--model", default=default_model,
                   help=f"model name (see `rtseg models`); default {default_model}")
    p.add_argument("--weights", default=None,
                   help="rtseg checkpoint or official checkpoint of --model (converted on load)")
    p.add_argument("--model-kwargs", default=[], nargs="*", metavar="KEY=VALUE",
                   help="constructor options, e.g. backbone=resnet50 output_stride=8")


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=resnet50", "c=[1,2]"]`` -> {"a": 1, "b": "resnet50", "c": [1, 2]} (JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RtsegError(f"--model-kwargs: {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` or ``"512x1024"`` (HxW) -> (H, W)."""
    try:
        parts = [int(v) for v in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW")
    return parts[0], parts[1]


def load_model_from_args(args: argparse.Namespace):
    from ..checkpoint import load_model

    kwargs = parse_kwargs(args.model_kwargs)
    return load_model(args.model, args.weights, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
