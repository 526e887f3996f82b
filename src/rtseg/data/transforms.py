"""Training and evaluation transforms on (image, mask) pairs, built on albumentations.

Both factories return a :class:`PairTransform`: a callable ``(image, mask) -> (image, mask)`` on
numpy arrays (image uint8 (H, W, 3), mask uint8 (H, W) class ids). Masks are only ever resampled
with nearest-neighbour interpolation and every pixel that a geometric transform invents (padding,
rotated-in corners) gets ``ignore_index``, so mask values stay in the class set or ignore.

Reproducibility
---------------
albumentations 2.x does not use numpy's or python's global random state: each transform owns its
own generators. A :class:`PairTransform` therefore draws everything from one integer seed per
call, chosen in this order:

1. ``transform(image, mask, seed=s)`` uses ``s``;
2. after ``transform.reseed(s)`` the per-call seeds come from a private generator started at
   ``s`` (the n-th call after ``reseed(s)`` is always the same);
3. otherwise the seed is drawn from numpy's global state, so ``np.random.seed(k)`` makes a run
   repeatable.

For a run that is killed and resumed to see exactly the same augmentations, derive the seed from
what identifies the draw, not from how far a random stream has advanced: the trainer calls
``transform(image, mask, seed=sample_seed(cfg.seed, epoch, index))`` (or ``reseed`` with it just
before reading ``index``), which does not depend on worker count, order or earlier epochs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import albumentations as A
import cv2
import numpy as np

Size = Union[int, Sequence[int]]


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """A well-mixed 31-bit seed for sample ``index`` of ``epoch`` (independent of worker layout)."""
    state = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"transform size must be positive, got {size!r}")
    return h, w


class PairTransform:
    """An albumentations pipeline applied to an (image, mask) pair with explicit seeding.

    Each child transform gets its own seed derived from the per-call seed (albumentations would
    otherwise give every child the same generator state, correlating e.g. flip and crop).
    """

    def __init__(self, transforms: Sequence[A.BasicTransform]) -> None:
        self.compose = A.Compose(list(transforms), seed=0)
        self._rng: Optional[np.random.Generator] = None

    def reseed(self, seed: int) -> None:
        """Start the private per-call seed stream at ``seed`` (see the module docstring)."""
        self._rng = np.random.default_rng(int(seed))

    def _next_seed(self) -> int:
        if self._rng is not None:
            return int(self._rng.integers(0, 2**31 - 1))
        return int(np.random.randint(0, 2**31 - 1))

    def _seed_children(self, seed: int) -> None:
        states = np.random.SeedSequence(int(seed)).generate_state(len(self.compose.transforms) + 1)
        self.compose.set_random_seed(int(states[0]))  # also sets the children; overridden below
        for t, s in zip(self.compose.transforms, states[1:]):
            t.set_random_seed(int(s))

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: Optional[int] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``image`` uint8 (H, W, 3), ``mask`` uint8 (H, W) -> the transformed pair (same dtypes)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
        self._seed_children(self._next_seed() if seed is None else seed)
        out = self.compose(image=np.ascontiguousarray(image, dtype=np.uint8),
                           mask=np.ascontiguousarray(mask, dtype=np.uint8))
        return (np.ascontiguousarray(out["image"], dtype=np.uint8),
                np.ascontiguousarray(out["mask"], dtype=np.uint8))

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.compose.transforms)
        return f"{type(self).__name__}([{names}])"


def train_transform(size: Size = (512, 512), scale: Optional[tuple[float, float]] = (0.5, 2.0),
                    rotate: float = 10, hflip: bool = True, color_jitter: bool = True,
                    ignore_index: int = 255) -> PairTransform:
    """Training augmentation: random scale -> small rotation -> pad to ``size`` (image 0, mask
    ``ignore_index``) -> random crop ``size`` = (H, W) -> horizontal flip -> colour jitter.

    ``scale`` is the range of the resize factor relative to the input (None or (1, 1): off);
    ``rotate`` the largest rotation in degrees (0: off), the rotated-in corners get image 0 and
    mask ``ignore_index``.
    """
    h, w = _hw(size)
    steps: list[A.BasicTransform] = []
    if scale is not None and tuple(scale) != (1.0, 1.0):
        lo, hi = float(scale[0]), float(scale[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {scale!r}")
        steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    if rotate:
        steps.append(A.Rotate(limit=(-abs(float(rotate)), abs(float(rotate))), interpolation=cv2.INTER_LINEAR,
                              mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                              fill=0, fill_mask=ignore_index, p=1.0))
    steps.append(A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT,
                               fill=0, fill_mask=ignore_index))
    steps.append(A.RandomCrop(height=h, width=w))
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter:
        steps.append(A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, p=1.0))
    return PairTransform(steps)


def resize_transform(size: Size) -> PairTransform:
    """Fixed-size evaluation: resize to ``size`` = (H, W), image bilinear, mask nearest."""
    h, w = _hw(size)
    return PairTransform([A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)])
