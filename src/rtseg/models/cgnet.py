"""CGNet: A Light-weight Context Guided Network for Semantic Segmentation (Wu et al., TIP 2020).

Faithful to the official ``Context_Guided_Network(classes=19, M=3, N=21)`` of
wutianyiRosun/CGNet ``model/CGNet.py`` (496,306 parameters). Paper names are used for the blocks:

* :class:`GlobalContextExtractor` - f_glo (Sec. 3.1, Fig. 3): global average pool -> FC (C -> C/r)
  -> ReLU -> FC (C/r -> C) -> sigmoid, the result re-weights the channels of the joint feature.
* :class:`ContextGuidedBlock` - the CG block (Sec. 3.1, Fig. 3): a 1x1 conv-BN-PReLU halves the
  channels, f_loc (channel-wise 3x3) and f_sur (channel-wise dilated 3x3) run in parallel,
  f_joi = concat -> BN -> PReLU, then f_glo, then global residual learning ``x + f_glo(...)``.
  With ``down=True`` it is the down-sampling CG block: the first conv is a 3x3 stride-2
  conv-BN-PReLU to the full width, f_joi is followed by a 1x1 conv ``reduce`` (2C -> C) and there
  is no residual.
* :class:`InputInjection` - the input image average-pooled to 1/2 or 1/4 (Sec. 3.2) and
  concatenated into the stage outputs.

Network (Sec. 3.2, Table 1): stage 1 = three 3x3 conv-BN-PReLU (the first stride 2, 32 channels);
stage 2 = M CG blocks at 1/4 (64 channels, dilation 2, r = 8); stage 3 = N CG blocks at 1/8
(128 channels, dilation 4, r = 16); 1x1 classifier; bilinear (align_corners=False) upsampling to
the input size. The stage concatenations follow the official code, which differs per stage:
``[stage1, input/2]``, ``[last stage-2 block, stage-2 down block, input/4]`` and
``[stage-3 down block, last stage-3 block]``, each followed by BN + PReLU. All BNs use eps=1e-3.
Any input size works; the output has the input's size.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import rename_keys
from ..config import PretrainedCfg
from ..data.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .layers import ConvNormAct, NormAct, prelu

BN_EPS = 1e-3

#: Preprocessing of the official Cityscapes weights (``dataset/cityscapes.py`` + ``cityscapes_eval.py``):
#: cv2 (BGR) image -> ``image[:, :, ::-1]`` (the comment says "to BGR" but it yields RGB) ->
#: ``image -= mean``; no std, no /255; the full image at its own size (no padding or resizing).
#: The official ``mean`` comes from ``dataset/wtfile/cityscapes_inform.pkl``, made on first run by
#: ``CityscapesTrainInform`` over the trainval list and not in the repository. The only values
#: written in the repository are the ``CityscapesDataSet`` docstring's
#: ``bgr_mean (73.15835921, 82.90891754, 72.39239876)``; they are used here in that order,
#: because the official code subtracts the stored vector element-wise from the channel-reversed
#: (RGB) image whatever its name says. (Blue and red means differ by < 1, so the naming mix-up is
#: numerically harmless.)
CGNET_OFFICIAL_CFG = PretrainedCfg(
    mean=(73.15835921, 82.90891754, 72.39239876),
    std=(1.0, 1.0, 1.0),
    channel_order="RGB",
    pre_scale=1.0,
    post_scale=1.0,
    input_size=None,
    size_divisor=1,
    class_names=CITYSCAPES_CLASSES,
    palette=CITYSCAPES_PALETTE,
    source="wutianyiRosun/CGNet checkpoint/cityscapes/CGNet_M3N21bs16gpu2_ontrain/model_1.pth "
           "(Cityscapes fine train set, M=3, N=21)",
    licence="MIT (wutianyiRosun/CGNet LICENSE, Copyright (c) 2018 Tianyi Wu)",
    notes="official eval: cv2 image channel-reversed to RGB, minus the dataset mean (0..255 units), "
          "no std, full resolution; mean taken from the dataset/cityscapes.py docstring (the official "
          "pickle is not published); weights trained on Cityscapes, whose terms of use also apply",
)


class GlobalContextExtractor(nn.Module):
    """f_glo: channel re-weighting from the global context. (N, C, H, W) -> (N, C, H, W).

    ``w = sigmoid(FC(ReLU(FC(mean_hw(x)))))`` with the hidden width ``C // reduction``;
    returns ``x * w``. The FCs are ``nn.Linear`` with bias, as in the official code.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3)))
        return x * w[:, :, None, None]


