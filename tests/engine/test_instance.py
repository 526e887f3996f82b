"""CenterMask on the shared engine: COCO data specs, seeded augmentation, the trainer (few steps,
exact resume, learning), COCO box/mask AP, edge cases (empty images, tiny and image-sized
boxes, odd sizes, degenerate polygons), predict_instances, DDP routing, ONNX export."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import rtseg
from rtseg.config import TrainConfig
from rtseg.data.coco import mask_to_box
from rtseg.data.synthetic import make_synthetic_coco
from rtseg.engine.instance import (CocoSet, InstanceAugment, InstanceTask, coco_ap, collate, evaluate_instances,
                                   open_coco, predictions_for_image, resolve_coco)
from rtseg.engine.trainer import train
from rtseg.inference import predict_instances

#: A small CenterMask-Lite for CPU tests: same graph, narrower FPN/heads, fewer RoIs.
TINY = {"fpn_channels": 64, "mask_conv_dim": 32, "maskiou_conv_dim": 32, "backbone_norm": "BN",
        "min_size_test": 64, "max_size_test": 128, "post_nms_topk_train": 20, "post_nms_topk_test": 20,
        "mask_batch_size_per_image": 32}


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(model="centermask_lite", data=f"coco:{data}", out=str(out), epochs=2, batch_size=2, lr=1e-3,
                size=(64, 80), seed=5, progress=False, log_every=1, model_kwargs=dict(TINY))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """8 images of 64x64 (6 train, 2 val), with empty images allowed."""
    return make_synthetic_coco(tmp_path_factory.mktemp("syn"), num_images=8, size=(64, 64), seed=1,
                               min_objects=0, max_objects=3)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _write_coco(root: Path, images: list[np.ndarray], anns: list[list[dict]], names=("thing",)) -> Path:
    """A one-split COCO set from arrays: ``root/images/N.png`` + ``root/annotations/instances_train.json``
    (and the same file as ``instances_val.json``)."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    data = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    aid = 1
    for i, (img, objs) in enumerate(zip(images, anns)):
        cv2.imwrite(str(root / "images" / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "height": img.shape[0], "width": img.shape[1]})
        for o in objs:
            data["annotations"].append({"id": aid, "image_id": i + 1, "iscrowd": 0, "category_id": 1, **o})
            aid += 1
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _poly_box(x0, y0, x1, y1) -> dict:
    return {"segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": float((x1 - x0) * (y1 - y0))}


# --- data specs --------------------------------------------------------------------------------

def test_resolve_coco_layouts(syn, tmp_path):
    s = resolve_coco(f"coco:{syn.root}", "val")
    assert s == resolve_coco(str(syn.root), "val")  # a bare DIR is the same
    assert s.images_dir == syn.images_dir and s.annotation_json == syn.val_json
    pair = resolve_coco(f"coco:{syn.images_dir},{syn.train_json}", "val")  # explicit pair ignores the split
    assert pair.annotation_json == syn.train_json
    # COCO 2017 as downloaded
    (tmp_path / "c" / "val2017").mkdir(parents=True)
    (tmp_path / "c" / "annotations").mkdir()
    (tmp_path / "c" / "annotations" / "instances_val2017.json").write_text("{}")
    s17 = resolve_coco(f"coco:{tmp_path / 'c'}", "val")
    assert s17.images_dir.name == "val2017" and s17.annotation_json.name == "instances_val2017.json"
    with pytest.raises(rtseg.DataError, match=r"instances_train.json: annotation file for split 'train' not found"):
        resolve_coco(f"coco:{tmp_path / 'c'}", "train")
    with pytest.raises(rtseg.DataError, match="dataset folder not found"):
        resolve_coco(f"coco:{tmp_path / 'nope'}")
    with pytest.raises(rtseg.DataError, match="nope.json: annotation file not found"):
        resolve_coco(f"coco:{syn.images_dir},{tmp_path / 'nope.json'}")


def test_task_open_names_the_classes(syn):
    ds = InstanceTask().open(_cfg(syn.root, "unused"), "train")
    assert isinstance(ds, CocoSet) and ds.info.class_names == syn.class_names and ds.info.num_classes == 4


