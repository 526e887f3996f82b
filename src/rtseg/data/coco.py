"""COCO-format instance segmentation: reader, transforms that keep boxes and masks together,
and batching.

:class:`CocoInstances` reads ``images_dir`` + an instances json (the ``instances_*.json`` of
COCO, or anything in that format). The json is validated once when the dataset is opened, so a
broken file fails at once with one line naming it; images are read lazily.

* Segmentations may be polygons, compressed RLE (``counts`` a string) or uncompressed RLE
  (``counts`` a list); all are decoded with ``pycocotools.mask``.
* ``iscrowd`` regions are left out of the training targets. Evaluation uses the json itself
  (see :func:`rtseg.engine.coco_eval.evaluate_coco`), where COCOeval treats them as "ignore".
* Images without annotations are kept, with empty targets.
* Category ids are mapped to contiguous 0-based labels in increasing id order;
  ``label_to_category_id[label]`` maps back, ``class_names`` come from the json.
* Degenerate polygons (fewer than 3 points, zero area) and boxes of zero width or height are
  skipped with one logged warning per file, not an error.

An item is ``(image, target)``: the RGB uint8 image (H, W, 3) after the transform, and
``target = {"boxes": float32 (K, 4) xyxy in the image's pixels, "labels": int64 (K,),
"masks": uint8 (K, H, W), "image_id": int, "orig_size": (H0, W0)}`` (tensors). Normalisation is
not done here: the model's ``pretrained_cfg`` does it (:func:`batch_images`).
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ..config import PretrainedCfg
from ..errors import DataError
from .io import read_image

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: A target while it is still numpy: boxes (K, 4) float32, labels (K,) int64, masks (K, H, W) uint8.
Target = dict[str, Any]
Transform = Callable[[np.ndarray, Target], tuple[np.ndarray, Target]]


# --- the json ---------------------------------------------------------------------------------

def load_coco_json(path: PathLike) -> dict[str, Any]:
    """Read and check the top level of a COCO instances json (images, annotations, categories)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: annotation file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read annotation file ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: not a COCO instances file (top level is a {type(data).__name__}, expected an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{p}: not a COCO instances file (no \"{key}\" list)")
    return data


def _polygon_area(poly: Sequence[float]) -> float:
    """Shoelace area of a flat [x0, y0, x1, y1, ...] polygon."""
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _usable_polygons(segm: list) -> list[list[float]]:
    """The polygons of ``segm`` with at least 3 points and a non-zero area."""
    out = []
    for poly in segm:
        if isinstance(poly, (list, tuple)) and len(poly) >= 6 and len(poly) % 2 == 0:
            if _polygon_area(poly) > 0:
                out.append([float(v) for v in poly])
    return out


def segmentation_to_rle(segm: Any, h: int, w: int) -> dict[str, Any]:
    """Polygons / compressed RLE / uncompressed RLE -> one compressed RLE (pycocotools)."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, h, w)
    counts = segm["counts"]
    return {"size": [int(v) for v in segm["size"]],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Compressed RLE -> (H, W) uint8. (pycocotools' decoder raises a numpy-2 DeprecationWarning
    about ``__array__(copy=...)`` on every call; it is harmless and silenced here.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def decode_segmentation(segm: Any, h: int, w: int) -> np.ndarray:
    """Polygons / compressed RLE / uncompressed RLE -> (H, W) uint8 mask."""
    if isinstance(segm, list) and not segm:
        return np.zeros((h, w), np.uint8)
    return decode_rle(segmentation_to_rle(segm, h, w))


# --- the dataset ------------------------------------------------------------------------------

class CocoInstances(Dataset):
    """A COCO instances json + its image folder. See the module docstring for the item format.

    ``transform(image, target) -> (image, target)`` works on numpy (see :class:`ResizeShortestEdge`,
    :class:`RandomHorizontalFlip`, :func:`instance_transform`); instances whose box becomes
    empty are dropped after it.
    """

    def __init__(self, images_dir: PathLike, annotation_json: PathLike,
                 transform: Optional[Transform] = None) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_json = Path(annotation_json)
        self.transform = transform
        data = load_coco_json(self.annotation_json)
        where = self.annotation_json

        cats = {}
        for c in data["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int):
                raise DataError(f"{where}: category entry {str(c)[:60]} has no integer \"id\"")
            if c["id"] in cats:
                raise DataError(f"{where}: category id {c['id']} appears twice in \"categories\"")
            cats[c["id"]] = str(c.get("name", c["id"]))
        #: label -> COCO category id (labels are category ids sorted, renumbered 0..C-1)
        self.label_to_category_id: tuple[int, ...] = tuple(sorted(cats))
        self.category_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.label_to_category_id)}
        self.class_names: tuple[str, ...] = tuple(cats[cid] for cid in self.label_to_category_id)

        self.images: list[dict[str, Any]] = []
        index_of: dict[int, int] = {}
        for im in data["images"]:
            if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width", "height")):
                raise DataError(f"{where}: image entry {str(im)[:80]} needs id, file_name, width and height")
            if im["id"] in index_of:
                raise DataError(f"{where}: image id {im['id']} appears twice in \"images\"")
            index_of[im["id"]] = len(self.images)
            self.images.append({"id": im["id"], "file_name": str(im["file_name"]),
                                "height": int(im["height"]), "width": int(im["width"])})
        if not self.images:
            raise DataError(f"{where}: \"images\" is empty")

        self._anns: list[list[dict[str, Any]]] = [[] for _ in self.images]
        self.num_crowd = 0
        skipped: list[str] = []
        for a in data["annotations"]:
            if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
                raise DataError(f"{where}: annotation {str(a)[:80]} needs image_id and category_id")
            aid = a.get("id", "?")
            if a["category_id"] not in self.category_id_to_label:
                raise DataError(f"{where}: annotation {aid} has category_id {a['category_id']}, "
                                f"which is not in \"categories\"")
            if a["image_id"] not in index_of:
                raise DataError(f"{where}: annotation {aid} refers to image_id {a['image_id']}, "
                                f"which is not in \"images\"")
            if a.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            im = self.images[index_of[a["image_id"]]]
            segm = self._check_segmentation(a, im)
            if isinstance(segm, list) and len(segm) < len(a["segmentation"]):
                dropped = len(a["segmentation"]) - len(segm)
                skipped.append(f"{aid} ({dropped} degenerate polygon(s)" + (")" if segm else ", skipped)"))
            if not segm:
                continue
            box = self._check_box(a, im)
            if box is None:
                skipped.append(f"{aid} (empty box, skipped)")
                continue
            self._anns[index_of[a["image_id"]]].append(
                {"id": aid, "label": self.category_id_to_label[a["category_id"]], "segmentation": segm, "box": box})
        if skipped:
            logger.warning("%s: %d annotation(s) with degenerate polygons or empty boxes: %s%s", where,
                           len(skipped), ", ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")

        missing = [im["file_name"] for im in self.images if not (self.images_dir / im["file_name"]).is_file()]
        if missing:
            raise DataError(f"{self.images_dir / missing[0]}: image file listed in {where} not found"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    def _check_segmentation(self, a: dict[str, Any], im: dict[str, Any]) -> Any:
        """The annotation's segmentation ready to decode: an RLE dict, or its usable polygons
        (an empty list when all are degenerate)."""
        segm = a.get("segmentation")
        if isinstance(segm, list):
            return _usable_polygons(segm)
        if isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if [int(v) for v in segm["size"]] != [im["height"], im["width"]]:
                raise DataError(f"{self.annotation_json}: annotation {a.get('id', '?')} has an RLE of size "
                                f"{segm['size']} but its image {im['file_name']} is {im['height']}x{im['width']} (HxW)")
            return segm
        raise DataError(f"{self.annotation_json}: annotation {a.get('id', '?')} has no polygon or RLE \"segmentation\"")

    def _check_box(self, a: dict[str, Any], im: dict[str, Any]) -> Optional[list[float]]:
        """xyxy clipped to the image; ``[]`` when the json has no bbox (taken from the mask later);
        None when the box is empty."""
        bbox = a.get("bbox")
        if bbox is None:
            return []
        try:
            x, y, bw, bh = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DataError(f"{self.annotation_json}: annotation {a.get('id', '?')} has bbox {str(bbox)[:60]}, "
                            f"expected [x, y, width, height]") from None
        x1, y1 = min(max(x, 0.0), im["width"]), min(max(y, 0.0), im["height"])
        x2, y2 = min(max(x + bw, 0.0), im["width"]), min(max(y + bh, 0.0), im["height"])
        return [x1, y1, x2, y2] if (x2 > x1 and y2 > y1) else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        return [im["id"] for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, Target]:
        """Image ``index`` and its numpy target, before the transform."""
        im = self.images[index]
        path = self.images_dir / im["file_name"]
        image = read_image(path)
        h, w = image.shape[:2]
        if (h, w) != (im["height"], im["width"]):
            raise DataError(f"{path}: image is {w}x{h} but {self.annotation_json} says "
                            f"{im['width']}x{im['height']} (width x height)")
        boxes, labels, masks = [], [], []
        for a in self._anns[index]:
            m = decode_segmentation(a["segmentation"], h, w)
            if not m.any():
                logger.debug("%s: annotation %s decodes to an empty mask; skipped", self.annotation_json, a["id"])
                continue
            box = a["box"] or mask_to_box(m)
            boxes.append(box)
            labels.append(a["label"])
            masks.append(m)
        target = {
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "masks": np.stack(masks) if masks else np.zeros((0, h, w), np.uint8),
            "image_id": im["id"],
            "orig_size": (h, w),
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        image, target = self.load(index)
        if self.transform is not None:
            image, target = self.transform(image, target)
        target = drop_empty_boxes(target)
        return np.ascontiguousarray(image), target_to_tensors(target)


def mask_to_box(mask: np.ndarray) -> list[float]:
    """Tight xyxy box in pixel-edge coordinates (x2 = last column + 1) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def drop_empty_boxes(target: Target) -> Target:
    """Remove instances whose box has zero width or height (e.g. after a resize)."""
    b = target["boxes"]
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if keep.all():
        return target
    return {**target, "boxes": b[keep], "labels": target["labels"][keep], "masks": target["masks"][keep]}


def target_to_tensors(target: Target) -> dict[str, Any]:
    out = dict(target)
    out["boxes"] = torch.from_numpy(np.ascontiguousarray(target["boxes"], dtype=np.float32))
    out["labels"] = torch.from_numpy(np.ascontiguousarray(target["labels"], dtype=np.int64))
    out["masks"] = torch.from_numpy(np.ascontiguousarray(target["masks"], dtype=np.uint8))
    return out


# --- transforms -------------------------------------------------------------------------------

class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: scale so the short side is
    ``short_edge`` unless the long side would exceed ``max_size``; round half up."""
    scale = short_edge / min(h, w)
    newh, neww = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def resize_instances(image: np.ndarray, target: Target, size: tuple[int, int]) -> tuple[np.ndarray, Target]:
    """Resize image (bilinear), masks (nearest, pixel-centre aligned, as PIL/detectron2) and
    boxes (scaled) to ``size`` = (H, W). When shrinking, parts of a mask thinner than a pixel of
    the output may vanish, so the box can then be a little larger than the mask's bounding box."""
    h, w = image.shape[:2]
    newh, neww = size
    if (newh, neww) == (h, w):
        return image, target
    image = cv2.resize(image, (neww, newh), interpolation=cv2.INTER_LINEAR)
    masks = target["masks"]
    if len(masks):
        masks = np.stack([cv2.resize(m, (neww, newh), interpolation=cv2.INTER_NEAREST_EXACT) for m in masks])
    else:
        masks = np.zeros((0, newh, neww), np.uint8)
    scale = np.array([neww / w, newh / h, neww / w, newh / h], np.float32)
    boxes = target["boxes"] * scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, neww)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, newh)
    return image, {**target, "boxes": boxes, "masks": masks}


