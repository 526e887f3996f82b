"""Tiny real-photo inputs for the label and review tests, made offline.

scikit-image's ``astronaut()`` (Eileen Collins, NASA, public domain) is the portrait; a mirrored
copy is a second photo; a generated gradient with noise has no face; a short mp4v video holds
the astronaut for some frames (with repeated frames, which the label tool must drop as
near-duplicates) between blank frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: (x0, y0, x1, y1) of Eileen Collins' face in skimage.data.astronaut() (512x512)
ASTRONAUT_FACE = (170, 60, 275, 170)
VIDEO_FPS = 10
#: video frames 10..19 show the astronaut, 20..29 the mirrored astronaut, the rest blank grey
VIDEO_FRAMES = 40


def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the test photo")
    return skimage_data.astronaut()


def no_face_image(h: int = 240, w: int = 320) -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 180, w)[None, :, None] * np.ones((h, 1, 3))
    return (ramp + rng.integers(0, 60, (h, w, 3))).astype(np.uint8)


def write_video(path: Path, frames: int = VIDEO_FRAMES) -> Path:
    """A 320x240 mp4v video at 10 fps: blank, astronaut (10-19), mirrored astronaut (20-29), blank."""
    import cv2

    face = cv2.resize(cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR), (240, 240), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (320, 240))
    if not writer.isOpened():
        path = path.with_suffix(".avi")
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (320, 240))
    assert writer.isOpened(), "OpenCV cannot write a test video"
    for i in range(frames):
        frame = np.full((240, 320, 3), (i * 6) % 256, np.uint8)
        if 10 <= i < 30:
            frame[:] = 40
            frame[:, 40:280] = face if i < 20 else face[:, ::-1]
        writer.write(frame)
    writer.release()
    return path


def make_inputs(folder: Path) -> dict[str, Path]:
    """astronaut.png, astronaut_mirror.jpg, noface.png and clip.mp4 in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    a = astronaut()
    paths = {"astronaut": folder / "astronaut.png", "mirror": folder / "astronaut_mirror.jpg",
             "noface": folder / "noface.png"}
    Image.fromarray(a).save(paths["astronaut"])
    Image.fromarray(np.ascontiguousarray(a[:, ::-1])).save(paths["mirror"], quality=92)
    Image.fromarray(no_face_image()).save(paths["noface"])
    paths["video"] = write_video(folder / "clip.mp4")
    return paths


class EllipseTeacher:
    """A stand-in teacher (no network): P(person) is high inside an ellipse around the image
    centre. Two of them with different sizes disagree on a ring, so flip has something to show."""

    def __init__(self, name: str, scale: float) -> None:
        self.name = name
        self.scale = scale

    def person_probability(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        r = ((xs - w / 2) / (self.scale * w / 2)) ** 2 + ((ys - h / 2) / (self.scale * h / 2)) ** 2
        return np.clip(1.5 - r, 0.0, 1.0).astype(np.float32)