# --- augmentation ------------------------------------------------------------------------------

def test_augment_is_seeded_and_keeps_boxes_on_masks(syn):
    coco = open_coco(f"coco:{syn.root}", "train").coco
    idx = next(i for i in range(len(coco)) if len(coco.load(i)[1]["boxes"]))
    image, target = coco.load(idx)
    aug = InstanceAugment((70, 90), max_size=200)
    shorts, flips = set(), 0
    for seed in range(12):
        a_img, a_t = aug(image, target, seed)
        b_img, b_t = aug(image, target, seed)
        assert np.array_equal(a_img, b_img) and np.array_equal(a_t["masks"], b_t["masks"])  # same seed, same draw
        assert 70 <= min(a_img.shape[:2]) <= 90 and a_t["masks"].shape[1:] == a_img.shape[:2]
        shorts.add(min(a_img.shape[:2]))
        for box, m in zip(a_t["boxes"], a_t["masks"]):  # boxes follow the masks through resize + flip
            np.testing.assert_allclose(box, mask_to_box(m), atol=2.0)
        # flipped iff the mirrored image matches the plain resize
        plain = cv2.resize(image, a_img.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        flips += int(not np.array_equal(a_img, plain))
    assert len(shorts) > 3 and 2 <= flips <= 10
    fixed = InstanceAugment((70, 70), max_size=200, flip_prob=0.0)
    f_img, _ = fixed(image, target, 3)
    assert min(f_img.shape[:2]) == 70


def test_collate_pads_bottom_right(syn):
    items = [(torch.ones(3, 40, 50), {"boxes": torch.zeros(0, 4)}), (torch.ones(3, 45, 33), {"boxes": torch.zeros(0, 4)})]
    batch, targets, sizes = collate(items)
    assert batch.shape == (2, 3, 45, 50) and sizes == [(40, 50), (45, 33)] and len(targets) == 2
    assert batch[0, :, 40:].abs().sum() == 0 and batch[1, :, :, 33:].abs().sum() == 0
    assert batch[1, :, :45, :33].min() == 1


# --- trainer -------------------------------------------------------------------------------------

def test_train_few_steps_and_exact_resume(syn, tmp_path):
    """2 epochs == 1 epoch + resume for 1: bit-identical weights (seeded resize/flip per item,
    the mask-proposal sampling's RNG restored from the checkpoint)."""
    full = train(_cfg(syn.root, tmp_path / "full", epochs=2))
    train(_cfg(syn.root, tmp_path / "split", epochs=2, max_steps=3))  # 6 images / batch 2: stops after epoch 1
    train(_cfg(syn.root, tmp_path / "split", epochs=2, resume=True))
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    init = rtseg.create_model("centermask_lite", num_classes=4, **TINY).state_dict()
    assert sum(not torch.equal(a[k], init[k]) for k in init) > len(init) // 2  # it trained
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"mask_ap", "box_ap", "score", "train_loss"} <= set(rows[0])
    assert all(math.isfinite(r["train_loss"]) for r in rows) and full["history"][-1]["step"] == 6
    model = rtseg.load_model("centermask_lite", tmp_path / "full" / "model.pt")
    assert model.pretrained_cfg.class_names == syn.class_names and model.rtseg_kwargs["num_classes"] == 4


