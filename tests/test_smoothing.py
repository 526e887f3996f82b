"""TemporalSmoother on a generated video: a disk moving over a textured background, a hard cut to
another scene, and a noisy per-frame probability map standing in for a network's predictions."""
import numpy as np
import pytest

from rtseg.smoothing import TemporalSmoother

H, W, CUT, N = 96, 128, 24, 40


def _texture(rng, level):
    low = rng.random((H // 8, W // 8)).astype(np.float32)
    return np.clip(level + 60 * (np.kron(low, np.ones((8, 8), np.float32)) - 0.5), 0, 255)


def make_video(seed=0, noise=2.5):
    """frames (N, H, W, 3) uint8, ground truth masks (N, H, W) bool, raw probs (N, 2, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    bg = [_texture(rng, 70), _texture(rng, 150)]
    frames, masks, probs = [], [], []
    for t in range(N):
        scene = int(t >= CUT)
        if scene == 0:
            cy, cx, r = 48, 24 + 3 * t, 16
        else:
            cy, cx, r = 30, 100 - 2 * (t - CUT), 12
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        grey = np.where(mask, 230.0 if scene == 0 else 20.0, bg[scene]) + rng.normal(0, 2, (H, W))
        frames.append(np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
        logit = np.where(mask, 4.0, -4.0) + rng.normal(0, noise, (H, W))
        p1 = 1.0 / (1.0 + np.exp(-logit))
        probs.append(np.stack([1 - p1, p1]).astype(np.float32))
        masks.append(mask)
    return np.stack(frames), np.stack(masks), np.stack(probs)


def flicker(labels, skip=(CUT,)):
    """Mean fraction of pixels whose class changes between consecutive frames (cut excluded)."""
    return float(np.mean([(labels[t] != labels[t - 1]).mean() for t in range(1, len(labels)) if t not in skip]))


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def video():
    return make_video()


def run(smoother, frames, probs, use_frames=True):
    return np.stack([smoother.update(p, f if use_frames else None).argmax(0) for f, p in zip(frames, probs)])


def test_reduces_flicker_without_losing_accuracy(video):
    frames, masks, probs = video
    raw = probs.argmax(1)
    smooth = run(TemporalSmoother(), frames, probs)
    true_flicker = flicker(masks.astype(int))
    assert flicker(raw) > 0.1  # the synthetic predictions really flicker
    assert flicker(smooth) < 0.25 * flicker(raw)
    assert flicker(smooth) < true_flicker + 0.01  # close to the real motion of the shape
    raw_iou = np.mean([iou(raw[t] == 1, masks[t]) for t in range(N)])
    smooth_iou = np.mean([iou(smooth[t] == 1, masks[t]) for t in range(N)])
    assert smooth_iou > raw_iou + 0.1


def test_moving_shape_does_not_lag(video):
    """Where the disk moved, the mask follows at once: the smoothed disk tracks the current frame,
    not an average of past positions (which would leave a trail behind it). A plain EMA with the
    same weight does leave one."""
    frames, masks, probs = video

    def worst(smoother):
        out = run(smoother, frames, probs)
        trails = [(out[t][masks[t - 2] & ~masks[t]] == 1).mean() for t in range(6, CUT)]
        ious = [iou(out[t] == 1, masks[t]) for t in range(6, CUT)]
        return max(trails), min(ious)  # trail: where the disk was two frames ago, not now

    trail, worst_iou = worst(TemporalSmoother())
    assert trail < 0.2 and worst_iou > 0.85
    plain_trail, plain_iou = worst(TemporalSmoother(motion_low=10, motion_high=11, cut_threshold=10))
    assert plain_trail > 0.4 and plain_iou < 0.8


def test_hard_cut_follows_the_new_frame_immediately(video):
    frames, masks, probs = video
    s = TemporalSmoother()
    out = [s.update(p, f) for f, p in zip(frames[:CUT + 1], probs[:CUT + 1])]
    assert s.last_reset  # the cut was detected ...
    np.testing.assert_array_equal(out[CUT], probs[CUT])  # ... and the output is the new frame's
    assert not np.any((out[CUT].argmax(0) == 1) & masks[CUT - 1] & ~masks[CUT] & (probs[CUT].argmax(0) == 0))


def test_without_frames_cut_detected_from_probabilities(video):
    _, masks, probs = video
    flipped = probs.copy()
    flipped[CUT:] = flipped[CUT:, ::-1]  # the whole map changes class at the cut
    s = TemporalSmoother()
    for t in range(CUT + 1):
        out = s.update(flipped[t])
    np.testing.assert_array_equal(out, flipped[CUT])
    labels = run(TemporalSmoother(), [None] * N, probs, use_frames=False)
    assert flicker(labels) < 0.5 * flicker(probs.argmax(1))


def test_size_change_resets_and_bad_input_is_refused():
    s = TemporalSmoother()
    s.update(np.full((2, 8, 8), 0.5, np.float32), np.zeros((8, 8, 3), np.uint8))
    out = s.update(np.full((2, 16, 16), 0.2, np.float32), np.zeros((16, 16, 3), np.uint8))
    assert s.last_reset and out.shape == (2, 16, 16) and np.allclose(out, 0.2)
    with pytest.raises(ValueError):
        s.update(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError):
        TemporalSmoother(alpha=0)
