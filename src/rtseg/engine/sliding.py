"""Sliding-window inference: logits of an image larger than the training crop, window by window.

The evaluation protocol of the street-scene papers whose networks are trained on crops
(mmsegmentation's ``mode='slide'``, CGNet's and BiSeNet's multi-crop testing): the normalised
image is covered by ``window``-sized crops placed every ``stride`` pixels, the last crop of each
row / column flush with the image border; each crop is run through the network on its own and
the logits of overlapping crops are *averaged* pixel by pixel. An image smaller than the window
is zero-padded (after normalisation, as :func:`rtseg.inference.prepare` pads) to the window and
the logits are cropped back.

Each crop follows the model's size rule for padded models (zero-pad to ``size_divisor``, crop
the logits back); a model's fixed ``input_size`` is *not* applied: the window is the network
input, at the image's own resolution.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one axis: ``0, stride, 2*stride, ...``, the last one moved
    back so that it ends at ``length`` (every pixel covered, no window outside the image).
    ``length <= window`` gives one window at 0."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got window={window} stride={stride}")
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(n)]


def _run(model: nn.Module, crop: torch.Tensor, size_divisor: int) -> torch.Tensor:
    """Network logits of one crop (N, 3, h, w) -> (N, C, h, w), padding to ``size_divisor``."""
    h, w = crop.shape[-2:]
    d = max(1, int(size_divisor))
    ph, pw = (-h) % d, (-w) % d
    out = model(F.pad(crop, (0, pw, 0, ph)) if ph or pw else crop)
    if isinstance(out, (tuple, list)):  # a model left in training mode: the main output
        out = out[0]
    if out.shape[-2] >= h and out.shape[-1] >= w:
        return out[..., :h, :w]
    return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


def sliding_window_logits(model: nn.Module, x: torch.Tensor, window: tuple[int, int],
                          stride: Optional[tuple[int, int]] = None, size_divisor: int = 1,
                          flip: bool = False) -> torch.Tensor:
    """Logits (N, C, H, W) of the normalised image batch ``x`` (N, 3, H, W), window by window.

    ``window`` = (h, w) of each crop; ``stride`` (default: two thirds of the window, rounded up)
    the step between crops. Where crops overlap the logits are the mean of the crops' logits.
    ``flip`` also runs each crop mirrored and averages the two. Call in eval mode under
    ``torch.inference_mode()`` (as :class:`~rtseg.engine.semantic.SemanticTask` does).
    """
    wh, ww = (int(v) for v in window)
    if stride is None:
        stride = (max(1, math.ceil(wh * 2 / 3)), max(1, math.ceil(ww * 2 / 3)))
    sh, sw = (int(v) for v in stride)
    if min(wh, ww, sh, sw) < 1:
        raise ValueError(f"window {window} and stride {stride} must be positive")
    n, _, h, w = x.shape
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    xp = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
    H, W = xp.shape[-2:]
    total: Optional[torch.Tensor] = None
    count = torch.zeros(1, 1, H, W, dtype=torch.float32, device=x.device)
    for y0 in window_starts(H, wh, sh):
        for x0 in window_starts(W, ww, sw):
            crop = xp[..., y0:y0 + wh, x0:x0 + ww]
            logits = _run(model, crop, size_divisor).float()
            if flip:
                logits = 0.5 * (logits + _run(model, crop.flip(-1), size_divisor).float().flip(-1))
            if total is None:
                total = logits.new_zeros(n, logits.shape[1], H, W)
            total[..., y0:y0 + wh, x0:x0 + ww] += logits
            count[..., y0:y0 + wh, x0:x0 + ww] += 1.0
    assert total is not None  # at least one window
    return (total / count)[..., :h, :w]
