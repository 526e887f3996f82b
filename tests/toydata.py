"""Tiny generated datasets for the tests (no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def portrait_like(rng: np.random.Generator, h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a bright 'head and shoulders' blob; mask 1 on the blob."""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = rng.integers(0, 90, size=(h, w, 3)).astype(np.float32)
    bg += np.linspace(0, 40, w)[None, :, None]
    cy, cx = rng.uniform(0.35, 0.5) * h, rng.uniform(0.35, 0.65) * w
    r = rng.uniform(0.13, 0.2) * min(h, w)
    head = ((yy - cy) / r) ** 2 + ((xx - cx) / (0.8 * r)) ** 2 <= 1
    body = ((yy - (cy + 2.4 * r)) / (1.6 * r)) ** 2 + ((xx - cx) / (2.0 * r)) ** 2 <= 1
    mask = (head | body).astype(np.uint8)
    colour = np.array([rng.uniform(170, 255), rng.uniform(120, 200), rng.uniform(90, 160)], np.float32)
    img = np.where(mask[..., None] == 1, colour + rng.normal(0, 8, size=(h, w, 3)), bg)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_folder_dataset(root: Path, n_train: int = 12, n_val: int = 4, size: tuple[int, int] = (64, 64),
                        seed: int = 0) -> Path:
    """``root/{train,val}/{images,masks}`` in the plain folder layout."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = portrait_like(rng, *size)
            Image.fromarray(img).save(root / split / "images" / f"{i:04d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:04d}.png")
    return root


def make_eg1800(root: Path, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "Portrait"
    (base / "images_data_crop").mkdir(parents=True)
    (base / "GT_png").mkdir(parents=True)
    ids = list(range(1, n_train + n_val + 1))
    for i in ids:
        img, mask = portrait_like(rng, *size)
        Image.fromarray(img).save(base / "images_data_crop" / f"{i:05d}.jpg", quality=95)
        Image.fromarray(mask * 255).save(base / "GT_png" / f"{i:05d}_mask.png")
    (base / "train.txt").write_text("\n".join(str(i) for i in ids[:n_train]) + "\n")
    (base / "val.txt").write_text("\n".join(str(i) for i in ids[n_train:]) + "\n")
    return root


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    import cv2

    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        wr.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    wr.release()
    return path
