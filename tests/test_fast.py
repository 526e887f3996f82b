"""Fast inference path: BatchNorm folding and backends give the eager outputs (within 1e-4)."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

import rtseg
from rtseg.errors import RtsegError
from rtseg.export import example_input
from rtseg.fast import (AUTO_BACKENDS, AUTO_FALLBACK, FastModel, available_backends, find_conv_bn_pairs,
                        fold_batchnorm, optimize, resolve_backend)
from rtseg.models import MODELS

SEMANTIC = [n for n in rtseg.list_models() if MODELS[n].task == "semantic"]
INSTANCE = [n for n in rtseg.list_models() if MODELS[n].task != "semantic"]
ONNX_BACKENDS = [b for b in ("onnxruntime", "openvino") if b in available_backends()]
SIZE = (64, 96)  # valid for every model (SINet needs H, W in {32k-3..32k})


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding really changes weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(rtseg.create_model(name)).eval()


def flat(out):
    return [out] if isinstance(out, torch.Tensor) else list(out)


def max_diff(a, b) -> float:
    assert type(a) is type(b) and len(flat(a)) == len(flat(b))
    return max(float((x - y).abs().max()) for x, y in zip(flat(a), flat(b)))


@pytest.mark.parametrize("name", SEMANTIC + INSTANCE)
def test_fused_matches_eager(name):
    model = make(name)
    x = example_input(model, SIZE)
    with torch.no_grad():
        ref = model(x)
    fast = optimize(model, "fused")
    assert fast.backend == "fused" and not fast.training
    assert max_diff(fast(x), ref) < 1e-4


@pytest.mark.parametrize("name", SEMANTIC)
def test_default_fast_path_matches_eager(name):
    """``auto`` (the backend rtseg picks for the model) gives the eager logits within 1e-4."""
    model = make(name)
    x = example_input(model, SIZE)
    with torch.no_grad():
        ref = model(x)
    fast = optimize(model, "auto")
    assert fast.backend == resolve_backend("auto", name)
    assert max_diff(fast(x), ref) < 1e-4


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_onnx_backends_match_eager(backend):
    model = make("sinet")
    x = example_input(model, SIZE)
    with torch.no_grad():
        ref = model(x)
    assert max_diff(optimize(model, backend)(x), ref) < 1e-4


@pytest.mark.parametrize("name", SEMANTIC)
def test_fold_batchnorm_preserves_outputs_and_folds(name):
    model = make(name)
    folded = fold_batchnorm(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert left < n_bn and len(find_conv_bn_pairs(model)) == n_bn - left
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # the original is untouched
    x = example_input(model, SIZE)
    with torch.no_grad():
        assert max_diff(folded(x), model(x)) < 1e-4


class Toy(nn.Module):
    """conv->BN; conv->bilinear up->BN; a conv feeding two consumers; a shared BN; a BN subclass."""

    def __init__(self):
        super().__init__()
        from torchvision.ops import FrozenBatchNorm2d

        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # through an upsample
        self.c3, self.b3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)  # c3 output used twice
        self.c4, self.f4 = nn.Conv2d(4, 4, 1, groups=2), FrozenBatchNorm2d(4)
        self.c5, self.b5 = nn.Conv2d(4, 4, 1), BNWithAct(4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = self.b2(nn.functional.interpolate(self.c2(x), scale_factor=2, mode="bilinear", align_corners=True))
        y = self.c3(x)
        x = self.b3(y) + y
        x = self.f4(self.c4(x))
        return self.b5(self.c5(x))


class BNWithAct(nn.BatchNorm2d):
    def forward(self, x):
        return torch.relu(super().forward(x))


def test_fold_rules_on_a_toy_model():
    toy = randomize_norms(Toy()).eval()
    pairs = find_conv_bn_pairs(toy)
    assert pairs == [("c1", "b1"), ("c2", "b2"), ("c4", "f4")]
    folded = fold_batchnorm(toy)
    assert isinstance(folded.b1, nn.Identity) and isinstance(folded.b2, nn.Identity)
    assert isinstance(folded.b3, nn.BatchNorm2d) and isinstance(folded.b5, BNWithAct)
    assert folded.c1.bias is not None
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), toy(x), atol=1e-5, rtol=0)


def test_untraceable_parent_still_folds_children():
    class ShapeBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            if x.shape[-1] > 8:  # data-dependent control flow: fx cannot trace this forward
                x = x[..., :8]
            return self.block(x)

    m = randomize_norms(ShapeBranch()).eval()
    assert find_conv_bn_pairs(m) == [("block.0", "block.1")]
    x = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(m)(x), m(x), atol=1e-5, rtol=0)


def test_backend_selection(caplog):
    have = available_backends()
    assert {"eager", "fused", "onnxruntime"} <= set(have)
    for name, best in AUTO_BACKENDS.items():
        assert resolve_backend("auto", name) == (best if best in have else next(b for b in AUTO_FALLBACK if b in have))
    assert resolve_backend("auto", "no_such_model") == next(b for b in AUTO_FALLBACK if b in have)
    assert resolve_backend("fused", "sinet") == "fused"
    with pytest.raises(RtsegError, match="unknown backend"):
        resolve_backend("tensorrt")
    with caplog.at_level(logging.INFO, logger="rtseg.fast"):
        fast = optimize(make("sinet"), "auto")
    assert fast.backend == resolve_backend("auto", "sinet")
    assert f"backend {fast.backend}" in caplog.text


def test_fast_model_is_a_drop_in_for_predict():
    model = make("sinet")
    fast = optimize(model, "onnxruntime")
    assert fast.pretrained_cfg is model.pretrained_cfg and fast.rtseg_name == "sinet"
    assert sum(p.numel() for p in fast.parameters()) == 86910  # no duplicated weights
    image = (np.random.default_rng(0).random((67, 93, 3)) * 255).astype(np.uint8)
    from rtseg.inference import predict_logits

    ref, got = predict_logits(model, image), predict_logits(fast, image)
    assert got.shape == ref.shape == (1, 2, 67, 93)
    assert float((got - ref).abs().max()) < 1e-4
    assert not fast.training
    # another shape builds another graph; both stay usable
    x1, x2 = example_input(model, (64, 64)), example_input(model, (96, 128), batch=2)
    with torch.no_grad():
        assert max_diff(fast(x1), model(x1)) < 1e-4 and max_diff(fast(x2), model(x2)) < 1e-4


def test_train_mode_runs_eager_and_eval_rebuilds_from_new_weights():
    model = make("bisenet_v1")
    fast = optimize(model, "fused")
    x = example_input(model, SIZE, batch=2)
    fast.train()
    assert fast.training and model.training
    assert isinstance(fast(x), tuple)  # training forward: main + aux outputs, from the eager model
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)
    fast.eval()
    x = x[:1]
    with torch.no_grad():
        assert max_diff(fast(x), model(x)) < 1e-4


def test_optimize_builds_for_example_size_and_rewraps():
    model = make("sinet")
    fast = optimize(model, "fused", example_size=(64, 64))
    assert isinstance(fast, FastModel) and fast._runner is not None
    again = optimize(fast, "eager")
    assert again.model is model and again.backend == "eager"


def test_sinet_channel_shuffles_absorbed_exactly():
    from rtseg.fast import absorb_channel_shuffles, simplify
    from rtseg.models.sinet import S2Module

    model = make("sinet")
    folded = fold_batchnorm(model)
    assert absorb_channel_shuffles(model) == 0  # refuses: the depthwise BNs are not folded yet
    assert absorb_channel_shuffles(folded) == 10  # p + q = 2 + 8 S2-modules
    assert all(m.groups == 1 for m in folded.modules() if isinstance(m, S2Module))
    x = example_input(model, SIZE)
    with torch.no_grad():
        assert max_diff(folded(x), model(x)) < 1e-4
        assert max_diff(simplify(model)(x), model(x)) < 1e-4


def test_precision_option():
    model = make("sinet")
    with pytest.raises(RtsegError, match="openvino"):
        optimize(model, "fused", precision="bf16")
    with pytest.raises(RtsegError, match="unknown precision"):
        optimize(model, "fused", precision="int4")
    if "openvino" not in available_backends():
        pytest.skip("openvino not installed")
    x = example_input(model, SIZE)
    fast = optimize(model, "openvino", precision="bf16")
    with torch.no_grad():
        ref = model(x)
    got = fast(x)
    assert got.shape == ref.shape and float((got - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 1e-3


# --- the fast path is the default of the prediction API -----------------------------------------

def test_predict_uses_the_fast_path_by_default_and_matches_eager(monkeypatch):
    """``rtseg.predict(model, image)`` runs ``optimize(model, "auto")``, built once, kept with the
    model until its weights change, without touching its ``state_dict``; ``$RTSEG_BACKEND``
    overrides the default."""
    import copy

    from rtseg.inference import DEFAULT_BACKEND, default_backend, fast_model, predict_logits

    monkeypatch.delenv("RTSEG_BACKEND", raising=False)
    assert DEFAULT_BACKEND == "auto" and default_backend() == "auto"
    model = make("sinet")
    keys = list(model.state_dict())
    image = (np.random.default_rng(0).random((67, 93, 3)) * 255).astype(np.uint8)
    ref = predict_logits(model, image, backend="eager")
    got = predict_logits(model, image)
    fast = fast_model(model)
    assert isinstance(fast, FastModel) and fast.backend == resolve_backend("auto", "sinet")
    assert fast_model(model) is fast  # cached: same weights, same compiled copy
    assert float((got - ref).abs().max()) < 1e-4
    assert np.array_equal(rtseg.predict(model, image), ref.argmax(1)[0].numpy())
    assert list(model.state_dict()) == keys and not model.training
    copy.deepcopy(model)  # the compiled copy is not copied (ONNX sessions cannot be)
    with torch.no_grad():  # new weights -> a new compiled copy, outputs follow
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert fast_model(model) is not fast
    ref2 = predict_logits(model, image, backend="eager")
    assert float((ref2 - ref).abs().max()) > 1e-3
    assert float((predict_logits(model, image) - ref2).abs().max()) < 1e-4
    assert fast_model(model, "eager") is model and fast_model(fast) is fast
    monkeypatch.setenv("RTSEG_BACKEND", "eager")
    assert fast_model(model) is model
    monkeypatch.setenv("RTSEG_BACKEND", "fused")
    assert fast_model(model).backend == "fused"


@pytest.mark.parametrize("backend", ["fused"] + ONNX_BACKENDS)
def test_instance_detect_on_fast_backends_matches_eager(backend):
    """CenterMask: the dense stage (backbone, FPN, FCOS head) runs on the backend, RoI heads in
    PyTorch; the detections equal the eager ones."""
    torch.manual_seed(0)
    model = rtseg.create_model("centermask_lite", num_classes=3, backbone="V-19-slim-dw-eSE", fpn_channels=32,
                               mask_conv_dim=32, maskiou_conv_dim=32, min_size_test=96, max_size_test=160).eval()
    model.score_thresh = 0.0  # untrained: keep every candidate so that there is something to compare
    x = example_input(model, (96, 130))
    ref = model.detect(x)[0]
    fast = optimize(model, backend)
    got = fast.detect(x)[0]
    assert len(ref["boxes"]) > 5 and torch.equal(got["labels"], ref["labels"])
    assert float((got["boxes"] - ref["boxes"]).abs().max()) < 1e-3
    assert float((got["scores"] - ref["scores"]).abs().max()) < 1e-5
    assert float((got["masks"] != ref["masks"]).float().mean()) < 1e-3
    assert fast.min_size_test == 96 and fast.num_classes == 3  # read through to the model
    from rtseg.inference import predict_instances

    image = (np.random.default_rng(1).random((96, 140, 3)) * 255).astype(np.uint8)
    a, b = predict_instances(model, image, backend="eager"), predict_instances(fast, image)
    assert a["labels"].tolist() == b["labels"].tolist() and np.allclose(a["scores"], b["scores"], atol=1e-5)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_int8_precision_quantises_and_keeps_the_mask(backend):
    """``precision="int8"``: the graph really is quantised (QuantizeLinear nodes, outputs no longer
    within 1e-4) and the packaged portrait model keeps its mask on a realistic input."""
    import onnx

    from rtseg.fast import _Exported, simplify

    torch.set_num_threads(1)
    model = rtseg.load_model("sinet", None).eval()  # the packaged default weights
    x = example_input(model, (224, 224), seed=5)
    with torch.no_grad():
        ref = model(x)
    fast = optimize(model, backend, precision="int8", threads=1)
    out = fast(x)
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    assert agree > 0.98 and float((out - ref).abs().max()) > 1e-4, agree
    graph = onnx.load_from_string(_Exported(simplify(model), (1, 3, 224, 224), "int8").onnx).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 20
    with pytest.raises(RtsegError, match="int8 needs"):
        optimize(model, "fused", precision="int8")
