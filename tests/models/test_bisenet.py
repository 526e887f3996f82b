import numpy as np
import pytest
import torch
import torchvision

import rtseg
from rtseg.models.bisenet import BiSeNetFace, BiSeNetV1, ChannelAttention, FeatureFusionModule
from rtseg.parity import main as parity_main
from tests.conftest import parity_fixture
from tests.models.base import SemanticModelChecks

V1_FIXTURE = "bisenetv1_c19.npz"
FACE_FIXTURE = "bisenet_faceparsing_c19.npz"


class TestBiSeNetV1(SemanticModelChecks):
    name = "bisenet_v1"
    kwargs = {"num_classes": 19}
    size = (64, 96)  # multiples of 32, as the official network needs


class TestBiSeNetFace(SemanticModelChecks):
    name = "bisenet_face"
    kwargs = {"num_classes": 19}
    size = (72, 56)  # any size works (explicit-size nearest up-sampling)


def official_state_dict(fixture: str) -> dict[str, torch.Tensor]:
    z = np.load(parity_fixture(fixture))
    return {k[len("state_dict/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("state_dict/")}


@pytest.mark.parametrize("name, count", [("bisenet_v1", 13425721), ("bisenet_face", 13300416)])
def test_parameter_count_matches_official(name, count):
    assert sum(p.numel() for p in rtseg.create_model(name).parameters()) == count


@pytest.mark.parametrize("fixture", [V1_FIXTURE, FACE_FIXTURE])
def test_parity_all_three_outputs(fixture, capsys):
    assert parity_main([str(parity_fixture(fixture))]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and all(f"output.{i}" in out for i in range(3))


@pytest.mark.parametrize("name, fixture", [("bisenet_v1", V1_FIXTURE), ("bisenet_face", FACE_FIXTURE)])
def test_float64_matches_reference_exactly(name, fixture):
    z = np.load(parity_fixture(fixture))
    model = rtseg.load_official(name, official_state_dict(fixture)).double()
    with torch.no_grad():
        outs = model.forward_all(torch.from_numpy(z["input"]).double())
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out.numpy(), z[f"output64.{i}"], rtol=0, atol=1e-9, err_msg=f"output.{i}")


@pytest.mark.parametrize("name, fixture", [("bisenet_v1", V1_FIXTURE), ("bisenet_face", FACE_FIXTURE)])
def test_train_returns_main_and_aux_eval_returns_main(name, fixture):
    z = np.load(parity_fixture(fixture))
    model = rtseg.load_official(name, official_state_dict(fixture))  # V1: checkpoint WITH aux heads
    x = torch.from_numpy(z["input"]).float()
    with torch.no_grad():
        main = model(x)
        assert isinstance(main, torch.Tensor)
        torch.testing.assert_close(main, model.forward_all(x)[0])
        np.testing.assert_allclose(main.double().numpy(), z["output64.0"], rtol=0, atol=5e-5)
        model.train()
        outs = model(torch.randn(2, 3, 64, 64))
    assert isinstance(outs, tuple) and len(outs) == 3
    assert all(o.shape == (2, 19, 64, 64) for o in outs)


def test_checkpoints_of_the_two_variants_do_not_mix():
    with pytest.raises(rtseg.CheckpointError) as e:
        rtseg.load_official("bisenet_v1", official_state_dict(FACE_FIXTURE))
    msg = str(e.value)  # the FFMs differ (conv + BN vs two-layer MLP) and the face net has no spatial path
    assert "33 missing keys" in msg and "unexpected keys (ffm.attention.transform.fc1.weight" in msg
    assert "\n" not in msg


def test_context_path_backbone_is_torchvision_resnet18():
    backbone = BiSeNetV1().context_path.backbone
    ref = torchvision.models.resnet18(weights=None).state_dict()
    expected = {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in backbone.state_dict().items()} == expected


def test_variants_differ_as_the_references_do():
    v1, face = BiSeNetV1(), BiSeNetFace()
    assert hasattr(v1, "spatial_path") and not hasattr(face, "spatial_path")
    assert v1.head.classifier.bias is not None and face.head.classifier.bias is None
    assert hasattr(v1.ffm.attention.transform, "bn") and face.ffm.attention.transform.fc1.out_channels == 64
    face.eval()
    with torch.no_grad():  # any size: logits come back at the input size
        assert face(torch.randn(1, 3, 40, 72)).shape == (1, 19, 40, 72)


def test_ffm_adds_attended_feature_to_itself():
    """FFM: out = feat * w + feat with w = sigmoid(...) in (0, 1), feat >= 0 after ReLU."""
    torch.manual_seed(0)
    for reduction in (None, 4):
        ffm = FeatureFusionModule(16, 16, reduction).eval()
        s, c = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 6, 5)
        with torch.no_grad():
            feat = ffm.fuse(torch.cat([s, c], dim=1))
            ratio = (ffm(s, c) / feat)[feat > 1e-3]
        assert bool((ratio > 1).all() and (ratio < 2).all())


def test_channel_attention_is_one_weight_per_channel():
    att = ChannelAttention(8).eval()
    x = torch.rand(1, 8, 4, 4) + 0.1
    with torch.no_grad():
        ratio = att(x) / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)


def test_official_configs():
    v1, face = rtseg.create_model("bisenet_v1"), rtseg.create_model("bisenet_face")
    cfg = rtseg.models.get_spec("bisenet_v1").official_cfg
    assert cfg.mean == (0.3257, 0.3690, 0.3223) and cfg.size_divisor == 32 and cfg.class_names[0] == "road"
    cfg = rtseg.models.get_spec("bisenet_face").official_cfg
    assert cfg.input_size == (512, 512) and cfg.mean == (0.485, 0.456, 0.406) and cfg.class_names[1] == "skin"
    assert v1.pretrained_cfg.source == face.pretrained_cfg.source == "random initialisation"