class ContextGuidedBlock(nn.Module):
    """The CG block (paper Fig. 3), optionally the down-sampling variant.

    ``down=False``: (N, C, H, W) -> (N, C, H, W), requires ``in_channels == out_channels``::

        y = conv1x1-BN-PReLU(x)                      # C -> C/2
        j = PReLU(BN(cat[f_loc(y), f_sur(y)]))       # f_joi, C channels
        out = x + f_glo(j)                           # global residual learning, no activation after

    ``down=True``: (N, C_in, H, W) -> (N, C_out, ceil(H/2), ceil(W/2)), no residual::

        y = conv3x3/s2-BN-PReLU(x)                   # C_in -> C_out
        j = conv1x1(PReLU(BN(cat[f_loc(y), f_sur(y)])))   # 2 C_out -> C_out ("reduce")
        out = f_glo(j)

    f_loc is a channel-wise (depthwise) 3x3 conv, f_sur the same with dilation ``dilation``.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 2, reduction: int = 16,
                 *, down: bool = False) -> None:
        super().__init__()
        if not down and in_channels != out_channels:
            raise ValueError(f"a residual CG block needs in == out channels, got {in_channels} -> {out_channels}")
        self.down = down
        width = out_channels if down else out_channels // 2
        self.conv_in = ConvNormAct(in_channels, width, 3 if down else 1, 2 if down else 1, eps=BN_EPS, act=prelu)
        self.f_loc = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.f_sur = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, groups=width, bias=False)
        self.f_joi = NormAct(2 * width, eps=BN_EPS, act=prelu)
        self.reduce = nn.Conv2d(2 * width, out_channels, 1, bias=False) if down else nn.Identity()
        self.f_glo = GlobalContextExtractor(out_channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_in(x)
        joint = self.f_joi(torch.cat([self.f_loc(y), self.f_sur(y)], dim=1))
        out = self.f_glo(self.reduce(joint))
        return out if self.down else x + out


class InputInjection(nn.Module):
    """The input image down-sampled by ``2**times`` with repeated AvgPool(3, stride 2, pad 1)
    (count_include_pad=True, as ``nn.AvgPool2d`` defaults). (N, C, H, W) -> (N, C, H', W')."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = F.avg_pool2d(x, 3, stride=2, padding=1)
        return x


class CGNet(nn.Module):
    """Context Guided Network. (N, 3, H, W) -> (N, num_classes, H, W) logits, any H and W.

    ``M`` / ``N`` are the numbers of CG blocks in stages 2 and 3 *including* the down-sampling
    block (official M=3, N=21). ``dropout=True`` adds the official ``Dropout2d(0.1)`` before the
    classifier.
    """

    def __init__(self, num_classes: int = 19, M: int = 3, N: int = 21,  # noqa: N803 - the paper's M, N
                 dropout: bool = False) -> None:
        super().__init__()
        if M < 1 or N < 1:
            raise ValueError(f"CGNet needs M >= 1 and N >= 1 blocks per stage, got M={M}, N={N}")
        self.num_classes = num_classes
        # stage 1 (1/2)
        self.stage1 = nn.Sequential(
            ConvNormAct(3, 32, 3, 2, eps=BN_EPS, act=prelu),
            ConvNormAct(32, 32, 3, 1, eps=BN_EPS, act=prelu),
            ConvNormAct(32, 32, 3, 1, eps=BN_EPS, act=prelu),
        )
        self.inject1 = InputInjection(1)
        self.inject2 = InputInjection(2)
        self.fuse1 = NormAct(32 + 3, eps=BN_EPS, act=prelu)
        # stage 2 (1/4)
        self.down2 = ContextGuidedBlock(32 + 3, 64, dilation=2, reduction=8, down=True)
        self.blocks2 = nn.Sequential(*[ContextGuidedBlock(64, 64, dilation=2, reduction=8) for _ in range(M - 1)])
        self.fuse2 = NormAct(64 + 64 + 3, eps=BN_EPS, act=prelu)
        # stage 3 (1/8)
        self.down3 = ContextGuidedBlock(64 + 64 + 3, 128, dilation=4, reduction=16, down=True)
        self.blocks3 = nn.Sequential(*[ContextGuidedBlock(128, 128, dilation=4, reduction=16) for _ in range(N - 1)])
        self.fuse3 = NormAct(128 + 128, eps=BN_EPS, act=prelu)
        self.dropout = nn.Dropout2d(0.1) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(256, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.fuse1(torch.cat([self.stage1(x), self.inject1(x)], dim=1))
        d2 = self.down2(s1)
        s2 = self.fuse2(torch.cat([self.blocks2(d2), d2, self.inject2(x)], dim=1))
        d3 = self.down3(s2)
        s3 = self.fuse3(torch.cat([d3, self.blocks3(d3)], dim=1))
        logits = self.classifier(self.dropout(s3))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# --- official checkpoint conversion (wutianyiRosun/CGNet key names) -----------------------------

_CGNET_RULES: list[tuple[str, str]] = [
    (r"^level1_(\d)\.", r"stage1.\1."),
    (r"^b1\.", "fuse1."),
    (r"^level2_0\.", "down2."),
    (r"^level3_0\.", "down3."),
    (r"^level2\.(\d+)\.", r"blocks2.\1."),
    (r"^level3\.(\d+)\.", r"blocks3.\1."),
    (r"^bn_prelu_2\.", "fuse2."),
    (r"^bn_prelu_3\.", "fuse3."),
    (r"^classifier\.\d\.conv\.", "classifier."),  # classifier.0 (no dropout) or .1 (after Dropout2d)
    # CG block internals
    (r"\.conv1x1\.", ".conv_in."),
    (r"\.F_loc\.conv\.", ".f_loc."),
    (r"\.F_sur\.conv\.", ".f_sur."),
    (r"\.F_glo\.", ".f_glo."),
    (r"\.bn_prelu\.", ".f_joi."),
    (r"^(down[23])\.(bn|act)\.", r"\1.f_joi.\2."),
    (r"\.reduce\.conv\.", ".reduce."),
]


def convert_official_cgnet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a wutianyiRosun/CGNet ``Context_Guided_Network`` state_dict to rtseg names.

    The official checkpoints are ``{'model': state_dict}`` with DataParallel ``module.``
    prefixes; :func:`rtseg.checkpoint.unwrap_state_dict` removes both before this runs.
    """
    return rename_keys(state_dict, _CGNET_RULES)
