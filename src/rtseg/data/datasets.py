"""Semantic-segmentation datasets: one validated sample reader, many folder layouts.

A layout reader turns a folder into a list of :class:`Sample` plus a :class:`DatasetInfo`
(class names, palette, ignore index, optional raw-value -> class-id lookup table). The
:class:`SegmentationDataset` then does read -> validate -> map labels -> transform for every
layout, so every layout gets the same clear errors (unreadable file, mask of another size, label
outside the class set).

Layouts are selected by name on the CLI as ``--data LAYOUT:DIR`` (``folder:``, ``eg1800:`` ...)
or auto-detected from a bare ``DIR``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import PORTRAIT_CLASSES
from ..errors import DataError
from .base import DatasetInfo, Sample
from .io import IMAGE_EXTENSIONS, read_image, read_mask
from .camvid import is_camvid, read_camvid
from .celebamask import is_celebamask, read_celebamask
from .cityscapes import is_cityscapes, read_cityscapes
from .voc import is_voc, read_voc

PathLike = Union[str, os.PathLike]


Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class SegmentationDataset(Dataset):
    """Reads, validates and transforms samples. ``__getitem__`` returns ``(image, mask)`` where
    image is the transform's output (by default the RGB uint8 array) and mask (H, W) int64."""

    def __init__(self, samples: Sequence[Sample], info: DatasetInfo, transform: Optional[Transform] = None,
                 root: str = "") -> None:
        self.samples = list(samples)
        self.info = info
        self.transform = transform
        self.root = root
        self._lut = np.asarray(info.label_map, dtype=np.uint8) if info.label_map is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and validate sample ``index``: RGB uint8 (H, W, 3) and class ids uint8 (H, W)."""
        s = self.samples[index]
        image = read_image(s.image)
        mask = self._read_label(s, image.shape[:2])
        if self.info.resize_image_to_mask and image.shape[:2] != mask.shape:
            import cv2

            image = cv2.resize(image, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
        if image.shape[:2] != mask.shape:
            where = s.mask or (s.parts[0][1] if s.parts else s.image)
            raise DataError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but image {s.image} is "
                            f"{image.shape[1]}x{image.shape[0]}")
        self._check_labels(mask, s)
        return image, mask

    def _read_label(self, s: Sample, image_hw: tuple[int, int]) -> np.ndarray:
        if s.mask is not None:
            raw = read_mask(s.mask)
            return self._lut[raw] if self._lut is not None else raw
        if s.parts or s.size_hint:
            hw = s.size_hint or image_hw
            out = np.zeros(hw, np.uint8)
            for class_id, path in s.parts:
                part = read_mask(path)
                if part.shape != out.shape:
                    raise DataError(f"{path}: part mask is {part.shape[1]}x{part.shape[0]}, expected "
                                    f"{out.shape[1]}x{out.shape[0]}")
                out[part > 0] = class_id
            return out
        raise DataError(f"{s.image}: sample has no mask")

    def _check_labels(self, mask: np.ndarray, s: Sample) -> None:
        values = np.unique(mask)
        bad = values[(values >= self.info.num_classes) & (values != self.info.ignore_index)]
        if bad.size:
            raise DataError(f"{s.mask or s.image}: labels {bad.tolist()[:8]} outside the {self.info.num_classes} "
                            f"classes 0..{self.info.num_classes - 1} of {self.info.name} "
                            f"(ignore index {self.info.ignore_index})")

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(mask.astype(np.int64))
        return image, mask


# --- layout readers ------------------------------------------------------------------------

def _stems(folder: Path, exts: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in exts}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def read_folder(root: PathLike, split: str = "train", class_names: Optional[Sequence[str]] = None,
                ignore_index: int = 255) -> tuple[list[Sample], DatasetInfo]:
    """Plain layout: ``root/[split/]images/*`` and ``root/[split/]masks/*.png`` matched by stem.

    Class names come from ``root/classes.txt`` (one per line) when present, else
    ``class_names``, else the portrait pair (background, person).
    """
    root = Path(root)
    base = root / split if (root / split / "images").is_dir() else root
    images_dir = _require_dir(base / "images", "images")
    masks_dir = _require_dir(base / "masks", "masks")
    images, masks = _stems(images_dir), _stems(masks_dir, (".png", ".bmp", ".tif", ".tiff"))
    if not images:
        raise DataError(f"{images_dir}: no images found")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(f"{masks_dir}: no mask for image(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
    else:
        names = tuple(class_names) if class_names else PORTRAIT_CLASSES
    samples = [Sample(str(images[k]), str(masks[k])) for k in sorted(images)]
    return samples, DatasetInfo("folder", names, ignore_index=ignore_index)


def _binary_lut() -> tuple[int, ...]:
    """EG1800 masks store person as 255 (the official loader divides by 255): >127 -> 1."""
    return tuple(1 if v > 127 else 0 for v in range(256))


def read_eg1800(root: PathLike, split: str = "train") -> tuple[list[Sample], DatasetInfo]:
    """EG1800 as the official SINet code reads it: ``Portrait/images_data_crop/NNNNN.jpg``,
    ``Portrait/GT_png/NNNNN_mask.png`` (0/255) and ``Portrait/{train,val}.txt`` listing ids.
    ``root`` may be the folder holding ``Portrait`` or ``Portrait`` itself; ``split`` is
    ``train`` or ``val``/``test`` (EG1800's test list is ``val.txt``)."""
    root = Path(root)
    base = root / "Portrait" if (root / "Portrait").is_dir() else root
    list_name = {"train": "train.txt", "val": "val.txt", "test": "val.txt"}.get(split, f"{split}.txt")
    list_file = base / list_name
    if not list_file.is_file():
        raise DataError(f"{list_file}: EG1800 list file not found")
    samples = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        item = line.strip()
        if not item:
            continue
        stem = item.zfill(5) if item.isdigit() else Path(item).stem
        image = base / "images_data_crop" / f"{stem}.jpg"
        if not image.is_file():
            alts = [p for p in (base / "images_data_crop").glob(f"{stem}.*")] if (base / "images_data_crop").is_dir() else []
            if not alts:
                raise DataError(f"{list_file}:{lineno}: listed image {image} not found")
            image = alts[0]
        mask = base / "GT_png" / f"{stem}_mask.png"
        if not mask.is_file():
            raise DataError(f"{list_file}:{lineno}: mask {mask} not found")
        samples.append(Sample(str(image), str(mask)))
    if not samples:
        raise DataError(f"{list_file}: list file is empty")
    return samples, DatasetInfo("eg1800", PORTRAIT_CLASSES, palette=((0, 0, 0), (255, 106, 0)),
                                label_map=_binary_lut())


Reader = Callable[..., tuple[list[Sample], DatasetInfo]]

#: Layout name -> reader. Readers take (root, split) and return (samples, info).
READERS: dict[str, Reader] = {
    "folder": read_folder,
    "eg1800": read_eg1800,
    "cityscapes": read_cityscapes,
    "camvid": read_camvid,
    "voc": read_voc,
    "celebamask": read_celebamask,
}


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` from its files (used when ``--data`` has no ``LAYOUT:``)."""
    if (root / "Portrait" / "images_data_crop").is_dir() or (root / "images_data_crop").is_dir():
        return "eg1800"
    for name, probe in LAYOUT_PROBES:
        if probe(root):
            return name
    return "folder"


#: (layout, predicate) pairs tried in order by :func:`detect_layout`.
LAYOUT_PROBES: list[tuple[str, Callable[[Path], bool]]] = [
    ("cityscapes", is_cityscapes),
    ("voc", is_voc),
    ("celebamask", is_celebamask),
    ("camvid", is_camvid),
]


def parse_data_spec(spec: str) -> tuple[str, Path]:
    """``"eg1800:/data/EG1800"`` -> ("eg1800", Path); a bare path is auto-detected."""
    layout, sep, rest = spec.partition(":")
    if sep and layout in READERS:
        root = Path(rest)
    else:
        root, layout = Path(spec), ""
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: dataset path is not a folder")
    return (layout or detect_layout(root)), root


def open_dataset(spec: str, split: str = "train", transform: Optional[Transform] = None,
                 review_file: Optional[PathLike] = None) -> SegmentationDataset:
    """Open ``spec`` (``LAYOUT:DIR`` or ``DIR``) for ``split`` with validation on every read.

    When the dataset folder holds a ``review.json`` (written by ``rtseg review``), only samples a
    person accepted are used.
    """
    layout, root = parse_data_spec(spec)
    samples, info = READERS[layout](root, split)
    review = Path(review_file) if review_file else root / "review.json"
    if review.is_file():
        from ..review_state import accepted_names

        keep = accepted_names(review)
        samples = [s for s in samples if s.name in keep]
        if not samples:
            raise DataError(f"{review}: no accepted samples for split {split!r}")
    if not samples:
        raise DataError(f"{root}: dataset is empty")
    return SegmentationDataset(samples, info, transform, str(root))
