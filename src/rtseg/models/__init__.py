"""The model registry: one plain dict from name to :class:`ModelSpec`.

``create_model("sinet", num_classes=2)`` builds by name; ``list_models()`` lists the names.
Every model built here carries ``model.pretrained_cfg`` (preprocessing and meaning of its
outputs), ``model.rtseg_name`` and ``model.rtseg_kwargs`` (so a checkpoint can rebuild it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..config import PORTRAIT_CLASSES, PretrainedCfg
from ..errors import ModelNameError, ModelOptionError
from .sinet import SINet, convert_official_sinet
from .bisenet import (BISENET_FACE_OFFICIAL_CFG, BISENET_V1_OFFICIAL_CFG, BiSeNetFace, BiSeNetV1,
                      convert_official_bisenet_face, convert_official_bisenet_v1)
from .cgnet import CGNET_OFFICIAL_CFG, CGNet, convert_official_cgnet
from .deeplabv3plus import DEEPLABV3PLUS_OFFICIAL_CFG, DeepLabV3Plus, convert_official_deeplabv3plus
from .centermask import (CENTERMASK_LITE_OFFICIAL_CFG, CENTERMASK_OFFICIAL_CFG, centermask, centermask_lite,
                         convert_official_centermask)

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model, convert its official checkpoints and preprocess for it.

    ``official_cfg`` is the preprocessing of the official released weights (what
    ``load_official`` attaches); ``default_cfg`` is what a freshly created / rtseg-trained model
    uses. ``task`` is ``"semantic"`` or ``"instance"``. ``packaged_weights`` names a file in
    ``rtseg/weights`` used by ``pretrained=True``.
    """

    builder: Callable[..., nn.Module]
    convert_official: Callable[[StateDict], StateDict]
    default_cfg: PretrainedCfg
    official_cfg: Optional[PretrainedCfg] = None
    official_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "semantic"
    description: str = ""
    packaged_weights: Optional[str] = None


SINET_OFFICIAL_CFG = PretrainedCfg(
    mean=(107.304565, 115.69884, 132.35703),
    std=(63.97182, 65.1337, 68.29726),
    channel_order="BGR",
    pre_scale=1.0,
    post_scale=1.0 / 255.0,
    input_size=(224, 224),
    size_divisor=32,
    class_names=PORTRAIT_CLASSES,
    palette=((0, 0, 0), (255, 106, 0)),
    source="clovaai/ext_portrait_segmentation result/SINet/SINet.pth (EG1800)",
    licence="MIT (clovaai/ext_portrait_segmentation)",
    notes="official test code: cv2 BGR, resize 224x224, (x-mean)/std then /255",
)

