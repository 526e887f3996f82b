"""``rtseg eval --model M --weights W --data DIR``: mIoU and per-class IoU (JSON + table)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_model_arguments, load_model_from_args, parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--data", required=True, help="dataset: LAYOUT:DIR or DIR (folder, eg1800, cityscapes, ...)")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--sliding-window", type=parse_size, default=None, metavar="HxW",
                   help="evaluate overlapping HxW crops, logits averaged where they overlap "
                        "(default: the whole image at once)")
    p.add_argument("--stride", type=parse_size, default=None, metavar="HxW",
                   help="step between --sliding-window crops (default: 2/3 of the window)")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import open_dataset
    from ..data.io import check_output_dir
    from ..fileio import write_text_atomic
    from ..errors import DataError, RtsegError
    from ..models import get_spec

    if args.stride is not None and args.sliding_window is None:
        raise RtsegError("--stride needs --sliding-window HxW")
    if args.json:
        check_output_dir(Path(args.json).parent)  # before the evaluation, not after it
    model = load_model_from_args(args)
    if get_spec(model.rtseg_name).task == "instance":
        from ..engine.instance import evaluate_cli

        return evaluate_cli(model, args)
    dataset = open_dataset(args.data, args.split)
    n = model.rtseg_kwargs.get("num_classes", dataset.info.num_classes)
    if n != dataset.info.num_classes:
        raise DataError(f"{args.data}: dataset has {dataset.info.num_classes} classes, model {args.model!r} {n}")
    from ..engine.semantic import SemanticTask

    metrics = SemanticTask().evaluate(model, dataset, progress=not args.no_progress, flip=args.flip,
                                      window=args.sliding_window, stride=args.stride)
    print(metrics["table"])
    print(f"mIoU {metrics['miou']:.4f}  pixel accuracy {metrics['pixel_acc']:.4f}  ({len(dataset)} images)")
    if args.json:
        out = {k: v for k, v in metrics.items() if k != "table"}
        out.update(model=args.model, weights=args.weights, data=args.data, split=args.split, flip=args.flip,
                   sliding_window=args.sliding_window, stride=args.stride)
        write_text_atomic(args.json, json.dumps(out, indent=2))
    return 0
