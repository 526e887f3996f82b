"""SINet: Extreme Lightweight Portrait Segmentation (Park et al., WACV 2020).

Faithful to the official ``Dnc_SINet(classes=2, p=2, q=8, chnn=1)`` of
clovaai/ext_portrait_segmentation (86,910 parameters). Paper names are used for the blocks:

* :class:`S2Block` - Sec. 3.1, Fig. 3(b): avg-pool squeeze -> depthwise k x k conv -> BN ->
  PReLU -> pointwise conv -> bilinear up (align_corners=True) -> BN.
* :class:`S2Module` - Fig. 3(a): group pointwise conv (2 groups) + channel shuffle, two
  S2-blocks both fed the *whole* shuffled tensor, concat, residual (except the first module of a
  bottleneck), BN + PReLU.
* :class:`SqueezeExcite` + :class:`SEDepthwiseDownsample` - the SE-augmented depthwise
  separable stride-2 convolution. As in the official code the squeeze block ends in PReLU, not a
  sigmoid (unbounded channel attention).
* :class:`InformationBlockingDecoder` - Sec. 3.2, Fig. 2: the low-resolution prediction is
  upsampled, its per-pixel confidence ``max softmax`` gates the high-resolution features by
  ``1 - confidence`` before they are added.

Every upsampling is bilinear with ``align_corners=True`` and every BN has eps=1e-3 (official).
Valid input sizes are H, W in {32k-3, ..., 32k}; the output is (32*ceil(H/32), 32*ceil(W/32)).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import rename_keys
from .layers import ConvNormAct, NormAct, channel_shuffle, prelu, up2_align_corners

BN_EPS = 1e-3

#: (kernel, avg-pool factor) of the two S2-blocks of each S2-module, as the official
#: hard-coded ``config`` of ``Dnc_SINet``: entries 0-1 feed bottleneck 2, 2-9 bottleneck 3.
SINET_BLOCK_CONFIG: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((3, 1), (5, 1)), ((3, 1), (3, 1)),
    ((3, 1), (5, 1)), ((3, 1), (3, 1)), ((5, 1), (3, 2)), ((5, 2), (3, 4)),
    ((3, 1), (3, 1)), ((5, 1), (5, 1)), ((3, 2), (3, 4)), ((3, 1), (5, 2)),
)


class S2Block(nn.Module):
    """One S2-block (paper Fig. 3(b)). (N, C_in, H, W) -> (N, C_out, H, W).

    With ``pool > 1`` the block works at 1/pool resolution: AvgPool(pool) -> depthwise conv ->
    BN -> PReLU -> 1x1 conv -> bilinear x pool (align_corners=True) -> BN. H and W must be
    divisible by ``pool`` for the output to match the input size (as in the official code).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pool: int) -> None:
        super().__init__()
        self.pool = pool
        self.dw = nn.Conv2d(in_channels, in_channels, kernel_size, padding=(kernel_size - 1) // 2,
                            groups=in_channels, bias=False)
        self.dw_bn = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.act = nn.PReLU(in_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, self.pool)
        x = self.pw(self.act(self.dw_bn(self.dw(x))))
        if self.pool > 1:
            x = up2_align_corners(x, self.pool)
        return self.bn(x)


