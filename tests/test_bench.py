"""``rtseg bench``: JSON fields, plot, parameter listing, FLOP counting (no timing targets here)."""
import json

import pytest
import torch

import rtseg
from rtseg.bench import bench_model, count_flops, format_table, plot
from rtseg.cli import main


def test_bench_sinet_writes_json_and_png(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RTSEG_MEDIAPIPE_PYTHON", raising=False)
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    code = main(["bench", "sinet", "--size", "64x64", "--threads", "1", "--iters", "3", "--warmup", "1",
                 "--backend", "fused", "--json", str(out), "--plot", str(png)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| sinet" in text and "p50 ms" in text
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] == 1 and data["machine"]["torch"] == torch.__version__
    assert "2 FLOPs per MAC" in data["flops_convention"]
    assert [r["backend"] for r in data["results"]] == ["fused"]
    for r in data["results"]:
        assert r["model"] == "sinet" and r["size"] == [64, 64] and r["batch"] == 1 and r["threads"] == 1
        assert r["params"] == 86910 and r["flops"] > 0 and r["macs"] == r["flops"] // 2
        assert 0 < r["p50_ms"] <= r["p90_ms"] and r["fps"] == pytest.approx(1000 / r["p50_ms"])
        assert r["peak_rss_mb"] > r["rss_after_import_mb"] > 0  # measured in its own process
        assert r["iters"] == 3 and r["max_abs_diff"] < 1e-4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_params_only(capsys):
    assert main(["bench", "sinet", "cgnet", "--params"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["sinet", "86,910"] and lines[1].split() == ["cgnet", "496,306"]


def test_unknown_model_and_missing_mediapipe(capsys, monkeypatch):
    assert main(["bench", "nosuchnet", "--params"]) == 2
    assert "valid names" in capsys.readouterr().err
    monkeypatch.setenv("RTSEG_MEDIAPIPE_PYTHON", "/nonexistent/python")
    assert main(["bench", "sinet", "--compare", "mediapipe", "--iters", "1"]) == 2
    assert "/nonexistent/python" in capsys.readouterr().err


def test_flops_are_twice_the_macs_of_sinet():
    """SINet: 0.064 GMAC (the paper's "0.064 GFLOPs") = 0.128 GFLOPs at 224x224."""
    flops = count_flops(rtseg.create_model("sinet"), torch.zeros(1, 3, 224, 224))
    assert flops == pytest.approx(0.1277e9, rel=1e-3)


def test_in_process_bench_and_table(tmp_path):
    r = bench_model("sinet", "eager", (64, 64), threads=1, iters=2, warmup=0)
    assert r.resolved_backend == "eager" and r.max_abs_diff == 0.0
    table = format_table([r])
    assert "86,910" in table and "0.010" in table  # GFLOPs at 64x64
    plot([r], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_from_json_reprints_the_table_and_plot(tmp_path, capsys):
    """``rtseg bench --from-json`` measures nothing: it reads earlier --json files back (as
    BENCHMARKS.md is made) and refuses a file that is not one, in one line."""
    from rtseg.bench import BenchResult, write_json

    a = BenchResult(model="sinet", backend="eager", size=(224, 224), batch=1, threads=2, params=86910, p50_ms=30.0,
                    p90_ms=31.0, fps=33.3)
    b = BenchResult(model="sinet", backend="openvino", size=(224, 224), batch=1, threads=2, params=86910,
                    p50_ms=4.0, p90_ms=4.2, fps=250.0, precision="int8", argmax_agreement=0.99)
    write_json([a], tmp_path / "a.json", machine={"cpu": "x", "threads": 2}, command="test")
    write_json([b], tmp_path / "b.json", machine={"cpu": "x", "threads": 2}, command="test")
    assert main(["bench", "--from-json", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "| sinet" in out and "30.00" in out and "openvino int8" in out and "99.000%" in out
    assert (tmp_path / "p.png").stat().st_size > 1000
    (tmp_path / "bad.json").write_text("{}")
    assert main(["bench", "--from-json", str(tmp_path / "bad.json")]) != 0
    assert "bad.json: not a benchmark JSON" in capsys.readouterr().err
