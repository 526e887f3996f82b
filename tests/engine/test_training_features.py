"""The training and evaluation features the papers rely on, reached from the command line:
OHEM + weighted auxiliary heads (BiSeNet), ENet class weights from the training labels (CGNet),
SGD with momentum and weight decay on conv/linear weights only, the poly schedule, and
sliding-window / flip evaluation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import rtseg
from rtseg.cli import main
from rtseg.config import TrainConfig
from rtseg.data.datasets import open_dataset
from rtseg.engine import trainer as trainer_module
from rtseg.engine.semantic import SemanticTask
from rtseg.engine.sliding import sliding_window_logits, window_starts
from rtseg.engine.trainer import lr_at, make_optimizer, param_groups
from rtseg.losses import enet_class_weights, ohem_cross_entropy
from tests.layouts import make_layout

TINY_CGNET = ["--model", "cgnet", "--model-kwargs", "M=1", "N=1"]


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    return make_layout("camvid", tmp_path_factory.mktemp("camvid"), n_train=4, n_val=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_layout("folder", tmp_path_factory.mktemp("folder"), n_train=4, n_val=2)


def parsed_config(monkeypatch, argv: list[str]) -> TrainConfig:
    """The TrainConfig ``rtseg train ARGV`` hands to the trainer (the trainer itself not run)."""
    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig) -> dict:
        seen.append(cfg)
        return {"out": cfg.out, "best": 0.5}

    monkeypatch.setattr(trainer_module, "train", fake_train)
    assert main(["train", *argv]) == 0
    return seen[0]


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- OHEM and auxiliary heads (BiSeNet) ---------------------------------------------------------

def test_ohem_and_aux_weights_reach_the_loss(monkeypatch, folder):
    cfg = parsed_config(monkeypatch, ["--model", "bisenet_v1", "--data", folder.spec, "--loss", "ohem",
                                      "--aux-weights", "0.4", "0.6", "--ohem-thresh", "0.6", "--ohem-min-kept", "auto"])
    assert (cfg.loss, tuple(cfg.aux_weights), cfg.ohem_thresh, cfg.ohem_min_kept) == ("ohem", (0.4, 0.6), 0.6, None)
    loss_fn = SemanticTask().make_loss(cfg, 2)
    torch.manual_seed(0)
    model = rtseg.create_model("bisenet_v1", num_classes=2).train()
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    target[:, :4] = 255
    outputs = model(x)
    assert isinstance(outputs, tuple) and len(outputs) == 3  # (main, aux16, aux32) in training
    terms = loss_fn(outputs, target)
    assert set(terms) == {"loss", "main", "aux0", "aux1"}
    torch.testing.assert_close(terms["loss"], terms["main"] + 0.4 * terms["aux0"] + 0.6 * terms["aux1"])
    # each head: OHEM CE at thresh 0.6 keeping at least n_valid // 16 pixels (CoinCheung's OhemCELoss)
    for out, key in zip(outputs, ("main", "aux0", "aux1")):
        up = F.interpolate(out, size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(terms[key], ohem_cross_entropy(up, target, 0.6, None))


def test_aux_weights_must_match_the_heads(capsys, folder, tmp_path):
    err = one_line_error(capsys, ["train", "--model", "bisenet_v1", "--data", folder.spec, "--out", str(tmp_path),
                                  "--epochs", "1", "--batch-size", "2", "--size", "64", "--no-progress",
                                  "--aux-weights", "1", "1", "1"])
    assert "aux weights: 3 given but the model returned 2 auxiliary outputs" in err


# --- class weights (ENet / CGNet) ---------------------------------------------------------------------

def test_class_weights_auto_from_training_labels(monkeypatch, camvid):
    cfg = parsed_config(monkeypatch, [*TINY_CGNET, "--data", camvid.spec, "--class-weights", "auto",
                                      "--enet-c", "1.10"])
    assert cfg.class_weights == "auto" and cfg.enet_c == 1.10
    # independent count over the raw CamVid label PNGs: 11 (Unlabelled) is ignored
    counts = np.zeros(11, np.int64)
    for png in sorted((camvid.root / "CamVid" / "trainannot").glob("*.png")):
        raw = np.asarray(Image.open(png)).ravel()
        counts += np.bincount(raw[raw != 11], minlength=11)
    assert counts[3] > 0 and counts[9] > 0 and counts.sum() == counts[3] + counts[9]
    p = counts / counts.sum()
    expected = 1.0 / np.log(1.10 + p)
    weights = SemanticTask().class_weights(cfg, 11)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights[9] > weights[3] and weights[0] == pytest.approx(1 / math.log(1.10))  # rare > frequent
    loss_fn = SemanticTask().make_loss(cfg, 11)
    np.testing.assert_allclose(loss_fn.class_weights.numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(loss_fn.class_weights, enet_class_weights(counts, 1.10))


def test_explicit_class_weights_and_errors(monkeypatch, capsys, folder, tmp_path):
    cfg = parsed_config(monkeypatch, [*TINY_CGNET, "--data", folder.spec, "--class-weights", "1", "3.5"])
    assert cfg.class_weights == (1.0, 3.5)
    assert SemanticTask().class_weights(cfg, 2) == [1.0, 3.5]
    monkeypatch.undo()
    base = ["train", *TINY_CGNET, "--data", folder.spec, "--out", str(tmp_path), "--batch-size", "2", "--size", "64",
            "--no-progress"]
    err = one_line_error(capsys, base + ["--class-weights", "1", "2", "3"])
    assert "--class-weights: 3 weights given but" in err and "has 2 classes" in err
    err = one_line_error(capsys, base + ["--class-weights", "often"])
    assert "give 'auto' or one number per class" in err


# --- SGD, weight decay on conv/linear weights only, poly schedule ---------------------------------------------

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


@pytest.mark.parametrize("name,kwargs", [("cgnet", {"M": 1, "N": 1}), ("bisenet_v1", {}),
                                         ("deeplabv3plus", {"backbone": "mobilenet_v2"})])
def test_param_groups_exclude_norm_and_bias(name, kwargs):
    model = rtseg.create_model(name, num_classes=3, **kwargs)
    decay, no_decay = (g["params"] for g in param_groups(model, 1e-4))
    ids_decay, ids_no = {id(p) for p in decay}, {id(p) for p in no_decay}
    assert not ids_decay & ids_no and len(decay) + len(no_decay) == len(list(model.parameters()))
    n_norm = n_bias = 0
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, NORMS) or pname == "bias":
                assert id(p) in ids_no, f"{type(module).__name__}.{pname} is weight-decayed"
                n_norm += isinstance(module, NORMS)
                n_bias += pname == "bias"
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and pname == "weight":
                assert id(p) in ids_decay, f"{type(module).__name__}.weight is not weight-decayed"
    assert n_norm > 0 and len(decay) > 0
    if name == "cgnet":
        assert any(isinstance(m, nn.PReLU) for m in model.modules())  # PReLU slopes are not decayed


def test_sgd_decays_only_conv_and_linear_weights():
    cfg = TrainConfig(model="cgnet", data="x", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    model = rtseg.create_model("cgnet", num_classes=2, M=1, N=1)
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    assert [(g["weight_decay"], g["momentum"]) for g in opt.param_groups] == [(0.01, 0.9), (0.0, 0.9)]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.01) if p.ndim > 1 else before[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)


def test_sgd_momentum_poly_schedule_from_the_cli(folder, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY_CGNET, "--data", folder.spec, "--out", str(out), "--epochs", "2", "--batch-size", "2",
                 "--size", "64", "--no-progress", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.8",
                 "--weight-decay", "0.001", "--schedule", "poly", "--poly-power", "0.9"]) == 0
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)  # our own file
    groups = state["optimizer"]["param_groups"]
    assert [(g["momentum"], g["weight_decay"]) for g in groups] == [(0.8, 0.001), (0.8, 0.0)]
    assert state["global_step"] == 4  # 4 images / batch 2 x 2 epochs
    # the lr of the last step (step 3 of 4): 0.01 * (1 - 3/4) ** 0.9
    assert groups[0]["lr"] == pytest.approx(0.01 * (1 - 3 / 4) ** 0.9)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["optimizer"], saved["schedule"], saved["poly_power"]) == ("sgd", "poly", 0.9)


def test_poly_lr_values():
    cfg = TrainConfig(model="cgnet", data="x", lr=0.02, schedule="poly", poly_power=0.9)
    assert [lr_at(cfg, s, 100, 10) for s in (0, 50, 99)] == pytest.approx(
        [0.02, 0.02 * 0.5 ** 0.9, 0.02 * 0.01 ** 0.9])


# --- sliding-window and flip evaluation -------------------------------------------------------------------------

def test_window_starts_cover_and_end_flush():
    assert window_starts(64, 64, 10) == [0] and window_starts(30, 64, 10) == [0]
    assert window_starts(100, 64, 36) == [0, 36]
    assert window_starts(130, 64, 32) == [0, 32, 64, 66]
    for length, win, stride in ((1024, 512, 341), (97, 32, 20), (33, 32, 32)):
        starts = window_starts(length, win, stride)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + win] = True
        assert covered.all() and starts[-1] == length - win and all(b - a <= stride for a, b in zip(starts, starts[1:]))


class CallIndex(nn.Module):
    """Logits (N, 2, h, w) constant per call: channel 0 = k for the k-th call, channel 1 = -k."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = float(self.calls)
        self.calls += 1
        out = torch.empty(x.shape[0], 2, *x.shape[-2:])
        out[:, 0], out[:, 1] = k, -k
        return out


