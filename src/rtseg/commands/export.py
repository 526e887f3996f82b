"""``rtseg export --model NAME --format onnx --out FILE``: export, then check in onnxruntime."""
from __future__ import annotations

import argparse

from .common import add_model_arguments, load_model_from_args, parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, default_model=None)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, help="output file, e.g. sinet.onnx")
    p.add_argument("--size", type=parse_size, default=None,
                   help="trace size HxW (default: the model's input size, else 512x512; SINet 224x224; "
                        "SINet needs H, W in {32k-3..32k})")
    p.add_argument("--batch", type=int, default=1, help="trace batch size (default 1)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--static", action="store_true", help="fixed batch and spatial size (default: dynamic axes)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed vs PyTorch (default 1e-4)")


def run(args: argparse.Namespace) -> int:
    from ..errors import RtsegError
    from ..export import export_onnx

    if not args.model:
        raise RtsegError("--model is required (see `rtseg models`)")
    model = load_model_from_args(args)
    report = export_onnx(model, args.out, size=args.size, batch=args.batch, opset=args.opset,
                         dynamic=not args.static, atol=args.atol)
    axes = "batch, height, width" if report.dynamic else "none (static)"
    print(f"wrote {report.path} ({report.num_bytes / 2**20:.2f} MiB, opset {report.opset}), input 'input' "
          f"{tuple(report.input_shape)} float32, outputs {', '.join(report.output_names)}")
    print(f"dynamic axes: {axes}; valid sizes: {report.size_rule}")
    print(f"preprocessing: {model.pretrained_cfg.channel_order}, mean {model.pretrained_cfg.mean}, "
          f"std {model.pretrained_cfg.std}, pre_scale {model.pretrained_cfg.pre_scale:g}, "
          f"post_scale {model.pretrained_cfg.post_scale:g}")
    for c in report.checks:
        verdict = "ok" if c.passes(report.atol) else "FAILED"
        line = (f"onnxruntime vs PyTorch at {c.shape}: max abs diff {c.max_abs_diff:.2e} "
                f"(outputs up to {c.max_abs_ref:.3g}; tolerance {report.atol:g})")
        if c.f32_gap is not None:
            line += (f"; vs a float64 run: onnxruntime {c.diff_to_f64:.2e}, PyTorch float32 {c.f32_gap:.2e} "
                     f"(allowed {max(report.atol, 2 * c.f32_gap):.2e})")
        print(f"{line} {verdict}")
    return 0 if report.ok else 1
