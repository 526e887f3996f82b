import json

import numpy as np
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from rtseg.models.vovnet import VOVNET_SPECS, EffectiveSE, VoVNet, convert_official_vovnet
from rtseg.parity import main as parity_main
from tests.conftest import parity_fixture

FIXTURES = {
    "vovnet19_slim_dw_ese.npz": "V-19-slim-dw-eSE",
    "vovnet19_ese.npz": "V-19-eSE",
    "vovnet39_ese.npz": "V-39-eSE",
}
ALL = ["stem", "stage2", "stage3", "stage4", "stage5"]


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_parity(fixture, capsys):
    assert parity_main([str(parity_fixture(fixture))]) == 0
    assert "FAIL" not in capsys.readouterr().out


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_parameter_and_buffer_counts_match_fixture(fixture):
    z = np.load(parity_fixture(fixture))
    meta = json.loads(str(z["meta"]))
    model = VoVNet(FIXTURES[fixture], out_features=ALL)
    assert sum(p.numel() for p in model.parameters()) == meta["params"]
    assert sum(v.numel() for v in model.state_dict().values()) == meta["state_dict_numel"]
    official = [k[len("state_dict/"):] for k in z.files if k.startswith("state_dict/")]
    assert sorted(convert_official_vovnet(dict.fromkeys(official, 0))) == sorted(model.state_dict())


def test_feature_contract_and_ceil_mode_pooling():
    model = VoVNet("V-19-slim-dw-eSE", out_features=ALL).eval()
    assert model.feature_info == {"stem": (64, 4), "stage2": (112, 4), "stage3": (256, 8),
                                  "stage4": (384, 16), "stage5": (512, 32)}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 130))
    # stem /4: 25x33; ceil-mode 3x3/2 pools: 12x16, 6x8, 3x4 (floor mode would give 12x16, 5x7, 2x3)
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "stem": (25, 33), "stage2": (25, 33), "stage3": (12, 16), "stage4": (6, 8), "stage5": (3, 4)}
    assert [v.shape[1] for v in out.values()] == [c for c, _ in model.feature_info.values()]


def test_default_out_features_are_stages_3_to_5():
    model = VoVNet("V-19-slim-eSE").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["stage3", "stage4", "stage5"]
    assert [v.shape[1] for v in out.values()] == [256, 384, 512]


def test_ese_in_every_osa_module_and_identity_on_later_modules():
    """centermask2 quirk: eSE also in the first module of multi-module stages (timm omits it)."""
    model = VoVNet("V-57-eSE")
    assert [len(getattr(model, f"stage{i}").blocks) for i in range(2, 6)] == list(VOVNET_SPECS["V-57-eSE"].block_per_stage)
    for name in ("stage2", "stage3", "stage4", "stage5"):
        for i, block in enumerate(getattr(model, name).blocks):
            assert isinstance(block.ese, EffectiveSE)
            assert block.identity == (i > 0)
            assert len(block.layers) == 5
    assert getattr(model, "stage2").pool is None and getattr(model, "stage3").pool.ceil_mode


def test_depthwise_variant_layout():
    model = VoVNet("V-19-slim-dw-eSE")
    assert model.stem[0].conv.groups == 1  # first stem conv stays a regular conv
    assert model.stem[1].dw.groups == 64 and model.stem[2].dw.stride == (2, 2)
    assert model.stage2.blocks[0].reduction is None  # 64 in == 64 stage channels
    assert model.stage3.blocks[0].reduction.conv.weight.shape == (80, 112, 1, 1)
    # the concat takes the module input before the reduction: 112 + 3 * 80
    assert model.stage3.blocks[0].aggregation.conv.in_channels == 112 + 3 * 80


def test_effective_se_is_hard_sigmoid_without_reduction():
    se = EffectiveSE(8)
    assert se.fc.weight.shape == (8, 8, 1, 1) and se.fc.bias is not None
    torch.nn.init.zeros_(se.fc.weight)
    torch.nn.init.constant_(se.fc.bias, 1.5)  # hsigmoid(1.5) = 4.5 / 6
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(se(x), x * 0.75)


def test_norm_choices_and_freeze():
    frozen = VoVNet("V-19-slim-dw-eSE")
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    bn = VoVNet("V-19-slim-dw-eSE", norm="BN", freeze_at=2)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    assert not any(p.requires_grad for p in bn.stem.parameters())
    assert not any(p.requires_grad for p in bn.stage2.parameters())
    assert all(p.requires_grad for p in bn.stage3.parameters())
    with pytest.raises(ValueError, match="conv_body"):
        VoVNet("V-18")


def test_converter_accepts_full_checkpoint_prefix():
    keys = ["stem.stem_1/conv.weight", "stem.stem_2/dw_conv3x3.weight", "stem.stem_2/pw_norm.running_var",
            "stage3.OSA3_1.conv_reduction.OSA3_1_reduction_0/norm.bias",
            "stage4.OSA4_2.layers.4.OSA4_2_4/conv.weight", "stage5.OSA5_1.concat.OSA5_1_concat/norm.weight",
            "stage2.OSA2_1.ese.fc.bias"]
    expected = ["stem.0.conv.weight", "stem.1.dw.weight", "stem.1.norm.running_var",
                "stage3.blocks.0.reduction.norm.bias", "stage4.blocks.1.layers.4.conv.weight",
                "stage5.blocks.0.aggregation.norm.weight", "stage2.blocks.0.ese.fc.bias"]
    bare = convert_official_vovnet(dict.fromkeys(keys, 0))
    full = convert_official_vovnet({"backbone.bottom_up." + k: 0 for k in keys})
    assert list(bare) == expected and list(full) == expected
