"""Fast inference: BatchNorm folding and inference backends behind one callable.

``optimize(model, backend="auto")`` returns a :class:`FastModel`: callable on an (N, 3, H, W)
float tensor, returning what the eager model returns in eval mode (the logits tensor, or the flat
tuple of raw head outputs of an instance model), carrying ``pretrained_cfg`` so that
:func:`rtseg.inference.predict` and friends take it in place of the eager model.

Backends (all float32; outputs match eager PyTorch within 1e-4, see ``tests/test_fast.py``):

* ``eager`` - the model itself under ``torch.inference_mode`` (the baseline).
* ``fused`` - a simplified copy (:func:`simplify`): every BatchNorm folded into the convolution
  before it (:func:`fold_batchnorm`), SINet's channel shuffles absorbed into weights
  (:func:`absorb_channel_shuffles`); channels_last memory format, ``inference_mode``.
* ``onnxruntime`` - the simplified model exported to ONNX in memory, one session per input shape
  (graph optimisations ALL, ``intra_op_num_threads = torch.get_num_threads()``, denormals as
  zero), inputs and outputs bound to preallocated torch tensors (IOBinding, no copies).
* ``openvino`` - the same ONNX graph compiled by OpenVINO for the CPU (f32 precision hint,
  latency hint, ``INFERENCE_NUM_THREADS = torch.get_num_threads()``, denormals flushed), inputs
  and outputs shared with torch tensors (a core dependency; without it ``auto`` falls back).
* ``compile`` - ``torch.compile`` (inductor) of the folded model. Evaluated, never the default:
  its first call compiles for minutes on a 2-core machine (BENCHMARKS.md).
* ``auto`` - the measured winner of the model (:data:`AUTO_BACKENDS`, from BENCHMARKS.md),
  else the first installed backend of :data:`AUTO_FALLBACK`. The choice is logged.

The ONNX backends specialise on the input shape: a new (N, C, H, W) exports and compiles a new
graph (about a second for SINet), kept in a small LRU cache, since static shapes are what both
runtimes optimise best. Video and the fixed-size portrait path hit one shape only.

A :class:`FastModel` in training mode (``.train()``) runs the original eager model, so a trainer
can hold it; switching back to eval rebuilds the fast path from the (possibly updated) weights.
"""
from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter, OrderedDict
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import RtsegError

log = logging.getLogger(__name__)

Output = Union[torch.Tensor, tuple[torch.Tensor, ...]]

BACKENDS: tuple[str, ...] = ("eager", "fused", "onnxruntime", "compile", "openvino")

#: ``fp32`` (default: outputs within 1e-4 of eager), ``bf16`` (OpenVINO only, opt-in: faster on
#: CPUs with AMX / AVX512-bf16, outputs about 1e-2 off) or ``int8`` (onnxruntime or OpenVINO,
#: opt-in: static QDQ quantisation by onnxruntime, per-channel int8 weights, uint8 activations
#: calibrated on example inputs; the accuracy cost per model is in BENCHMARKS.md).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")

#: Calibration inputs :func:`optimize` uses for ``int8`` when none are given: this many
#: :func:`rtseg.export.example_input` images (smooth synthetic colour images, preprocessed).
DEFAULT_CALIBRATION_IMAGES = 8

#: The measured fastest backend per model at its benchmark size, batch 1, 2 threads, p50
#: (BENCHMARKS.md). ``compile`` is left out: its first call takes half a minute or more.
#: Models not listed use :data:`AUTO_FALLBACK`.
AUTO_BACKENDS: dict[str, str] = {
    "sinet": "openvino",  # 3.9 ms vs eager 33.5 (onnxruntime 8.8, fused 11.8)
    "cgnet": "fused",  # 200 ms vs eager 195: a tie (onnxruntime 221, OpenVINO 242); depthwise-bound
    "bisenet_v1": "onnxruntime",  # 213 ms vs eager 366 (OpenVINO 247)
    "bisenet_face": "onnxruntime",  # 93 ms vs eager 141 (OpenVINO 106)
    "deeplabv3plus": "onnxruntime",  # 119 ms vs eager 212 (OpenVINO 125)
    "centermask_lite": "onnxruntime",  # 105 ms vs eager 212 (OpenVINO 105, optional) - dense stage
    "centermask": "fused",  # 1747 ms vs eager 2301 (onnxruntime 1863, OpenVINO 2017) - dense stage
}

