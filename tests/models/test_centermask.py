import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rtseg
from rtseg.checkpoint import model_checkpoint, model_from_checkpoint
from rtseg.errors import DataError
from rtseg.models.centermask import (CenterMask, FCOSHead, MaskIoUHead, SAGMaskHead, SpatialAttention,
                                     assign_levels_by_ratio, centerness_targets, convert_official_centermask,
                                     crop_and_resize_masks, fcos_iou_loss, fcos_locations, fcos_predict, fcos_targets,
                                     mask_fraction_in_boxes, multilevel_roi_align, paste_masks)
from rtseg.parity import main as parity_main
from tests.conftest import parity_fixture

#: a small CenterMask-Lite for fast tests (the real presets are checked for their sizes only)
TINY = dict(num_classes=3, backbone="V-19-slim-dw-eSE", fpn_channels=64, num_cls_convs=1, num_box_convs=1,
            mask_num_convs=1, mask_conv_dim=64, maskiou_num_convs=1, maskiou_conv_dim=32)


def tiny(**kw) -> CenterMask:
    torch.manual_seed(0)
    return rtseg.create_model("centermask_lite", **{**TINY, **kw})


# --- parity and sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["centermask_sam.npz", "centermask_sag_mask_head.npz", "centermask_fcos_head.npz"])
def test_parity(fixture, capsys):
    assert parity_main([str(parity_fixture(fixture))]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    if "sag" in fixture:
        assert "hook.spatialAtt" in out  # the SAM output inside the head is compared too


@pytest.mark.parametrize("fixture,module", [
    ("centermask_sam.npz", lambda: SpatialAttention(3)),
    ("centermask_sag_mask_head.npz", lambda: SAGMaskHead(256, 256, 4, 80)),
    ("centermask_fcos_head.npz", lambda: FCOSHead(256, 80, 4, 4, 5)),
])
def test_parameter_counts_match_fixture(fixture, module):
    meta = json.loads(str(np.load(parity_fixture(fixture))["meta"]))
    assert sum(p.numel() for p in module().parameters()) == meta["params"]


def test_presets():
    lite = rtseg.create_model("centermask_lite")
    assert sum(p.numel() for p in lite.parameters()) == 11_176_924
    assert lite.fpn.layer_blocks[0][0].out_channels == 128
    assert len(lite.head.cls_tower) == 6 and len(lite.head.bbox_tower) == 6  # 2 x (conv, GN, ReLU)
    assert len(lite.mask_head.convs) == 2 and lite.mask_head.convs[0].out_channels == 128
    assert len(lite.maskiou_head.convs) == 2 and lite.maskiou_head.fc1.in_features == 128 * 7 * 7
    assert (lite.post_nms_topk_test, lite.min_size_test, lite.max_size_test) == (50, 600, 1000)
    assert lite.rtseg_kwargs == {} and lite.pretrained_cfg.channel_order == "BGR"
    assert lite.pretrained_cfg.std == (1.0, 1.0, 1.0) and len(lite.pretrained_cfg.class_names) == 80
    full = rtseg.create_model("centermask")
    assert sum(p.numel() for p in full.parameters()) == 52_608_972
    assert len(full.head.cls_tower) == 12 and len(full.mask_head.convs) == 4
    assert (full.post_nms_topk_test, full.min_size_test, full.max_size_test) == (50, 800, 1333)
    other = rtseg.create_model("centermask", backbone="V-19-eSE", num_classes=5)
    assert other.backbone.stage5.blocks[0].aggregation.conv.out_channels == 1024
    assert other.head.cls_logits.out_channels == 5 and other.pretrained_cfg.class_names[0] == "class_0"
    assert rtseg.models.get_spec("centermask").task == "instance"


# --- FCOS -----------------------------------------------------------------------------------------

def test_fcos_locations_are_stride_centres():
    loc = fcos_locations([(2, 3)], [8])[0]
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def _targets_128x160(boxes, labels, **kw):
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]  # a 128x160 input
    locs = fcos_locations(sizes, [8, 16, 32, 64, 128])
    lab, reg = fcos_targets(locs, [torch.tensor(boxes, dtype=torch.float32)], [torch.tensor(labels)], 3, **kw)
    return torch.cat(locs), lab[0], reg[0], [len(x) for x in locs]


