"""``rtseg train --model M --data DIR [...]``: the shared trainer (also under torchrun)."""
from __future__ import annotations

import argparse

from ..config import TrainConfig
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
    p.add_argument("--size", type=parse_size, default=d.size, help="training crop HxW (default 224)")
    p.add_argument("--loss", choices=["ce", "lovasz", "ohem"], default=d.loss)
    p.add_argument("--boundary-weight", type=float, default=d.boundary_weight,
                   help="SINet boundary auxiliary loss weight (0: off)")
    p.add_argument("--boundary-kernel", type=int, default=d.boundary_kernel)
    p.add_argument("--aux-weights", type=float, nargs="*", default=list(d.aux_weights))
    p.add_argument("--class-weights", type=float, nargs="*", default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CPU / fp16 on GPU")
    p.add_argument("--grad-accum", type=int, default=1)
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
        aux_weights=tuple(args.aux_weights), class_weights=args.class_weights, seed=args.seed,
        workers=args.workers, augment=not args.no_augment, max_steps=args.max_steps,
        save_every=args.save_every, resume=args.resume, amp=args.amp, grad_accum=args.grad_accum,
        sync_bn=args.sync_bn, progress=not args.no_progress)
    result = train(cfg)
    best = result.get("best")
    print(f"done: {result['out']}  best score {best:.4f}" if isinstance(best, float) and best > -1e30
          else f"done: {result['out']}")
    return 0
