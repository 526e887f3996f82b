"""Benchmarks: parameters, FLOPs, latency, throughput and peak memory per model and backend.

Each (model, backend) runs in a fresh Python process (``python -m rtseg.bench --worker SPEC``) so
that its peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own, with
``torch.set_num_threads(threads)`` (onnxruntime and OpenVINO take the same count) and batch 1 by
default. Latency is wall time per call of the model on a preprocessed input tensor (no image
decoding or resizing), after warm-up; p50 / p90 over ``iters`` calls; fps = 1000 / p50.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix
products, **2 FLOPs per multiply-accumulate** (so MACs = FLOPs / 2; papers that say "FLOPs"
often mean MACs: SINet's 0.064 G in its paper is 0.128 GFLOPs here). Element-wise ops are not
counted.

``--compare mediapipe`` adds MediaPipe's selfie segmenter (the 256x256
``selfie_segmentation.tflite`` bundled with the ``mediapipe`` package, Tasks ``ImageSegmenter``,
confidence masks) timed the same way in the same run; mediapipe pins numpy<2 and protobuf<5, so
it usually lives in another environment: point ``--mediapipe-python`` (or the
``RTSEG_MEDIAPIPE_PYTHON`` variable) at that environment's interpreter.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .errors import RtsegError

PathLike = Union[str, os.PathLike]

#: The sizes the official figures in BENCHMARKS.md were measured at (issue 6); CenterMask at a
#: typical COCO test size after its shortest-edge resize, padded to 32.
BENCH_SIZES: dict[str, tuple[int, int]] = {
    "sinet": (224, 224),
    "cgnet": (512, 1024),
    "bisenet_v1": (512, 1024),
    "bisenet_face": (512, 512),
    "deeplabv3plus": (513, 513),
    "centermask": (800, 1088),
    "centermask_lite": (608, 800),
}

#: Official implementations on the same kind of 2-core machine, batch 1, 2 threads, median ms
#: (issue 6): model -> (size, ms, what).
OFFICIAL_MS: dict[str, tuple[tuple[int, int], float, str]] = {
    "sinet": ((224, 224), 12.6, "official SINet, onnxruntime (PyTorch: 12-16 ms)"),
    "cgnet": ((512, 1024), 220.0, "official CGNet, PyTorch"),
    "bisenet_v1": ((512, 1024), 410.0, "official BiSeNetV1, PyTorch"),
    "bisenet_face": ((512, 512), 210.0, "official face-parsing BiSeNet, PyTorch"),
    "deeplabv3plus": ((513, 513), 170.0, "official DeepLabV3+ MobileNetV2, PyTorch"),
}
MEDIAPIPE_MS_REFERENCE = 3.0
#: Models that do MediaPipe's selfie segmenter's job (portrait / person masks): the only rows
#: with a "vs MediaPipe" ratio.
MEDIAPIPE_COMPARABLE = ("sinet",)


@dataclass
class BenchResult:
    """One (model, backend) measurement. Times in milliseconds, memory in MiB."""

    model: str
    backend: str
    size: tuple[int, int]
    batch: int
    threads: int
    params: Optional[int] = None
    flops: Optional[int] = None  # FlopCounterMode: 2 per multiply-accumulate
    macs: Optional[int] = None
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    min_ms: Optional[float] = None
    fps: Optional[float] = None
    iters: int = 0
    warmup: int = 0
    build_s: Optional[float] = None  # optimize() + first call (export / compile)
    max_abs_diff: Optional[float] = None  # vs eager PyTorch on a realistic input
    argmax_agreement: Optional[float] = None  # fraction of pixels with eager's class (semantic)
    peak_rss_mb: Optional[float] = None  # whole process
    rss_after_import_mb: Optional[float] = None
    loadavg: Optional[tuple[float, float, float]] = None
    resolved_backend: Optional[str] = None
    precision: str = "fp32"
    note: str = ""
    rounds: int = 1
    round_p50_ms: list[float] = field(default_factory=list)  # p50 of each round (``merge_rounds``)
    ms: list[float] = field(default_factory=list, repr=False)  # raw times; not written to JSON

    @property
    def gflops(self) -> Optional[float]:
        return None if self.flops is None else self.flops / 1e9


def count_params(model: nn.Module) -> int:
    """Number of ``nn.Parameter`` elements (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one eval forward on ``x`` (2 per multiply-accumulate; conv / matmul only)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def time_calls(fn: Callable[[], Any], iters: int, warmup: int) -> np.ndarray:
    """Wall times (ms) of ``iters`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def _summary(ms: np.ndarray) -> dict[str, float]:
    p50 = float(np.percentile(ms, 50))
    return {"p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "fps": 1000.0 / p50}


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _flat(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


def bench_model(name: str, backend: str = "eager", size: Optional[Sequence[int]] = None, *, batch: int = 1,
                threads: int = 2, iters: int = 50, warmup: int = 10, weights: Optional[str] = None,
                model_kwargs: Optional[dict[str, Any]] = None, flops: bool = True, precision: str = "fp32") -> BenchResult:
    """Measure one model with one backend in this process (see :func:`bench` for subprocesses)."""
    from .checkpoint import load_model
    from .export import check_size, example_input
    from .fast import optimize

    torch.set_num_threads(threads)
    rss0 = _rss_now_mb()
    torch.manual_seed(0)  # without --weights every backend gets the same random weights
    model = load_model(name, weights, **(model_kwargs or {})).eval()
    size = tuple(size) if size is not None else BENCH_SIZES.get(name, (512, 512))
    check_size(model, size)
    x = example_input(model, size, batch)
    res = BenchResult(model=name, backend=backend, size=(int(size[0]), int(size[1])), batch=batch, threads=threads,
                      iters=iters, warmup=warmup, rss_after_import_mb=rss0, params=count_params(model),
                      precision=precision)
    if flops:
        res.flops = count_flops(model, x[:1]) * batch
        res.macs = res.flops // 2
    with torch.inference_mode():
        ref = _flat(model(x)) if backend != "eager" else None
    t = time.perf_counter()
    fast = optimize(model, backend, example_size=tuple(x.shape), precision=precision)
    res.build_s = time.perf_counter() - t
    res.resolved_backend = fast.backend
    out = _flat(fast(x))
    res.max_abs_diff = 0.0 if ref is None else max(float((a - b).abs().max()) for a, b in zip(out, ref))
    if ref is not None and len(ref) == 1 and ref[0].dim() == 4:
        res.argmax_agreement = float((out[0].argmax(1) == ref[0].argmax(1)).float().mean())
    del out, ref
    ms = time_calls(lambda: fast(x), iters, warmup)
    for k, v in _summary(ms).items():
        setattr(res, k, v)
    res.ms, res.round_p50_ms = ms.tolist(), [res.p50_ms]
    res.peak_rss_mb = _peak_rss_mb()
    res.loadavg = os.getloadavg() if hasattr(os, "getloadavg") else None
    return res


_MEDIAPIPE_SCRIPT = r"""
import json, os, sys, time, resource
spec = json.loads(sys.argv[1])
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision
path = os.path.join(os.path.dirname(mp.__file__), "modules", "selfie_segmentation", "selfie_segmentation.tflite")
opts = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=path), output_confidence_masks=True,
                                    output_category_mask=False, running_mode=vision.RunningMode.IMAGE)
