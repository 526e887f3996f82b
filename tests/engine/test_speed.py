"""Training-speed helpers: prepare_for_training keeps the model's meaning and its checkpoint keys."""
import types

import torch

import rtseg
from rtseg.engine.speed import measure_training_speed, prepare_for_training


def test_prepare_for_training_channels_last_same_outputs_and_keys():
    torch.manual_seed(0)
    model = rtseg.create_model("sinet").train()
    ref = rtseg.create_model("sinet").train()
    ref.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    out = prepare_for_training(model, types.SimpleNamespace(channels_last=True, compile=False))
    assert out is model and list(model.state_dict()) == keys
    assert model.encoder.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    y, y_ref = model(x), ref(x)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    y.float().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    prepare_for_training(model, None)  # idempotent: one input hook only
    assert len(model._forward_pre_hooks) == 1


def test_measure_training_speed_small():
    rows = measure_training_speed("sinet", variants=["eager", "channels_last"], batch=2, size=(64, 64), rounds=1,
                                  steps_per_round=1, threads=1)
    assert [r["variant"] for r in rows] == ["eager", "channels_last"]
    for r in rows:
        assert r["images_per_s"] > 0 and r["median_step_s"] > 0 and r["batch"] == 2
    assert rows[0]["speedup_vs_eager"] == 1.0
