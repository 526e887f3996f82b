"""``rtseg bench [MODEL...]``: parameters, FLOPs, latency, fps and peak memory per backend."""
from __future__ import annotations

import argparse
import shlex
import sys

from .common import parse_kwargs, parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL", help="model names (default: every registered model)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="input HxW for every model (default: each model's benchmark size, e.g. sinet 224x224)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (torch, onnxruntime, OpenVINO); default 2")
    p.add_argument("--backend", nargs="+", default=["eager", "auto"], metavar="BACKEND",
                   help="eager, fused, onnxruntime, openvino, compile, auto (the model's default) or all "
                        "(every installed backend except compile); default: eager auto")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="bf16: OpenVINO's bf16 inference; int8: static int8 quantisation (onnxruntime or "
                        "openvino), calibrated on synthetic example images; both opt-in, not within 1e-4 of "
                        "eager (the table's max|diff| and argmax agreement show the cost); default fp32")
    p.add_argument("--iters", type=int, default=50, help="timed calls per measurement (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds over all models and backends, interleaved; timings are pooled (default 1). "
                        "On a shared machine several rounds spread the noise evenly over the backends")
    p.add_argument("--params", action="store_true", help="only print parameter counts (fast)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="draw latency vs parameters")
    p.add_argument("--compare", choices=["mediapipe"], default=None,
                   help="also time MediaPipe's selfie segmenter (needs mediapipe; see --mediapipe-python)")
    p.add_argument("--mediapipe-python", default=None, metavar="PYTHON",
                   help="interpreter of an environment with mediapipe (default: $RTSEG_MEDIAPIPE_PYTHON or this one)")
    p.add_argument("--from-json", default=[], nargs="+", metavar="JSON",
                   help="measure nothing: print the table (and --plot) of earlier --json files")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster start; peak memory then covers all models)")
    p.add_argument("--weights", nargs="+", default=[], metavar="[MODEL=]PATH",
                   help="weights: PATH for a single MODEL, or MODEL=PATH per model (default: random / packaged)")
    p.add_argument("--model-kwargs", default=[], nargs="*", metavar="KEY=VALUE", help="constructor options")


def run(args: argparse.Namespace) -> int:
    from ..bench import (bench, bench_mediapipe, count_params, format_table, machine_info, mediapipe_python,
                         merge_rounds, plot, write_json)
    from ..errors import RtsegError
    from ..fast import iter_backends, resolve_backend
    from ..models import create_model, get_spec, list_models

    if args.from_json:
        from ..bench import read_json

        loaded = [read_json(path) for path in args.from_json]
        results = [r for rs, _ in loaded for r in rs]
        print(format_table(results))
        if args.plot:
            machine = loaded[0][1].get("machine", {})
            plot(results, args.plot, title=f"rtseg on {machine.get('cpu', '?')}, {machine.get('threads', '?')} "
                                           f"threads, batch {results[0].batch if results else 1}")
            print(f"wrote {args.plot}")
        return 0
    names = args.models or list_models()
    for n in names:
        get_spec(n)  # unknown names fail here, with the list of valid ones
    kwargs = parse_kwargs(args.model_kwargs)
    weights = _weights_by_model(args.weights, names)
    if args.params:
        for n in names:
            print(f"{n:<18} {count_params(create_model(n, **kwargs)):>12,}")
        return 0
    if min(args.threads, args.batch, args.iters, args.repeat) < 1 or args.warmup < 0:
        raise RtsegError("--threads, --batch, --iters and --repeat must be >= 1, --warmup >= 0")
    backends = iter_backends(args.backend)
    for b in backends:
        if b != "auto":
            resolve_backend(b)  # a missing optional package fails before any measuring
    command = "rtseg bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else "rtseg bench"
    machine = machine_info(args.threads)
    py = None
    if args.compare == "mediapipe":
        py = mediapipe_python(args.mediapipe_python)
        if py is None:
            print("mediapipe is not importable here; install rtseg[mediapipe] in another environment and pass "
                  "--mediapipe-python (skipping the comparison)", file=sys.stderr)
        else:
            machine["mediapipe_python"] = py
    rounds: dict[tuple[str, str], list] = {}
    for i in range(args.repeat):
        tag = f"[{i + 1}/{args.repeat}] " if args.repeat > 1 else ""
        if py is not None:
            r = bench_mediapipe(py, iters=args.iters, warmup=args.warmup, threads=args.threads)
            print(f"{tag}mediapipe_selfie 256x256 p50 {r.p50_ms:.2f} ms  p90 {r.p90_ms:.2f} ms  ({r.note})", flush=True)
            rounds.setdefault(("mediapipe_selfie", "mediapipe"), []).append(r)
        for n in names:
            for b in backends:
                r = bench(n, b, args.size, subprocess_=not args.in_process, batch=args.batch, threads=args.threads,
                          iters=args.iters, warmup=args.warmup, weights=weights.get(n), model_kwargs=kwargs,
                          flops=not args.no_flops, precision=args.precision)
                print(f"{tag}{n} {r.size[0]}x{r.size[1]} {b}->{r.resolved_backend}  p50 {r.p50_ms:.2f} ms  "
                      f"p90 {r.p90_ms:.2f} ms  max|diff| {r.max_abs_diff:.1e}  build {r.build_s:.1f} s", flush=True)
                rounds.setdefault((n, b), []).append(r)
    results = [merge_rounds(rs) for rs in rounds.values()]
    print(format_table(results))
    if args.json:
        write_json(results, args.json, machine=machine, command=command)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot, title=f"rtseg on {machine['cpu']}, {args.threads} threads, batch {args.batch}")
        print(f"wrote {args.plot}")
    return 0


def _weights_by_model(items: list[str], names: list[str]) -> dict[str, str]:
    from ..errors import RtsegError

    out: dict[str, str] = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep:
            if len(names) != 1 or len(items) != 1:
                raise RtsegError(f"--weights {item}: with several models write MODEL=PATH")
            model, path = names[0], item
        if model not in names:
            raise RtsegError(f"--weights {item}: {model!r} is not among the benchmarked models")
        out[model] = path
    return out
