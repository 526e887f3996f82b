"""VoVNetV2 backbones of CenterMask (Lee & Park, CVPR 2020, Sec. 3.3), as youngwanLEE/centermask2.

Faithful to ``centermask/modeling/backbone/vovnet.py`` of youngwanLEE/centermask2 (checked
against its parity fixtures ``vovnet19_slim_dw_ese``, ``vovnet19_ese`` and ``vovnet39_ese``).
Blocks, named as in the paper:

* :class:`ConvNormReLU` / :class:`DWConvNormReLU` - 3x3 (or 1x1) conv -> norm -> ReLU, and the
  depthwise-separable variant of the ``-dw`` backbones: depthwise 3x3 (no norm, no activation)
  -> pointwise 1x1 -> norm -> ReLU.
* :class:`EffectiveSE` - eSE (Sec. 3.3): global average pool -> ONE 1x1 conv with bias and no
  channel reduction -> hard sigmoid ``relu6(x + 3) / 6`` -> re-weight the channels.
* :class:`OSAModule` - One-Shot Aggregation: ``layer_per_block`` 3x3 conv layers in sequence,
  concat([module input, every layer output]) -> 1x1 "aggregation" conv -> eSE, plus the
  identity residual on the 2nd and later modules of a stage (VoVNetV2).
* :class:`OSAStage` - ``MaxPool2d(3, stride 2, ceil_mode=True)`` (stages 3-5) then the modules.
* :class:`VoVNet` - stem of three 3x3 convs (stride 2, 1, 2: output stride 4) and stages 2-5 at
  strides 4, 8, 16, 32. The variants are data: :data:`VOVNET_SPECS`.

Quirks of the official graph kept on purpose:

* **eSE in every OSA module.** ``_OSA_stage`` sets ``SE=False`` for multi-module stages but
  ``_OSA_module`` ignores the flag, so V-39/V-57 have eSE in ``OSA4_1`` and ``OSA5_1`` too.
* The concat takes the module input *before* the ``-dw`` variants' 1x1 channel reduction, and the
  reduction exists only when the input width differs from the stage width (not in V-19-slim-dw's
  stage 2, where both are 64).
* The stem's first conv is a regular conv even in the ``-dw`` variants.
* Norm is FrozenBN by default (centermask2's ``MODEL.VOVNET.NORM``), eps 1e-5, where weight and
  bias are buffers (``torchvision.ops.FrozenBatchNorm2d``); ``norm="BN"`` / ``"GN"`` train it.

**Why not timm's VovNet.** timm (``timm.models.vovnet``) has the same stem, ceil-mode pooling,
depthwise blocks and eSE, but it builds eSE only in the *last* OSA block of each stage, so its
V-39/V-57 graphs differ from centermask2's (which has eSE in every block); its key names would
also not make the official checkpoint layout any easier to map. The few blocks are written here.

Features contract: ``VoVNet.feature_info`` is ``{name: (channels, stride)}`` for ``stem``,
``stage2`` ... ``stage5``; ``forward(x)`` returns ``{name: tensor}`` for ``out_features``.
Input (N, 3, H, W) -> stage k at (ceil-mode) H / 2^k.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from ..checkpoint import rename_key

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class VoVNetSpec:
    """One VoVNet variant (the official ``_STAGE_SPECS`` entry)."""

    stem: tuple[int, int, int]
    stage_conv_ch: tuple[int, int, int, int]
    stage_out_ch: tuple[int, int, int, int]
    layer_per_block: int
    block_per_stage: tuple[int, int, int, int]
    depthwise: bool


_WIDE = dict(stage_conv_ch=(128, 160, 192, 224), stage_out_ch=(256, 512, 768, 1024))
_SLIM = dict(stage_conv_ch=(64, 80, 96, 112), stage_out_ch=(112, 256, 384, 512))

#: centermask2's ``MODEL.VOVNET.CONV_BODY`` names -> variant. All are eSE (VoVNetV2) variants.
VOVNET_SPECS: dict[str, VoVNetSpec] = {
    "V-19-slim-dw-eSE": VoVNetSpec((64, 64, 64), layer_per_block=3, block_per_stage=(1, 1, 1, 1), depthwise=True, **_SLIM),
    "V-19-dw-eSE": VoVNetSpec((64, 64, 64), layer_per_block=3, block_per_stage=(1, 1, 1, 1), depthwise=True, **_WIDE),
    "V-19-slim-eSE": VoVNetSpec((64, 64, 128), layer_per_block=3, block_per_stage=(1, 1, 1, 1), depthwise=False, **_SLIM),
    "V-19-eSE": VoVNetSpec((64, 64, 128), layer_per_block=3, block_per_stage=(1, 1, 1, 1), depthwise=False, **_WIDE),
    "V-39-eSE": VoVNetSpec((64, 64, 128), layer_per_block=5, block_per_stage=(1, 1, 2, 2), depthwise=False, **_WIDE),
    "V-57-eSE": VoVNetSpec((64, 64, 128), layer_per_block=5, block_per_stage=(1, 1, 4, 3), depthwise=False, **_WIDE),
    "V-99-eSE": VoVNetSpec((64, 64, 128), layer_per_block=5, block_per_stage=(1, 3, 9, 3), depthwise=False, **_WIDE),
}

STAGE_NAMES = ("stage2", "stage3", "stage4", "stage5")


def make_norm(kind: str) -> Callable[[int], nn.Module]:
    """Norm layer factory of ``MODEL.VOVNET.NORM``: ``FrozenBN`` (default), ``BN`` or ``GN``."""
    if kind == "FrozenBN":
        return lambda c: FrozenBatchNorm2d(c, eps=1e-5)
    if kind == "BN":
        return lambda c: nn.BatchNorm2d(c, eps=1e-5)
    if kind == "GN":
        return lambda c: nn.GroupNorm(32, c)
    raise ValueError(f"unknown VoVNet norm {kind!r}; choose FrozenBN, BN or GN")


class ConvNormReLU(nn.Sequential):
    """``conv (no bias) -> norm -> ReLU``; children ``conv``, ``norm``, ``act``.

    (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)) for k=3 (padding 1) or k=1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 norm: Callable[[int], nn.Module] = make_norm("FrozenBN")) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            norm=norm(out_channels),
            act=nn.ReLU(inplace=True),
        ))


