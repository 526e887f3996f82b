"""``rtseg predict PATH... [--model M] [--weights W] [--out DIR]``: images, folders and videos."""
from __future__ import annotations

import argparse

from .common import add_model_arguments, load_model_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders of images, video files")
    add_model_arguments(p)
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--smooth", action="store_true", help="temporal smoothing of video predictions")
    p.add_argument("--backend", default=None,
                   help="inference backend: auto (default, or $RTSEG_BACKEND: the measured fastest for the model, "
                        "outputs within 1e-4 of eager), eager, fused, onnxruntime, openvino, compile (BENCHMARKS.md)")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="fp32 (default, within 1e-4 of eager); int8 / bf16: faster, less exact (BENCHMARKS.md)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this many pixels")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..data.io import check_output_dir
    from ..pipeline import check_inputs, predict_paths

    check_inputs(args.inputs, args.max_pixels)  # bad inputs / output folder: fail before loading weights
    check_output_dir(args.out)
    model = load_model_from_args(args)
    from ..inference import default_backend

    model = _with_backend(model, args.backend or default_backend(), args.precision)
    results = predict_paths(model, args.inputs, args.out, alpha=args.alpha, smooth=args.smooth,
                            progress=not args.no_progress, max_pixels=args.max_pixels)
    for written in results:
        print("  ".join(f"{k}: {v}" for k, v in written.items()))
    print(f"weights: {model.pretrained_cfg.source}")
    precision = model.precision
    print(f"backend: {model.backend}" + ("" if precision == "fp32" else f" {precision}"))
    return 0


def _with_backend(model, backend: str, precision: str = "fp32"):
    """Always a FastModel (``eager`` included): prediction runs a FastModel as it is, whereas a
    plain module would get the default backend."""
    from ..fast import optimize

    return optimize(model, backend=backend, precision=precision)
