"""Configuration dataclasses: pretrained (preprocessing) configs and training configs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np


@dataclass(frozen=True)
class PretrainedCfg:
    """What a set of weights expects and what it means (timm's ``pretrained_cfg`` idea).

    Preprocessing of an image ``x`` (uint8 HxWx3, converted to ``channel_order``) is
    ``((x * pre_scale) - mean) / std * post_scale``, which covers every official recipe:

    * ImageNet style: ``pre_scale=1/255``, ImageNet mean/std, ``post_scale=1``.
    * SINet official: ``pre_scale=1``, BGR mean/std in 0..255 units, ``post_scale=1/255``
      (the official code divides by 255 *after* standardising).
    * CGNet official: ``pre_scale=1``, dataset mean, ``std=1``, ``post_scale=1``.

    Size rule: if ``input_size`` is set the image is resized to it (H, W) and the logits are
    resized back; otherwise the image is zero-padded (after normalisation) to a multiple of
    ``size_divisor`` and the logits are cropped back.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    pre_scale: float = 1.0 / 255.0
    post_scale: float = 1.0
    input_size: Optional[tuple[int, int]] = None
    size_divisor: int = 32
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    source: str = "random initialisation"
    licence: str = "n/a"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainedCfg":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        if kw.get("input_size") is not None:
            kw["input_size"] = tuple(int(v) for v in kw["input_size"])
        if "class_names" in kw:
            kw["class_names"] = tuple(kw["class_names"])
        if "palette" in kw:
            kw["palette"] = tuple(tuple(int(c) for c in p) for p in kw["palette"])
        return cls(**kw)

    def replace(self, **changes: Any) -> "PretrainedCfg":
        return dataclasses.replace(self, **changes)

    def palette_array(self, num_classes: int) -> np.ndarray:
        """(num_classes, 3) uint8 colours: the config's palette, else a fixed distinct one."""
        pal = default_palette(max(num_classes, 1))
        for i, c in enumerate(self.palette[:num_classes]):
            pal[i] = c
        return pal


def default_palette(n: int) -> np.ndarray:
    """The Pascal VOC bit-interleaved palette (class 0 black), ``(n, 3)`` uint8."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


IMAGENET = PretrainedCfg()
PORTRAIT_CLASSES = ("background", "person")


@dataclass
class TrainConfig:
    """Everything ``rtseg train`` needs; the CLI fills it from its flags."""

    model: str
    data: str
    out: str = "runs/train"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
    epochs: int = 10
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 2e-4
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    schedule: str = "poly"  # poly | step | none
    poly_power: float = 0.9
    step_size: int = 30
    step_gamma: float = 0.1
    warmup_steps: int = 0  # linear learning-rate warm-up over the first N optimiser steps
    size: tuple[int, int] = (224, 224)
    loss: str = "ce"  # ce | lovasz | ohem
    boundary_weight: float = 0.0
    boundary_kernel: int = 15
    aux_weights: Sequence[float] = ()
    class_weights: Optional[Union[Sequence[float], str]] = None  # one per class, or "auto" (ENet weights)
    enet_c: float = 1.02  # c of the ENet weights 1/ln(c + p_k) ("auto"; CGNet uses 1.10)
    ohem_thresh: float = 0.7
    ohem_min_kept: Optional[int] = 100000  # None: CoinCheung's n_valid // 16
    ignore_index: int = 255
    workers: int = 0
    seed: int = 0
    resume: bool = False
    val_data: Optional[str] = None
    augment: bool = True
    max_steps: Optional[int] = None  # stop after this many optimiser steps (the schedule still spans epochs)
    log_every: int = 10
    save_every: int = 0  # also checkpoint every N optimiser steps (0: only at epoch ends)
    amp: bool = False
    grad_accum: int = 1
    channels_last: bool = False  # NHWC weights and inputs (rtseg.engine.speed)
    compile: bool = False  # torch.compile the model's forward (with channels_last: BENCHMARKS.md)
    sync_bn: bool = False
    progress: bool = True
