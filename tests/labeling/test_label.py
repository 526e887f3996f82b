"""`rtseg label`: real photos + a generated video -> EG1800-style pseudo-labelled dataset."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rtseg import cli
from rtseg.data.datasets import SegmentationDataset, read_eg1800
from rtseg.data.io import read_mask
from rtseg.errors import RtsegError
from rtseg.labeling.faces import FaceBox, HaarFaceDetector, LbpFaceDetector, main_faces, make_face_detector
from rtseg.labeling.layout import DatasetLayout, read_queue
from rtseg.labeling.pipeline import (LabelOptions, assign_splits, combine_teachers, face_weight_map,
                                     label_dataset, sample_id)
from tests.conftest import parity_fixture
from tests.labeling.inputs import ASTRONAUT_FACE, EllipseTeacher, astronaut, make_inputs, no_face_image


def _sinet_spec() -> str:
    return f"sinet:{parity_fixture('sinet_official_eg1800.pth')}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def labelled(inputs, tmp_path_factory):
    """One `rtseg label` run with the official SINet over 3 photos and the video."""
    out = tmp_path_factory.mktemp("ds") / "portraits"
    argv = ["label", str(inputs["astronaut"]), str(inputs["mirror"]), str(inputs["noface"]), str(inputs["video"]),
            "--out", str(out), "--teacher", _sinet_spec(), "--every-seconds", "0.5", "--no-progress"]
    return out, argv


def _run(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- face detectors ---------------------------------------------------------------------------

def _centre_in(box: FaceBox, ref: tuple[int, int, int, int]) -> bool:
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return ref[0] <= cx <= ref[2] and ref[1] <= cy <= ref[3]


@pytest.mark.parametrize("name", ["haar", "lbp"])
def test_cascade_finds_astronaut_face_and_nothing_in_noise(name):
    if name == "haar" and not HaarFaceDetector.available():
        import cv2

        pytest.skip(f"OpenCV {cv2.__version__} has no cv2.CascadeClassifier / bundled Haar cascades "
                    f"(OpenCV 5 moved them out of the main wheel)")
    if name == "lbp" and not LbpFaceDetector.available():
        pytest.skip("scikit-image not installed")
    detector = make_face_detector(name)
    faces = main_faces(detector.detect(astronaut()))
    assert len(faces) == 1 and _centre_in(faces[0], ASTRONAUT_FACE), faces
    assert 60 <= faces[0].width <= 160
    # at 4x the size the boxes scale back to full resolution
    import cv2

    big = cv2.resize(astronaut(), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    big_faces = main_faces(detector.detect(big))
    assert big_faces and _centre_in(big_faces[0], tuple(2 * v for v in ASTRONAUT_FACE))
    assert detector.detect(no_face_image()) == []


def test_face_detector_errors_are_one_line():
    with pytest.raises(RtsegError, match="unknown face detector 'yolo'"):
        make_face_detector("yolo")
    if importlib.util.find_spec("mediapipe") is None:
        with pytest.raises(RtsegError, match="mediapipe package is not installed"):
            make_face_detector("mediapipe")


def test_main_faces_drops_small_false_positives():
    big, small = FaceBox(100, 100, 200, 200), FaceBox(10, 10, 30, 30)
    assert main_faces([small, big]) == [big]
    assert main_faces([]) == []


# --- combining teachers -----------------------------------------------------------------------

def test_combine_agreeing_confident_teachers_gives_confidence_one():
    p = np.zeros((40, 60), np.float32)
    p[10:30, 20:40] = 0.95
    c = combine_teachers([p, np.clip(p + 0.02, 0, 1)], [FaceBox(25, 12, 35, 22)])
    assert c.confidence == pytest.approx(1.0)
    assert c.mask.sum() == 400 and set(np.unique(c.mask)) == {0, 1}
    assert c.teacher_iou == [1.0, 1.0]


def test_combine_penalises_disagreement_and_hesitation_more_near_the_face():
    h, w = 100, 100
    face = [FaceBox(40, 10, 60, 30)]
    base = np.zeros((h, w), np.float32)
    base[10:90, 30:70] = 0.9
    near, far = base.copy(), base.copy()
    near[25:35, 45:55] = 0.1      # a teacher disagrees under the face
    far[90:100, 0:10] = 0.9       # same area of disagreement in a far corner
    conf_near = combine_teachers([base, near], face).confidence
    conf_far = combine_teachers([base, far], face).confidence
    assert conf_near < conf_far < 1.0
    hesitant = np.where(base > 0.5, 0.6, 0.4).astype(np.float32)  # right labels, low certainty
    assert combine_teachers([hesitant], face).confidence == pytest.approx(0.0)
    # weights: 1 far away, up to 1 + 3 half a face below the face centre
    wmap = face_weight_map(400, 400, face)
    assert wmap[30, 50] == pytest.approx(4.0) and wmap[399, 399] < 1.01 and wmap.min() >= 1.0
    assert wmap[30, 50 + 30] == pytest.approx(1 + 3 * np.exp(-0.5))  # one sigma (1.5 face widths) aside


def test_split_is_by_source_stable_and_non_empty():
    sources = [f"/photos/{i}.jpg" for i in range(5)]
    a = assign_splits(sources, 0.1)
    assert a == assign_splits(list(reversed(sources)), 0.1)
    assert "val" in a.values() and "train" in a.values()
    assert set(assign_splits(sources, 0.0).values()) == {"train"}
    # a video's frames all go where its source goes
    assert set(assign_splits(["/one.mp4"] * 7 + ["/two.jpg"], 0.5).values()) == {"train", "val"}


def test_sample_ids_are_deterministic_and_distinct(tmp_path):
    v = tmp_path / "My clip!.mp4"
    assert sample_id(v, 10) == sample_id(str(v), 10)
    assert sample_id(v, 10) != sample_id(v, 15) != sample_id(v)
    assert sample_id(v, 10).startswith("My-clip_f000010_")


# --- the command ------------------------------------------------------------------------------

def test_label_writes_eg1800_dataset_and_queue(labelled, inputs, capsys):
    out, argv = labelled
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    # 2 photos + 8 sampled video frames (0,5,...,35); 15 and 25 repeat 10 and 20
    assert "labelled 4 new, 0 already done; dropped 5 without a face and 2 near-duplicate frames" in stdout

    samples = []
    for split in ("train", "val"):
        s, info = read_eg1800(out, split)
        assert info.name == "eg1800"
        samples += s
    assert len(samples) == 4
    ds = SegmentationDataset(samples, info)
    for i in range(len(ds)):
        image, mask = ds.load(i)  # validated: sizes match, labels in {0, 1}
        assert image.shape[:2] == mask.shape and mask.max() == 1

    queue = read_queue(out)
    items = queue["items"]
    conf = [it["confidence"] for it in items]
    assert conf == sorted(conf) and all(0.0 <= c <= 1.0 for c in conf)
    assert queue["teachers"] == ["sinet"] and queue["face_detector"] in ("mediapipe", "haar", "lbp")
    by_source = {}
    for it in items:
        by_source.setdefault(Path(it["source"]).name, []).append(it)
    assert "noface.png" not in by_source
    assert sorted(it["frame"] for it in by_source[inputs["video"].name]) == [10, 20]
    assert {it["split"] for it in by_source[inputs["video"].name]} in ({"train"}, {"val"})  # one split per source
    layout = DatasetLayout(out)
    for it in items:
        assert it["faces"] and len(it["faces"][0]["box"]) == 4
        assert set(it["teacher_masks"]) == {"sinet"} and layout.resolve(it["teacher_masks"]["sinet"]).is_file()
        gt = read_mask(layout.resolve(it["mask"]))
        assert set(np.unique(gt)) <= {0, 255}
        assert np.array_equal(gt, read_mask(layout.resolve(it["pseudo_mask"])))

    # the astronaut photo: the face box is where her face is and the pseudo mask covers it
    photo = by_source["astronaut.png"][0]
    assert photo["frame"] is None and photo["size"] == [512, 512]
    x0, y0, x1, y1 = photo["faces"][0]["box"]
    assert _centre_in(FaceBox(x0, y0, x1, y1), ASTRONAUT_FACE)
    gt = read_mask(layout.resolve(photo["mask"]))
    assert gt[y0:y1, x0:x1].mean() > 0.8 * 255 and gt[:, 480:].mean() < 0.2 * 255
    assert photo["confidence"] > 0.7

    # the dropped no-face image is recorded, so a re-run does not look at it again
    records = [json.loads(p.read_text()) for p in layout.records_dir.glob("*.json")]
    assert sum(r["status"] == "no_face" for r in records) == 5
    assert any(r["status"] == "no_face" and r["source"].endswith("noface.png") for r in records)


def test_rerun_skips_finished_items_and_resumes(labelled, capsys):
    out, argv = labelled
    if not (out / "queue.json").exists():
        assert _run(argv, capsys)[0] == 0
    layout = DatasetLayout(out)
    queue = read_queue(out)
    stamps = {p: p.stat().st_mtime_ns for p in layout.gt_dir.iterdir()}
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0
    assert "labelled 0 new, 9 already done" in stdout
    assert {p: p.stat().st_mtime_ns for p in layout.gt_dir.iterdir()} == stamps
    assert read_queue(out)["items"] == queue["items"]

    # an interrupted run: one sample's record never got written -> only that one is redone
    victim = queue["items"][0]["name"]
    layout.record_path(victim).unlink()
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0 and "labelled 1 new, 8 already done" in stdout
    assert [it["name"] for it in read_queue(out)["items"]] == [it["name"] for it in queue["items"]]


def test_two_teachers_store_both_masks_and_disagreement_lowers_confidence(inputs, tmp_path, capsys):
    import rtseg

    random_ckpt = tmp_path / "random_sinet.pth"
    rtseg.save_model(rtseg.create_model("sinet"), random_ckpt)  # an untrained (disagreeing) teacher
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["label", str(inputs["astronaut"]), "--teacher", _sinet_spec(), "--no-progress"]
    assert _run(base + ["--out", str(one)], capsys)[0] == 0
    assert _run(base + ["--out", str(two), "--teacher", f"sinet:{random_ckpt}"], capsys)[0] == 0
    (item1,), (item2,) = read_queue(one)["items"], read_queue(two)["items"]
    assert item1["name"] == item2["name"]  # ids depend on the source, not on the run
    assert list(item2["teacher_masks"]) == ["sinet", "sinet-2"]
    assert read_queue(two)["teachers"] == ["sinet", "sinet-2"]
    layout = DatasetLayout(two)
    masks = [read_mask(layout.resolve(p)) for p in item2["teacher_masks"].values()]
    assert not np.array_equal(masks[0], masks[1])
    assert item2["confidence"] < item1["confidence"] - 0.2
    assert item2["teacher_iou"]["sinet"] != item2["teacher_iou"]["sinet-2"]

    # a dataset is made by one set of teachers: re-running with others is refused
    rc, _, err = _run(base + ["--out", str(two)], capsys)
    assert rc == 2 and "was labelled with teachers ['sinet', 'sinet-2']" in err and len(err.strip().splitlines()) == 1


def test_library_api_with_stand_in_teachers(inputs, tmp_path):
    report = label_dataset([inputs["astronaut"], inputs["noface"]], tmp_path / "ds",
                           [EllipseTeacher("wide", 0.9), EllipseTeacher("narrow", 0.6)],
                           make_face_detector("lbp"), LabelOptions(val_fraction=0.0), progress=False)
    assert (report.labelled, report.no_face, report.items) == (1, 1, 1)
    (item,) = read_queue(tmp_path / "ds")["items"]
    assert list(item["teacher_masks"]) == ["wide", "narrow"] and item["split"] == "train"


def test_no_teacher_is_a_clear_error(inputs, tmp_path, capsys):
    rc, out, err = _run(["label", str(inputs["astronaut"]), "--out", str(tmp_path / "ds")], capsys)
    assert rc == 2 and "no teacher" in err and "--teacher" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_mediapipe_teacher_without_mediapipe_is_a_clear_error(inputs, tmp_path, capsys):
    if importlib.util.find_spec("mediapipe") is not None:
        pytest.skip("mediapipe is installed here")
    rc, _, err = _run(["label", str(inputs["astronaut"]), "--out", str(tmp_path / "ds"),
                       "--teacher", "mediapipe"], capsys)
    assert rc == 2 and "mediapipe package is not installed" in err


@pytest.mark.parametrize("case", ["broken_image", "broken_video", "missing", "weights_missing", "bad_model"])
def test_unreadable_input_is_one_line_naming_it(case, inputs, tmp_path, capsys):
    teacher = _sinet_spec()
    if case == "broken_image":
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"this is not a jpeg")
    elif case == "broken_video":
        bad = tmp_path / "broken.mp4"
        bad.write_bytes(b"\x00garbage" * 64)
    elif case == "missing":
        bad = tmp_path / "nowhere.png"
    elif case == "weights_missing":
        bad, teacher = tmp_path / "nowhere.pth", f"sinet:{tmp_path / 'nowhere.pth'}"
    else:
        bad, teacher = "no_such_model", f"no_such_model:{parity_fixture('sinet_official_eg1800.pth')}"
    photo = bad if case in ("broken_image", "broken_video", "missing") else inputs["astronaut"]
    rc, _, err = _run(["label", str(photo), "--out", str(tmp_path / "ds"), "--teacher", teacher, "--no-progress"],
                      capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("rtseg")]
    assert rc == 2 and len(lines) == 1 and str(bad) in lines[0], err


def test_skip_bad_goes_on(inputs, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(inputs["astronaut"], folder / "a.png")
    shutil.copy(bad, folder / "b.jpg")
    rc, out, _ = _run(["label", str(folder), "--out", str(tmp_path / "ds"), "--teacher", _sinet_spec(),
                       "--skip-bad", "--no-progress"], capsys)
    assert rc == 0 and "labelled 1 new" in out and "skipped 1 unreadable inputs" in out
    # the dataset folder inside an input folder is not read back as input
    (folder / "ds").mkdir()
    rc, out, _ = _run(["label", str(folder), "--out", str(folder / "ds"), "--teacher", _sinet_spec(),
                       "--skip-bad", "--no-progress"], capsys)
    assert rc == 0 and "labelled 1 new, 0 already done" in out


def test_mediapipe_detector_and_teacher_when_installed(inputs, tmp_path, capsys):
    """Runs where mediapipe (optional, with its bundled legacy models) is installed."""
    pytest.importorskip("mediapipe", reason="mediapipe is optional and not installed here")
    from rtseg.labeling.faces import MediaPipeFaceDetector

    if not MediaPipeFaceDetector.available():
        pytest.skip("this mediapipe has no bundled models (mp.solutions was removed)")
    out = tmp_path / "ds"
    rc, stdout, err = _run(["label", str(inputs["astronaut"]), "--out", str(out), "--teacher", _sinet_spec(),
                            "--teacher", "mediapipe", "--face-detector", "mediapipe", "--no-progress"], capsys)
    assert rc == 0, err
    (item,) = read_queue(out)["items"]
    assert list(item["teacher_masks"]) == ["sinet", "mediapipe"] and read_queue(out)["face_detector"] == "mediapipe"
    x0, y0, x1, y1 = item["faces"][0]["box"]
    assert _centre_in(FaceBox(x0, y0, x1, y1), ASTRONAUT_FACE) and 0 < item["faces"][0]["score"] <= 1
    selfie = read_mask(DatasetLayout(out).resolve(item["teacher_masks"]["mediapipe"]))
    assert selfie[y0:y1, x0:x1].mean() > 0.8 * 255 and item["teacher_iou"]["mediapipe"] > 0.6
