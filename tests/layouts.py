"""Tiny trees of every dataset layout rtseg reads (no downloads).

Two levels:

* writers of one sample in a layout's own file conventions (``write_cityscapes_sample``,
  ``write_camvid_sample``, ``write_voc_sample``, ``write_celebamask_parts`` ...), used by the
  reader tests in ``tests/data/`` with hand-made labels;
* :func:`make_layout`, a whole train/val tree of any layout whose labels are a learnable pattern
  (the ``portrait_like`` blob of :mod:`tests.toydata`, drawn with the layout's *raw* label values
  of a background and a foreground class, plus ignored pixels where the layout has them), used
  by the end-to-end tests of the models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from rtseg.data.celebamask import MASK_SIZE
from rtseg.data.classes import CAMVID_CLASSES, CELEBAMASK_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from rtseg.data.voc import voc_palette
from tests.toydata import make_eg1800, make_folder_dataset, portrait_like

LAYOUTS = ("folder", "eg1800", "cityscapes", "camvid", "voc", "celebamask")


def random_rgb(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# --- Cityscapes: leftImg8bit/<split>/<city>/<name>_leftImg8bit.png + gtFine/..._labelIds.png --------

def write_cityscapes_sample(root: Path, split: str, city: str, name: str, image: np.ndarray,
                            label_ids: np.ndarray) -> None:
    """One Cityscapes sample; ``label_ids`` holds official label *ids* (the reader maps them to
    train ids). The ``_gtFine_color.png`` beside it must not confuse the reader."""
    img_dir = root / "leftImg8bit" / split / city
    lab_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(img_dir / f"{name}_leftImg8bit.png")
    Image.fromarray(label_ids).save(lab_dir / f"{name}_gtFine_labelIds.png")
    Image.fromarray(label_ids).save(lab_dir / f"{name}_gtFine_color.png")


# --- CamVid (SegNet tutorial): <split>/*.png + <split>annot/*.png ---------------------------------

def write_camvid_sample(base: Path, split: str, name: str, image: np.ndarray, label: np.ndarray) -> None:
    """One CamVid sample under SegNet's ``CamVid`` folder ``base`` (label 11 = Unlabelled)."""
    (base / split).mkdir(parents=True, exist_ok=True)
    (base / f"{split}annot").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(base / split / f"{name}.png")
    Image.fromarray(label).save(base / f"{split}annot" / f"{name}.png")