def test_warmup_scales_the_first_steps():
    from rtseg.engine.trainer import lr_at

    cfg = TrainConfig(model="centermask_lite", data="x", lr=1.0, schedule="none", warmup_steps=4)
    assert [lr_at(cfg, s, 100, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    poly = TrainConfig(model="centermask_lite", data="x", lr=1.0, schedule="poly", poly_power=1.0, warmup_steps=2)
    assert lr_at(poly, 0, 10, 5) == pytest.approx(0.5) and lr_at(poly, 5, 10, 5) == pytest.approx(0.5)


def test_val_split_missing_is_none_and_explicit_pair(syn, tmp_path):
    task = InstanceTask()
    model = rtseg.create_model("centermask_lite", num_classes=4, **TINY)
    pair = _cfg(f"{syn.images_dir},{syn.train_json}", tmp_path)
    assert task.val_dataset(pair, model) is None
    with_val = _cfg(f"{syn.images_dir},{syn.train_json}", tmp_path, val_data=f"coco:{syn.images_dir},{syn.val_json}")
    assert len(task.val_dataset(with_val, model)) == 2


# --- evaluation ----------------------------------------------------------------------------------

def test_ground_truth_as_predictions_scores_ap_one(syn):
    """The COCO plumbing (labels -> category ids, xyxy -> xywh, masks -> RLE, mask scores for
    segm): the val ground truth itself scores AP 1.0 for boxes and masks."""
    coco = open_coco(f"coco:{syn.root}", "val").coco
    bbox, segm = [], []
    for i in range(len(coco)):
        _, t = coco.load(i)
        n = len(t["boxes"])
        pred = {"boxes": t["boxes"], "scores": np.linspace(0.9, 0.5, n), "labels": t["labels"],
                "masks": t["masks"].astype(bool), "mask_scores": np.linspace(0.9, 0.5, n)}
        b, s = predictions_for_image(pred, t["image_id"], coco.label_to_category_id)
        bbox += b
        segm += s
    ap = coco_ap(bbox, segm, coco.annotation_json, coco.image_ids)
    assert ap["bbox"]["AP"] == pytest.approx(1.0) and ap["segm"]["AP"] == pytest.approx(1.0)
    wrong = [{**r, "category_id": coco.label_to_category_id[(coco.category_id_to_label[r["category_id"]] + 1) % 4]}
             for r in segm]
    assert coco_ap(bbox, wrong, coco.annotation_json, coco.image_ids)["segm"]["AP"] == 0.0


def test_evaluate_untrained_gives_both_aps(syn):
    model = rtseg.create_model("centermask_lite", num_classes=4, **TINY)
    m = evaluate_instances(model, open_coco(f"coco:{syn.root}", "val"), progress=False)
    assert set(m["bbox"]) == set(m["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= m["mask_ap"] < 0.05 and 0.0 <= m["box_ap"] < 0.05 and m["score"] == m["mask_ap"]
    assert "mask" in m["table"] and "box" in m["table"] and model.training  # mode restored
    wrong = rtseg.create_model("centermask_lite", num_classes=3, **TINY)
    with pytest.raises(rtseg.DataError, match="dataset has 4 classes"):
        evaluate_instances(wrong, open_coco(f"coco:{syn.root}", "val"), progress=False)


# --- edge cases ----------------------------------------------------------------------------------

def _loss_and_grad(data_root: Path, size=(64, 80), batch=2, **kw):
    cfg = _cfg(data_root, "unused", size=size, **kw)
    task = InstanceTask()
    info = task.open(cfg).info
    model = rtseg.create_model("centermask_lite", num_classes=info.num_classes, **TINY).train()
    view = task.train_dataset(cfg, model)
    items = [view[(0, i)] for i in range(min(batch, len(view)))]
    losses = task.loss(model, task.collate(items), cfg)
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return losses, items, grads


def test_images_without_instances_train_and_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (48, 60, 3), dtype=np.uint8) for _ in range(2)]
    root = _write_coco(tmp_path / "empty", imgs, [[], []])
    losses, items, grads = _loss_and_grad(root)
    assert all(len(t["boxes"]) == 0 for _, t in items)
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["loss_mask"].detach()) == 0.0
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model = rtseg.create_model("centermask_lite", num_classes=1, **TINY)
    m = evaluate_instances(model, open_coco(f"coco:{root}", "val"), progress=False)
    assert m["mask_ap"] == 0.0 and math.isnan(m["segm"]["AP"])  # no ground truth: COCOeval says -1


def test_tiny_and_image_sized_boxes(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    objs = [_poly_box(10, 10, 12, 12), _poly_box(0, 0, 70, 50)]  # 2x2 pixels and the whole image
    root = _write_coco(tmp_path / "sizes", [img, img], [objs, objs])
    losses, items, grads = _loss_and_grad(root, size=(60, 60))
    boxes = items[0][1]["boxes"]
    assert len(boxes) == 2 and float(boxes[1, 2]) == items[0][0].shape[2]  # image-sized box survives resizing
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_degenerate_polygons_are_skipped(tmp_path, caplog):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    objs = [_poly_box(5, 5, 25, 30),
            {"segmentation": [[3, 3, 9, 9]], "bbox": [3, 3, 6, 6], "area": 0.0},  # two points
            {"segmentation": [[1, 1, 5, 5, 9, 9]], "bbox": [1, 1, 8, 8], "area": 0.0}]  # collinear: zero area
    root = _write_coco(tmp_path / "degenerate", [img, img], [objs, objs])
    with caplog.at_level("WARNING"):
        losses, items, _ = _loss_and_grad(root)
    assert "degenerate" in caplog.text
    assert all(len(t["boxes"]) == 1 for _, t in items) and torch.isfinite(losses["loss"])


def test_odd_input_sizes_predict_at_the_input_size(tmp_path):
    model = rtseg.create_model("centermask_lite", num_classes=2, **{**TINY, "min_size_test": 75}).eval()
    torch.nn.init.constant_(model.head.cls_logits.bias, 3.0)  # confident: many detections
    rng = np.random.default_rng(3)
    for h, w in ((75, 133), (101, 67)):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        det = predict_instances(model, image)
        assert det["masks"].shape[1:] == (h, w) and det["masks"].dtype == bool and len(det["boxes"]) > 0
        assert (det["boxes"][:, [0, 2]] <= w).all() and (det["boxes"][:, [1, 3]] <= h).all()
        assert np.all(np.diff(det["scores"]) <= 0) and det["labels"].max() < 2
        assert len(predict_instances(model, image, min_score=2.0)["boxes"]) == 0
    # a training step on odd sizes too
    root = _write_coco(tmp_path / "odd", [rng.integers(0, 255, (75, 133, 3), dtype=np.uint8)] * 2,
                       [[_poly_box(10, 10, 60, 50)], [_poly_box(70, 20, 120, 70)]])
    losses, items, _ = _loss_and_grad(root, size=(71, 71))
    assert items[0][0].shape[1] == 71 and torch.isfinite(losses["loss"])


def test_predict_on_instance_model_points_to_predict_instances():
    model = rtseg.create_model("centermask_lite", num_classes=2, **TINY)
    with pytest.raises(rtseg.RtsegError, match="predict_instances"):
        rtseg.predict(model, np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(rtseg.RtsegError, match="not an instance-segmentation model"):
        predict_instances(rtseg.create_model("sinet"), np.zeros((40, 40, 3), np.uint8))


def test_ddp_routes_forward_to_losses(syn, tmp_path):
    """Under DistributedDataParallel the task calls ``ddp(...)`` with forward routed to
    ``losses``: same losses and gradients as the bare model (world size 1, gloo)."""
    import torch.distributed as dist

    cfg = _cfg(syn.root, tmp_path)
    task = InstanceTask()
    task.open(cfg)
    torch.manual_seed(0)
    model = rtseg.create_model("centermask_lite", num_classes=4, **TINY).train()
    view = task.train_dataset(cfg, model)
    batch = task.collate([view[(0, i)] for i in range(2)])
    state = torch.get_rng_state()
    ref = task.loss(model, batch, cfg)
    ref["loss"].backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        torch.set_rng_state(state)
        out = task.loss(ddp, batch, cfg)
        out["loss"].backward()
        assert "forward" not in vars(model)  # restored
        torch.testing.assert_close(out["loss"], ref["loss"])
        for p, g in zip(model.parameters(), ref_grads):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    finally:
        dist.destroy_process_group()


# --- ONNX ----------------------------------------------------------------------------------------

def test_onnx_export_matches_pytorch():
    """rtseg.export on the raw head outputs (15 tensors), checked in onnxruntime at the export
    size and at another odd size and batch."""
    from rtseg.export import check_onnx, example_input, onnx_bytes

    torch.manual_seed(0)
    model = rtseg.create_model("centermask_lite", num_classes=3, **TINY).eval()
    data = onnx_bytes(model, example_input(model, (100, 130)))
    for shape in ((100, 130), (75, 201), (128, 96)):
        x = example_input(model, shape, batch=2 if shape[0] == 75 else 1, seed=1)
        check = check_onnx(data, model, x, threads=1)
        assert check.max_abs_diff < 1e-4 * max(1.0, check.max_abs_ref), (shape, check)


def test_onnx_export_at_multiple_of_32_takes_odd_sizes():
    """Traced at 128x128 (nothing to pad), the graph still has the zero padding to a multiple of
    32 (pad_to_multiple always calls F.pad), so it runs at 100x130 and matches PyTorch."""
    import onnx

    from rtseg.export import check_onnx, example_input, onnx_bytes

    torch.manual_seed(0)
    model = rtseg.create_model("centermask_lite", num_classes=3, **TINY).eval()
    data = onnx_bytes(model, example_input(model, (128, 128)))
    assert "Pad" in {node.op_type for node in onnx.load_from_string(data).graph.node}
    for shape in ((100, 130), (128, 128)):
        check = check_onnx(data, model, example_input(model, shape, seed=1), threads=1)
        assert check.max_abs_diff < 1e-4 * max(1.0, check.max_abs_ref), (shape, check)


# --- learning ------------------------------------------------------------------------------------

def _memorisation_run(tmp_path: Path, shuffle: bool = False) -> dict:
    """80 steps (lr 3e-3, batch 4 = the whole set) of CenterMask-Lite (FPN 64, SAG-Mask 128) on 4 synthetic
    80x80 images (4 shape classes), then box and mask AP on those images against their true
    annotations. ``shuffle`` trains on the annotations of the *next* image instead (broken
    target assignment)."""
    syn = make_synthetic_coco(tmp_path / "memo", num_images=5, size=(80, 80), seed=0, val_fraction=0.01)
    data = json.loads(syn.train_json.read_text())
    assert len(data["images"]) == 4 and len(data["annotations"]) >= 8
    ids = [im["id"] for im in data["images"]]
    if shuffle:
        nxt = {i: ids[(k + 1) % len(ids)] for k, i in enumerate(ids)}
        data["annotations"] = [{**a, "image_id": nxt[a["image_id"]]} for a in data["annotations"]]
    train_json = tmp_path / "train.json"
    train_json.write_text(json.dumps(data))
    kwargs = {**TINY, "mask_conv_dim": 128, "min_size_test": 80, "max_size_test": 320}
    train(TrainConfig(model="centermask_lite", data=f"coco:{syn.images_dir},{train_json}",
                      out=str(tmp_path / "run"), epochs=80, batch_size=4, lr=3e-3, warmup_steps=10, weight_decay=0.0,
                      size=(80, 80), augment=False, seed=0, progress=False, log_every=0, model_kwargs=kwargs))
    model = rtseg.load_model("centermask_lite", tmp_path / "run" / "model.pt")
    return evaluate_instances(model, open_coco(f"coco:{syn.images_dir},{syn.train_json}"), progress=False)


@pytest.mark.slow
def test_training_memorises_the_synthetic_shapes(tmp_path):
    """Data -> targets -> losses -> detect -> paste -> COCOeval end to end: 80 steps reach box AP
    > 0.7 and mask AP > 0.4 on the training images (measured 0.95 / 0.60); an untrained model
    scores ~0 and the same run on shuffled targets ~0 (test below), so a broken loss, target
    assignment, mask crop or paste cannot pass. (Held-out AP after a longer run:
    tests/engine/test_instance_heldout.py.)"""
    m = _memorisation_run(tmp_path)
    assert m["box_ap"] > 0.7 and m["mask_ap"] > 0.4, m["table"]
    untrained = rtseg.create_model("centermask_lite", num_classes=4, **{**TINY, "mask_conv_dim": 128})
    syn_json = tmp_path / "memo" / "annotations" / "instances_train.json"
    base = evaluate_instances(untrained, open_coco(f"coco:{tmp_path / 'memo' / 'images'},{syn_json}"), progress=False)
    assert base["box_ap"] < 0.05 and base["mask_ap"] < 0.05, base["table"]


@pytest.mark.slow
def test_training_on_shuffled_targets_stays_below_the_bar(tmp_path):
    m = _memorisation_run(tmp_path, shuffle=True)
    assert m["box_ap"] < 0.1 and m["mask_ap"] < 0.1, m["table"]