def test_fcos_targets_centre_sampling_on_a_hand_made_box():
    # box 40x32 centred at (40, 36). P3 (stride 8): centre region = centre +- 1.5*8 = x (28, 52), y (24, 48)
    # -> points x in {36, 44}, y in {28, 36, 44}. Its max(l,t,r,b) < 64, so only P3 may take it.
    locs, lab, reg, counts = _targets_128x160([[20, 20, 60, 52]], [2])
    pos = torch.nonzero(lab != 3).squeeze(1)
    assert (lab[pos] == 2).all()
    assert sorted(map(tuple, locs[pos].tolist())) == [(36, 28), (36, 36), (36, 44), (44, 28), (44, 36), (44, 44)]
    assert pos.max() < counts[0]  # all on P3
    i = int(pos[(locs[pos] == torch.tensor([36.0, 28.0])).all(1)])
    assert reg[i].tolist() == [16 / 8, 8 / 8, 24 / 8, 24 / 8]  # (l, t, r, b) / stride


def test_fcos_targets_without_centre_sampling_and_size_ranges():
    _, lab, _, counts = _targets_128x160([[20, 20, 60, 52]], [0], center_sample=False)
    assert int((lab != 3).sum()) == 4 * 3  # every P3 point strictly inside the box
    # a 150x128 box: max(l,t,r,b) >= 75 near its centre, beyond P3's 64 -> the P4 points of its
    # centre region x (51, 99), y (40, 88): x in {56, 72, 88}, y in {56, 72}
    locs, lab, reg, counts = _targets_128x160([[0, 0, 150, 128]], [1])
    pos = torch.nonzero(lab != 3).squeeze(1)
    assert (pos >= counts[0]).all() and (pos < counts[0] + counts[1]).all()
    assert sorted(map(tuple, locs[pos].tolist())) == [(x, y) for x in (56, 72, 88) for y in (56, 72)]


