"""CenterMask / CenterMask-Lite: anchor-free instance segmentation (Lee & Park, CVPR 2020).

Faithful to youngwanLEE/centermask2 (detectron2) with the ``Base-CenterMask-VoVNet.yaml`` /
``Base-CenterMask-Lite-VoVNet.yaml`` settings; checked against its parity fixtures
(``centermask_fcos_head``, ``centermask_sam``, ``centermask_sag_mask_head``). The pieces:

* **Backbone + FPN.** :class:`~rtseg.models.vovnet.VoVNet` stages 3-5 (strides 8, 16, 32) ->
  ``torchvision.ops.FeaturePyramidNetwork`` (1x1 lateral + 3x3 output convs with bias, nearest
  top-down, sum) with ``LastLevelP6P7``: P6 = conv3x3/2(**P5**) and P7 = conv3x3/2(ReLU(P6)),
  as centermask2's ``build_fcos_vovnet_fpn_backbone`` (``LastLevelP6P7(C, C, "p5")``). This is
  exactly detectron2's FPN (same graph and init) whenever the input is padded to a multiple of 32,
  which :meth:`CenterMask.forward` does (zeros after normalisation, as detectron2's ImageList).
* **FCOS box head** (:class:`FCOSHead`, paper Sec. 3.1): class and box towers of 3x3 conv (with
  bias) + GroupNorm(32) + ReLU; class logits from the class tower; **centerness from the box
  tower**; box regression ``ReLU(scale_l * conv(box_tower))`` in units of the level stride.
* **FCOS training** (:func:`fcos_targets`, :func:`fcos_losses`): points inside a box's centre
  region (radius 1.5 strides, clipped to the box), per-level size ranges (-1, 64, 128, 256, 512,
  inf) on max(l, t, r, b), the smallest-area box wins; focal loss (alpha 0.25, gamma 2,
  ``torchvision.ops.sigmoid_focal_loss``) / #positives; GIoU loss on (l, t, r, b) with
  centerness-target weights (``LOC_LOSS_TYPE='giou'``, see :func:`fcos_iou_loss` for why not
  torchvision's); centerness BCE / #positives.
* **FCOS inference** (:func:`fcos_predict`): per level, class prob > 0.05 (before centerness),
  top-1000, score = sqrt(prob x centerness); class-wise NMS 0.6 (``batched_nms``); top 50.
* **Scale-adaptive RoI assignment** (paper Eq. 2, :func:`assign_levels_by_ratio`):
  ``k = ceil(k_max - log2(A_input / A_RoI))`` clamped to P3-P5 (k_max = 5), then RoIAlign 14x14
  (``aligned=True``, adaptive sampling) on the assigned level (:func:`multilevel_roi_align`).
* **SAG-Mask** (:class:`SAGMaskHead`, Sec. 3.2): n 3x3 convs + ReLU -> :class:`SpatialAttention`
  (sigmoid(conv3x3([mean_c, max_c])) x features) -> 2x2 deconv to 28x28 + ReLU -> 1x1 per-class
  predictor. Training: proposals = FCOS detections (top 100) + the GT boxes, IoU >= 0.5 with a
  GT are foreground (at most 128 per image, random), per-pixel BCE on the GT class channel
  against the GT mask RoIAligned to 28x28.
* **MaskIoU** (:class:`MaskIoUHead`, ``MASKIOU_ON``, from Mask Scoring R-CNN): RoI features +
  max-pooled mask -> convs -> 3 FC -> IoU per class; L2 loss against the real mask IoU; at test
  ``mask_scores = scores x predicted IoU``.

Outputs: ``forward(images)`` returns the raw head outputs as a flat tuple (for export);
:meth:`CenterMask.detect` gives boxes, scores, labels, masks; :meth:`CenterMask.losses` the
training losses. The official checkpoint converter is :func:`convert_official_centermask`.
"""
from __future__ import annotations

import math
import re
import sys
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork, batched_nms, box_iou, roi_align, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..config import PretrainedCfg
from ..errors import DataError
from .vovnet import VoVNet, rename_vovnet_key
from ..checkpoint import rename_key

StateDict = dict[str, Tensor]
INF = 100000000

#: The 80 COCO thing classes in contiguous-id order (detectron2's ``thing_classes``).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

FPN_STRIDES = (8, 16, 32, 64, 128)  # P3..P7
MASK_LEVELS = (3, 5)  # RoI features come from P3..P5 (ROI_HEADS.IN_FEATURES)


def pad_to_multiple(images: Tensor, divisor: int) -> Tensor:
    """Zero-pad (N, C, H, W) at the bottom/right to multiples of ``divisor`` (detectron2 ImageList).

    ``F.pad`` is called even when nothing is missing (a zero-width pad, same values), so an ONNX
    graph traced at a multiple of ``divisor`` still pads inputs of other sizes."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(images, (0, pw, 0, ph))


# --- FCOS head ---------------------------------------------------------------------------------

class Scale(nn.Module):
    """A learnable scalar (init 1.0) multiplying the input: FCOS's per-level regression scale."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=True))
        if norm == "GN":
            layers.append(nn.GroupNorm(32, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """FCOS head shared over the pyramid levels (CenterMask Sec. 3.1, centermask2 ``FCOSHead``).

    ``forward([P3..P7])`` with P_l (N, C, H_l, W_l) returns three lists over levels:
    class logits (N, K, H_l, W_l), box regression (N, 4, H_l, W_l) = ReLU(scale_l * conv) as
    (l, t, r, b) / stride_l, and centerness logits (N, 1, H_l, W_l) from the **box** tower.
    """

    def __init__(self, in_channels: int = 256, num_classes: int = 80, num_cls_convs: int = 4, num_box_convs: int = 4,
                 num_levels: int = 5, norm: str = "GN", use_scale: bool = True, prior_prob: float = 0.01) -> None:
        super().__init__()
        if norm not in ("GN", "none"):
            raise ValueError(f"FCOS head norm must be 'GN' or 'none', got {norm!r}")
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, num_cls_convs, norm)
        self.bbox_tower = _tower(in_channels, num_box_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels)) if use_scale else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        logits, bbox_reg, ctrness = [], [], []
        for level, feature in enumerate(features):
            cls_t = self.cls_tower(feature)
            box_t = self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_t))
            ctrness.append(self.ctrness(box_t))
            reg = self.bbox_pred(box_t)
            if self.scales is not None:
                reg = self.scales[level](reg)
            bbox_reg.append(F.relu(reg))
        return logits, bbox_reg, ctrness


