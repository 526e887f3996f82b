"""Losses for semantic segmentation, shared by every model the trainer runs.

Conventions (all functions): ``logits`` (N, C, H, W) float, ``target`` (N, H, W) int64 class ids
with ``ignore_index`` (default 255) marking pixels that never contribute to a loss. Functions
expect logits at the target's size; :class:`SegmentationLoss` (what the trainer calls) resizes
model outputs first with :func:`match_target_size`.

* :func:`cross_entropy` - pixel-wise (optionally class-weighted) cross-entropy; class weights as
  ENet / ERFNet / CGNet compute them from the training-label histogram
  (:func:`label_histogram`, :func:`enet_class_weights`).
* :func:`lovasz_softmax` - the Lovasz-Softmax loss (Berman, Triki & Blaschko, "The Lovasz-Softmax
  loss", CVPR 2018), a convex surrogate of the per-class Jaccard loss; SINet's official loss.
* :func:`boundary_band` / :func:`boundary_loss` - SINet's boundary refinement (Park et al., WACV
  2020, Sec. 3.3): the loss again, restricted to a band of width ``kernel`` around the label
  boundaries (morphological dilation minus erosion of the ground truth).
* :func:`ohem_cross_entropy` - online hard example mining CE as BiSeNet's reference training
  (CoinCheung/BiSeNet ``OhemCELoss``).
* :class:`SegmentationLoss` - the combination the trainer uses: main loss + weighted boundary
  term + weighted auxiliary-head losses, returned as a dict of named terms.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError, RtsegError

ClassWeights = Optional[Union[torch.Tensor, Sequence[float], np.ndarray]]
LossKind = str  # "ce" | "lovasz" | "ohem"
LOSS_KINDS = ("ce", "lovasz", "ohem")


# --- helpers --------------------------------------------------------------------------------

def _weights_like(class_weights: ClassWeights, logits: torch.Tensor) -> Optional[torch.Tensor]:
    """``class_weights`` as a float tensor of shape (C,) on the logits' device, or None."""
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    if w.ndim != 1 or w.numel() != logits.shape[1]:
        raise ValueError(f"class_weights has {w.numel()} entries but the logits have {logits.shape[1]} classes")
    return w


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 4 or target.ndim != 3:
        raise ValueError(f"expected logits (N, C, H, W) and target (N, H, W), got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}; "
                         f"resize them first (match_target_size)")


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that still depends on ``x`` (so ``backward`` works and DDP sees every parameter)."""
    return x.sum() * 0.0


def match_target_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring (N, C, h, w) logits to (N, C, H, W) = ``size``, the rule of :mod:`rtseg.inference`.

    Logits at least as large as the target in both dimensions are a padded output (SINet's
    32*ceil(H/32) grid) and are cropped top-left; otherwise (a stride-8 head, an auxiliary head)
    they are upsampled bilinearly with ``align_corners=False``.
    """
    h, w = size
    if tuple(logits.shape[-2:]) == (h, w):
        return logits
    if logits.shape[-2] >= h and logits.shape[-1] >= w:
        return logits[..., :h, :w]
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


# --- cross-entropy and class weights --------------------------------------------------------

