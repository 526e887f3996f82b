"""Temporal smoothing of per-frame segmentation probabilities for video streams.

Per-frame predictions flicker: pixels near boundaries and in ambiguous regions change class from
one frame to the next although the scene barely moved. :class:`TemporalSmoother` keeps an
exponential moving average (EMA) of the class probabilities and makes its weight depend on
motion, so it smooths where the image is still and follows where it changes:

``p_t = a_t * q_t + (1 - a_t) * p_{t-1}`` per pixel, with ``q_t`` the frame's raw probabilities
and ``a_t = alpha + (1 - alpha) * m_t``, where ``m_t`` in [0, 1] ramps from 0 to 1 as the blurred
absolute grey-level difference between frame t and t-1 goes from ``motion_low`` to
``motion_high`` (fractions of the 0..255 range). Moving edges (m = 1) take the new prediction
at once; still regions average over about ``1 / alpha`` frames.

A **scene cut** (mean grey-level difference above ``cut_threshold``, or a change of frame size)
resets the state: the output is the new frame's raw prediction, with no lag.

Without frames (``frame=None``) the signal is the change of the probabilities themselves,
``max_c |q_t - p_{t-1}|``, blurred, with its own ramp ``prob_motion`` and cut level
``prob_cut_threshold`` (prediction noise also changes probabilities, so these are higher).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class TemporalSmoother:
    """Motion-aware EMA of (C, H, W) probability maps; call :meth:`update` once per frame."""

    def __init__(self, alpha: float = 0.3, *, motion_low: float = 0.03, motion_high: float = 0.10,
                 cut_threshold: float = 0.15, blur: int = 5, prob_motion: tuple[float, float] = (0.25, 0.5),
                 prob_cut_threshold: float = 0.5) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not 0.0 <= motion_low < motion_high:
            raise ValueError(f"need 0 <= motion_low < motion_high, got {motion_low}, {motion_high}")
        self.alpha = alpha
        self.motion_low, self.motion_high = motion_low, motion_high
        self.cut_threshold = cut_threshold
        self.blur = blur
        self.prob_motion, self.prob_cut_threshold = prob_motion, prob_cut_threshold
        self.reset()

    def reset(self) -> None:
        """Forget the past (the next frame is output as it is)."""
        self.state: Optional[np.ndarray] = None
        self.prev_grey: Optional[np.ndarray] = None
        self.last_reset = False
        self.last_weight: Optional[np.ndarray] = None

    @staticmethod
    def _grey(frame: np.ndarray) -> np.ndarray:
        """(H, W[, 3|4]) uint8 -> (H, W) float32 in [0, 1]."""
        f = np.asarray(frame)
        if f.ndim == 3:
            f = f[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return f.astype(np.float32) / 255.0

    def _motion(self, diff: np.ndarray, size: tuple[int, int], low: float, high: float) -> np.ndarray:
        """Blurred |difference| (H', W') -> motion in [0, 1] at ``size`` (H, W)."""
        import cv2

        if self.blur > 1:
            diff = cv2.blur(diff, (self.blur, self.blur))
        if diff.shape != size:
            diff = cv2.resize(diff, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return np.clip((diff - low) / (high - low), 0.0, 1.0)

    def update(self, probs: np.ndarray, frame: Optional[np.ndarray] = None) -> np.ndarray:
        """Smoothed probabilities (C, H, W) float32 for this frame.

        ``probs``: the frame's raw class probabilities (C, H, W); ``frame``: the RGB (or grey)
        image they came from, any size (motion is resized to the probabilities' size).
        """
        q = np.asarray(probs, dtype=np.float32)
        if q.ndim != 3:
            raise ValueError(f"probs must be (C, H, W), got shape {q.shape}")
        grey = self._grey(frame) if frame is not None else None
        prev, prev_grey = self.state, self.prev_grey
        self.prev_grey = grey
        if prev is None or prev.shape != q.shape or (grey is not None and prev_grey is not None
                                                     and grey.shape != prev_grey.shape):
            return self._restart(q)
        if grey is not None and prev_grey is not None:
            diff = np.abs(grey - prev_grey)
            cut, (low, high) = self.cut_threshold, (self.motion_low, self.motion_high)
        else:  # no frames: the probability change is the motion signal
            diff = np.abs(q - prev).max(axis=0)
            cut, (low, high) = self.prob_cut_threshold, self.prob_motion
        if float(diff.mean()) > cut:
            return self._restart(q)
        a = self.alpha + (1.0 - self.alpha) * self._motion(diff, q.shape[1:], low, high)
        self.state = (a[None] * q + (1.0 - a[None]) * prev).astype(np.float32)
        self.last_reset, self.last_weight = False, a
        return self.state.copy()

    def _restart(self, q: np.ndarray) -> np.ndarray:
        self.state = q.copy()
        self.last_reset, self.last_weight = True, np.ones(q.shape[1:], dtype=np.float32)
        return q.copy()


__all__ = ["TemporalSmoother"]
