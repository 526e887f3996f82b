"""The training loop shared by every model: ``rtseg train`` and :func:`train`.

* Exact resume: the sample order of epoch ``e`` is a permutation drawn from ``seed + e``, each
  item's augmentation is seeded by (seed, epoch, index), and the checkpoint holds model,
  optimiser, global step, position inside the epoch and the torch/numpy/python RNG states. A
  run killed at any point and resumed from its last checkpoint computes the same weights as an
  uninterrupted run (bit-identical on one process, CPU).
* Checkpoints are written atomically (temp file, fsync, rename) every epoch, every
  ``save_every`` steps, and on SIGINT / SIGTERM; ``last.pt`` is replaced only once the new file
  is complete.
* Learning rate is a pure function of the global step (poly or step schedule with optional
  linear warm-up), so there is no scheduler state to lose.
* Under ``torchrun`` the global batch is split across ranks (DistributedDataParallel; gloo on
  CPU, nccl on GPU); only rank 0 writes logs and checkpoints; metrics are reduced across ranks.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import (atomic_save, load_model, load_state_dict_strict, model_checkpoint, read_checkpoint,
                          save_model)
from ..config import TrainConfig
from ..data.io import check_output_dir, ensure_output_dir
from ..fileio import write_text_atomic
from ..errors import CheckpointError, RtsegError
from ..models import attach_meta, create_model, get_spec
from .distributed import DistInfo, all_reduce_mean, barrier, cleanup, device_for, init_distributed

log = logging.getLogger("rtseg.train")


class Interrupted(RtsegError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate at optimiser step ``step`` (0-based); the first ``cfg.warmup_steps`` steps
    are scaled linearly from 1/warmup_steps up to 1 (on top of the schedule)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "poly":
        return warm * cfg.lr * (1.0 - min(step, total_steps - 1) / max(total_steps, 1)) ** cfg.poly_power
    if cfg.schedule == "step":
        return warm * cfg.lr * cfg.step_gamma ** ((step // max(steps_per_epoch, 1)) // max(cfg.step_size, 1))
    return warm * cfg.lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only; norm layers, biases, PReLU slopes and scalars excluded."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise RtsegError(f"unknown optimizer {cfg.optimizer!r}; use adam, adamw or sgd")


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states in types ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(n, generator=g).tolist()


class Trainer:
    def __init__(self, cfg: TrainConfig, task: Any = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist: DistInfo = init_distributed()
        self.device = device_for(self.dist)
        spec = get_spec(cfg.model)
        if task is None:
            if spec.task == "instance":
                from .instance import InstanceTask

                task = InstanceTask()
            else:
                from .semantic import SemanticTask

                task = SemanticTask()
        self.task = task
        self._signal: Optional[int] = None

    # -- set-up -------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int], class_names: tuple[str, ...], palette: tuple) -> nn.Module:
        cfg = self.cfg
        kwargs = dict(cfg.model_kwargs)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
            if kwargs["num_classes"] != num_classes:
                raise RtsegError(f"--model-kwargs num_classes={kwargs['num_classes']} but the dataset has "
                                 f"{num_classes} classes")
        if cfg.weights:
            model = load_model(cfg.model, cfg.weights, **kwargs)
            if num_classes is not None and getattr(model, "rtseg_kwargs", {}).get("num_classes", num_classes) != num_classes:
                raise CheckpointError(f"{cfg.weights}: weights have {model.rtseg_kwargs.get('num_classes')} classes, "
                                      f"the dataset {num_classes}")
        else:
            model = create_model(cfg.model, **kwargs)
        if class_names:
            attach_meta(model, model.rtseg_name, model.rtseg_kwargs,
                        model.pretrained_cfg.replace(class_names=tuple(class_names), palette=tuple(palette),
                                                     source=f"trained with rtseg on {cfg.data}", licence="see dataset"))
        return model.train()

    def _install_signals(self) -> dict[int, Any]:
        def handler(signum, frame):  # noqa: ARG001
            self._signal = signum

        old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old[s] = signal.signal(s, handler)
            except ValueError:  # not in the main thread
                pass
        return old

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, dist_info = self.cfg, self.dist
        if cfg.batch_size % (dist_info.world_size * cfg.grad_accum):
            raise RtsegError(f"--batch-size {cfg.batch_size} does not divide by world size {dist_info.world_size} "
                             f"x grad accumulation {cfg.grad_accum}")
        if dist_info.is_main:
            check_output_dir(self.out)  # an unwritable --out fails now, not after the first epoch
        seed_everything(cfg.seed)
        dataset_probe = self.task.open(self.cfg, "train") if hasattr(self.task, "open") else None
        info = getattr(dataset_probe, "info", None)
        model = self.build_model(info.num_classes if info else None,
                                 info.class_names if info else (), info.palette if info else ())
        if cfg.sync_bn and dist_info.enabled:
            if self.device.type == "cpu":
                raise RtsegError("--sync-bn needs GPUs: torch's SyncBatchNorm does not run on the CPU (gloo)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last or cfg.compile:
            from .speed import prepare_for_training

            prepare_for_training(model, cfg)
        train_set = self.task.train_dataset(cfg, model)
        val_set = self.task.val_dataset(cfg, model)
        optimizer = make_optimizer(cfg, model)
        per_rank = cfg.batch_size // dist_info.world_size
        micro = per_rank // cfg.grad_accum
        steps_per_epoch = len(train_set) // cfg.batch_size
        if steps_per_epoch == 0:
            raise RtsegError(f"{cfg.data}: {len(train_set)} training samples, fewer than one batch of {cfg.batch_size}")
        total_steps = steps_per_epoch * cfg.epochs  # the schedule always spans --epochs
        stop_at = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)

        start_epoch, start_step, global_step, best = 0, 0, 0, -math.inf
        history: list[dict[str, Any]] = []
        last = self.out / "last.pt"
        if cfg.resume:
            if not last.exists():
                raise CheckpointError(f"{last}: nothing to resume (no last.pt in {self.out})")
            state = read_checkpoint(last)
            if state.get("model_name") != cfg.model:
                raise CheckpointError(f"{last}: is a checkpoint of model {state.get('model_name')!r}, not {cfg.model!r}")
            model_sd = state["state_dict"]
            load_state_dict_strict(model.module if hasattr(model, "module") else model, model_sd, str(last), cfg.model)
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
            best = state.get("best", -math.inf)
            history = state.get("history", [])
            set_rng_state(state["rng"])
            if dist_info.is_main:
                log.info("resumed from %s at epoch %d step %d", last, start_epoch, start_step)

        train_model: nn.Module = model
        if dist_info.enabled:
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=None if self.device.type == "cpu" else [self.device])
        if hasattr(self.task, "loss_fn") and hasattr(self.task, "make_loss"):
            self.task.loss_fn = self.task.make_loss(cfg, info.num_classes if info else 0)

        if dist_info.is_main:
            ensure_output_dir(self.out)  # config.json is written with the first checkpoint: a run that
            # fails on bad data before then leaves an earlier run's files in --out as they were
        old_handlers = self._install_signals()
        amp_dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16

        def save(epoch: int, step_in_epoch: int) -> None:
            if not dist_info.is_main:
                return
            write_text_atomic(self.out / "config.json", json.dumps(_jsonable(dataclasses.asdict(cfg)), indent=2))
            atomic_save(model_checkpoint(model, optimizer=optimizer.state_dict(), epoch=epoch,
                                         step_in_epoch=step_in_epoch, global_step=global_step, best=best,
                                         history=history, rng=rng_state(), train_config=_jsonable(dataclasses.asdict(cfg))),
                        last)

        result: dict[str, Any] = {}
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if global_step >= stop_at:
                    break
                order = epoch_order(cfg.seed, epoch, len(train_set))
                bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           unit="step", disable=not (cfg.progress and dist_info.is_main), dynamic_ncols=True)
                running, count, t0 = 0.0, 0, time.perf_counter()
                done_in_epoch = start_step
                for step in range(start_step, steps_per_epoch):
                    if global_step >= stop_at:
                        break
                    lr = lr_at(cfg, global_step, total_steps, steps_per_epoch)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    batch_idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                    mine = batch_idx[dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank]
                    optimizer.zero_grad(set_to_none=True)
                    loss_value = 0.0
                    for a in range(cfg.grad_accum):
                        chunk = mine[a * micro:(a + 1) * micro]
                        batch = self.task.collate([train_set[(epoch, i)] for i in chunk])
                        batch = _to_device(batch, self.device)
                        sync_ctx = (train_model.no_sync() if dist_info.enabled and a < cfg.grad_accum - 1
                                    else _nullcontext())
                        with sync_ctx:
                            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=cfg.amp):
                                losses = self.task.loss(train_model, batch, cfg)
                            total = losses["loss"]
                            if not torch.isfinite(total):
                                raise RtsegError(f"loss became {total.item()} at epoch {epoch + 1} step {step + 1}; "
                                                 f"lower --lr")
                            (total / cfg.grad_accum).backward()
                        loss_value += float(total.detach()) / cfg.grad_accum
                    optimizer.step()
                    global_step += 1
                    running += loss_value
                    count += 1
                    done_in_epoch = step + 1
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                    if dist_info.is_main and cfg.log_every and global_step % cfg.log_every == 0:
                        self._log_row({"epoch": epoch + 1, "step": global_step, "loss": loss_value, "lr": lr})
                    stop = self._signal is not None
                    if dist_info.enabled:
                        flag = torch.tensor([1.0 if stop else 0.0])
                        torch.distributed.all_reduce(flag)
                        stop = bool(flag.item() > 0)
                    if stop or (cfg.save_every and global_step % cfg.save_every == 0):
                        save(epoch, step + 1)
                    if stop:
                        signum = self._signal or signal.SIGTERM
                        bar.close()
                        raise Interrupted(f"stopped by signal {signal.Signals(signum).name}; checkpoint saved to "
                                          f"{last}; continue with --resume", int(signum))
                bar.close()
                if done_in_epoch < steps_per_epoch:  # --max-steps reached inside the epoch
                    save(epoch, done_in_epoch)
                    break
                start_step = 0
                epoch_loss = all_reduce_mean(running / max(count, 1), dist_info)
                row: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, "train_loss": epoch_loss,
                                       "seconds": time.perf_counter() - t0}
                if val_set is not None:
                    metrics = self.task.evaluate(model, val_set, progress=cfg.progress and dist_info.is_main,
                                                 distributed=dist_info)
                    row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                    score = metrics["score"]
                    score = -math.inf if math.isnan(score) else score  # a NaN mIoU never beats a number
                    if score > best or not (self.out / "best.pt").exists():
                        best = max(best, score)
                        if dist_info.is_main:
                            save_model(model, self.out / "best.pt")
                history.append(row)
                if dist_info.is_main:
                    self._log_epoch(row)
                    save(epoch + 1, 0)
                    save_model(model, self.out / "model.pt")
                result = row
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            barrier(dist_info)
        result = {**result, "best": best, "history": history, "out": str(self.out)}
        return result

    # -- logs ---------------------------------------------------------------------------------
    def _log_row(self, row: dict[str, Any]) -> None:
        path = self.out / "steps.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def _log_epoch(self, row: dict[str, Any]) -> None:
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
        log.info("epoch done: %s", " ".join(parts))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns the last epoch's row plus ``best`` and ``history``."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        cleanup(trainer.dist)
