#!/bin/sh
# Re-measure everything in BENCHMARKS.md (about 40 minutes on the 2-core machine). Run on an
# otherwise idle machine: every number is batch 1 (training: batch 36), 2 threads, median.
#   MP=/path/to/python-with-mediapipe sh benchmarks/run.sh
# MediaPipe lives in its own environment (it pins numpy<2 and protobuf<5):
#   python3 -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==0.10.21
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MP=${MP:-/tmp/mpvenv/bin/python}
SINET_W=${SINET_W:-../shared/parity/sinet_official_eg1800.pth}
SEMANTIC="sinet cgnet bisenet_v1 bisenet_face deeplabv3plus"

# 1. float32: eager PyTorch (= the official graph) against every fast backend, MediaPipe beside
$PY -m rtseg bench $SEMANTIC --weights sinet=$SINET_W --backend eager fused onnxruntime openvino \
    --compare mediapipe --mediapipe-python "$MP" --repeat 2 --iters 30 --warmup 5 \
    --json benchmarks/semantic.json --plot benchmarks/latency_vs_params.png
# 2. instance models (raw head outputs; post-processing is not timed)
$PY -m rtseg bench centermask_lite centermask --backend eager fused onnxruntime openvino --iters 10 --warmup 2 \
    --json benchmarks/instance.json
# 3. opt-in lower precision: int8 (onnxruntime / OpenVINO) and bf16 (OpenVINO)
$PY -m rtseg bench $SEMANTIC --weights sinet=$SINET_W --backend onnxruntime openvino --precision int8 \
    --iters 30 --warmup 5 --json benchmarks/int8.json
$PY -m rtseg bench $SEMANTIC --weights sinet=$SINET_W --backend openvino --precision bf16 \
    --iters 30 --warmup 5 --json benchmarks/bf16.json
# 4. training throughput, SINet 224x224 batch 36 (forward, cross-entropy, backward, Adam)
#    (compile variants: the first step, which compiles, is reported apart and not timed)
$PY -m rtseg.engine.speed --variants eager channels_last bf16 compile channels_last+compile channels_last+compile+bf16 \
    --rounds 3 --steps 2 > benchmarks/training_sinet.jsonl
# 5. the float32 matrix-multiply ceiling of this machine (2 threads)
$PY -c "import torch,time; torch.set_num_threads(2); a=torch.randn(2048,2048); b=torch.randn(2048,2048); [a@b for _ in range(3)]; t=time.perf_counter(); [a@b for _ in range(20)]; s=(time.perf_counter()-t)/20; print(f'sgemm 2048: {2*2048**3/s/1e9:.0f} GFLOP/s')" \
    > benchmarks/sgemm.txt
# 6. the opt-in precisions on a real photo with trained weights
$PY benchmarks/portrait_precision.py > benchmarks/portrait_precision.md
# the tables of BENCHMARKS.md
$PY -m rtseg bench --from-json benchmarks/semantic.json benchmarks/instance.json benchmarks/int8.json benchmarks/bf16.json
