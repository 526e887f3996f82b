"""Every semantic model on the shared engine, end to end through the command line, on a generated
tree of every dataset layout: ``rtseg train`` (a few steps, with the training features each paper
uses) -> ``rtseg eval`` (per-class IoU under the layout's class names) -> ``rtseg predict`` ->
the checkpoints reload with ``rtseg.load_model`` -> ``rtseg export``.

Not the full model x layout product: each layout is used by at least one model and each model by
at least one layout (small configurations, 64-pixel crops) to stay within about a minute.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rtseg
from rtseg.cli import COMMANDS, main
from rtseg.commands.common import parse_kwargs
from rtseg.models import get_spec
from tests.conftest import parity_fixture
from tests.layouts import LAYOUTS, LayoutTree, make_layout

SEMANTIC_MODELS = ("cgnet", "bisenet_v1", "bisenet_face", "deeplabv3plus")


@dataclass(frozen=True)
class Case:
    model: str
    layout: str
    kwargs: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    eval: tuple[str, ...] = ()
    size: tuple[int, int] = (64, 64)  # generated image size (H, W); training crops are 64x64
    id: str = field(default="", compare=False)


CASES = [
    # CGNet (Cityscapes, CamVid in the paper): ENet class weights with CGNet's c = 1.10; images wider
    # than the crop, evaluated with overlapping 64x64 windows
    Case("cgnet", "cityscapes", ("M=2", "N=3"), ("--class-weights", "auto", "--enet-c", "1.10"),
         ("--sliding-window", "64x64", "--stride", "32x48"), size=(64, 128)),
    Case("cgnet", "eg1800", ("M=1", "N=1", "dropout=true")),
    # BiSeNet V1 (Cityscapes, CamVid): OHEM on the main and both auxiliary heads, flip evaluation
    Case("bisenet_v1", "camvid", (), ("--loss", "ohem", "--aux-weights", "1", "1", "--ohem-min-kept", "auto"),
         ("--flip",)),
    Case("bisenet_v1", "folder", (), ("--optimizer", "sgd", "--lr", "0.01", "--schedule", "poly",
                                      "--aux-weights", "0.5")),
    # face parsing BiSeNet (CelebAMask-HQ: 512x512 labels, the model's fixed 512x512 input)
    Case("bisenet_face", "celebamask", (), ("--loss", "ohem", "--aux-weights", "1", "1")),
    # DeepLabV3+ (VOC): SGD with momentum, weight decay on conv weights only
    Case("deeplabv3plus", "voc", ("backbone=mobilenet_v2",),
         ("--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--weight-decay", "1e-4"), ("--flip",)),
    Case("deeplabv3plus", "camvid", ("backbone=mobilenet_v2", "output_stride=8")),
]


def test_cases_cover_every_model_and_layout():
    assert {c.model for c in CASES} == set(SEMANTIC_MODELS)
    assert {c.layout for c in CASES} == set(LAYOUTS)
    assert {n for n in rtseg.list_models() if get_spec(n).task == "semantic"} - {"sinet"} \
        == set(SEMANTIC_MODELS)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """One generated tree per (layout, image size), made on first use."""
    made: dict[tuple[str, tuple[int, int]], LayoutTree] = {}

    def get(layout: str, size: tuple[int, int]) -> LayoutTree:
        key = (layout, size)
        if key not in made:
            made[key] = make_layout(layout, tmp_path_factory.mktemp(layout), n_train=4, n_val=2, size=size)
        return made[key]

    return get


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.model}-{c.layout}")
def test_train_eval_predict_reload(case: Case, trees, tmp_path, capsys):
    tree = trees(case.layout, case.size)
    run = tmp_path / "run"
    num_classes = len(tree.class_names)
    assert main(["train", "--model", case.model, "--data", tree.spec, "--out", str(run), "--epochs", "1",
                 "--max-steps", "2", "--batch-size", "2", "--size", "64", "--no-progress", *case.train,
                 "--model-kwargs", *case.kwargs]) == 0
    for name in ("last.pt", "best.pt", "model.pt", "config.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)  # our own file
    assert state["global_step"] == 2 and state["model_name"] == case.model  # 4 images / batch 2
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["train_loss"]) and 0.0 <= row["miou"] <= 1.0

    # the checkpoints rebuild the trained model with the dataset's classes
    model = rtseg.load_model(case.model, run / "best.pt")
    assert model.rtseg_kwargs == {**parse_kwargs(list(case.kwargs)), "num_classes": num_classes}
    assert model.pretrained_cfg.class_names == tree.class_names and not model.training
    final = rtseg.load_model(None, run / "model.pt")
    for k, v in final.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k  # one epoch: best.pt == model.pt
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, num_classes, 64, 64)

    # eval: per-class IoU under the layout's class names, both pattern classes scored
    capsys.readouterr()
    metrics_file = tmp_path / "metrics.json"
    assert main(["eval", "--model", case.model, "--weights", str(run / "best.pt"), "--data", tree.spec,
                 "--json", str(metrics_file), "--no-progress", *case.eval]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in tree.used_names) and "mIoU" in table
    metrics = json.loads(metrics_file.read_text())
    assert list(metrics["per_class"]["iou"]) == list(tree.class_names)
    assert all(metrics["per_class"]["iou"][n] is not None for n in tree.used_names)
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["per_class"]["num_pixels"] > 0

    # predict: a palette mask at the image's size, the same as the reloaded model's prediction
    assert main(["predict", str(tree.image), "--model", case.model, "--weights", str(run / "model.pt"),
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / f"{tree.image.stem}_mask.png"))
    image = np.asarray(Image.open(tree.image).convert("RGB"))
    assert mask.shape == image.shape[:2] and int(mask.max()) < num_classes
    assert (tmp_path / "pred" / f"{tree.image.stem}_overlay.png").is_file()
    np.testing.assert_array_equal(mask, rtseg.predict(final, tree.image))


def _export_available() -> bool:
    return "export" in COMMANDS and importlib.util.find_spec("rtseg.commands.export") is not None


@pytest.mark.skipif(not _export_available(), reason="`rtseg export` (src/rtseg/commands/export.py) is not written yet")
@pytest.mark.parametrize("case", [next(c for c in CASES if c.model == m) for m in SEMANTIC_MODELS],
                         ids=lambda c: c.model)
def test_export(case: Case, tmp_path):
    num_classes = {"cityscapes": 19, "eg1800": 2, "camvid": 11, "folder": 2, "celebamask": 19, "voc": 21}[case.layout]
    torch.manual_seed(0)
    kwargs = {**parse_kwargs(list(case.kwargs)), "num_classes": num_classes}
    weights = tmp_path / "w.pt"
    rtseg.save_model(rtseg.create_model(case.model, **kwargs).eval(), weights)
    onnx_file = tmp_path / f"{case.model}.onnx"
    assert main(["export", "--model", case.model, "--weights", str(weights), "--out", str(onnx_file),
                 "--size", "64x96"]) == 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 96)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:1]
    model = rtseg.load_model(case.model, weights)
    with torch.no_grad():
        expected = model(x).numpy()
    assert logits.shape == (1, num_classes, 64, 96)
    np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=1e-3)


# --- parameter counts of the default configurations ------------------------------------------------------

#: model -> (parameter count of ``create_model(name)``, the parity fixture whose ``meta["params"]``
#: recorded the same count from the official code)
OFFICIAL_PARAMS = {
    "sinet": (86_910, "sinet_random.npz"),
    "cgnet": (496_306, "cgnet_m3n21_c19.npz"),
    "bisenet_v1": (13_425_721, "bisenetv1_c19.npz"),
    "bisenet_face": (13_300_416, "bisenet_faceparsing_c19.npz"),
    "deeplabv3plus": (5_225_717, "deeplabv3plus_mobilenet_os16_c21.npz"),
}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_default_parameter_counts_match_official(name):
    count, fixture = OFFICIAL_PARAMS[name]
    model = rtseg.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert f"{count:,}" in get_spec(name).description  # what `rtseg models` shows
    meta = json.loads(str(np.load(parity_fixture(fixture))["meta"]))
    assert meta["params"] == count, f"{fixture}: the official code has {meta['params']} parameters"


def _bench_available() -> bool:
    return "bench" in COMMANDS and importlib.util.find_spec("rtseg.commands.bench") is not None


@pytest.mark.skipif(not _bench_available(), reason="`rtseg bench` (src/rtseg/commands/bench.py) is not written yet")
def test_bench_params_prints_official_counts(capsys):
    assert main(["bench", "--params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, (count, _) in OFFICIAL_PARAMS.items():
        line = next((ln for ln in lines if ln.split() and ln.split()[0] == name), None)
        assert line is not None, f"no line for {name} in `rtseg bench --params`"
        assert f"{count:,}" in line or str(count) in line.replace(",", "").split(), line
