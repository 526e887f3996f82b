"""Semantic-segmentation metrics from a confusion matrix (per-class IoU, mIoU, pixel accuracy).

The matrix is accumulated with one ``bincount`` per batch on the device of the predictions, so
evaluation does not copy masks to the CPU; distributed evaluation sums the matrices of all ranks
with :meth:`ConfusionMatrix.all_reduce` before reading the metrics.

IoU of class c (Jaccard index, as the Cityscapes / PASCAL VOC benchmarks define it):
``TP_c / (TP_c + FP_c + FN_c)`` accumulated over the whole dataset (not averaged per image).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def _finite_or_none(v: float) -> Optional[float]:
    return None if math.isnan(v) else float(v)


class ConfusionMatrix:
    """A (num_classes, num_classes) int64 count matrix: ``mat[target, prediction]``.

    ``update(pred, target)`` accepts torch tensors or numpy arrays: ``pred`` either class ids of
    ``target``'s shape or scores (N, C, H, W) (arg-maxed over dim 1). Pixels whose target is
    ``ignore_index`` are skipped. Classes absent from both target and prediction have IoU NaN and
    are left out of :meth:`miou` (nan-mean).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    # --- accumulation ---------------------------------------------------------------------------

    def reset(self) -> None:
        self.mat = torch.zeros_like(self.mat)

    @torch.no_grad()
    def update(self, pred: ArrayLike, target: ArrayLike) -> "ConfusionMatrix":
        """Add one batch. pred (..., H, W) ids or (N, C, H, W) scores; target (..., H, W) ids."""
        p, t = _as_tensor(pred), _as_tensor(target)
        if p.ndim == t.ndim + 1 and p.shape[1] == self.num_classes:
            p = p.argmax(1)
        if p.shape != t.shape:
            raise ValueError(f"prediction shape {tuple(p.shape)} does not match target shape {tuple(t.shape)}")
        p = p.to(device=t.device, dtype=torch.int64).reshape(-1)
        t = t.to(torch.int64).reshape(-1)
        valid = t != self.ignore_index
        p, t = p[valid], t[valid]
        c = self.num_classes
        if t.numel():
            if int(t.min()) < 0 or int(t.max()) >= c:
                bad = torch.unique(t[(t < 0) | (t >= c)])[:8].tolist()
                raise ValueError(f"target labels {bad} outside 0..{c - 1} (ignore index {self.ignore_index})")
            if int(p.min()) < 0 or int(p.max()) >= c:
                bad = torch.unique(p[(p < 0) | (p >= c)])[:8].tolist()
                raise ValueError(f"predicted labels {bad} outside 0..{c - 1}")
        counts = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
        if self.mat.device != counts.device:
            self.mat = self.mat.to(counts.device)
        self.mat += counts
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix of the same classes (e.g. from another worker) in place."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class confusion matrix into a "
                             f"{self.num_classes}-class one")
        self.mat = self.mat + other.mat.to(self.mat.device)
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrices of every rank (``torch.distributed`` SUM); a no-op when not distributed.

        Call it on every rank. The matrix must live on a device the backend supports (the device
        of the updates: CUDA for NCCL, CPU for gloo).
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.mat = self.mat.contiguous()
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    # --- metrics --------------------------------------------------------------------------------

    def _counts(self) -> np.ndarray:
        return self.mat.detach().cpu().numpy().astype(np.float64)

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.mat.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU ``TP / (TP + FP + FN)``, float64 (C,); NaN for classes absent from both
        target and prediction."""
        m = self._counts()
        tp = np.diag(m)
        denom = m.sum(0) + m.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is defined (NaN if none is)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels (NaN before any update)."""
        m = self._counts()
        total = m.sum()
        return float(np.trace(m) / total) if total > 0 else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall ``TP / (TP + FN)``, float64 (C,); NaN for classes absent from the target."""
        m = self._counts()
        gt = m.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gt > 0, np.diag(m) / np.maximum(gt, 1), np.nan)

    # --- reporting ------------------------------------------------------------------------------

    def _names(self, class_names: Optional[Sequence[str]]) -> list[str]:
        names = list(class_names or ())
        if names and len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names given for {self.num_classes} classes")
        return names or [f"class_{i}" for i in range(self.num_classes)]

    def table(self, class_names: Optional[Sequence[str]] = None) -> str:
        """A per-class table (IoU and accuracy in %, ``n/a`` when undefined) ending with mIoU and
        pixel accuracy."""
        names = self._names(class_names)
        iou, acc = self.iou(), self.class_accuracy()
        width = max(len("pixel accuracy"), *(len(n) for n in names))

        def pct(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{100.0 * v:.2f}"

        lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}", "-" * (width + 18)]
        lines += [f"{n:<{width}}  {pct(i):>7}  {pct(a):>7}" for n, i, a in zip(names, iou, acc)]
        lines.append("-" * (width + 18))
        lines.append(f"{'mIoU':<{width}}  {pct(self.miou()):>7}")
        lines.append(f"{'pixel accuracy':<{width}}  {pct(self.pixel_accuracy()):>7}")
        return "\n".join(lines)

    def to_dict(self, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """JSON-ready metrics (fractions in 0..1; undefined values are ``None``, never NaN)."""
        names = self._names(class_names)
        return {
            "miou": _finite_or_none(self.miou()),
            "pixel_accuracy": _finite_or_none(self.pixel_accuracy()),
            "iou": {n: _finite_or_none(v) for n, v in zip(names, self.iou())},
            "class_accuracy": {n: _finite_or_none(v) for n, v in zip(names, self.class_accuracy())},
            "num_pixels": self.total,
            "confusion_matrix": self.mat.detach().cpu().tolist(),
        }
