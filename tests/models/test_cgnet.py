import numpy as np
import pytest
import torch

import rtseg
from rtseg.inference import normalize
from rtseg.models.cgnet import CGNet, ContextGuidedBlock, GlobalContextExtractor, InputInjection
from rtseg.parity import main as parity_main
from tests.conftest import parity_fixture
from tests.models.base import SemanticModelChecks

FIXTURE = "cgnet_m3n21_c19.npz"


class TestCGNet(SemanticModelChecks):
    name = "cgnet"
    kwargs = {"num_classes": 19}
    size = (64, 96)


def official_state_dict() -> dict[str, torch.Tensor]:
    """The fixture's reference state_dict under the official key names."""
    z = np.load(parity_fixture(FIXTURE))
    return {k[len("state_dict/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("state_dict/")}


def test_parameter_count_matches_official():
    assert sum(p.numel() for p in rtseg.create_model("cgnet").parameters()) == 496306


def test_parity(capsys):
    assert parity_main([str(parity_fixture(FIXTURE))]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_float64_matches_reference_exactly():
    """Same weights and input in float64: only summation order may differ (README: ~1e-14)."""
    z = np.load(parity_fixture(FIXTURE))
    model = rtseg.load_official("cgnet", official_state_dict()).double()
    with torch.no_grad():
        out = model(torch.from_numpy(z["input"]).double())
    np.testing.assert_allclose(out.numpy(), z["output64"], rtol=0, atol=1e-9)


def test_load_official_unwraps_model_key_and_module_prefix():
    """Official checkpoints are {'model': state_dict} saved from DataParallel (``module.``)."""
    z = np.load(parity_fixture(FIXTURE))
    wrapped = {"model": {"module." + k: v for k, v in official_state_dict().items()}, "epoch": 300}
    model = rtseg.load_official("cgnet", wrapped)
    assert not model.training and model.pretrained_cfg.class_names[0] == "road"
    with torch.no_grad():
        out = model(torch.from_numpy(z["input"]).float())
    np.testing.assert_allclose(out.double().numpy(), z["output64"], rtol=0, atol=1e-5)


def test_dropout_checkpoint_keys():
    """With dropout_flag the official classifier conv is ``classifier.1`` (after Dropout2d)."""
    sd = official_state_dict()
    sd["classifier.1.conv.weight"] = sd.pop("classifier.0.conv.weight")
    model = rtseg.load_official("cgnet", sd, dropout=True)
    assert isinstance(model.dropout, torch.nn.Dropout2d)
    torch.testing.assert_close(model.classifier.weight, sd["classifier.1.conv.weight"].float())


def test_m_and_n_configurable():
    model = CGNet(num_classes=5, M=2, N=4).eval()
    assert len(model.blocks2) == 1 and len(model.blocks3) == 3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 51)).shape == (1, 5, 37, 51)
    assert sum(p.numel() for p in model.parameters()) < 496306
    with pytest.raises(ValueError):
        CGNet(M=0)


def test_global_context_extractor_reduction():
    f_glo = GlobalContextExtractor(64, reduction=8)
    assert (f_glo.fc[0].in_features, f_glo.fc[0].out_features, f_glo.fc[2].out_features) == (64, 8, 64)
    x = torch.rand(2, 64, 5, 7) + 0.1
    y = f_glo(x)
    ratio = y / x  # one sigmoid weight per (sample, channel), in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert bool((ratio > 0).all() and (ratio < 1).all())
    model = CGNet()
    assert model.blocks2[0].f_glo.fc[0].out_features == 64 // 8
    assert model.blocks3[0].f_glo.fc[0].out_features == 128 // 16


def test_residual_only_in_non_down_blocks():
    """Silence f_glo (sigmoid -> 0): a CG block then returns its input (global residual), the
    down-sampling block returns zeros (no residual)."""
    block = ContextGuidedBlock(32, 32, dilation=2, reduction=8).eval()
    down = ContextGuidedBlock(16, 32, dilation=2, reduction=8, down=True).eval()
    for b in (block, down):
        torch.nn.init.zeros_(b.f_glo.fc[2].weight)
        torch.nn.init.constant_(b.f_glo.fc[2].bias, -1e4)
    x = torch.randn(1, 32, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
        y = down(torch.randn(1, 16, 9, 11))
    assert y.shape == (1, 32, 5, 6) and float(y.abs().max()) == 0.0
    assert block.conv_in.conv.kernel_size == (1, 1) and down.conv_in.conv.stride == (2, 2)
    assert block.f_sur.dilation == (2, 2) and block.f_loc.groups == block.f_loc.in_channels == 16
    with pytest.raises(ValueError):
        ContextGuidedBlock(16, 32)


def test_input_injection_counts_padding():
    """AvgPool2d(3, 2, 1) with count_include_pad=True: a corner of a constant image is 4/9."""
    y = InputInjection(2)(torch.ones(1, 3, 8, 8))
    assert y.shape == (1, 3, 2, 2)
    assert float(InputInjection(1)(torch.ones(1, 1, 4, 4))[0, 0, 0, 0]) == pytest.approx(4 / 9)


def test_official_preprocessing_is_mean_subtraction_on_rgb():
    """Official: cv2 BGR -> [:, :, ::-1] (RGB) -> minus the stored mean; no std, no /255."""
    cfg = rtseg.load_official("cgnet", official_state_dict()).pretrained_cfg
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    bgr = rgb[..., ::-1]  # what cv2.imread gives
    official = bgr[..., ::-1].astype(np.float32) - np.array([73.15835921, 82.90891754, 72.39239876], np.float32)
    got = normalize(rgb, cfg)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, official, rtol=0, atol=1e-4)
    assert cfg.size_divisor == 1 and cfg.input_size is None and "MIT" in cfg.licence
