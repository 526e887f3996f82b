"""ONNX export of any rtseg model, checked in onnxruntime against PyTorch.

The graph takes ``input``: float32 (N, 3, H, W) already preprocessed as the model's
``pretrained_cfg`` says (channel order, mean/std, scales; :func:`rtseg.inference.normalize`) and
returns what the eager model returns in eval mode:

* semantic models: ``logits`` (N, C, H', W'), H' = H except SINet (H' = 32 * ceil(H / 32));
* instance models (CenterMask): the flat tuple of raw FCOS head outputs, named
  ``cls_logits_p3..p7``, ``bbox_reg_p3..p7``, ``ctrness_p3..p7``.

Axes ``batch``, ``height`` and ``width`` are dynamic by default; :func:`export_onnx` checks the
exported graph in onnxruntime at the export size *and* at a second size, so a shape that the
trace froze would show up as a failed check. Valid sizes follow each architecture:
:func:`size_rule` states them (SINet: H and W in {32k-3, ..., 32k}).

The exporter is torch's TorchScript-based ``torch.onnx.export(dynamo=False)``: it needs no
extra package (the dynamo exporter needs ``onnxscript``) and handles every rtseg model.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .errors import RtsegError

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
PathLike = Union[str, os.PathLike]


def size_rule(model: nn.Module) -> str:
    """The input sizes the bare network accepts, in words."""
    name = getattr(model, "rtseg_name", "")
    if name == "sinet":
        return "H and W in {32k-3, ..., 32k}; output 32*ceil(H/32) x 32*ceil(W/32)"
    if name == "bisenet_v1":
        return "any H, W (official: multiples of 32); main output 8*ceil(H/8) x 8*ceil(W/8)"
    if name.startswith("centermask"):
        return "any H, W (padded to a multiple of 32 inside the graph)"
    return "any H, W; output at the input size"


def check_size(model: nn.Module, size: Sequence[int]) -> None:
    """Raise :class:`RtsegError` (one line) when the bare network cannot take ``size`` (H, W)."""
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise RtsegError(f"size {h}x{w}: at least 32x32 is needed")
    if getattr(model, "rtseg_name", "") == "sinet" and any(v % 32 not in (0, 29, 30, 31) for v in (h, w)):
        raise RtsegError(f"size {h}x{w}: SINet needs H and W in {{32k-3, ..., 32k}} (e.g. 224x224, 256x320)")


def default_size(model: nn.Module) -> tuple[int, int]:
    """The model's fixed input size if its config has one, else 512x512 (224x224 for SINet)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None and cfg.input_size is not None:
        return tuple(cfg.input_size)  # type: ignore[return-value]
    return (224, 224) if getattr(model, "rtseg_name", "") == "sinet" else (512, 512)


def second_size(size: Sequence[int]) -> tuple[int, int]:
    """A different valid size to check dynamic axes with (valid for every rtseg model)."""
    return int(size[0]) + 32, int(size[1]) + 64


def example_input(model: nn.Module, size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A realistic network input: a smooth synthetic colour image, preprocessed by the model's
    ``pretrained_cfg`` (so outputs have their usual range: SINet's official weights, fed N(0,1)
    noise instead, give logits of 1e7)."""
    from .config import PretrainedCfg
    from .inference import normalize

    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    low = rng.integers(0, 256, size=(batch, 3, max(2, h // 16), max(2, w // 16))).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(low), size=(h, w), mode="bilinear", align_corners=False)
    img = img + torch.from_numpy(rng.normal(0, 8, size=(batch, 3, h, w)).astype(np.float32))
    rgb = img.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    cfg = getattr(model, "pretrained_cfg", None) or PretrainedCfg()
    return normalize(rgb, cfg)


def output_names(model: nn.Module, count: int) -> list[str]:
    if count == 1:
        return ["logits"]
    if getattr(model, "rtseg_name", "").startswith("centermask") and count % 3 == 0:
        levels = range(3, 3 + count // 3)
        return [f"{kind}_p{lv}" for kind in ("cls_logits", "bbox_reg", "ctrness") for lv in levels]
    return [f"output_{i}" for i in range(count)]


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def onnx_bytes(model: nn.Module, example: torch.Tensor, *, opset: int = DEFAULT_OPSET, dynamic: bool = True) -> bytes:
    """Export ``model`` (in eval mode, unchanged afterwards) traced at ``example`` to ONNX bytes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            count = len(_flat(model(example)))
        names = output_names(model, count)
        axes: Optional[dict[str, dict[int, str]]] = None
        if dynamic:
            axes = {"input": {0: "batch", 2: "height", 3: "width"}}
            for i, n in enumerate(names):
                axes[n] = {0: "batch", 2: f"{n}_height", 3: f"{n}_width"}
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the legacy-exporter notice
            torch.onnx.export(model, (example,), buf, opset_version=opset, input_names=["input"],
                              output_names=names, dynamic_axes=axes, do_constant_folding=True, dynamo=False)
        return buf.getvalue()
    finally:
        model.train(was_training)


@dataclass
class Check:
    """One onnxruntime-vs-PyTorch comparison at one input shape.

    ``f32_gap`` (only computed when ``max_abs_diff`` exceeds the tolerance) is how far PyTorch's
    own float32 outputs are from a float64 run of the same model: randomly initialised deep
    networks (CenterMask's VoVNet with identity FrozenBN reaches activations of 1e3) have float32
    noise above 1e-4, and then the export passes if it is as close to float64 as PyTorch is.
    """

    shape: tuple[int, ...]
    max_abs_diff: float
    max_abs_ref: float
    f32_gap: Optional[float] = None
    diff_to_f64: Optional[float] = None

    def passes(self, atol: float) -> bool:
        if self.max_abs_diff <= atol:
            return True
        return self.f32_gap is not None and self.diff_to_f64 is not None and self.diff_to_f64 <= max(atol, 2 * self.f32_gap)


@dataclass
class ExportReport:
    path: Optional[str]
    opset: int
    input_shape: tuple[int, ...]
    dynamic: bool
    output_names: list[str]
    size_rule: str
    atol: float
    num_bytes: int
    checks: list[Check] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=float("nan"))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passes(self.atol) for c in self.checks)


