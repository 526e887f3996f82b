"""Files in, files out: what ``rtseg predict`` does, as library functions.

For an image ``NAME.ext`` it writes ``NAME_mask.png`` (class ids, palette PNG), ``NAME_overlay.png``
(colour overlay) and, for portrait models, ``NAME_cutout.png`` (RGBA with the person only).
For a video it writes ``NAME_overlay.mp4`` (and ``NAME_mask.mp4``), frames read with OpenCV.

Instance models (registry task ``"instance"``: CenterMask) write ``NAME_instances.png`` (masks,
boxes, class names and scores drawn by :func:`rtseg.visualize.draw_instances`) and
``NAME_instances.json`` (each detection's box, class, scores and COCO RLE mask) for an image, and
``NAME_overlay.mp4`` (instances drawn) for a video; detections scoring below
:data:`INSTANCE_MIN_SCORE` are left out (:func:`rtseg.inference.predict_instances` gives them all).

All or nothing: :func:`predict_paths` first checks every input (image headers against the pixel
limit, videos open and give a frame, no two inputs with the same output names) and the output
folder, before any model work; then every output goes to a hidden temporary file and all of them
are renamed into place only once every input has succeeded. A run that fails (or is
interrupted) on its last input leaves the output folder exactly as it was.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data.io import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ensure_output_dir,
                      open_image_header, read_image, save_png_atomic)
from .errors import DataError, RtsegError
from .inference import is_instance_model, predict_instances, predict_logits

PathLike = Union[str, os.PathLike]
#: Instance models: detections with a lower box score are not drawn or listed (detectron2's demo default).
INSTANCE_MIN_SCORE = 0.5


def expand_inputs(paths: Iterable[PathLike]) -> list[Path]:
    """Files and folders (their images and videos, sorted) -> a list of files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            if not found:
                raise DataError(f"{p}: folder contains no images or videos")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: file not found")
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _is_portrait(model: nn.Module) -> bool:
    names = tuple(getattr(model.pretrained_cfg, "class_names", ()))
    return len(names) == 2 and names[1] == "person"


def _palette(model: nn.Module, num_classes: int) -> np.ndarray:
    return model.pretrained_cfg.palette_array(num_classes)


class StagedOutputs:
    """Outputs of one run, written under hidden temporary names in their final folder and renamed
    into place together by :meth:`commit` (on leaving the ``with`` block without an error); on an
    error every temporary file is removed, so earlier results are neither half-written nor
    overwritten."""

    def __init__(self) -> None:
        self._pending: dict[Path, Path] = {}

    def temp_for(self, final: PathLike) -> Path:
        """The temporary path to write ``final`` to (same folder and extension)."""
        final = Path(final)
        if final in self._pending:
            raise DataError(f"{final}: two inputs of this run write the same output file")
        tmp = final.with_name(f".{final.stem}.rtseg-tmp{final.suffix}")
        self._pending[final] = tmp
        return tmp

    def commit(self) -> None:
        for final, tmp in self._pending.items():
            os.replace(tmp, final)
        self._pending.clear()

    def discard(self) -> None:
        for tmp in self._pending.values():
            if tmp.exists():
                tmp.unlink()
        self._pending.clear()

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def check_inputs(paths: Iterable[PathLike], max_pixels: Optional[int] = None) -> list[Path]:
    """Expand folders and check every input before any work is done (headers only, nothing is
    decoded): images must be readable and within ``max_pixels`` (default
    :data:`~rtseg.data.io.DEFAULT_MAX_PIXELS`), videos must open and give a first frame, and no two
    inputs may write the same output names."""
    files = expand_inputs(paths)
    seen: dict[tuple[str, bool], Path] = {}
    for f in files:
        video = is_video(f)
        if video:
            frames, _fps, _count = iter_video_frames(f)
            next(frames)  # decodes the first frame (checked readable) ...
            frames.close()  # ... and releases the capture
        else:
            open_image_header(f, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels).close()
        other = seen.setdefault((f.stem, video), f)
        if other != f:
            raise DataError(f"{f}: has the same name as {other}; their outputs ({f.stem}_mask...) would "
                            f"overwrite each other")
    return files