class ResizeShortestEdge:
    """Resize so the shortest side is a length drawn from ``short_edge`` (capped by ``max_size``
    on the long side), as detectron2's ``ResizeShortestEdge``.

    ``sample_style="range"``: ``short_edge=(lo, hi)``, an integer uniformly in [lo, hi];
    ``"choice"``: one of the listed lengths. A single int is a fixed size (evaluation).
    Random draws use torch's generator (seeded per DataLoader worker).
    """

    def __init__(self, short_edge: Union[int, Sequence[int]], max_size: int = 1333,
                 sample_style: str = "range") -> None:
        self.lengths = (int(short_edge),) if isinstance(short_edge, int) else tuple(int(v) for v in short_edge)
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        if sample_style == "range" and len(self.lengths) not in (1, 2):
            raise ValueError(f"sample_style='range' needs (min, max), got {self.lengths}")
        self.max_size = int(max_size)
        self.sample_style = sample_style

    def sample(self) -> int:
        if len(self.lengths) == 1:
            return self.lengths[0]
        if self.sample_style == "range":
            lo, hi = self.lengths
            return int(torch.randint(lo, hi + 1, ()).item())
        return self.lengths[int(torch.randint(len(self.lengths), ()).item())]

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        return resize_instances(image, target, resized_shape(h, w, self.sample(), self.max_size))


