"""Numerical parity with the official implementations.

``python -m rtseg.parity FIXTURE.npz [...]`` reads each fixture's ``meta``, picks the rtseg
model or part from ``meta["reference_repo"]`` and ``meta["build"]`` (never from the file name),
converts the stored reference state_dict with rtseg's official-checkpoint converter, runs the
stored input and compares every recorded output against the float64 reference:
``atol = 10 x the recorded float32/float64 gap`` (``rtol = 0``), as ../shared/parity/README.md
prescribes. Exit code 0 only when every output of every fixture passes.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import load_state_dict_strict

StateDict = dict[str, torch.Tensor]
Outputs = dict[str, torch.Tensor]


@dataclass
class ParityCase:
    """What a target builds for one fixture: the module, its key converter, and a runner that
    returns the outputs under the fixture's names (``output``, ``output.0``, ``hook.x`` ...)."""

    module: nn.Module
    convert: Callable[[StateDict], StateDict]
    run: Callable[[nn.Module, list[torch.Tensor]], Outputs]


@dataclass(frozen=True)
class ParityTarget:
    """A reference repository + a regular expression over its ``build`` string."""

    reference_repo: str
    build: str
    make: Callable[[re.Match, dict[str, Any]], ParityCase]
    description: str = ""


def _kwargs_from_call(text: str) -> dict[str, Any]:
    """``f(a=1, b='x')`` -> {"a": 1, "b": "x"} for simple literal keyword arguments."""
    out: dict[str, Any] = {}
    for key, val in re.findall(r"(\w+)\s*=\s*('[^']*'|\"[^\"]*\"|[\w.\-]+)", text):
        try:
            out[key] = json.loads(val.replace("'", '"')) if val[0] in "'\"" else int(val)
        except ValueError:
            out[key] = {"True": True, "False": False}.get(val, val)
    return out


def _single(module: nn.Module, xs: list[torch.Tensor]) -> Outputs:
    return {"output": module(xs[0])}


def _tuple_outputs(fn: Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]]) -> Callable[[nn.Module, list[torch.Tensor]], Outputs]:
    def run(module: nn.Module, xs: list[torch.Tensor]) -> Outputs:
        return {f"output.{i}": t for i, t in enumerate(fn(module, xs[0]))}
    return run


# --- targets ---------------------------------------------------------------------------------

def _sinet(m: re.Match, meta: dict[str, Any]) -> ParityCase:
    from .models import create_model, get_spec

    kw = _kwargs_from_call(m.group(0))
    model = create_model("sinet", num_classes=kw.get("classes", 2), p=kw.get("p", 2), q=kw.get("q", 8),
                         chnn=kw.get("chnn", 1))
    return ParityCase(model, get_spec("sinet").convert_official, _single)


def _cgnet(m: re.Match, meta: dict[str, Any]) -> ParityCase:
    from .models import create_model, get_spec

    kw = _kwargs_from_call(m.group(1))
    model = create_model("cgnet", num_classes=kw.get("classes", 19), M=kw.get("M", 3), N=kw.get("N", 21),
                         dropout=bool(kw.get("dropout_flag", False)))
    return ParityCase(model, get_spec("cgnet").convert_official, _single)


def _bisenet(name: str) -> Callable[[re.Match, dict[str, Any]], ParityCase]:
    """BiSeNetV1 / face-parsing BiSeNet: the references return (main, aux16, aux32) in eval mode
    too, which rtseg gives with ``forward_all``."""
    def make(m: re.Match, meta: dict[str, Any]) -> ParityCase:
        from .models import create_model, get_spec

        model = create_model(name, num_classes=int(m.group(1)))
        return ParityCase(model, get_spec(name).convert_official, _tuple_outputs(lambda mod, x: mod.forward_all(x)))
    return make


def _deeplabv3plus(m: re.Match, meta: dict[str, Any]) -> ParityCase:
    from .models import create_model, get_spec

    kw = _kwargs_from_call(m.group(2))
    backbone = {"mobilenet": "mobilenet_v2"}.get(m.group(1), m.group(1))
    model = create_model("deeplabv3plus", num_classes=kw.get("num_classes", 21), backbone=backbone,
                         output_stride=kw.get("output_stride", 8))  # VainF's builders default to os8
    return ParityCase(model, get_spec("deeplabv3plus").convert_official, _single)


