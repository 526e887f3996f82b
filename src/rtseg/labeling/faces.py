"""Face detectors for the label tool: an image is a portrait candidate when it has a face.

Any object with a ``name`` and ``detect(rgb) -> list[FaceBox]`` is a :class:`FaceDetector`.
Three come with rtseg, each used only when its library is there:

* ``mediapipe`` - MediaPipe's BlazeFace: the bundled model of the legacy ``mp.solutions`` API, or
  a ``.tflite`` file given as ``mediapipe:/path/blaze_face_short_range.tflite`` (Tasks API).
* ``haar`` - OpenCV's Viola-Jones Haar cascade ``haarcascade_frontalface_default.xml`` from
  ``cv2.data.haarcascades`` (needs an OpenCV build with ``cv2.CascadeClassifier``, i.e. 4.x;
  OpenCV 5 moved cascades out of the main wheel), or ``haar:/path/cascade.xml``.
* ``lbp`` - the LBP frontal-face cascade (trained by OpenCV) that scikit-image ships as
  ``skimage.data.lbp_frontal_face_cascade_filename()``, run by ``skimage.feature.Cascade``.

``auto`` picks the first available in that order.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

from ..errors import RtsegError

log = logging.getLogger(__name__)

#: Images are searched for faces at most this large (longer side, pixels): cascades cost grows
#: with the number of windows, and portrait faces are large.
DETECT_MAX_SIDE = 640


@dataclass(frozen=True)
class FaceBox:
    """A face as a pixel box ``[x0, x1) x [y0, y1)`` with the detector's score (1.0 if it has none)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float = 1.0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def to_dict(self) -> dict:
        return {"box": [self.x0, self.y0, self.x1, self.y1], "score": round(float(self.score), 4)}

    @classmethod
    def from_dict(cls, d: dict) -> "FaceBox":
        x0, y0, x1, y1 = (int(v) for v in d["box"])
        return cls(x0, y0, x1, y1, float(d.get("score", 1.0)))

    def scaled(self, s: float, width: int, height: int) -> "FaceBox":
        """Box in an image ``s`` times larger, clipped to ``width`` x ``height``."""
        def c(v: float, hi: int) -> int:
            return int(min(max(round(v), 0), hi))
        return FaceBox(c(self.x0 * s, width), c(self.y0 * s, height), c(self.x1 * s, width),
                       c(self.y1 * s, height), self.score)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an RGB uint8 (H, W, 3) image."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        ...