def hflip_instances(image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
    """Mirror left-right: x -> W - x for boxes (pixel-edge coordinates), masks flipped."""
    w = image.shape[1]
    boxes = target["boxes"].copy()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return (np.ascontiguousarray(image[:, ::-1]),
            {**target, "boxes": boxes, "masks": np.ascontiguousarray(target["masks"][:, :, ::-1])})


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        if self.p > 0 and float(torch.rand(())) < self.p:
            return hflip_instances(image, target)
        return image, target


def instance_transform(train: bool, short_edge: Union[int, Sequence[int]] = (640, 800),
                       max_size: int = 1333, test_short_edge: int = 800, flip: bool = True) -> Compose:
    """The usual CenterMask/detectron2 recipe: training = random short side in ``short_edge`` +
    horizontal flip; evaluation = short side ``test_short_edge``."""
    if not train:
        return Compose([ResizeShortestEdge(test_short_edge, max_size)])
    ts: list[Transform] = [ResizeShortestEdge(short_edge, max_size, "range")]
    if flip:
        ts.append(RandomHorizontalFlip(0.5))
    return Compose(ts)


# --- batching ---------------------------------------------------------------------------------

def collate(items: Sequence[tuple[np.ndarray, dict[str, Any]]]) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Images of different sizes cannot be stacked: a list of images and a list of targets
    (:func:`batch_images` normalises and pads the images on the model's side)."""
    return [it[0] for it in items], [it[1] for it in items]


def batch_images(images: Sequence[np.ndarray], cfg: PretrainedCfg,
                 size_divisor: Optional[int] = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Normalise RGB uint8 images with ``cfg`` and zero-pad them (bottom/right) into one
    (N, 3, H, W) tensor whose H, W are multiples of ``size_divisor`` (default ``cfg.size_divisor``).
    Returns the batch and each image's (H, W); boxes and masks need no change (padding is at the
    bottom/right)."""
    from ..inference import normalize

    d = max(1, int(size_divisor if size_divisor is not None else cfg.size_divisor))
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    H = -(-max(s[0] for s in sizes) // d) * d
    W = -(-max(s[1] for s in sizes) // d) * d
    batch = [F.pad(normalize(im, cfg), (0, W - w, 0, H - h)) for im, (h, w) in zip(images, sizes)]
    return torch.cat(batch), sizes
