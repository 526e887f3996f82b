import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtseg.errors import DataError, RtsegError
from rtseg.losses import (SegmentationLoss, boundary_band, boundary_loss, cross_entropy, enet_class_weights,
                          label_histogram, lovasz_grad, lovasz_softmax, match_target_size, ohem_cross_entropy)


def square_mask(size=100, lo=30, side=40):
    m = torch.zeros(1, size, size, dtype=torch.long)
    m[0, lo:lo + side, lo:lo + side] = 1
    return m


# --- boundary band ------------------------------------------------------------------------------

def test_boundary_band_of_square_is_ring_between_dilation_and_erosion():
    band = boundary_band(square_mask(), kernel=15)
    assert band.dtype == torch.bool and band.shape == (1, 100, 100)
    # dilation by 7 px: rows/cols 23..76 (54 px); erosion by 7 px: 37..62 (26 px)
    assert int(band.sum()) == (40 + 14) ** 2 - (40 - 14) ** 2 == 2240
    expected = torch.zeros(100, 100, dtype=torch.bool)
    expected[23:77, 23:77] = True
    expected[37:63, 37:63] = False
    assert torch.equal(band[0], expected)


def test_boundary_band_matches_opencv_dilate_minus_erode():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    mask = (rng.random((40, 50)) > 0.7).astype(np.uint8)
    mask[:8] = 1  # a region touching the border: the border is not an edge
    k = np.ones((5, 5), np.uint8)
    ref = (cv2.dilate(mask * 255, k) - cv2.erode(mask * 255, k)) > 0
    band = boundary_band(torch.from_numpy(mask).long(), kernel=5)
    assert band.shape == (40, 50)
    assert np.array_equal(band.numpy(), ref)


@pytest.mark.parametrize("value", [0, 1])
def test_no_band_for_empty_or_full_mask(value):
    mask = torch.full((2, 30, 30), value, dtype=torch.long)
    assert not boundary_band(mask, kernel=15).any()
    logits = torch.randn(2, 2, 30, 30, requires_grad=True)
    loss = boundary_loss(logits, mask, kernel=15)
    assert loss.item() == 0.0
    loss.backward()  # still differentiable (zero gradient)
    assert torch.count_nonzero(logits.grad) == 0


def test_multiclass_band_is_where_neighbourhood_holds_two_classes():
    mask = torch.zeros(1, 20, 30, dtype=torch.long)
    mask[0, :, 10:20] = 1
    mask[0, :, 20:] = 2
    band = boundary_band(mask, kernel=3)[0]
    cols = band.any(0).nonzero().flatten().tolist()
    assert cols == [9, 10, 19, 20]
    assert band[:, cols].all()


def test_ignore_pixels_are_never_in_band_nor_loss():
    mask = square_mask(size=40, lo=10, side=20)
    mask[0, :, :15] = 255  # ignore the left part, crossing the square's edge
    band = boundary_band(mask, kernel=5)
    assert not band[mask == 255].any()
    assert band.any()
    # ignore region next to background is not an edge: only label changes are
    assert not band[0, :5, 15:].any()
    logits = torch.randn(1, 2, 40, 40, requires_grad=True)
    loss = boundary_loss(logits, mask, kernel=5)
    loss.backward()
    assert torch.count_nonzero(logits.grad[:, :, mask[0] == 255]) == 0
    assert torch.count_nonzero(logits.grad[:, :, ~band[0]]) == 0
    # the value is the mean CE over the band pixels
    ce = F.cross_entropy(logits.detach(), mask.clamp(max=1), reduction="none")
    assert loss.item() == pytest.approx(ce[band].mean().item(), rel=1e-5)


def test_boundary_kernel_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        boundary_band(square_mask(), kernel=4)


# --- cross-entropy ----------------------------------------------------------------------------

