"""A corpus of bad (and merely unusual) inputs run through every entry point.

Each case is a small generator function that writes its input into a temporary folder and
returns a :class:`Scenario`; the table ``CASES x ENTRIES`` runs it through ``rtseg predict``,
``train``, ``eval``, ``label``, ``export`` (when those commands exist) and the Python API.

For a bad input every CLI run must give: a non-zero exit code, exactly one stderr line
``rtseg CMD: error: <the file it is about>: <what is wrong>``, no traceback, no half-written
output and no existing output overwritten. The API must raise an :class:`RtsegError` subclass
whose message starts with the same file. Unusual but valid inputs (greyscale, RGBA, palette,
16-bit, CMYK, EXIF-rotated, 1x1) must just work.
"""
from __future__ import annotations

import importlib.util
import io
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from PIL import Image

import rtseg
from rtseg.cli import COMMANDS, main
from rtseg.data.io import DEFAULT_MAX_PIXELS
from rtseg.errors import RtsegError
from tests.toydata import make_eg1800, portrait_like

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # every generated image is tiny; SINet pads to 32


# --- shared resources --------------------------------------------------------------------------

@dataclass
class Kit:
    """Good inputs shared by all cases (made once per module)."""

    root: Path
    weights: Path      # an rtseg checkpoint of a random 2-class SINet
    cgnet_rtseg: Path  # an rtseg checkpoint of another architecture (CGNet)
    cgnet_sd: Path     # a bare state_dict of CGNet (looks like an "official" checkpoint)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    root = tmp_path_factory.mktemp("kit")
    torch.manual_seed(0)
    rtseg.save_model(rtseg.create_model("sinet", num_classes=2), root / "sinet.pt")
    cgnet = rtseg.create_model("cgnet", num_classes=2, M=1, N=1)
    rtseg.save_model(cgnet, root / "cgnet.pt")
    torch.save({"model": cgnet.state_dict()}, root / "cgnet_official.pth")
    return Kit(root, root / "sinet.pt", root / "cgnet.pt", root / "cgnet_official.pth")