#: ``auto`` for a model without a measurement: the first of these that is installed.
AUTO_FALLBACK: tuple[str, ...] = ("openvino", "onnxruntime", "fused")

#: Ops a per-channel affine map (a folded BatchNorm) commutes with exactly: interpolation whose
#: weights sum to one. ``conv -> upsample -> BN`` folds like ``conv -> BN``.
_AFFINE_COMMUTING_MODES = ("nearest", "nearest-exact", "bilinear")


# --- BatchNorm folding ------------------------------------------------------------------------

def _frozen_bn_types() -> tuple[type, ...]:
    try:
        from torchvision.ops import FrozenBatchNorm2d
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (FrozenBatchNorm2d,)


def _is_foldable_bn(m: nn.Module) -> bool:
    """Plain (frozen) BatchNorm in inference form: exact class, running statistics present.

    Subclasses are refused on purpose (timm's ``BatchNormAct2d`` adds an activation)."""
    if type(m) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return m.track_running_stats and m.running_mean is not None and m.running_var is not None
    return type(m) in _frozen_bn_types()


def _is_plain_conv(m: nn.Module) -> bool:
    """An ``nn.Conv2d`` whose forward is the stock one (not a subclass with extra behaviour)."""
    return isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward


class _LeafTracer(fx.Tracer):
    """fx tracer that keeps convolutions and (frozen) BatchNorms as single ``call_module`` nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, _BatchNorm) + _frozen_bn_types()) or super().is_leaf_module(m, qualname)


def _commutes_with_affine(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True for nodes that a per-channel ``y = a*x + b`` can be moved across unchanged."""
    if node.op == "call_function" and node.target is F.interpolate:
        mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest")
        return mode in _AFFINE_COMMUTING_MODES and not node.kwargs.get("antialias", False)
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, nn.Upsample):
            return m.mode in _AFFINE_COMMUTING_MODES
        return isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d))
    return False


