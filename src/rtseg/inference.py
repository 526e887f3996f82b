"""Prediction: read -> preprocess (from the model's pretrained config) -> model -> logits ->
class ids / probabilities at the input's size.

The size rule travels with the weights (:class:`~rtseg.config.PretrainedCfg`): resize to a fixed
``input_size`` (official SINet: 224x224) or zero-pad to a multiple of ``size_divisor``; the logits
are resized or cropped back, so any input size works with any model.

The network runs on the fast path by default (``backend="auto"``: :func:`rtseg.fast.optimize`,
BatchNorm folded, the backend measured fastest for the model, outputs within 1e-4 of eager).
The compiled copy is built on the first call and kept with the model until its weights change;
``backend="eager"`` runs the PyTorch module itself.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .config import PretrainedCfg
from .data.io import pil_to_rgb, read_image
from .errors import DataError, RtsegError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

#: The backend of :func:`predict` and friends when none is given (see :mod:`rtseg.fast`);
#: the environment variable ``RTSEG_BACKEND`` overrides it (also for ``rtseg predict``).
DEFAULT_BACKEND = "auto"


def default_backend() -> str:
    """``$RTSEG_BACKEND`` if set, else :data:`DEFAULT_BACKEND` (``auto``)."""
    return os.environ.get("RTSEG_BACKEND") or DEFAULT_BACKEND


class _FastSlot:
    """Where a model keeps its compiled copy (set with ``object.__setattr__``, so not a
    submodule: ``state_dict`` is unchanged); copies and pickles of the model start empty."""

    def __init__(self) -> None:
        self.key: Optional[tuple] = None
        self.fast: Optional[nn.Module] = None

    def __deepcopy__(self, memo: dict) -> "_FastSlot":
        return _FastSlot()

    def __reduce__(self) -> tuple:
        return (_FastSlot, ())


def fast_model(model: nn.Module, backend: Optional[str] = "default") -> nn.Module:
    """``model`` behind ``backend`` (``"default"``: :func:`default_backend`;
    :func:`rtseg.fast.optimize`), built once and reused until
    the model's parameters or buffers change (their version counters and storage say so).
    ``eager`` / None, a model that is already a :class:`~rtseg.fast.FastModel`, and a model in
    training mode are returned as they are."""
    from .fast import FastModel, optimize

    backend = default_backend() if backend == "default" else backend
    if backend in (None, "eager") or isinstance(model, FastModel) or model.training \
            or not hasattr(model, "pretrained_cfg"):
        return model
    tensors = list(model.parameters()) + list(model.buffers())
    key = (backend, tuple((t.data_ptr(), t._version) for t in tensors))
    slot = model.__dict__.get("_rtseg_fast_slot")
    if slot is None:
        slot = _FastSlot()
        object.__setattr__(model, "_rtseg_fast_slot", slot)
    if slot.key != key or slot.fast is None:
        slot.fast = optimize(model, backend)
        slot.key = key
    return slot.fast


def as_rgb(image: ImageLike, max_pixels: Optional[int] = None) -> np.ndarray:
    """A path, PIL image or array -> RGB uint8 (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image) if max_pixels is None else read_image(image, max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image) if max_pixels is None else pil_to_rgb(image, max_pixels)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise DataError(f"array of shape {image.shape}: expected (H, W, 3) RGB or (H, W) greyscale")
        if image.dtype != np.uint8:
            raise DataError(f"array of dtype {image.dtype}: expected uint8 RGB")
        return np.ascontiguousarray(image[..., :3])
    raise DataError(f"cannot read an image from {type(image).__name__}")


def normalize(image: np.ndarray, cfg: PretrainedCfg) -> torch.Tensor:
    """RGB uint8 (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W) following ``cfg``."""
    image = np.ascontiguousarray(image)
    x = torch.from_numpy(image if image.flags.writeable else image.copy())
    if x.ndim == 3:
        x = x[None]
    x = x.permute(0, 3, 1, 2).float()
    if cfg.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x * cfg.pre_scale - mean) / std
    if cfg.post_scale != 1.0:
        x = x * cfg.post_scale
    return x.contiguous()