def _png_bytes(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def _photo(h: int = SIZE, w: int = SIZE, seed: int = 0) -> np.ndarray:
    return portrait_like(np.random.default_rng(seed), h, w)[0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (8-bit RGB) followed by one tiny IDAT: the
    header of a huge image without its pixels (decoding it would need width*height*3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


# --- scenarios -------------------------------------------------------------------------------

@dataclass
class Scenario:
    """What one case changes in an otherwise good run (unset fields keep the good input)."""

    image: Optional[Path] = None      # an input image; in train/eval it replaces one dataset image
    mask: Optional[Path] = None       # replaces one dataset mask (train/eval)
    data: Optional[str] = None        # a whole dataset spec (train/eval)
    video: Optional[Path] = None      # an input video (predict/label)
    model: str = "sinet"
    model_kwargs: list[str] = field(default_factory=list)
    weights: Optional[Path] = None    # replaces the good checkpoint
    out: Optional[Path] = None        # an output location that cannot be written
    blame: str = ""                   # the error message must start with this (the file it is about)
    shape: Optional[tuple[int, int]] = None  # valid cases: (H, W) of the image as displayed


Maker = Callable[[Path, Kit], Scenario]
IMAGE_ENTRIES = ("predict", "train", "eval", "label", "api")
DATA_ENTRIES = ("train", "eval", "api")
MODEL_ENTRIES = ("predict", "train", "eval", "label", "export", "api")
VIDEO_ENTRIES = ("predict", "label", "api")
OUT_ENTRIES = ("predict", "train", "eval", "label", "export", "api")


@dataclass(frozen=True)
class Case:
    name: str
    make: Maker
    entries: tuple[str, ...]
    valid: bool = False   # unusual but valid: must just work
    match: str = ""       # a word the message must contain (case-insensitive)


CASES: list[Case] = []


def case(entries: tuple[str, ...], valid: bool = False, match: str = "") -> Callable[[Maker], Maker]:
    def register(fn: Maker) -> Maker:
        CASES.append(Case(fn.__name__, fn, entries, valid, match))
        return fn

    return register


def _image(d: Path, name: str, data: bytes, **kw) -> Scenario:
    p = d / name
    p.write_bytes(data)
    return Scenario(image=p, blame=str(p), **kw)


# broken images

@case(IMAGE_ENTRIES, match="truncated")
def truncated_jpeg(d: Path, kit: Kit) -> Scenario:
    data = _jpeg_bytes(Image.fromarray(_photo()))
    return _image(d, "cut.jpg", data[: len(data) * 2 // 3])


@case(IMAGE_ENTRIES, match="truncated")
def truncated_png(d: Path, kit: Kit) -> Scenario:
    data = _png_bytes(_photo(), compress_level=0)
    return _image(d, "cut.png", data[: len(data) // 2])


@case(IMAGE_ENTRIES, match="empty")
def zero_byte_file(d: Path, kit: Kit) -> Scenario:
    return _image(d, "zero.png", b"")


@case(IMAGE_ENTRIES, match="not a readable image")
def text_named_png(d: Path, kit: Kit) -> Scenario:
    return _image(d, "notes.png", b"this is a text file, not a picture\n" * 3)


@case(IMAGE_ENTRIES, match=f"limit of {DEFAULT_MAX_PIXELS:,}")
def huge_header_20000x20000(d: Path, kit: Kit) -> Scenario:
    return _image(d, "huge.png", png_header_only(20000, 20000))


@case(("predict", "label", "api"), match="not found")
def missing_image(d: Path, kit: Kit) -> Scenario:
    return Scenario(image=d / "nope.png", blame=str(d / "nope.png"))


# unusual but valid images

@case(IMAGE_ENTRIES, valid=True)
def greyscale_png(d: Path, kit: Kit) -> Scenario:
    return _image(d, "grey.png", _png_bytes(_photo()[..., 0]), shape=(SIZE, SIZE))


@case(IMAGE_ENTRIES, valid=True)
def greyscale_jpeg(d: Path, kit: Kit) -> Scenario:
    return _image(d, "grey.jpg", _jpeg_bytes(Image.fromarray(_photo()[..., 1])), shape=(SIZE, SIZE))


@case(IMAGE_ENTRIES, valid=True)
def rgba_png(d: Path, kit: Kit) -> Scenario:
    rgba = np.dstack([_photo(), np.full((SIZE, SIZE), 128, np.uint8)])
    return _image(d, "rgba.png", _png_bytes(rgba), shape=(SIZE, SIZE))


@case(IMAGE_ENTRIES, valid=True)
def palette_png(d: Path, kit: Kit) -> Scenario:
    img = Image.fromarray(_photo()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _image(d, "palette.png", buf.getvalue(), shape=(SIZE, SIZE))


@case(IMAGE_ENTRIES, valid=True)
def sixteen_bit_png(d: Path, kit: Kit) -> Scenario:
    grey16 = (_photo()[..., 0].astype(np.uint16) * 257)
    return _image(d, "deep.png", _png_bytes(grey16), shape=(SIZE, SIZE))


@case(IMAGE_ENTRIES, valid=True)
def rgb_48bit_png(d: Path, kit: Kit) -> Scenario:
    import cv2

    ok, data = cv2.imencode(".png", _photo().astype(np.uint16) * 257)  # 16 bits per channel
    assert ok
    return _image(d, "deep_rgb.png", data.tobytes(), shape=(SIZE, SIZE))


@case(IMAGE_ENTRIES, valid=True)
def cmyk_jpeg(d: Path, kit: Kit) -> Scenario:
    return _image(d, "cmyk.jpg", _jpeg_bytes(Image.fromarray(_photo()).convert("CMYK")), shape=(SIZE, SIZE))


@case(IMAGE_ENTRIES, valid=True)
def exif_rotated_jpeg(d: Path, kit: Kit) -> Scenario:
    """Stored 48 wide x 32 high with orientation 6 (rotate 90 degrees clockwise to display):
    displayed 32 wide x 48 high, so the mask must be 48x32 (H x W)."""
    img = Image.fromarray(_photo(32, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _image(d, "rotated.jpg", _jpeg_bytes(img, exif=exif.tobytes()), shape=(48, 32))


@case(IMAGE_ENTRIES, valid=True)
def one_by_one_png(d: Path, kit: Kit) -> Scenario:
    return _image(d, "dot.png", _png_bytes(np.full((1, 1, 3), 200, np.uint8)), shape=(1, 1))


# bad masks and datasets

def _mask(d: Path, name: str, data: bytes) -> Scenario:
    p = d / name
    p.write_bytes(data)
    return Scenario(mask=p, blame=str(p))


@case(DATA_ENTRIES, match="mask is")
def mask_of_another_size(d: Path, kit: Kit) -> Scenario:
    return _mask(d, "small.png", _png_bytes(np.zeros((SIZE // 2, SIZE), np.uint8)))


@case(DATA_ENTRIES, match="outside the 2 classes")
def labels_outside_class_set(d: Path, kit: Kit) -> Scenario:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[:4, :4] = 7
    return _mask(d, "sevens.png", _png_bytes(m))


@case(DATA_ENTRIES, match="colour")
def colour_mask(d: Path, kit: Kit) -> Scenario:
    return _mask(d, "colour.png", _png_bytes(_photo()))


@case(DATA_ENTRIES, match="truncated")
def truncated_mask(d: Path, kit: Kit) -> Scenario:
    data = _png_bytes(np.random.default_rng(0).integers(0, 2, (SIZE, SIZE), dtype=np.uint8), compress_level=0)
    return _mask(d, "cut_mask.png", data[: len(data) // 2])


@case(DATA_ENTRIES, match="images folder not found")
def empty_dataset_folder(d: Path, kit: Kit) -> Scenario:
    (d / "empty").mkdir()
    return Scenario(data=f"folder:{d / 'empty'}", blame=str(d / "empty"))


@case(DATA_ENTRIES, match="no images found")
def dataset_without_images(d: Path, kit: Kit) -> Scenario:
    for sub in ("images", "masks"):
        (d / "ds" / sub).mkdir(parents=True)
    return Scenario(data=f"folder:{d / 'ds'}", blame=str(d / "ds" / "images"))


@case(DATA_ENTRIES, match="not found")
def missing_dataset_folder(d: Path, kit: Kit) -> Scenario:
    return Scenario(data=f"folder:{d / 'absent'}", blame=str(d / "absent"))


@case(DATA_ENTRIES, match="no mask for image")
def image_without_mask(d: Path, kit: Kit) -> Scenario:
    from tests.toydata import make_folder_dataset

    root = make_folder_dataset(d / "ds", n_train=2, n_val=2, size=(SIZE, SIZE))
    for split in ("train", "val"):
        (root / split / "masks" / "0001.png").unlink()
    return Scenario(data=f"folder:{root}", blame=str(root))


@case(DATA_ENTRIES, match="not found")
def list_file_entry_missing(d: Path, kit: Kit) -> Scenario:
    root = make_eg1800(d / "eg", n_train=4, n_val=2, size=(SIZE, SIZE))
    for name in ("train.txt", "val.txt"):
        lst = root / "Portrait" / name
        lst.write_text(lst.read_text() + "99\n")
    # EG1800 errors name the list file and line: .../Portrait/train.txt:5
    return Scenario(data=f"eg1800:{root}", blame=str(root / "Portrait"))


@case(DATA_ENTRIES, match="list file not found")
def list_file_missing(d: Path, kit: Kit) -> Scenario:
    root = make_eg1800(d / "eg", n_train=4, n_val=2, size=(SIZE, SIZE))
    for name in ("train.txt", "val.txt"):
        (root / "Portrait" / name).unlink()
    return Scenario(data=f"eg1800:{root}", blame=str(root / "Portrait"))


# models and checkpoints

@case(MODEL_ENTRIES, match="unknown model name 'nonet'")
def unknown_model_name(d: Path, kit: Kit) -> Scenario:
    return Scenario(model="nonet", blame="unknown model name")


@case(("predict", "train", "eval", "export", "api"), match="nope")
def unknown_model_option(d: Path, kit: Kit) -> Scenario:
    return Scenario(model="sinet", model_kwargs=["nope=1"], weights=None, blame="model 'sinet'")


@case(("predict", "train", "eval", "export", "api"), match="backbone")
def bad_backbone_name(d: Path, kit: Kit) -> Scenario:
    return Scenario(model="deeplabv3plus", model_kwargs=["backbone=nope", "num_classes=2"], blame="model 'deeplabv3plus'")


@case(MODEL_ENTRIES, match="cgnet")
def checkpoint_of_another_model(d: Path, kit: Kit) -> Scenario:
    return Scenario(weights=kit.cgnet_rtseg, blame=str(kit.cgnet_rtseg))


@case(MODEL_ENTRIES, match="does not fit")
def official_checkpoint_of_another_model(d: Path, kit: Kit) -> Scenario:
    return Scenario(weights=kit.cgnet_sd, blame=str(kit.cgnet_sd))


@case(MODEL_ENTRIES, match="does not fit")
def checkpoint_with_other_class_count(d: Path, kit: Kit) -> Scenario:
    sd = torch.load(kit.weights, weights_only=True)["state_dict"]
    sd = {k: (v[:1] if v.ndim and v.shape[0] == 2 else v) for k, v in sd.items()}  # 1-class heads
    torch.save(sd, d / "one_class.pth")
    return Scenario(weights=d / "one_class.pth", blame=str(d / "one_class.pth"))


@case(MODEL_ENTRIES, match="not a readable PyTorch checkpoint")
def corrupted_checkpoint(d: Path, kit: Kit) -> Scenario:
    (d / "garbage.pth").write_bytes(b"PK\x03\x04" + os.urandom(300))
    return Scenario(weights=d / "garbage.pth", blame=str(d / "garbage.pth"))


@case(MODEL_ENTRIES, match="not a readable PyTorch checkpoint")
def truncated_checkpoint(d: Path, kit: Kit) -> Scenario:
    data = kit.weights.read_bytes()
    (d / "half.pt").write_bytes(data[: len(data) // 2])
    return Scenario(weights=d / "half.pt", blame=str(d / "half.pt"))


@case(MODEL_ENTRIES, match="not a readable PyTorch checkpoint")
def checkpoint_with_code(d: Path, kit: Kit) -> Scenario:
    """A pickle that would run code (or needs classes) on load: refused by weights_only."""
    torch.save({"state_dict": {}, "extra": Path("x")}, d / "code.pt")
    return Scenario(weights=d / "code.pt", blame=str(d / "code.pt"))


@case(MODEL_ENTRIES, match="empty")
def empty_checkpoint(d: Path, kit: Kit) -> Scenario:
    (d / "empty.pt").write_bytes(b"")
    return Scenario(weights=d / "empty.pt", blame=str(d / "empty.pt"))


@case(MODEL_ENTRIES, match="not found")
def missing_checkpoint(d: Path, kit: Kit) -> Scenario:
    return Scenario(weights=d / "absent.pt", blame=str(d / "absent.pt"))


@case(MODEL_ENTRIES, match="no state_dict")
def checkpoint_without_tensors(d: Path, kit: Kit) -> Scenario:
    torch.save({"epoch": 3, "note": "hello"}, d / "meta.pt")
    return Scenario(weights=d / "meta.pt", blame=str(d / "meta.pt"))


# videos

@case(VIDEO_ENTRIES, match="video")
def video_zero_bytes(d: Path, kit: Kit) -> Scenario:
    (d / "clip.mp4").write_bytes(b"")
    return Scenario(video=d / "clip.mp4", blame=str(d / "clip.mp4"))


@case(VIDEO_ENTRIES, match="video")
def video_that_cannot_be_opened(d: Path, kit: Kit) -> Scenario:
    (d / "clip.avi").write_bytes(b"RIFF" + os.urandom(500))
    return Scenario(video=d / "clip.avi", blame=str(d / "clip.avi"))


# outputs

@case(OUT_ENTRIES, match="")
def output_under_a_file(d: Path, kit: Kit) -> Scenario:
    """An output folder that cannot be created: its parent is a regular file (works as root)."""
    (d / "file").write_text("I am a file")
    return Scenario(out=d / "file" / "out", blame=str(d / "file"))


@case(OUT_ENTRIES, match="")
def output_folder_not_writable(d: Path, kit: Kit) -> Scenario:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing (output_under_a_file covers it)")
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    return Scenario(out=ro / "out", blame=str(ro))


# --- entry points -----------------------------------------------------------------------------

def _good_image(d: Path) -> Path:
    p = d / "good.png"
    if not p.exists():
        p.write_bytes(_png_bytes(_photo(seed=3)))
    return p


def _dataset(d: Path, sc: Scenario, split: str) -> str:
    """A tiny folder dataset (4 train, 2 val, SIZE x SIZE) with the scenario's image / mask put
    in as item 0000 of ``split``."""
    if sc.data is not None:
        return sc.data
    rng = np.random.default_rng(5)
    root = d / "ds"
    for s, n in (("train", 4), ("val", 2)):
        for sub in ("images", "masks"):
            (root / s / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = portrait_like(rng, SIZE, SIZE)
            Image.fromarray(img).save(root / s / "images" / f"{i:04d}.png")
            Image.fromarray(mask).save(root / s / "masks" / f"{i:04d}.png")
    if sc.image is not None:
        (root / split / "images" / "0000.png").unlink()
        target = root / split / "images" / f"0000{sc.image.suffix}"
        target.write_bytes(sc.image.read_bytes())
        sc.blame = str(target)
        if sc.shape is not None:
            m = np.zeros(sc.shape, np.uint8)
            m[sc.shape[0] // 2:] = 1
            Image.fromarray(m).save(root / split / "masks" / "0000.png")
    if sc.mask is not None:
        target = root / split / "masks" / "0000.png"
        target.write_bytes(sc.mask.read_bytes())
        sc.blame = str(target)
    return f"folder:{root}"


def _model_args(sc: Scenario, kit: Kit, default_weights: bool = True) -> list[str]:
    args = ["--model", sc.model]
    weights = sc.weights if sc.weights is not None else (kit.weights if default_weights and not sc.model_kwargs
                                                          and sc.model == "sinet" else None)
    if weights is not None:
        args += ["--weights", str(weights)]
    if sc.model_kwargs:
        args += ["--model-kwargs", *sc.model_kwargs]
    return args


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Run:
    argv: list[str]
    out: Path                         # the folder holding the run's outputs
    strict: bool = True               # a failed run must add no file at all to ``out``
    check_ok: Callable[[], None] = lambda: None


def predict_run(d: Path, sc: Scenario, kit: Kit) -> Run:
    out = sc.out or d / "pred"
    inputs = [str(_good_image(d))]
    if sc.image is not None:
        inputs.append(str(sc.image))
    if sc.video is not None:
        inputs.append(str(sc.video))
    if sc.out is None:  # an earlier run's result that a failing run must leave alone
        out.mkdir()
        (out / "good_mask.png").write_bytes(b"earlier result")

    def ok() -> None:
        stem = sc.image.stem
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == sc.shape
        assert Image.open(out / f"{stem}_overlay.png").size == sc.shape[::-1]

    return Run(["predict", *inputs, *_model_args(sc, kit), "--out", str(out), "--no-progress"], out, check_ok=ok)


def train_run(d: Path, sc: Scenario, kit: Kit) -> Run:
    out = sc.out or d / "run"
    data = _dataset(d, sc, "train")
    if sc.out is None:
        out.mkdir()
        (out / "last.pt").write_bytes(b"an earlier run")
    model = _model_args(sc, kit, default_weights=False)
    argv = ["train", "--data", data, *model, "--out", str(out), "--epochs", "1", "--batch-size", "4",
            "--size", str(SIZE), "--no-progress"]
    return Run(argv, out, check_ok=lambda: (out / "model.pt").is_file() or pytest.fail("no model.pt"))


def eval_run(d: Path, sc: Scenario, kit: Kit) -> Run:
    out = sc.out or d / "metrics"
    data = _dataset(d, sc, "val")
    if sc.out is None:
        out.mkdir()
        (out / "m.json").write_text("earlier metrics")
    argv = ["eval", "--data", data, *_model_args(sc, kit), "--json", str(out / "m.json"), "--no-progress"]

    def ok() -> None:
        assert "miou" in (out / "m.json").read_text()

    return Run(argv, out, check_ok=ok)


def label_run(d: Path, sc: Scenario, kit: Kit) -> Run:
    from rtseg.labeling.faces import LbpFaceDetector

    if not LbpFaceDetector.available():
        pytest.skip("rtseg label needs a face detector: scikit-image (lbp) not installed")
    out = sc.out or d / "labelled"
    inputs = [str(sc.image or sc.video or _good_image(d))]
    weights = sc.weights if sc.weights is not None else kit.weights
    if sc.out is None:
        out.mkdir()
        (out / "notes.txt").write_text("kept")
    argv = ["label", *inputs, "--out", str(out), "--teacher", f"{sc.model}:{weights}", "--face-detector", "lbp",
            "--no-progress"]
    # label makes its dataset folder (and an empty queue) before reading inputs: that is not
    # half-written, so only "nothing existing changed, no temp files" is checked
    return Run(argv, out, strict=False)


def export_run(d: Path, sc: Scenario, kit: Kit) -> Run:
    if "export" not in COMMANDS or importlib.util.find_spec("rtseg.commands.export") is None:
        pytest.skip("rtseg export does not exist yet (being written by another helper)")
    out = sc.out or d / "exported"
    if sc.out is None:
        out.mkdir()
        (out / "model.onnx").write_bytes(b"an earlier export")
    argv = ["export", *_model_args(sc, kit), "--out", str(out / "model.onnx")]
    return Run(argv, out)


CLI_ENTRIES = {"predict": predict_run, "train": train_run, "eval": eval_run, "label": label_run,
               "export": export_run}
TABLE = [pytest.param(c, e, id=f"{c.name}-{e}") for c in CASES for e in c.entries if e != "api"]


def _is_temp(name: str) -> bool:
    return ".tmp" in name or Path(name).name.startswith(".")


@pytest.mark.parametrize("bad,entry", TABLE)
def test_cli(bad: Case, entry: str, kit: Kit, tmp_path: Path, capsys) -> None:
    d = tmp_path / "in"
    d.mkdir()
    sc = bad.make(d, kit)
    run = CLI_ENTRIES[entry](tmp_path, sc, kit)
    before = _snapshot(run.out)
    code = main(run.argv)
    err = capsys.readouterr().err.strip()
    if bad.valid:
        assert code == 0, err
        run.check_ok()
        return
    assert code != 0, f"exit code 0 for {bad.name}"
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = f"rtseg {run.argv[0]}: error: "
    assert lines[0].startswith(prefix), err
    message = lines[0][len(prefix):]
    assert message.startswith(sc.blame), f"message does not start with {sc.blame!r}: {message}"
    assert bad.match.lower() in message.lower(), message
    after = _snapshot(run.out)
    assert {k: after.get(k) for k in before} == before, "an existing output was changed"
    assert not [k for k in after if _is_temp(k)], f"temporary files left: {list(after)}"
    if run.strict:
        assert sorted(after) == sorted(before), f"a failed run wrote {sorted(set(after) - set(before))}"


# --- the Python API ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(kit: Kit):
    return rtseg.load_model("sinet", kit.weights)


def _api(sc: Scenario, d: Path, kit: Kit, model) -> Callable[[], object]:
    """The library call that meets the scenario's input."""
    from rtseg.commands.common import parse_kwargs
    from rtseg.data.datasets import open_dataset
    from rtseg.pipeline import predict_paths

    if sc.image is not None:
        return lambda: rtseg.predict(model, sc.image)
    if sc.mask is not None or sc.data is not None:
        spec = _dataset(d, sc, "train")

        def load_all() -> list:
            ds = open_dataset(spec, "train")
            return [ds.load(i) for i in range(len(ds))]

        return load_all
    if sc.video is not None:
        return lambda: predict_paths(model, [sc.video], d / "api_out", progress=False)
    if sc.out is not None:
        return lambda: predict_paths(model, [_good_image(d)], sc.out, progress=False)
    kwargs = parse_kwargs(sc.model_kwargs)
    return lambda: rtseg.load_model(sc.model, sc.weights, **kwargs)


@pytest.mark.parametrize("bad", [pytest.param(c, id=c.name) for c in CASES if "api" in c.entries])
def test_api(bad: Case, kit: Kit, model, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    sc = bad.make(d, kit)
    call = _api(sc, d, kit, model)
    if bad.valid:
        mask = call()
        assert isinstance(mask, np.ndarray) and mask.shape == sc.shape and mask.dtype == np.uint8
        return
    with pytest.raises(RtsegError) as info:
        call()
    assert str(info.value).startswith(sc.blame), str(info.value)
    assert "\n" not in str(info.value)
    assert bad.match.lower() in str(info.value).lower()


def test_api_create_model_bad_options_are_rtseg_errors() -> None:
    with pytest.raises(RtsegError, match="model 'sinet'.*nope"):
        rtseg.create_model("sinet", nope=1)
    with pytest.raises(RtsegError, match="model 'deeplabv3plus'.*backbone"):
        rtseg.create_model("deeplabv3plus", backbone="nope")
    with pytest.raises(RtsegError, match="unknown model name"):
        rtseg.create_model("nonet")


def test_api_pil_images_are_checked_too(model) -> None:
    """An already opened PIL image: truncated data and the pixel limit give DataErrors naming its file."""
    from rtseg.inference import as_rgb

    data = _jpeg_bytes(Image.fromarray(_photo()))
    buf = io.BytesIO(data[: len(data) * 2 // 3])  # the header opens, the pixel data is cut
    with pytest.raises(RtsegError, match="truncated or corrupt"):
        rtseg.predict(model, Image.open(buf))
    with pytest.raises(RtsegError, match="above the limit of 100"):
        as_rgb(Image.fromarray(_photo()), max_pixels=100)


def test_api_train_refuses_bad_output_and_options(tmp_path: Path) -> None:
    from rtseg.config import TrainConfig
    from rtseg.engine.trainer import train
    from tests.toydata import make_folder_dataset

    data = f"folder:{make_folder_dataset(tmp_path / 'ds', n_train=4, n_val=1, size=(SIZE, SIZE))}"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RtsegError, match="^" + str(tmp_path / "file")):
        train(TrainConfig(model="sinet", data=data, out=str(tmp_path / "file" / "run"), progress=False))
    with pytest.raises(RtsegError, match="model 'sinet'.*nope"):
        train(TrainConfig(model="sinet", data=data, out=str(tmp_path / "run"), model_kwargs={"nope": 1},
                          progress=False))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_api_load_official_of_another_architecture(kit: Kit) -> None:
    with pytest.raises(RtsegError) as info:
        rtseg.load_official("sinet", kit.cgnet_sd)
    assert str(info.value).startswith(str(kit.cgnet_sd)) and "\n" not in str(info.value)


# --- all or nothing, --debug, limits ----------------------------------------------------------

def test_predict_writes_nothing_when_a_later_input_fails(kit: Kit, tmp_path: Path, capsys) -> None:
    """good.png then a truncated one: the run fails and good's earlier outputs are untouched."""
    good = _good_image(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(good), "--weights", str(kit.weights), "--out", str(out), "--no-progress"]) == 0
    earlier = _snapshot(out)
    assert "good_mask.png" in earlier
    (tmp_path / "bad.jpg").write_bytes(_jpeg_bytes(Image.fromarray(_photo()))[:200])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)  # a new good.png: different outputs
    code = main(["predict", str(good), str(tmp_path / "bad.jpg"), "--weights", str(kit.weights), "--out", str(out),
                 "--no-progress"])
    assert code != 0 and "bad.jpg" in capsys.readouterr().err
    assert _snapshot(out) == earlier


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(RtsegError, match="not a readable image"):
        main(["--debug", "predict", str(tmp_path / "t.png"), "--out", str(tmp_path / "o")])
    with pytest.raises(RtsegError):
        main(["predict", "--debug", str(tmp_path / "t.png"), "--out", str(tmp_path / "o")])


def test_max_pixels_is_configurable(kit: Kit, tmp_path: Path, capsys) -> None:
    img = tmp_path / "p.png"
    img.write_bytes(_png_bytes(_photo(40, 50)))
    code = main(["predict", str(img), "--weights", str(kit.weights), "--out", str(tmp_path / "o"),
                 "--max-pixels", "1000"])
    err = capsys.readouterr().err
    assert code != 0 and "50x40 = 2,000 pixels, above the limit of 1,000" in err and "--max-pixels" in err
    assert main(["predict", str(img), "--weights", str(kit.weights), "--out", str(tmp_path / "o"),
                 "--max-pixels", "2000", "--no-progress"]) == 0


def test_huge_header_is_refused_before_decoding(tmp_path: Path) -> None:
    """The real CLI in a subprocess on a 20000x20000 header: one line naming the limit, exit 2, and
    the peak RSS grows by far less than the 1.2 GB the pixels would need (only the header is read).
    The baseline is taken after importing torch, PIL and rtseg (about 0.9 GB with this torch)."""
    (tmp_path / "huge.png").write_bytes(png_header_only(20000, 20000))
    script = (
        "import resource, sys\n"
        "import numpy, PIL.Image, torch\n"
        "import rtseg.cli, rtseg.pipeline, rtseg.checkpoint, rtseg.models, rtseg.commands.predict\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "code = rtseg.cli.main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, "predict", str(tmp_path / "huge.png"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"rtseg predict: error: {tmp_path / 'huge.png'}: image is 20000x20000 = "
                                   f"400,000,000 pixels, above the limit of {DEFAULT_MAX_PIXELS:,} "
                                   f"(raise it with --max-pixels)")
    growth_mb = int(proc.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    assert growth_mb < 100, f"peak RSS grew by {growth_mb:.0f} MB: the pixels were decoded"
    assert not (tmp_path / "o").exists()