seg = vision.ImageSegmenter.create_from_options(opts)
h, w = spec["size"]
rgb = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
img = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
for _ in range(spec["warmup"]):
    seg.segment(img)
ms = []
for _ in range(spec["iters"]):
    t = time.perf_counter(); seg.segment(img); ms.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"ms": ms, "version": mp.__version__, "model": path,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def mediapipe_python(explicit: Optional[str] = None) -> Optional[str]:
    """An interpreter that can import mediapipe: ``explicit``, ``$RTSEG_MEDIAPIPE_PYTHON``, or
    this one when mediapipe is installed here; None when there is none."""
    import importlib.util

    for cand in (explicit, os.environ.get("RTSEG_MEDIAPIPE_PYTHON")):
        if cand:
            if not Path(cand).exists():
                raise RtsegError(f"{cand}: MediaPipe interpreter not found")
            return cand
    return sys.executable if importlib.util.find_spec("mediapipe") is not None else None


def bench_mediapipe(python: str, *, size: Sequence[int] = (256, 256), iters: int = 50, warmup: int = 10,
                    threads: int = 2) -> BenchResult:
    """Time MediaPipe's selfie segmenter (Tasks ImageSegmenter on its bundled 256x256 model) in
    interpreter ``python``. MediaPipe picks its own XNNPACK thread count; the worker is pinned to
    ``threads`` CPUs where the OS allows, which bounds it the same way."""
    spec = {"size": [int(size[0]), int(size[1])], "iters": iters, "warmup": warmup}
    cmd = [python, "-c", _MEDIAPIPE_SCRIPT, json.dumps(spec)]
    out = _run_worker(cmd, threads, "mediapipe")
    ms = np.asarray(out["ms"])
    res = BenchResult(model="mediapipe_selfie", backend="mediapipe", size=(int(size[0]), int(size[1])), batch=1,
                      threads=threads, iters=iters, warmup=warmup, peak_rss_mb=out["peak_rss_mb"],
                      note=f"mediapipe {out['version']}, {Path(out['model']).name} (Tasks ImageSegmenter)")
    for k, v in _summary(ms).items():
        setattr(res, k, v)
    res.ms, res.round_p50_ms = ms.tolist(), [res.p50_ms]
    res.loadavg = os.getloadavg() if hasattr(os, "getloadavg") else None
    return res


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def _run_worker(cmd: list[str], threads: int, what: str) -> dict[str, Any]:
    preexec: Optional[Callable[[], None]] = None
    if hasattr(os, "sched_setaffinity"):  # pin the worker to as many CPUs as it has threads
        cpus = sorted(os.sched_getaffinity(0))[:max(1, threads)]
        preexec = lambda: os.sched_setaffinity(0, cpus)  # noqa: E731
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(threads), preexec_fn=preexec)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RtsegError(f"benchmark of {what} failed: {err[:300]}")
    return json.loads(lines[-1])