# --- FCOS targets, losses, inference -----------------------------------------------------------

def fcos_locations(sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | None = None) -> list[Tensor]:
    """Image coordinates (x, y) of every feature-map point: ``(i * s + s // 2)`` per level.

    Returns a list over levels of (H_l * W_l, 2) float32, row-major (y slowest).
    """
    out = []
    for (h, w), s in zip(sizes, strides):
        xs = torch.arange(0, w * s, s, dtype=torch.float32, device=device)
        ys = torch.arange(0, h * s, s, dtype=torch.float32, device=device)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1) + s // 2)
    return out


def fcos_targets(locations: Sequence[Tensor], boxes: Sequence[Tensor], labels: Sequence[Tensor], num_classes: int,
                 strides: Sequence[int] = FPN_STRIDES, sizes_of_interest: Sequence[float] = (64, 128, 256, 512),
                 center_sample: bool = True, radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """FCOS training targets (centermask2 ``FCOSOutputs.compute_targets_for_locations``).

    Args:
        locations: per level (L_l, 2) point coordinates (:func:`fcos_locations`).
        boxes / labels: per image (G, 4) xyxy and (G,) class ids in [0, num_classes).
    Returns:
        labels (N, L) with ``num_classes`` for background, and (l, t, r, b) regression targets
        (N, L, 4) divided by each point's level stride; L = sum of L_l (levels concatenated).

    A point is positive for a box when it lies strictly inside the box's centre region (box centre
    +- radius * stride, clipped to the box; the whole box when ``center_sample=False``) and
    max(l, t, r, b) is within its level's range [lo, hi] (-1, 64, 128, 256, 512, inf); among
    several such boxes the one with the smallest area wins.
    """
    counts = [len(loc) for loc in locations]
    locs = torch.cat(list(locations), dim=0)
    device = locs.device
    bounds = [-1.0, *[float(s) for s in sizes_of_interest], float(INF)]
    lo = torch.cat([torch.full((n,), bounds[i], device=device) for i, n in enumerate(counts)])
    hi = torch.cat([torch.full((n,), bounds[i + 1], device=device) for i, n in enumerate(counts)])
    point_stride = torch.cat([torch.full((n,), float(strides[i]), device=device) for i, n in enumerate(counts)])
    xs, ys = locs[:, 0], locs[:, 1]
    all_labels, all_regs = [], []
    for b, lab in zip(boxes, labels):
        b = b.to(device=device, dtype=torch.float32)
        if b.numel() == 0:
            all_labels.append(torch.full((len(locs),), num_classes, dtype=torch.int64, device=device))
            all_regs.append(locs.new_zeros((len(locs), 4)))
            continue
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        ltrb = torch.stack([xs[:, None] - b[None, :, 0], ys[:, None] - b[None, :, 1],
                            b[None, :, 2] - xs[:, None], b[None, :, 3] - ys[:, None]], dim=2)  # (L, G, 4)
        if center_sample:
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            r = point_stride[:, None] * radius
            x0 = torch.maximum(cx[None] - r, b[None, :, 0])
            y0 = torch.maximum(cy[None] - r, b[None, :, 1])
            x1 = torch.minimum(cx[None] + r, b[None, :, 2])
            y1 = torch.minimum(cy[None] + r, b[None, :, 3])
            inside = torch.stack([xs[:, None] - x0, ys[:, None] - y0, x1 - xs[:, None], y1 - ys[:, None]], 2).amin(2) > 0
        else:
            inside = ltrb.amin(dim=2) > 0
        max_reg = ltrb.amax(dim=2)
        cared = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
        cost = area[None].repeat(len(locs), 1)
        cost[~inside] = INF
        cost[~cared] = INF
        min_area, gt_idx = cost.min(dim=1)
        reg = ltrb[torch.arange(len(locs), device=device), gt_idx]
        lab_i = lab.to(device=device, dtype=torch.int64)[gt_idx]
        lab_i[min_area == INF] = num_classes
        all_labels.append(lab_i)
        all_regs.append(reg / point_stride[:, None])
    return torch.stack(all_labels), torch.stack(all_regs)


def centerness_targets(ltrb: Tensor) -> Tensor:
    """FCOS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of (K, 4) targets -> (K,)."""
    if len(ltrb) == 0:
        return ltrb.new_zeros(0)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt((lr.amin(-1) / lr.amax(-1)) * (tb.amin(-1) / tb.amax(-1)))


def fcos_iou_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, loss_type: str = "giou") -> Tensor:
    """FCOS IoU loss on (l, t, r, b) distances from the same point, summed (centermask2 ``IOULoss``).

    ``iou = (I + 1) / (U + 1)`` (the +1 smoothing is applied to stride-normalised distances, so
    it matters: this is why torchvision's ``generalized_box_iou_loss`` is not used), GIoU =
    iou - (C - U) / C with C the enclosing box area. ``loss_type``: ``giou`` (CenterMask's
    ``LOC_LOSS_TYPE``) -> 1 - GIoU, ``iou`` -> -log(iou), ``linear_iou`` -> 1 - iou.
    """
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    target_area = (tl + tr) * (tt + tb)
    pred_area = (pl + pr) * (pt + pb)
    w_inter = torch.minimum(pl, tl) + torch.minimum(pr, tr)
    h_inter = torch.minimum(pb, tb) + torch.minimum(pt, tt)
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (torch.maximum(pb, tb) + torch.maximum(pt, tt))
    inter = w_inter * h_inter
    union = target_area + pred_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    if loss_type == "giou":
        losses = 1 - (ious - (enclose - union) / enclose)
    elif loss_type == "iou":
        losses = -torch.log(ious)
    elif loss_type == "linear_iou":
        losses = 1 - ious
    else:
        raise ValueError(f"unknown FCOS loc loss type {loss_type!r}; choose giou, iou or linear_iou")
    return (losses * weight).sum() if weight is not None else losses.sum()


