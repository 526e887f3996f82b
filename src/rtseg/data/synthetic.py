"""A small synthetic instance-segmentation set in COCO format (for tests and smoke runs).

Each image is a textured background (noise, a linear gradient or stripes) with a few filled shapes
(circle, square, rectangle, triangle, ellipse) in random colours. Shapes are painted in order, so
later shapes cover earlier ones; the annotation of every shape is its *visible* part, so the masks
of one image never overlap. A shape is only placed when every earlier shape keeps at least
``min_visible`` of its own area visible (partial, never total, occlusion).

Annotations use all three COCO segmentation encodings across the set, so that every reader path
is exercised: image ``i`` stores polygons when ``i % 3 == 0`` (RLE when the visible part has a hole
or a polygon cannot represent it), compressed RLE when ``i % 3 == 1`` and uncompressed RLE (a
``counts`` list, as COCO uses for crowd regions) when ``i % 3 == 2``. ``bbox`` and ``area`` are
those of the stored segmentation as pycocotools decodes it.

Everything is drawn from one ``numpy.random.default_rng(seed)``: the same arguments give the
same files byte for byte.

From the command line (the held-out recipe of the README's CenterMask section)::

    python -m rtseg.data.synthetic OUT --num-images 600 --size 128 --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .coco import decode_rle, segmentation_to_rle

PathLike = Union[str, os.PathLike]

SHAPES = ("circle", "square", "rectangle", "triangle", "ellipse")
DEFAULT_CLASSES = ("circle", "rectangle", "triangle", "ellipse")


@dataclass(frozen=True)
class SyntheticCoco:
    """Where :func:`make_synthetic_coco` wrote the set."""

    root: Path
    images_dir: Path
    train_json: Path
    val_json: Path
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]


# --- drawing ---------------------------------------------------------------------------------

def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8: noise around a colour, a two-colour gradient, or stripes."""
    kind = int(rng.integers(3))
    c1, c2 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    proj = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == 0:
        img = c1 + rng.normal(0, 25, size=(h, w, 3)).astype(np.float32)
    elif kind == 1:
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:
        period = rng.uniform(6, 24)
        t = (np.floor(proj / period) % 2)[..., None]
        img = c1 * (1 - t) + c2 * t
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, shape: str, h: int, w: int) -> np.ndarray:
    """(H, W) uint8 full (unoccluded) mask of one random ``shape``; may extend past the border."""
    m = np.zeros((h, w), np.uint8)
    s = min(h, w)
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    r = rng.uniform(0.08, 0.22) * s
    angle = rng.uniform(0, 180)
    if shape == "circle":
        cv2.circle(m, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
    elif shape in ("square", "rectangle"):
        aspect = 1.0 if shape == "square" else rng.uniform(1.4, 2.5)
        side = r * 1.6
        pts = cv2.boxPoints(((cx, cy), (side * aspect, side), angle))
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    elif shape == "ellipse":
        axes = (int(round(r * rng.uniform(1.2, 1.6))), int(round(r * rng.uniform(0.45, 0.8))))
        cv2.ellipse(m, (int(round(cx)), int(round(cy))), axes, angle, 0, 360, 1, -1)
    elif shape == "triangle":
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        radii = r * rng.uniform(1.0, 1.5, 3)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return m


def draw_scene(rng: np.random.Generator, size: tuple[int, int], num_objects: int,
               classes: Sequence[str] = DEFAULT_CLASSES, min_visible: float = 0.5,
               min_area: int = 24) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image with up to ``num_objects`` shapes.

    Returns the RGB uint8 image (H, W, 3) and ``[(class_index, visible_mask (H, W) uint8), ...]``
    in painting order; the visible masks are disjoint and each has at least ``min_area`` pixels.
    """
    h, w = size
    image = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)  # index of the shape that shows at each pixel
    full_area: list[int] = []
    visible: list[int] = []
    labels: list[int] = []
    for _ in range(4 * num_objects):
        if len(labels) == num_objects:
            break
        label = int(rng.integers(len(classes)))
        m = _shape_mask(rng, classes[label], h, w).astype(bool)
        area = int(m.sum())
        if area < max(min_area, 1):
            continue
        covered = owner[m]
        lost = np.bincount(covered[covered >= 0], minlength=len(labels))
        if any(v - c < max(min_visible * a, min_area) for v, c, a in zip(visible, lost, full_area)):
            continue  # would hide too much of an earlier shape: try another
        colour = rng.integers(0, 256, size=3)
        shade = rng.normal(0, 6, size=(area, 1))  # a little texture on the shape
        image[m] = np.clip(colour[None, :] + shade, 0, 255).astype(np.uint8)
        owner[m] = len(labels)
        visible = [v - c for v, c in zip(visible, lost)] + [area]
        full_area.append(area)
        labels.append(label)
    objects = [(lab, (owner == i).astype(np.uint8)) for i, lab in enumerate(labels)]
    return image, objects


# --- encoding ---------------------------------------------------------------------------------

def _polygons(mask: np.ndarray) -> Optional[list[list[float]]]:
    """COCO polygons (continuous pixel-edge coordinates) of a mask without holes, else None.

    Contours are traced on the mask upsampled x2 and mapped back with ``(c + 0.5) / 2``, which
    puts the polygon on the pixels' outer edges, so pycocotools rasterises it back to the mask.
    """
    up = cv2.resize(mask, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0, :, 3] >= 0).any():  # nothing, or a hole
        return None
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.6, True).reshape(-1, 2)
        if len(c) >= 3:
            polys.append([round(float(v), 2) for v in ((c + 0.5) / 2.0).reshape(-1)])
    return polys or None


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with zeros."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def encode_segmentation(mask: np.ndarray, kind: str) -> Any:
    """``mask`` (H, W) uint8 as ``kind`` = "polygon" (compressed RLE when polygons would not decode
    back to exactly ``mask``),
    "rle" (compressed, ``counts`` a str) or "rle_uncompressed" (``counts`` a list)."""
    if kind == "polygon":
        polys = _polygons(mask)
        h, w = mask.shape
        if polys is not None and np.array_equal(decode_rle(segmentation_to_rle(polys, h, w)), mask != 0):
            return polys
        kind = "rle"
    if kind == "rle_uncompressed":
        return _uncompressed_rle(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# --- the set ----------------------------------------------------------------------------------

def make_synthetic_coco(out_dir: PathLike, num_images: int = 24, size: tuple[int, int] = (128, 128),
                        seed: int = 0, max_objects: int = 4, classes: Sequence[str] = DEFAULT_CLASSES, *,
                        min_objects: int = 1, val_fraction: float = 0.25) -> SyntheticCoco:
    """Write ``out_dir/images/NNNNNN.png`` and ``out_dir/annotations/instances_{train,val}.json``.

    ``classes`` are shape names from :data:`SHAPES` (each class is one shape); category ids are
    ``1, 3, 5, ...`` (not contiguous, like COCO's, so label <-> category mapping is exercised).
    Each image gets between ``min_objects`` and ``max_objects`` shapes (0 allows empty images).
    ``val_fraction`` of the images (at least one when there are two or more) go to the val split.
    """
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPES]
    if not classes or unknown:
        raise ValueError(f"classes must be shape names from {SHAPES}, got {classes}")
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    images_dir = root / "images"
    ann_dir = root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    category_ids = tuple(2 * i + 1 for i in range(len(classes)))
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(category_ids, classes)]
    kinds = ("polygon", "rle", "rle_uncompressed")

    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        image_id = i + 1
        n = int(rng.integers(min_objects, max_objects + 1))
        image, objects = draw_scene(rng, (h, w), n, classes)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(str(images_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for label, mask in objects:
            segm = encode_segmentation(mask, kinds[i % 3])
            rle = segmentation_to_rle(segm, h, w)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": category_ids[label],
                "segmentation": segm, "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
            })
            ann_id += 1

    n_val = int(round(num_images * val_fraction))
    if num_images >= 2:
        n_val = min(max(n_val, 1), num_images - 1)
    val_ids = set((rng.permutation(num_images)[:n_val] + 1).tolist())
    info = {"description": f"rtseg synthetic shapes (seed {seed})", "version": "1"}
    paths = {}
    for split, keep in (("train", lambda k: k not in val_ids), ("val", lambda k: k in val_ids)):
        data = {
            "info": info, "licenses": [],
            "images": [im for im in images if keep(im["id"])],
            "annotations": [a for a in annotations if keep(a["image_id"])],
            "categories": categories,
        }
        paths[split] = ann_dir / f"instances_{split}.json"
        paths[split].write_text(json.dumps(data))
    return SyntheticCoco(root, images_dir, paths["train"], paths["val"], classes, category_ids)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m rtseg.data.synthetic OUT [--num-images N] [--size HxW] [--seed S] ...``:
    :func:`make_synthetic_coco` from the command line; prints where the splits were written."""
    from ..commands.common import parse_size

    p = argparse.ArgumentParser(prog="python -m rtseg.data.synthetic",
                                description="write a synthetic COCO instance set (shapes on textured backgrounds)")
    p.add_argument("out", help="output folder (images/ and annotations/instances_{train,val}.json)")
    p.add_argument("--num-images", type=int, default=24)
    p.add_argument("--size", type=parse_size, default=(128, 128), help="image size N or HxW (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), choices=SHAPES, metavar="SHAPE",
                   help=f"one class per shape, from {', '.join(SHAPES)} (default: {' '.join(DEFAULT_CLASSES)})")
    p.add_argument("--val-fraction", type=float, default=0.25)
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error("--num-images must be at least 1")
    try:
        s = make_synthetic_coco(args.out, args.num_images, args.size, args.seed, args.max_objects, args.classes,
                                min_objects=args.min_objects, val_fraction=args.val_fraction)
    except ValueError as e:
        p.error(str(e))
    print(f"{s.train_json}\n{s.val_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
