"""On-disk layout of a pseudo-labelled dataset: what ``rtseg label`` writes and ``rtseg review``
and ``rtseg train`` read. This module is the one owner of the paths and of ``queue.json``.

::

    DATASET/
      Portrait/images_data_crop/<id>.jpg   the image (EG1800 layout: rtseg.data.datasets.read_eg1800)
      Portrait/GT_png/<id>_mask.png        the sample's mask, person = 255: the teachers' consensus,
                                           or the mask of the teacher a reviewer flipped to
      Portrait/train.txt, val.txt          ids, split by source file (frames of one video never
                                           straddle train and val)
      pseudo/<id>_mask.png                 the consensus mask, kept so a flip can be undone
      teachers/<teacher>/<id>_mask.png     each teacher's own mask (0/255)
      records/<id>.json                    one record per sampled image/frame, labelled or dropped:
                                           the resume points of an interrupted run
      label_run.json                       the teachers and settings the dataset was made with
      queue.json                           the labelled items, lowest confidence first
      review.json                          the reviewer's decisions (rtseg.review_state)

``queue.json``: ``{"version": 1, "teachers": [...], "face_detector": str, "confidence": str
(the formula), "items": [item, ...]}`` where an item is ``{"name", "image", "mask",
"pseudo_mask", "teacher_masks": {teacher: path}, "split", "source", "frame", "time_s",
"size": [W, H], "faces": [{"box": [x0, y0, x1, y1], "score"}], "confidence",
"teacher_iou": {teacher: IoU with the consensus}}``; paths are relative to DATASET with ``/``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from ..errors import DataError
from ..fileio import write_bytes_atomic, write_json_atomic, write_text_atomic  # noqa: F401 (re-exported for labeling)

PathLike = Union[str, os.PathLike]
QUEUE_VERSION = 1


class DatasetLayout:
    """Paths of the files of one pseudo-labelled dataset rooted at ``root``."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self.portrait = self.root / "Portrait"
        self.images_dir = self.portrait / "images_data_crop"
        self.gt_dir = self.portrait / "GT_png"
        self.pseudo_dir = self.root / "pseudo"
        self.teachers_dir = self.root / "teachers"
        self.records_dir = self.root / "records"
        self.queue_path = self.root / "queue.json"
        self.review_path = self.root / "review.json"
        self.run_path = self.root / "label_run.json"

    def split_list(self, split: str) -> Path:
        return self.portrait / f"{split}.txt"

    def image_path(self, name: str) -> Path:
        return self.images_dir / f"{name}.jpg"

    def gt_path(self, name: str) -> Path:
        return self.gt_dir / f"{name}_mask.png"

    def pseudo_path(self, name: str) -> Path:
        return self.pseudo_dir / f"{name}_mask.png"

    def teacher_mask_path(self, teacher: str, name: str) -> Path:
        return self.teachers_dir / teacher / f"{name}_mask.png"

    def record_path(self, name: str) -> Path:
        return self.records_dir / f"{name}.json"

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root, with ``/`` separators (as stored in queue.json)."""
        return Path(path).relative_to(self.root).as_posix()

    def resolve(self, rel: str) -> Path:
        """A queue.json path back to a file path; refuses anything outside the dataset folder."""
        p = (self.root / rel).resolve()
        root = self.root.resolve()
        if p != root and root not in p.parents:
            raise DataError(f"{self.queue_path}: path {rel!r} points outside the dataset folder")
        return p

    def make_dirs(self) -> None:
        for d in (self.images_dir, self.gt_dir, self.pseudo_dir, self.teachers_dir, self.records_dir):
            d.mkdir(parents=True, exist_ok=True)


def read_json(path: PathLike, what: str) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: unreadable {what} ({type(e).__name__})") from None


def read_queue(root: PathLike) -> dict:
    """``DATASET/queue.json`` with its items checked for the keys the reviewer needs."""
    layout = DatasetLayout(root)
    if not layout.root.is_dir():
        raise DataError(f"{layout.root}: dataset folder not found")
    if not layout.queue_path.is_file():
        raise DataError(f"{layout.queue_path}: not found; is {layout.root} a folder made by `rtseg label`?")
    queue = read_json(layout.queue_path, "label queue")
    items = queue.get("items") if isinstance(queue, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{layout.queue_path}: label queue has no 'items' list")
    for i, item in enumerate(items):
        missing = [k for k in ("name", "image", "mask", "confidence") if not isinstance(item, dict) or k not in item]
        if missing:
            raise DataError(f"{layout.queue_path}: item {i} lacks {', '.join(missing)}")
    return queue