def test_weighted_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 9, 11, generator=g)
    target = torch.randint(0, 4, (2, 9, 11), generator=g)
    target[0, :3] = 255
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert cross_entropy(logits, target, class_weights=w).item() == pytest.approx(ref.item(), rel=1e-6)
    assert cross_entropy(logits, target, class_weights=w.tolist()).item() == pytest.approx(ref.item(), rel=1e-6)
    ref_plain = F.cross_entropy(logits, target, ignore_index=255)
    assert cross_entropy(logits, target).item() == pytest.approx(ref_plain.item(), rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = cross_entropy(logits, target)
    assert loss.item() == 0.0
    loss.backward()


def test_cross_entropy_wrong_weight_count():
    with pytest.raises(ValueError, match="3 classes"):
        cross_entropy(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), class_weights=[1.0, 2.0])


def test_enet_class_weights_and_histogram():
    masks = [np.array([[0, 0, 1], [1, 255, 2]]), torch.tensor([[0, 0], [0, 1]])]
    hist = label_histogram(masks, num_classes=3)
    assert hist.tolist() == [5, 3, 1]
    w = enet_class_weights(hist, c=1.02)
    p = np.array([5, 3, 1]) / 9
    assert np.allclose(w.numpy(), 1 / np.log(1.02 + p), rtol=1e-6)
    assert w.dtype == torch.float32
    assert w[2] > w[1] > w[0]  # rarer class, larger weight
    # CGNet's constant
    assert np.allclose(enet_class_weights(hist, c=1.10).numpy(), 1 / np.log(1.10 + p), rtol=1e-6)
    with pytest.raises(ValueError):
        enet_class_weights([0, 0, 0])


def test_label_histogram_of_datasets():
    class Loadable:  # like SegmentationDataset: load() gives the untransformed (image, mask)
        def __len__(self):
            return 2

        def load(self, i):
            return np.zeros((2, 2, 3), np.uint8), np.full((2, 2), i, np.uint8)

        def __getitem__(self, i):
            raise AssertionError("transformed items must not be used")

    assert label_histogram(Loadable(), 2).tolist() == [4, 4]
    pairs = [(None, np.array([[1, 1]])), (None, np.array([[0, 255]]))]
    assert label_histogram(pairs, 2).tolist() == [1, 2]
    with pytest.raises(DataError, match=r"mask 1 has labels \[7\]"):
        label_histogram([np.zeros((2, 2)), np.array([[7, 0]])], 2)


# --- Lovasz-Softmax -----------------------------------------------------------------------------

def jaccard_loss_of_set(mispredicted: np.ndarray, fg: np.ndarray) -> float:
    """Delta_J(M) = |M| / |F u M| (Berman et al. Eq. 5), 0 for the empty set."""
    if not mispredicted.any():
        return 0.0
    return mispredicted.sum() / (fg | mispredicted).sum()


def lovasz_extension_bruteforce(errors: np.ndarray, fg: np.ndarray) -> float:
    """Lovasz extension as the integral over thresholds t of Delta_J({i : m_i >= t}) dt."""
    levels = sorted(set(errors.tolist()) | {0.0}, reverse=True)
    total = 0.0
    for hi, lo in zip(levels[:-1], levels[1:]):
        total += (hi - lo) * jaccard_loss_of_set(errors >= hi, fg)
    return total


def lovasz_bruteforce(probas: np.ndarray, target: np.ndarray, classes="present", ignore=255) -> float:
    c = probas.shape[1]
    p = probas.transpose(0, 2, 3, 1).reshape(-1, c)
    t = target.reshape(-1)
    keep = t != ignore
    p, t = p[keep], t[keep]
    chosen = [k for k in range(c) if (t == k).any()] if classes == "present" else range(c)
    return float(np.mean([lovasz_extension_bruteforce(np.abs((t == k) - p[:, k]), t == k) for k in chosen]))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_equals_bruteforce_on_tiny_inputs(seed, classes):
    g = torch.Generator().manual_seed(seed)
    probas = torch.softmax(torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64) * 2, dim=1)
    target = torch.randint(0, 2, (2, 3, 4), generator=g)  # class 2 absent: "present" vs "all" differ
    target[1, 0, :2] = 255
    got = lovasz_softmax(probas, target, classes=classes).item()
    want = lovasz_bruteforce(probas.numpy(), target.numpy(), classes)
    assert got == pytest.approx(want, abs=1e-12)


