"""SINet's data-generation method (Park et al., WACV 2020, Sec. 4.1): pseudo ground truth from a
face detector and segmentation teachers, which a person then only checks.

For every input image, and every sampled frame of every input video::

    read -> shrink to max_side -> [video: drop near-duplicate frames] -> face detector
         -> (no face: dropped; faces under 0.4x the widest dropped) -> every teacher's P(person)
         -> combine -> write the sample

The dataset written is EG1800-style (:mod:`rtseg.labeling.layout`), so ``rtseg train`` reads it
as is and keeps only what the reviewer accepted (``review.json``).

Combining teachers (:func:`combine_teachers`). With teachers ``t = 1..T`` giving ``p_t(x)``:

* pseudo mask ``M(x) = [mean_t p_t(x) >= 0.5]``;
* a pixel is *good* when every teacher is confident, ``|p_t(x) - 0.5| >= delta`` (``delta = 0.25``:
  ``p_t <= 0.25`` or ``>= 0.75``), and every teacher's own label ``[p_t(x) >= 0.5]`` equals ``M(x)``;
* the weight map is centred on the portrait: ``w(x) = 1 + alpha * max_f g_f(x)`` with ``alpha = 3``
  and, for each face box ``f`` (centre ``(cx, cy)``, size ``fw x fh``), a Gaussian
  ``g_f = exp(-((x - cx)^2 / (2 (1.5 fw)^2) + (y - cy - fh/2)^2 / (2 (2 fh)^2)))`` covering the head
  and shoulders;
* ``confidence = sum_x w(x) good(x) / sum_x w(x)`` in [0, 1].

A low confidence means the teachers disagree or hesitate where the person is; the review queue
shows those first.

Sample ids are deterministic: ``<source stem>[_f<frame>]_<10 hex of sha1(absolute source path,
frame index)>``. Each sampled image/frame leaves a record (``records/<id>.json``, written last),
so a re-run skips what is finished and an interrupted run resumes.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from ..data.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_output_dir, read_image, save_png_atomic
from ..errors import DataError, RtsegError
from .faces import FaceBox, FaceDetector, main_faces
from .layout import (QUEUE_VERSION, DatasetLayout, read_json, write_bytes_atomic, write_json_atomic,
                     write_text_atomic)
from .teachers import Teacher, unique_names

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: combine_teachers: a teacher is confident where |p - 0.5| >= CONFIDENT_MARGIN.
CONFIDENT_MARGIN = 0.25
#: combine_teachers: extra weight of the head-and-shoulders region around a face.
FACE_WEIGHT = 3.0
CONFIDENCE_FORMULA = ("sum(w * good) / sum(w); good = all teachers confident (|p - 0.5| >= 0.25) and "
                      "agreeing with mean(p) >= 0.5; w = 1 + 3 * max over faces of a Gaussian centred "
                      "half a face below the face centre, sigma = (1.5 face width, 2 face height)")
THUMB_SIZE = 32
#: fallback frame rate when a video does not declare one
DEFAULT_FPS = 25.0


class UnreadableInput(DataError):
    """An input image or video that cannot be read (``--skip-bad`` skips these)."""


@dataclass
class LabelOptions:
    """Settings of a label run (``rtseg label`` flags)."""

    every_seconds: float = 1.0        # video: sample one frame per this many seconds
    val_fraction: float = 0.1         # share of source files (not frames) in val.txt
    dedup_threshold: float = 3.0      # video: mean |difference| of 32x32 grey thumbnails (0..255)
    max_side: Optional[int] = 800     # shrink images so the longer side is at most this (None: keep)
    skip_bad: bool = False            # unreadable inputs: warn and go on instead of stopping
    jpeg_quality: int = 95

    def check(self) -> None:
        if not (self.every_seconds > 0 and math.isfinite(self.every_seconds)):
            raise RtsegError(f"--every-seconds must be a positive number, got {self.every_seconds}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise RtsegError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.dedup_threshold < 0:
            raise RtsegError(f"--dedup-threshold must be >= 0, got {self.dedup_threshold}")
        if self.max_side is not None and self.max_side < 32:
            raise RtsegError(f"--max-side must be at least 32, got {self.max_side}")


@dataclass
class LabelReport:
    """What a label run did."""

    sampled: int = 0          # images + sampled video frames seen
    duplicates: int = 0       # video frames dropped as near-duplicates of the previous kept frame
    no_face: int = 0          # dropped: no face found (this run)
    labelled: int = 0         # newly labelled in this run
    already_done: int = 0     # skipped: finished by an earlier run
    bad_inputs: list[str] = field(default_factory=list)
    items: int = 0            # labelled items in the whole dataset (queue length)
    queue_path: str = ""


@dataclass(frozen=True)
class Candidate:
    """One image or sampled video frame."""

    source: Path
    frame: Optional[int]
    time_s: Optional[float]
    rgb: np.ndarray
    duplicate: bool = False  # a video frame too close to the previous kept frame

    @property
    def name(self) -> str:
        return sample_id(self.source, self.frame)


# --- inputs ------------------------------------------------------------------------------------

def sample_id(source: PathLike, frame: Optional[int] = None) -> str:
    """Deterministic, file-name-safe id of an image (``frame=None``) or a video frame."""
    src = str(Path(source).resolve())
    digest = hashlib.sha1(f"{src}#{'' if frame is None else int(frame)}".encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(source).stem).strip("-")[:32] or "item"
    return f"{stem}_f{int(frame):06d}_{digest}" if frame is not None else f"{stem}_{digest}"


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def expand_inputs(paths: Sequence[PathLike], exclude: Optional[PathLike] = None) -> list[Path]:
    """Files named on the command line as they are; folders searched (recursively, sorted) for
    images and videos. Anything under ``exclude`` (the output folder) is left out."""
    if not paths:
        raise DataError("no input images or videos given")
    excl = Path(exclude).resolve() if exclude is not None else None
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"{p}: file not found")
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file()
                     and f.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
                     and not (excl is not None and excl in f.resolve().parents)]
            if not found:
                raise DataError(f"{p}: no images or videos found in folder")
            out.extend(found)
        else:
            out.append(p)
    return out


def video_step(fps: float, every_seconds: float) -> int:
    return max(1, int(round(fps * every_seconds)))


def _video_fps(cap, path: Path) -> float:
    import cv2

    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or fps <= 0:
        log.warning("%s: video declares no frame rate; assuming %s fps", path, DEFAULT_FPS)
        return DEFAULT_FPS
    return fps


def _open_video(path: Path):
    import cv2

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{path}: not a readable video (OpenCV cannot open it)")
    return cap


def read_video_frames(path: PathLike, every_seconds: float) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, time in seconds, RGB frame)`` every ``every_seconds`` of the video."""
    import cv2

    path = Path(path)
    cap = _open_video(path)
    try:
        fps = _video_fps(cap, path)
        step = video_step(fps, every_seconds)
        index, decoded = 0, 0
        while True:
            if index % step == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                decoded += 1
                yield index, index / fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            elif not cap.grab():
                break
            index += 1
        if decoded == 0:
            raise DataError(f"{path}: not a readable video (no frame could be decoded)")
    finally:
        cap.release()


