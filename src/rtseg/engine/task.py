"""What the trainer needs to know about a kind of model (semantic or instance segmentation).

The trainer (``rtseg.engine.trainer``) owns the loop: seeding, DDP, optimiser and schedule,
progress bar, logs, atomic checkpoints and exact resume. A :class:`Task` supplies the parts that
differ between semantic segmentation and instance segmentation.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import TrainConfig


class Task(Protocol):
    name: str

    def train_dataset(self, cfg: TrainConfig, model: nn.Module) -> Dataset:
        """The training set with augmentation; items are whatever :meth:`collate` accepts."""

    def val_dataset(self, cfg: TrainConfig, model: nn.Module) -> Optional[Dataset]:
        """The validation set (no augmentation) or None."""

    def collate(self, items: list[Any]) -> Any:
        """Batch a list of dataset items."""

    def loss(self, model: nn.Module, batch: Any, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """Forward + losses for one batch; must contain ``"loss"`` (the total to minimise)."""

    def evaluate(self, model: nn.Module, dataset: Dataset, progress: bool = True) -> dict[str, Any]:
        """Metrics on ``dataset`` (model in eval mode); must contain ``"score"`` (higher is better)."""