def test_lovasz_of_hard_predictions_is_one_minus_iou():
    # on 0/1 errors the Lovasz extension equals the set function: 1 - IoU per class
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 2]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 2]]])
    probas = F.one_hot(pred, 3).permute(0, 3, 1, 2).double()
    ious = []
    for k in range(3):
        inter = ((pred == k) & (target == k)).sum().item()
        union = ((pred == k) | (target == k)).sum().item()
        ious.append(inter / union)
    assert lovasz_softmax(probas, target).item() == pytest.approx(1 - np.mean(ious))


def test_lovasz_zero_for_perfect_confident_prediction():
    target = torch.randint(0, 3, (2, 6, 6), generator=torch.Generator().manual_seed(1))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50.0
    assert lovasz_softmax(torch.softmax(logits, 1), target).item() == pytest.approx(0.0, abs=1e-6)


def test_lovasz_grad_is_jaccard_increments():
    fg = torch.tensor([1.0, 0.0, 1.0, 0.0])
    g = lovasz_grad(fg)
    f = fg.numpy().astype(bool)
    jac = [jaccard_loss_of_set(np.arange(4) < k, f) for k in range(5)]
    assert np.allclose(g.numpy(), np.diff(jac))


def test_lovasz_all_ignored_is_zero_and_per_image():
    probas = torch.softmax(torch.randn(2, 2, 3, 3), 1).requires_grad_()
    target = torch.full((2, 3, 3), 255)
    assert lovasz_softmax(probas, target).item() == 0.0
    target[1] = 1
    per_image = lovasz_softmax(probas, target, per_image=True)
    assert per_image.item() == pytest.approx(lovasz_softmax(probas[1:], target[1:]).item())
    per_image.backward()
    assert torch.count_nonzero(probas.grad[0]) == 0


# --- OHEM ------------------------------------------------------------------------------------------

def ohem_case():
    # 100 pixels, 2 classes, target 0; the true-class probability of pixel i is set exactly
    p_true = torch.linspace(0.05, 0.99, 100)
    logits = torch.stack([torch.log(p_true), torch.log(1 - p_true)]).reshape(1, 2, 10, 10)
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    return logits, target, -torch.log(p_true)


def test_ohem_keeps_only_hard_pixels_above_threshold():
    logits, target, per_pixel = ohem_case()
    hard = per_pixel[per_pixel > -math.log(0.7)]
    assert 10 < hard.numel() < 100
    got = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=5)
    assert got.item() == pytest.approx(hard.mean().item(), rel=1e-5)