def predict_image_file(model: nn.Module, path: PathLike, out_dir: PathLike, *, alpha: float = 0.5,
                       max_pixels: Optional[int] = None, smoother: Any = None,
                       stage: Optional[StagedOutputs] = None) -> dict[str, Path]:
    """Segment one image file and write mask, overlay (and cut-out for portraits).

    With ``stage`` the files are written to its temporary names (renamed when it commits)."""
    from .visualize import cutout_rgba, overlay_mask

    path, out_dir = Path(path), Path(out_dir)
    image = read_image(path) if max_pixels is None else read_image(path, max_pixels)
    if is_instance_model(model):
        return _instances_image(model, image, path, out_dir, alpha, stage)
    logits = predict_logits(model, image)
    num_classes = logits.shape[1]
    mask = logits.argmax(1)[0].to(torch.uint8).numpy()
    del logits  # (C, H, W) float32: free it before drawing the overlay
    pal = _palette(model, num_classes)
    written = {"mask": out_dir / f"{path.stem}_mask.png", "overlay": out_dir / f"{path.stem}_overlay.png"}
    if _is_portrait(model):
        written["cutout"] = out_dir / f"{path.stem}_cutout.png"
    target = {k: (stage.temp_for(v) if stage is not None else v) for k, v in written.items()}
    save_png_atomic(mask, target["mask"], palette=pal)
    save_png_atomic(_by_bands(lambda im, m: overlay_mask(im, m, pal, alpha), image, mask, 3), target["overlay"])
    if "cutout" in target:
        save_png_atomic(_by_bands(lambda im, m: cutout_rgba(im, m, 1), image, mask, 4), target["cutout"])
    return written


