"""Files in, files out: what ``rtseg predict`` does, as library functions.

For an image ``NAME.ext`` it writes ``NAME_mask.png`` (class ids, palette PNG), ``NAME_overlay.png``
(colour overlay) and, for portrait models, ``NAME_cutout.png`` (RGBA with the person only).
For a video it writes ``NAME_overlay.mp4`` (and ``NAME_mask.mp4``): frames are read with OpenCV
and written to a temporary file renamed at the end, so an interrupted run leaves nothing half
written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image, save_png_atomic
from .errors import DataError, RtsegError
from .inference import predict_logits

PathLike = Union[str, os.PathLike]


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


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create output folder ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK):
        raise DataError(f"{out_dir}: output folder is not writable")


def predict_image_file(model: nn.Module, path: PathLike, out_dir: PathLike, *, alpha: float = 0.5,
                       max_pixels: Optional[int] = None, smoother: Any = None) -> dict[str, Path]:
    """Segment one image file and write mask, overlay (and cut-out for portraits)."""
    from .visualize import cutout_rgba, overlay_mask

    path, out_dir = Path(path), Path(out_dir)
    image = read_image(path) if max_pixels is None else read_image(path, max_pixels)
    logits = predict_logits(model, image)
    mask = logits.argmax(1)[0].to(torch.uint8).numpy()
    pal = _palette(model, logits.shape[1])
    written = {"mask": out_dir / f"{path.stem}_mask.png", "overlay": out_dir / f"{path.stem}_overlay.png"}
    save_png_atomic(mask, written["mask"], palette=pal)
    save_png_atomic(overlay_mask(image, mask, pal, alpha), written["overlay"])
    if _is_portrait(model):
        written["cutout"] = out_dir / f"{path.stem}_cutout.png"
        save_png_atomic(cutout_rgba(image, mask, 1), written["cutout"])
    return written


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
                       smooth: bool = False, progress: bool = True) -> dict[str, Path]:
    """Segment every frame of a video; writes ``NAME_overlay.mp4`` and ``NAME_mask.mp4``."""
    import cv2

    from .visualize import overlay_mask

    path, out_dir = Path(path), Path(out_dir)
    frames, fps, count = iter_video_frames(path)
    smoother = None
    if smooth:
        from .smoothing import TemporalSmoother

        smoother = TemporalSmoother()
    targets = {"overlay": out_dir / f"{path.stem}_overlay.mp4", "mask": out_dir / f"{path.stem}_mask.mp4"}
    tmps = {k: v.with_name(f".{v.stem}.tmp.mp4") for k, v in targets.items()}
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
    """Images, folders and videos -> written files (one dict per input)."""
    files = expand_inputs(inputs)
    out = Path(out_dir)
    check_writable(out)
    results = []
    images = [f for f in files if not is_video(f)]
    bar = tqdm(total=len(images), desc="predict", unit="img", disable=not progress or len(images) < 2)
    for f in files:
        if is_video(f):
            results.append(predict_video_file(model, f, out, alpha=alpha, smooth=smooth, progress=progress))
        else:
            results.append(predict_image_file(model, f, out, alpha=alpha, max_pixels=max_pixels))
            bar.update(1)
    bar.close()
    return results
