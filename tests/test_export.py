"""ONNX export of every model, checked in onnxruntime at the export size and at a second size
(dynamic batch and spatial axes), and the ``rtseg export`` command."""
import onnx
import pytest
import torch

import rtseg
from rtseg.cli import main
from rtseg.errors import RtsegError
from rtseg.export import check_size, export_onnx, onnx_bytes, example_input
from tests.conftest import PARITY


@pytest.mark.parametrize("name", rtseg.list_models())
def test_export_and_onnxruntime_check_every_model(name, tmp_path):
    torch.manual_seed(0)
    model = rtseg.create_model(name).eval()
    out = tmp_path / f"{name}.onnx"
    report = export_onnx(model, out, size=(64, 64))
    assert out.exists() and report.num_bytes == out.stat().st_size
    onnx.checker.check_model(str(out))
    assert report.dynamic and len(report.checks) == 2
    assert report.checks[0].shape == (1, 3, 64, 64) and report.checks[1].shape == (2, 3, 96, 128)  # 2nd size
    assert report.ok, report.checks
    for c in report.checks:  # within 1e-4, or (random deep nets) as close to float64 as PyTorch is
        assert c.max_abs_diff < 1e-4 or c.diff_to_f64 <= 2 * c.f32_gap, c
    assert all(c.max_abs_ref > 0 for c in report.checks)
    if rtseg.models.MODELS[name].task == "semantic":
        assert report.output_names == ["logits"]
    else:
        assert report.output_names[0] == "cls_logits_p3" and len(report.output_names) == 15


def test_static_export_has_fixed_shapes():
    model = rtseg.create_model("sinet").eval()
    graph = onnx.load_from_string(onnx_bytes(model, example_input(model, (64, 64)), dynamic=False)).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]


def test_sinet_size_rule():
    model = rtseg.create_model("sinet")
    check_size(model, (61, 224))  # 32k - 3 is valid
    with pytest.raises(RtsegError, match="32k-3"):
        check_size(model, (60, 224))


def test_cli_export_prints_diff_and_exit_code(tmp_path, capsys):
    out = tmp_path / "sinet.onnx"
    assert main(["export", "--model", "sinet", "--out", str(out), "--size", "64x96"]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "max abs diff" in text and "ok" in text and "32k-3" in text
    assert main(["export", "--model", "sinet", "--out", str(out), "--size", "60x96"]) == 2
    err = capsys.readouterr().err
    assert "32k-3" in err and len(err.strip().splitlines()) == 1


def test_cli_export_fails_above_tolerance(tmp_path, capsys, monkeypatch):
    import rtseg.export as export

    real = export.check_onnx

    def worse(*a, **k):
        c = real(*a, **k)
        c.max_abs_diff += 1.0
        return c

    monkeypatch.setattr(export, "check_onnx", worse)
    assert main(["export", "--model", "sinet", "--out", str(tmp_path / "s.onnx"), "--size", "64", "--static"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_export_official_sinet_weights(tmp_path, capsys):
    weights = PARITY / "sinet_official_eg1800.pth"
    if not weights.exists():
        pytest.skip(f"{weights} not present")
    out = tmp_path / "sinet_official.onnx"
    assert main(["export", "--model", "sinet", "--weights", str(weights), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(1, 3, 224, 224)" in text and "BGR" in text