def prepare(image: np.ndarray, cfg: PretrainedCfg) -> tuple[torch.Tensor, tuple[int, int]]:
    """Apply the size rule: returns the network input (1, 3, h, w) and the original (H, W)."""
    h, w = image.shape[:2]
    if cfg.input_size is not None:
        import cv2

        th, tw = cfg.input_size
        interp = cv2.INTER_AREA if (th < h or tw < w) else cv2.INTER_LINEAR
        image = cv2.resize(image, (tw, th), interpolation=interp) if (th, tw) != (h, w) else image
        return normalize(image, cfg), (h, w)
    x = normalize(image, cfg)
    d = max(1, cfg.size_divisor)
    ph, pw = (-h) % d, (-w) % d
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def restore(logits: torch.Tensor, size: tuple[int, int], cfg: PretrainedCfg) -> torch.Tensor:
    """Undo :func:`prepare` on (N, C, h', w') logits -> (N, C, H, W)."""
    if cfg.input_size is not None:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    h, w = size
    if logits.shape[-2] >= h and logits.shape[-1] >= w:
        # network output at padded size (or SINet's 32k size): crop the padding off
        return logits[..., :h, :w]
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def predict_logits(model: nn.Module, image: ImageLike, backend: Optional[str] = "default") -> torch.Tensor:
    """(1, C, H, W) float logits at the input's size (semantic models; instance models raise
    an error pointing to :func:`predict_instances`). ``backend``: see :func:`fast_model`."""
    _require_semantic(model)
    cfg: PretrainedCfg = model.pretrained_cfg
    rgb = as_rgb(image)
    x, size = prepare(rgb, cfg)
    was_training = model.training
    model.eval()
    try:
        net = fast_model(model, backend)
        with torch.inference_mode():
            logits = net(x)
    finally:
        model.train(was_training)
    return restore(logits.float(), size, cfg)


def predict_proba(model: nn.Module, image: ImageLike, backend: Optional[str] = "default") -> np.ndarray:
    """Softmax probabilities (C, H, W) float32 at the input's size."""
    return torch.softmax(predict_logits(model, image, backend), dim=1)[0].numpy()


def predict(model: nn.Module, image: ImageLike, backend: Optional[str] = "default") -> np.ndarray:
    """Class-id mask (H, W) uint8 for a path, PIL image or RGB uint8 array."""
    logits = predict_logits(model, image, backend)
    return logits.argmax(1)[0].to(torch.uint8).numpy()


# --- instance segmentation (CenterMask) ----------------------------------------------------------

def is_instance_model(model: nn.Module) -> bool:
    """True when the registry says the model's task is instance segmentation (CenterMask)."""
    from .models import MODELS

    spec = MODELS.get(getattr(getattr(model, "module", model), "rtseg_name", ""))
    return spec is not None and spec.task == "instance"


def _require_semantic(model: nn.Module) -> None:
    if is_instance_model(model):
        name = getattr(getattr(model, "module", model), "rtseg_name", "?")
        raise RtsegError(f"model {name!r} is an instance-segmentation model: call "
                         f"rtseg.inference.predict_instances(model, image) for its boxes, labels, scores and masks")


def predict_instances(model: nn.Module, image: ImageLike, min_score: float = 0.0,
                      backend: Optional[str] = "default") -> dict[str, np.ndarray]:
    """Instances of an instance-segmentation model (CenterMask) at the input's size.

    The test resize of the weights is used: shortest side ``model.min_size_test``, longest side at
    most ``model.max_size_test`` (detectron2's ``ResizeShortestEdge``, bilinear, as the training
    pipeline :func:`rtseg.data.coco.resize_instances` resizes), normalisation from
    ``model.pretrained_cfg``, zero padding to a multiple of 32 inside the model; boxes and masks
    are brought back to the original size by :meth:`CenterMask.detect` (masks pasted there).

    Returns numpy arrays sorted by decreasing score, keeping detections with ``scores >=
    min_score``: ``boxes`` (K, 4) float32 xyxy pixels, ``scores`` (K,) box scores, ``labels``
    (K,) int64 0-based class ids (names: ``model.pretrained_cfg.class_names``), ``masks``
    (K, H, W) bool, ``mask_scores`` (K,) (box score x predicted mask IoU). ``backend``: the
    dense stage (backbone, FPN, FCOS head) runs there (:func:`fast_model`); RoIAlign, the mask
    heads and the post-processing run in PyTorch.
    """
    import cv2

    from .data.coco import resized_shape

    net = getattr(model, "module", model)
    if not is_instance_model(model) or not hasattr(net, "detect"):
        raise RtsegError(f"model {getattr(net, 'rtseg_name', type(net).__name__)!r} is not an instance-segmentation "
                         f"model; use rtseg.predict(model, image) for its class-id mask")
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    nh, nw = resized_shape(h, w, int(net.min_size_test), int(net.max_size_test))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else rgb
    x = normalize(resized, net.pretrained_cfg)
    was_training = net.training
    net.eval()
    try:
        fast = fast_model(net, backend)
        with torch.inference_mode():
            det = fast.detect(x, image_sizes=[(nh, nw)], output_sizes=[(h, w)])[0]
    finally:
        net.train(was_training)
    keep = det["scores"] >= min_score
    order = torch.argsort(det["scores"][keep], descending=True)
    return {
        "boxes": det["boxes"][keep][order].float().numpy().astype(np.float32),
        "scores": det["scores"][keep][order].float().numpy().astype(np.float32),
        "labels": det["labels"][keep][order].numpy().astype(np.int64),
        "masks": det["masks"][keep][order].numpy().astype(bool),
        "mask_scores": det["mask_scores"][keep][order].float().numpy().astype(np.float32),
    }
