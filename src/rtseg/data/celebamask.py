"""CelebAMask-HQ face parsing: 1024x1024 images and 512x512 binary part masks per face.

``root`` is ``CelebAMask-HQ/`` or the folder holding it:

- ``CelebA-HQ-img/<id>.jpg`` (id 0..29999),
- ``CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png`` (one binary mask per present part),
- ``CelebA-HQ-to-CelebA-mapping.txt`` (``idx orig_idx orig_file``) for the official split.

The parts of a face are merged into one label map of the 19 classes of
:data:`~rtseg.data.classes.CELEBAMASK_CLASSES` (part k of that list -> id k) in that order, later
parts drawn over earlier ones (face-parsing.PyTorch ``prepropess_data.py``): hair covers skin, a
hat covers hair. The merge happens in :class:`~rtseg.data.datasets.SegmentationDataset` from
``Sample.parts``; images are resized to the 512x512 label (``DatasetInfo.resize_image_to_mask``).

Split: CelebA's own partition by the original CelebA index (``orig_idx`` is 0-based, file
``orig_idx + 1``.jpg): ``orig_idx < 162770`` train, ``< 182637`` val, else test (24183 / 2993 /
2824 faces), i.e. CelebA's ``list_eval_partition.txt`` applied to ``orig_file``. (The
CelebAMask-HQ repo's ``g_partition.py`` compares the 0-based ``orig_idx`` with the 1-based file
boundaries 162771 / 182638, which differs only for ``orig_idx`` 162770 and 182637.) Without the
mapping file every image is ``train`` and other splits are an error.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

from ..errors import DataError
from .base import DatasetInfo, Sample
from .classes import CELEBAMASK_CLASSES, CELEBAMASK_PALETTE
from .io import IMAGE_EXTENSIONS

PathLike = Union[str, os.PathLike]

IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
MASK_SIZE = (512, 512)
FACES_PER_FOLDER = 2000
#: End (exclusive) of CelebA's train and val partitions, as 0-based original indices.
TRAIN_END, VAL_END = 162770, 182637

_PART_FILE = re.compile(r"^(\d{5})_(.+)\.png$")


def _base(root: Path) -> Path:
    return root / "CelebAMask-HQ" if (root / "CelebAMask-HQ" / MASK_DIR).is_dir() else root


def is_celebamask(root: Path) -> bool:
    """Layout probe: ``root`` (or ``root/CelebAMask-HQ``) holds ``CelebAMask-HQ-mask-anno``."""
    return (_base(root) / MASK_DIR).is_dir()


def split_of(orig_idx: int) -> str:
    """CelebA partition of a 0-based original CelebA index."""
    return "train" if orig_idx < TRAIN_END else "val" if orig_idx < VAL_END else "test"


def _read_mapping(mapping: Path) -> list[tuple[int, int, int]]:
    """``(line number, CelebA-HQ id, original CelebA index)`` for every data line."""
    rows = []
    for lineno, line in enumerate(mapping.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or (lineno == 1 and not fields[0].isdigit()):
            continue  # header "idx orig_idx orig_file"
        if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise DataError(f"{mapping}:{lineno}: expected 'idx orig_idx orig_file', got {line.strip()!r}")
        rows.append((lineno, int(fields[0]), int(fields[1])))
    return rows


def _part_index(mask_root: Path) -> dict[int, dict[str, Path]]:
    """face id -> {part name: path}, listing each ``<k>`` folder once."""
    part_ids = {name: i for i, name in enumerate(CELEBAMASK_CLASSES) if i > 0}
    index: dict[int, dict[str, Path]] = {}
    for folder in sorted(p for p in mask_root.iterdir() if p.is_dir()):
        for path in folder.iterdir():
            m = _PART_FILE.match(path.name)
            if m is None:
                continue
            if m.group(2) not in part_ids:
                raise DataError(f"{path}: unknown CelebAMask-HQ part {m.group(2)!r} "
                                f"(expected one of {', '.join(CELEBAMASK_CLASSES[1:])})")
            index.setdefault(int(m.group(1)), {})[m.group(2)] = path
    return index


def read_celebamask(root: PathLike, split: str = "train") -> tuple[list[Sample], DatasetInfo]:
    """Samples of ``split`` (``train``, ``val``, ``test``) ordered by CelebA-HQ id."""
    base = _base(Path(root))
    image_dir, mask_root, mapping = base / IMAGE_DIR, base / MASK_DIR, base / MAPPING_FILE
    for folder in (image_dir, mask_root):
        if not folder.is_dir():
            raise DataError(f"{folder}: CelebAMask-HQ folder not found")
    images = {int(p.stem): p for p in image_dir.iterdir()
              if p.stem.isdigit() and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}
    if mapping.is_file():
        if split not in ("train", "val", "test"):
            raise DataError(f"{mapping}: unknown CelebAMask-HQ split {split!r} (use train, val or test)")
        wanted = []
        for lineno, idx, orig in _read_mapping(mapping):
            if split_of(orig) != split:
                continue
            if idx not in images:
                raise DataError(f"{mapping}:{lineno}: listed image {image_dir / f'{idx}.jpg'} not found")
            wanted.append(idx)
        source = mapping
    else:
        if split != "train":
            raise DataError(f"{mapping}: not found, so split {split!r} is unknown (without it every image "
                            f"is in 'train')")
        wanted, source = sorted(images), image_dir
    parts = _part_index(mask_root)
    order = {name: i for i, name in enumerate(CELEBAMASK_CLASSES)}
    samples = []
    for idx in sorted(wanted):
        found = parts.get(idx)
        if not found:
            raise DataError(f"{mask_root / str(idx // FACES_PER_FOLDER)}: no part masks {idx:05d}_*.png "
                            f"for image {images[idx]}")
        ordered = tuple((order[name], str(path)) for name, path in sorted(found.items(), key=lambda kv: order[kv[0]]))
        samples.append(Sample(str(images[idx]), parts=ordered, size_hint=MASK_SIZE))
    if not samples:
        raise DataError(f"{source}: no CelebAMask-HQ images for split {split!r}")
    return samples, DatasetInfo("celebamask", CELEBAMASK_CLASSES, palette=CELEBAMASK_PALETTE,
                                resize_image_to_mask=True)