def fcos_losses(logits: Tensor, reg: Tensor, ctrness: Tensor, labels: Tensor, reg_targets: Tensor, *,
                focal_alpha: float = 0.25, focal_gamma: float = 2.0, loc_loss_type: str = "giou") -> dict[str, Tensor]:
    """FCOS losses over all points of a batch (centermask2 ``fcos_losses``, one process).

    Args: logits (M, K), reg (M, 4), ctrness (M,) logits; labels (M,) with K = background;
    reg_targets (M, 4), all in the same point order.
    Returns ``loss_fcos_cls`` = focal / max(#pos, 1), ``loss_fcos_loc`` = centerness-weighted IoU
    loss / max(sum of centerness targets, 1e-6), ``loss_fcos_ctr`` = BCE / max(#pos, 1).
    """
    num_classes = logits.shape[1]
    pos = torch.nonzero(labels != num_classes).squeeze(1)
    num_pos_avg = max(float(pos.numel()), 1.0)
    class_target = torch.zeros_like(logits)
    class_target[pos, labels[pos]] = 1.0
    cls_loss = sigmoid_focal_loss(logits, class_target, alpha=focal_alpha, gamma=focal_gamma, reduction="sum") / num_pos_avg
    reg_t = reg_targets[pos]
    ctr_t = centerness_targets(reg_t)
    ctr_norm = max(float(ctr_t.sum()), 1e-6)
    loc_loss = fcos_iou_loss(reg[pos], reg_t, ctr_t, loc_loss_type) / ctr_norm
    ctr_loss = F.binary_cross_entropy_with_logits(ctrness[pos], ctr_t, reduction="sum") / num_pos_avg
    return {"loss_fcos_cls": cls_loss, "loss_fcos_loc": loc_loss, "loss_fcos_ctr": ctr_loss}


def fcos_predict(locations: Sequence[Tensor], logits: Sequence[Tensor], reg: Sequence[Tensor], ctrness: Sequence[Tensor],
                 strides: Sequence[int] = FPN_STRIDES, *, score_thresh: float = 0.05, pre_nms_topk: int = 1000,
                 nms_thresh: float = 0.6, post_nms_topk: int = 100, thresh_with_ctr: bool = False) -> list[dict[str, Tensor]]:
    """FCOS detections per image (centermask2 ``FCOSOutputs.predict_proposals``).

    Per level and image: class probabilities > ``score_thresh`` (multiplied by the centerness
    probability before the threshold only if ``thresh_with_ctr``), the ``pre_nms_topk`` best
    by prob x centerness; boxes = point -/+ (l, t, r, b) x stride. Then over all levels
    class-wise NMS (``batched_nms``) and the ``post_nms_topk`` best. Scores are
    ``sqrt(prob x centerness)``. Returns per image ``{"boxes" (D, 4), "scores" (D,),
    "labels" (D,) int64}``, sorted by decreasing score.
    """
    n = logits[0].shape[0]
    per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(n)]
    for loc, lg, rg, ct, s in zip(locations, logits, reg, ctrness, strides):
        c = lg.shape[1]
        prob = lg.permute(0, 2, 3, 1).reshape(n, -1, c).sigmoid()
        box_reg = rg.permute(0, 2, 3, 1).reshape(n, -1, 4) * s
        ctr = ct.permute(0, 2, 3, 1).reshape(n, -1).sigmoid()
        if thresh_with_ctr:
            prob = prob * ctr[:, :, None]
        candidates = prob > score_thresh
        if not thresh_with_ctr:
            prob = prob * ctr[:, :, None]
        for i in range(n):
            cand = candidates[i]
            scores = prob[i][cand]
            nz = cand.nonzero()
            point, cls = nz[:, 0], nz[:, 1]
            if scores.numel() > pre_nms_topk:
                scores, top = scores.topk(pre_nms_topk, sorted=False)
                point, cls = point[top], cls[top]
            p, r = loc[point], box_reg[i][point]
            boxes = torch.stack([p[:, 0] - r[:, 0], p[:, 1] - r[:, 1], p[:, 0] + r[:, 2], p[:, 1] + r[:, 3]], dim=1)
            per_image[i].append((boxes, torch.sqrt(scores), cls))
    results = []
    for parts in per_image:
        boxes = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
        labels = torch.cat([p[2] for p in parts])
        keep = batched_nms(boxes, scores, labels, nms_thresh)
        if post_nms_topk > 0:
            keep = keep[:post_nms_topk]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


# --- scale-adaptive RoI pooling ----------------------------------------------------------------

def assign_levels_by_ratio(boxes: Tensor, image_areas: Tensor, min_level: int = 3, max_level: int = 5) -> Tensor:
    """CenterMask Eq. 2: ``k = ceil(k_max - log2(A_input / A_RoI))`` clamped to [min_level, max_level].

    boxes (K, 4) xyxy, image_areas (K,) = h * w of each box's (unpadded) image. Returns (K,)
    int64 level offsets ``k - min_level`` (0 = P3 by default). Unlike Mask R-CNN's Eq. 1 (fixed
    canonical 224 px), the level depends on the box's share of the image.
    """
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = torch.ceil(max_level - torch.log2(image_areas / areas + sys.float_info.epsilon))
    return k.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


def multilevel_roi_align(features: Sequence[Tensor], boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                         strides: Sequence[int] = FPN_STRIDES[:3], output_size: int = 14) -> Tensor:
    """RoIAlign (``aligned=True``, adaptive sampling ratio) of each box on its Eq. 2 level.

    features: P3..P5 (N, C, H_l, W_l); boxes: per image (K_i, 4) xyxy in input pixels;
    image_sizes: per image (h, w). Returns (sum K_i, C, output_size, output_size).
    """
    levels = [int(round(math.log2(s))) for s in strides]
    rois = torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)], dim=0)
    areas = torch.cat([rois.new_full((len(b),), float(h * w)) for b, (h, w) in zip(boxes, image_sizes)])
    feat = features[0]
    out = feat.new_zeros((len(rois), feat.shape[1], output_size, output_size))
    if len(rois) == 0:
        return out
    assigned = assign_levels_by_ratio(rois[:, 1:], areas, levels[0], levels[-1])
    for level, (x, s) in enumerate(zip(features, strides)):
        idx = torch.nonzero(assigned == level).squeeze(1)
        if idx.numel():
            out[idx] = roi_align(x, rois[idx], output_size, spatial_scale=1.0 / s, sampling_ratio=0, aligned=True)
    return out


# --- SAG-Mask and MaskIoU heads ------------------------------------------------------------------

def _msra_fill(m: nn.Module) -> None:
    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if getattr(m, "bias", None) is not None:
        nn.init.constant_(m.bias, 0.0)


