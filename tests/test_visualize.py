import numpy as np
import pytest
import torch

from rtseg.config import default_palette
from rtseg.visualize import colorize, cutout_rgba, draw_instances, instance_colours, overlay_mask


@pytest.fixture
def image(rng):
    return rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


@pytest.fixture
def mask():
    m = np.zeros((40, 60), np.uint8)
    m[5:20, 10:30] = 1
    m[25:35, 40:55] = 2
    m[0, 0] = 255
    return m


def test_colorize(mask):
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    out = colorize(mask, palette)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert out[10, 15].tolist() == [255, 0, 0] and out[30, 45].tolist() == [0, 255, 0]
    assert out[39, 0].tolist() == [0, 0, 0]
    assert out[0, 0].tolist() == default_palette(256)[255].tolist()  # beyond the palette: VOC colours
    assert colorize(mask)[10, 15].tolist() == default_palette(2)[1].tolist()
    with pytest.raises(ValueError):
        colorize(np.zeros((2, 2, 2), np.uint8))


def test_overlay_mask(image, mask):
    before = image.copy()
    palette = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0)], np.uint8)
    np.testing.assert_array_equal(overlay_mask(image, mask, palette, alpha=0.0), image)
    np.testing.assert_array_equal(overlay_mask(image, mask, palette, alpha=1.0), colorize(mask, palette))
    half = overlay_mask(image, mask, palette, alpha=0.5)
    expected = np.round(image[10, 15] * 0.5 + np.array([255, 0, 0]) * 0.5)
    np.testing.assert_allclose(half[10, 15], expected, atol=1)
    skipped = overlay_mask(image, mask, palette, alpha=0.5, skip=(0,))
    np.testing.assert_array_equal(skipped[mask == 0], image[mask == 0])
    np.testing.assert_array_equal(skipped[mask == 1], half[mask == 1])
    np.testing.assert_array_equal(image, before)  # input untouched
    with pytest.raises(ValueError):
        overlay_mask(image, mask[:10], palette)


def test_cutout_rgba(image, mask):
    out = cutout_rgba(image, mask, fg_class=1)
    assert out.shape == (40, 60, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :3], image)
    np.testing.assert_array_equal(out[..., 3], np.where(mask == 1, 255, 0))
    matte = np.linspace(0, 1, 60, dtype=np.float32)[None].repeat(40, 0)
    soft = cutout_rgba(image, matte)
    assert soft[0, 0, 3] == 0 and soft[0, -1, 3] == 255 and 120 < soft[0, 30, 3] < 135


def test_instance_colours_are_distinct():
    cols = instance_colours(30)
    assert cols.shape == (30, 3) and len({tuple(c) for c in cols.tolist()}) == 30


def test_draw_instances(rng):
    image = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    before = image.copy()
    masks = np.zeros((2, 120, 160), bool)
    masks[0, 30:60, 10:50] = True
    masks[1, 70:100, 80:140] = True
    boxes = np.array([[10, 30, 50, 60], [80, 70, 140, 100]], np.float32)
    out = draw_instances(image, boxes, np.array([0, 1]), np.array([0.9, 0.42]), masks, ("cat", "dog"), alpha=0.6)
    assert out.shape == image.shape and out.dtype == np.uint8 and out is not image
    np.testing.assert_array_equal(image, before)  # input untouched
    # far from every instance nothing changes
    np.testing.assert_array_equal(out[105:], image[105:])
    np.testing.assert_array_equal(out[:, :8], image[:, :8])
    # inside a mask (away from outline and tag) the colour moved towards the instance colour
    colours = instance_colours(2).astype(float)
    for i, (ys, xs) in enumerate(((slice(40, 55), slice(20, 45)), (slice(85, 95), slice(90, 130)))):
        ref = image[ys, xs].astype(float) * 0.4 + colours[i] * 0.6
        np.testing.assert_allclose(out[ys, xs].astype(float), ref, atol=1)
    # box edges are drawn in the instance colour
    assert out[99, 110].tolist() == colours[1].astype(np.uint8).tolist()
    assert out[45, 49].tolist() == colours[0].astype(np.uint8).tolist()
    # each instance's tag is drawn just above its box
    for x1, y1 in ((10, 30), (80, 70)):
        assert (out[y1 - 8:y1, x1:x1 + 20] != image[y1 - 8:y1, x1:x1 + 20]).mean() > 0.5


def test_draw_instances_accepts_tensors_and_partial_inputs(image):
    masks = torch.zeros(1, 40, 60, dtype=torch.uint8)
    masks[0, 5:15, 5:15] = 1
    out = draw_instances(image, masks=masks)
    assert (out[8:12, 8:12] != image[8:12, 8:12]).any()
    out = draw_instances(image, boxes=torch.tensor([[1.0, 1.0, 30.0, 30.0]]), labels=torch.tensor([7]),
                         class_names=("a",))  # unknown label -> "class 7"
    assert (out != image).any()
    empty = draw_instances(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, 40, 60)), ())
    np.testing.assert_array_equal(empty, image)
    with pytest.raises(ValueError):
        draw_instances(image, np.zeros((2, 4)), labels=np.zeros(3))
    with pytest.raises(ValueError):
        draw_instances(image, masks=np.zeros((1, 10, 10)))
