import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import rtseg
from rtseg.checkpoint import load_state_dict_strict
from rtseg.data.classes import VOC_CLASSES
from rtseg.models.deeplabv3plus import (
    ASPP,
    ASPPPooling,
    DeepLabV3Plus,
    SeparableConv2d,
    convert_official_deeplabv3plus,
)
from rtseg.parity import main as parity_main
from tests.conftest import parity_fixture
from tests.models.base import SemanticModelChecks

FIXTURES = {
    "mobilenet_v2": "deeplabv3plus_mobilenet_os16_c21.npz",
    "resnet50": "deeplabv3plus_resnet50_os16_c21.npz",
}


def fixture_state_dict(name: str, dtype: torch.dtype = torch.float32) -> tuple[dict, dict, np.lib.npyio.NpzFile]:
    z = np.load(parity_fixture(name))
    meta = json.loads(str(z["meta"]))
    sd = {k[len("state_dict/"):]: torch.from_numpy(np.array(z[k])) for k in z.files if k.startswith("state_dict/")}
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    return sd, meta, z


class TestDeepLabV3PlusMobileNet(SemanticModelChecks):
    name = "deeplabv3plus"
    kwargs = {"num_classes": 21, "backbone": "mobilenet_v2", "output_stride": 16}
    size = (67, 93)  # any size: the network itself accepts odd sizes


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50", "resnet101", "xception65"])
def test_shapes_odd_input(backbone, output_stride):
    torch.manual_seed(0)
    model = DeepLabV3Plus(num_classes=5, backbone=backbone, output_stride=output_stride).eval()
    assert model.encoder.output_stride == output_stride
    h, w = 67, 93
    seen = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.update(encoder=o))
    model.decoder.register_forward_hook(lambda m, i, o: seen.update(decoder=o))
    with torch.no_grad():  # one small forward; the hooks record the inner shapes
        logits = model(torch.randn(1, 3, h, w))
    assert logits.shape == (1, 5, h, w) and torch.isfinite(logits).all()
    low, high = seen["encoder"]
    assert (low.shape[1], high.shape[1]) == model.encoder.out_channels
    for got, size, stride in [(low.shape[2], h, 4), (low.shape[3], w, 4),
                              (high.shape[2], h, output_stride), (high.shape[3], w, output_stride)]:
        assert math.ceil(size / stride) - 1 <= got <= math.ceil(size / stride), (got, size, stride)
    assert seen["decoder"].shape == (1, 256, *low.shape[-2:])


def test_mobilenet_129_input_keeps_vainf_padding():
    """VainF's stem is unpadded (129 -> 64 -> 32 -> 16), unlike torchvision's (65 -> 33 -> 17)."""
    model = DeepLabV3Plus(backbone="mobilenet_v2").eval()
    with torch.no_grad():
        low, high = model.encoder(torch.randn(1, 3, 129, 129))
        out = model(torch.randn(1, 3, 129, 129))
    assert low.shape == (1, 24, 32, 32) and high.shape == (1, 320, 8, 8)
    assert out.shape == (1, 21, 129, 129)


