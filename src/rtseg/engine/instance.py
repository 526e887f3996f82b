"""Instance segmentation (CenterMask) as a trainer task: COCO data, seeded augmentation, losses,
COCO box/mask AP, and ``rtseg eval`` for instance models.

Data (``--data``), always COCO instances json + an image folder:

* ``coco:DIR`` (or a bare ``DIR``): split ``S`` is ``DIR/annotations/instances_S.json`` (or
  COCO 2017's ``instances_S2017.json``) with images in the first folder that exists of
  ``DIR/S2017/``, ``DIR/S/``, ``DIR/images/S/``, ``DIR/images/``. This is COCO 2017 as
  downloaded and what :func:`rtseg.data.synthetic.make_synthetic_coco` writes.
* ``coco:IMAGES_DIR,ANN_JSON``: one explicit split (give the validation set with ``--val-data``).

Training (:class:`InstanceTask`): each item is read, resized so its shortest side is drawn
uniformly from ``cfg.size`` = (min, max) (``--size 128x160``; a single ``--size N`` fixes it;
the longest side is capped at the model's ``max_size_test``) and flipped left-right with
probability 0.5 - detectron2's ``ResizeShortestEdge(range)`` + ``RandomFlip``, the CenterMask
recipe - with both draws seeded by (seed, epoch, index) so a resumed run replays them exactly.
``--no-augment`` uses the shortest side ``min(cfg.size)`` without flips. The loss is
:meth:`CenterMask.losses` (FCOS focal/GIoU/centerness + SAG-Mask BCE + MaskIoU).

ONNX: :func:`rtseg.export.export_onnx` exports the network up to the 15 raw head outputs (the
decoding - FCOS boxes, NMS, SAG-Mask on RoIs - stays in :meth:`CenterMask.detect`).

Evaluation (:meth:`InstanceTask.evaluate`): :func:`rtseg.inference.predict_instances` on every
image of the split (the weights' test resize ``min_size_test`` / ``max_size_test``, masks pasted
at the original size), results streamed to COCO format image by image, then pycocotools' COCOeval
for ``bbox`` (box scores) and ``segm`` (mask scores = box score x predicted mask IoU, as
centermask2's evaluator). ``score`` = mask AP.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import TrainConfig
from ..data.base import DatasetInfo
from ..data.coco import (CocoInstances, Target, drop_empty_boxes, hflip_instances, resize_instances, resized_shape,
                         target_to_tensors)
from ..data.io import read_image
from ..errors import DataError, RtsegError
from ..inference import normalize, predict_instances
from .semantic import sample_seed

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# --- data -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CocoSplit:
    """Where one split of a COCO-format dataset lives."""

    images_dir: Path
    annotation_json: Path


def resolve_coco(spec: str, split: str = "train") -> CocoSplit:
    """``coco:DIR``, ``DIR`` or ``coco:IMAGES_DIR,ANN_JSON`` -> the split's image folder and json
    (layouts in the module docstring); one-line :class:`DataError` naming what is missing."""
    text = spec[len("coco:"):] if spec.startswith("coco:") else spec
    if "," in text:
        images, ann = (Path(v.strip()) for v in text.split(",", 1))
        if not images.is_dir():
            raise DataError(f"{images}: image folder not found")
        if not ann.is_file():
            raise DataError(f"{ann}: annotation file not found")
        return CocoSplit(images, ann)
    root = Path(text)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found" if not root.exists() else
                        f"{root}: dataset path is not a folder (use coco:IMAGES_DIR,ANN_JSON for one json)")
    candidates = [root / "annotations" / f"instances_{split}{suffix}.json" for suffix in ("", "2017")]
    ann = next((p for p in candidates if p.is_file()), None)
    if ann is None:
        raise DataError(f"{candidates[0]}: annotation file for split {split!r} not found (COCO layout: "
                        f"DIR/annotations/instances_{split}[2017].json + DIR/images/ or DIR/{split}2017/)")
    for images in (root / f"{split}2017", root / split, root / "images" / split, root / "images"):
        if images.is_dir():
            return CocoSplit(images, ann)
    raise DataError(f"{root}: no image folder for split {split!r} (expected {split}2017/, {split}/ or images/)")


class CocoSet:
    """One split opened for the trainer: the :class:`CocoInstances` reader and a
    :class:`DatasetInfo` (class names in label order) the trainer names the model's classes by."""

    def __init__(self, coco: CocoInstances, spec: str, split: str) -> None:
        self.coco, self.spec, self.split = coco, spec, split
        self.info = DatasetInfo("coco", coco.class_names)

    def __len__(self) -> int:
        return len(self.coco)


