"""``rtseg train --model M --data DIR [...]``: the shared trainer (also under torchrun)."""
from __future__ import annotations

import argparse
from typing import Optional, Union

from ..config import TrainConfig
from ..errors import RtsegError
from .common import DEFAULT_MODEL, parse_kwargs, parse_size, setup_logging


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(model=DEFAULT_MODEL, data="")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", required=True, help="dataset: LAYOUT:DIR or DIR")
    p.add_argument("--val-data", default=None, help="validation dataset (default: the val split of --data)")
    p.add_argument("--weights", default=None, help="start from these weights (rtseg or official checkpoint)")
    p.add_argument("--model-kwargs", default=[], nargs="*", metavar="KEY=VALUE")
    p.add_argument("--out", default=d.out, help="run folder: checkpoints and logs")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (all processes)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=d.optimizer)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--schedule", choices=["poly", "step", "none"], default=d.schedule)
    p.add_argument("--poly-power", type=float, default=d.poly_power, help="poly schedule: lr * (1 - t/T)^power")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="linear learning-rate warm-up over the first N steps (0: none)")
    p.add_argument("--size", type=parse_size, default=d.size,
                   help="training crop HxW (default 224); instance models: shortest-side range MINxMAX (128x160)")
    p.add_argument("--loss", choices=["ce", "lovasz", "ohem"], default=d.loss)
    p.add_argument("--boundary-weight", type=float, default=d.boundary_weight,
                   help="SINet boundary auxiliary loss weight (0: off)")
    p.add_argument("--boundary-kernel", type=int, default=d.boundary_kernel)
    p.add_argument("--aux-weights", type=float, nargs="*", default=list(d.aux_weights))
    p.add_argument("--class-weights", nargs="*", default=None, metavar="auto|W",
                   help="cross-entropy class weights: one per class, or 'auto' for ENet weights "
                        "1/ln(c + p_k) from the training labels")
    p.add_argument("--enet-c", type=float, default=d.enet_c, help="c of --class-weights auto (CGNet: 1.10)")
    p.add_argument("--ohem-thresh", type=float, default=d.ohem_thresh,
                   help="--loss ohem: pixels whose true-class probability is below this are hard")
    p.add_argument("--ohem-min-kept", type=_min_kept, default=d.ohem_min_kept, metavar="N|auto",
                   help="--loss ohem: keep at least N pixels (auto: valid pixels // 16, as CoinCheung)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CPU / fp16 on GPU")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (implies --channels-last): about 2x the images/s of SINet on "
                        "CPU after a first step that compiles for 1-3 minutes (BENCHMARKS.md)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for weights and inputs")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..engine.trainer import train

    setup_logging()
    cfg = TrainConfig(
        model=args.model, data=args.data, val_data=args.val_data, weights=args.weights,
        model_kwargs=parse_kwargs(args.model_kwargs), out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
        momentum=args.momentum, schedule=args.schedule, size=tuple(args.size), loss=args.loss,
        boundary_weight=args.boundary_weight, boundary_kernel=args.boundary_kernel,
        aux_weights=tuple(args.aux_weights), class_weights=parse_class_weights(args.class_weights), seed=args.seed,
        enet_c=args.enet_c, poly_power=args.poly_power, ohem_thresh=args.ohem_thresh, ohem_min_kept=args.ohem_min_kept,
        workers=args.workers, augment=not args.no_augment, max_steps=args.max_steps,
        save_every=args.save_every, resume=args.resume, amp=args.amp, grad_accum=args.grad_accum,
        channels_last=args.channels_last or args.compile, compile=args.compile,
        sync_bn=args.sync_bn, warmup_steps=args.warmup_steps, progress=not args.no_progress)
    result = train(cfg)
    best = result.get("best")
    print(f"done: {result['out']}  best score {best:.4f}" if isinstance(best, float) and best > -1e30
          else f"done: {result['out']}")
    return 0


def parse_class_weights(values: Optional[list[str]]) -> Union[None, str, tuple[float, ...]]:
    """``--class-weights``: nothing -> None, ``auto`` -> "auto", numbers -> a tuple of floats."""
    if not values:
        return None
    if values == ["auto"]:
        return "auto"
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise RtsegError(f"--class-weights {' '.join(values)}: give 'auto' or one number per class") from None


def _min_kept(text: str) -> Optional[int]:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels or 'auto'") from None
