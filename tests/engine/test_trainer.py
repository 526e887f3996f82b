"""The shared trainer on a tiny generated portrait dataset: learning, exact resume, logs."""
from __future__ import annotations

import json

import pytest
import torch

import rtseg
from rtseg.config import TrainConfig
from rtseg.engine.trainer import lr_at, train
from tests.toydata import make_folder_dataset


def _cfg(data, out, **kw):
    base = dict(model="sinet", data=f"folder:{data}", out=str(out), epochs=2, batch_size=4, lr=5e-3,
                size=(64, 64), seed=3, progress=False, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("toy"), n_train=24, n_val=4)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_training_learns_the_toy_task(toy, tmp_path):
    """72 steps of SINet from scratch: the loss falls and val mIoU passes 0.85 (a broken loss,
    label mapping or augmentation stays near the 0.34 of predicting one class everywhere; SINet's
    BN running statistics need ~50 steps to settle, so earlier epochs evaluate near 0.34)."""
    result = train(_cfg(toy, tmp_path / "run", epochs=12, boundary_weight=0.5))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert rows[-1]["train_loss"] < 0.6 * rows[0]["train_loss"]
    assert result["best"] > 0.85, rows
    model = rtseg.load_model("sinet", tmp_path / "run" / "best.pt")
    assert model.pretrained_cfg.class_names == ("background", "person")
    assert (tmp_path / "run" / "steps.csv").read_text().startswith("epoch,step,loss,lr")


def test_resume_is_exact(toy, tmp_path):
    """train 2 epochs == train 1 epoch, stop, resume for the second: bit-identical weights."""
    train(_cfg(toy, tmp_path / "full", epochs=2))
    train(_cfg(toy, tmp_path / "split", epochs=2, max_steps=6))  # 24 images / batch 4: stops after epoch 1
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 1
    train(_cfg(toy, tmp_path / "split", epochs=2, resume=True))
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_mid_epoch_is_exact(toy, tmp_path):
    """A checkpoint taken inside an epoch (--save-every) resumes at the same batch."""
    train(_cfg(toy, tmp_path / "full", epochs=1))
    train(_cfg(toy, tmp_path / "part", epochs=1, max_steps=2, save_every=1))
    state = torch.load(tmp_path / "part" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step_in_epoch"] == 2 and state["epoch"] == 0
    train(_cfg(toy, tmp_path / "part", epochs=1, resume=True))
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "part" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_without_checkpoint_is_clear(toy, tmp_path):
    with pytest.raises(rtseg.CheckpointError, match="nothing to resume"):
        train(_cfg(toy, tmp_path / "none", resume=True))


def test_batch_must_divide(toy, tmp_path):
    with pytest.raises(rtseg.RtsegError, match="does not divide"):
        train(_cfg(toy, tmp_path / "x", batch_size=3, grad_accum=2))


def test_poly_schedule():
    cfg = TrainConfig(model="sinet", data="x", lr=1.0, schedule="poly", poly_power=1.0)
    assert lr_at(cfg, 0, 10, 5) == 1.0
    assert lr_at(cfg, 5, 10, 5) == pytest.approx(0.5)
    step = TrainConfig(model="sinet", data="x", lr=1.0, schedule="step", step_size=2, step_gamma=0.1)
    assert lr_at(step, 9, 100, 5) == pytest.approx(1.0) and lr_at(step, 10, 100, 5) == pytest.approx(0.1)


def test_bfloat16_autocast_and_grad_accumulation_train(toy, tmp_path):
    """--amp (bfloat16 autocast on the CPU) and --grad-accum run and move the weights; the
    accumulated run sees the same batches as the plain one (same global batch, same order)."""
    train(_cfg(toy, tmp_path / "plain", epochs=1, max_steps=3))
    train(_cfg(toy, tmp_path / "amp", epochs=1, max_steps=3, amp=True, grad_accum=2))
    init = rtseg.create_model("sinet").state_dict()
    a = _weights(tmp_path / "amp" / "last.pt")
    p = _weights(tmp_path / "plain" / "last.pt")
    assert not torch.equal(a["encoder.stem.conv.weight"], init["encoder.stem.conv.weight"])
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    # bf16 changes the numbers, not the course: the two runs stay close after 3 steps
    assert (a["encoder.stem.conv.weight"] - p["encoder.stem.conv.weight"]).abs().max() < 0.05


def test_channels_last_training_matches_the_default_layout(toy, tmp_path):
    """--channels-last (NHWC weights and inputs) computes the same training run: same checkpoint
    keys, weights within float noise after one SGD step (Adam's normalised steps would blow float noise
    in near-zero gradients up to lr), and the checkpoint loads into a plain model."""
    train(_cfg(toy, tmp_path / "plain", epochs=1, max_steps=1, optimizer="sgd", lr=0.01))
    train(_cfg(toy, tmp_path / "nhwc", epochs=1, max_steps=1, optimizer="sgd", lr=0.01, channels_last=True))
    p, c = _weights(tmp_path / "plain" / "last.pt"), _weights(tmp_path / "nhwc" / "last.pt")
    assert list(p) == list(c)
    assert max(float((p[k].float() - c[k].float()).abs().max()) for k in p if p[k].is_floating_point()) < 1e-4
    assert not torch.equal(p["encoder.stem.conv.weight"], rtseg.create_model("sinet").state_dict()["encoder.stem.conv.weight"])
    rtseg.load_model("sinet", tmp_path / "nhwc" / "last.pt")


def test_compile_option_compiles_in_place_and_keeps_the_keys():
    """--compile: nn.Module.compile() in place (the first step would compile for minutes, so it
    is not run here; BENCHMARKS.md has the measured speed-up) with channels_last."""
    from rtseg.engine.speed import prepare_for_training

    model = rtseg.create_model("sinet")
    keys = list(model.state_dict())
    out = prepare_for_training(model, TrainConfig(model="sinet", data="x", channels_last=True, compile=True))
    assert out is model and list(model.state_dict()) == keys
    assert model._compiled_call_impl is not None
    assert model.encoder.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