def open_coco(spec: str, split: str = "train") -> CocoSet:
    """Open split ``split`` of ``spec`` (validated json, lazily read images)."""
    where = resolve_coco(spec, split)
    return CocoSet(CocoInstances(where.images_dir, where.annotation_json), spec, split)


class InstanceAugment:
    """Shortest side uniform in [lo, hi] (longest side <= ``max_size``), then a left-right flip
    with probability ``flip_prob``; both drawn from ``numpy.random.default_rng(seed)``."""

    def __init__(self, short_edge: tuple[int, int], max_size: int, flip_prob: float = 0.5) -> None:
        lo, hi = sorted(int(v) for v in short_edge)
        if lo <= 0:
            raise RtsegError(f"--size {short_edge}: the shortest-side range must be positive")
        self.short_edge, self.max_size, self.flip_prob = (lo, hi), int(max_size), float(flip_prob)

    def __call__(self, image: np.ndarray, target: Target, seed: int) -> tuple[np.ndarray, Target]:
        rng = np.random.default_rng(seed)
        short = int(rng.integers(self.short_edge[0], self.short_edge[1] + 1))
        h, w = image.shape[:2]
        image, target = resize_instances(image, target, resized_shape(h, w, short, self.max_size))
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            image, target = hflip_instances(image, target)
        return image, target


class InstanceTrainView(Dataset):
    """Training view: read -> seeded augmentation -> drop empty boxes -> normalise (model's cfg).

    ``__getitem__((epoch, index))`` returns ``(image (3, h, w) float32, {"boxes", "labels",
    "masks"})`` with the targets in the resized image's pixels."""

    def __init__(self, base: CocoSet, augment: InstanceAugment, cfg: Any, seed: int) -> None:
        self.base, self.augment, self.cfg, self.seed = base, augment, cfg, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        epoch, index = key
        image, target = self.base.coco.load(index)
        image, target = self.augment(image, target, sample_seed(self.seed, epoch, index))
        t = target_to_tensors(drop_empty_boxes(target))
        return normalize(image, self.cfg)[0], {"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"]}


def collate(items: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
            ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], list[tuple[int, int]]]:
    """Zero-pad the images (bottom/right, after normalisation, as detectron2's ImageList) to one
    (N, 3, H, W) batch; targets stay a list; each image's (h, w) is kept for the model."""
    sizes = [(int(x.shape[1]), int(x.shape[2])) for x, _ in items]
    H, W = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch = torch.stack([F.pad(x, (0, W - w, 0, H - h)) for (x, _), (h, w) in zip(items, sizes)])
    return batch, [t for _, t in items], sizes


@contextlib.contextmanager
def _forward_is_losses(ddp: nn.Module) -> Iterator[None]:
    """Under DistributedDataParallel the loss must run through ``ddp(...)`` (which prepares the
    gradient all-reduce), but CenterMask's losses are :meth:`CenterMask.losses`, not ``forward``:
    route the wrapped module's ``forward`` to ``losses`` for one call."""
    inner = ddp.module
    inner.forward = inner.losses  # instance attribute shadows the class's forward
    try:
        yield
    finally:
        del inner.forward


# --- the task ---------------------------------------------------------------------------------

