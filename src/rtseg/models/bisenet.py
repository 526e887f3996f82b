"""BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation (Yu et al., ECCV 2018).

Two released variants, each faithful to its reference code:

* :class:`BiSeNetV1` - CoinCheung/BiSeNet ``lib/models/bisenetv1.py`` ``BiSeNetV1(19)``
  (13,425,721 parameters with the two auxiliary heads): spatial path + ResNet-18 context path.
* :class:`BiSeNetFace` - zllrunning/face-parsing.PyTorch ``model.py`` ``BiSeNet(n_classes=19)``
  (13,300,416 parameters): no spatial path (ResNet layer2 feature instead), a two-layer FFM
  attention, bias-free classifiers and align_corners=True output upsampling.

Blocks, named as in the paper (Sec. 3, Fig. 2):

* :class:`SpatialPath` - three stride-2 conv-BN-ReLU (7x7, 3x3, 3x3) then 1x1 to 128 channels (1/8).
* :class:`ContextPath` - ResNet-18 (torchvision's, which is CoinCheung's ``Resnet18`` layer for
  layer, without ``fc``), a global-average "tail" on the 1/32 feature, two
  :class:`AttentionRefinementModule` (ARM, Sec. 3.2) and nearest up-sampling 1/32 -> 1/16 -> 1/8.
* :class:`FeatureFusionModule` - FFM (Sec. 3.3): concat -> 1x1 conv-BN-ReLU -> channel attention,
  ``feat * w + feat``.
* :class:`SegmentationHead` - 3x3 conv-BN-ReLU -> 1x1 classifier (main head and the two auxiliary
  heads of the paper's auxiliary loss, Sec. 3.4).

In training mode both models return ``(main, aux16, aux32)``; in eval mode only ``main``
(:meth:`BiSeNetBase.forward_all` gives all three in any mode, as the reference forwards do).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..checkpoint import rename_keys
from ..config import IMAGENET, PretrainedCfg
from ..data.classes import CELEBAMASK_CLASSES, CELEBAMASK_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .layers import ConvNormAct

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: CoinCheung's demo / eval preprocessing (``tools/demo.py``, ``lib/data/cityscapes_cv2.py``):
#: RGB in [0, 1], Cityscapes mean/std, sizes a multiple of 32 (the demo resizes up to the next
#: multiple; rtseg pads instead).
BISENET_V1_OFFICIAL_CFG = PretrainedCfg(
    mean=(0.3257, 0.3690, 0.3223),
    std=(0.2112, 0.2148, 0.2115),
    channel_order="RGB",
    pre_scale=1.0 / 255.0,
    post_scale=1.0,
    input_size=None,
    size_divisor=32,
    class_names=CITYSCAPES_CLASSES,
    palette=CITYSCAPES_PALETTE,
    source="CoinCheung/BiSeNet model_final_v1_city_new.pth (Cityscapes)",
    licence="MIT (CoinCheung/BiSeNet LICENSE, Copyright (c) 2018 CoinCheung)",
    notes="official demo: RGB/255, Cityscapes mean/std, H and W multiples of 32; weights trained on "
          "Cityscapes, whose terms of use also apply",
)

#: zllrunning's ``test.py``: PIL RGB image resized to 512x512 (bilinear), ``ToTensor`` and
#: ImageNet mean/std; class ids follow CelebAMask-HQ (0 background, 1 skin, ...).
BISENET_FACE_OFFICIAL_CFG = IMAGENET.replace(
    input_size=(512, 512),
    class_names=CELEBAMASK_CLASSES,
    palette=CELEBAMASK_PALETTE,
    source="zllrunning/face-parsing.PyTorch res/cp/79999_iter.pth (CelebAMask-HQ)",
    licence="MIT (zllrunning/face-parsing.PyTorch, as the project records it; the LICENSE text itself was not checked)",
    notes="official test: RGB resized to 512x512, ImageNet mean/std; weights trained on CelebAMask-HQ, "
          "which is for non-commercial research use only",
)


class ResNet18Features(nn.Module):
    """torchvision ResNet-18 without ``avgpool``/``fc``; keys ``conv1``, ``bn1``, ``layer1..4``.

    (N, 3, H, W) -> (C3, C4, C5): (N, 128, H/8, W/8), (N, 256, H/16, W/16), (N, 512, H/32, W/32)
    (each stride-2 step rounds up). Randomly initialised: rtseg never downloads weights.
    """

    out_channels = (128, 256, 512)
    reductions = (8, 16, 32)

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class ChannelAttention(nn.Module):
    """Channel attention from the global average: ``x * sigmoid(T(mean_hw(x)))``. (N, C, H, W) -> same.

    ``reduction=None``: T = 1x1 conv -> BN (the ARM, and CoinCheung's single-layer FFM).
    ``reduction=r``: T = 1x1 conv (C -> C/r) -> ReLU -> 1x1 conv (C/r -> C), the paper's FFM
    (zllrunning's variant). No conv has a bias.
    """

    def __init__(self, channels: int, reduction: Optional[int] = None) -> None:
        super().__init__()
        if reduction is None:
            layers = OrderedDict(conv=nn.Conv2d(channels, channels, 1, bias=False), bn=nn.BatchNorm2d(channels))
        else:
            hidden = channels // reduction
            layers = OrderedDict(fc1=nn.Conv2d(channels, hidden, 1, bias=False), relu=nn.ReLU(inplace=True),
                                 fc2=nn.Conv2d(hidden, channels, 1, bias=False))
        self.transform = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.transform(x.mean(dim=(2, 3), keepdim=True)))


class AttentionRefinementModule(nn.Module):
    """ARM (paper Sec. 3.2, Fig. 2(b)) as both references build it: a 3x3 conv-BN-ReLU to
    ``out_channels`` then :class:`ChannelAttention` (1x1 conv + BN + sigmoid on the global mean).
    (N, C_in, H, W) -> (N, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3)
        self.attention = ChannelAttention(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.conv(x))


class SpatialPath(nn.Module):
    """Spatial path (paper Sec. 3.1): (N, 3, H, W) -> (N, 128, H/8, W/8), rounding up."""

    def __init__(self, out_channels: int = 128) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(3, 64, 7, 2)
        self.conv2 = ConvNormAct(64, 64, 3, 2)
        self.conv3 = ConvNormAct(64, 64, 3, 2)
        self.conv_out = ConvNormAct(64, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class ContextPath(nn.Module):
    """Context path (paper Sec. 3.2) on ResNet-18. (N, 3, H, W) -> (C3, ctx8, ctx16).

    ``tail = conv1x1-BN-ReLU(mean_hw(C5))`` (global context, broadcast);
    ``ctx16 = refine32(nearest_up(ARM32(C5) + tail))`` at 1/16 and
    ``ctx8 = refine16(nearest_up(ARM16(C4) + ctx16))`` at 1/8, both 128 channels; ``C3`` is the
    backbone's 1/8 feature (128 channels). Nearest up-sampling goes to the next feature's exact
    size, which equals the reference's ``scale_factor=2`` whenever H and W are multiples of 32.
    """

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.backbone = ResNet18Features()
        _, c4, c5 = self.backbone.out_channels
        self.arm16 = AttentionRefinementModule(c4, channels)
        self.arm32 = AttentionRefinementModule(c5, channels)
        self.global_context = ConvNormAct(c5, channels, 1)
        self.refine32 = ConvNormAct(channels, channels, 3)
        self.refine16 = ConvNormAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, c5 = self.backbone(x)
        tail = self.global_context(c5.mean(dim=(2, 3), keepdim=True))
        ctx16 = self.refine32(F.interpolate(self.arm32(c5) + tail, size=c4.shape[-2:], mode="nearest"))
        ctx8 = self.refine16(F.interpolate(self.arm16(c4) + ctx16, size=c3.shape[-2:], mode="nearest"))
        return c3, ctx8, ctx16


class FeatureFusionModule(nn.Module):
    """FFM (paper Sec. 3.3, Fig. 2(c)). (N, C_s, H, W), (N, C_c, H, W) -> (N, C_out, H, W).

    ``feat = conv1x1-BN-ReLU(cat[spatial, context])``; ``out = feat * w + feat`` with ``w`` from
    :class:`ChannelAttention` (``reduction=None``: CoinCheung's conv + BN; ``reduction=4``: the
    paper's two-layer form, as zllrunning's).
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: Optional[int] = None) -> None:
        super().__init__()
        self.fuse = ConvNormAct(in_channels, out_channels, 1)
        self.attention = ChannelAttention(out_channels, reduction)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.fuse(torch.cat([spatial, context], dim=1))
        return self.attention(feat) + feat


class SegmentationHead(nn.Module):
    """3x3 conv-BN-ReLU -> 1x1 classifier. (N, C_in, H, W) -> (N, num_classes, H, W)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, *, bias: bool) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, mid_channels, 3)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x))


