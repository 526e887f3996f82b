"""DeepLabV3+: Encoder-Decoder with Atrous Separable Convolution (Chen et al., ECCV 2018).

Faithful to VainF/DeepLabV3Plus-Pytorch (``network/modeling.py``: ``deeplabv3plus_mobilenet``,
``deeplabv3plus_resnet50``/``101``), whose released VOC/Cityscapes checkpoints load with
:func:`convert_official_deeplabv3plus`. The model is split smp-style into

* an **encoder** returning ``(low_level, high_level)``: the stride-4 feature and the feature at
  ``output_stride`` (16 or 8, paper Sec. 3.1: the last stride(s) replaced by atrous convolution).
  Every encoder exposes ``out_channels = (C_low, C_high)`` and ``output_stride``:

  - ``mobilenet_v2``: :class:`MobileNetV2Encoder`, VainF's MobileNetV2 (24 / 320 channels);
  - ``resnet50`` / ``resnet101``: :class:`ResNetEncoder`, torchvision's ResNet v1.5 with
    ``replace_stride_with_dilation``, identical to VainF's copy (256 / 2048 channels);
  - ``xception65``: :class:`XceptionEncoder`, timm's aligned Xception-65 (256 / 2048 channels;
    VainF has no Xception checkpoint, so this backbone has no official weights).

* a **decoder** (:class:`DeepLabV3PlusDecoder`, paper Sec. 3.1 and Fig. 2): :class:`ASPP` on the
  high-level feature (1x1, three 3x3 atrous branches at rates 6/12/18 for output stride 16 and
  12/24/36 for 8, image pooling; concat -> 1x1 -> 256 -> Dropout(0.1)), bilinear upsampling to
  the low-level size, a 1x1 projection of the low-level feature to 48 channels, concat
  ``[low_level(48), aspp(256)]`` and one 3x3 conv 304 -> 256 (VainF uses one 3x3 conv where the
  paper's Table 3 picks two; the fixtures pin VainF's);
* a **head**: a 1x1 conv with bias to the classes, then bilinear upsampling (align_corners=False)
  to the input size.

``separable=True`` is the paper's atrous separable convolution (Sec. 3.2): every 3x3 conv of
ASPP and decoder becomes :class:`SeparableConv2d` (depthwise atrous 3x3 -> BN -> ReLU ->
pointwise 1x1 -> BN -> ReLU, as the paper's TensorFlow code). VainF's
``convert_to_separable_conv`` instead drops the inner BN/ReLU; its released checkpoints do not use
it, so no converter covers that variant.

All BNs have eps=1e-5. Any input size works: (N, 3, H, W) -> (N, num_classes, H, W).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import rename_keys
from ..config import PretrainedCfg, default_palette
from ..data.classes import VOC_CLASSES
from .layers import ConvNormAct, relu, resize_to

BACKBONES = ("mobilenet_v2", "resnet50", "resnet101", "xception65")
OUTPUT_STRIDES = (8, 16)
#: ASPP atrous rates per output stride (paper Sec. 4.1 / DeepLabV3 Sec. 3.3).
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48

#: Preprocessing of VainF's released VOC checkpoints (``predict.py``): RGB / 255, ImageNet
#: mean/std, the image at its own size (the network accepts any H, W), Pascal VOC classes.
DEEPLABV3PLUS_OFFICIAL_CFG = PretrainedCfg(
    size_divisor=1,
    class_names=VOC_CLASSES,
    palette=tuple((int(r), int(g), int(b)) for r, g, b in default_palette(len(VOC_CLASSES))),
    source="VainF/DeepLabV3Plus-Pytorch released VOC checkpoints (best_deeplabv3plus_<backbone>_voc_os16.pth)",
    licence="MIT (VainF/DeepLabV3Plus-Pytorch)",
    notes="official predict.py: RGB, ToTensor (/255), ImageNet Normalize; checkpoint = {'model_state': ...}",
)


def relu6(_: int) -> nn.Module:
    return nn.ReLU6(inplace=True)


def fixed_padding(kernel_size: int, dilation: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that keeps a k x k conv at ``dilation`` "same"."""
    total = kernel_size + (kernel_size - 1) * (dilation - 1) - 1
    return (total // 2, total - total // 2, total // 2, total - total // 2)


# --- encoders -----------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual with linear bottleneck (Sandler et al. 2018, Fig. 3(b)),
    as in VainF's backbone: the *input* is zero-padded by :func:`fixed_padding` (3, dilation)
    once, before the whole block, and every conv uses padding=0.

    pad -> [1x1 expand -> BN -> ReLU6] (if t != 1) -> 3x3 depthwise (stride, dilation) -> BN ->
    ReLU6 -> 1x1 project -> BN, plus the identity when stride 1 and C_in == C_out.
    (N, C_in, H, W) -> (N, C_out, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.padding = fixed_padding(3, dilation)
        self.expand = ConvNormAct(in_channels, hidden, 1, padding=0, act=relu6) if expand_ratio != 1 else None
        self.dw = ConvNormAct(hidden, hidden, 3, stride, padding=0, dilation=dilation, groups=hidden, act=relu6)
        self.project = ConvNormAct(hidden, out_channels, 1, padding=0, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x, self.padding)
        if self.expand is not None:
            y = self.expand(y)
        y = self.project(self.dw(y))
        return x + y if self.use_residual else y


#: (expansion t, channels c, repeats n, stride s) of MobileNetV2 (paper Table 2).
MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


class MobileNetV2Encoder(nn.Module):
    """VainF's MobileNetV2 (width 1.0) without its final 1x1 -> 1280 conv and classifier.

    Written by hand rather than taken from torchvision because VainF's variant pads differently
    and its released weights depend on it: the stem 3x3/s2 conv has **no padding** (129 -> 64),
    and each :class:`InvertedResidual` pads its input before the 1x1 expansion, so expansion, BN
    and ReLU6 also run on the zero border and the depthwise conv sees ReLU6(BN(0)) there
    instead of zeros. torchvision's MobileNetV2 changes the output by ~6e-2 on the fixtures.

    Once the running stride reaches ``output_stride`` the remaining strides become dilation
    (x s); the first block of such a group keeps the *previous* dilation (VainF's rule). At
    output stride 16 the 160- and 320-channel blocks run at stride 1 with dilation 2 (the first
    160 block at dilation 1).

    ``low_level`` = stem + blocks 1-3 (stride 4, 24 ch), ``high_level`` = blocks 4-17
    (``output_stride``, 320 ch); the children are numbered 0-3 and 4-17 like MobileNetV2's
    ``features`` (and VainF's slices of it). forward: (N, 3, H, W) -> (low, high).
    """

    def __init__(self, output_stride: int = 16,
                 setting: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTING) -> None:
        super().__init__()
        self.output_stride = output_stride
        layers: list[nn.Module] = [ConvNormAct(3, 32, 3, 2, padding=0, act=relu6)]
        in_ch, current_stride, dilation = 32, 2, 1
        for t, c, n, s in setting:
            previous_dilation = dilation
            if current_stride == output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, stride if i == 0 else 1,
                                               previous_dilation if i == 0 else dilation, t))
                in_ch = c
        # children keep MobileNetV2's layer numbering (``features.i``): low 0-3, high 4-17
        self.low_level = nn.Sequential(OrderedDict((str(i), m) for i, m in enumerate(layers) if i < 4))
        self.high_level = nn.Sequential(OrderedDict((str(i), m) for i, m in enumerate(layers) if i >= 4))
        self.out_channels = (24, in_ch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low_level(x)
        return low, self.high_level(low)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-50/101 (v1.5: stride in the 3x3 conv) without avgpool/fc.

    Output stride 16 dilates layer4 (dilation 2); 8 dilates layer3 and layer4 (2 and 4). Same
    graph and key names as VainF's ``network/backbone/resnet.py``. forward: (N, 3, H, W) ->
    (layer1 output: stride 4, 256 ch; layer4 output: ``output_stride``, 2048 ch).
    """

    def __init__(self, depth: int = 50, output_stride: int = 16) -> None:
        super().__init__()
        from torchvision.models import resnet50, resnet101

        build = {50: resnet50, 101: resnet101}[depth]
        net = build(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.output_stride = output_stride
        self.out_channels = (256, 2048)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


class XceptionEncoder(nn.Module):
    """The paper's modified aligned Xception-65 (Sec. 3.3, Fig. 4) from timm (``xception65``).

    timm's model fits the low/high contract as is: its stride-4 feature
    (``blocks.1.stack.act3``, 256 ch: entry-flow block 2 before its strided conv, the paper's
    low-level feature) and its last feature (2048 ch) at ``output_stride`` 16 or 8 (timm dilates
    the exit flow, and the middle flow too at 8). No weights are downloaded.
    forward: (N, 3, H, W) -> (low, high).
    """

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model("xception65", pretrained=False, features_only=True,
                                       output_stride=output_stride, out_indices=(1, 4))
        self.output_stride = output_stride
        ch = self.model.feature_info.channels()
        self.out_channels = (ch[0], ch[1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.model(x)
        return low, high


def build_encoder(backbone: str, output_stride: int) -> nn.Module:
    if backbone == "mobilenet_v2":
        return MobileNetV2Encoder(output_stride)
    if backbone in ("resnet50", "resnet101"):
        return ResNetEncoder(int(backbone[len("resnet"):]), output_stride)
    if backbone == "xception65":
        return XceptionEncoder(output_stride)
    raise ValueError(f"unknown DeepLabV3+ backbone {backbone!r}; valid: {', '.join(BACKBONES)}")


# --- ASPP and decoder ---------------------------------------------------------------------------

class SeparableConv2d(nn.Sequential):
    """Atrous separable convolution (paper Sec. 3.2, Fig. 3): depthwise 3x3 atrous conv -> BN ->
    ReLU -> pointwise 1x1 -> BN -> ReLU. Children ``depthwise`` and ``pointwise`` (ConvNormAct).
    (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__(OrderedDict(
            depthwise=ConvNormAct(in_channels, in_channels, kernel_size, dilation=dilation, groups=in_channels),
            pointwise=ConvNormAct(in_channels, out_channels, 1),
        ))


def conv3x3_block(in_channels: int, out_channels: int, dilation: int, separable: bool) -> nn.Module:
    """3x3 conv (padding = dilation) -> BN -> ReLU, or its :class:`SeparableConv2d` version."""
    if separable:
        return SeparableConv2d(in_channels, out_channels, 3, dilation)
    return ConvNormAct(in_channels, out_channels, 3, dilation=dilation, act=relu)


class ASPPPooling(ConvNormAct):
    """ASPP image-level features (DeepLabV3 Sec. 3.3): global average pool -> 1x1 conv -> BN ->
    ReLU -> broadcast back to H x W (the bilinear upsampling of a 1x1 map is a broadcast).
    (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1, act=relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(F.adaptive_avg_pool2d(x, 1))
        return y.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabV3 Sec. 3.3; DeepLabV3+ Fig. 2 encoder).

    ``branches``: [1x1 ConvBNReLU, three 3x3 atrous ConvBNReLU at ``rates``, ASPPPooling], each
    ``out_channels``; concat (5 x out_channels) -> ``project`` 1x1 ConvBNReLU -> Dropout(0.1).
    (N, C_in, H, W) -> (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, rates: Sequence[int] = (6, 12, 18), out_channels: int = ASPP_CHANNELS,
                 separable: bool = False) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            [ConvNormAct(in_channels, out_channels, 1, act=relu)]
            + [conv3x3_block(in_channels, out_channels, r, separable) for r in self.rates]
            + [ASPPPooling(in_channels, out_channels)]
        )
        self.project = ConvNormAct(len(self.branches) * out_channels, out_channels, 1, act=relu)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ decoder (paper Sec. 3.1, Fig. 2) including the ASPP of the encoder.

    high (N, C_high, H/os, W/os) -> ASPP -> 256 ch, bilinearly upsampled (align_corners=False)
    to the low-level size; low (N, C_low, H/4, W/4) -> ``low_level_project`` 1x1 ConvBNReLU ->
    48 ch; concat [low(48), aspp(256)] -> ``fuse`` 3x3 ConvBNReLU -> (N, 256, H/4, W/4).
    """

    def __init__(self, encoder_channels: tuple[int, int], output_stride: int = 16, separable: bool = False) -> None:
        super().__init__()
        low_ch, high_ch = encoder_channels
        self.aspp = ASPP(high_ch, ASPP_RATES[output_stride], ASPP_CHANNELS, separable)
        self.low_level_project = ConvNormAct(low_ch, LOW_LEVEL_CHANNELS, 1, act=relu)
        self.fuse = conv3x3_block(LOW_LEVEL_CHANNELS + ASPP_CHANNELS, ASPP_CHANNELS, 1, separable)
        self.out_channels = ASPP_CHANNELS

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.low_level_project(low)
        high = resize_to(self.aspp(high), tuple(low.shape[-2:]))
        return self.fuse(torch.cat([low, high], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ = encoder -> ASPP + decoder -> 1x1 head -> bilinear upsampling to the input.

    (N, 3, H, W) -> (N, num_classes, H, W) logits, any H, W, in train and eval mode.
    ``backbone`` is one of :data:`BACKBONES`, ``output_stride`` 16 or 8 (ASPP rates 6/12/18 or
    12/24/36), ``separable`` switches ASPP and decoder 3x3 convs to atrous separable ones.
    """

    def __init__(self, num_classes: int = 21, backbone: str = "mobilenet_v2", output_stride: int = 16,
                 separable: bool = False) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"DeepLabV3+ output_stride must be 8 or 16, got {output_stride!r}")
        self.num_classes = num_classes
        self.encoder = build_encoder(backbone, output_stride)
        self.decoder = DeepLabV3PlusDecoder(self.encoder.out_channels, output_stride, separable)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.encoder(x)
        logits = self.head(self.decoder(low, high))
        return resize_to(logits, tuple(x.shape[-2:]))


# --- official checkpoint conversion (VainF/DeepLabV3Plus-Pytorch key names) --------------------

_MBV2 = r"^backbone\.(low|high)_level_features\."
_DEEPLABV3PLUS_RULES: list[tuple[str, str]] = [
    # MobileNetV2 stem (ConvBNReLU = Sequential conv, bn, relu6)
    (_MBV2 + r"0\.0\.", r"encoder.\1_level.0.conv."),
    (_MBV2 + r"0\.1\.", r"encoder.\1_level.0.bn."),
    # block 1 (t=1): conv = [dw ConvBNReLU, project conv, project BN]
    (r"^backbone\.low_level_features\.1\.conv\.0\.0\.", "encoder.low_level.1.dw.conv."),
    (r"^backbone\.low_level_features\.1\.conv\.0\.1\.", "encoder.low_level.1.dw.bn."),
    (r"^backbone\.low_level_features\.1\.conv\.1\.", "encoder.low_level.1.project.conv."),
    (r"^backbone\.low_level_features\.1\.conv\.2\.", "encoder.low_level.1.project.bn."),
    # other blocks: conv = [expand ConvBNReLU, dw ConvBNReLU, project conv, project BN]
    (_MBV2 + r"(\d+)\.conv\.0\.0\.", r"encoder.\1_level.\2.expand.conv."),
    (_MBV2 + r"(\d+)\.conv\.0\.1\.", r"encoder.\1_level.\2.expand.bn."),
    (_MBV2 + r"(\d+)\.conv\.1\.0\.", r"encoder.\1_level.\2.dw.conv."),
    (_MBV2 + r"(\d+)\.conv\.1\.1\.", r"encoder.\1_level.\2.dw.bn."),
    (_MBV2 + r"(\d+)\.conv\.2\.", r"encoder.\1_level.\2.project.conv."),
    (_MBV2 + r"(\d+)\.conv\.3\.", r"encoder.\1_level.\2.project.bn."),
    # torchvision ResNet: same names
    (r"^backbone\.", "encoder."),
    # head
    (r"^classifier\.project\.0\.", "decoder.low_level_project.conv."),
    (r"^classifier\.project\.1\.", "decoder.low_level_project.bn."),
    (r"^classifier\.aspp\.convs\.([0-3])\.0\.", r"decoder.aspp.branches.\1.conv."),
    (r"^classifier\.aspp\.convs\.([0-3])\.1\.", r"decoder.aspp.branches.\1.bn."),
    (r"^classifier\.aspp\.convs\.4\.1\.", "decoder.aspp.branches.4.conv."),
    (r"^classifier\.aspp\.convs\.4\.2\.", "decoder.aspp.branches.4.bn."),
    (r"^classifier\.aspp\.project\.0\.", "decoder.aspp.project.conv."),
    (r"^classifier\.aspp\.project\.1\.", "decoder.aspp.project.bn."),
    (r"^classifier\.classifier\.0\.", "decoder.fuse.conv."),
    (r"^classifier\.classifier\.1\.", "decoder.fuse.bn."),
    (r"^classifier\.classifier\.3\.", "head."),
]


def convert_official_deeplabv3plus(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a VainF/DeepLabV3Plus-Pytorch ``deeplabv3plus_{mobilenet,resnet50,resnet101}``
    state_dict (already unwrapped from ``{"model_state": ...}``) to rtseg names.

    The rules are applied in order, each to the result of the previous ones.
    """
    return rename_keys(state_dict, _DEEPLABV3PLUS_RULES)


__all__ = [
    "DeepLabV3Plus", "DeepLabV3PlusDecoder", "ASPP", "ASPPPooling", "SeparableConv2d", "InvertedResidual",
    "MobileNetV2Encoder", "ResNetEncoder", "XceptionEncoder", "convert_official_deeplabv3plus",
]