def test_overlapping_window_logits_are_averaged():
    model = CallIndex()
    logits = sliding_window_logits(model, torch.zeros(1, 3, 40, 100), window=(40, 64), stride=(40, 36))
    assert model.calls == 2  # windows at x = 0 and x = 36
    row = logits[0, 0, 0]
    assert (row[:36] == 0).all() and (row[36:64] == 0.5).all() and (row[64:] == 1).all()
    assert torch.equal(logits[:, 1], -logits[:, 0])
    # 2-D: 4 windows at (0,0) (0,36) (26,0) (26,36); the centre block is the mean of all four
    model = CallIndex()
    logits = sliding_window_logits(model, torch.zeros(1, 3, 90, 100), window=(64, 64), stride=(26, 36))
    assert model.calls == 4
    assert logits[0, 0, 0, 0] == 0 and logits[0, 0, 0, 99] == 1 and logits[0, 0, 89, 0] == 2
    assert logits[0, 0, 89, 99] == 3 and logits[0, 0, 40, 50] == pytest.approx(1.5)
    assert logits[0, 0, 10, 50] == pytest.approx(0.5) and logits[0, 0, 40, 10] == pytest.approx(1.0)


def test_whole_image_window_equals_whole_image_evaluation(camvid):
    torch.manual_seed(0)
    model = rtseg.create_model("cgnet", num_classes=11, M=1, N=1).eval()
    x = torch.randn(1, 3, 48, 80)
    with torch.inference_mode():
        assert torch.equal(sliding_window_logits(model, x, (48, 80)), model(x))
        # a pixel-wise network gives the whole-image logits from any tiling, with or without flip
        pointwise = nn.Conv2d(3, 4, 1).eval()
        for window, stride in (((32, 32), (20, 24)), ((64, 96), None)):
            for flip in (False, True):
                torch.testing.assert_close(sliding_window_logits(pointwise, x, window, stride, 32, flip), pointwise(x))
    ds = open_dataset(camvid.spec, "val")
    whole = SemanticTask().evaluate(model, ds, progress=False)
    slide = SemanticTask().evaluate(model, ds, progress=False, window=(64, 64))
    assert slide["per_class"]["confusion_matrix"] == whole["per_class"]["confusion_matrix"]
    assert slide["miou"] == whole["miou"]


def test_eval_cli_sliding_window_and_flip(camvid, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    rtseg.save_model(rtseg.create_model("cgnet", num_classes=11, M=1, N=1), weights)
    base = ["eval", "--model", "cgnet", "--weights", str(weights), "--data", camvid.spec, "--no-progress"]
    assert main(base + ["--json", str(tmp_path / "whole.json")]) == 0
    assert main(base + ["--sliding-window", "64x64", "--json", str(tmp_path / "same.json")]) == 0
    assert main(base + ["--sliding-window", "40x48", "--stride", "24x16", "--flip",
                        "--json", str(tmp_path / "slide.json")]) == 0
    table = capsys.readouterr().out
    assert "pedestrian" in table and "mIoU" in table
    whole, same, slide = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "same", "slide"))
    assert same["per_class"] == whole["per_class"]
    assert slide["sliding_window"] == [40, 48] and slide["stride"] == [24, 16] and slide["flip"] is True
    assert sum(map(sum, slide["per_class"]["confusion_matrix"])) == whole["per_class"]["num_pixels"]
    err = one_line_error(capsys, base + ["--stride", "8x8"])
    assert "--stride needs --sliding-window" in err