class InstanceTask:
    """Instance segmentation for :class:`rtseg.engine.trainer.Trainer` (chosen automatically
    for models whose registry task is ``"instance"``)."""

    name = "instance"

    def __init__(self) -> None:
        self.info: Optional[DatasetInfo] = None

    def open(self, cfg: TrainConfig, split: str = "train") -> CocoSet:
        ds = open_coco(cfg.data, split)
        self.info = ds.info
        return ds

    def train_dataset(self, cfg: TrainConfig, model: nn.Module) -> Dataset:
        net = getattr(model, "module", model)
        base = self.open(cfg, "train")
        lo, hi = sorted(int(v) for v in cfg.size)
        augment = (InstanceAugment((lo, hi), net.max_size_test, 0.5) if cfg.augment
                   else InstanceAugment((lo, lo), net.max_size_test, 0.0))
        return InstanceTrainView(base, augment, net.pretrained_cfg, cfg.seed)

    def val_dataset(self, cfg: TrainConfig, model: nn.Module) -> Optional[CocoSet]:
        if cfg.val_data is not None:
            return open_coco(cfg.val_data, "val")
        text = cfg.data[len("coco:"):] if cfg.data.startswith("coco:") else cfg.data
        if "," in text:
            return None  # an explicit IMAGES_DIR,ANN_JSON pair is one split
        try:
            return open_coco(cfg.data, "val")
        except DataError as e:
            if "annotation file for split" in str(e):
                return None
            raise

    def collate(self, items: list[Any]) -> Any:
        return collate(items)

    def loss(self, model: nn.Module, batch: Any, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        images, targets, sizes = batch
        if isinstance(model, nn.parallel.DistributedDataParallel):
            with _forward_is_losses(model):
                return model(images, targets, image_sizes=sizes)
        return model.losses(images, targets, image_sizes=sizes)

    def evaluate(self, model: nn.Module, dataset: CocoSet, progress: bool = True, distributed: Any = None
                 ) -> dict[str, Any]:
        """COCO box and mask AP of ``model`` on ``dataset`` (see the module docstring); under
        torchrun each rank predicts a shard and the COCO results are gathered."""
        return evaluate_instances(model, dataset, progress=progress, distributed=distributed)


# --- evaluation -------------------------------------------------------------------------------

def predictions_for_image(pred: dict[str, np.ndarray], image_id: int, label_to_category_id: Sequence[int]
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's :func:`predict_instances` output -> COCO (bbox results with box scores, segm
    results with mask scores), masks RLE-encoded so nothing image-sized is kept."""
    from .coco_eval import predictions_to_coco_results

    box_only = {"boxes": pred["boxes"], "scores": pred["scores"], "labels": pred["labels"]}
    with_masks = {"boxes": pred["boxes"], "scores": pred["mask_scores"], "labels": pred["labels"],
                  "masks": pred["masks"]}
    bbox_res, _ = predictions_to_coco_results({image_id: box_only}, label_to_category_id)
    _, segm_res = predictions_to_coco_results({image_id: with_masks}, label_to_category_id)
    return bbox_res, segm_res


def coco_ap(bbox_results: list[dict[str, Any]], segm_results: list[dict[str, Any]],
            annotation_json: PathLike, image_ids: Sequence[int]) -> dict[str, dict[str, float]]:
    """pycocotools COCOeval on result lists: ``{"bbox": {AP, AP50, ...}, "segm": {...}}``
    (fractions; ``nan`` where a size range has no ground truth)."""
    from pycocotools.cocoeval import COCOeval

    from ..data.coco import load_coco_json
    from .coco_eval import _coco_from_dict, _load_results

    data = load_coco_json(annotation_json)
    out: dict[str, dict[str, float]] = {}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        gt = _coco_from_dict(data)
        for iou_type, results in (("bbox", bbox_results), ("segm", segm_results)):
            # loadRes adds "area"/"bbox"/"id" to the result dicts: give it copies
            ev = COCOeval(gt, _load_results(gt, [dict(r) for r in results]), iou_type)
            ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[iou_type] = {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(METRICS, ev.stats[:6])}
    logger.debug("pycocotools output:\n%s", log.getvalue())
    return out


def evaluate_instances(model: nn.Module, dataset: CocoSet, progress: bool = True, distributed: Any = None
                       ) -> dict[str, Any]:
    """Box and mask AP on a COCO split (the eager PyTorch model: the reference, and the weights
    change between evaluations in training). Returns ``score`` (mask AP), ``mask_ap``, ``box_ap``,
    ``bbox`` / ``segm`` (the six COCO numbers each), ``images`` and ``table`` (text)."""
    net = getattr(model, "module", model)
    coco = dataset.coco
    if net.num_classes != coco.num_classes:
        raise DataError(f"{coco.annotation_json}: dataset has {coco.num_classes} classes, model "
                        f"{getattr(net, 'rtseg_name', '?')!r} {net.num_classes}")
    rank, world = (distributed.rank, distributed.world_size) if distributed is not None else (0, 1)
    bbox_res: list[dict[str, Any]] = []
    segm_res: list[dict[str, Any]] = []
    for i in tqdm(range(rank, len(coco), world), desc="eval", unit="img", disable=not progress, leave=False):
        im = coco.images[i]
        image = read_image(coco.images_dir / im["file_name"])
        if image.shape[:2] != (im["height"], im["width"]):
            raise DataError(f"{coco.images_dir / im['file_name']}: image is {image.shape[1]}x{image.shape[0]} but "
                            f"{coco.annotation_json} says {im['width']}x{im['height']} (width x height)")
        b, s = predictions_for_image(predict_instances(net, image, backend="eager"), im["id"],
                                    coco.label_to_category_id)
        bbox_res.extend(b)
        segm_res.extend(s)
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (bbox_res, segm_res))
        bbox_res = [r for part in gathered for r in part[0]]
        segm_res = [r for part in gathered for r in part[1]]
    ap = coco_ap(bbox_res, segm_res, coco.annotation_json, coco.image_ids)
    mask_ap, box_ap = _finite(ap["segm"]["AP"]), _finite(ap["bbox"]["AP"])
    return {"score": mask_ap, "mask_ap": mask_ap, "box_ap": box_ap, "bbox": ap["bbox"], "segm": ap["segm"],
            "images": len(coco), "table": ap_table(ap)}


def _finite(v: float) -> float:
    return 0.0 if math.isnan(v) else float(v)


def ap_table(ap: dict[str, dict[str, float]]) -> str:
    """The six COCO numbers of ``bbox`` and ``segm`` as a small text table (percent)."""
    lines = [f"{'':<6}" + "".join(f"{m:>8}" for m in METRICS)]
    for kind, label in (("bbox", "box"), ("segm", "mask")):
        row = ap.get(kind, {})
        lines.append(f"{label:<6}" + "".join(f"{100 * row[m]:8.2f}" if not math.isnan(row.get(m, math.nan))
                                             else f"{'-':>8}" for m in METRICS))
    return "\n".join(lines)


def evaluate_cli(model: nn.Module, args: argparse.Namespace) -> int:
    """``rtseg eval`` for instance models: prints box and mask AP as a table; ``--json`` writes
    the metrics. ``--data`` as for training (``coco:DIR`` with ``--split``, or an explicit
    ``coco:IMAGES_DIR,ANN_JSON``)."""
    for flag in ("flip", "sliding_window"):
        if getattr(args, flag, None):
            raise RtsegError(f"--{flag.replace('_', '-')} is for semantic models; instance models are evaluated on whole images at the "
                             f"weights' test size (min_size_test / max_size_test)")
    dataset = open_coco(args.data, args.split)
    metrics = evaluate_instances(model, dataset, progress=not getattr(args, "no_progress", False))
    print(metrics["table"])
    print(f"mask AP {100 * metrics['mask_ap']:.2f}  box AP {100 * metrics['box_ap']:.2f}  "
          f"({metrics['images']} images, {dataset.coco.annotation_json})")
    if args.json:
        out = {k: v for k, v in metrics.items() if k != "table"}
        out.update(model=args.model, weights=args.weights, data=args.data, split=args.split)
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(_json_safe(out), indent=2))
        os.replace(tmp, path)
    return 0


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
