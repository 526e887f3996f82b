"""CelebAMask-HQ reader: binary part masks merged in the standard order, official split, errors."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtseg.data.celebamask import MASK_SIZE, read_celebamask, split_of
from rtseg.data.classes import CELEBAMASK_CLASSES
from rtseg.data.datasets import detect_layout, open_dataset, parse_data_spec
from rtseg.errors import DataError
from tests.layouts import random_rgb, write_celebamask_image, write_celebamask_mapping, write_celebamask_parts

S = MASK_SIZE[0]  # 512: the annotation size of the dataset
IDS = [0, 1, 2001]  # 2001 lives in mask folder 1
CLS = {name: i for i, name in enumerate(CELEBAMASK_CLASSES)}


def _box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


# Overlapping parts; the merge must follow the class order, not the order written here.
PARTS = {
    "hat": _box(0, 100, 0, 512),
    "hair": _box(0, 200, 0, 512),
    "skin": _box(50, 450, 50, 450),
    "l_eye": _box(150, 250, 100, 200),
    "nose": _box(240, 300, 220, 290),
    "cloth": _box(440, 512, 0, 512),
}


def _expected() -> np.ndarray:
    out = np.zeros((S, S), np.uint8)
    for name in sorted(PARTS, key=CLS.__getitem__):
        out[PARTS[name] > 0] = CLS[name]
    return out


@pytest.fixture
def celeba(tmp_path: Path) -> Path:
    base = tmp_path / "CelebAMask-HQ"
    for i in IDS:
        write_celebamask_image(base, i, random_rgb(i, 64, 64))
        write_celebamask_parts(base, i, PARTS if i == 0 else {"skin": _box(100, 400, 100, 400)})
    return base


def test_merge_order_follows_face_parsing() -> None:
    exp = _expected()
    # what the standard order implies for the overlaps written above
    assert exp[50, 256] == CLS["hat"]      # hat (18) over hair (17)
    assert exp[150, 60] == CLS["hair"]     # hair (17) over skin (1)
    assert exp[260, 256] == CLS["nose"]    # nose (10) over skin
    assert exp[220, 150] == CLS["l_eye"]   # l_eye (4) over skin
    assert exp[500, 256] == CLS["cloth"] and exp[300, 10] == 0


def test_parts_merged_through_dataset(celeba: Path) -> None:
    ds = open_dataset(f"celebamask:{celeba.parent}", "train")  # root may hold CelebAMask-HQ
    assert len(ds) == 3 and ds.info.num_classes == 19 and ds.info.resize_image_to_mask
    s = ds.samples[0]
    assert [c for c, _ in s.parts] == sorted(c for c, _ in s.parts)  # stored in drawing order
    assert s.size_hint == (512, 512)
    image, mask = ds[0]
    assert image.shape == (S, S, 3)  # 64x64 image resized to the 512x512 label
    assert np.array_equal(mask.numpy(), _expected())
    _, mask2 = ds[2]  # face 2001, its masks in folder 1
    assert set(np.unique(mask2.numpy())) == {0, 1}
    assert Path(ds.samples[2].parts[0][1]).parent.name == "1"


def test_official_split_by_celeba_index(celeba: Path) -> None:
    assert [split_of(i) for i in (0, 162769, 162770, 182636, 182637, 202598)] == \
        ["train", "train", "val", "val", "test", "test"]
    write_celebamask_mapping(celeba, [(0, 119613), (1, 170000), (2001, 190000)])
    for split, ids in (("train", [0]), ("val", [1]), ("test", [2001])):
        samples, _ = read_celebamask(celeba, split)
        assert [int(s.name) for s in samples] == ids
    with pytest.raises(DataError, match=r"mapping.txt: unknown CelebAMask-HQ split 'trainval'"):
        read_celebamask(celeba, "trainval")


def test_without_mapping_everything_is_train(celeba: Path) -> None:
    samples, _ = read_celebamask(celeba, "train")
    assert [int(s.name) for s in samples] == IDS
    with pytest.raises(DataError, match=r"CelebA-HQ-to-CelebA-mapping.txt: not found, so split 'val' is unknown"):
        read_celebamask(celeba, "val")


def test_detection(celeba: Path) -> None:
    assert detect_layout(celeba) == "celebamask"
    assert parse_data_spec(str(celeba.parent)) == ("celebamask", celeba.parent)


def test_errors_name_the_file(celeba: Path) -> None:
    write_celebamask_mapping(celeba, [(0, 5), (7, 6)])
    with pytest.raises(DataError, match=r"mapping.txt:3: listed image .*7.jpg not found"):
        read_celebamask(celeba, "train")
    (celeba / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(celeba / "CelebA-HQ-img" / "5.jpg")
    with pytest.raises(DataError, match=r"CelebAMask-HQ-mask-anno[/\\]0: no part masks 00005_\*.png for image"):
        read_celebamask(celeba, "train")
    write_celebamask_parts(celeba, 5, {"beard": _box(0, 1, 0, 1)})
    with pytest.raises(DataError, match=r"00005_beard.png: unknown CelebAMask-HQ part 'beard'"):
        read_celebamask(celeba, "train")


def test_part_mask_of_another_size(celeba: Path) -> None:
    write_celebamask_parts(celeba, 1, {"hair": np.zeros((256, 256), np.uint8)})
    ds = open_dataset(f"celebamask:{celeba}", "train")
    with pytest.raises(DataError, match=r"00001_hair.png: part mask is 256x256, expected 512x512"):
        ds[1]


def test_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "CelebAMask-HQ-mask-anno").mkdir()
    with pytest.raises(DataError, match=r"CelebA-HQ-img: CelebAMask-HQ folder not found"):
        read_celebamask(tmp_path, "train")