def test_fcos_targets_smallest_box_wins_and_empty_image():
    locs, lab, _, _ = _targets_128x160([[0, 0, 100, 100], [30, 30, 60, 60]], [0, 1], center_sample=False)
    inside_small = (locs[:, 0] > 30) & (locs[:, 0] < 60) & (locs[:, 1] > 30) & (locs[:, 1] < 60)
    p3 = torch.arange(len(locs)) < 320
    assert (lab[inside_small & p3] == 1).all()
    lab, reg = fcos_targets(fcos_locations([(4, 5)], [8]), [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 3)
    assert (lab == 3).all() and (reg == 0).all()


def test_fcos_iou_loss_and_centerness():
    t = torch.tensor([[2.0, 1.0, 2.0, 1.0]])
    assert float(fcos_iou_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(fcos_iou_loss(torch.zeros(1, 4), t)) == pytest.approx(1 - 1 / 9)  # (0 + 1) / (8 + 1), C = U
    assert float(centerness_targets(t)) == pytest.approx(1.0)
    assert float(centerness_targets(torch.tensor([[1.0, 1.0, 3.0, 1.0]]))) == pytest.approx(np.sqrt(1 / 3))


def test_fcos_predict_scores_threshold_and_nms():
    logits = torch.full((1, 2, 2, 2), -10.0)
    logits[0, 1, 0, 0] = logits[0, 1, 0, 1] = 10.0  # two confident points of class 1
    logits[0, 0, 1, 1] = -2.9  # prob 0.052 > 0.05 before centerness
    reg = torch.full((1, 4, 2, 2), 1.0)  # 8 px each side at stride 8
    ctr = torch.zeros(1, 1, 2, 2)  # centerness 0.5
    locs = fcos_locations([(2, 2)], [8])
    det = fcos_predict(locs, [logits], [reg], [ctr], [8], nms_thresh=0.6, post_nms_topk=100)[0]
    # boxes [-4,-4,12,12] and [4,-4,20,12] overlap with IoU 1/3 < 0.6: both kept
    assert det["labels"].tolist() == [1, 1, 0]
    assert det["boxes"][0].tolist() == [-4.0, -4.0, 12.0, 12.0]
    expected = torch.sqrt(torch.sigmoid(torch.tensor(-2.9)) * 0.5)
    assert float(det["scores"][2]) == pytest.approx(float(expected), rel=1e-5)  # sqrt(prob x ctr)
    strict = fcos_predict(locs, [logits], [reg], [ctr], [8], nms_thresh=0.3, post_nms_topk=1)[0]
    assert len(strict["boxes"]) == 1


# --- RoI assignment and pooling ------------------------------------------------------------------

def test_roi_level_assignment_eq2():
    area = torch.full((6,), 800.0 * 800.0)
    boxes = torch.tensor([
        [0, 0, 800, 800],      # A_RoI = A_input: ceil(5 - 0) = 5
        [0, 0, 800, 400],      # 1/2: ceil(5 - 1) = 4
        [0, 0, 400, 400],      # 1/4: 3
        [0, 0, 800, 800 / 3],  # 1/3: ceil(5 - 1.58) = 4
        [0, 0, 10, 10],        # tiny: clamped to 3
        [0, 0, 1600, 1600],    # larger than the image: 7 -> clamped to 5
    ], dtype=torch.float32)
    assert (assign_levels_by_ratio(boxes, area, 3, 5) + 3).tolist() == [5, 4, 3, 4, 3, 5]


def test_multilevel_roi_align_pools_from_the_assigned_level():
    feats = [torch.full((1, 2, 64 // s, 64 // s), float(k)) for k, s in zip((3, 4, 5), (8, 16, 32))]
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 64.0, 32.0]])]
    out = multilevel_roi_align(feats, boxes, [(64, 64)], (8, 16, 32), output_size=14)
    assert out.shape == (3, 2, 14, 14)
    assert out[:, 0, 7, 7].tolist() == [5.0, 3.0, 4.0]
    empty = multilevel_roi_align(feats, [torch.zeros(0, 4)], [(64, 64)], (8, 16, 32))
    assert empty.shape == (0, 2, 14, 14)


# --- mask heads and mask helpers -----------------------------------------------------------------

def test_sag_mask_head_and_maskiou_head_shapes():
    head = SAGMaskHead(32, 16, 2, 5)
    logits = head(torch.randn(3, 32, 14, 14))
    assert logits.shape == (3, 5, 28, 28)
    iou = MaskIoUHead(32, 16, 2, 5)(torch.randn(3, 32, 14, 14), logits[:, :1].sigmoid())
    assert iou.shape == (3, 5)


def _paste_reference(masks, boxes, h, w, threshold=0.5):
    """detectron2's full-image paste: grid_sample at every pixel centre."""
    out = []
    for m, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
        gx = (torch.arange(w) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(h) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([gx[None].expand(h, w), gy[:, None].expand(h, w)], -1)[None]
        out.append(F.grid_sample(m[None, None], grid, align_corners=False)[0, 0] >= threshold)
    return torch.stack(out).to(torch.uint8)


def test_paste_masks():
    full = torch.ones(1, 28, 28)
    pasted = paste_masks(full, torch.tensor([[10.0, 20.0, 50.0, 60.0]]), (80, 70))
    assert pasted.dtype == torch.uint8 and pasted.shape == (1, 80, 70)
    expected = torch.zeros(80, 70, dtype=torch.uint8)
    expected[20:60, 10:50] = 1
    assert torch.equal(pasted[0], expected)
    left = torch.zeros(1, 28, 28)
    left[..., :14] = 1.0
    assert torch.equal(paste_masks(left, torch.tensor([[10.0, 20.0, 50.0, 60.0]]), (80, 70))[0, 20:60, 10:30],
                       torch.ones(40, 20, dtype=torch.uint8))
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 28, 28, generator=g)
    xy = torch.rand(6, 2, generator=g) * 90 - 10
    wh = torch.rand(6, 2, generator=g) * 60 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)  # fractional, partly outside the image
    for thr in (0.5, 0.3):
        assert torch.equal(paste_masks(masks, boxes, (71, 83), thr), _paste_reference(masks, boxes, 71, 83, thr))
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)