def estimate_candidates(path: Path, every_seconds: float) -> int:
    """How many images/frames ``path`` will give (for the progress bar)."""
    if not is_video(path):
        return 1
    import cv2

    try:
        cap = _open_video(path)
    except DataError:
        return 1
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return max(1, math.ceil(n / video_step(_video_fps(cap, path), every_seconds))) if n > 0 else 1
    finally:
        cap.release()


def shrink(rgb: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Resize (area) so the longer side is at most ``max_side``."""
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb if rgb.flags.writeable else rgb.copy()  # torch.from_numpy warns on read-only arrays
    import cv2

    s = max_side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """32x32 grey float32 thumbnail used to spot near-duplicate frames."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)


def iter_candidates(source: Path, options: LabelOptions) -> Iterator[Candidate]:
    """The images/frames of one input, shrunk; a video frame whose thumbnail differs from the
    previous kept frame's by less than ``dedup_threshold`` (mean absolute grey difference) is
    marked ``duplicate``."""
    if not is_video(source):
        try:
            rgb = read_image(source)
        except DataError as e:
            raise UnreadableInput(str(e)) from None
        yield Candidate(source, None, None, shrink(rgb, options.max_side))
        return
    last: Optional[np.ndarray] = None
    frames = read_video_frames(source, options.every_seconds)
    while True:
        try:
            index, t, rgb = next(frames)
        except StopIteration:
            return
        except DataError as e:
            raise UnreadableInput(str(e)) from None
        rgb = shrink(rgb, options.max_side)
        thumb = thumbnail(rgb)
        if last is not None and float(np.abs(thumb - last).mean()) < options.dedup_threshold:
            yield Candidate(source, index, t, rgb, duplicate=True)
            continue
        last = thumb
        yield Candidate(source, index, t, rgb)


# --- combining teachers -----------------------------------------------------------------------

def face_weight_map(height: int, width: int, faces: Sequence[FaceBox], alpha: float = FACE_WEIGHT) -> np.ndarray:
    """``w(x) = 1 + alpha * max_f g_f(x)`` (see the module docstring), float32 (H, W)."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    g = np.zeros((height, width), np.float32)
    for f in faces:
        fw, fh = max(f.width, 1), max(f.height, 1)
        cx, cy = (f.x0 + f.x1) / 2.0, (f.y0 + f.y1) / 2.0 + fh / 2.0
        gx = np.exp(-((xs - cx) ** 2) / (2.0 * (1.5 * fw) ** 2))
        gy = np.exp(-((ys - cy) ** 2) / (2.0 * (2.0 * fh) ** 2))
        np.maximum(g, gy * gx, out=g)
    return 1.0 + alpha * g


@dataclass
class Combined:
    mask: np.ndarray                 # (H, W) uint8 0/1 consensus
    confidence: float
    teacher_masks: list[np.ndarray]  # (H, W) uint8 0/1 each
    teacher_iou: list[float]         # each teacher's mask vs the consensus


def combine_teachers(probs: Sequence[np.ndarray], faces: Sequence[FaceBox],
                     margin: float = CONFIDENT_MARGIN, alpha: float = FACE_WEIGHT) -> Combined:
    """Consensus mask and confidence from the teachers' P(person) maps (module docstring)."""
    if not probs:
        raise RtsegError("no teacher: at least one teacher is needed to make a pseudo mask")
    p = np.stack([np.asarray(q, np.float32) for q in probs])          # (T, H, W)
    mask = p.mean(0) >= 0.5
    own = p >= 0.5
    good = np.all(np.abs(p - 0.5) >= margin, axis=0) & np.all(own == mask[None], axis=0)
    w = face_weight_map(mask.shape[0], mask.shape[1], faces, alpha)
    confidence = float((w * good).sum() / w.sum())
    ious = []
    for m in own:
        union = np.logical_or(m, mask).sum()
        ious.append(float(np.logical_and(m, mask).sum() / union) if union else 1.0)
    return Combined(mask.astype(np.uint8), confidence, [m.astype(np.uint8) for m in own], ious)


# --- the label run ----------------------------------------------------------------------------

def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _check_run(layout: DatasetLayout, teacher_names: list[str], teacher_specs: list[str], detector: str,
               options: LabelOptions) -> None:
    """Refuse to mix teachers in one dataset; record the run's settings."""
    if layout.run_path.is_file():
        prev = read_json(layout.run_path, "label run file")
        before = [t.get("name") for t in prev.get("teachers", [])] if isinstance(prev, dict) else None
        if before != teacher_names:
            raise RtsegError(f"{layout.root}: was labelled with teachers {before}, not {teacher_names}; "
                             f"use the same --teacher list or another --out")
        return
    write_json_atomic(layout.run_path, {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teachers": [{"name": n, "spec": s} for n, s in zip(teacher_names, teacher_specs)],
        "face_detector": detector, "every_seconds": options.every_seconds,
        "dedup_threshold": options.dedup_threshold, "max_side": options.max_side,
        "confidence": CONFIDENCE_FORMULA,
    })


def label_candidate(c: Candidate, layout: DatasetLayout, detector: FaceDetector, teachers: Sequence[Teacher],
                    teacher_names: Sequence[str], options: LabelOptions) -> Optional[dict]:
    """Detect faces, run the teachers and write one sample; returns its queue item (None: no face).

    The record file is written last: it marks the sample finished for a resumed run.
    """
    name = c.name
    base = {"name": name, "source": str(c.source.resolve()), "frame": c.frame,
            "time_s": None if c.time_s is None else round(c.time_s, 3)}
    faces = main_faces(detector.detect(c.rgb))
    if not faces:
        write_json_atomic(layout.record_path(name), {"status": "no_face", **base})
        return None
    combined = combine_teachers([t.person_probability(c.rgb) for t in teachers], faces)
    h, w = c.rgb.shape[:2]
    write_bytes_atomic(layout.image_path(name), _encode_jpeg(c.rgb, options.jpeg_quality))
    teacher_masks = {}
    for tname, m in zip(teacher_names, combined.teacher_masks):
        save_png_atomic(m * 255, layout.teacher_mask_path(tname, name))
        teacher_masks[tname] = layout.rel(layout.teacher_mask_path(tname, name))
    save_png_atomic(combined.mask * 255, layout.pseudo_path(name))
    save_png_atomic(combined.mask * 255, layout.gt_path(name))
    item = {
        **base,
        "image": layout.rel(layout.image_path(name)),
        "mask": layout.rel(layout.gt_path(name)),
        "pseudo_mask": layout.rel(layout.pseudo_path(name)),
        "teacher_masks": teacher_masks,
        "size": [w, h],
        "faces": [f.to_dict() for f in faces],
        "confidence": round(combined.confidence, 5),
        "person_fraction": round(float(combined.mask.mean()), 5),
        "teacher_iou": {t: round(v, 5) for t, v in zip(teacher_names, combined.teacher_iou)},
    }
    write_json_atomic(layout.record_path(name), {"status": "labelled", "item": item})
    return item


def assign_splits(sources: Sequence[str], val_fraction: float) -> dict[str, str]:
    """Source file -> ``train``/``val``, by a hash of the source path (stable across runs; all
    frames of a video land in one split). With ``val_fraction > 0`` and two or more sources, at
    least one source goes to val and at least one stays in train."""
    def frac(s: str) -> float:
        return int(hashlib.sha1(s.encode()).hexdigest()[:8], 16) / 2.0 ** 32

    order = sorted(set(sources), key=lambda s: (frac(s), s))
    split = {s: ("val" if frac(s) < val_fraction else "train") for s in order}
    if val_fraction > 0 and len(order) >= 2:
        if "val" not in split.values():
            split[order[0]] = "val"
        if "train" not in split.values():
            split[order[-1]] = "train"
    return split


def write_index(layout: DatasetLayout, teacher_names: Sequence[str], detector_name: str,
                val_fraction: float) -> list[dict]:
    """Rebuild queue.json and the split lists from all records of the dataset folder."""
    items = []
    for rec_path in sorted(layout.records_dir.glob("*.json")):
        rec = read_json(rec_path, "label record")
        if isinstance(rec, dict) and rec.get("status") == "labelled" and isinstance(rec.get("item"), dict):
            item = rec["item"]
            if layout.image_path(item["name"]).is_file() and layout.gt_path(item["name"]).is_file():
                items.append(item)
    splits = assign_splits([it["source"] for it in items], val_fraction)
    for it in items:
        it["split"] = splits[it["source"]]
    items.sort(key=lambda it: (it["confidence"], it["name"]))
    for split in ("train", "val"):
        names = sorted(it["name"] for it in items if it["split"] == split)
        write_text_atomic(layout.split_list(split), "".join(f"{n}\n" for n in names))
    write_json_atomic(layout.queue_path, {
        "version": QUEUE_VERSION, "teachers": list(teacher_names), "face_detector": detector_name,
        "confidence": CONFIDENCE_FORMULA, "items": items,
    })
    return items


def label_dataset(inputs: Sequence[PathLike], out: PathLike, teachers: Sequence[Teacher], detector: FaceDetector,
                  options: Optional[LabelOptions] = None, teacher_specs: Optional[Sequence[str]] = None,
                  progress: Optional[bool] = None) -> LabelReport:
    """Label ``inputs`` (image/video files and folders) into the dataset folder ``out``.

    ``progress``: show a tqdm bar (None: only on a terminal). Returns a :class:`LabelReport`.
    """
    options = options or LabelOptions()
    options.check()
    if not teachers:
        raise RtsegError("no teacher: give at least one --teacher MODEL:WEIGHTS (e.g. sinet:SINet.pth) "
                         "or --teacher mediapipe")
    layout = DatasetLayout(out)
    check_output_dir(layout.root)  # one line naming the path, before anything is read or written
    sources = expand_inputs(inputs, exclude=layout.root)
    names = unique_names(teachers)
    specs = list(teacher_specs) if teacher_specs else [getattr(t, "source", t.name) for t in teachers]
    layout.make_dirs()
    _check_run(layout, names, specs, detector.name, options)
    report = LabelReport()
    total = sum(estimate_candidates(s, options.every_seconds) for s in sources)
    try:
        _label_sources(sources, layout, detector, teachers, names, options, report, total, progress)
    finally:  # also after an error or Ctrl-C: the queue lists every finished sample
        items = write_index(layout, names, detector.name, options.val_fraction)
    report.items = len(items)
    report.queue_path = str(layout.queue_path)
    return report


def _label_sources(sources: Sequence[Path], layout: DatasetLayout, detector: FaceDetector,
                   teachers: Sequence[Teacher], names: Sequence[str], options: LabelOptions,
                   report: LabelReport, total: int, progress: Optional[bool]) -> None:
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="label", disable=(None if progress is None else not progress),
              dynamic_ncols=True) as bar:
        for source in sources:
            try:
                for c in iter_candidates(source, options):
                    report.sampled += 1
                    bar.update(1)
                    if c.duplicate:
                        report.duplicates += 1
                    elif layout.record_path(c.name).is_file():
                        report.already_done += 1
                    elif label_candidate(c, layout, detector, teachers, names, options) is None:
                        report.no_face += 1
                    else:
                        report.labelled += 1
                    bar.set_postfix(new=report.labelled, no_face=report.no_face, dup=report.duplicates)
            except UnreadableInput as e:
                if not options.skip_bad:
                    raise
                log.warning("skipping %s", e)
                report.bad_inputs.append(str(e))
