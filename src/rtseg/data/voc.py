"""PASCAL VOC 2012 segmentation, plus the SBD-augmented ``train_aug`` set of the DeepLab setup.

``root`` is the folder holding ``VOCdevkit/``, ``VOCdevkit/`` itself or ``VOC2012/``:

- ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs whose indices are the
  class ids 0..20, object borders 255 = ignore) and ``ImageSets/Segmentation/<split>.txt``
  (one id per line) for ``train``, ``val``, ``trainval``;
- split ``train_aug``: ``SegmentationClassAug/<id>.png`` (greyscale class ids) listed by
  ``ImageSets/Segmentation/train_aug.txt`` (or ``ImageSets/SegmentationAug/train_aug.txt``), whose
  lines are ids or ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` pairs.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from ..errors import DataError
from .base import DatasetInfo, Sample
from .classes import VOC_CLASSES

PathLike = Union[str, os.PathLike]

AUG_SPLITS = ("train_aug", "trainaug")


def voc_palette(n: int = 256) -> tuple[tuple[int, int, int], ...]:
    """The VOC colour map (devkit ``labelcolormap``): the bits of the class id spread over R, G, B."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


def _base(root: Path) -> Optional[Path]:
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir() and (cand / "ImageSets").is_dir():
            return cand
    return None


def is_voc(root: Path) -> bool:
    """Layout probe: ``root`` (or ``VOCdevkit/VOC2012``, ``VOC2012`` below it) holds ``JPEGImages``,
    ``ImageSets`` and ``SegmentationClass``."""
    base = _base(root)
    return base is not None and (base / "SegmentationClass").is_dir()


def _resolve(base: Path, entry: str) -> Path:
    """A list-file path (``/JPEGImages/x.jpg``) -> the file relative to ``base``, else by its last
    two parts (``JPEGImages/x.jpg``)."""
    p = PurePosixPath(entry.replace("\\", "/"))
    rel = base.joinpath(*[q for q in p.parts if q != "/"])
    return rel if rel.is_file() else base.joinpath(*p.parts[-2:])


def read_voc(root: PathLike, split: str = "train") -> tuple[list[Sample], DatasetInfo]:
    """Samples of ``split`` (``train``, ``val``, ``trainval`` or ``train_aug``) in list order."""
    root = Path(root)
    base = _base(root)
    if base is None:
        raise DataError(f"{root}: VOC folders JPEGImages/ and ImageSets/ not found "
                        f"(looked in VOCdevkit/VOC2012, VOC2012 and the folder itself)")
    if split in AUG_SPLITS:
        mask_folder = "SegmentationClassAug"
        lists = [base / "ImageSets" / "Segmentation" / "train_aug.txt",
                 base / "ImageSets" / "SegmentationAug" / "train_aug.txt"]
        list_file = next((f for f in lists if f.is_file()), lists[0])
        if not list_file.is_file():
            raise DataError(f"{list_file}: SBD-augmented list not found (split {split!r} needs train_aug.txt "
                            f"and SegmentationClassAug/ of the DeepLab setup)")
    else:
        mask_folder = "SegmentationClass"
        list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: VOC list file for split {split!r} not found")
    if not (base / mask_folder).is_dir():
        raise DataError(f"{base / mask_folder}: VOC mask folder not found")
    samples = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1:
            stem = PurePosixPath(fields[0].replace("\\", "/")).stem
            image, mask = base / "JPEGImages" / f"{stem}.jpg", base / mask_folder / f"{stem}.png"
        elif len(fields) == 2:
            image, mask = _resolve(base, fields[0]), _resolve(base, fields[1])
        else:
            raise DataError(f"{list_file}:{lineno}: expected an id or 'image_path mask_path', got {line.strip()!r}")
        if not image.is_file():
            raise DataError(f"{list_file}:{lineno}: listed image {image} not found")
        if not mask.is_file():
            raise DataError(f"{list_file}:{lineno}: mask {mask} not found")
        samples.append(Sample(str(image), str(mask)))
    if not samples:
        raise DataError(f"{list_file}: list file is empty")
    return samples, DatasetInfo("voc", VOC_CLASSES, palette=voc_palette(len(VOC_CLASSES)))
