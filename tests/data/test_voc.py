"""PASCAL VOC 2012 reader: palette masks, list files, the SBD train_aug split, detection, errors."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtseg.data.datasets import detect_layout, open_dataset, parse_data_spec
from rtseg.data.voc import read_voc
from rtseg.errors import DataError
from tests.layouts import random_rgb, save_palette_png, voc_base, write_voc_list, write_voc_sample

H, W = 32, 48
IDS = ["2007_000032", "2007_000039", "2008_000123"]
AUG_IDS = ["2007_000032", "2011_003276"]


def _label(seed: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[8:24, 12:36] = 15 if seed % 2 else 1  # person / aeroplane
    m[8, 12:36] = 255  # object border
    m[0, 0] = 20
    return m


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    base = voc_base(tmp_path)
    for i, name in enumerate(sorted(set(IDS) | set(AUG_IDS))):
        # palette PNG in SegmentationClass for the VOC ids, greyscale ids in SegmentationClassAug for all
        write_voc_sample(base, name, random_rgb(i, H, W), _label(i), palette=name in IDS, aug=True)
    write_voc_list(base, "train", IDS[:2])
    write_voc_list(base, "val", IDS[2:])
    write_voc_list(base, "trainval", IDS)
    return tmp_path


def test_palette_indices_are_class_ids(voc: Path) -> None:
    base = voc / "VOCdevkit" / "VOC2012"
    assert Image.open(base / "SegmentationClass" / f"{IDS[0]}.png").mode == "P"
    ds = open_dataset(f"voc:{voc}", "val")
    assert len(ds) == 1 and ds.info.num_classes == 21
    assert ds.info.palette[1] == (128, 0, 0) and ds.info.palette[15] == (192, 128, 128)
    image, mask = ds[0]
    assert image.shape == (H, W, 3)
    names = sorted(set(IDS) | set(AUG_IDS))
    assert np.array_equal(mask.numpy(), _label(names.index(IDS[2])))  # 255 border kept as ignore
    assert {0, 20, 255} <= set(np.unique(mask.numpy()))


def test_splits_and_roots(voc: Path) -> None:
    for split, n in (("train", 2), ("val", 1), ("trainval", 3)):
        samples, _ = read_voc(voc, split)
        assert len(samples) == n
    samples, _ = read_voc(voc / "VOCdevkit" / "VOC2012", "train")  # root = VOC2012
    assert [s.name for s in samples] == IDS[:2]
    assert len(read_voc(voc / "VOCdevkit", "val")[0]) == 1  # root = VOCdevkit


def test_train_aug(voc: Path) -> None:
    base = voc / "VOCdevkit" / "VOC2012"
    with pytest.raises(DataError, match=r"train_aug.txt: SBD-augmented list not found"):
        read_voc(voc, "train_aug")
    (base / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in AUG_IDS))
    samples, _ = read_voc(voc, "train_aug")
    assert [s.name for s in samples] == AUG_IDS
    assert all(Path(s.mask).parent.name == "SegmentationClassAug" for s in samples)
    ds = open_dataset(f"voc:{voc}", "train_aug")
    assert set(np.unique(ds[1][1].numpy())) <= {0, 1, 15, 20, 255}
    # an id-only list (ImageSets/SegmentationAug/, deeplab-pytorch style) works too
    (base / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    (base / "ImageSets" / "SegmentationAug").mkdir()
    (base / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text(AUG_IDS[1] + "\n")
    assert [s.name for s in read_voc(voc, "train_aug")[0]] == [AUG_IDS[1]]


def test_detection(voc: Path) -> None:
    assert detect_layout(voc) == "voc"
    assert detect_layout(voc / "VOCdevkit" / "VOC2012") == "voc"
    assert parse_data_spec(str(voc)) == ("voc", voc)


def test_errors_name_the_file(voc: Path, tmp_path: Path) -> None:
    sets = voc / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text(f"{IDS[0]}\n2099_999999\n")
    with pytest.raises(DataError, match=r"train.txt:2: listed image .*2099_999999.jpg not found"):
        read_voc(voc, "train")
    (voc / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{IDS[2]}.png").unlink()
    with pytest.raises(DataError, match=r"val.txt:1: mask .*2008_000123.png not found"):
        read_voc(voc, "val")
    with pytest.raises(DataError, match=r"test.txt: VOC list file for split 'test' not found"):
        read_voc(voc, "test")
    with pytest.raises(DataError, match=r"VOC folders JPEGImages/ and ImageSets/ not found"):
        read_voc(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages", "train")


def test_mask_of_another_size(voc: Path) -> None:
    base = voc / "VOCdevkit" / "VOC2012"
    save_palette_png(np.zeros((H + 2, W), np.uint8), base / "SegmentationClass" / f"{IDS[0]}.png")
    ds = open_dataset(f"voc:{voc}", "train")
    with pytest.raises(DataError, match=r"2007_000032.png: mask is 48x34 but image .*2007_000032.jpg is 48x32"):
        ds[0]
