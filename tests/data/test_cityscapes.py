"""Cityscapes reader on a tiny fake tree: label-id -> train-id table, splits, detection, errors."""
from pathlib import Path

import numpy as np
import pytest

from rtseg.data.cityscapes import ID_TO_TRAIN_ID, cityscapes_label_map, read_cityscapes
from rtseg.data.classes import CITYSCAPES_CLASSES
from rtseg.data.datasets import detect_layout, open_dataset, parse_data_spec
from rtseg.data.transforms import resize_transform
from rtseg.errors import DataError
from tests.layouts import random_rgb, write_cityscapes_sample

H, W = 32, 48
# raw label ids painted in horizontal bands of the fake label maps, and their expected train ids
BANDS = [(7, 0), (26, 13), (0, 255), (33, 18), (9, 255), (255, 255), (24, 11), (31, 16)]


def _label() -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    for i, (raw, _) in enumerate(BANDS):
        lab[i * 4:(i + 1) * 4] = raw
    return lab


def _add(root: Path, split: str, city: str, name: str, label_size=(H, W)) -> None:
    lab = _label() if label_size == (H, W) else np.full(label_size, 7, np.uint8)
    write_cityscapes_sample(root, split, city, name, random_rgb(len(name), H, W), lab)


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    _add(tmp_path, "train", "aachen", "aachen_000000_000019")
    _add(tmp_path, "train", "bremen", "bremen_000001_000019")
    _add(tmp_path, "val", "frankfurt", "frankfurt_000000_000294")
    return tmp_path


def test_official_table() -> None:
    lut = cityscapes_label_map()
    assert len(lut) == 256
    train_ids = [v for v in lut if v != 255]
    assert sorted(train_ids) == list(range(19))  # 19 classes, each once
    assert lut[7] == 0 and lut[26] == 13 and lut[33] == 18 and lut[0] == 255 and lut[255] == 255
    assert all(lut[i] == 255 for i in (1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 100))
    assert len(ID_TO_TRAIN_ID) == len(CITYSCAPES_CLASSES) == 19


def test_id_mapping_through_dataset(cityscapes: Path) -> None:
    ds = open_dataset(f"cityscapes:{cityscapes}", "val")
    assert len(ds) == 1 and ds.info.num_classes == 19 and ds.info.palette[0] == (128, 64, 128)
    image, mask = ds[0]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    mask = mask.numpy()
    for i, (raw, train_id) in enumerate(BANDS):
        assert (mask[i * 4:(i + 1) * 4] == train_id).all(), f"raw id {raw}"


def test_splits_and_transform(cityscapes: Path) -> None:
    train, _ = read_cityscapes(cityscapes, "train")
    assert [Path(s.image).parent.name for s in train] == ["aachen", "bremen"]
    assert all(s.mask.endswith("_gtFine_labelIds.png") for s in train)
    ds = open_dataset(f"cityscapes:{cityscapes}", "train", transform=resize_transform((16, 24)))
    image, mask = ds[1]
    assert image.shape == (16, 24, 3) and tuple(mask.shape) == (16, 24)
    assert set(np.unique(mask.numpy())) <= {0, 11, 13, 16, 18, 255}


def test_auto_detection(cityscapes: Path) -> None:
    assert detect_layout(cityscapes) == "cityscapes"
    assert parse_data_spec(str(cityscapes)) == ("cityscapes", cityscapes)
    assert len(open_dataset(str(cityscapes), "train")) == 2


def test_missing_label_is_named(cityscapes: Path) -> None:
    missing = cityscapes / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DataError, match="frankfurt_000000_000294_gtFine_labelIds.png: label ids for image"):
        read_cityscapes(cityscapes, "val")


def test_missing_split_and_folders(tmp_path: Path, cityscapes: Path) -> None:
    with pytest.raises(DataError, match=r"leftImg8bit[/\\]test: Cityscapes split 'test' not found"):
        read_cityscapes(cityscapes, "test")
    (tmp_path / "empty" / "leftImg8bit").mkdir(parents=True)
    with pytest.raises(DataError, match=r"gtFine: Cityscapes folder not found"):
        read_cityscapes(tmp_path / "empty", "train")
    (tmp_path / "empty" / "gtFine" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "leftImg8bit" / "train" / "ulm").mkdir(parents=True)
    with pytest.raises(DataError, match="no \\*_leftImg8bit.png images found"):
        read_cityscapes(tmp_path / "empty", "train")


def test_mask_of_another_size(cityscapes: Path) -> None:
    _add(cityscapes, "val", "frankfurt", "frankfurt_000001_000000", label_size=(16, 24))
    ds = open_dataset(f"cityscapes:{cityscapes}", "val")
    with pytest.raises(DataError, match=r"frankfurt_000001_000000_gtFine_labelIds.png: mask is 24x16 but image"):
        ds[1]
