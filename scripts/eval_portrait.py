#!/usr/bin/env python
"""Person IoU of portrait models, side by side, on a folder-layout evaluation set.

Models (each a ``LABEL=SPEC`` of ``--model``; the default is the first two):

* ``rtseg default=packaged``: rtseg's packaged SINet (``create_model("sinet", pretrained=True)``)
* ``official SINet=official:PATH``: the official SINet EG1800 checkpoint through ``load_official``
  (``--official PATH`` sets its path)
* ``NAME=PATH``: any rtseg or official SINet checkpoint
* MediaPipe's selfie segmenter (general 256x256 model bundled with the legacy ``mp.solutions``
  API), run in another interpreter given with ``--mediapipe-python`` (mediapipe 0.10.21 pins
  numpy<2 and protobuf<5, so it lives in its own venv).

rtseg models are scored exactly as ``rtseg eval --data folder:DIR`` scores them (the weights' own
size rule, ``rtseg.engine.semantic.SemanticTask.evaluate``); MediaPipe's person probability is
thresholded at 0.5 at the image's size. Person IoU is over all pixels of the set (255 = ignore);
the per-photo IoUs are printed too.

Example::

    python scripts/build_person_eval_set.py --out data/person_eval
    python scripts/eval_portrait.py --data data/person_eval \\
        --official ../shared/parity/sinet_official_eg1800.pth --mediapipe-python /tmp/mpvenv/bin/python
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

# Run inside the MediaPipe interpreter: argv = image paths..., out folder. Writes <stem>.npy
# (float16 person probability at the image's size) and prints the mediapipe version.
MEDIAPIPE_SNIPPET = r"""
import sys
from pathlib import Path
import numpy as np
from PIL import Image
import mediapipe as mp
*images, out = sys.argv[1:]
with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
    for p in images:
        rgb = np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB")))
        res = seg.process(rgb)
        np.save(Path(out) / (Path(p).stem + ".npy"), res.segmentation_mask.astype(np.float16))
print(mp.__version__)
"""


def person_counts(pred: np.ndarray, target: np.ndarray, person: int = 1, ignore: int = 255) -> tuple[int, int]:
    """(intersection, union) of the person class over the valid pixels."""
    valid = target != ignore
    p, t = (pred == person) & valid, (target == person) & valid
    return int((p & t).sum()), int((p | t).sum())


def score_rtseg(model, data: Path) -> dict:
    """``rtseg eval``'s score (whole set) plus per-photo person IoU with the same predictions."""
    import rtseg
    from rtseg.data.datasets import open_dataset
    from rtseg.data.io import read_mask
    from rtseg.engine.semantic import SemanticTask

    dataset = open_dataset(f"folder:{data}", "val")
    metrics = SemanticTask().evaluate(model, dataset, progress=False)
    person = list(dataset.info.class_names).index("person")
    per_image = {}
    for s in dataset.samples:
        i, u = person_counts(rtseg.predict(model, s.image), read_mask(s.mask), person)
        per_image[Path(s.image).stem] = i / u if u else float("nan")
    return {"person_iou": metrics["per_class"]["iou"]["person"], "miou": metrics["miou"], "per_image": per_image}


def score_mediapipe(python: str, data: Path) -> dict:
    from rtseg.data.io import read_mask

    images = sorted(p for p in (data / "images").iterdir() if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([python, "-c", MEDIAPIPE_SNIPPET, *map(str, images), tmp],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"eval_portrait: MediaPipe run with {python} failed: {last}")
        version = res.stdout.strip().splitlines()[-1]
        inter = union = 0
        per_image = {}
        for p in images:
            prob = np.load(Path(tmp) / f"{p.stem}.npy").astype(np.float32)
            target = read_mask(data / "masks" / f"{p.stem}.png")
            i, u = person_counts((prob >= 0.5).astype(np.uint8), target)
            inter, union = inter + i, union + u
            per_image[p.stem] = i / u if u else float("nan")
    return {"person_iou": inter / union if union else float("nan"), "per_image": per_image, "version": version}


def load(spec: str, official: Optional[str]):
    import rtseg
    from rtseg.checkpoint import load_model

    if spec == "packaged":
        return rtseg.create_model("sinet", pretrained=True).eval()
    if spec.startswith("official:") or spec == "official":
        path = spec.partition(":")[2] or official
        if not path:
            raise SystemExit("eval_portrait: give the official checkpoint with --official PATH")
        return rtseg.load_official("sinet", path)
    return load_model("sinet", spec)


def markdown(rows: list[tuple[str, dict]], names: list[str]) -> str:
    head = "| model | person IoU (all pixels) | " + " | ".join(names) + " |"
    lines = [head, "|" + " --- |" * (2 + len(names))]
    for label, r in rows:
        cells = " | ".join(f"{100 * r['per_image'][n]:.1f}" for n in names)
        lines.append(f"| {label} | **{100 * r['person_iou']:.1f}** | {cells} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="folder-layout set (scripts/build_person_eval_set.py)")
    p.add_argument("--model", action="append", default=None, metavar="LABEL=SPEC",
                   help="SPEC: packaged | official[:PATH] | a checkpoint path (repeatable)")
    p.add_argument("--official", default=None, help="path of the official SINet EG1800 checkpoint")
    p.add_argument("--mediapipe-python", default=None, help="interpreter with mediapipe installed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    specs = args.model or (["rtseg default (packaged)=packaged"]
                           + (["official SINet (EG1800)=official"] if args.official else []))
    rows = []
    for item in specs:
        label, sep, spec = item.partition("=")
        if not sep:
            raise SystemExit(f"eval_portrait: --model {item!r}: expected LABEL=SPEC")
        rows.append((label, score_rtseg(load(spec, args.official), args.data)))
    if args.mediapipe_python:
        r = score_mediapipe(args.mediapipe_python, args.data)
        rows.append((f"MediaPipe selfie segmenter (mediapipe {r['version']}, general model)", r))
    names = sorted(rows[0][1]["per_image"])
    print(markdown(rows, names))
    if args.json:
        args.json.write_text(json.dumps({label: r for label, r in rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
