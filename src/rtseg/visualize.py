"""Drawing helpers shared by the CLI and notebooks: pure numpy/OpenCV, inputs are never
modified, every function returns a new uint8 array.

* :func:`colorize` - class-id mask -> RGB colours.
* :func:`overlay_mask` - semantic mask blended over the image.
* :func:`cutout_rgba` - portrait cut-out: RGBA with the person opaque and the rest transparent.
* :func:`draw_instances` - instance masks in distinct colours, boxes, class names and scores.
"""
from __future__ import annotations

import colorsys
from typing import Any, Iterable, Optional, Sequence

import cv2
import numpy as np

from .config import default_palette


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = _np(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _check_mask(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    mask = _np(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask is {mask.shape}, image is {image.shape[:2]}")
    return mask


def palette_lut(palette: Optional[Any] = None) -> np.ndarray:
    """(256, 3) uint8 colour table: ``palette`` for the first entries, the VOC palette for the
    rest (so 255, the usual ignore index, is VOC's light "void" colour)."""
    lut = default_palette(256)
    if palette is not None:
        pal = _np(palette).astype(np.uint8).reshape(-1, 3)[:256]
        lut[: len(pal)] = pal
    return lut


def colorize(mask: np.ndarray, palette: Optional[Any] = None) -> np.ndarray:
    """Class ids (H, W) (values 0..255) -> RGB (H, W, 3) uint8 via ``palette`` ((C, 3))."""
    mask = _np(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) class ids, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"class ids must be in 0..255, got {int(mask.min())}..{int(mask.max())}")
    return palette_lut(palette)[mask.astype(np.uint8)]


def overlay_mask(image: np.ndarray, mask: np.ndarray, palette: Optional[Any] = None, alpha: float = 0.5,
                 skip: Iterable[int] = ()) -> np.ndarray:
    """The image with each pixel blended ``alpha`` towards its class colour; classes in ``skip``
    (e.g. background) stay untouched. Returns RGB uint8 (H, W, 3)."""
    image = _check_image(image)
    mask = _check_mask(mask, image)
    colours = colorize(mask, palette).astype(np.float32)
    out = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    keep = np.isin(mask, list(skip))
    out[keep] = image[keep]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def cutout_rgba(image: np.ndarray, mask: np.ndarray, fg_class: int = 1) -> np.ndarray:
    """RGBA (H, W, 4) uint8: the image with alpha 255 where ``mask == fg_class`` and 0 elsewhere.
    A float mask is taken as a soft matte in [0, 1] (e.g. the person probability)."""
    image = _check_image(image)
    mask = _check_mask(mask, image)
    if np.issubdtype(mask.dtype, np.floating):
        alpha = np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        alpha = np.where(mask == fg_class, 255, 0).astype(np.uint8)
    return np.dstack([image, alpha])


def instance_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct bright colours (hues spaced by the golden ratio)."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        h = (0.08 + i * 0.618033988749895) % 1.0
        s, v = (0.85, 0.95) if i % 2 == 0 else (0.65, 0.8)
        out[i] = [int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v)]
    return out


def draw_instances(image: np.ndarray, boxes: Optional[Any] = None, labels: Optional[Any] = None,
                   scores: Optional[Any] = None, masks: Optional[Any] = None,
                   class_names: Sequence[str] = (), *, alpha: float = 0.5,
                   colours: Optional[Any] = None) -> np.ndarray:
    """Instances drawn over the image: each mask filled in its own colour (blended ``alpha``)
    with an outline, its box, and a ``"name 0.93"`` tag. Any of boxes (K, 4) xyxy, labels (K,),
    scores (K,), masks (K, H, W) may be None. Returns RGB uint8 (H, W, 3)."""
    image = _check_image(image)
    h, w = image.shape[:2]
    boxes_a = _np(boxes).astype(np.float64).reshape(-1, 4) if boxes is not None else None
    masks_a = _np(masks) if masks is not None else None
    if masks_a is not None and masks_a.shape[1:] != (h, w):
        raise ValueError(f"masks are {masks_a.shape}, expected (K, {h}, {w})")
    k = len(boxes_a) if boxes_a is not None else (len(masks_a) if masks_a is not None else 0)
    labels_a = _np(labels).astype(np.int64).reshape(-1) if labels is not None else None
    scores_a = _np(scores).astype(np.float64).reshape(-1) if scores is not None else None
    for name, arr in (("masks", masks_a), ("labels", labels_a), ("scores", scores_a)):
        if arr is not None and len(arr) != k:
            raise ValueError(f"{len(arr)} {name} for {k} instances")
    cols = _np(colours).astype(np.uint8).reshape(-1, 3) if colours is not None else instance_colours(max(k, 1))

    out = image.astype(np.float32)
    if masks_a is not None:
        for i in range(k):
            m = masks_a[i] > 0
            out[m] = out[m] * (1.0 - alpha) + cols[i % len(cols)].astype(np.float32) * alpha
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    thick = max(1, int(round(min(h, w) / 300)))
    font_scale = 0.35 * thick + 0.05
    if masks_a is not None:
        for i in range(k):
            contours, _ = cv2.findContours((masks_a[i] > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, _colour_tuple(cols[i % len(cols)]), thick)
    for i in range(k):
        colour = _colour_tuple(cols[i % len(cols)])
        if boxes_a is not None:
            x1, y1, x2, y2 = boxes_a[i]
            p1 = (int(round(x1)), int(round(y1)))
            p2 = (int(round(x2)) - 1, int(round(y2)) - 1)
            cv2.rectangle(out, p1, p2, colour, thick)
            anchor = p1
        elif masks_a is not None and masks_a[i].any():
            ys, xs = np.nonzero(masks_a[i])
            anchor = (int(xs.min()), int(ys.min()))
        else:
            continue
        text = _tag(i, labels_a, scores_a, class_names)
        if text:
            _put_tag(out, text, anchor, colour, font_scale, thick)
    return out


def _colour_tuple(c: np.ndarray) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


def _tag(i: int, labels: Optional[np.ndarray], scores: Optional[np.ndarray], class_names: Sequence[str]) -> str:
    parts = []
    if labels is not None:
        lab = int(labels[i])
        parts.append(class_names[lab] if 0 <= lab < len(class_names) else f"class {lab}")
    if scores is not None:
        parts.append(f"{scores[i]:.2f}")
    return " ".join(parts)


def _put_tag(img: np.ndarray, text: str, anchor: tuple[int, int], colour: tuple[int, int, int],
             scale: float, thick: int) -> None:
    """Text on a filled box of ``colour`` just above ``anchor`` (inside the image when at the top)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    weight = max(1, thick // 2)
    (tw, th), base = cv2.getTextSize(text, font, scale, weight)
    x = min(max(anchor[0], 0), max(img.shape[1] - tw - 2, 0))
    y = anchor[1] - th - base - 2
    if y < 0:
        y = max(anchor[1], 0)
    cv2.rectangle(img, (x, y), (x + tw + 2, y + th + base + 2), colour, -1)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(img, text, (x + 1, y + th + 1), font, scale, ink, weight, cv2.LINE_AA)
