"""Reading images and masks with one-line errors that name the file.

Unusual but valid inputs just work: greyscale, RGBA (alpha dropped), palette, 16-bit and
EXIF-rotated images become RGB uint8. Broken ones (zero bytes, truncated, not an image, a header
that claims more than ``max_pixels``) raise :class:`~rtseg.errors.DataError`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from ..fileio import atomic_write

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
#: Default refusal limit for decoding: 8192 x 8192 = 64 Mi pixels (a 50-61 MP camera photo
#: passes). A larger header is refused before any pixel is decoded, so memory stays bounded
#: (README, "Limits"). Override with the ``max_pixels`` argument / ``rtseg predict --max-pixels``.
DEFAULT_MAX_PIXELS = 8192 * 8192


def open_image_header(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` lazily: only the header is parsed (format, mode, size), no pixel is decoded.

    Refuses missing, empty and unrecognised files and a size above ``max_pixels`` before any
    pixel memory is allocated, so a 20000x20000 header costs nothing.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected an image file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(p)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Exception:
        raise DataError(f"{p}: not a readable image (unknown or corrupt format)") from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise DataError(f"{p}: image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                        f"(raise it with --max-pixels)")
    if w < 1 or h < 1:
        raise DataError(f"{p}: image has an empty size {w}x{h}")
    return img


def _open(path: PathLike, max_pixels: Optional[int]) -> Image.Image:
    img = open_image_header(path, max_pixels)
    try:
        img.load()
    except Exception as e:
        raise DataError(f"{path}: image data is truncated or corrupt ({type(e).__name__})") from None
    return img


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB (16-bit scaled to 8 bit, alpha dropped, EXIF applied)."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        maxv = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / maxv * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def pil_to_rgb(img: Image.Image, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An already opened PIL image -> RGB uint8 (H, W, 3) with :func:`read_image`'s checks (pixel
    limit, truncated data), errors named by the image's file name when it has one."""
    w, h = img.size
    name = getattr(img, "filename", "") or f"PIL image ({img.mode}, {w}x{h})"
    if max_pixels is not None and w * h > max_pixels:
        raise DataError(f"{name}: image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                        f"(raise it with --max-pixels)")
    try:
        return to_rgb_array(img)
    except Exception as e:
        raise DataError(f"{name}: image data is truncated or corrupt ({type(e).__name__})") from None


def read_image(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as an RGB uint8 array (H, W, 3)."""
    img = _open(path, max_pixels)
    try:
        return to_rgb_array(img)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot convert image of mode {img.mode} to RGB ({type(e).__name__})") from None


def read_mask(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a label map as (H, W) uint8 class ids.

    Palette PNGs give their indices (VOC style), greyscale gives its values, 16-bit values must fit
    in 0..255; an RGB mask is accepted only when its three channels are equal.
    """
    img = _open(path, max_pixels)
    if img.mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise DataError(f"{path}: mask values {int(arr.min())}..{int(arr.max())} do not fit class ids 0..255")
        return arr.astype(np.uint8)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(img.convert("RGB"))
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(f"{path}: mask is a colour image; expected class ids (greyscale or palette PNG)")
        return arr[..., 0].copy()
    raise DataError(f"{path}: unsupported mask mode {img.mode}")


def list_images(folder: PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def check_output_dir(path: PathLike) -> Path:
    """Refuse an output folder that cannot be created or written, without creating anything.

    The message starts with the path at fault: the folder itself, or the nearest existing
    ancestor when that is a regular file or not writable.
    """
    p = Path(path)
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        what = "exists and is not a folder" if probe == p else f"is not a folder, cannot create {p} inside it"
        raise DataError(f"{probe}: {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"{probe}: folder is not writable" + ("" if probe == p else f", cannot create {p}"))
    return p


def ensure_output_dir(path: PathLike) -> Path:
    """:func:`check_output_dir`, then create the folder (with its parents)."""
    p = check_output_dir(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{p}: cannot create output folder ({e.strerror or e})") from None
    return p


def save_png_atomic(array: np.ndarray, path: PathLike, palette: Optional[np.ndarray] = None) -> None:
    """Write a PNG atomically (temp file + rename), so an interrupted run never leaves half a file."""
    path = Path(path)
    ensure_output_dir(path.parent)
    img = Image.fromarray(array)
    if palette is not None and array.ndim == 2:
        img = img.convert("P")
        flat = np.zeros((256, 3), np.uint8)
        flat[: len(palette)] = palette[:256]
        img.putpalette(flat.reshape(-1).tolist())
    atomic_write(path, lambda f: img.save(f, format="PNG"))