class SpatialAttention(nn.Module):
    """SAM (CenterMask Sec. 3.2, Eq. 3): ``x * sigmoid(conv_kxk([mean_c(x), max_c(x)]))``.

    Channel-wise average then max (in that order), a k x k conv (no bias) to 1 channel. (N, C, H, W)
    -> same. k = 3 in CenterMask.
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size not in (3, 7):
            raise ValueError(f"SpatialAttention kernel_size must be 3 or 7, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        _msra_fill(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class SAGMaskHead(nn.Module):
    """Spatial attention-guided mask head (CenterMask Sec. 3.2, Fig. 2).

    RoI features (K, C_in, 14, 14) -> ``num_convs`` x [3x3 conv (bias) + ReLU] -> SAM -> 2x2
    stride-2 deconv + ReLU (28x28) -> 1x1 predictor -> mask logits (K, num_classes, 28, 28)
    (one channel when ``class_agnostic``).
    """

    def __init__(self, in_channels: int = 256, conv_dim: int = 256, num_convs: int = 4, num_classes: int = 80,
                 class_agnostic: bool = False) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1)
                                   for i in range(num_convs))
        self.sam = SpatialAttention(3)
        self.deconv = nn.ConvTranspose2d(conv_dim if num_convs else in_channels, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, 1 if class_agnostic else num_classes, 1)
        for m in [*self.convs, self.deconv]:
            _msra_fill(m)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        x = self.sam(x)
        return self.predictor(F.relu(self.deconv(x)))


class MaskIoUHead(nn.Module):
    """MaskIoU head (``MASKIOU_ON``; Mask Scoring R-CNN's MaskIoU branch, centermask2 ``MaskIoUHead``).

    RoI features (K, C, 14, 14) and the predicted-class mask probabilities (K, 1, 28, 28):
    cat[features, maxpool2x2(mask)] -> ``num_convs`` 3x3 convs + ReLU (the last with stride 2:
    7x7) -> flatten -> FC 1024 + ReLU -> FC 1024 + ReLU -> FC ``num_classes``: predicted mask
    IoU per class (K, num_classes).
    """

    def __init__(self, in_channels: int = 256, conv_dim: int = 256, num_convs: int = 4, num_classes: int = 80,
                 resolution: int = 14) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels + 1 if i == 0 else conv_dim, conv_dim, 3, stride=2 if i == num_convs - 1 else 1, padding=1)
            for i in range(num_convs))
        self.fc1 = nn.Linear(conv_dim * (resolution // 2) ** 2, 1024)
        self.fc2 = nn.Linear(1024, 1024)
        self.predictor = nn.Linear(1024, num_classes)
        for m in [*self.convs, self.fc1, self.fc2]:
            _msra_fill(m)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = torch.cat([x, F.max_pool2d(mask, 2, 2)], dim=1)
        for conv in self.convs:
            x = F.relu(conv(x))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        x = F.relu(self.fc2(x))
        return self.predictor(x)


# --- mask helpers ------------------------------------------------------------------------------

def crop_and_resize_masks(masks: Tensor, boxes: Tensor, indices: Tensor, size: int) -> Tensor:
    """GT mask targets: RoIAlign (``aligned=True``) of ``masks[indices[k]]`` in ``boxes[k]`` to
    size x size, then >= 0.5 (detectron2 ``BitMasks.crop_and_resize``). masks (G, H, W), boxes
    (K, 4), indices (K,) -> (K, size, size) bool."""
    if len(boxes) == 0:
        return torch.zeros((0, size, size), dtype=torch.bool, device=masks.device)
    rois = torch.cat([indices[:, None].to(boxes.dtype), boxes], dim=1)
    out = roi_align(masks[:, None].to(boxes.dtype), rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return out[:, 0] >= 0.5


def mask_fraction_in_boxes(masks: Tensor, boxes: Tensor, indices: Tensor) -> Tensor:
    """Fraction of GT mask ``masks[indices[k]]`` lying inside ``boxes[k]`` (pixel centres), in [0, 1].

    The MaskIoU target needs the GT mask's full area relative to its part inside the proposal
    (centermask2 crops the GT polygons to the proposal box). masks (G, H, W), boxes (K, 4) -> (K,).
    """
    if len(boxes) == 0:
        return boxes.new_zeros(0)
    g, h, w = masks.shape
    integral = F.pad((masks > 0).to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32),
                     (1, 0, 1, 0))  # (G, H+1, W+1) summed-area table
    x0 = torch.ceil(boxes[:, 0] - 0.5).clamp(0, w).long()
    y0 = torch.ceil(boxes[:, 1] - 0.5).clamp(0, h).long()
    x1 = (torch.floor(boxes[:, 2] - 0.5) + 1).clamp(0, w).long()
    y1 = (torch.floor(boxes[:, 3] - 0.5) + 1).clamp(0, h).long()
    x1, y1 = torch.maximum(x1, x0), torch.maximum(y1, y0)
    s, i = integral, indices
    inside = (s[i, y1, x1] - s[i, y0, x1] - s[i, y1, x0] + s[i, y0, x0]).to(boxes.dtype)
    total = s[i, h, w].to(boxes.dtype)
    return (inside / total.clamp(min=1.0)).clamp(0.0, 1.0)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Paste (K, M, M) mask probabilities into (K, H, W) at their boxes (K, 4) xyxy.

    Each output pixel (x, y) samples the mask bilinearly (zero outside, ``align_corners=False``)
    at its centre ``(x + 0.5, y + 0.5)`` mapped into the box, as detectron2's
    ``paste_masks_in_image``; then ``>= threshold`` -> uint8 0/1 (``threshold < 0`` keeps the
    float probabilities). Only the box neighbourhood is computed, so memory is O(box area).
    """
    h, w = image_size
    k, m = masks.shape[0], masks.shape[-1]
    binary = threshold >= 0
    out = torch.zeros((k, h, w), dtype=torch.uint8 if binary else masks.dtype, device=masks.device)
    for i in range(k):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        bw, bh = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
        # the bilinear footprint reaches half a mask cell outside the box: pad by one cell + 1 px
        xa = max(int(math.floor(x0 - bw / m)) - 1, 0)
        xb = min(int(math.ceil(x1 + bw / m)) + 1, w)
        ya = max(int(math.floor(y0 - bh / m)) - 1, 0)
        yb = min(int(math.ceil(y1 + bh / m)) + 1, h)
        if xa >= xb or ya >= yb:
            continue
        gx = (torch.arange(xa, xb, device=masks.device, dtype=torch.float32) + 0.5 - x0) / bw * 2 - 1
        gy = (torch.arange(ya, yb, device=masks.device, dtype=torch.float32) + 0.5 - y0) / bh * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        crop = F.grid_sample(masks[i][None, None].float(), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = (crop >= threshold).to(torch.uint8) if binary else crop.to(out.dtype)
    return out


# --- the model ---------------------------------------------------------------------------------

class CenterMask(nn.Module):
    """CenterMask: VoVNetV2 + FPN (P3-P7) + FCOS + SAG-Mask (+ MaskIoU).

    The constructor keyword arguments are the model config (centermask2 names in brackets):

    * ``num_classes`` (``FCOS.NUM_CLASSES`` = ``ROI_HEADS.NUM_CLASSES``); ``backbone``
      (``VOVNET.CONV_BODY``); ``backbone_norm`` (``VOVNET.NORM``); ``freeze_at``;
    * ``fpn_channels`` (``FPN.OUT_CHANNELS``); ``num_cls_convs`` / ``num_box_convs``;
    * ``mask_num_convs`` / ``mask_conv_dim`` (``ROI_MASK_HEAD``); ``maskiou`` (``MASKIOU_ON``),
      ``maskiou_num_convs`` / ``maskiou_conv_dim`` (``ROI_MASKIOU_HEAD``), ``maskiou_loss_weight``;
    * FCOS training/inference settings (``FCOS.*``) and the mask-proposal sampling
      (``ROI_HEADS.BATCH_SIZE_PER_IMAGE`` 512, ``POSITIVE_FRACTION`` 0.25, IoU 0.5);
    * ``min_size_test`` / ``max_size_test`` record the official test resize (shortest edge /
      longest-edge cap) for the data pipeline; the network itself accepts any size.

    ``forward(images)`` (N, 3, H, W), normalised as ``pretrained_cfg`` says, is zero-padded to a
    multiple of 32 and returns the flat tuple ``(logits_P3..P7, bbox_reg_P3..P7, ctrness_P3..P7)``
    (15 tensors; regression in stride units). The RoI mask branch runs only in :meth:`detect`
    and :meth:`losses`.
    """

    def __init__(self, num_classes: int = 80, backbone: str = "V-39-eSE", backbone_norm: str = "FrozenBN",
                 freeze_at: int = 0, fpn_channels: int = 256, num_cls_convs: int = 4, num_box_convs: int = 4,
                 mask_num_convs: int = 4, mask_conv_dim: int = 256, maskiou: bool = True, maskiou_num_convs: int = 4,
                 maskiou_conv_dim: int = 256, maskiou_loss_weight: float = 1.0, pooler_resolution: int = 14,
                 sizes_of_interest: Sequence[float] = (64, 128, 256, 512), center_sample: bool = True,
                 pos_radius: float = 1.5, focal_alpha: float = 0.25, focal_gamma: float = 2.0, loc_loss_type: str = "giou",
                 prior_prob: float = 0.01, score_thresh: float = 0.05, thresh_with_ctr: bool = False,
                 pre_nms_topk_train: int = 1000, pre_nms_topk_test: int = 1000, post_nms_topk_train: int = 100,
                 post_nms_topk_test: int = 50, nms_thresh: float = 0.6, mask_batch_size_per_image: int = 512,
                 mask_positive_fraction: float = 0.25, mask_iou_threshold: float = 0.5, mask_threshold: float = 0.5,
                 size_divisor: int = 32, min_size_test: int = 800, max_size_test: int = 1333) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sizes_of_interest = tuple(sizes_of_interest)
        self.center_sample, self.pos_radius = center_sample, pos_radius
        self.focal_alpha, self.focal_gamma, self.loc_loss_type = focal_alpha, focal_gamma, loc_loss_type
        self.score_thresh, self.thresh_with_ctr, self.nms_thresh = score_thresh, thresh_with_ctr, nms_thresh
        self.pre_nms_topk_train, self.pre_nms_topk_test = pre_nms_topk_train, pre_nms_topk_test
        self.post_nms_topk_train, self.post_nms_topk_test = post_nms_topk_train, post_nms_topk_test
        self.mask_batch_size_per_image, self.mask_positive_fraction = mask_batch_size_per_image, mask_positive_fraction
        self.mask_iou_threshold, self.mask_threshold = mask_iou_threshold, mask_threshold
        self.maskiou_loss_weight = maskiou_loss_weight
        self.pooler_resolution = pooler_resolution
        self.size_divisor = size_divisor
        self.min_size_test, self.max_size_test = min_size_test, max_size_test

        self.backbone = VoVNet(backbone, 3, ("stage3", "stage4", "stage5"), norm=backbone_norm, freeze_at=freeze_at)
        in_chs = [self.backbone.feature_info[n][0] for n in ("stage3", "stage4", "stage5")]
        self.fpn = FeaturePyramidNetwork(in_chs, fpn_channels, extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
        self.head = FCOSHead(fpn_channels, num_classes, num_cls_convs, num_box_convs, len(FPN_STRIDES), "GN",
                             prior_prob=prior_prob)
        self.mask_head = SAGMaskHead(fpn_channels, mask_conv_dim, mask_num_convs, num_classes)
        self.maskiou_head = (MaskIoUHead(fpn_channels, maskiou_conv_dim, maskiou_num_convs, num_classes, pooler_resolution)
                             if maskiou else None)

    # -- shared parts --

    def pyramid(self, images: Tensor) -> list[Tensor]:
        """P3..P7 of the zero-padded images: strides 8..128, ``fpn_channels`` each."""
        x = pad_to_multiple(images, self.size_divisor)
        return list(self.fpn(self.backbone(x)).values())

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.dense(images)[len(FPN_STRIDES):]  # the head outputs, without P3..P7

    def dense(self, images: Tensor) -> tuple[Tensor, ...]:
        """The dense (per-location) part of :meth:`detect` as one flat tuple: ``(P3..P7,
        logits_P3..P7, bbox_reg_P3..P7, ctrness_P3..P7)`` (20 tensors). :meth:`detect` takes
        any callable with this contract (``dense=``), e.g. a compiled copy from
        :func:`rtseg.fast.optimize`; the RoI part stays in PyTorch."""
        feats = self.pyramid(images)
        logits, reg, ctr = self.head(feats)
        return (*feats, *logits, *reg, *ctr)

    def _locations(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return fcos_locations([tuple(f.shape[-2:]) for f in feats], FPN_STRIDES, feats[0].device)

    @staticmethod
    def _sizes(images: Tensor, image_sizes: Optional[Sequence[tuple[int, int]]]) -> list[tuple[int, int]]:
        n, _, h, w = images.shape
        if image_sizes is None:
            return [(int(h), int(w))] * n
        if len(image_sizes) != n:
            raise DataError(f"image_sizes has {len(image_sizes)} entries for a batch of {n} images")
        return [(int(a), int(b)) for a, b in image_sizes]

    # -- inference --

    @torch.no_grad()
    def detect(self, images: Tensor, image_sizes: Optional[Sequence[tuple[int, int]]] = None,
               output_sizes: Optional[Sequence[tuple[int, int]]] = None,
               dense: Optional[Callable[[Tensor], tuple[Tensor, ...]]] = None) -> list[dict[str, Tensor]]:
        """Full inference: FCOS boxes -> SAG-Mask (+ MaskIoU re-scoring) -> masks pasted.

        Args:
            images: (N, 3, H, W) normalised batch (padded at the bottom/right if sizes differ).
            image_sizes: (h, w) of each image's valid region (default: the whole tensor).
            output_sizes: (h, w) to rescale each image's results to (e.g. the original image
                size before the test resize); default = ``image_sizes``.
        Returns per image ``{"boxes" (D, 4) float xyxy clipped to the output size, "scores" (D,)
        box scores, "labels" (D,) int64, "masks" (D, h, w) uint8 0/1, "mask_scores" (D,)}``
        (``mask_scores`` = scores x predicted mask IoU with MaskIoU, else the box scores).
        ``dense``: what computes :meth:`dense` (default: this module).
        """
        sizes = self._sizes(images, image_sizes)
        out_sizes = sizes if output_sizes is None else self._sizes(images, output_sizes)
        flat = list((dense or self.dense)(images))
        k = len(FPN_STRIDES)
        feats, logits, reg, ctr = flat[:k], flat[k:2 * k], flat[2 * k:3 * k], flat[3 * k:]
        dets = fcos_predict(self._locations(feats), logits, reg, ctr, FPN_STRIDES, score_thresh=self.score_thresh,
                            pre_nms_topk=self.pre_nms_topk_test, nms_thresh=self.nms_thresh,
                            post_nms_topk=self.post_nms_topk_test, thresh_with_ctr=self.thresh_with_ctr)
        boxes = [d["boxes"] for d in dets]
        rois = multilevel_roi_align(feats[:3], boxes, sizes, FPN_STRIDES[:3], self.pooler_resolution)
        mask_logits = self.mask_head(rois)
        labels = torch.cat([d["labels"] for d in dets])
        idx = torch.arange(len(labels), device=labels.device)
        cls = labels if mask_logits.shape[1] > 1 else torch.zeros_like(labels)
        probs = mask_logits[idx, cls][:, None].sigmoid()  # (D, 1, 28, 28)
        mask_scores = torch.cat([d["scores"] for d in dets])
        if self.maskiou_head is not None and len(labels):
            mask_scores = mask_scores * self.maskiou_head(rois, probs)[idx, labels]
        results = []
        start = 0
        for det, size, out_size in zip(dets, sizes, out_sizes):
            end = start + len(det["boxes"])
            results.append(self._postprocess(det, probs[start:end, 0], mask_scores[start:end], size, out_size))
            start = end
        return results

    def _postprocess(self, det: dict[str, Tensor], probs: Tensor, mask_scores: Tensor, size: tuple[int, int],
                     out_size: tuple[int, int]) -> dict[str, Tensor]:
        """detectron2 ``detector_postprocess``: rescale boxes to ``out_size``, clip, drop empty
        boxes, paste the masks at the (clipped) boxes and threshold them."""
        (h, w), (oh, ow) = size, out_size
        sx, sy = ow / w, oh / h
        boxes = det["boxes"] * boxes_scale(sx, sy, det["boxes"])
        boxes = torch.stack([boxes[:, 0].clamp(0, ow), boxes[:, 1].clamp(0, oh),
                             boxes[:, 2].clamp(0, ow), boxes[:, 3].clamp(0, oh)], dim=1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes = boxes[keep]
        return {"boxes": boxes, "scores": det["scores"][keep], "labels": det["labels"][keep],
                "masks": paste_masks(probs[keep], boxes, (oh, ow), self.mask_threshold),
                "mask_scores": mask_scores[keep]}

    # -- training --

    def losses(self, images: Tensor, targets: Sequence[dict[str, Tensor]],
               image_sizes: Optional[Sequence[tuple[int, int]]] = None) -> dict[str, Tensor]:
        """Training losses for a batch.

        Args:
            images: (N, 3, H, W) normalised batch.
            targets: per image ``{"boxes" (K, 4) xyxy float in input pixels, "labels" (K,) int64
                in [0, num_classes), "masks" (K, H', W') uint8/bool in the same pixel frame}``.
            image_sizes: (h, w) of each image's valid region (for Eq. 2); default whole tensor.
        Returns ``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr``, ``loss_mask``,
        ``loss_maskiou`` (with MaskIoU) and ``loss``, their sum (all weights 1 as centermask2,
        MaskIoU times ``maskiou_loss_weight``).
        """
        sizes = self._sizes(images, image_sizes)
        targets = [self._check_target(t, i) for i, t in enumerate(targets)]
        if len(targets) != images.shape[0]:
            raise DataError(f"got {len(targets)} targets for a batch of {images.shape[0]} images")
        feats = self.pyramid(images)
        logits, reg, ctr = self.head(feats)
        locations = self._locations(feats)
        labels_t, reg_t = fcos_targets(locations, [t["boxes"] for t in targets], [t["labels"] for t in targets],
                                       self.num_classes, FPN_STRIDES, self.sizes_of_interest, self.center_sample,
                                       self.pos_radius)
        n, c = images.shape[0], self.num_classes
        flat_logits = torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, c) for x in logits], dim=1).reshape(-1, c)
        flat_reg = torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, 4) for x in reg], dim=1).reshape(-1, 4)
        flat_ctr = torch.cat([x.reshape(n, -1) for x in ctr], dim=1).reshape(-1)
        losses = fcos_losses(flat_logits, flat_reg, flat_ctr, labels_t.reshape(-1), reg_t.reshape(-1, 4),
                             focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma, loc_loss_type=self.loc_loss_type)
        with torch.no_grad():
            proposals = fcos_predict(locations, [x.detach() for x in logits], [x.detach() for x in reg],
                                     [x.detach() for x in ctr], FPN_STRIDES, score_thresh=self.score_thresh,
                                     pre_nms_topk=self.pre_nms_topk_train, nms_thresh=self.nms_thresh,
                                     post_nms_topk=self.post_nms_topk_train, thresh_with_ctr=self.thresh_with_ctr)
        losses.update(self._mask_losses(feats[:3], proposals, targets, sizes))
        losses["loss"] = sum(losses.values())
        return losses

    def _check_target(self, t: dict[str, Tensor], i: int) -> dict[str, Tensor]:
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise DataError(f"target {i} has no {key!r} (needs boxes, labels, masks)")
        boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(labels) != len(boxes) or masks.ndim != 3 or len(masks) != len(boxes):
            raise DataError(f"target {i}: boxes {tuple(boxes.shape)}, labels {tuple(labels.shape)}, masks "
                            f"{tuple(masks.shape)} do not fit (K, 4), (K,), (K, H, W)")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise DataError(f"target {i}: labels must be in [0, {self.num_classes}), got {labels.tolist()}")
        return {"boxes": boxes.float(), "labels": labels.long(), "masks": masks}

    def _sample_mask_proposals(self, proposals: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]
                               ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: proposals + GT boxes, matched to the GT of highest IoU; those with IoU >=
        ``mask_iou_threshold`` are foreground, at most ``batch_size x positive_fraction`` of them
        (random). Returns per image the foreground boxes, their GT indices and classes."""
        fg_boxes, fg_gt, fg_cls = [], [], []
        num_fg_max = int(self.mask_batch_size_per_image * self.mask_positive_fraction)
        for prop, tgt in zip(proposals, targets):
            gt = tgt["boxes"]
            boxes = torch.cat([prop["boxes"], gt])
            if len(gt) == 0:
                fg_boxes.append(boxes[:0])
                fg_gt.append(tgt["labels"][:0])
                fg_cls.append(tgt["labels"][:0])
                continue
            best_iou, matched = box_iou(gt, boxes).max(dim=0)
            fg = torch.nonzero(best_iou >= self.mask_iou_threshold).squeeze(1)
            fg = fg[torch.randperm(fg.numel(), device=fg.device)[:num_fg_max]]
            fg_boxes.append(boxes[fg])
            fg_gt.append(matched[fg])
            fg_cls.append(tgt["labels"][matched[fg]])
        return fg_boxes, fg_gt, fg_cls

    def _mask_losses(self, feats: Sequence[Tensor], proposals: Sequence[dict[str, Tensor]],
                     targets: Sequence[dict[str, Tensor]], sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        fg_boxes, fg_gt, fg_cls = self._sample_mask_proposals(proposals, targets)
        rois = multilevel_roi_align(feats, fg_boxes, sizes, FPN_STRIDES[:3], self.pooler_resolution)
        mask_logits = self.mask_head(rois)
        side = mask_logits.shape[-1]
        gt_masks, ratios = [], []
        for boxes, gt_idx, tgt in zip(fg_boxes, fg_gt, targets):
            m = tgt["masks"].to(device=boxes.device)
            gt_masks.append(crop_and_resize_masks(m, boxes, gt_idx, side))
            ratios.append(mask_fraction_in_boxes(m, boxes, gt_idx))
        gt28 = torch.cat(gt_masks)
        classes = torch.cat(fg_cls)
        out: dict[str, Tensor] = {}
        k = len(classes)
        if k == 0:
            out["loss_mask"] = mask_logits.sum() * 0
            if self.maskiou_head is not None:
                empty = mask_logits[:, :1]
                out["loss_maskiou"] = self.maskiou_head(rois, empty).sum() * 0
            return out
        idx = torch.arange(k, device=classes.device)
        cls = classes if mask_logits.shape[1] > 1 else torch.zeros_like(classes)
        selected = mask_logits[idx, cls]  # (K, 28, 28)
        out["loss_mask"] = F.binary_cross_entropy_with_logits(selected, gt28.to(selected.dtype), reduction="mean")
        if self.maskiou_head is not None:
            with torch.no_grad():
                ratio = torch.cat(ratios).clamp(min=1e-10)
                pred = selected > 0
                full_area = gt28.sum(dim=(1, 2)).to(ratio.dtype) / ratio
                overlap = (pred & gt28).sum(dim=(1, 2)).to(ratio.dtype)
                union = (pred.sum(dim=(1, 2)).to(ratio.dtype) + full_area - overlap).clamp(min=1.0)
                iou_target = overlap / union
            pred_iou = self.maskiou_head(rois, selected[:, None].sigmoid())[idx, classes]
            out["loss_maskiou"] = self.maskiou_loss_weight * maskiou_l2_loss(pred_iou, iou_target)
        return out


def boxes_scale(sx: float, sy: float, like: Tensor) -> Tensor:
    """(4,) multiplier ``[sx, sy, sx, sy]`` for xyxy boxes, on ``like``'s device and dtype."""
    return torch.tensor([sx, sy, sx, sy], dtype=like.dtype, device=like.device)


