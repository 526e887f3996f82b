import json
import time

import cv2
import numpy as np
import pytest

from rtseg.data.coco import decode_segmentation
from rtseg.data.synthetic import SHAPES, draw_scene, encode_segmentation, make_synthetic_coco


def _all_annotations(s):
    out = {}
    for path in (s.train_json, s.val_json):
        data = json.loads(path.read_text())
        for im in data["images"]:
            out[im["id"]] = (im, [a for a in data["annotations"] if a["image_id"] == im["id"]])
    return out


def test_deterministic_by_seed(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", 9, size=(64, 80), seed=3)
    b = make_synthetic_coco(tmp_path / "b", 9, size=(64, 80), seed=3)
    c = make_synthetic_coco(tmp_path / "c", 9, size=(64, 80), seed=4)
    assert a.train_json.read_text() == b.train_json.read_text()
    assert a.val_json.read_text() == b.val_json.read_text()
    names = sorted(p.name for p in a.images_dir.iterdir())
    assert len(names) == 9
    for n in names:
        assert (a.images_dir / n).read_bytes() == (b.images_dir / n).read_bytes()
    assert a.train_json.read_text() != c.train_json.read_text()
    assert any((a.images_dir / n).read_bytes() != (c.images_dir / n).read_bytes() for n in names)


def test_layout_split_and_categories(tmp_path):
    s = make_synthetic_coco(tmp_path, 12, size=(96, 128), seed=0, classes=("circle", "square", "triangle"))
    train, val = json.loads(s.train_json.read_text()), json.loads(s.val_json.read_text())
    train_ids = {im["id"] for im in train["images"]}
    val_ids = {im["id"] for im in val["images"]}
    assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == set(range(1, 13))
    assert len(val_ids) == 3  # 25 %
    assert train["categories"] == val["categories"]
    assert [c["name"] for c in train["categories"]] == ["circle", "square", "triangle"]
    assert [c["id"] for c in train["categories"]] == [1, 3, 5] == list(s.category_ids)
    for im in train["images"]:
        img = cv2.imread(str(s.images_dir / im["file_name"]))
        assert img.shape == (96, 128, 3) and (im["height"], im["width"]) == (96, 128)
    for split in (train, val):
        assert {a["image_id"] for a in split["annotations"]} <= {im["id"] for im in split["images"]}


def test_masks_are_visible_parts_and_boxes_fit(tmp_path):
    s = make_synthetic_coco(tmp_path, 18, size=(96, 128), seed=1, max_objects=6)
    kinds = set()
    for image_id, (im, anns) in _all_annotations(s).items():
        h, w = im["height"], im["width"]
        assert 1 <= len(anns) <= 6
        masks = []
        for a in anns:
            segm = a["segmentation"]
            kinds.add("polygon" if isinstance(segm, list) else
                      "rle_uncompressed" if isinstance(segm["counts"], list) else "rle")
            m = decode_segmentation(segm, h, w)
            assert m.any()
            ys, xs = np.nonzero(m)
            x, y, bw, bh = a["bbox"]
            assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert a["area"] == m.sum() and a["iscrowd"] == 0
            masks.append(m)
        # later shapes cover earlier ones: the visible masks never overlap
        assert np.stack(masks).sum(0).max() == 1
    assert kinds == {"polygon", "rle", "rle_uncompressed"}


def test_occlusion_makes_masks_show_exactly_the_visible_shape():
    rng = np.random.default_rng(0)
    occluded = 0
    for _ in range(30):
        image, objects = draw_scene(rng, (96, 96), 5)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        stack = np.stack([m for _, m in objects])
        assert stack.sum(0).max() <= 1
        for label, m in objects:
            assert 0 <= label < 4 and m.sum() >= 24
            # a mask covers pixels of one colour: the shape's (flat colour plus a little noise)
            assert image[m > 0].astype(float).std(0).max() < 20
            # every shape is convex and stays convex when clipped by the border: a visible
            # part clearly smaller than its convex hull has been covered by a later shape
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            hull = cv2.convexHull(np.concatenate(contours))
            if cv2.contourArea(hull) > 1.3 * m.sum():
                occluded += 1
    assert occluded >= 5


def test_empty_images_allowed_and_bad_classes_refused(tmp_path):
    s = make_synthetic_coco(tmp_path, 10, size=(48, 48), seed=0, max_objects=1, min_objects=0)
    anns = _all_annotations(s)
    assert any(len(a) == 0 for _, a in anns.values()) and any(len(a) == 1 for _, a in anns.values())
    with pytest.raises(ValueError, match="hexagon"):
        make_synthetic_coco(tmp_path / "x", 2, classes=("circle", "hexagon"))
    assert set(SHAPES) >= {"circle", "square", "rectangle", "triangle", "ellipse"}


def test_fast_enough_for_tests(tmp_path):
    t = time.perf_counter()
    make_synthetic_coco(tmp_path, 48, size=(128, 128), seed=0)
    assert time.perf_counter() - t < 3.0


@pytest.mark.parametrize("kind", ["polygon", "rle", "rle_uncompressed"])
def test_encodings_round_trip_exactly(kind):
    rng = np.random.default_rng(5)
    n = polys = 0
    for _ in range(10):
        _, objects = draw_scene(rng, (64, 96), 5)
        for _, m in objects:
            segm = encode_segmentation(m, kind)
            polys += isinstance(segm, list)
            np.testing.assert_array_equal(decode_segmentation(segm, 64, 96), m)
            n += 1
    assert n >= 20
    if kind == "polygon":  # RLE only for the few visible parts with a hole
        assert polys >= 0.8 * n


def test_command_line_writes_the_same_set(tmp_path, capsys):
    from rtseg.data.synthetic import main

    assert main([str(tmp_path / "cli"), "--num-images", "6", "--size", "40x56", "--seed", "3",
                 "--classes", "circle", "triangle", "--val-fraction", "0.5"]) == 0
    api = make_synthetic_coco(tmp_path / "api", 6, (40, 56), 3, classes=("circle", "triangle"), val_fraction=0.5)
    for split in ("train", "val"):
        assert (tmp_path / "cli" / "annotations" / f"instances_{split}.json").read_bytes() == \
            (api.root / "annotations" / f"instances_{split}.json").read_bytes()
    assert str(tmp_path / "cli" / "annotations" / "instances_val.json") in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--classes", "hexagon"])