@pytest.mark.parametrize("backbone", list(FIXTURES))
def test_parity(backbone, capsys):
    assert parity_main([str(parity_fixture(FIXTURES[backbone]))]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "ok" in out


def test_mobilenet_float64_matches_reference_exactly():
    """With exact weights and input only summation order differs: float64 agrees to ~1e-15."""
    sd, _, z = fixture_state_dict(FIXTURES["mobilenet_v2"], torch.float64)
    model = DeepLabV3Plus(num_classes=21, backbone="mobilenet_v2", output_stride=16).double().eval()
    load_state_dict_strict(model, convert_official_deeplabv3plus(sd))
    with torch.no_grad():
        y = model(torch.from_numpy(np.array(z["input"])).double())
    assert np.abs(y.numpy() - z["output64"]).max() < 1e-10


@pytest.mark.parametrize("backbone", list(FIXTURES))
def test_parameter_count_matches_official(backbone):
    _, meta, _ = fixture_state_dict(FIXTURES[backbone])
    model = rtseg.create_model("deeplabv3plus", backbone=backbone, output_stride=16)
    n = sum(p.numel() for p in model.parameters())
    assert n == meta["params"] == {"mobilenet_v2": 5_225_717, "resnet50": 39_761_845}[backbone]
    floats = [t for t in model.state_dict().values() if t.is_floating_point()]  # meta leaves out num_batches_tracked
    assert sum(t.numel() for t in floats) == meta["state_dict_numel"]


@pytest.mark.parametrize("output_stride,rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_rates_scale_with_output_stride(output_stride, rates):
    model = DeepLabV3Plus(backbone="mobilenet_v2", output_stride=output_stride)
    aspp = model.decoder.aspp
    assert aspp.rates == rates
    assert [b.conv.dilation[0] for b in aspp.branches[1:4]] == list(rates)
    assert [b.conv.padding[0] for b in aspp.branches[1:4]] == list(rates)
    assert aspp.branches[0].conv.kernel_size == (1, 1) and isinstance(aspp.branches[4], ASPPPooling)
    assert aspp.project.conv.in_channels == 5 * 256


def test_mobilenet_dilation_rules():
    """Once the stride reaches the output stride, strides become dilation; the first block of a
    dilated group keeps the previous dilation (VainF)."""
    def dw(model, i):
        conv = getattr(model.encoder.high_level, str(i)).dw.conv  # children keep features.i numbering
        return conv.stride[0], conv.dilation[0]

    m16 = DeepLabV3Plus(backbone="mobilenet_v2", output_stride=16)
    assert [dw(m16, i) for i in (7, 13, 14, 15, 16, 17)] == [(2, 1), (1, 1), (1, 1), (1, 2), (1, 2), (1, 2)]
    m8 = DeepLabV3Plus(backbone="mobilenet_v2", output_stride=8)
    assert [dw(m8, i) for i in (4, 7, 8, 11, 14, 15, 17)] == [(2, 1), (1, 1), (1, 2), (1, 2), (1, 2), (1, 4), (1, 4)]


def test_resnet_dilation():
    m16 = DeepLabV3Plus(backbone="resnet50", output_stride=16)
    assert m16.encoder.layer3[0].conv2.stride == (2, 2) and m16.encoder.layer4[1].conv2.dilation == (2, 2)
    m8 = DeepLabV3Plus(backbone="resnet50", output_stride=8)
    assert m8.encoder.layer3[0].conv2.stride == (1, 1) and m8.encoder.layer3[1].conv2.dilation == (2, 2)
    assert m8.encoder.layer4[1].conv2.dilation == (4, 4)


def test_separable_option_uses_depthwise_pointwise():
    plain = DeepLabV3Plus(backbone="mobilenet_v2")
    sep = DeepLabV3Plus(backbone="mobilenet_v2", separable=True)
    for branch, rate in zip(sep.decoder.aspp.branches[1:4], (6, 12, 18)):
        assert isinstance(branch, SeparableConv2d)
        dwc, pwc = branch.depthwise.conv, branch.pointwise.conv
        assert dwc.groups == dwc.in_channels == 320 and dwc.dilation == (rate, rate) and dwc.kernel_size == (3, 3)
        assert pwc.kernel_size == (1, 1) and pwc.out_channels == 256
        assert isinstance(branch.depthwise.bn, nn.BatchNorm2d) and isinstance(branch.pointwise.bn, nn.BatchNorm2d)
    assert isinstance(sep.decoder.fuse, SeparableConv2d) and sep.decoder.fuse.depthwise.conv.groups == 304
    assert not isinstance(plain.decoder.fuse, SeparableConv2d)
    # 1x1 branches and image pooling are unchanged
    assert sep.decoder.aspp.branches[0].conv.kernel_size == (1, 1)
    n_plain = sum(p.numel() for p in plain.decoder.parameters())
    n_sep = sum(p.numel() for p in sep.decoder.parameters())
    assert n_sep < n_plain / 2
    with torch.no_grad():
        assert sep.eval()(torch.randn(1, 3, 67, 93)).shape == (1, 21, 67, 93)


def test_aspp_pooling_is_a_broadcast_of_the_global_mean():
    pool = ASPPPooling(8, 4).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        y = pool(x)
        ref = pool.act(pool.bn(pool.conv(x.mean((2, 3), keepdim=True))))
    assert y.shape == (2, 4, 5, 7)
    torch.testing.assert_close(y, ref.expand_as(y))
    assert ASPP(8, (1, 2, 3), 4)(torch.randn(2, 8, 5, 7)).shape == (2, 4, 5, 7)


def test_decoder_concat_order_low_level_first():
    model = DeepLabV3Plus(backbone="mobilenet_v2").eval()
    w = model.decoder.fuse.conv.weight
    with torch.no_grad():
        w[:, 48:] = 0  # drop the ASPP part: output depends only on the low-level projection
    low = torch.randn(1, 24, 9, 9)
    with torch.no_grad():
        a = model.decoder(low, torch.randn(1, 320, 3, 3))
        b = model.decoder(low, torch.randn(1, 320, 3, 3))
    torch.testing.assert_close(a, b)


def test_bad_config_is_one_line():
    with pytest.raises(ValueError, match="xception71") as e:
        DeepLabV3Plus(backbone="xception71")
    assert "\n" not in str(e.value) and "mobilenet_v2" in str(e.value)
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus(output_stride=32)


def test_registry_cfg():
    spec = rtseg.models.get_spec("deeplabv3plus")
    assert spec.official_kwargs == {"num_classes": 21, "backbone": "mobilenet_v2", "output_stride": 16}
    cfg = spec.official_cfg
    assert cfg.channel_order == "RGB" and cfg.pre_scale == pytest.approx(1 / 255) and cfg.post_scale == 1
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.class_names == VOC_CLASSES and len(cfg.palette) == 21 and cfg.palette[15] == (192, 128, 128)
    assert "MIT" in cfg.licence and cfg.input_size is None


def test_load_official_wrapped_checkpoint_with_backbone_override():
    """VainF checkpoints are {"model_state": sd, ...}; user kwargs go over official_kwargs."""
    sd, _, z = fixture_state_dict(FIXTURES["resnet50"])
    ckpt = {"cur_itrs": 30000, "model_state": sd, "optimizer_state": {}, "best_score": 0.77}
    model = rtseg.load_official("deeplabv3plus", ckpt, backbone="resnet50")
    assert not model.training and model.rtseg_kwargs["backbone"] == "resnet50"
    assert model.pretrained_cfg.class_names == VOC_CLASSES
    with torch.no_grad():
        y = model(torch.from_numpy(np.array(z["input"])))
    assert np.abs(y.double().numpy() - z["output64"]).max() < 1e-4
    image = (np.random.default_rng(0).random((67, 93, 3)) * 255).astype(np.uint8)
    mask = rtseg.predict(model, image)
    assert mask.shape == (67, 93) and int(mask.max()) < 21


def test_load_official_mismatch_names_keys():
    sd, _, _ = fixture_state_dict(FIXTURES["mobilenet_v2"])
    sd.pop("classifier.project.0.weight")
    with pytest.raises(rtseg.CheckpointError) as e:
        rtseg.load_official("deeplabv3plus", {"model_state": sd})
    assert "decoder.low_level_project.conv.weight" in str(e.value) and "\n" not in str(e.value)