def test_gt_mask_crop_and_fraction_inside_box():
    masks = torch.zeros(2, 40, 50, dtype=torch.uint8)
    masks[0, 10:30, 10:40] = 1
    masks[1, 0:5, 0:5] = 1
    boxes = torch.tensor([[10.0, 10.0, 40.0, 30.0], [10.0, 10.0, 25.0, 30.0], [0.0, 0.0, 50.0, 40.0]])
    idx = torch.tensor([0, 0, 1])
    crops = crop_and_resize_masks(masks, boxes, idx, 28)
    assert crops.shape == (3, 28, 28) and crops[0].all()
    assert crops[1].all()  # the left half of mask 0 fills the half box
    assert mask_fraction_in_boxes(masks, boxes, idx).tolist() == pytest.approx([1.0, 0.5, 1.0])


# --- the full model ------------------------------------------------------------------------------

def test_forward_returns_flat_head_outputs_at_odd_size():
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 200, 249))  # padded to 224 x 256
    assert isinstance(out, tuple) and len(out) == 15
    assert [tuple(t.shape[-2:]) for t in out[:5]] == [(28, 32), (14, 16), (7, 8), (4, 4), (2, 2)]
    assert [t.shape[1] for t in (out[0], out[5], out[10])] == [3, 4, 1]
    assert all((t >= 0).all() for t in out[5:10])  # ReLU box regression


def test_detect_empty_image_returns_empty_tensors():
    model = tiny().eval()
    res = model.detect(torch.zeros(2, 3, 128, 160), image_sizes=[(128, 160), (100, 150)])
    assert len(res) == 2
    assert res[1]["boxes"].shape == (0, 4) and res[1]["scores"].shape == (0,)
    assert res[1]["labels"].dtype == torch.int64 and res[1]["masks"].shape == (0, 100, 150)
    assert res[0]["masks"].dtype == torch.uint8 and res[0]["mask_scores"].shape == (0,)


def test_detect_odd_size_with_detections_and_rescaling():
    model = tiny().eval()
    torch.nn.init.constant_(model.head.cls_logits.bias, 4.0)  # force confident detections
    x = torch.randn(1, 3, 200, 249)
    res = model.detect(x)[0]
    n = len(res["boxes"])
    assert 0 < n <= 50
    assert res["masks"].shape == (n, 200, 249) and res["masks"].dtype == torch.uint8
    b = res["boxes"]
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 249).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 200).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (res["scores"][:-1] >= res["scores"][1:]).all()
    assert (res["mask_scores"] != res["scores"]).any()  # re-scored by the MaskIoU head
    big = model.detect(x, output_sizes=[(400, 498)])[0]
    assert big["masks"].shape == (n, 400, 498)
    torch.testing.assert_close(big["boxes"], (res["boxes"] * 2).clamp(max=498), atol=1e-3, rtol=0)


def _synthetic(h=128, w=160):
    torch.manual_seed(0)
    image = torch.randn(1, 3, h, w) * 0.1
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 20:90, 20:100] = 1
    masks[1, 60:120, 110:155] = 1
    image[0, 0][masks[0].bool()] += 2.0
    image[0, 1][masks[1].bool()] += 2.0
    target = {"boxes": torch.tensor([[20.0, 20.0, 100.0, 90.0], [110.0, 60.0, 155.0, 120.0]]),
              "labels": torch.tensor([1, 2]), "masks": masks}
    return image, [target]


