import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from rtseg.data.coco import CocoInstances
from rtseg.data.synthetic import make_synthetic_coco
from rtseg.engine.coco_eval import evaluate_coco, predictions_to_coco_results, rescale_prediction
from rtseg.errors import DataError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), 12, size=(64, 80), seed=2, max_objects=4)


@pytest.fixture(scope="module")
def gt_predictions(synth):
    """Perfect predictions: the ground truth of every image, score 1."""
    ds = CocoInstances(synth.images_dir, synth.train_json)
    preds = {}
    for i in range(len(ds)):
        _, t = ds[i]
        k = len(t["labels"])
        preds[t["image_id"]] = {"boxes": t["boxes"].numpy(), "labels": t["labels"].numpy(),
                                "scores": np.linspace(1.0, 0.5, k), "masks": t["masks"].numpy().astype(bool)}
    return ds, preds


def test_perfect_predictions_give_ap_one(synth, gt_predictions, capsys):
    ds, preds = gt_predictions
    res = evaluate_coco(preds, synth.train_json, ds.label_to_category_id)
    assert set(res) == {"bbox", "segm"}
    for kind in ("bbox", "segm"):
        assert set(res[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        for name in ("AP", "AP50", "AP75"):
            assert res[kind][name] == pytest.approx(1.0), (kind, name)
        assert all(math.isnan(v) or v == pytest.approx(1.0) for v in res[kind].values())
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured


def test_tensors_and_list_form_give_the_same(synth, gt_predictions):
    ds, preds = gt_predictions
    as_list = [{"image_id": i, **{k: torch.as_tensor(v) for k, v in p.items()}} for i, p in preds.items()]
    res = evaluate_coco(as_list, synth.train_json, ds.label_to_category_id)
    assert res["bbox"]["AP"] == pytest.approx(1.0) and res["segm"]["AP"] == pytest.approx(1.0)


def test_shifted_boxes_lower_bbox_ap_only(synth, gt_predictions):
    ds, preds = gt_predictions
    shifted = {}
    for i, p in preds.items():
        b = p["boxes"].copy()
        shift = 0.3 * (b[:, 2] - b[:, 0])  # IoU with the original box: 0.7 / 1.3 ~ 0.54
        b[:, [0, 2]] += shift[:, None]
        shifted[i] = {**p, "boxes": b}
    res = evaluate_coco(shifted, synth.train_json, ds.label_to_category_id)
    assert res["bbox"]["AP"] < 0.5
    assert res["bbox"]["AP50"] > 0.9 and res["bbox"]["AP75"] < 0.1
    assert res["segm"]["AP"] == pytest.approx(1.0)  # masks untouched


def test_missing_image_predictions_and_wrong_labels(synth, gt_predictions):
    ds, preds = gt_predictions
    ids = sorted(preds)
    fewer = {i: p for i, p in preds.items() if i != ids[0]}
    res = evaluate_coco(fewer, synth.train_json, ds.label_to_category_id)
    assert 0.5 < res["bbox"]["AP"] < 1.0 and 0.5 < res["segm"]["AP"] < 1.0
    # restricted to the images that have predictions, they are perfect again
    res = evaluate_coco(fewer, synth.train_json, ds.label_to_category_id, image_ids=ids[1:])
    assert res["segm"]["AP"] == pytest.approx(1.0)
    wrong = {i: {**p, "labels": (p["labels"] + 1) % ds.num_classes} for i, p in preds.items()}
    res = evaluate_coco(wrong, synth.train_json, ds.label_to_category_id)
    assert res["bbox"]["AP"] == pytest.approx(0.0) and res["segm"]["AP"] == pytest.approx(0.0)


def test_no_predictions_at_all(synth, gt_predictions, capsys):
    ds, preds = gt_predictions
    empty = {i: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64),
                 "masks": np.zeros((0, 64, 80), bool)} for i in preds}
    for p in (empty, {}, []):
        res = evaluate_coco(p, synth.train_json, ds.label_to_category_id)
        for kind in ("bbox", "segm"):
            assert res[kind]["AP"] == 0.0 and res[kind]["AP50"] == 0.0
    assert capsys.readouterr().out == ""


