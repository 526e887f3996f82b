import copy
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from rtseg.config import IMAGENET
from rtseg.data.coco import (CocoInstances, Compose, RandomHorizontalFlip, ResizeShortestEdge, batch_images,
                             collate, drop_empty_boxes, instance_transform, resized_shape)
from rtseg.data.synthetic import make_synthetic_coco
from rtseg.errors import DataError

H, W = 72, 96  # not square, so a swapped height/width shows


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), 12, size=(H, W), seed=0, max_objects=4)


def _json(s):
    return json.loads(s.train_json.read_text())


def _write(tmp_path, data, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def _mask_bbox(m):
    ys, xs = np.nonzero(np.asarray(m))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_reads_items_and_maps_categories(synth):
    ds = CocoInstances(synth.images_dir, synth.train_json)
    data = _json(synth)
    assert len(ds) == len(data["images"]) == 9
    assert ds.class_names == ("circle", "rectangle", "triangle", "ellipse")
    assert ds.label_to_category_id == (1, 3, 5, 7) and ds.num_classes == 4
    assert ds.category_id_to_label == {1: 0, 3: 1, 5: 2, 7: 3}
    for i in range(len(ds)):
        image, t = ds[i]
        im = data["images"][i]
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert t["image_id"] == im["id"] and t["orig_size"] == (H, W)
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (len(anns), 4)
        assert t["labels"].dtype == torch.int64 and t["masks"].dtype == torch.uint8
        assert t["masks"].shape == (len(anns), H, W)
        assert [ds.label_to_category_id[lab] for lab in t["labels"].tolist()] == [a["category_id"] for a in anns]
        for box, m, a in zip(t["boxes"], t["masks"], anns):
            x, y, bw, bh = a["bbox"]
            assert box.tolist() == [x, y, x + bw, y + bh]
            np.testing.assert_array_equal(box.numpy(), _mask_bbox(m))
            assert int(m.sum()) == a["area"]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
def test_polygon_and_rle_paths_match_pycocotools(synth):
    from pycocotools.coco import COCO

    ds = CocoInstances(synth.images_dir, synth.train_json)
    coco = COCO(str(synth.train_json))
    seen = set()
    for i, im in enumerate(ds.images):
        _, t = ds[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
        for m, a in zip(t["masks"].numpy(), anns):
            segm = a["segmentation"]
            seen.add("polygon" if isinstance(segm, list) else type(segm["counts"]).__name__)
            np.testing.assert_array_equal(m, coco.annToMask(a))
    assert seen == {"polygon", "str", "list"}  # polygons, compressed and uncompressed RLE


def test_crowd_is_left_out_of_targets(synth, tmp_path):
    data = _json(synth)
    first = data["images"][0]["id"]
    anns = [a for a in data["annotations"] if a["image_id"] == first]
    n = len(anns)
    anns[0]["iscrowd"] = 1
    # and an extra crowd region in uncompressed RLE, as COCO stores them
    crowd = np.zeros((H, W), np.uint8, order="F")
    crowd[5:20, 30:60] = 1
    flat = crowd.reshape(-1, order="F")
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
    data["annotations"].append({"id": 999, "image_id": first, "category_id": 3, "iscrowd": 1, "area": 450.0,
                                "bbox": [30, 5, 30, 15], "segmentation": {"size": [H, W], "counts": runs}})
    ds = CocoInstances(synth.images_dir, _write(tmp_path, data))
    assert ds.num_crowd == 2
    _, t = ds[0]
    assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) == n - 1
    # the kept instances are the non-crowd ones, in order
    kept = [a for a in anns if not a["iscrowd"]]
    assert [ds.label_to_category_id[lab] for lab in t["labels"].tolist()] == [a["category_id"] for a in kept]


def test_empty_image_gives_empty_targets(synth, tmp_path):
    data = _json(synth)
    first = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]
    path = _write(tmp_path, data)
    for transform in (None, instance_transform(True, (80, 100), 200)):
        ds = CocoInstances(synth.images_dir, path, transform)
        image, t = ds[0]
        h, w = image.shape[:2]
        assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, h, w)
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == len(targets) == 2 and len(targets[0]["labels"]) == 0