def maskiou_l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """centermask2 ``mask_iou_loss``: ``sum 0.5 (pred - target)^2 / #pos`` over targets > 0 (0 if none)."""
    pos = torch.nonzero(target > 0.0).squeeze(1)
    if pos.numel() == 0:
        return pred.sum() * 0.0
    return (0.5 * (pred[pos] - target[pos]) ** 2 / pos.numel()).sum()


# --- presets and preprocessing -----------------------------------------------------------------

#: ``Base-CenterMask-Lite-VoVNet.yaml`` over the ``centermask`` defaults. That yaml sets no
#: ``VOVNET.CONV_BODY`` (so it inherits ``defaults.py``'s V-39-eSE); every released Lite config
#: sets one (V-19-slim-dw-eSE, V-19-slim-eSE, V-19-eSE, V-39-eSE). rtseg's Lite default is the
#: lightest of them, V-19-slim-dw-eSE; pass ``backbone=`` for the others.
CENTERMASK_LITE_DEFAULTS: dict[str, Any] = {
    "backbone": "V-19-slim-dw-eSE", "fpn_channels": 128, "num_cls_convs": 2, "num_box_convs": 2,
    "mask_num_convs": 2, "mask_conv_dim": 128, "maskiou_num_convs": 2, "maskiou_conv_dim": 128,
    "min_size_test": 600, "max_size_test": 1000,
}


