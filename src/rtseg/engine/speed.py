"""Training throughput on the CPU: the options that measurably help, and the measurement itself.

:func:`prepare_for_training` is what the trainer calls on its model before building the
optimiser. Numbers (SINet, 224x224, batch 36, Adam, 2 threads) are in BENCHMARKS.md and come from
:func:`measure_training_speed` (``python -m rtseg.engine.speed``).
"""
from __future__ import annotations

import copy
import json
import logging
import sys
import time
import types
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: What :func:`measure_training_speed` can combine (``+``-joined, e.g. ``channels_last+bf16``).
OPTIONS = ("eager", "channels_last", "bf16", "compile", "ftz")


def _to_channels_last(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
    return args


def prepare_for_training(model: nn.Module, cfg: Any = None) -> nn.Module:
    """Make ``model`` train faster on this device; returns the same module (same state_dict keys).

    * ``channels_last`` (``cfg.channels_last``; without a cfg, on for CPU): weights and every 4-D
      input (a forward pre-hook) in NHWC, which oneDNN's convolutions and their backward prefer
      (depthwise backward 3-4x faster) - but eager BatchNorm backward is slower in NHWC, so alone
      it gains nothing for SINet.
    * ``compile`` (``cfg.compile``, default off): ``nn.Module.compile()`` in place (keeps the
      parameter names, so checkpoints are unchanged); inductor fuses BatchNorm, PReLU and the
      element-wise ops, forward and backward. With channels_last this is the fastest variant
      (BENCHMARKS.md); its first step compiles for 1-3 minutes on a 2-core machine.

    bf16 autocast is the trainer's ``--amp`` (``TrainConfig.amp``), not set here.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    channels_last = getattr(cfg, "channels_last", device.type == "cpu")
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if not getattr(model, "_rtseg_channels_last_hook", False):
            model.register_forward_pre_hook(_to_channels_last)
            model._rtseg_channels_last_hook = True  # type: ignore[attr-defined]
    if getattr(cfg, "compile", False):
        model.compile()
    log.info("training speed: channels_last=%s compile=%s", bool(channels_last), bool(getattr(cfg, "compile", False)))
    return model


def measure_training_speed(model_name: str = "sinet", *, variants: Sequence[str] = ("eager", "channels_last"),
                           batch: int = 36, size: tuple[int, int] = (224, 224), rounds: int = 3,
                           steps_per_round: int = 2, threads: int = 2, lr: float = 1e-4,
                           model_kwargs: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Images/s of a full training step (forward, cross-entropy, backward, Adam) per variant.

    Variants run interleaved, ``rounds`` x ``steps_per_round`` timed steps each after one untimed
    step (which includes ``torch.compile``'s compilation, reported as ``first_step_s``), on one
    fixed batch of realistic inputs (:func:`rtseg.export.example_input`) and random labels.
    """
    from ..export import example_input
    from ..models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = create_model(model_name, **(model_kwargs or {}))
    x0 = example_input(base, size, batch)
    y0 = torch.randint(0, base.num_classes if hasattr(base, "num_classes") else 2, (batch, *size))
    runs: dict[str, dict[str, Any]] = {}
    for v in variants:
        opts = set(v.split("+"))
        if not opts <= set(OPTIONS):
            raise ValueError(f"unknown variant {v!r}; combine {', '.join(OPTIONS)} with '+'")
        model = copy.deepcopy(base).train()
        # what the trainer does (--channels-last / --compile)
        prepare_for_training(model, types.SimpleNamespace(channels_last="channels_last" in opts,
                                                          compile="compile" in opts))
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def step(model=model, opt=opt, bf16="bf16" in opts) -> float:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x0)
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = F.cross_entropy(out.float(), y0)
            loss.backward()
            opt.step()
            return float(loss.detach())

        torch.set_flush_denormal("ftz" in opts)
        t = time.perf_counter()
        step()
        runs[v] = {"step": step, "ftz": "ftz" in opts, "first": time.perf_counter() - t, "times": []}
    try:
        for _ in range(rounds):
            for v, r in runs.items():
                torch.set_flush_denormal(r["ftz"])
                for _ in range(steps_per_round):
                    t = time.perf_counter()
                    r["step"]()
                    r["times"].append(time.perf_counter() - t)
    finally:
        torch.set_flush_denormal(False)
    out = []
    for v, r in runs.items():
        ts = sorted(r["times"])
        med = ts[len(ts) // 2]
        out.append({"variant": v, "model": model_name, "batch": batch, "size": list(size), "threads": threads,
                     "first_step_s": r["first"], "median_step_s": med, "best_step_s": ts[0],
                     "images_per_s": batch / med, "images_per_s_best": batch / ts[0]})
    base_ips = next((o["images_per_s"] for o in out if o["variant"] == "eager"), None)
    for o in out:
        o["speedup_vs_eager"] = o["images_per_s"] / base_ips if base_ips else None
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m rtseg.engine.speed", description=measure_training_speed.__doc__)
    p.add_argument("--model", default="sinet")
    p.add_argument("--variants", nargs="+", default=["eager", "channels_last", "bf16", "channels_last+bf16"])
    p.add_argument("--batch", type=int, default=36)
    p.add_argument("--size", type=int, nargs=2, default=[224, 224])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    for row in measure_training_speed(a.model, variants=a.variants, batch=a.batch, size=tuple(a.size),
                                      rounds=a.rounds, steps_per_round=a.steps, threads=a.threads):
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