def bench(name: str, backend: str = "eager", size: Optional[Sequence[int]] = None, *, subprocess_: bool = True,
          **kwargs: Any) -> BenchResult:
    """:func:`bench_model` in a fresh interpreter (own peak memory) unless ``subprocess_=False``."""
    if not subprocess_:
        return bench_model(name, backend, size, **kwargs)
    spec = {"name": name, "backend": backend, "size": list(size) if size is not None else None, **kwargs}
    out = _run_worker([sys.executable, "-m", "rtseg.bench", "--worker", json.dumps(spec)],
                      int(kwargs.get("threads", 2)), f"{name} ({backend})")
    out["size"] = tuple(out["size"])
    out.pop("gflops", None)
    if out.get("loadavg") is not None:
        out["loadavg"] = tuple(out["loadavg"])
    return BenchResult(**out)


def merge_rounds(results: Sequence[BenchResult]) -> BenchResult:
    """One result from several rounds of the same (model, backend): percentiles over all timed
    calls, the p50 of each round kept in ``round_p50_ms`` (the spread shows machine noise)."""
    import dataclasses

    first = results[0]
    ms = np.concatenate([np.asarray(r.ms) for r in results])
    merged = dataclasses.replace(first, ms=ms.tolist(), rounds=len(results), iters=sum(r.iters for r in results),
                                 round_p50_ms=[p for r in results for p in r.round_p50_ms])
    for k, v in _summary(ms).items():
        setattr(merged, k, v)
    merged.peak_rss_mb = max((r.peak_rss_mb for r in results if r.peak_rss_mb is not None), default=None)
    builds = [r.build_s for r in results if r.build_s is not None]
    merged.build_s = float(np.median(builds)) if builds else None
    diffs = [r.max_abs_diff for r in results if r.max_abs_diff is not None]
    merged.max_abs_diff = max(diffs) if diffs else None
    agree = [r.argmax_agreement for r in results if r.argmax_agreement is not None]
    merged.argmax_agreement = min(agree) if agree else None
    merged.loadavg = results[-1].loadavg
    return merged


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, library versions, threads, load."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads,
                            "python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform()}
    for mod in ("onnxruntime", "openvino"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = os.getloadavg()
    return info


def write_json(results: Sequence[BenchResult], path: PathLike, *, machine: dict[str, Any], command: str) -> None:
    data = {"command": command, "machine": machine, "flops_convention": "FlopCounterMode: 2 FLOPs per MAC",
            "results": [{**{k: v for k, v in asdict(r).items() if k != "ms"}, "gflops": r.gflops} for r in results]}
    if hasattr(os, "getloadavg"):
        data["machine"]["loadavg_end"] = os.getloadavg()
    from .fileio import write_json_atomic

    write_json_atomic(path, data, indent=2)


def plot(results: Sequence[BenchResult], path: PathLike, title: str = "") -> None:
    """Latency (p50, log) vs parameters (log): one marker per (model, backend); MediaPipe as a
    horizontal line (its parameter count is not exposed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"eager": "o", "fused": "s", "onnxruntime": "^", "openvino": "D", "compile": "v"}
    backends = sorted({r.resolved_backend or r.backend for r in results if r.params})
    colors = dict(zip(backends, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for b in backends:
        rs = [r for r in results if (r.resolved_backend or r.backend) == b and r.params and r.p50_ms]
        ax.scatter([r.params for r in rs], [r.p50_ms for r in rs], marker=markers.get(b, "o"), color=colors[b],
                   label=b, s=45, zorder=3)
    for model in dict.fromkeys(r.model for r in results if r.params and r.p50_ms):
        rs = [r for r in results if r.model == model and r.params and r.p50_ms]
        ys = [r.p50_ms for r in rs]
        ax.plot([rs[0].params] * 2, [min(ys), max(ys)], color="lightgrey", lw=1, zorder=1)
        ax.annotate(f"{model} {rs[0].size[0]}x{rs[0].size[1]}", (rs[0].params, max(ys)), fontsize=7,
                    xytext=(5, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for r in results:
        if r.backend == "mediapipe" and r.p50_ms:
            ax.axhline(r.p50_ms, color="grey", ls="--", lw=1)
            ax.text(0.01, r.p50_ms, f"MediaPipe selfie segmenter 256x256: {r.p50_ms:.1f} ms", fontsize=7,
                    va="bottom", color="dimgrey", transform=ax.get_yaxis_transform())
    ax.set_xlabel("parameters")
    ax.set_ylabel("latency p50 (ms, batch 1)")
    ax.set_title(title or "rtseg latency vs parameters")
    ax.grid(True, which="both", alpha=0.3)
    if backends:
        ax.legend(title="backend")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)


def speedup_vs_official(r: BenchResult) -> Optional[float]:
    """Official median / this p50 when measured at the official figure's size (>1 = faster)."""
    ref = OFFICIAL_MS.get(r.model)
    if ref is None or tuple(r.size) != ref[0] or not r.p50_ms or r.batch != 1:
        return None
    return ref[1] / r.p50_ms


def format_table(results: Sequence[BenchResult]) -> str:
    """A plain-text table (also valid Markdown). ``vs official`` is :func:`speedup_vs_official`;
    ``vs MediaPipe`` is MediaPipe's p50 in the same run / this p50 (>1 = faster)."""
    mp = next((r.p50_ms for r in results if r.backend == "mediapipe" and r.p50_ms), None)
    head = ["model", "size", "backend", "params", "GFLOPs", "p50 ms", "p90 ms", "fps", "peak MiB", "max|diff|",
            "argmax agree", "vs official"] + (["vs MediaPipe"] if mp else [])
    rows = [head, ["---"] * len(head)]
    for r in results:
        b = r.backend if not r.resolved_backend or r.resolved_backend == r.backend else f"{r.backend}->{r.resolved_backend}"
        b += f" {r.precision}" if r.precision and r.precision != "fp32" else ""
        sp = speedup_vs_official(r)
        row = [r.model, f"{r.size[0]}x{r.size[1]}", b, f"{r.params:,}" if r.params else "-",
               f"{r.gflops:.3f}" if r.flops is not None else "-", _f(r.p50_ms, 2), _f(r.p90_ms, 2),
               _f(r.fps, 1), _f(r.peak_rss_mb, 0), "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
               "-" if r.argmax_agreement is None else f"{100 * r.argmax_agreement:.3f}%",
               "-" if sp is None else f"{sp:.2f}x"]
        if mp:
            comparable = r.model in MEDIAPIPE_COMPARABLE or r.backend == "mediapipe"
            row.append(f"{mp / r.p50_ms:.2f}x" if r.p50_ms and comparable else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows)


def read_json(path: PathLike) -> tuple[list[BenchResult], dict[str, Any]]:
    """Results and the rest (command, machine) of a file written by :func:`write_json`."""
    import dataclasses

    try:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(BenchResult)}
        results = []
        for d in data["results"]:
            d = {k: v for k, v in d.items() if k in known}
            d["size"] = tuple(d["size"])
            d["loadavg"] = tuple(d["loadavg"]) if d.get("loadavg") else None
            results.append(BenchResult(**d))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RtsegError(f"{path}: not a benchmark JSON written by rtseg bench ({type(e).__name__})") from None
    return results, {k: v for k, v in data.items() if k != "results"}


def _f(v: Optional[float], digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _worker_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[argv.index("--worker") + 1])
    res = bench_model(spec.pop("name"), spec.pop("backend"), spec.pop("size"), **spec)
    sys.stdout.write(json.dumps(asdict(res)) + "\n")
    return 0


__all__ = ["BenchResult", "bench", "bench_model", "bench_mediapipe", "count_params", "count_flops", "time_calls",
           "machine_info", "write_json", "plot", "format_table", "speedup_vs_official", "merge_rounds", "read_json", "mediapipe_python", "BENCH_SIZES", "OFFICIAL_MS"]


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