def centermask(**kwargs: Any) -> CenterMask:
    """CenterMask (``Base-CenterMask-VoVNet.yaml``): V-39-eSE, FPN 256, 4 + 4 tower convs, SAG-Mask
    4 x 256, MaskIoU 4 x 256, 50 detections, test 800 / 1333. ``kwargs`` override."""
    return CenterMask(**kwargs)


def centermask_lite(**kwargs: Any) -> CenterMask:
    """CenterMask-Lite (``Base-CenterMask-Lite-VoVNet.yaml``): FPN 128, 2 + 2 tower convs, SAG-Mask
    and MaskIoU 2 x 128, 50 detections, test 600 / 1000; backbone V-19-slim-dw-eSE by default."""
    return CenterMask(**{**CENTERMASK_LITE_DEFAULTS, **kwargs})


#: detectron2 defaults used by centermask2: BGR, ``x - PIXEL_MEAN`` with PIXEL_STD 1 (0..255
#: units), zero padding to a multiple of 32 (``size_divisibility`` of the FPN).
CENTERMASK_OFFICIAL_CFG = PretrainedCfg(
    mean=(103.530, 116.280, 123.675),
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
    pre_scale=1.0,
    post_scale=1.0,
    input_size=None,
    size_divisor=32,
    class_names=COCO_CLASSES,
    source="youngwanLEE/centermask2 centermask2-V-39-eSE-FPN-ms-3x.pth (COCO 2017)",
    licence="CC BY-NC 4.0 (youngwanLEE/centermask2)",
    notes="detectron2 test resize: shortest edge 800, longest <= 1333 (ResizeShortestEdge), then pad to 32",
)
CENTERMASK_LITE_OFFICIAL_CFG = CENTERMASK_OFFICIAL_CFG.replace(
    source="youngwanLEE/centermask2 centermask-lite-V-19-eSE-slim-dw-FPN-ms-4x.pth (COCO 2017)",
    notes="detectron2 test resize: shortest edge 600, longest <= 1000 (ResizeShortestEdge), then pad to 32",
)