def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                  class_weights: ClassWeights = None) -> torch.Tensor:
    """Pixel-wise cross-entropy, mean over the non-ignored pixels. Returns a scalar.

    With ``class_weights`` (C,) each pixel's loss is multiplied by the weight of its true class
    and the mean is the weighted mean ``sum(w_y * l) / sum(w_y)`` (``torch.nn.CrossEntropyLoss``
    semantics; CGNet / ERFNet / SINet train with ENet weights, see :func:`enet_class_weights`).
    Unlike torch's mean reduction, a batch with no valid pixel gives 0 instead of NaN.
    """
    _check_pair(logits, target)
    w = _weights_like(class_weights, logits)
    total = F.cross_entropy(logits, target, weight=w, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if w is None:
        denom = valid.sum().to(total.dtype)
    else:
        denom = w[target[valid]].sum().to(total.dtype)
    return total / denom.clamp_min(torch.finfo(total.dtype).tiny)


def label_histogram(masks: Any, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Pixel count per class over a set of label masks -> int64 (num_classes,).

    ``masks`` is an iterable of (H, W) / (N, H, W) label arrays or tensors, or a dataset:
    an :class:`rtseg.data.datasets.SegmentationDataset` (its untransformed labels are read with
    ``load``, as CGNet / ERFNet compute the statistics on the raw training labels) or any
    indexable dataset whose items are ``(image, mask)``. ``ignore_index`` pixels are skipped;
    any other label outside 0..num_classes-1 raises :class:`DataError`.
    """
    hist = np.zeros(num_classes, dtype=np.int64)
    for i, m in enumerate(_iter_masks(masks)):
        a = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        a = a.astype(np.int64, copy=False).ravel()
        a = a[a != ignore_index]
        bad = (a < 0) | (a >= num_classes)
        if bad.any():
            values = np.unique(a[bad])[:8].tolist()
            raise DataError(f"label histogram: mask {i} has labels {values} outside the {num_classes} classes "
                            f"0..{num_classes - 1} (ignore index {ignore_index})")
        hist += np.bincount(a, minlength=num_classes)
    return hist


def _iter_masks(source: Any) -> Iterable[Any]:
    if hasattr(source, "load") and hasattr(source, "__len__"):
        for i in range(len(source)):
            yield source.load(i)[1]
        return
    if hasattr(source, "__getitem__") and hasattr(source, "__len__") and not isinstance(source, (np.ndarray, torch.Tensor)):
        for i in range(len(source)):
            item = source[i]
            yield item[1] if isinstance(item, (tuple, list)) else item
        return
    yield from source


def enet_class_weights(histogram: Union[np.ndarray, Sequence[float], torch.Tensor], c: float = 1.02) -> torch.Tensor:
    """ENet class weights ``w_k = 1 / ln(c + p_k)`` with ``p_k`` the frequency of class k.

    Paszke et al., "ENet", 2016, Sec. 5.2 (c = 1.02 bounds the weights to [1, 1/ln(1.02) ~ 50.5]);
    ERFNet, CGNet and SINet's official data loaders compute them the same way from the training
    label histogram (CGNet's Cityscapes/CamVid code uses ``c = 1.10``). Returns float32 (C,).
    """
    if isinstance(histogram, torch.Tensor):
        histogram = histogram.detach().cpu().numpy()
    h = torch.from_numpy(np.asarray(histogram, dtype=np.float64))
    if c <= 1.0:
        raise ValueError(f"c must be > 1 so that ln(c + p) > 0, got {c}")
    total = h.sum()
    if h.ndim != 1 or total <= 0 or (h < 0).any():
        raise ValueError("histogram must be a non-empty 1-D array of non-negative counts with a positive sum")
    return (1.0 / torch.log(c + h / total)).float()


# --- Lovasz-Softmax ---------------------------------------------------------------------------

def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    Berman et al. 2018, Eq. (8)-(9) / Alg. 1: with pixels sorted by decreasing error and
    ``F`` the ground-truth foreground of the class, the k-th component is
    ``Delta_J({pi_1..pi_k}) - Delta_J({pi_1..pi_{k-1}})`` where
    ``Delta_J(M) = 1 - |F \\ M| / |F u M|`` (Eq. 5, the Jaccard loss of mispredicted set M).
    ``gt_sorted`` (P,) or (P, C) float 0/1 -> same shape; columns are independent classes.
    """
    gts = gt_sorted.sum(0, keepdim=True)
    intersection = gts - gt_sorted.cumsum(0)            # |F \ {pi_1..pi_k}|
    union = gts + (1.0 - gt_sorted).cumsum(0)           # |F u {pi_1..pi_k}| (never 0)
    jaccard = 1.0 - intersection / union
    grad = jaccard.clone()
    grad[1:] = jaccard[1:] - jaccard[:-1]
    return grad


def _lovasz_flat(probas: torch.Tensor, labels: torch.Tensor, classes: Union[str, Sequence[int]]) -> Optional[torch.Tensor]:
    """probas (P, C), labels (P,) (valid pixels only) -> mean per-class loss, or None if no class."""
    num_classes = probas.shape[1]
    if classes == "present":
        present = torch.bincount(labels, minlength=num_classes) > 0
        selected = torch.nonzero(present).flatten()
    elif classes == "all":
        selected = torch.arange(num_classes, device=probas.device)
    else:
        selected = torch.as_tensor(list(classes), dtype=torch.long, device=probas.device)
    if selected.numel() == 0 or probas.shape[0] == 0:
        return None
    fg = (labels[:, None] == selected[None, :]).to(probas.dtype)          # (P, K)
    errors = (fg - probas[:, selected]).abs()                              # m_i(c), Eq. (10)
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    fg_sorted = torch.gather(fg, 0, perm)
    per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(0)            # Eq. (9): <m, g(m)>
    return per_class.mean()


def lovasz_softmax(probas: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                   classes: Union[str, Sequence[int]] = "present", per_image: bool = False) -> torch.Tensor:
    """Lovasz-Softmax loss (Berman et al., CVPR 2018, Eq. (10)-(12)). Returns a scalar.

    ``probas`` (N, C, H, W) are class probabilities (softmax of the logits), ``target`` (N, H, W).
    For each class c, the pixel errors ``m_i(c) = |[y_i = c] - p_i(c)|`` are sorted in
    decreasing order and the loss is the Lovasz extension of the Jaccard loss,
    ``sum_k m_(k) g_k`` with ``g`` from :func:`lovasz_grad`. It is averaged over ``classes``:
    ``"present"`` (classes in the valid target pixels, the paper's and SINet's default),
    ``"all"``, or a list of class ids. ``per_image`` averages per-image losses instead of
    treating the batch as one image. No valid pixel / no class -> 0.

    Note: SINet's official training applies the binary variant (Lovasz hinge on one logit);
    rtseg's models keep C >= 2 softmax outputs, for which this is the matching surrogate.
    """
    if probas.ndim != 4 or target.ndim != 3 or probas.shape[0] != target.shape[0] \
            or probas.shape[2:] != target.shape[1:]:
        raise ValueError(f"expected probas (N, C, H, W) and target (N, H, W) of the same size, got "
                         f"{tuple(probas.shape)} and {tuple(target.shape)}")
    if isinstance(classes, str) and classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present', 'all' or a list of class ids, got {classes!r}")
    num_classes = probas.shape[1]
    batches = [(probas[i:i + 1], target[i:i + 1]) for i in range(probas.shape[0])] if per_image \
        else [(probas, target)]
    losses = []
    for p, t in batches:
        flat_p = p.permute(0, 2, 3, 1).reshape(-1, num_classes)
        flat_t = t.reshape(-1)
        valid = flat_t != ignore_index
        loss = _lovasz_flat(flat_p[valid], flat_t[valid], classes)
        if loss is not None:
            losses.append(loss)
    if not losses:
        return _zero(probas)
    return torch.stack(losses).mean()


# --- SINet boundary band ------------------------------------------------------------------------

def boundary_band(mask: torch.Tensor, kernel: int = 15, ignore_index: int = 255) -> torch.Tensor:
    """SINet's boundary band: pixels within ``kernel // 2`` of a label change. bool, mask's shape.

    SINet (Sec. 3.3) and its official data loader take the morphological dilation minus the
    erosion of the ground-truth foreground with a ``kernel x kernel`` square. Generalised to C
    classes: a pixel is in the band when its ``kernel x kernel`` neighbourhood holds more than
    one class, i.e. neighbourhood max label != min label (two ``max_pool2d``; for a binary mask
    this is exactly dilation - erosion of the foreground). The image border is not a label change
    (like OpenCV's default border), ``ignore_index`` pixels count as no class and are never in
    the band. ``mask`` (N, H, W) or (H, W) integer; ``kernel`` odd.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"boundary kernel must be a positive odd number, got {kernel}")
    squeeze = mask.ndim == 2
    m = mask[None] if squeeze else mask
    if m.ndim != 3:
        raise ValueError(f"expected a mask (N, H, W) or (H, W), got {tuple(mask.shape)}")
    valid = m != ignore_index
    labels = m.to(torch.float32)[:, None]                      # (N, 1, H, W), exact for ids < 2**24
    high = torch.where(valid[:, None], labels, torch.full_like(labels, -1.0))
    low = torch.where(valid[:, None], labels, torch.full_like(labels, float(2 ** 24)))
    pad = kernel // 2
    dilated = F.max_pool2d(high, kernel, stride=1, padding=pad)        # neighbourhood max label
    eroded = -F.max_pool2d(-low, kernel, stride=1, padding=pad)        # neighbourhood min label
    band = (dilated > eroded)[:, 0] & valid
    return band[0] if squeeze else band


def band_target(target: torch.Tensor, kernel: int = 15, ignore_index: int = 255) -> torch.Tensor:
    """The target with every pixel outside :func:`boundary_band` set to ``ignore_index``
    (SINet's ``edgemap``)."""
    band = boundary_band(target, kernel, ignore_index)
    return torch.where(band, target, torch.full_like(target, ignore_index))


def boundary_loss(logits: torch.Tensor, target: torch.Tensor, kernel: int = 15, ignore_index: int = 255,
                  class_weights: ClassWeights = None) -> torch.Tensor:
    """SINet's boundary loss: :func:`cross_entropy` restricted to :func:`boundary_band`.

    Mean over band pixels (class-weighted mean with ``class_weights``); 0 when the batch has no
    band (empty or single-class masks). SINet's official training adds it with weight 0.5 and
    ``kernel = 15`` (``lossE = 0.5 * criterion(output, edgemap)``).
    """
    _check_pair(logits, target)
    return cross_entropy(logits, band_target(target, kernel, ignore_index), ignore_index, class_weights)


# --- OHEM ---------------------------------------------------------------------------------------

def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept: Optional[int] = None, ignore_index: int = 255,
                       class_weights: ClassWeights = None) -> torch.Tensor:
    """Online hard example mining cross-entropy (BiSeNet reference training, CoinCheung's
    ``OhemCELoss``). Returns a scalar.

    A pixel is *hard* when its loss exceeds ``-ln(thresh)``, i.e. the predicted probability of its
    true class is below ``thresh``. The loss is the mean over the hard pixels; when fewer than
    ``min_kept`` are hard, the mean over the ``min_kept`` largest losses instead.
    ``min_kept=None`` uses CoinCheung's ``n_valid // 16``; it is capped at the number of valid
    pixels. ``class_weights`` scale each pixel's loss before the selection (plain mean after).
    """
    _check_pair(logits, target)
    if not 0.0 < thresh <= 1.0:
        raise ValueError(f"ohem thresh is a probability in (0, 1], got {thresh}")
    w = _weights_like(class_weights, logits)
    per_pixel = F.cross_entropy(logits, target, weight=w, ignore_index=ignore_index, reduction="none")
    loss = per_pixel[target != ignore_index]
    n_valid = loss.numel()
    if n_valid == 0:
        return _zero(logits)
    n_min = n_valid // 16 if min_kept is None else min(max(int(min_kept), 0), n_valid)
    hard = loss[loss > -math.log(thresh)]
    if hard.numel() < n_min:
        hard = torch.topk(loss, n_min, sorted=False).values
    if hard.numel() == 0:
        return _zero(logits)
    return hard.mean()


# --- the trainer's loss ---------------------------------------------------------------------------

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]


class SegmentationLoss(nn.Module):
    """Main loss + boundary term + auxiliary-head losses; what the trainer calls.

    ``loss_fn(outputs, target) -> {"loss": total, "main": ..., "boundary": ..., "aux0": ...}``
    where ``outputs`` is the logits tensor (N, C, h, w) or a training-mode tuple
    ``(main, aux1, aux2, ...)`` and ``target`` (N, H, W) int64. Every output is first brought to
    the target size by :func:`match_target_size` (bilinear upsampling, ``align_corners=False``).

    * ``kind``: ``"ce"`` (:func:`cross_entropy`), ``"lovasz"`` (:func:`lovasz_softmax` of the
      softmax) or ``"ohem"`` (:func:`ohem_cross_entropy`); the same criterion is used for the
      auxiliary heads (as BiSeNet does with OHEM on every head).
    * ``boundary_weight > 0`` adds ``boundary_weight * criterion(main, band_target)``: the main
      criterion evaluated on the :func:`boundary_band` only, as SINet's official training
      (weight 0.5, kernel 15). For ``"ohem"`` the band term is plain CE (:func:`boundary_loss`).
    * ``aux_weights``: one weight per auxiliary output. Empty means 1.0 for every head (BiSeNet
      V1/V2 official: ``main + sum(aux)``); a single value is used for every head; otherwise the
      count must equal the number of auxiliary outputs.

    The dict holds the *unweighted* terms (for logging) and ``"loss"``, the weighted total.
    """

    def __init__(self, kind: LossKind = "ce", boundary_weight: float = 0.0, boundary_kernel: int = 15,
                 aux_weights: Sequence[float] = (), class_weights: ClassWeights = None, ignore_index: int = 255,
                 ohem_thresh: float = 0.7, ohem_min_kept: Optional[int] = None,
                 lovasz_classes: Union[str, Sequence[int]] = "present") -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise RtsegError(f"loss {kind!r}: unknown, choose one of {', '.join(LOSS_KINDS)}")
        if boundary_weight < 0:
            raise RtsegError(f"boundary weight must be >= 0, got {boundary_weight}")
        if boundary_weight > 0 and (boundary_kernel < 1 or boundary_kernel % 2 == 0):
            raise RtsegError(f"boundary kernel must be a positive odd number, got {boundary_kernel}")
        self.kind = kind
        self.boundary_weight = float(boundary_weight)
        self.boundary_kernel = int(boundary_kernel)
        self.aux_weights = tuple(float(w) for w in aux_weights)
        self.ignore_index = int(ignore_index)
        self.ohem_thresh = float(ohem_thresh)
        self.ohem_min_kept = ohem_min_kept
        self.lovasz_classes = lovasz_classes
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        self.register_buffer("class_weights", weights, persistent=False)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, boundary_weight={self.boundary_weight}, boundary_kernel={self.boundary_kernel}, "
                f"aux_weights={self.aux_weights}, ignore_index={self.ignore_index}")

    def criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The main criterion on logits already at the target size."""
        if self.kind == "lovasz":
            probas = torch.softmax(logits.float(), dim=1)
            return lovasz_softmax(probas, target, self.ignore_index, self.lovasz_classes)
        if self.kind == "ohem":
            return ohem_cross_entropy(logits, target, self.ohem_thresh, self.ohem_min_kept, self.ignore_index,
                                      self.class_weights)
        return cross_entropy(logits, target, self.ignore_index, self.class_weights)

    def boundary(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The boundary term (unweighted) on logits already at the target size."""
        edge = band_target(target, self.boundary_kernel, self.ignore_index)
        if self.kind == "lovasz":
            return self.criterion(logits, edge)
        return cross_entropy(logits, edge, self.ignore_index, self.class_weights)

    def _aux_weights(self, n: int) -> tuple[float, ...]:
        if not self.aux_weights:
            return (1.0,) * n
        if len(self.aux_weights) == 1:
            return self.aux_weights * n
        if len(self.aux_weights) != n:
            raise RtsegError(f"aux weights: {len(self.aux_weights)} given but the model returned {n} auxiliary "
                             f"outputs")
        return self.aux_weights

    def forward(self, outputs: Outputs, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(outputs, torch.Tensor):
            main, aux = outputs, ()
        else:
            main, *aux = outputs
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]
        target = target.long()
        size = (int(target.shape[-2]), int(target.shape[-1]))
        main = match_target_size(main, size)
        terms: dict[str, torch.Tensor] = {}
        terms["main"] = self.criterion(main, target)
        total = terms["main"]
        if self.boundary_weight > 0:
            terms["boundary"] = self.boundary(main, target)
            total = total + self.boundary_weight * terms["boundary"]
        for i, (a, w) in enumerate(zip(aux, self._aux_weights(len(aux)))):
            terms[f"aux{i}"] = self.criterion(match_target_size(a, size), target)
            total = total + w * terms[f"aux{i}"]
        return {"loss": total, **terms}