def _centermask_cfg(text: str) -> dict[str, Any]:
    """``cp.cfg(VOVNET__CONV_BODY='V-19-eSE', ...)`` overrides -> {"VOVNET__CONV_BODY": ...}."""
    return _kwargs_from_call(text)


def _vovnet(m: re.Match, meta: dict[str, Any]) -> ParityCase:
    from .models.vovnet import VoVNet, convert_official_vovnet

    cfg = _centermask_cfg(m.group(1))
    out_features = re.findall(r"['\"](\w+)['\"]", m.group(3))
    model = VoVNet(cfg.get("VOVNET__CONV_BODY", "V-39-eSE"), int(m.group(2)), out_features,
                   norm=cfg.get("VOVNET__NORM", "FrozenBN"))
    return ParityCase(model, convert_official_vovnet,
                      lambda mod, xs: {f"output.{k}": v for k, v in mod(xs[0]).items()})


def _centermask_sam(m: re.Match, meta: dict[str, Any]) -> ParityCase:
    from .models.centermask import SpatialAttention

    return ParityCase(SpatialAttention(int(_kwargs_from_call(m.group(0)).get("kernel_size", 3))), dict, _single)


def _centermask_sag_mask_head(m: re.Match, meta: dict[str, Any]) -> ParityCase:
    """The reference also records the SAM output inside the head as ``hook.spatialAtt``."""
    from .models.centermask import SAGMaskHead, convert_official_sag_mask_head

    cfg, shape = _centermask_cfg(m.group(1)), _kwargs_from_call(m.group(2))
    model = SAGMaskHead(shape.get("channels", 256), cfg.get("ROI_MASK_HEAD__CONV_DIM", 256),
                        cfg.get("ROI_MASK_HEAD__NUM_CONV", 4), cfg.get("ROI_HEADS__NUM_CLASSES", 80),
                        bool(cfg.get("ROI_MASK_HEAD__CLS_AGNOSTIC_MASK", False)))

    def run(mod: nn.Module, xs: list[torch.Tensor]) -> Outputs:
        seen: dict[str, torch.Tensor] = {}
        hook = mod.sam.register_forward_hook(lambda _m, _i, out: seen.__setitem__("hook.spatialAtt", out))
        try:
            return {"output": mod(xs[0]), **seen}
        finally:
            hook.remove()
    return ParityCase(model, convert_official_sag_mask_head, run)


def _centermask_fcos_head(m: re.Match, meta: dict[str, Any]) -> ParityCase:
    from .models.centermask import FCOSHead, convert_official_fcos_head

    cfg, shape = _centermask_cfg(m.group(1)), _kwargs_from_call(m.group(2))
    model = FCOSHead(shape.get("channels", 256), cfg.get("FCOS__NUM_CLASSES", 80), cfg.get("FCOS__NUM_CLS_CONVS", 4),
                     cfg.get("FCOS__NUM_BOX_CONVS", 4), int(m.group(3)), cfg.get("FCOS__NORM", "GN"),
                     bool(cfg.get("FCOS__USE_SCALE", True)))

    def run(mod: nn.Module, xs: list[torch.Tensor]) -> Outputs:
        return {f"output.{i}.{level}": t for i, per_level in enumerate(mod(xs)) for level, t in enumerate(per_level)}
    return ParityCase(model, convert_official_fcos_head, run)


