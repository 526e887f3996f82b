"""Blocks shared by several architectures.

Paper-specific blocks live in their architecture's file; only what two or more networks use
lives here (conv-norm-activation, norm-activation, channel shuffle, resizing helpers).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

ActFactory = Optional[Callable[[int], nn.Module]]


def prelu(channels: int) -> nn.Module:
    """Per-channel PReLU (SINet, CGNet)."""
    return nn.PReLU(channels)


def relu(_: int) -> nn.Module:
    return nn.ReLU(inplace=True)


class ConvNormAct(nn.Sequential):
    """``conv -> BatchNorm -> activation``; children are named ``conv``, ``bn``, ``act``.

    Shapes: (N, C_in, H, W) -> (N, C_out, H', W') with the usual conv arithmetic.
    ``padding=None`` means "same" padding for odd kernels: ``dilation * (k - 1) // 2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        padding: Optional[int] = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.1,
        act: ActFactory = relu,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        layers: list[tuple[str, nn.Module]] = [
            ("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)),
            ("bn", nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)),
        ]
        if act is not None:
            layers.append(("act", act(out_channels)))
        super().__init__(OrderedDict(layers))


class NormAct(nn.Sequential):
    """``BatchNorm -> activation`` (SINet's and CGNet's "BR"); children ``bn``, ``act``."""

    def __init__(self, channels: int, *, eps: float = 1e-5, momentum: float = 0.1, act: ActFactory = prelu) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(bn=nn.BatchNorm2d(channels, eps=eps, momentum=momentum))
        if act is not None:
            layers["act"] = act(channels)
        super().__init__(layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: (N, g*c, H, W) -> (N, c*g, H, W) with channels interleaved.

    A channels_last input stays channels_last (the shuffle permutes its innermost dimension), so
    the convolutions after it keep oneDNN's fast NHWC kernels in training."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
        return nhwc.permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def resize_to(x: torch.Tensor, size: tuple[int, int], *, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to ``size``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def up2_align_corners(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """``nn.UpsamplingBilinear2d(scale_factor=factor)``: bilinear, align_corners=True."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)