class DWConvNormReLU(nn.Sequential):
    """Depthwise-separable conv of the ``-dw`` variants: depthwise 3x3 (stride, no norm/act) ->
    pointwise 1x1 -> norm -> ReLU; children ``dw``, ``pw``, ``norm``, ``act``.

    (N, C, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)). As in the official
    ``dw_conv3x3`` the depthwise conv has ``groups = C_out``, so it needs C_in == C_out.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm: Callable[[int], nn.Module] = make_norm("FrozenBN")) -> None:
        if in_channels != out_channels:
            raise ValueError(f"depthwise conv needs in_channels == out_channels, got {in_channels} != {out_channels}")
        super().__init__(OrderedDict(
            dw=nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=out_channels, bias=False),
            pw=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            norm=norm(out_channels),
            act=nn.ReLU(inplace=True),
        ))


class EffectiveSE(nn.Module):
    """eSE (paper Sec. 3.3, Eq. 1): ``x * hsigmoid(W_C(GAP(x)))`` with one C x C 1x1 conv (bias)
    and no channel reduction; hsigmoid(x) = relu6(x + 3) / 6. (N, C, H, W) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class OSAModule(nn.Module):
    """One-Shot Aggregation module with eSE and optional identity (VoVNetV2, Fig. 2 of the paper).

    (N, C_in, H, W) -> (N, C_concat, H, W). ``x_0 = x``; ``x_i = layer_i(x_{i-1})`` (after the
    optional 1x1 ``reduction`` for the -dw variants); ``y = eSE(aggregation(cat[x, x_1..x_n]))``;
    ``y + x`` when ``identity`` (needs C_in == C_concat).
    """

    def __init__(self, in_channels: int, stage_channels: int, concat_channels: int, layer_per_block: int, *,
                 identity: bool = False, depthwise: bool = False,
                 norm: Callable[[int], nn.Module] = make_norm("FrozenBN")) -> None:
        super().__init__()
        self.identity = identity
        self.reduction = (ConvNormReLU(in_channels, stage_channels, 1, norm=norm)
                          if depthwise and in_channels != stage_channels else None)
        layers = []
        ch = stage_channels if self.reduction is not None else in_channels
        for _ in range(layer_per_block):
            if depthwise:
                layers.append(DWConvNormReLU(ch, stage_channels, norm=norm))
            else:
                layers.append(ConvNormReLU(ch, stage_channels, 3, norm=norm))
            ch = stage_channels
        self.layers = nn.ModuleList(layers)
        self.aggregation = ConvNormReLU(in_channels + layer_per_block * stage_channels, concat_channels, 1, norm=norm)
        self.ese = EffectiveSE(concat_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        y = self.reduction(x) if self.reduction is not None else x
        for layer in self.layers:
            y = layer(y)
            outputs.append(y)
        y = self.ese(self.aggregation(torch.cat(outputs, dim=1)))
        return y + x if self.identity else y


class OSAStage(nn.Module):
    """Stage k (2..5): ``MaxPool2d(3, 2, ceil_mode=True)`` unless ``pool=False`` (stage 2), then
    ``num_blocks`` OSA modules (identity on all but the first).

    (N, C_in, H, W) -> (N, C_concat, ceil((H - 3) / 2) + 1, ...) with pooling, else same size.
    """

    def __init__(self, in_channels: int, stage_channels: int, concat_channels: int, num_blocks: int,
                 layer_per_block: int, *, pool: bool, depthwise: bool,
                 norm: Callable[[int], nn.Module] = make_norm("FrozenBN")) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True) if pool else None
        self.blocks = nn.Sequential(*[
            OSAModule(in_channels if i == 0 else concat_channels, stage_channels, concat_channels, layer_per_block,
                      identity=i > 0, depthwise=depthwise, norm=norm)
            for i in range(num_blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        return self.blocks(x)


class VoVNet(nn.Module):
    """VoVNetV2 backbone. ``forward(x)`` -> ``{name: feature}`` for ``out_features``.

    Args:
        conv_body: a key of :data:`VOVNET_SPECS` (centermask2's ``MODEL.VOVNET.CONV_BODY``).
        in_channels: input channels (3).
        out_features: any of ``stem``, ``stage2`` ... ``stage5`` (CenterMask uses stage3-5).
        norm: ``FrozenBN`` (official default), ``BN`` or ``GN``.
        freeze_at: freeze (``requires_grad=False``) the stem (1) and stages 2.. (2, 3, ...), as
            ``MODEL.BACKBONE.FREEZE_AT``; 0 (the CenterMask configs) freezes nothing.
    """

    def __init__(self, conv_body: str = "V-39-eSE", in_channels: int = 3,
                 out_features: Sequence[str] = ("stage3", "stage4", "stage5"), norm: str = "FrozenBN",
                 freeze_at: int = 0) -> None:
        super().__init__()
        if conv_body not in VOVNET_SPECS:
            raise ValueError(f"unknown VoVNet conv_body {conv_body!r}; choose one of {', '.join(VOVNET_SPECS)}")
        unknown = [f for f in out_features if f not in ("stem",) + STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown VoVNet out_features {unknown}; choose from stem, {', '.join(STAGE_NAMES)}")
        spec = VOVNET_SPECS[conv_body]
        norm_layer = make_norm(norm)
        self.out_features = tuple(out_features)
        s = spec.stem
        if spec.depthwise:
            stem_2: nn.Module = DWConvNormReLU(s[0], s[1], 1, norm=norm_layer)
            stem_3: nn.Module = DWConvNormReLU(s[1], s[2], 2, norm=norm_layer)
        else:
            stem_2 = ConvNormReLU(s[0], s[1], 3, 1, norm=norm_layer)
            stem_3 = ConvNormReLU(s[1], s[2], 3, 2, norm=norm_layer)
        self.stem = nn.Sequential(ConvNormReLU(in_channels, s[0], 3, 2, norm=norm_layer), stem_2, stem_3)
        info = {"stem": (s[2], 4)}
        in_ch = s[2]
        for i, name in enumerate(STAGE_NAMES):
            self.add_module(name, OSAStage(in_ch, spec.stage_conv_ch[i], spec.stage_out_ch[i], spec.block_per_stage[i],
                                           spec.layer_per_block, pool=i > 0, depthwise=spec.depthwise, norm=norm_layer))
            in_ch = spec.stage_out_ch[i]
            info[name] = (in_ch, 4 * 2 ** i)
        #: ``{name: (channels, stride)}`` of every feature this backbone can return.
        self.feature_info: dict[str, tuple[int, int]] = info
        self._init_weights()
        self._freeze(freeze_at)

    def _init_weights(self) -> None:
        # official: kaiming_normal_ (fan_in) on every conv, including eSE's (biases keep torch defaults)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def _freeze(self, freeze_at: int) -> None:
        parts = [self.stem] + [getattr(self, n) for n in STAGE_NAMES]
        for part in parts[:max(freeze_at, 0)]:
            for p in part.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        if "stem" in self.out_features:
            out["stem"] = x
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            if name in self.out_features:
                out[name] = x
            if len(out) == len(self.out_features):
                break
        return out


# --- official checkpoint keys ------------------------------------------------------------------

def _stem_index(m: re.Match) -> str:
    return f"stem.{int(m.group(1)) - 1}."


def _osa(m: re.Match) -> str:
    stage, block = m.group(1), int(m.group(2)) - 1
    return f"stage{stage}.blocks.{block}."


#: Ordered (pattern, replacement) rules from centermask2's VoVNet keys (slashes inside names) to
#: rtseg's. Applied in order to every key with ``re.sub``.
VOVNET_KEY_RULES: list[tuple[str, object]] = [
    (r"^stem\.stem_(\d)/", _stem_index),
    (r"^stage(\d)\.OSA\d_(\d+)\.", _osa),
    (r"\.layers\.(\d+)\.OSA\d_\d+_\d+/", r".layers.\1."),
    (r"\.concat\.OSA\d_\d+_concat/", r".aggregation."),
    (r"\.conv_reduction\.OSA\d_\d+_reduction_0/", r".reduction."),
    (r"\.dw_conv3x3\.", r".dw."),
    (r"\.pw_conv1x1\.", r".pw."),
    (r"\.pw_norm\.", r".norm."),
]


def rename_vovnet_key(key: str) -> str:
    """One centermask2 VoVNet key (without the ``backbone.bottom_up.`` prefix) -> rtseg's."""
    return rename_key(key, VOVNET_KEY_RULES)


def convert_official_vovnet(state_dict: StateDict) -> StateDict:
    """centermask2 ``VoVNet`` state_dict (e.g. ``stem.stem_1/conv.weight``,
    ``stage2.OSA2_1.layers.0.OSA2_1_0/conv.weight``) -> :class:`VoVNet` keys. A
    ``backbone.bottom_up.`` prefix (full CenterMask checkpoints) is removed first."""
    prefix = "backbone.bottom_up."
    return {rename_vovnet_key(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


__all__ = ["VOVNET_SPECS", "VoVNetSpec", "VoVNet", "OSAModule", "OSAStage", "EffectiveSE", "ConvNormReLU",
           "DWConvNormReLU", "make_norm", "convert_official_vovnet", "rename_vovnet_key"]