TARGETS: list[ParityTarget] = [
    ParityTarget("clovaai/ext_portrait_segmentation", r"Dnc_SINet\((.*)\)", _sinet, "SINet"),
    ParityTarget("wutianyiRosun/CGNet", r"Context_Guided_Network\((.*)\)", _cgnet, "CGNet"),
    ParityTarget("CoinCheung/BiSeNet",
                 r"\bBiSeNetV1\((?:n_classes\s*=\s*)?(\d+)\s*(?:,\s*aux_mode\s*=\s*['\"]train['\"]\s*)?\)",
                 _bisenet("bisenet_v1"), "BiSeNetV1 with its two auxiliary heads"),
    ParityTarget("zllrunning/face-parsing.PyTorch", r"\bBiSeNet\((?:n_classes\s*=\s*)?(\d+)\s*\)",
                 _bisenet("bisenet_face"), "face-parsing BiSeNet"),
    ParityTarget("VainF/DeepLabV3Plus-Pytorch", r"deeplabv3plus_(mobilenet|resnet50|resnet101)\((.*)\)",
                 _deeplabv3plus, "DeepLabV3+"),
    ParityTarget("youngwanLEE/centermask2", r"\bVoVNet\(cp\.cfg\((.*?)\),\s*(\d+),\s*out_features=\[(.*?)\]\)",
                 _vovnet, "VoVNetV2 backbone"),
    ParityTarget("youngwanLEE/centermask2", r"\bSpatialAttention\((.*?)\)", _centermask_sam, "CenterMask SAM"),
    ParityTarget("youngwanLEE/centermask2", r"\bSpatialAttentionMaskHead\(cp\.cfg\((.*?)\),\s*ShapeSpec\((.*?)\)\)",
                 _centermask_sag_mask_head, "CenterMask SAG-Mask head"),
    ParityTarget("youngwanLEE/centermask2", r"\bFCOSHead\(cp\.cfg\((.*?)\),\s*\[ShapeSpec\((.*?)\)\]\s*\*\s*(\d+)\)",
                 _centermask_fcos_head, "CenterMask FCOS head"),
]


def find_target(meta: dict[str, Any]) -> tuple[ParityTarget, re.Match]:
    repo, build = meta.get("reference_repo", ""), meta.get("build", "")
    for target in TARGETS:
        if target.reference_repo == repo:
            m = re.search(target.build, build)
            if m:
                return target, m
    raise LookupError(f"no rtseg target for reference_repo={repo!r} build={build!r}")


@dataclass
class OutputResult:
    name: str
    max_abs_diff: float
    atol: float

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.atol)


def run_fixture(path: str | Path, factor: float = 10.0) -> list[OutputResult]:
    """Load, convert, run and compare one fixture; returns one result per recorded output."""
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    target, match = find_target(meta)
    case = target.make(match, meta)
    sd = {k[len("state_dict/"):]: torch.from_numpy(np.array(z[k])) for k in z.files if k.startswith("state_dict/")}
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    module = case.module
    load_state_dict_strict(module, case.convert(sd), str(path))
    module.eval()
    if meta["input_mode"] == "single":
        xs = [torch.from_numpy(np.array(z["input"])).float()]
    else:
        xs = [torch.from_numpy(np.array(z[f"input.{i}"])).float() for i in range(len(meta["input_shapes"]))]
    with torch.inference_mode():
        outs = case.run(module, xs)
    atol = factor * max(g["max_abs_diff"] for g in meta["f32_f64_gap"].values())
    names = list(meta["outputs"]) + sorted(k for k in z.files if k.startswith("hook.") and not k.startswith("hook64."))
    results = []
    for name in names:
        ref_key = ("output64" + name[len("output"):]) if name.startswith("output") else "hook64" + name[len("hook"):]
        ref = np.array(z[ref_key] if ref_key in z.files else z[name], dtype=np.float64)
        if name not in outs:
            raise KeyError(f"{path}: rtseg produced no output named {name!r} (got {sorted(outs)})")
        got = outs[name].detach().double().numpy()
        if got.shape != ref.shape:
            results.append(OutputResult(name, float("inf"), atol))
            continue
        results.append(OutputResult(name, float(np.abs(got - ref).max()), atol))
    return results


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rtseg.parity", description=__doc__.splitlines()[0])
    ap.add_argument("fixtures", nargs="+", help="fixture .npz files (see ../shared/parity/README.md)")
    ap.add_argument("--factor", type=float, default=10.0, help="atol = factor x recorded f32/f64 gap")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    all_ok = True
    for path in args.fixtures:
        try:
            results = run_fixture(path, args.factor)
        except Exception as e:  # report and continue with the next fixture
            print(f"FAIL {path}: {type(e).__name__}: {e}")
            all_ok = False
            continue
        for r in results:
            status = "ok  " if r.ok else "FAIL"
            print(f"{status} {Path(path).name} {r.name:<14} max|diff|={r.max_abs_diff:.3e}  atol={r.atol:.3e}")
            all_ok &= r.ok
    print("parity: all outputs within tolerance" if all_ok else "parity: FAILED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