def test_ohem_keeps_at_least_min_kept_hardest():
    logits, target, per_pixel = ohem_case()
    n_hard = int((per_pixel > -math.log(0.7)).sum())
    k = n_hard + 20
    got = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=k)
    assert got.item() == pytest.approx(per_pixel.topk(k).values.mean().item(), rel=1e-5)
    # default min_kept: n_valid // 16 (CoinCheung/BiSeNet); no pixel is hard at thresh 0.01
    got = ohem_cross_entropy(logits, target, thresh=0.01)
    assert got.item() == pytest.approx(per_pixel.topk(100 // 16).values.mean().item(), rel=1e-5)


def test_ohem_ignores_ignore_pixels():
    logits, target, per_pixel = ohem_case()
    target = target.clone()
    target.view(-1)[:10] = 255  # the 10 hardest pixels become ignored
    rest = per_pixel[10:]
    got = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1000)  # capped at 90 valid pixels
    assert got.item() == pytest.approx(rest.mean().item(), rel=1e-5)
    assert ohem_cross_entropy(logits, torch.full_like(target, 255)).item() == 0.0


# --- SegmentationLoss -----------------------------------------------------------------------------

def test_segmentation_loss_sums_weighted_aux_terms():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    main = torch.randn(2, 3, 16, 16, generator=g)
    aux1 = torch.randn(2, 3, 8, 8, generator=g)
    aux2 = torch.randn(2, 3, 4, 4, generator=g)
    fn = SegmentationLoss("ce", aux_weights=(0.4, 0.25))
    out = fn((main, aux1, aux2), target)
    assert list(out) == ["loss", "main", "aux0", "aux1"]
    up = lambda a: F.interpolate(a, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    assert out["main"].item() == pytest.approx(F.cross_entropy(main, target).item(), rel=1e-6)
    assert out["aux0"].item() == pytest.approx(F.cross_entropy(up(aux1), target).item(), rel=1e-6)
    assert out["aux1"].item() == pytest.approx(F.cross_entropy(up(aux2), target).item(), rel=1e-6)
    want = out["main"] + 0.4 * out["aux0"] + 0.25 * out["aux1"]
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    # no weights given: every aux head weighs 1 (BiSeNet); a single weight applies to all heads
    out1 = SegmentationLoss("ce")((main, aux1, aux2), target)
    assert out1["loss"].item() == pytest.approx((out["main"] + out["aux0"] + out["aux1"]).item(), rel=1e-6)
    out2 = SegmentationLoss("ce", aux_weights=(0.5,))((main, aux1, aux2), target)
    assert out2["loss"].item() == pytest.approx((out["main"] + 0.5 * (out["aux0"] + out["aux1"])).item(), rel=1e-6)
    with pytest.raises(RtsegError, match="3 given but the model returned 2"):
        SegmentationLoss("ce", aux_weights=(1, 1, 1))((main, aux1, aux2), target)


def test_segmentation_loss_boundary_term_and_kinds():
    target = square_mask(size=32, lo=8, side=16)
    logits = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = SegmentationLoss("ce", boundary_weight=0.5, boundary_kernel=5)(logits, target)
    assert set(out) == {"loss", "main", "boundary"}
    assert out["boundary"].item() == pytest.approx(boundary_loss(logits, target, kernel=5).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((out["main"] + 0.5 * out["boundary"]).item(), rel=1e-6)
    out["loss"].backward()
    assert logits.grad is not None

    lov = SegmentationLoss("lovasz", boundary_weight=1.0, boundary_kernel=5)(logits, target)
    probas = torch.softmax(logits, 1)
    assert lov["main"].item() == pytest.approx(lovasz_softmax(probas, target).item(), rel=1e-5)
    band = boundary_band(target, 5)
    edge = torch.where(band, target, torch.full_like(target, 255))
    assert lov["boundary"].item() == pytest.approx(lovasz_softmax(probas, edge).item(), rel=1e-5)

    ohem = SegmentationLoss("ohem", ohem_thresh=0.7, ohem_min_kept=10)(logits, target)
    assert ohem["main"].item() == pytest.approx(
        ohem_cross_entropy(logits, target, 0.7, 10).item(), rel=1e-6)
    with pytest.raises(RtsegError, match="unknown"):
        SegmentationLoss("dice")


def test_segmentation_loss_class_weights_and_size_rules():
    target = torch.randint(0, 2, (1, 20, 20), generator=torch.Generator().manual_seed(4))
    logits = torch.randn(1, 2, 32, 32)  # padded output (SINet's 32k grid): cropped, not resized
    w = torch.tensor([1.0, 4.0])
    out = SegmentationLoss("ce", class_weights=w)(logits, target)
    ref = F.cross_entropy(logits[..., :20, :20], target, weight=w)
    assert out["main"].item() == pytest.approx(ref.item(), rel=1e-6)
    small = torch.randn(1, 2, 5, 5)
    assert match_target_size(small, (20, 20)).shape == (1, 2, 20, 20)
    assert torch.allclose(match_target_size(small, (20, 20)),
                          F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False))


def test_brute_force_helpers_sanity():
    # the brute-force integral itself: for 0/1 errors it is the set function
    fg = np.array([True, False, True])
    for bits in itertools.product([0.0, 1.0], repeat=3):
        m = np.array(bits)
        assert lovasz_extension_bruteforce(m, fg) == pytest.approx(jaccard_loss_of_set(m > 0, fg))