class S2Module(nn.Module):
    """S2-module (paper Fig. 3(a)). (N, C_in, H, W) -> (N, C_out, H, W).

    ``reduce``: 1x1 conv with 2 groups to n = C_out // 2 channels, then channel shuffle. Both
    S2-blocks receive the whole shuffled tensor; the first outputs n + (C_out - 2n) channels,
    the second n. Their concat gets the identity residual when ``residual`` (C_in == C_out),
    then BN + PReLU.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 blocks: Sequence[tuple[int, int]] = ((3, 1), (5, 1)), *, residual: bool = True) -> None:
        super().__init__()
        groups = len(blocks)
        n = out_channels // groups
        extra = out_channels - groups * n
        self.groups = groups
        self.residual = residual
        self.reduce = nn.Conv2d(in_channels, n, 1, groups=groups, bias=False)
        self.branches = nn.ModuleList(
            S2Block(n, n + (extra if i == 0 else 0), k, pool) for i, (k, pool) in enumerate(blocks)
        )
        self.norm_act = NormAct(out_channels, eps=BN_EPS, act=prelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(self.reduce(x), self.groups)
        out = torch.cat([branch(y) for branch in self.branches], dim=1)
        if self.residual:
            out = out + x
        return self.norm_act(out)


class SqueezeExcite(nn.Module):
    """SINet's squeeze block: global mean -> [Linear -> PReLU] x (1 or 2) -> scale the input.

    As in the official code there is no sigmoid: the weights are unbounded. ``divide`` is the
    channel reduction of the first Linear (1 = a single Linear + PReLU). (N, C, H, W) -> same.
    """

    def __init__(self, channels: int, divide: int = 1) -> None:
        super().__init__()
        if divide > 1:
            hidden = int(channels / divide)
            self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.PReLU(hidden),
                                    nn.Linear(hidden, channels), nn.PReLU(channels))
        else:
            self.fc = nn.Sequential(nn.Linear(channels, channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3)))
        return x * w[:, :, None, None]


class SEDepthwiseDownsample(nn.Module):
    """SE-augmented depthwise separable stride-2 conv: dw 3x3 s2 -> SE -> 1x1 -> BN -> PReLU.

    (N, C_in, H, W) -> (N, C_out, ceil(H/2), ceil(W/2)).
    """

    def __init__(self, in_channels: int, out_channels: int, divide: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.se = SqueezeExcite(in_channels, divide)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm_act = NormAct(out_channels, eps=BN_EPS, act=prelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_act(self.pw(self.se(self.dw(x))))


class SINetEncoder(nn.Module):
    """Encoder: stem (1/2) -> SE down (1/4) -> bottleneck 2 (p S2-modules) -> concat + BR ->
    SE down (1/8) -> bottleneck 3 (q S2-modules) -> concat + BR -> 1x1 classifier (1/8).

    ``forward`` returns (encoder logits at 1/8, bottleneck-2 features at 1/4).
    """

    def __init__(self, num_classes: int, p: int, q: int, chnn: int,
                 block_config: Sequence[Sequence[tuple[int, int]]]) -> None:
        super().__init__()
        if len(block_config) < 2 + q or p > 2:
            raise ValueError(f"block_config has {len(block_config)} entries; SINet needs p<=2 and 2+q entries")
        dim1, dim2, dim3 = 16, 48 + 4 * (chnn - 1), 96 + 4 * (chnn - 1)
        self.stem = ConvNormAct(3, 12, 3, 2, eps=BN_EPS, act=prelu)
        self.down2 = SEDepthwiseDownsample(12, dim1, divide=1)
        self.stage2 = nn.Sequential(*[
            S2Module(dim1 if i == 0 else dim2, dim2, block_config[i], residual=i > 0) for i in range(p)])
        self.fuse2 = NormAct(dim1 + dim2, eps=BN_EPS, act=prelu)
        self.down3 = SEDepthwiseDownsample(dim1 + dim2, dim2, divide=2)
        self.stage3 = nn.Sequential(*[
            S2Module(dim2 if i == 0 else dim3, dim3, block_config[2 + i], residual=i > 0) for i in range(q)])
        self.fuse3 = NormAct(dim2 + dim3, eps=BN_EPS, act=prelu)
        self.classifier = nn.Conv2d(dim2 + dim3, num_classes, 1, bias=False)
        self.high_channels = dim2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2_0 = self.down2(self.stem(x))
        x2 = self.stage2(x2_0)
        x3_0 = self.down3(self.fuse2(torch.cat([x2_0, x2], dim=1)))
        x3 = self.stage3(x3_0)
        logits = self.classifier(self.fuse3(torch.cat([x3_0, x3], dim=1)))
        return logits, x2


class InformationBlockingDecoder(nn.Module):
    """Information blocking decoder (paper Sec. 3.2).

    ``s1 = BN(up(enc_logits))`` (1/4), ``gate = 1 - max_c softmax(s1)`` (N, 1, H/4, W/4),
    ``s2 = BN(up(CBR(high) * gate + s1))`` (1/2), output ``conv3x3(up(s2))`` (1/1).
    """

    def __init__(self, high_channels: int, num_classes: int) -> None:
        super().__init__()
        self.low_bn = nn.BatchNorm2d(num_classes, eps=BN_EPS)
        self.high_proj = ConvNormAct(high_channels, num_classes, 1, eps=BN_EPS, act=prelu)
        self.fuse_bn = nn.BatchNorm2d(num_classes, eps=BN_EPS)
        self.classifier = nn.Conv2d(num_classes, num_classes, 3, 1, 1, bias=False)

    def forward(self, low_logits: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        s1 = self.low_bn(up2_align_corners(low_logits))
        gate = 1.0 - torch.softmax(s1, dim=1).amax(dim=1, keepdim=True)
        s2 = self.fuse_bn(up2_align_corners(self.high_proj(high) * gate + s1))
        return self.classifier(up2_align_corners(s2))


class SINet(nn.Module):
    """SINet (encoder + information blocking decoder). (N, 3, H, W) -> (N, classes, H', W').

    H' = 32*ceil(H/32) when H is in {32k-3..32k}; rtseg's ``predict`` pads inputs to a multiple
    of 32, which is always valid, and crops the logits back.
    """

    def __init__(self, num_classes: int = 2, *, p: int = 2, q: int = 8, chnn: int = 1,
                 block_config: Sequence[Sequence[tuple[int, int]]] = SINET_BLOCK_CONFIG) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = SINetEncoder(num_classes, p, q, chnn, block_config)
        self.decoder = InformationBlockingDecoder(self.encoder.high_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.encoder(x)
        return self.decoder(low, high)


# --- official checkpoint conversion (clovaai/ext_portrait_segmentation key names) ---------------

_SINET_RULES: list[tuple[str, str]] = [
    (r"^encoder\.level1\.", "encoder.stem."),
    (r"^encoder\.level2_0\.", "encoder.down2."),
    (r"^encoder\.level3_0\.", "encoder.down3."),
    (r"^encoder\.level2\.(\d+)\.", r"encoder.stage2.\1."),
    (r"^encoder\.level3\.(\d+)\.", r"encoder.stage3.\1."),
    (r"^encoder\.BR2\.", "encoder.fuse2."),
    (r"^encoder\.BR3\.", "encoder.fuse3."),
    (r"^encoder\.classifier\.conv\.", "encoder.classifier."),
    # SEseparableCBR internals
    (r"\.(down[23])\.conv\.0\.", r".\1.dw."),
    (r"\.(down[23])\.conv\.1\.dense\.", r".\1.se.fc."),
    (r"\.(down[23])\.conv\.2\.", r".\1.pw."),
    (r"\.(down[23])\.(bn|act)\.", r".\1.norm_act.\2."),
    # S2module internals
    (r"\.c1\.conv\.", ".reduce."),
    (r"\.d1\.", ".branches.0."),
    (r"\.d2\.", ".branches.1."),
    (r"\.BR\.", ".norm_act."),
    (r"\.branches\.(\d)\.conv\.0\.", r".branches.\1.dw."),
    (r"\.branches\.(\d)\.conv\.1\.", r".branches.\1.dw_bn."),
    (r"\.branches\.(\d)\.act_conv1x1\.0\.", r".branches.\1.act."),
    (r"\.branches\.(\d)\.act_conv1x1\.1\.", r".branches.\1.pw."),
    # decoder
    (r"^bn_3\.", "decoder.low_bn."),
    (r"^level2_C\.", "decoder.high_proj."),
    (r"^bn_2\.", "decoder.fuse_bn."),
    (r"^classifier\.1\.", "decoder.classifier."),
]


def convert_official_sinet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a clovaai/ext_portrait_segmentation ``Dnc_SINet`` state_dict to rtseg names."""
    return rename_keys(state_dict, _SINET_RULES)
