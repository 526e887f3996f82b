"""``rtseg train / eval / predict --model centermask_lite`` end to end on generated data: COCO
data spec, box and mask AP table + JSON, instances drawn on an image (PNG + JSON) and a video."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import rtseg
from rtseg.cli import main
from rtseg.data.coco import decode_rle
from rtseg.data.synthetic import make_synthetic_coco
from rtseg.models import attach_meta
from tests.toydata import write_video

TINY = {"fpn_channels": 64, "mask_conv_dim": 32, "maskiou_conv_dim": 32, "backbone_norm": "BN",
        "min_size_test": 64, "max_size_test": 128, "post_nms_topk_train": 20, "post_nms_topk_test": 20,
        "mask_batch_size_per_image": 32}
KWARGS = [f"{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("syn"), num_images=6, size=(64, 72), seed=4)


def test_train_then_eval_prints_box_and_mask_ap(syn, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "centermask_lite", "--data", f"coco:{syn.root}", "--out", str(run),
                 "--epochs", "1", "--batch-size", "2", "--size", "64x80", "--warmup-steps", "2", "--lr", "1e-3",
                 "--no-progress", "--model-kwargs", *KWARGS]) == 0
    assert (run / "model.pt").exists() and (run / "last.pt").exists()
    assert "done:" in capsys.readouterr().out
    metrics = tmp_path / "m" / "eval.json"
    assert main(["eval", "--model", "centermask_lite", "--weights", str(run / "model.pt"), "--data",
                 f"coco:{syn.root}", "--json", str(metrics), "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert lines[1].startswith("box") and lines[2].startswith("mask") and "mask AP" in lines[3]
    doc = json.loads(metrics.read_text())
    assert set(doc["bbox"]) == set(doc["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= doc["mask_ap"] <= 1.0 and doc["images"] == 2 and doc["split"] == "val"
    # the train split through the explicit IMAGES_DIR,ANN_JSON form
    assert main(["eval", "--model", "centermask_lite", "--weights", str(run / "model.pt"), "--data",
                 f"coco:{syn.images_dir},{syn.train_json}", "--no-progress"]) == 0
    assert "(4 images" in capsys.readouterr().out


def test_eval_errors_are_one_line(syn, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    rtseg.save_model(rtseg.create_model("centermask_lite", num_classes=3, **TINY), weights)
    base = ["eval", "--model", "centermask_lite", "--weights", str(weights), "--no-progress"]
    assert main([*base, "--data", f"coco:{syn.root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset has 4 classes" in err and "instances_val.json" in err
    assert main([*base, "--data", f"coco:{tmp_path}"]) == 2
    assert "annotation file for split 'val' not found" in capsys.readouterr().err
    assert main([*base, "--data", f"coco:{syn.root}", "--flip"]) == 2
    assert "--flip is for semantic models" in capsys.readouterr().err


@pytest.fixture
def confident_weights(tmp_path):
    """A 2-class model whose class bias makes every point a detection (scores ~0.7)."""
    torch.manual_seed(0)
    model = rtseg.create_model("centermask_lite", num_classes=2, **TINY)
    torch.nn.init.constant_(model.head.cls_logits.bias, 4.0)
    attach_meta(model, "centermask_lite", model.rtseg_kwargs,
                model.pretrained_cfg.replace(class_names=("circle", "square"), source="test weights"))
    path = tmp_path / "confident.pt"
    rtseg.save_model(model, path)
    return path


def test_predict_image_and_video_draw_instances(tmp_path, confident_weights, capsys):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "shot.png")
    frames = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(4)]
    write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "o"
    assert main(["predict", str(tmp_path / "shot.png"), str(tmp_path / "clip.mp4"), "--model", "centermask_lite",
                 "--weights", str(confident_weights), "--out", str(out), "--no-progress"]) == 0
    assert "test weights" in capsys.readouterr().out
    drawn = np.asarray(Image.open(out / "shot_instances.png"))
    assert drawn.shape == image.shape and (drawn != image).mean() > 0.2  # masks, boxes and tags drawn
    doc = json.loads((out / "shot_instances.json").read_text())
    assert (doc["height"], doc["width"]) == (70, 90) and doc["instances"]
    for inst in doc["instances"]:
        assert inst["class"] in ("circle", "square") and inst["score"] >= doc["min_score"]
        x0, y0, x1, y1 = inst["box"]
        assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 70
        mask = decode_rle(inst["segmentation"])
        assert mask.shape == (70, 90) and mask.sum() == inst["area"]
    assert not (out / "shot_mask.png").exists()  # instance models do not write semantic masks
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    n, first = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        first = frame if first is None else first
        n += 1
    assert n == 4 and first.shape == (64, 80, 3)
    assert np.abs(cv2.cvtColor(first, cv2.COLOR_BGR2RGB).astype(int) - frames[0]).mean() > 20  # drawn over
    assert not list(out.glob(".*tmp*"))