# --- official checkpoint keys ------------------------------------------------------------------

def _fpn_level(kind: str) -> Any:
    def repl(m: re.Match) -> str:
        return f"fpn.{kind}.{int(m.group(1)) - 3}.0."
    return repl


def _index_minus_one(prefix: str) -> Any:
    def repl(m: re.Match) -> str:
        return f"{prefix}.{int(m.group(1)) - 1}."
    return repl


#: Ordered (pattern, replacement) rules: detectron2 / centermask2 keys -> rtseg's.
CENTERMASK_KEY_RULES: list[tuple[str, Any]] = [
    (r"^backbone\.fpn_lateral(\d)\.", _fpn_level("inner_blocks")),
    (r"^backbone\.fpn_output(\d)\.", _fpn_level("layer_blocks")),
    (r"^backbone\.top_block\.", "fpn.extra_blocks."),
    (r"^proposal_generator\.fcos_head\.", "head."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", _index_minus_one("mask_head.convs")),
    (r"^roi_heads\.mask_head\.spatialAtt\.", "mask_head.sam."),
    (r"^roi_heads\.mask_head\.", "mask_head."),
    (r"^roi_heads\.maskiou_head\.maskiou_fcn(\d+)\.", _index_minus_one("maskiou_head.convs")),
    (r"^roi_heads\.maskiou_head\.maskiou_fc(\d)\.", r"maskiou_head.fc\1."),
    (r"^roi_heads\.maskiou_head\.maskiou\.", "maskiou_head.predictor."),
]

#: detectron2 buffers that are not model weights (``GeneralizedRCNN`` pixel statistics).
_DROP = ("pixel_mean", "pixel_std")


def convert_official_centermask(state_dict: StateDict) -> StateDict:
    """centermask2 ``GeneralizedRCNN`` state_dict -> :class:`CenterMask` keys.

    ``backbone.bottom_up.*`` -> ``backbone.*`` (VoVNet rules of :mod:`rtseg.models.vovnet`),
    ``backbone.fpn_lateral{3,4,5}`` / ``fpn_output{3,4,5}`` / ``top_block.p6,p7`` -> the
    torchvision FPN, ``proposal_generator.fcos_head.*`` -> ``head.*``,
    ``roi_heads.mask_head.*`` -> ``mask_head.*``, ``roi_heads.maskiou_head.*`` ->
    ``maskiou_head.*``; ``pixel_mean`` / ``pixel_std`` are dropped.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if key in _DROP:
            continue
        if key.startswith("backbone.bottom_up."):
            new = "backbone." + rename_vovnet_key(key[len("backbone.bottom_up."):])
        else:
            new = rename_key(key, CENTERMASK_KEY_RULES)
        out[new] = value
    return out


def convert_official_sag_mask_head(state_dict: StateDict) -> StateDict:
    """centermask2 ``SpatialAttentionMaskHead`` keys (``mask_fcn1``, ``spatialAtt``) -> :class:`SAGMaskHead`."""
    prefixed = convert_official_centermask({"roi_heads.mask_head." + k: v for k, v in state_dict.items()})
    return {k[len("mask_head."):]: v for k, v in prefixed.items()}


def convert_official_fcos_head(state_dict: StateDict) -> StateDict:
    """centermask2 ``FCOSHead`` keys -> :class:`FCOSHead` (same names; empty ``share_tower``)."""
    return dict(state_dict)


__all__ = [
    "CenterMask", "centermask", "centermask_lite", "CENTERMASK_LITE_DEFAULTS", "CENTERMASK_OFFICIAL_CFG",
    "CENTERMASK_LITE_OFFICIAL_CFG", "FCOSHead", "Scale", "SpatialAttention", "SAGMaskHead", "MaskIoUHead", "COCO_CLASSES",
    "fcos_locations", "fcos_targets", "fcos_losses", "fcos_iou_loss", "fcos_predict", "centerness_targets",
    "assign_levels_by_ratio", "multilevel_roi_align", "crop_and_resize_masks", "mask_fraction_in_boxes",
    "paste_masks", "pad_to_multiple", "convert_official_centermask", "convert_official_sag_mask_head",
    "convert_official_fcos_head", "maskiou_l2_loss",
]