def check_onnx(onnx: Union[bytes, PathLike], model: nn.Module, x: torch.Tensor, threads: Optional[int] = None,
               atol: float = DEFAULT_ATOL) -> Check:
    """Run the ONNX graph in onnxruntime and PyTorch eager on ``x``; max abs diff over outputs.

    Above ``atol``, a float64 run of the model tells PyTorch's own float32 error (:class:`Check`).
    """
    import copy

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.log_severity_level = 3
    src = onnx if isinstance(onnx, bytes) else str(onnx)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = [t.numpy() for t in _flat(model(x))]
    finally:
        model.train(was_training)
    if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
        shapes = f"{[g.shape for g in got]} vs {[r.shape for r in ref]}"
        raise RtsegError(f"exported graph at input {tuple(x.shape)}: output shapes differ from PyTorch: {shapes}")
    check = Check(tuple(x.shape), _max_diff(got, ref), max(float(np.abs(r).max()) if r.size else 0.0 for r in ref))
    if check.max_abs_diff > atol:
        with torch.no_grad():
            ref64 = [t.numpy() for t in _flat(copy.deepcopy(model).eval().double()(x.double()))]
        check.f32_gap = _max_diff(ref, ref64)
        check.diff_to_f64 = _max_diff(got, ref64)
    return check


def _max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(float(np.abs(x.astype(np.float64) - y).max()) if y.size else 0.0 for x, y in zip(a, b))


def export_onnx(model: nn.Module, out: Optional[PathLike], *, size: Optional[Sequence[int]] = None, batch: int = 1,
                opset: int = DEFAULT_OPSET, dynamic: bool = True, atol: float = DEFAULT_ATOL,
                check: bool = True) -> ExportReport:
    """Export ``model`` to ONNX at ``size`` (H, W), write it to ``out`` (atomically; ``None``
    writes nothing) and check it in onnxruntime against PyTorch at ``size`` and, with dynamic
    axes, at :func:`second_size` with batch ``batch + 1``."""
    size = tuple(size) if size is not None else default_size(model)
    check_size(model, size)
    x = example_input(model, size, batch)
    data = onnx_bytes(model, x, opset=opset, dynamic=dynamic)
    report = ExportReport(path=str(out) if out is not None else None, opset=opset, input_shape=tuple(x.shape),
                          dynamic=dynamic, output_names=[], size_rule=size_rule(model), atol=atol, num_bytes=len(data))
    import onnx as onnx_lib

    report.output_names = [o.name for o in onnx_lib.load_from_string(data).graph.output]
    if check:
        report.checks.append(check_onnx(data, model, x, atol=atol))
        if dynamic:
            x2 = example_input(model, second_size(size), batch + 1, seed=1)
            report.checks.append(check_onnx(data, model, x2, atol=atol))
    if out is not None:
        from .fileio import write_bytes_atomic

        write_bytes_atomic(Path(out), data)
    return report


__all__ = ["export_onnx", "onnx_bytes", "check_onnx", "check_size", "size_rule", "example_input", "ExportReport",
           "Check", "DEFAULT_OPSET", "DEFAULT_ATOL"]