def write_camvid_list(base: Path, split: str, names: Sequence[str]) -> Path:
    """SegNet's list file with its absolute ``/SegNet/CamVid/...`` paths."""
    f = base / f"{split}.txt"
    f.write_text("".join(f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png\n" for n in names))
    return f


# --- PASCAL VOC 2012: VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation} ---------

def save_palette_png(array: np.ndarray, path: Path) -> None:
    """A VOC-style palette PNG whose indices are ``array``."""
    img = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
    img.putpalette([c for rgb in voc_palette(256) for c in rgb])
    img.save(path)


def voc_base(root: Path) -> Path:
    """Create the empty VOC folders below ``root``; returns ``root/VOCdevkit/VOC2012``."""
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    return base


def write_voc_sample(base: Path, name: str, image: np.ndarray, label: np.ndarray, *, palette: bool = True,
                     aug: bool = False) -> None:
    """JPEG image + ``SegmentationClass`` palette PNG (``palette``) and/or the greyscale
    ``SegmentationClassAug`` PNG of the SBD set (``aug``)."""
    Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
    if palette:
        save_palette_png(label, base / "SegmentationClass" / f"{name}.png")
    if aug:
        Image.fromarray(label).save(base / "SegmentationClassAug" / f"{name}.png")


def write_voc_list(base: Path, split: str, names: Sequence[str]) -> Path:
    f = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    f.write_text("".join(f"{n}\n" for n in names))
    return f


# --- CelebAMask-HQ: CelebA-HQ-img/<id>.jpg + CelebAMask-HQ-mask-anno/<id//2000>/<id:05d>_<part>.png -------

def write_celebamask_image(base: Path, idx: int, image: np.ndarray) -> None:
    (base / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(base / "CelebA-HQ-img" / f"{idx}.jpg", quality=95)


def write_celebamask_parts(base: Path, idx: int, parts: dict[str, np.ndarray]) -> None:
    """Binary part masks (0/255, 512x512 in the real dataset) of face ``idx``."""
    folder = base / "CelebAMask-HQ-mask-anno" / str(idx // 2000)
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in parts.items():
        Image.fromarray(mask).save(folder / f"{idx:05d}_{name}.png")


def write_celebamask_mapping(base: Path, rows: Sequence[tuple[int, int]]) -> Path:
    """``CelebA-HQ-to-CelebA-mapping.txt`` from ``(CelebA-HQ id, 0-based original CelebA index)``."""
    f = base / "CelebA-HQ-to-CelebA-mapping.txt"
    f.write_text("idx         orig_idx    orig_file\n" +
                 "".join(f"{i:<12d}{o:<12d}{o + 1:06d}.jpg\n" for i, o in rows))
    return f


# --- whole learnable trees -------------------------------------------------------------------------

@dataclass(frozen=True)
class LayoutTree:
    """A generated dataset: ``spec`` for ``--data``, the class names the reader must report, the
    class ids the pattern uses (background, foreground) and an image for ``predict``."""

    layout: str
    root: Path
    class_names: tuple[str, ...]
    used: tuple[int, int]
    image: Path

    @property
    def spec(self) -> str:
        return f"{self.layout}:{self.root}"

    @property
    def used_names(self) -> tuple[str, str]:
        return self.class_names[self.used[0]], self.class_names[self.used[1]]


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (0/1) with a 4-neighbour of the other value (VOC's 255 object border)."""
    m = mask.astype(bool)
    p = np.pad(m, 1, mode="edge")
    other = (p[:-2, 1:-1] != m) | (p[2:, 1:-1] != m) | (p[1:-1, :-2] != m) | (p[1:-1, 2:] != m)
    return m & other


def _samples(n: int, size: tuple[int, int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [portrait_like(rng, *size) for _ in range(n)]


def _make_cityscapes(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> LayoutTree:
    # road (id 7 -> train id 0) / person (id 24 -> 11); the top rows are id 0 (unlabeled -> ignore)
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        for i, (img, mask) in enumerate(_samples(n, size, s)):
            ids = np.where(mask == 1, 24, 7).astype(np.uint8)
            ids[:2] = 0
            city = ("aachen", "bremen")[i % 2] if split == "train" else "frankfurt"
            write_cityscapes_sample(root, split, city, f"{city}_{i:06d}_000019", img, ids)
    image = next((root / "leftImg8bit" / "val" / "frankfurt").glob("*.png"))
    return LayoutTree("cityscapes", root, CITYSCAPES_CLASSES, (0, 11), image)


def _make_camvid(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> LayoutTree:
    # road (3) / pedestrian (9); the top rows are Unlabelled (11 -> ignore)
    base = root / "CamVid"
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        for i, (img, mask) in enumerate(_samples(n, size, s)):
            label = np.where(mask == 1, 9, 3).astype(np.uint8)
            label[:2] = 11
            write_camvid_sample(base, split, f"0001TP_{split}_{i:04d}", img, label)
    return LayoutTree("camvid", root, CAMVID_CLASSES, (3, 9), next((base / "val").glob("*.png")))


def _make_voc(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> LayoutTree:
    # background (0) / person (15) with VOC's 255 border around the object
    base = voc_base(root)
    names = {"train": [], "val": []}
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        for i, (img, mask) in enumerate(_samples(n, size, s)):
            label = np.where(mask == 1, 15, 0).astype(np.uint8)
            label[_edge(mask)] = 255
            name = f"20{7 + (split == 'val'):02d}_{i:06d}"
            write_voc_sample(base, name, img, label)
            names[split].append(name)
    for split, ids in names.items():
        write_voc_list(base, split, ids)
    return LayoutTree("voc", root, VOC_CLASSES, (0, 15), base / "JPEGImages" / f"{names['val'][0]}.jpg")


def _make_celebamask(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> LayoutTree:
    # small images, 512x512 part masks (the dataset's annotation size): the blob is "skin"
    base = root / "CelebAMask-HQ"
    rows = []
    idx = 0
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        for img, mask in _samples(n, size, s):
            big = np.asarray(Image.fromarray(mask * 255).resize(MASK_SIZE[::-1], Image.NEAREST))
            write_celebamask_image(base, idx, img)
            write_celebamask_parts(base, idx, {"skin": big})
            rows.append((idx, 1000 + idx if split == "train" else 170000 + idx))  # CelebA's partition
            idx += 1
    write_celebamask_mapping(base, rows)
    return LayoutTree("celebamask", root, CELEBAMASK_CLASSES, (0, 1), base / "CelebA-HQ-img" / f"{n_train}.jpg")


def _make_folder(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> LayoutTree:
    make_folder_dataset(root, n_train=n_train, n_val=n_val, size=size, seed=seed)
    (root / "classes.txt").write_text("background\nperson\n")
    return LayoutTree("folder", root, ("background", "person"), (0, 1), root / "val" / "images" / "0000.png")


def _make_eg1800(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> LayoutTree:
    make_eg1800(root, n_train=n_train, n_val=n_val, size=size, seed=seed)
    image = root / "Portrait" / "images_data_crop" / f"{n_train + 1:05d}.jpg"
    return LayoutTree("eg1800", root, ("background", "person"), (0, 1), image)


MAKERS: dict[str, Callable[..., LayoutTree]] = {
    "folder": _make_folder,
    "eg1800": _make_eg1800,
    "cityscapes": _make_cityscapes,
    "camvid": _make_camvid,
    "voc": _make_voc,
    "celebamask": _make_celebamask,
}


def make_layout(layout: str, root: Path, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (64, 64),
                seed: int = 0) -> LayoutTree:
    """A train/val tree of ``layout`` under ``root`` with ``n_train`` / ``n_val`` images of
    ``size`` (H, W) showing the ``portrait_like`` blob in the layout's raw label values."""
    root.mkdir(parents=True, exist_ok=True)
    return MAKERS[layout](root, n_train, n_val, size, seed)


__all__ = ["LAYOUTS", "LayoutTree", "make_layout", "random_rgb", "write_cityscapes_sample", "write_camvid_sample",
           "write_camvid_list", "save_palette_png", "voc_base", "write_voc_sample", "write_voc_list",
           "write_celebamask_image", "write_celebamask_parts", "write_celebamask_mapping"]
