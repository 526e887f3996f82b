import numpy as np
import pytest
import torch

import rtseg
from rtseg.models.sinet import InformationBlockingDecoder, S2Block, S2Module, SINet
from rtseg.parity import main as parity_main
from tests.conftest import parity_fixture
from tests.models.base import SemanticModelChecks


class TestSINet(SemanticModelChecks):
    name = "sinet"
    kwargs = {"num_classes": 2}
    size = (64, 96)


def test_parameter_count_matches_official():
    assert sum(p.numel() for p in rtseg.create_model("sinet").parameters()) == 86910


@pytest.mark.parametrize("fixture", ["sinet_official_eg1800.npz", "sinet_random.npz"])
def test_parity(fixture, capsys):
    assert parity_main([str(parity_fixture(fixture))]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_s2block_pooling_keeps_size():
    block = S2Block(8, 6, kernel_size=3, pool=4).eval()
    assert block(torch.randn(1, 8, 16, 24)).shape == (1, 6, 16, 24)


def test_s2module_both_branches_see_whole_shuffled_tensor():
    m = S2Module(16, 49, ((3, 1), (5, 1)), residual=False)
    assert m.reduce.weight.shape == (24, 8, 1, 1)  # grouped 1x1, groups=2
    assert m.branches[0].dw.in_channels == 24 and m.branches[1].dw.in_channels == 24
    assert m.branches[0].pw.out_channels == 25 and m.branches[1].pw.out_channels == 24
    assert m(torch.randn(1, 16, 8, 8)).shape == (1, 49, 8, 8)


def test_information_blocking_gate():
    """Where the low-res prediction is confident, high-res features are blocked (gate ~ 0)."""
    dec = InformationBlockingDecoder(high_channels=4, num_classes=2).eval()
    low = torch.zeros(1, 2, 4, 4)
    low[:, 0] = 50.0  # very confident everywhere
    high_a, high_b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        a, b = dec(low, high_a), dec(low, high_b)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    low_unsure = torch.zeros(1, 2, 4, 4)  # confidence 0.5 -> gate 0.5: high-res features matter
    with torch.no_grad():
        assert not torch.allclose(dec(low_unsure, high_a), dec(low_unsure, high_b))


def test_load_official_checkpoint_and_predict():
    model = rtseg.load_official("sinet", parity_fixture("sinet_official_eg1800.pth"))
    assert not model.training
    cfg = model.pretrained_cfg
    assert cfg.channel_order == "BGR" and cfg.post_scale == pytest.approx(1 / 255)
    z = np.load(parity_fixture("sinet_official_eg1800.npz"))
    rgb = z["image"][0][..., ::-1].copy()  # fixture image is BGR
    mask = rtseg.predict(model, rgb)
    ref = np.load(parity_fixture("sinet_official_eg1800.npz"))["output64"][0].argmax(0)
    assert mask.shape == (224, 224)
    assert (mask == ref).mean() > 0.99
    assert 0.25 < mask.mean() < 0.45  # the fixture's silhouette covers ~35 %


def test_load_official_accepts_wrappers_and_prefixes():
    sd = torch.load(parity_fixture("sinet_official_eg1800.pth"), map_location="cpu", weights_only=True)
    wrapped = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    model = rtseg.load_official("sinet", wrapped)
    ref = rtseg.load_official("sinet", sd)
    x = torch.randn(1, 3, 64, 64) * 0.01
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_load_official_mismatch_is_clear():
    sd = torch.load(parity_fixture("sinet_official_eg1800.pth"), map_location="cpu", weights_only=True)
    sd.pop("bn_2.weight")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(rtseg.CheckpointError) as e:
        rtseg.load_official("sinet", sd)
    msg = str(e.value)
    assert "missing" in msg and "unexpected" in msg and "extra.weight" in msg and "\n" not in msg
