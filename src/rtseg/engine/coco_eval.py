"""COCO box and mask AP with pycocotools' ``COCOeval``.

Predictions are given per image as ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)
0-based, "masks": (K, H, W) bool/uint8 at the image's original size}`` (numpy arrays or CPU
tensors). They are converted to COCO results: boxes to xywh, labels to category ids through
``label_to_category_id``, masks to RLE with ``pycocotools.mask.encode`` on Fortran-ordered uint8.

Crowd regions and all other ground truth come from the json itself, so COCOeval sees exactly
what the official evaluation sees. Images without predictions count as misses; a model that
predicts nothing scores 0 (pycocotools cannot load an empty result list, so an empty result set
is built directly). pycocotools prints progress to stdout; it is captured and sent to the
``logging`` debug level so the CLI's output stays clean.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import load_coco_json
from ..errors import DataError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: Names of COCOeval's first six summary numbers (``stats[0:6]``).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def rescale_prediction(pred: Mapping[str, Any], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Bring one image's prediction from the size the model saw (that of its masks, or
    ``pred["image_size"]``) to ``size`` = (H, W): boxes scaled, masks resized (nearest)."""
    import cv2

    boxes = _np(pred["boxes"]).astype(np.float32).reshape(-1, 4)
    masks = _np(pred["masks"]) if pred.get("masks") is not None else None
    if masks is not None:
        src = masks.shape[-2:]
    elif pred.get("image_size") is not None:
        src = tuple(int(v) for v in pred["image_size"])
    else:
        raise ValueError("rescale_prediction needs masks or image_size to know the source size")
    out = {k: _np(v) for k, v in pred.items() if k not in ("boxes", "masks")}
    h, w = size
    sh, sw = src
    out["boxes"] = boxes * np.array([w / sw, h / sh, w / sw, h / sh], np.float32)
    if masks is not None:
        m = masks.astype(np.uint8)
        out["masks"] = (np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_NEAREST_EXACT) for x in m]).astype(bool)
                        if len(m) else np.zeros((0, h, w), bool))
    out["image_size"] = np.array([h, w])
    return out


def predictions_to_coco_results(predictions: Union[Mapping[int, Mapping[str, Any]], Sequence[Mapping[str, Any]]],
                                label_to_category_id: Sequence[int],
                                image_sizes: Optional[Mapping[int, tuple[int, int]]] = None,
                                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-image predictions -> (bbox results, segm results) as COCO result lists.

    ``predictions`` is ``{image_id: pred}`` or a list of preds that each carry ``"image_id"``.
    ``image_sizes`` ({image_id: (H, W)}) checks that masks are at the original image size.
    """
    items = predictions.items() if isinstance(predictions, Mapping) else (
        (p["image_id"], p) for p in predictions)
    bbox_res: list[dict[str, Any]] = []
    segm_res: list[dict[str, Any]] = []
    lut = [int(c) for c in label_to_category_id]
    for image_id, pred in items:
        image_id = int(image_id)
        boxes = _np(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _np(pred["scores"]).astype(np.float64).reshape(-1)
        labels = _np(pred["labels"]).astype(np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(lut)):
            raise DataError(f"image {image_id}: predicted label {int(labels.max())} outside the "
                            f"{len(lut)} classes of label_to_category_id")
        xywh = boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        for b, s, lab in zip(xywh, scores, labels):
            bbox_res.append({"image_id": image_id, "category_id": lut[lab], "bbox": [float(v) for v in b],
                             "score": float(s)})
        masks = pred.get("masks")
        if masks is None:
            continue
        masks = _np(masks)
        if len(masks) != len(labels):
            raise ValueError(f"image {image_id}: {len(masks)} masks for {len(labels)} detections")
        if not len(masks):
            continue
        if image_sizes is not None and image_id in image_sizes and tuple(masks.shape[-2:]) != tuple(image_sizes[image_id]):
            h, w = image_sizes[image_id]
            raise DataError(f"image {image_id}: predicted masks are {masks.shape[-1]}x{masks.shape[-2]} but the "
                            f"image is {w}x{h}; rescale predictions to the original size first")
        rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
        for rle, s, lab in zip(rles, scores, labels):
            rle["counts"] = rle["counts"].decode("ascii")
            segm_res.append({"image_id": image_id, "category_id": lut[lab], "segmentation": rle, "score": float(s)})
    return bbox_res, segm_res


def _coco_from_dict(data: Mapping[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dict(data)
    coco.createIndex()
    return coco


def _load_results(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    if results:
        return gt.loadRes(results)
    # loadRes fails on an empty list; an empty result set with the gt's images/categories works
    return _coco_from_dict({"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                            "annotations": []})


def evaluate_coco(predictions: Union[Mapping[int, Mapping[str, Any]], Sequence[Mapping[str, Any]]],
                  coco_gt_json: Union[PathLike, Mapping[str, Any]], label_to_category_id: Sequence[int], *,
                  iou_types: Sequence[str] = ("bbox", "segm"),
                  image_ids: Optional[Iterable[int]] = None) -> dict[str, dict[str, float]]:
    """COCO AP of ``predictions`` against ``coco_gt_json`` (a path or the loaded dict).

    Returns ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}}`` as fractions
    in [0, 1]; a size range without any ground truth gives ``nan`` (COCOeval's -1). ``segm`` is
    computed only when the predictions have masks. ``image_ids`` restricts the evaluation to
    those images (default: every image of the json, so images without predictions are misses).
    """
    data = load_coco_json(coco_gt_json) if not isinstance(coco_gt_json, Mapping) else coco_gt_json
    where = coco_gt_json if not isinstance(coco_gt_json, Mapping) else "ground truth"
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in data["images"]}
    bbox_res, segm_res = predictions_to_coco_results(predictions, label_to_category_id, sizes)
    unknown = sorted({r["image_id"] for r in bbox_res} - set(sizes))
    if unknown:
        raise DataError(f"{where}: predictions for image id(s) {unknown[:5]} that are not in \"images\"")
    known_cats = {int(c["id"]) for c in data["categories"]}
    bad = sorted(set(int(c) for c in label_to_category_id) - known_cats)
    if bad:
        raise DataError(f"{where}: label_to_category_id has category id(s) {bad[:5]} not in \"categories\"")
    has_masks = bool(segm_res) or all(_pred_has_masks(p) for p in _iter_preds(predictions))

    results: dict[str, dict[str, float]] = {}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        gt = _coco_from_dict(data)
        for iou_type in iou_types:
            if iou_type not in ("bbox", "segm"):
                raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
            if iou_type == "segm" and not has_masks:
                continue
            dt = _load_results(gt, bbox_res if iou_type == "bbox" else segm_res)
            ev = COCOeval(gt, dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            results[iou_type] = {name: (float(v) if v >= 0 else float("nan"))
                                 for name, v in zip(METRIC_NAMES, ev.stats[:6])}
    logger.debug("pycocotools output:\n%s", log.getvalue())
    return results


def _iter_preds(predictions: Any) -> Iterable[Mapping[str, Any]]:
    return predictions.values() if isinstance(predictions, Mapping) else predictions


def _pred_has_masks(pred: Mapping[str, Any]) -> bool:
    return pred.get("masks") is not None
