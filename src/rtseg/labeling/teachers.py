"""Teachers: segmentation models whose person probabilities make the pseudo ground truth.

A :class:`Teacher` has a ``name`` (used for its mask folder and shown to the reviewer) and
``person_probability(rgb) -> (H, W) float32`` in [0, 1] at the image's size. Two kinds:

* :class:`ModelTeacher` - any rtseg model with weights (``--teacher MODEL:WEIGHTS``, loaded
  with :func:`rtseg.checkpoint.load_model`: an rtseg checkpoint or official weights), e.g. the
  official SINet: ``--teacher sinet:SINet.pth``.
* :class:`MediaPipeSelfieTeacher` - MediaPipe's selfie segmenter (``--teacher mediapipe``, the
  model bundled with the legacy ``mp.solutions`` API, or ``mediapipe:/path/selfie_segmenter.tflite``
  with the Tasks API). mediapipe is not a dependency of rtseg: asking for it without the package
  installed is a one-line error.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np
from torch import nn

from ..errors import RtsegError

MEDIAPIPE = "mediapipe"


@runtime_checkable
class Teacher(Protocol):
    name: str

    def person_probability(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> P(person) float32 (H, W) in [0, 1]."""
        ...


class ModelTeacher:
    """An rtseg model as a teacher: softmax probability of its ``person`` class."""

    def __init__(self, model: nn.Module, name: Optional[str] = None, source: str = "") -> None:
        self.model = model.eval()
        self.name = name or getattr(model, "rtseg_name", type(model).__name__.lower())
        self.source = source
        self.person_index = person_class_index(model, self.name)

    def person_probability(self, rgb: np.ndarray) -> np.ndarray:
        from ..inference import predict_proba

        return np.ascontiguousarray(predict_proba(self.model, rgb)[self.person_index], dtype=np.float32)


def person_class_index(model: nn.Module, name: str) -> int:
    """Index of the ``person`` class from the model's class names; class 1 of a 2-class model
    without names (background, foreground)."""
    cfg = getattr(model, "pretrained_cfg", None)
    names = [str(n).lower() for n in (getattr(cfg, "class_names", ()) or ())]
    for wanted in ("person", "human", "people", "foreground"):
        if wanted in names:
            return names.index(wanted)
    num_classes = getattr(model, "rtseg_kwargs", {}).get("num_classes")
    if num_classes == 2 or (not names and num_classes is None):
        return 1
    raise RtsegError(f"teacher {name!r}: cannot tell which of its classes is 'person' "
                     f"(class names: {', '.join(names) or 'none'})")


class MediaPipeSelfieTeacher:
    """MediaPipe's selfie segmenter (MobileNetV3-based, 256x256 input, person vs background)."""

    name = MEDIAPIPE

    def __init__(self, model: Optional[str] = None) -> None:
        if importlib.util.find_spec("mediapipe") is None:
            raise RtsegError("teacher 'mediapipe': the mediapipe package is not installed (pip install mediapipe)")
        import mediapipe as mp

        self._legacy = None
        self._task = None
        if model is None:
            solutions = getattr(mp, "solutions", None)
            if solutions is None or not hasattr(solutions, "selfie_segmentation"):
                raise RtsegError("teacher 'mediapipe': this mediapipe has no bundled selfie model "
                                 "(mp.solutions was removed); give one as mediapipe:/path/selfie_segmenter.tflite")
            self._legacy = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        else:
            if not Path(model).is_file():
                raise RtsegError(f"teacher 'mediapipe': model file {model} not found")
            from mediapipe.tasks.python import BaseOptions, vision

            options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(model)),
                                                   output_confidence_masks=True, output_category_mask=False)
            self._task = vision.ImageSegmenter.create_from_options(options)

    def person_probability(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb)
        if self._legacy is not None:
            prob = np.asarray(self._legacy.process(rgb).segmentation_mask, dtype=np.float32)
        else:
            import mediapipe as mp

            masks = self._task.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).confidence_masks
            views = [np.asarray(m.numpy_view(), dtype=np.float32) for m in masks]
            # one mask: P(person); several (selfie 2-class, selfie multiclass): 1 - P(background)
            prob = views[0] if len(views) == 1 else 1.0 - views[0]
        prob = prob.reshape(prob.shape[:2])
        if prob.shape != rgb.shape[:2]:
            import cv2

            prob = cv2.resize(prob, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.clip(prob, 0.0, 1.0).astype(np.float32)


def parse_teacher(spec: str) -> Teacher:
    """``MODEL:WEIGHTS`` (an rtseg model) | ``mediapipe`` | ``mediapipe:MODEL.tflite``."""
    name, sep, arg = spec.partition(":")
    if name == MEDIAPIPE:
        return MediaPipeSelfieTeacher(arg or None)
    from ..checkpoint import load_model
    from ..models import get_spec

    spec_ = get_spec(name)  # unknown names: one-line ModelNameError listing the valid ones
    if not arg:
        if not spec_.packaged_weights:
            raise RtsegError(f"teacher {spec!r}: give its weights as {name}:/path/weights.pth "
                             f"(a teacher needs trained weights)")
        return ModelTeacher(load_model(name, None), name, source="packaged weights")
    if not Path(arg).exists():
        raise RtsegError(f"{arg}: weights file of teacher {spec!r} not found")
    return ModelTeacher(load_model(name, arg), name, source=str(arg))


def unique_names(teachers: Sequence[Teacher]) -> list[str]:
    """Folder-safe, distinct names: ``sinet``, ``sinet-2``, ..."""
    out: list[str] = []
    for t in teachers:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(t.name)).strip("._") or "teacher"
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out