def test_degenerate_polygons_and_empty_boxes_are_skipped_with_a_warning(synth, tmp_path, caplog):
    data = _json(synth)
    first = data["images"][0]["id"]
    n = sum(a["image_id"] == first for a in data["annotations"])
    good = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
    base = {"image_id": first, "category_id": 1, "iscrowd": 0, "area": 1.0}
    data["annotations"] += [
        {**base, "id": 901, "bbox": [10, 10, 10, 10], "segmentation": [[10.0, 10.0, 20.0, 20.0]]},  # 2 points
        {**base, "id": 902, "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 5, 5, 10, 10]]},  # zero area
        {**base, "id": 903, "bbox": [10, 10, 20, 20], "segmentation": [good, [1.0, 1.0]]},  # one bad part
        {**base, "id": 904, "bbox": [10, 10, 0, 20], "segmentation": [good]},  # zero-width box
    ]
    with caplog.at_level(logging.WARNING, logger="rtseg.data.coco"):
        ds = CocoInstances(synth.images_dir, _write(tmp_path, data))
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "ann.json" in msg and all(str(i) in msg for i in (901, 902, 903, 904))
    _, t = ds[0]
    assert len(t["labels"]) == n + 1  # only 903 is kept, with its good polygon
    np.testing.assert_array_equal(t["boxes"][-1].numpy(), [10, 10, 30, 30])
    assert t["masks"][-1].sum() > 0 and t["masks"][-1, :10].sum() == 0


def test_missing_bbox_is_taken_from_the_mask(synth, tmp_path):
    data = _json(synth)
    first = data["images"][0]["id"]
    for a in data["annotations"]:
        a.pop("bbox")
    ds = CocoInstances(synth.images_dir, _write(tmp_path, data))
    _, t = ds[0]
    assert len(t["boxes"]) == sum(a["image_id"] == first for a in data["annotations"])
    for box, m in zip(t["boxes"], t["masks"]):
        np.testing.assert_array_equal(box.numpy(), _mask_bbox(m))


def _error(synth, tmp_path, edit=None, text=None, index=None):
    if text is None:
        data = _json(synth)
        edit(data)
        path = _write(tmp_path, data)
    else:
        path = tmp_path / "ann.json"
        path.write_text(text)
    with pytest.raises(DataError) as e:
        ds = CocoInstances(synth.images_dir, path)
        if index is not None:
            ds[index]
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_clear_errors_naming_the_file(synth, tmp_path):
    with pytest.raises(DataError, match="nope.json: annotation file not found"):
        CocoInstances(synth.images_dir, tmp_path / "nope.json")
    msg = _error(synth, tmp_path, text='{"images": [')
    assert "ann.json" in msg and "not valid JSON" in msg
    msg = _error(synth, tmp_path, text="[1, 2]")
    assert "ann.json" in msg and "not a COCO instances file" in msg
    msg = _error(synth, tmp_path, edit=lambda d: d.pop("images"))
    assert "ann.json" in msg and '"images"' in msg
    msg = _error(synth, tmp_path, edit=lambda d: d.pop("annotations"))
    assert "ann.json" in msg and '"annotations"' in msg
    msg = _error(synth, tmp_path, edit=lambda d: d["annotations"][0].update(category_id=42))
    assert "ann.json" in msg and "category_id 42" in msg and "categories" in msg


def test_missing_image_and_wrong_size(synth, tmp_path):
    msg = _error(synth, tmp_path, edit=lambda d: d["images"][1].update(file_name="gone.png"))
    assert "gone.png" in msg and "not found" in msg and "ann.json" in msg

    def wrong_size(d):
        d["images"][0]["width"] = W + 1
    msg = _error(synth, tmp_path, edit=wrong_size, index=0)
    first = _json(synth)["images"][0]["file_name"]
    assert first in msg and f"{W}x{H}" in msg and f"{W + 1}x{H}" in msg and "ann.json" in msg


def test_resize_shortest_edge_rule():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(640, 480, 800, 1333) == (1067, 800)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    torch.manual_seed(0)
    t = ResizeShortestEdge((100, 120), max_size=1000)
    sizes = {t.sample() for _ in range(200)}
    assert sizes <= set(range(100, 121)) and len(sizes) > 10
    t = ResizeShortestEdge((100, 140), max_size=1000, sample_style="choice")
    assert {t.sample() for _ in range(50)} == {100, 140}


@pytest.mark.parametrize("short", [50, 80, 137, 200])
def test_resize_and_flip_keep_boxes_and_masks_together(synth, short):
    plain = CocoInstances(synth.images_dir, synth.train_json)
    resize = ResizeShortestEdge(short, max_size=400)
    both = CocoInstances(synth.images_dir, synth.train_json, Compose([resize, RandomHorizontalFlip(1.0)]))
    only_resize = CocoInstances(synth.images_dir, synth.train_json, resize)
    checked = close = 0
    for i in range(len(plain)):
        img0, t0 = plain[i]
        img1, t1 = both[i]
        img2, t2 = only_resize[i]
        h, w = resized_shape(H, W, short, 400)
        assert img1.shape == (h, w, 3) and t1["masks"].shape[1:] == (h, w)
        assert t1["orig_size"] == (H, W) and t1["image_id"] == t0["image_id"]
        # the flip mirrors image, masks and boxes alike
        np.testing.assert_array_equal(img1, img2[:, ::-1])
        np.testing.assert_array_equal(t1["masks"].numpy(), t2["masks"].numpy()[:, :, ::-1])
        np.testing.assert_allclose(t1["boxes"][:, [2, 0]].numpy(), w - t2["boxes"][:, [0, 2]].numpy())
        assert torch.equal(t1["labels"], t0["labels"][: len(t1["labels"])])
        for box, m in zip(t1["boxes"].numpy(), t1["masks"].numpy()):
            mb = _mask_bbox(m)
            if short >= H:  # upscaling: the box is the mask's bounding box within a pixel
                np.testing.assert_allclose(box, mb, atol=1.0)
            else:  # downscaling may drop sub-pixel-thin tips of a mask, never grow it past the box
                assert (mb[:2] >= box[:2] - 1).all() and (mb[2:] <= box[2:] + 1).all()
                close += bool(np.abs(box - mb).max() <= 1.0)
            checked += 1
    assert checked >= 10
    if short < H:
        assert close >= 0.8 * checked


def test_drop_empty_boxes():
    t = {"boxes": np.array([[0, 0, 5, 5], [3, 3, 3, 9], [1, 1, 2, 2]], np.float32),
         "labels": np.array([0, 1, 2]), "masks": np.zeros((3, 10, 10), np.uint8), "image_id": 1}
    out = drop_empty_boxes(t)
    assert out["labels"].tolist() == [0, 2] and len(out["boxes"]) == len(out["masks"]) == 2
    assert out["image_id"] == 1


def test_collate_and_batch_images(synth):
    ds = CocoInstances(synth.images_dir, synth.train_json, instance_transform(True, (60, 90), 150))
    torch.manual_seed(1)
    images, targets = collate([ds[i] for i in range(4)])
    assert len(images) == 4 and [t["image_id"] for t in targets] == ds.image_ids[:4]
    x, sizes = batch_images(images, IMAGENET, size_divisor=32)
    assert x.dtype == torch.float32 and x.shape[:2] == (4, 3)
    assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
    assert sizes == [im.shape[:2] for im in images]
    h, w = sizes[0]
    mean = torch.tensor(IMAGENET.mean).view(3, 1, 1)
    std = torch.tensor(IMAGENET.std).view(3, 1, 1)
    ref = (torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(x[0, :, :h, :w], ref)
    assert (x[0, :, h:, :] == 0).all() and (x[0, :, :, w:] == 0).all()


def test_eval_transform_is_fixed(synth):
    ds = CocoInstances(synth.images_dir, synth.train_json, instance_transform(False, test_short_edge=144, max_size=1000))
    a, b = ds[0], ds[0]
    assert a[0].shape == (144, 192, 3)
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1]["masks"], b[1]["masks"])


def test_image_resized_with_cv2_matches_masks(synth):
    """The resized mask still sits on the shape's pixels: the colour under it is uniform."""
    ds = CocoInstances(synth.images_dir, synth.train_json, ResizeShortestEdge(144, 1000))
    image, t = ds[0]
    for m in t["masks"].numpy():
        inner = cv2.erode(m, np.ones((3, 3), np.uint8)) > 0
        if inner.sum() > 20:
            assert image[inner].astype(float).std(0).max() < 25


def test_deepcopy_safe_targets(synth):
    ds = CocoInstances(synth.images_dir, synth.train_json)
    _, t = ds[0]
    t2 = copy.deepcopy(t)
    t2["boxes"] += 1
    _, t3 = ds[0]
    assert torch.equal(t["boxes"], t3["boxes"])
