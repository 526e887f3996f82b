"""Accuracy cost of the opt-in precisions on a real photo: the packaged default portrait model on
assets/portrait.jpg, mask of each precision against eager float32 (person IoU, pixel agreement).

    .venv/bin/python benchmarks/portrait_precision.py
"""
import numpy as np
import torch

import rtseg
from rtseg.fast import available_backends, optimize
from rtseg.inference import predict


def main() -> None:
    torch.set_num_threads(2)
    model = rtseg.create_model("sinet", pretrained=True).eval()
    image = "assets/portrait.jpg"
    ref = predict(model, image, backend="eager").astype(bool)
    runs = [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    if "openvino" in available_backends():
        runs += [("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    print(f"| backend | precision | person IoU vs eager fp32 | pixels agreeing |\n|---|---|---|---|")
    for backend, precision in runs:
        fast = optimize(model, backend, precision=precision)
        got = predict(fast, image).astype(bool)
        iou = (got & ref).sum() / max(1, (got | ref).sum())
        print(f"| {backend} | {precision} | {iou:.4f} | {100 * np.mean(got == ref):.3f}% |")


if __name__ == "__main__":
    main()