def test_crowd_regions_are_ignored(synth, gt_predictions, tmp_path):
    ds, preds = gt_predictions
    data = json.loads(synth.train_json.read_text())
    im = data["images"][0]
    region = np.zeros((64, 80), np.uint8)
    region[:20, :20] = 1
    rle = mask_utils.encode(np.asfortranarray(region))
    data["annotations"].append({"id": 10_000, "image_id": im["id"], "category_id": 1, "iscrowd": 1,
                                "bbox": [0, 0, 20, 20], "area": 400.0,
                                "segmentation": {"size": [64, 80], "counts": rle["counts"].decode()}})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    assert CocoInstances(synth.images_dir, path).num_crowd == 1
    # a detection on the crowd region is neither a hit nor a false positive
    extra = dict(preds)
    p = extra[im["id"]]
    mask = np.zeros((1, 64, 80), bool)
    mask[0, :20, :20] = True
    extra[im["id"]] = {"boxes": np.concatenate([p["boxes"], [[0, 0, 20, 20]]]),
                       "labels": np.concatenate([p["labels"], [0]]), "scores": np.concatenate([p["scores"], [0.9]]),
                       "masks": np.concatenate([p["masks"], mask])}
    res = evaluate_coco(extra, path, ds.label_to_category_id)
    assert res["segm"]["AP"] == pytest.approx(1.0) and res["bbox"]["AP"] == pytest.approx(1.0)
    # without the crowd region the same detection is a false positive
    res = evaluate_coco(extra, synth.train_json, ds.label_to_category_id)
    assert res["segm"]["AP"] < 1.0 and res["bbox"]["AP"] < 1.0


def test_boxes_only_and_conversions(synth, gt_predictions):
    ds, preds = gt_predictions
    boxes_only = {i: {k: v for k, v in p.items() if k != "masks"} for i, p in preds.items()}
    res = evaluate_coco(boxes_only, synth.train_json, ds.label_to_category_id)
    assert set(res) == {"bbox"} and res["bbox"]["AP"] == pytest.approx(1.0)
    pred = {"boxes": np.array([[10.0, 20.0, 30.0, 50.0]]), "scores": np.array([0.8]), "labels": np.array([2]),
            "masks": np.zeros((1, 64, 80), bool)}
    pred["masks"][0, 20:50, 10:30] = True
    bbox_res, segm_res = predictions_to_coco_results({7: pred}, ds.label_to_category_id)
    assert bbox_res == [{"image_id": 7, "category_id": 5, "bbox": [10.0, 20.0, 20.0, 30.0], "score": 0.8}]
    assert segm_res[0]["segmentation"]["size"] == [64, 80] and isinstance(segm_res[0]["segmentation"]["counts"], str)


def test_bad_predictions_raise(synth, gt_predictions):
    ds, preds = gt_predictions
    with pytest.raises(DataError, match="image id"):
        evaluate_coco({123456: next(iter(preds.values()))}, synth.train_json, ds.label_to_category_id)
    i, p = next(iter(preds.items()))
    with pytest.raises(DataError, match="rescale"):
        evaluate_coco({i: {**p, "masks": p["masks"][:, :32]}}, synth.train_json, ds.label_to_category_id)
    with pytest.raises(DataError, match="label"):
        evaluate_coco({i: {**p, "labels": p["labels"] + 10}}, synth.train_json, ds.label_to_category_id)
    with pytest.raises(DataError, match="not found"):
        evaluate_coco(preds, synth.root / "missing.json", ds.label_to_category_id)


def test_rescale_prediction():
    masks = np.zeros((1, 20, 40), bool)
    masks[0, 5:10, 10:30] = True
    pred = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 10.0]]), "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]), "masks": torch.from_numpy(masks)}
    out = rescale_prediction(pred, (40, 80))
    np.testing.assert_allclose(out["boxes"], [[20, 10, 60, 20]])
    assert out["masks"].shape == (1, 40, 80) and out["masks"].sum() == 4 * masks.sum()
    ys, xs = np.nonzero(out["masks"][0])
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (20, 10, 60, 20)
    assert out["scores"].tolist() == [0.5] and out["labels"].tolist() == [1]