def test_losses_finite_and_decreasing():
    model = tiny().train()
    image, targets = _synthetic()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    history = []
    for _ in range(5):
        losses = model.losses(image, targets)
        assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_maskiou", "loss"}
        assert all(torch.isfinite(v) for v in losses.values())
        torch.testing.assert_close(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["loss_fcos_cls"] < history[0]["loss_fcos_cls"]
    assert history[-1]["loss_mask"] < history[0]["loss_mask"]
    grads = [p.grad for p in model.mask_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_losses_without_objects_and_bad_targets():
    model = tiny().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    losses = model.losses(torch.randn(1, 3, 64, 64), [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_fcos_loc"].detach()) == 0.0
    losses["loss"].backward()
    with pytest.raises(DataError, match="masks"):
        model.losses(torch.randn(1, 3, 64, 64), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(DataError, match="labels must be in"):
        bad = dict(empty, boxes=torch.tensor([[0.0, 0, 8, 8]]), labels=torch.tensor([3]),
                   masks=torch.ones(1, 64, 64, dtype=torch.uint8))
        model.losses(torch.randn(1, 3, 64, 64), [bad])


def test_checkpoint_roundtrip():
    model = tiny().eval()
    buf = io.BytesIO()
    torch.save(model_checkpoint(model), buf)
    buf.seek(0)
    restored = model_from_checkpoint(torch.load(buf, weights_only=True))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model(x), restored(x)):
            torch.testing.assert_close(a, b)


def _official_centermask_state_dict(model: CenterMask) -> dict:
    """A detectron2/centermask2-keyed state_dict for ``model`` built from the parity fixtures'
    official key names (VoVNet, FCOS head, SAG-Mask head) plus detectron2's FPN/MaskIoU names."""
    sd = {}
    for fixture, prefix in [("vovnet19_slim_dw_ese.npz", "backbone.bottom_up."),
                            ("centermask_fcos_head.npz", "proposal_generator.fcos_head."),
                            ("centermask_sag_mask_head.npz", "roi_heads.mask_head.")]:
        z = np.load(parity_fixture(fixture))
        sd.update({prefix + k[len("state_dict/"):]: torch.from_numpy(np.array(z[k])).float()
                   for k in z.files if k.startswith("state_dict/")})
    own = model.state_dict()
    for i, level in enumerate((3, 4, 5)):
        for kind, name in (("inner_blocks", "fpn_lateral"), ("layer_blocks", "fpn_output")):
            for p in ("weight", "bias"):
                sd[f"backbone.{name}{level}.{p}"] = torch.randn_like(own[f"fpn.{kind}.{i}.0.{p}"])
    for p in ("weight", "bias"):
        for level in ("p6", "p7"):
            sd[f"backbone.top_block.{level}.{p}"] = torch.randn_like(own[f"fpn.extra_blocks.{level}.{p}"])
        for i in range(len(model.maskiou_head.convs)):
            sd[f"roi_heads.maskiou_head.maskiou_fcn{i + 1}.{p}"] = torch.randn_like(own[f"maskiou_head.convs.{i}.{p}"])
        for src, dst in (("maskiou_fc1", "fc1"), ("maskiou_fc2", "fc2"), ("maskiou", "predictor")):
            sd[f"roi_heads.maskiou_head.{src}.{p}"] = torch.randn_like(own[f"maskiou_head.{dst}.{p}"])
    sd["pixel_mean"] = torch.zeros(3, 1, 1)
    sd["pixel_std"] = torch.ones(3, 1, 1)
    return sd


def test_load_official_converts_detectron2_keys():
    kwargs = dict(backbone="V-19-slim-dw-eSE", maskiou_num_convs=1, maskiou_conv_dim=16)
    sd = _official_centermask_state_dict(CenterMask(**kwargs))
    converted = convert_official_centermask(sd)
    assert "backbone.stem.1.dw.weight" in converted and "fpn.inner_blocks.2.0.weight" in converted
    assert "head.scales.4.scale" in converted and "mask_head.sam.conv.weight" in converted
    assert "pixel_mean" not in converted
    model = rtseg.load_official("centermask", {"model": sd, "iteration": 1}, **kwargs)
    assert not model.training and model.pretrained_cfg.licence.startswith("CC BY-NC")
    torch.testing.assert_close(model.backbone.stem[1].dw.weight, sd["backbone.bottom_up.stem.stem_2/dw_conv3x3.weight"])
    torch.testing.assert_close(model.fpn.inner_blocks[0][0].weight, sd["backbone.fpn_lateral3.weight"])
    torch.testing.assert_close(model.head.scales[2].scale, sd["proposal_generator.fcos_head.scales.2.scale"])
    torch.testing.assert_close(model.mask_head.convs[3].bias, sd["roi_heads.mask_head.mask_fcn4.bias"])
    torch.testing.assert_close(model.maskiou_head.predictor.weight, sd["roi_heads.maskiou_head.maskiou.weight"])
    sd.pop("roi_heads.mask_head.deconv.weight")
    with pytest.raises(rtseg.CheckpointError, match="missing"):
        rtseg.load_official("centermask", sd, **kwargs)