MODELS: dict[str, ModelSpec] = {
    "sinet": ModelSpec(
        builder=SINet,
        convert_official=convert_official_sinet,
        default_cfg=SINET_OFFICIAL_CFG.replace(input_size=None, source="random initialisation", licence="n/a",
                                                notes="official normalisation; any size, padded to 32"),
        official_cfg=SINET_OFFICIAL_CFG,
        official_kwargs={"num_classes": 2, "p": 2, "q": 8, "chnn": 1},
        description="SINet portrait segmentation (WACV 2020), 86,910 parameters",
        packaged_weights="sinet_portrait.pth",
    ),
    "cgnet": ModelSpec(
        builder=CGNet,
        convert_official=convert_official_cgnet,
        default_cfg=CGNET_OFFICIAL_CFG.replace(source="random initialisation", licence="n/a", notes=""),
        official_cfg=CGNET_OFFICIAL_CFG,
        official_kwargs={"num_classes": 19, "M": 3, "N": 21, "dropout": False},
        description="CGNet (TIP 2020), wutianyiRosun/CGNet; M=3 N=21: 496,306 parameters",
    ),
    "bisenet_v1": ModelSpec(
        builder=BiSeNetV1,
        convert_official=convert_official_bisenet_v1,
        default_cfg=BISENET_V1_OFFICIAL_CFG.replace(source="random initialisation", licence="n/a", notes=""),
        official_cfg=BISENET_V1_OFFICIAL_CFG,
        official_kwargs={"num_classes": 19},
        description="BiSeNetV1 (ECCV 2018), CoinCheung/BiSeNet, ResNet-18: 13,425,721 parameters with aux heads",
    ),
    "bisenet_face": ModelSpec(
        builder=BiSeNetFace,
        convert_official=convert_official_bisenet_face,
        default_cfg=BISENET_FACE_OFFICIAL_CFG.replace(source="random initialisation", licence="n/a", notes=""),
        official_cfg=BISENET_FACE_OFFICIAL_CFG,
        official_kwargs={"num_classes": 19},
        description="BiSeNet face parsing, zllrunning/face-parsing.PyTorch (CelebAMask-HQ): 13,300,416 parameters",
    ),
    "deeplabv3plus": ModelSpec(
        builder=DeepLabV3Plus,
        convert_official=convert_official_deeplabv3plus,
        default_cfg=DEEPLABV3PLUS_OFFICIAL_CFG.replace(source="random initialisation", licence="n/a", notes=""),
        official_cfg=DEEPLABV3PLUS_OFFICIAL_CFG,
        official_kwargs={"num_classes": 21, "backbone": "mobilenet_v2", "output_stride": 16},
        description="DeepLabV3+ (ECCV 2018), VainF/DeepLabV3Plus-Pytorch; mobilenet_v2 os16: 5,225,717 parameters",
    ),
    "centermask": ModelSpec(
        builder=centermask,
        convert_official=convert_official_centermask,
        default_cfg=CENTERMASK_OFFICIAL_CFG.replace(source="random initialisation", licence="n/a"),
        official_cfg=CENTERMASK_OFFICIAL_CFG,
        official_kwargs={"num_classes": 80},
        task="instance",
        description="CenterMask (CVPR 2020), youngwanLEE/centermask2; V-39-eSE, FPN 256: 52,608,972 parameters",
    ),
    "centermask_lite": ModelSpec(
        builder=centermask_lite,
        convert_official=convert_official_centermask,
        default_cfg=CENTERMASK_LITE_OFFICIAL_CFG.replace(source="random initialisation", licence="n/a"),
        official_cfg=CENTERMASK_LITE_OFFICIAL_CFG,
        official_kwargs={"num_classes": 80},
        task="instance",
        description="CenterMask-Lite, youngwanLEE/centermask2; V-19-slim-dw-eSE, FPN 128: 11,176,924 parameters",
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelNameError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}") from None


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with constructor ``kwargs`` (the config), in train mode.

    ``pretrained=True`` loads the weights packaged with rtseg for that model (see README).
    """
    spec = get_spec(name)
    if pretrained:
        from ..checkpoint import load_packaged_weights

        return load_packaged_weights(name, **kwargs)
    model = build_model(name, kwargs)
    attach_meta(model, name, kwargs, spec.default_cfg)
    return model


def build_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``MODELS[name].builder(**kwargs)``; options the constructor rejects (an unknown keyword, a
    bad value such as ``backbone="nope"``) raise a one-line :class:`ModelOptionError`."""
    spec = get_spec(name)
    try:
        return spec.builder(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelOptionError(f"model {name!r}: options {kwargs} rejected ({type(e).__name__}: {detail})") from e


def attach_meta(model: nn.Module, name: str, kwargs: dict[str, Any], cfg: PretrainedCfg) -> nn.Module:
    num_classes = kwargs.get("num_classes")
    if num_classes is not None and cfg.class_names and len(cfg.class_names) != num_classes:
        cfg = cfg.replace(class_names=tuple(f"class_{i}" for i in range(num_classes)), palette=())
    model.rtseg_name = name  # type: ignore[attr-defined]
    model.rtseg_kwargs = dict(kwargs)  # type: ignore[attr-defined]
    model.pretrained_cfg = cfg  # type: ignore[attr-defined]
    return model


__all__ = ["MODELS", "ModelSpec", "create_model", "build_model", "list_models", "get_spec", "attach_meta"]