class BiSeNetBase(nn.Module):
    """What both variants share: a context path, an FFM, a main head on the fused 1/8 feature and
    two auxiliary heads (``aux16`` on the 1/8 context feature, ``aux32`` on the 1/16 one).

    Subclasses give :meth:`features` -> (fused, ctx8, ctx16) and :meth:`upsample`.
    """

    def __init__(self, num_classes: int, *, ffm_reduction: Optional[int], head_bias: bool) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.context_path = ContextPath()
        self.ffm = FeatureFusionModule(256, 256, ffm_reduction)
        self.head = SegmentationHead(256, 256, num_classes, bias=head_bias)
        self.aux16 = SegmentationHead(128, 64, num_classes, bias=head_bias)
        self.aux32 = SegmentationHead(128, 64, num_classes, bias=head_bias)

    def features(self, x: torch.Tensor) -> Outputs:
        raise NotImplementedError

    def upsample(self, logits: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
        raise NotImplementedError

    def forward_all(self, x: torch.Tensor) -> Outputs:
        """(main, aux16, aux32) logits at the output size, whatever the mode."""
        size = x.shape[-2:]
        fused, ctx8, ctx16 = self.features(x)
        return (self.upsample(self.head(fused), size, 8), self.upsample(self.aux16(ctx8), size, 8),
                self.upsample(self.aux32(ctx16), size, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor | Outputs:
        if self.training:
            return self.forward_all(x)
        fused, _, _ = self.features(x)
        return self.upsample(self.head(fused), x.shape[-2:], 8)


class BiSeNetV1(BiSeNetBase):
    """CoinCheung's BiSeNetV1. (N, 3, H, W) -> (N, num_classes, H, W) for H, W multiples of 32.

    The spatial path gives the 1/8 detail feature; the FFM attention is a single 1x1 conv + BN;
    the heads' classifiers have a bias; logits are up-sampled by a fixed factor (x8 main and
    aux16, x16 aux32) with bilinear align_corners=False. The reference needs multiples of 32;
    here other sizes run too, giving 8*ceil(H/8) for the main output (16*ceil(H/16) for aux32),
    and ``predict`` pads to 32 as the official config says.
    """

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__(num_classes, ffm_reduction=None, head_bias=True)
        self.spatial_path = SpatialPath()

    def features(self, x: torch.Tensor) -> Outputs:
        _, ctx8, ctx16 = self.context_path(x)
        return self.ffm(self.spatial_path(x), ctx8), ctx8, ctx16

    def upsample(self, logits: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
        return F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)


class BiSeNetFace(BiSeNetBase):
    """zllrunning's face-parsing BiSeNet. (N, 3, H, W) -> (N, num_classes, H, W), any H and W.

    No spatial path: the ResNet layer2 feature (1/8, 128 channels) takes its place in the FFM,
    whose attention is the two-layer form (256 -> 64 -> 256); bias-free classifiers; logits are
    resized to the input size with bilinear align_corners=True.
    """

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__(num_classes, ffm_reduction=4, head_bias=False)

    def features(self, x: torch.Tensor) -> Outputs:
        c3, ctx8, ctx16 = self.context_path(x)
        return self.ffm(c3, ctx8), ctx8, ctx16

    def upsample(self, logits: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


# --- official checkpoint conversion ------------------------------------------------------------

#: CoinCheung/BiSeNet and zllrunning/face-parsing.PyTorch share their key names (zllrunning's has
#: no ``sp.*`` and ``ffm.conv1/conv2`` instead of ``ffm.conv/bn``), so one rule list serves both.
_BISENET_RULES: list[tuple[str, str]] = [
    (r"^cp\.resnet\.", "context_path.backbone."),
    (r"^cp\.arm(16|32)\.conv_atten\.", r"context_path.arm\1.attention.transform.conv."),
    (r"^cp\.arm(16|32)\.bn_atten\.", r"context_path.arm\1.attention.transform.bn."),
    (r"^cp\.arm(16|32)\.conv\.", r"context_path.arm\1.conv."),
    (r"^cp\.conv_avg\.", "context_path.global_context."),
    (r"^cp\.conv_head32\.", "context_path.refine32."),
    (r"^cp\.conv_head16\.", "context_path.refine16."),
    (r"^sp\.", "spatial_path."),
    (r"^ffm\.convblk\.", "ffm.fuse."),
    (r"^ffm\.conv\.", "ffm.attention.transform.conv."),
    (r"^ffm\.bn\.", "ffm.attention.transform.bn."),
    (r"^ffm\.conv([12])\.", r"ffm.attention.transform.fc\1."),
    (r"^conv_out\.", "head."),
    (r"^conv_out(16|32)\.", r"aux\1."),
    (r"^(head|aux16|aux32)\.conv_out\.", r"\1.classifier."),
]


def _convert(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_keys(state_dict, _BISENET_RULES)


def convert_official_bisenet_v1(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a CoinCheung/BiSeNet ``BiSeNetV1`` state_dict (with ``conv_out16/32``) to rtseg names."""
    return _convert(state_dict)


def convert_official_bisenet_face(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a zllrunning/face-parsing.PyTorch ``BiSeNet`` state_dict (``79999_iter.pth``) to rtseg names."""
    return _convert(state_dict)
