"""The command line end to end on generated inputs: predict (image, folder, video), train, eval,
and one clear line + non-zero exit for bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rtseg.cli import main
from tests.conftest import parity_fixture
from tests.toydata import make_folder_dataset, portrait_like, write_video


@pytest.fixture
def official_sinet():
    return str(parity_fixture("sinet_official_eg1800.pth"))


def test_models_lists_sinet(capsys):
    assert main(["models"]) == 0
    assert "sinet" in capsys.readouterr().out


def test_predict_image_writes_mask_overlay_cutout(tmp_path, official_sinet, capsys, monkeypatch):
    monkeypatch.delenv("RTSEG_BACKEND", raising=False)  # the real default: auto
    img, _ = portrait_like(np.random.default_rng(1), 90, 70)
    Image.fromarray(img).save(tmp_path / "p.png")
    assert main(["predict", str(tmp_path / "p.png"), "--weights", official_sinet, "--out", str(tmp_path / "o")]) == 0
    mask = np.asarray(Image.open(tmp_path / "o" / "p_mask.png"))
    assert mask.shape == (90, 70) and set(np.unique(mask)) <= {0, 1}
    overlay = np.asarray(Image.open(tmp_path / "o" / "p_overlay.png"))
    assert overlay.shape == (90, 70, 3)
    cut = Image.open(tmp_path / "o" / "p_cutout.png")
    assert cut.mode == "RGBA" and cut.size == (70, 90)
    out = capsys.readouterr().out
    assert "clovaai" in out  # says which weights were used
    from rtseg.fast import resolve_backend

    assert f"backend: {resolve_backend('auto', 'sinet')}" in out  # the fast path is the default
    # and it gives the eager mask; --backend eager really runs the module itself (nothing is folded)
    import rtseg.fast

    def no_simplify(model):
        raise AssertionError("--backend eager built a fast copy")

    monkeypatch.setattr(rtseg.fast, "simplify", no_simplify)
    assert main(["predict", str(tmp_path / "p.png"), "--weights", official_sinet, "--out", str(tmp_path / "e"),
                 "--backend", "eager"]) == 0
    assert "backend: eager" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e" / "p_mask.png")), mask)


def test_predict_folder_and_video(tmp_path, official_sinet):
    rng = np.random.default_rng(2)
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray(portrait_like(rng, 64, 64)[0]).save(tmp_path / "in" / f"{i}.jpg")
    frames = [portrait_like(rng, 64, 80)[0] for _ in range(5)]
    write_video(tmp_path / "in" / "clip.mp4", frames)
    assert main(["predict", str(tmp_path / "in"), "--weights", official_sinet, "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "o" / "clip_overlay.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5
    assert (tmp_path / "o" / "0_mask.png").exists() and (tmp_path / "o" / "1_overlay.png").exists()
    assert not list((tmp_path / "o").glob(".*tmp*"))


def test_train_eval_resume_cli(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "d", n_train=8, n_val=2)
    args = ["train", "--data", f"folder:{data}", "--out", str(tmp_path / "run"), "--batch-size", "4", "--size", "64",
            "--no-progress", "--epochs"]
    assert main(args + ["1"]) == 0
    assert main(args + ["2", "--resume"]) == 0
    assert main(["eval", "--weights", str(tmp_path / "run" / "best.pt"), "--data", f"folder:{data}",
                 "--json", str(tmp_path / "m.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "person" in out and "mIoU" in out
    assert (tmp_path / "m.json").exists()


@pytest.mark.parametrize("case", ["unknown_model", "missing_file", "text_as_png", "empty_file", "wrong_ckpt",
                                  "corrupt_ckpt", "bad_video"])
def test_bad_input_one_line(tmp_path, capsys, case):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    args = ["predict", str(good), "--out", str(tmp_path / "o")]
    if case == "unknown_model":
        args += ["--model", "nonet"]
    elif case == "missing_file":
        args[1] = str(tmp_path / "nope.png")
    elif case == "text_as_png":
        (tmp_path / "t.png").write_text("hello")
        args[1] = str(tmp_path / "t.png")
    elif case == "empty_file":
        (tmp_path / "e.png").write_bytes(b"")
        args[1] = str(tmp_path / "e.png")
    elif case == "wrong_ckpt":
        import torch

        torch.save({"conv.weight": torch.zeros(1, 1, 1, 1)}, tmp_path / "w.pth")
        args += ["--weights", str(tmp_path / "w.pth")]
    elif case == "corrupt_ckpt":
        (tmp_path / "c.pth").write_bytes(b"PK\x03\x04garbage" * 10)
        args += ["--weights", str(tmp_path / "c.pth")]
    elif case == "bad_video":
        (tmp_path / "v.mp4").write_bytes(b"\x00" * 100)
        args[1] = str(tmp_path / "v.mp4")
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("rtseg predict: error:")
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True
