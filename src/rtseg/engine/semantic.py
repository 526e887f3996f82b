"""Semantic segmentation as a :class:`~rtseg.engine.task.Task`: datasets, loss, evaluation."""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import TrainConfig
from ..data.datasets import SegmentationDataset, open_dataset
from ..errors import DataError, RtsegError
from ..inference import normalize, prepare, restore

log = logging.getLogger("rtseg.train")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of item ``index`` in ``epoch``: a run resumed mid-epoch replays
    exactly the augmentations it would have drawn (no hidden RNG state in workers)."""
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**31 - 1)


class AugmentedView(Dataset):
    """Training view: read -> validate -> seeded augmentation -> normalise (model's cfg).

    ``__getitem__`` takes ``(epoch, index)`` pairs from the trainer's batch sampler."""

    def __init__(self, base: SegmentationDataset, transform: Any, cfg: Any, seed: int) -> None:
        self.base, self.transform, self.cfg, self.seed = base, transform, cfg, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, mask = self.base.load(index)
        image, mask = self.transform(image, mask, seed=sample_seed(self.seed, epoch, index))
        return normalize(image, self.cfg)[0], torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


class SemanticTask:
    name = "semantic"

    def __init__(self) -> None:
        self.info = None
        self.loss_fn: Optional[nn.Module] = None

    def open(self, cfg: TrainConfig, split: str = "train") -> SegmentationDataset:
        ds = open_dataset(cfg.data, split)
        self.info = ds.info
        return ds

    def train_dataset(self, cfg: TrainConfig, model: nn.Module) -> Dataset:
        from ..data.transforms import resize_transform, train_transform

        base = self.open(cfg, "train")
        h, w = cfg.size
        transform = (train_transform(size=(h, w), ignore_index=base.info.ignore_index) if cfg.augment
                     else resize_transform((h, w)))
        return AugmentedView(base, transform, model.pretrained_cfg, cfg.seed)

    def val_dataset(self, cfg: TrainConfig, model: nn.Module) -> Optional[Dataset]:
        spec = cfg.val_data
        if spec is None:
            try:
                return open_dataset(cfg.data, "val")
            except DataError:
                return None
        return open_dataset(spec, "val")

    def collate(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = zip(*items)
        return torch.stack(images), torch.stack(masks)

    def make_loss(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        from ..losses import SegmentationLoss

        return SegmentationLoss(
            kind=cfg.loss, boundary_weight=cfg.boundary_weight, boundary_kernel=cfg.boundary_kernel,
            aux_weights=tuple(cfg.aux_weights), class_weights=self.class_weights(cfg, num_classes),
            ignore_index=cfg.ignore_index, ohem_thresh=cfg.ohem_thresh, ohem_min_kept=cfg.ohem_min_kept)

    def class_weights(self, cfg: TrainConfig, num_classes: int) -> Optional[list[float]]:
        """``cfg.class_weights`` as a list of ``num_classes`` floats, or None. ``"auto"``: ENet
        weights ``1 / ln(c + p_k)`` (``c = cfg.enet_c``) from the class frequencies ``p_k`` of the
        raw training labels, as CGNet / ERFNet / SINet's data loaders compute them."""
        weights = cfg.class_weights
        if weights is None or (not isinstance(weights, str) and len(weights) == 0):
            return None
        if isinstance(weights, str):
            if weights != "auto":
                raise RtsegError(f"--class-weights {weights!r}: give 'auto' or one number per class")
            from ..losses import enet_class_weights, label_histogram

            train_set = self.open(cfg, "train")
            hist = label_histogram(train_set, train_set.info.num_classes, train_set.info.ignore_index)
            auto = enet_class_weights(hist, c=cfg.enet_c).tolist()
            log.info("class weights (ENet, c=%g) from %d training labels: %s", cfg.enet_c, len(train_set),
                     " ".join(f"{w:.3f}" for w in auto))
            return auto
        if num_classes and len(weights) != num_classes:
            raise RtsegError(f"--class-weights: {len(weights)} weights given but {cfg.data} has {num_classes} classes")
        return [float(w) for w in weights]

    def loss(self, model: nn.Module, batch: Any, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        images, masks = batch
        if self.loss_fn is None:
            self.loss_fn = self.make_loss(cfg, 0)
        return self.loss_fn(model(images), masks)

    def evaluate(self, model: nn.Module, dataset: Dataset, progress: bool = True, flip: bool = False,
                 distributed: Any = None, window: Optional[tuple[int, int]] = None,
                 stride: Optional[tuple[int, int]] = None) -> dict[str, Any]:
        """mIoU from a confusion matrix over whole images, at each image's own size, using the
        model's size rule (pad or resize) exactly as ``predict`` does; optional flip averaging.
        With ``window`` (H, W) the logits come from overlapping crops averaged
        (:func:`~rtseg.engine.sliding.sliding_window_logits`, ``stride`` between crops).
        Under torchrun each rank evaluates a shard and the matrices are summed."""
        from ..metrics import ConfusionMatrix
        from .sliding import sliding_window_logits

        info = dataset.info
        cm = ConfusionMatrix(info.num_classes, info.ignore_index)
        cfg = model_cfg(model)
        rank, world = (distributed.rank, distributed.world_size) if distributed is not None else (0, 1)
        indices = range(rank, len(dataset), world)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for i in tqdm(indices, desc="eval", unit="img", disable=not progress, leave=False):
                    image, mask = dataset.load(i)
                    if window is not None:
                        logits = sliding_window_logits(model, normalize(image, cfg), window, stride,
                                                       cfg.size_divisor, flip)
                    else:
                        x, size = prepare(image, cfg)
                        logits = model(x)
                        if flip:
                            logits = logits + model(x.flip(-1)).flip(-1)
                        logits = restore(logits.float(), size, cfg)
                    pred = logits.argmax(1)[0]
                    cm.update(pred, torch.from_numpy(mask.astype(np.int64)))
        finally:
            model.train(was_training)
        if world > 1:
            cm.all_reduce()
        miou = float(cm.miou())
        return {"score": miou, "miou": miou, "pixel_acc": float(cm.pixel_accuracy()),
                "per_class": cm.to_dict(info.class_names), "table": cm.table(info.class_names)}


def model_cfg(model: nn.Module):
    return getattr(getattr(model, "module", model), "pretrained_cfg")