def _pairs_in_graph(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[tuple[str, str]]:
    """(conv name, bn name) for every ``conv -> [interpolate/identity]* -> BN`` chain in which each
    intermediate result has exactly one user (so folding changes nothing else)."""
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_foldable_bn(modules.get(str(node.target), nn.Identity())):
            continue
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        while _commutes_with_affine(src, modules) and len(src.users) == 1 and isinstance(src.args[0], fx.Node):
            src = src.args[0]
        if src.op != "call_module" or len(src.users) != 1 or not _is_plain_conv(modules.get(str(src.target))):
            continue
        if calls[str(src.target)] == 1 and calls[str(node.target)] == 1:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names of (conv, BatchNorm) pairs that :func:`fold_batchnorm` can fold.

    The model is traced with ``torch.fx`` (convs and BNs as leaves). Where a forward cannot be
    traced (shape-dependent control flow), its children are traced one by one instead, so the
    pairs inside them are still found.
    """
    found: list[tuple[str, str]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        if isinstance(module, (nn.Conv2d, _BatchNorm)) or not any(True for _ in module.children()):
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = _LeafTracer().trace(module)
        except Exception:  # untraceable forward: look one level down
            for name, child in module.named_children():
                visit(child, f"{prefix}{name}.")
            return
        modules = dict(module.named_modules())
        found.extend((prefix + c, prefix + b) for c, b in _pairs_in_graph(graph, modules))

    visit(model, "")
    # a module object reachable under two names is shared: folding it would change both uses
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    return [(c, b) for c, b in found
            if uses[id(model.get_submodule(c))] == 1 and uses[id(model.get_submodule(b))] == 1]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold an inference-mode BatchNorm into ``conv`` in place (computed in float64).

    ``BN(conv(x)) = conv'(x)`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta``, where
    ``s = gamma / sqrt(var + eps)`` per output channel.
    """
    dtype = conv.weight.dtype
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma * torch.rsqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    conv.weight = nn.Parameter((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype),
                               requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + beta).to(dtype))


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BatchNorm merged into its convolution.

    Works on any rtseg model: pairs come from :func:`find_conv_bn_pairs`; each BN is replaced by
    ``nn.Identity`` after folding, so the module tree, its attributes and methods stay as they
    were (``CenterMask.detect`` and friends still work). BNs that follow something other than a
    convolution (SINet's BR blocks after a concat) stay as they are. Outputs are unchanged up to
    float32 rounding (``tests/test_fast.py``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    pairs = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
        parent, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    remaining = sum(isinstance(m, _BatchNorm) or type(m) in _frozen_bn_types() for m in model.modules())
    log.debug("folded %d BatchNorms into convolutions; %d left unfolded", len(pairs), remaining)
    return model


@torch.no_grad()
def absorb_channel_shuffles(model: nn.Module) -> int:
    """Remove SINet's channel shuffles by permuting weights instead (in place; exact).

    An S2-module computes ``y = shuffle(reduce(x))`` and feeds ``y`` to S2-blocks that are
    channel-wise (avg-pool, depthwise conv, PReLU) up to their pointwise conv. Permuting the
    channel-wise parameters and the pointwise conv's input columns by the inverse shuffle gives
    the same output from ``reduce(x)`` directly, so the shuffle becomes the identity (groups=1).
    Needs the depthwise BN already folded (:func:`fold_batchnorm`). Returns the modules changed.
    """
    from .models.sinet import S2Block, S2Module

    changed = 0
    for mod in model.modules():
        if not isinstance(mod, S2Module) or mod.groups == 1:
            continue
        blocks = list(mod.branches)
        if not all(isinstance(b, S2Block) and isinstance(b.dw_bn, nn.Identity) and isinstance(b.act, nn.PReLU)
                   and b.act.num_parameters == b.dw.out_channels for b in blocks):
            continue
        c, g = mod.reduce.out_channels, mod.groups
        inv = torch.argsort(torch.arange(c).view(g, c // g).t().reshape(-1))  # shuffle: y[:, i] = z[:, perm[i]]
        for b in blocks:
            b.dw.weight.copy_(b.dw.weight[inv])
            if b.dw.bias is not None:
                b.dw.bias.copy_(b.dw.bias[inv])
            b.act.weight.copy_(b.act.weight[inv])
            b.pw.weight.copy_(b.pw.weight[:, inv])
        mod.groups = 1  # channel_shuffle(y, 1) is the identity
        changed += 1
    return changed


def simplify(model: nn.Module) -> nn.Module:
    """An eval-mode copy for inference: :func:`fold_batchnorm`, then :func:`absorb_channel_shuffles`,
    then subnormal weights flushed to zero."""
    folded = fold_batchnorm(model)
    absorb_channel_shuffles(folded)
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for p in folded.parameters():
            p.requires_grad_(False)
            if p.is_floating_point():
                # subnormal weights (SINet's official checkpoint has 3,444) take x86's slow
                # path in every multiply; as zeros they change outputs by < 1e-37
                p.masked_fill_(p.abs() < tiny, 0.0)
    return folded


# --- backends ---------------------------------------------------------------------------------

def available_backends() -> list[str]:
    """Backends usable in this environment (``openvino`` only when the package is installed)."""
    out = ["eager", "fused", "compile"]
    if _importable("onnxruntime"):
        out.append("onnxruntime")
    if _importable("openvino"):
        out.append("openvino")
    return [b for b in BACKENDS if b in out]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def resolve_backend(backend: str, model_name: Optional[str] = None) -> str:
    """``auto`` -> the measured winner for ``model_name`` (or the fallback order); any other name
    is checked against what is installed."""
    have = available_backends()
    if backend == "auto":
        best = AUTO_BACKENDS.get(model_name or "")
        if best in have:
            return best
        return next(b for b in AUTO_FALLBACK if b in have)
    if backend not in BACKENDS:
        raise RtsegError(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    if backend not in have:
        raise RtsegError(f"backend {backend!r} needs the {backend} package (pip install 'rtseg[{backend}]')")
    return backend


class _ShapeCache:
    """A small LRU of per-input-shape runners (ONNX runtimes compile for a static shape)."""

    def __init__(self, build: Callable[[tuple[int, ...]], Callable[[torch.Tensor], Output]], size: int) -> None:
        self.build, self.size = build, size
        self.items: OrderedDict[tuple[int, ...], Callable[[torch.Tensor], Output]] = OrderedDict()

    def __call__(self, x: torch.Tensor) -> Output:
        key = tuple(x.shape)
        run = self.items.get(key)
        if run is None:
            run = self.build(key)
            self.items[key] = run
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
        return run(x)


def _structure(out: Any) -> tuple[bool, list[torch.Tensor]]:
    """(is_tuple, flat list of tensors) of a model output."""
    if isinstance(out, torch.Tensor):
        return False, [out]
    flat: list[torch.Tensor] = []
    for o in out:
        flat.extend(_structure(o)[1])
    return True, flat


def _pack(is_tuple: bool, outs: Sequence[torch.Tensor]) -> Output:
    return tuple(outs) if is_tuple else outs[0]


def quantize_int8(onnx_model: bytes, calibration: Iterable[torch.Tensor]) -> bytes:
    """Static int8 quantisation of an ONNX graph (onnxruntime ``quantize_static``): QDQ format,
    per-channel symmetric int8 weights, asymmetric uint8 activations with min/max ranges from
    ``calibration`` (network inputs of the graph's input shape)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x.detach().float().contiguous().numpy()} for x in calibration])

        def get_next(self) -> Optional[dict[str, Any]]:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="rtseg-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_model)
        root = logging.getLogger()  # the quantiser warns through the root logger (basicConfig)
        quiet, level = logging.NullHandler(), root.level
        root.addHandler(quiet)
        root.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        finally:
            root.removeHandler(quiet)
            root.setLevel(level)
        return dst.read_bytes()


class _Exported:
    """The folded model exported to ONNX at one static input shape (quantised for ``int8``)."""

    def __init__(self, folded: nn.Module, shape: tuple[int, ...], precision: str = "fp32",
                 calibration: Optional[Sequence[torch.Tensor]] = None) -> None:
        from .export import onnx_bytes

        example = torch.zeros(shape)
        with torch.inference_mode():
            is_tuple, flat = _structure(folded(example))
        self.is_tuple = is_tuple
        self.out_shapes = [tuple(t.shape) for t in flat]
        self.onnx = onnx_bytes(folded, example, dynamic=False)
        if precision == "int8":
            self.onnx = quantize_int8(self.onnx, _calibration_batches(folded, shape, calibration))


def _calibration_batches(model: nn.Module, shape: tuple[int, ...],
                         calibration: Optional[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Calibration inputs at the exported shape: the given ones (resized, regrouped into
    batches of N), else :data:`DEFAULT_CALIBRATION_IMAGES` example inputs."""
    from .export import example_input

    n, _, h, w = shape
    if calibration is None:
        calibration = [example_input(model, (h, w), seed=100 + i) for i in range(DEFAULT_CALIBRATION_IMAGES)]
    images = []
    for x in calibration:
        x = x if x.dim() == 4 else x[None]
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False)
        images.extend(x.split(1))
    if not images:
        raise RtsegError("int8 calibration needs at least one input image")
    return [torch.cat((images * n)[i:i + n]) for i in range(0, len(images), n)]


def _ort_runner(folded: nn.Module, threads: int, precision: str = "fp32",
                calibration: Optional[Sequence[torch.Tensor]] = None
                ) -> Callable[[tuple[int, ...]], Callable[[torch.Tensor], Output]]:
    import numpy as np
    import onnxruntime as ort

    def build(shape: tuple[int, ...]) -> Callable[[torch.Tensor], Output]:
        ex = _Exported(folded, shape, precision, calibration)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.add_session_config_entry("session.set_denormal_as_zero", "1")  # see _openvino_runner
        sess = ort.InferenceSession(ex.onnx, so, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        out_names = [o.name for o in sess.get_outputs()]

        def run(x: torch.Tensor) -> Output:
            x = x.detach().to(torch.float32).contiguous()
            outs = [torch.empty(s) for s in ex.out_shapes]
            binding = sess.io_binding()
            binding.bind_input(in_name, "cpu", 0, np.float32, list(x.shape), x.data_ptr())
            for name, t in zip(out_names, outs):
                binding.bind_output(name, "cpu", 0, np.float32, list(t.shape), t.data_ptr())
            sess.run_with_iobinding(binding)
            return _pack(ex.is_tuple, outs)

        return run

    return build


def _openvino_runner(folded: nn.Module, threads: int, precision: str = "fp32",
                     calibration: Optional[Sequence[torch.Tensor]] = None
                     ) -> Callable[[tuple[int, ...]], Callable[[torch.Tensor], Output]]:
    import io

    import openvino as ov

    core = ov.Core()
    # f32: the default on AMX / AVX512-bf16 CPUs is bf16 (about 1e-2 off). Denormals flushed to
    # zero: SINet's official weights on its official input scale (about +-0.01) produce many
    # subnormal activations, each one a slow path on x86 (results change by < 1e-37).
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "CPU_DENORMALS_OPTIMIZATION": True}

    def build(shape: tuple[int, ...]) -> Callable[[torch.Tensor], Output]:
        ex = _Exported(folded, shape, precision, calibration)  # int8: OpenVINO runs the QDQ graph in int8
        compiled = core.compile_model(ov.convert_model(io.BytesIO(ex.onnx)), "CPU", config)
        request = compiled.create_infer_request()

        def run(x: torch.Tensor) -> Output:
            x = x.detach().to(torch.float32).contiguous()
            outs = [torch.empty(s) for s in ex.out_shapes]
            request.set_input_tensor(ov.Tensor(x.numpy(), shared_memory=True))
            for i, t in enumerate(outs):
                request.set_output_tensor(i, ov.Tensor(t.numpy(), shared_memory=True))
            request.infer()
            return _pack(ex.is_tuple, outs)

        return run

    return build


class _Fused:
    """The folded model in channels_last under ``inference_mode``."""

    def __init__(self, folded: nn.Module, channels_last: bool = True) -> None:
        self.channels_last = channels_last
        self.module = folded.to(memory_format=torch.channels_last) if channels_last else folded

    def __call__(self, x: torch.Tensor) -> Output:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        is_tuple, flat = _structure(self.module(x))
        return _pack(is_tuple, [t.contiguous() for t in flat])


class _DenseForward(nn.Module):
    """``forward`` = ``model.dense`` (CenterMask's pyramid + FCOS head), for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.dense(x)


class FastModel(nn.Module):
    """A model behind an inference backend; a drop-in for the eager model in ``rtseg.inference``.

    ``model`` (the original eager module) stays a child, so parameters, ``state_dict``,
    ``pretrained_cfg``, ``rtseg_name`` and ``rtseg_kwargs`` are those of the original. In eval
    mode ``forward`` runs the backend; in training mode it runs ``model`` itself.
    """

    def __init__(self, model: nn.Module, backend: str, *, threads: Optional[int] = None, precision: str = "fp32",
                 channels_last: bool = True, max_shapes: int = 4,
                 calibration: Optional[Sequence[torch.Tensor]] = None) -> None:
        super().__init__()
        self.model = model
        self.backend = backend
        self.calibration = None if calibration is None else [c.detach().cpu() for c in calibration]
        self.threads = int(threads or torch.get_num_threads())
        self.channels_last = channels_last
        self.max_shapes = max_shapes
        self.precision = precision
        for attr in ("pretrained_cfg", "rtseg_name", "rtseg_kwargs"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))
        self._runner: Optional[Callable[[torch.Tensor], Output]] = None
        self._dense_runner: Optional[Callable[[torch.Tensor], Output]] = None
        self.train(False)

    def _make_runner(self, module: nn.Module) -> Callable[[torch.Tensor], Output]:
        if self.backend == "fused":
            return _Fused(module, self.channels_last)
        if self.backend == "compile":
            return _Fused(torch.compile(module, dynamic=False), self.channels_last)
        if self.backend == "onnxruntime":
            return _ShapeCache(_ort_runner(module, self.threads, self.precision, self.calibration), self.max_shapes)
        if self.backend == "openvino":
            return _ShapeCache(_openvino_runner(module, self.threads, self.precision, self.calibration),
                               self.max_shapes)
        raise RtsegError(f"unknown backend {self.backend!r}")  # pragma: no cover - resolve_backend guards this

    def build(self) -> None:
        """(Re)create the backend from the current weights of ``model``."""
        was_training = self.model.training
        self.model.eval()
        try:
            if self.backend == "eager":
                self._runner = self.model.__call__  # a bound method: not registered as a child
                self._dense_runner = getattr(self.model, "dense", None)
                return
            folded = simplify(self.model)
            self._runner = self._make_runner(folded)
            # instance models (CenterMask): the dense stage of detect() runs on the backend too
            self._dense_runner = self._make_runner(_DenseForward(folded)) if hasattr(folded, "dense") else None
        finally:
            self.model.train(was_training)

    def train(self, mode: bool = True) -> "FastModel":
        if mode:
            self._runner = None  # the weights may change: rebuild on the next eval call
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> Output:
        if self.training:
            return self.model(x)
        if self._runner is None:
            self.build()
        with torch.inference_mode():
            return self._runner(x)

    def detect(self, images: torch.Tensor, image_sizes: Optional[Sequence[tuple[int, int]]] = None,
               output_sizes: Optional[Sequence[tuple[int, int]]] = None) -> list[dict[str, torch.Tensor]]:
        """Instance models: ``model.detect`` with its dense stage (backbone, FPN, FCOS head) on
        the backend; RoI pooling, the mask heads and post-processing stay in PyTorch."""
        detect = getattr(self.model, "detect", None)
        if detect is None:
            raise RtsegError(f"model {getattr(self.model, 'rtseg_name', type(self.model).__name__)!r} has no detect(): "
                             f"not an instance-segmentation model")
        if self._runner is None:
            self.build()
        with torch.inference_mode():
            return detect(images, image_sizes, output_sizes, dense=self._dense_runner)

    def __getattr__(self, name: str) -> Any:
        """Attributes of the wrapped model (``min_size_test``, ``num_classes``, ...) read through."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None or name.startswith("__"):
                raise
            return getattr(model, name)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, threads={self.threads}, precision={self.precision!r}"


def optimize(model: nn.Module, backend: str = "auto", example_size: Optional[Sequence[int]] = None, *,
             threads: Optional[int] = None, precision: str = "fp32", channels_last: bool = True,
             max_shapes: int = 4, calibration: Optional[Sequence[torch.Tensor]] = None) -> FastModel:
    """Wrap ``model`` in the fastest (or the named) inference backend.

    ``example_size`` (H, W) or (N, C, H, W): a shape to build and warm the backend for now
    (default: the ``input_size`` of the model's pretrained config, else build lazily on the first
    call). ``threads``: intra-op threads for onnxruntime / OpenVINO (default
    ``torch.get_num_threads()``). ``precision="bf16"`` (openvino only) trades the 1e-4 agreement
    for speed on CPUs with bf16 units; ``precision="int8"`` (onnxruntime or openvino) quantises
    the graph (:func:`quantize_int8`) with ``calibration`` inputs ((N, 3, H, W) network inputs,
    preprocessed as the model expects; default: synthetic example images; give real images of
    your domain for the best ranges). The returned model is in eval mode.
    """
    if isinstance(model, FastModel):
        model = model.model
    name = getattr(model, "rtseg_name", None)
    if backend == "auto" and precision in ("int8", "bf16"):  # only the ONNX runtimes run these
        have = available_backends()
        backend = "openvino" if "openvino" in have else "onnxruntime"
    chosen = resolve_backend(backend, name)
    how = "measured winner" if backend == "auto" and AUTO_BACKENDS.get(name or "") == chosen else (
        "fallback" if backend == "auto" else "requested")
    log.info("rtseg.fast: model %s -> backend %s (%s)", name or type(model).__name__, chosen, how)
    if precision not in PRECISIONS:
        raise RtsegError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    if precision == "bf16" and chosen != "openvino":
        raise RtsegError(f"precision bf16 needs the openvino backend, not {chosen!r}")
    if precision == "int8" and chosen not in ("onnxruntime", "openvino"):
        raise RtsegError(f"precision int8 needs the onnxruntime or openvino backend, not {chosen!r}")
    fast = FastModel(model, chosen, threads=threads, precision=precision, channels_last=channels_last,
                     max_shapes=max_shapes, calibration=calibration)
    if example_size is None:
        cfg = getattr(model, "pretrained_cfg", None)
        example_size = getattr(cfg, "input_size", None)
    if example_size is not None:
        shape = tuple(example_size) if len(example_size) == 4 else (1, 3, *example_size)
        fast(torch.zeros(shape))
    return fast


def is_fast(model: nn.Module) -> bool:
    return isinstance(model, FastModel)


def iter_backends(names: Iterable[str]) -> list[str]:
    """Expand ``all`` to every installed backend but ``compile`` (minutes of compiling); keep
    order, drop duplicates."""
    out: list[str] = []
    for n in names:
        for b in ([b for b in available_backends() if b != "compile"] if n == "all" else [n]):
            if b not in out:
                out.append(b)
    return out


__all__ = ["BACKENDS", "AUTO_BACKENDS", "PRECISIONS", "quantize_int8", "AUTO_FALLBACK", "FastModel", "optimize", "fold_batchnorm", "simplify",
           "absorb_channel_shuffles",
           "fold_conv_bn", "find_conv_bn_pairs", "available_backends", "resolve_backend", "iter_backends"]