class _Downscaled:
    """Runs ``detect_small`` on the image shrunk to at most :data:`DETECT_MAX_SIDE` and maps the
    boxes back to full resolution."""

    max_side = DETECT_MAX_SIDE

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        import cv2

        h, w = rgb.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        boxes = self.detect_small(np.ascontiguousarray(small))
        boxes = [b.scaled(1.0 / s, w, h) for b in boxes]
        return sorted((b for b in boxes if b.width > 0 and b.height > 0), key=lambda b: -b.width * b.height)

    def detect_small(self, rgb: np.ndarray) -> list[FaceBox]:
        raise NotImplementedError

    @staticmethod
    def min_face(rgb: np.ndarray) -> int:
        """Smallest face searched for: 1/16 of the shorter side (a portrait's face is large), >= 24 px."""
        return max(24, min(rgb.shape[:2]) // 16)


class HaarFaceDetector(_Downscaled):
    """OpenCV's Haar cascade (Viola & Jones 2001) via ``cv2.CascadeClassifier``."""

    name = "haar"
    DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(self, cascade: Optional[str] = None, min_neighbors: int = 5) -> None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise RtsegError(f"face detector 'haar': OpenCV {cv2.__version__} has no CascadeClassifier "
                             f"(OpenCV 5 moved it out); use --face-detector lbp or mediapipe")
        path = Path(cascade) if cascade else Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / self.DEFAULT_CASCADE
        if not path.is_file():
            raise RtsegError(f"face detector 'haar': cascade file {path} not found")
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise RtsegError(f"face detector 'haar': {path} is not a readable cascade")
        self.min_neighbors = min_neighbors

    def detect_small(self, rgb: np.ndarray) -> list[FaceBox]:
        import cv2

        grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        m = self.min_face(rgb)
        found = self.classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(m, m))
        return [FaceBox(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]

    @staticmethod
    def available() -> bool:
        try:
            import cv2
        except ImportError:
            return False
        base = getattr(getattr(cv2, "data", None), "haarcascades", "")
        return hasattr(cv2, "CascadeClassifier") and (Path(base) / HaarFaceDetector.DEFAULT_CASCADE).is_file()


class LbpFaceDetector(_Downscaled):
    """The LBP frontal-face cascade shipped with scikit-image (``skimage.feature.Cascade``)."""

    name = "lbp"

    def __init__(self, cascade: Optional[str] = None, min_neighbors: int = 4) -> None:
        if not self.available():
            raise RtsegError("face detector 'lbp': scikit-image is not installed (pip install scikit-image)")
        from skimage import data
        from skimage.feature import Cascade

        path = cascade or data.lbp_frontal_face_cascade_filename()
        if not Path(path).is_file():
            raise RtsegError(f"face detector 'lbp': cascade file {path} not found")
        self.cascade = Cascade(str(path))
        self.min_neighbors = min_neighbors

    def detect_small(self, rgb: np.ndarray) -> list[FaceBox]:
        m = self.min_face(rgb)
        h, w = rgb.shape[:2]
        found = self.cascade.detect_multi_scale(img=rgb, scale_factor=1.2, step_ratio=1, min_size=(m, m),
                                                max_size=(h, w), min_neighbor_number=self.min_neighbors)
        return [FaceBox(int(d["c"]), int(d["r"]), int(d["c"] + d["width"]), int(d["r"] + d["height"])) for d in found]

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("skimage") is not None


class MediaPipeFaceDetector:
    """MediaPipe's BlazeFace detector: the legacy ``mp.solutions.face_detection`` (model bundled
    in the wheel; full-range model) or, with ``model`` a ``.tflite`` path, the Tasks API."""

    name = "mediapipe"

    def __init__(self, model: Optional[str] = None, min_confidence: float = 0.5) -> None:
        if not self.importable():
            raise RtsegError("face detector 'mediapipe': the mediapipe package is not installed")
        import mediapipe as mp

        self.min_confidence = min_confidence
        self._legacy = None
        self._task = None
        if model is None:
            solutions = getattr(mp, "solutions", None)
            if solutions is None or not hasattr(solutions, "face_detection"):
                raise RtsegError("face detector 'mediapipe': this mediapipe has no bundled face model "
                                 "(mp.solutions was removed); give one as mediapipe:/path/face_detector.tflite")
            self._legacy = solutions.face_detection.FaceDetection(model_selection=1,
                                                                  min_detection_confidence=min_confidence)
        else:
            if not Path(model).is_file():
                raise RtsegError(f"face detector 'mediapipe': model file {model} not found")
            from mediapipe.tasks.python import BaseOptions, vision

            options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model)),
                                                 min_detection_confidence=min_confidence)
            self._task = vision.FaceDetector.create_from_options(options)

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        h, w = rgb.shape[:2]
        rgb = np.ascontiguousarray(rgb)
        boxes = []
        if self._legacy is not None:
            result = self._legacy.process(rgb)
            for d in result.detections or []:
                r = d.location_data.relative_bounding_box
                box = FaceBox(
                    int(r.xmin * w), int(r.ymin * h), int((r.xmin + r.width) * w), int((r.ymin + r.height) * h),
                    float(d.score[0]) if d.score else 1.0)
                boxes.append(box.scaled(1.0, w, h))
        else:
            import mediapipe as mp

            result = self._task.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            for d in result.detections:
                b = d.bounding_box
                score = float(d.categories[0].score) if d.categories else 1.0
                boxes.append(FaceBox(b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height,
                                     score).scaled(1.0, w, h))
        return sorted((b for b in boxes if b.width > 0 and b.height > 0), key=lambda b: -b.width * b.height)

    @staticmethod
    def importable() -> bool:
        return importlib.util.find_spec("mediapipe") is not None

    @staticmethod
    def available() -> bool:
        """Usable without a model file (the legacy API with its bundled model)."""
        if not MediaPipeFaceDetector.importable():
            return False
        try:
            import mediapipe as mp
        except Exception:  # a broken install must not stop the label tool
            return False
        return hasattr(getattr(mp, "solutions", None), "face_detection")


def main_faces(faces: list[FaceBox], min_ratio: float = 0.4) -> list[FaceBox]:
    """Drop faces narrower than ``min_ratio`` of the widest one: in a portrait the small ones are
    mostly cascade false positives (a badge, a pattern) or background people."""
    if not faces:
        return []
    widest = max(f.width for f in faces)
    return [f for f in faces if f.width >= min_ratio * widest]


#: name -> (class, available-without-arguments check), in the order ``auto`` tries them.
FACE_DETECTORS: dict[str, tuple[Callable[..., FaceDetector], Callable[[], bool]]] = {
    "mediapipe": (MediaPipeFaceDetector, MediaPipeFaceDetector.available),
    "haar": (HaarFaceDetector, HaarFaceDetector.available),
    "lbp": (LbpFaceDetector, LbpFaceDetector.available),
}


def make_face_detector(spec: str = "auto") -> FaceDetector:
    """``auto`` | ``mediapipe[:MODEL]`` | ``haar[:CASCADE_XML]`` | ``lbp[:CASCADE_XML]``."""
    name, sep, arg = spec.partition(":")
    if name == "auto":
        for cand, (cls, available) in FACE_DETECTORS.items():
            if available():
                log.info("face detector: %s", cand)
                return cls()
        raise RtsegError("no face detector available: install mediapipe or scikit-image, or an OpenCV "
                         "with cv2.CascadeClassifier and its Haar cascades")
    if name not in FACE_DETECTORS:
        raise RtsegError(f"unknown face detector {spec!r}: expected auto, {', '.join(FACE_DETECTORS)} "
                         f"(optionally NAME:MODEL_FILE)")
    return FACE_DETECTORS[name][0](arg or None)
