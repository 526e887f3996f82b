"""The two records every dataset layout produces: :class:`Sample` and :class:`DatasetInfo`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class DatasetInfo:
    """What the labels mean. ``label_map`` (256 entries) maps raw mask values to class ids or
    ``ignore_index``; without it raw values are class ids already."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = 255
    label_map: Optional[tuple[int, ...]] = None
    resize_image_to_mask: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Sample:
    """One image and its label: a mask file, or binary part masks merged in order
    (``parts = ((class_id, path), ...)``, later parts drawn over earlier ones)."""

    image: str
    mask: Optional[str] = None
    parts: tuple[tuple[int, str], ...] = ()
    size_hint: Optional[tuple[int, int]] = None  # (H, W) of the label when only parts may be absent

    @property
    def name(self) -> str:
        return Path(self.image).stem