def _draw_instances(model: nn.Module, image: np.ndarray, alpha: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from .visualize import draw_instances

    det = predict_instances(model, image, min_score=INSTANCE_MIN_SCORE)
    names = tuple(model.pretrained_cfg.class_names)
    return draw_instances(image, det["boxes"], det["labels"], det["scores"], det["masks"], names, alpha=alpha), det


def _instances_image(model: nn.Module, image: np.ndarray, path: Path, out_dir: Path, alpha: float,
                     stage: Optional["StagedOutputs"]) -> dict[str, Path]:
    """``NAME_instances.png`` and ``NAME_instances.json``: per detection its box (xyxy pixels),
    label, class name, box score, mask score, mask area and mask (COCO compressed RLE)."""
    import json

    from pycocotools import mask as mask_utils

    drawn, det = _draw_instances(model, image, alpha)
    names = tuple(model.pretrained_cfg.class_names)
    instances = []
    for i in range(len(det["boxes"])):
        rle = mask_utils.encode(np.asfortranarray(det["masks"][i].astype(np.uint8)))
        rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        lab = int(det["labels"][i])
        instances.append({"box": [round(float(v), 2) for v in det["boxes"][i]], "label": lab,
                          "class": names[lab] if lab < len(names) else f"class_{lab}",
                          "score": round(float(det["scores"][i]), 5),
                          "mask_score": round(float(det["mask_scores"][i]), 5), "area": int(det["masks"][i].sum()),
                          "segmentation": rle})
    h, w = image.shape[:2]
    doc = {"image": str(path), "height": h, "width": w, "min_score": INSTANCE_MIN_SCORE,
           "weights": model.pretrained_cfg.source, "instances": instances}
    written = {"instances": out_dir / f"{path.stem}_instances.png", "json": out_dir / f"{path.stem}_instances.json"}
    target = {k: (stage.temp_for(v) if stage is not None else v.with_name(f".{v.stem}.tmp{v.suffix}"))
              for k, v in written.items()}
    save_png_atomic(drawn, target["instances"])
    target["json"].write_text(json.dumps(doc, indent=1))
    if stage is None:
        for k, v in written.items():
            os.replace(target[k], v)
    return written


def _instances_video(model: nn.Module, path: Path, out_dir: Path, alpha: float, progress: bool,
                     stage: Optional["StagedOutputs"]) -> dict[str, Path]:
    """``NAME_overlay.mp4``: every frame with its instances drawn."""
    import cv2

    frames, fps, count = iter_video_frames(path)
    target = out_dir / f"{path.stem}_overlay.mp4"
    tmp = stage.temp_for(target) if stage is not None else target.with_name(f".{target.stem}.tmp.mp4")
    writer: Any = None
    try:
        for frame in tqdm(frames, total=count or None, desc=path.name, unit="frame", disable=not progress):
            drawn, _ = _draw_instances(model, frame, alpha)
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                if not writer.isOpened():
                    raise DataError(f"{target}: cannot open video writer")
            writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        writer.release()
        if stage is None:
            os.replace(tmp, target)
    except BaseException:
        if writer is not None:
            writer.release()
        if tmp.exists():
            tmp.unlink()
        raise
    return {"overlay": target}


def _by_bands(draw: Any, image: np.ndarray, mask: np.ndarray, channels: int,
              band_pixels: int = 1 << 20) -> np.ndarray:
    """``draw(image, mask)`` computed in bands of rows (about ``band_pixels`` pixels each) into one
    uint8 (H, W, channels) array: the float temporaries of drawing stay bounded on huge images."""
    h, w = mask.shape
    rows = max(1, band_pixels // max(w, 1))
    out = np.empty((h, w, channels), np.uint8)
    for r in range(0, h, rows):
        out[r:r + rows] = draw(image[r:r + rows], mask[r:r + rows])
    return out


def iter_video_frames(path: Path) -> tuple[Iterator[np.ndarray], float, int]:
    """RGB frames of a video, its fps and frame count (clear error when it cannot be opened)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: video cannot be opened (unknown codec or corrupt file)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    ok, first = cap.read()
    if not ok:
        cap.release()
        raise DataError(f"{path}: video has no readable frames")

    def frames() -> Iterator[np.ndarray]:
        try:
            frame: Optional[np.ndarray] = first
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, nxt = cap.read()
                frame = nxt if ok else None
        finally:
            cap.release()

    return frames(), float(fps), count


def predict_video_file(model: nn.Module, path: PathLike, out_dir: PathLike, *, alpha: float = 0.5,
                       smooth: bool = False, progress: bool = True,
                       stage: Optional[StagedOutputs] = None) -> dict[str, Path]:
    """Segment every frame of a video; writes ``NAME_overlay.mp4`` and ``NAME_mask.mp4`` (to
    temporary files renamed at the end, or renamed when ``stage`` commits)."""
    import cv2

    from .visualize import overlay_mask

    path, out_dir = Path(path), Path(out_dir)
    if is_instance_model(model):
        return _instances_video(model, path, out_dir, alpha, progress, stage)
    frames, fps, count = iter_video_frames(path)
    smoother = None
    if smooth:
        from .smoothing import TemporalSmoother

        smoother = TemporalSmoother()
    targets = {"overlay": out_dir / f"{path.stem}_overlay.mp4", "mask": out_dir / f"{path.stem}_mask.mp4"}
    tmps = {k: (stage.temp_for(v) if stage is not None else v.with_name(f".{v.stem}.tmp.mp4"))
            for k, v in targets.items()}
    writers: dict[str, Any] = {}
    pal = None
    try:
        for frame in tqdm(frames, total=count or None, desc=path.name, unit="frame", disable=not progress):
            logits = predict_logits(model, frame)
            if smoother is not None:
                probs = smoother.update(torch.softmax(logits, 1)[0].numpy(), frame)
                mask = probs.argmax(0).astype(np.uint8)
            else:
                mask = logits.argmax(1)[0].to(torch.uint8).numpy()
            if pal is None:
                pal = _palette(model, logits.shape[1])
            h, w = mask.shape
            if not writers:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                for k, tmp in tmps.items():
                    writers[k] = cv2.VideoWriter(str(tmp), fourcc, fps, (w, h))
                    if not writers[k].isOpened():
                        raise DataError(f"{targets[k]}: cannot open video writer")
            writers["overlay"].write(cv2.cvtColor(overlay_mask(frame, mask, pal, alpha), cv2.COLOR_RGB2BGR))
            writers["mask"].write(cv2.cvtColor(pal[mask], cv2.COLOR_RGB2BGR))
        for wr in writers.values():
            wr.release()
        if stage is None:
            for k, tmp in tmps.items():
                os.replace(tmp, targets[k])
    except BaseException:
        for wr in writers.values():
            wr.release()
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()
        raise
    return targets


def predict_paths(model: nn.Module, inputs: Iterable[PathLike], out_dir: PathLike, *, alpha: float = 0.5,
                  smooth: bool = False, progress: bool = True, max_pixels: Optional[int] = None) -> list[dict[str, Path]]:
    """Images, folders and videos -> written files (one dict per input).

    All or nothing (module docstring): inputs and ``out_dir`` are checked first, and the outputs
    appear only when every input succeeded."""
    files = check_inputs(inputs, max_pixels)
    out = ensure_output_dir(out_dir)
    results = []
    images = [f for f in files if not is_video(f)]
    bar = tqdm(total=len(images), desc="predict", unit="img", disable=not progress or len(images) < 2)
    try:
        with StagedOutputs() as stage:
            for f in files:
                if is_video(f):
                    results.append(predict_video_file(model, f, out, alpha=alpha, smooth=smooth, progress=progress,
                                                      stage=stage))
                else:
                    results.append(predict_image_file(model, f, out, alpha=alpha, max_pixels=max_pixels, stage=stage))
                    bar.update(1)
    finally:
        bar.close()
    return results
