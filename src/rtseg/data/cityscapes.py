"""Cityscapes (fine annotations) as distributed: ``leftImg8bit/`` + ``gtFine/``.

``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` pairs with
``root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png``. The label PNGs hold the official label
*ids* (0..33, license plate -1 stored as 255); the reader's lookup table maps them to the 19
*train ids* of cityscapesScripts ``helpers/labels.py``; every other id is ignored (255).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..errors import DataError
from .base import DatasetInfo, Sample
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

#: Official label id -> train id (cityscapesScripts labels.py); ids not listed are ignored.
ID_TO_TRAIN_ID = {
    7: 0,    # road
    8: 1,    # sidewalk
    11: 2,   # building
    12: 3,   # wall
    13: 4,   # fence
    17: 5,   # pole
    19: 6,   # traffic light
    20: 7,   # traffic sign
    21: 8,   # vegetation
    22: 9,   # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}


def cityscapes_label_map(ignore_index: int = 255) -> tuple[int, ...]:
    """The 256-entry LUT raw label id -> train id (or ``ignore_index``)."""
    return tuple(ID_TO_TRAIN_ID.get(v, ignore_index) for v in range(256))


def is_cityscapes(root: Path) -> bool:
    """Layout probe: ``root`` holds ``leftImg8bit/`` and ``gtFine/``."""
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


def read_cityscapes(root: PathLike, split: str = "train") -> tuple[list[Sample], DatasetInfo]:
    """Samples of ``split`` (``train``, ``val`` or ``test``) sorted by city then name."""
    root = Path(root)
    for folder in ("leftImg8bit", "gtFine"):
        if not (root / folder).is_dir():
            raise DataError(f"{root / folder}: Cityscapes folder not found")
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: Cityscapes split {split!r} not found")
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: Cityscapes labels for split {split!r} not found")
    samples = []
    for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for image in sorted(city.glob(f"*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            label = label_dir / city.name / f"{stem}{LABEL_SUFFIX}"
            if not label.is_file():
                raise DataError(f"{label}: label ids for image {image} not found")
            samples.append(Sample(str(image), str(label)))
    if not samples:
        raise DataError(f"{image_dir}: no *{IMAGE_SUFFIX} images found")
    return samples, DatasetInfo("cityscapes", CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE,
                                label_map=cityscapes_label_map())
