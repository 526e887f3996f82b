"""`rtseg train` under torchrun with 2 CPU processes (gloo).

Equivalence: DDP averages the gradients of the two ranks' micro-batches, which is exactly what a
single process does with ``--grad-accum 2`` over the same two micro-batches (BatchNorm sees the
same per-micro-batch statistics in both; SyncBatchNorm does not run on the CPU). So the trained
*parameters* agree to float tolerance (the all-reduce sums in another order: atol 1e-5). BN
running statistics are buffers that DDP takes from rank 0 only, so they are not compared.
Evaluation under torchrun (sharded, confusion matrices summed) equals single-process evaluation
of the same weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import rtseg
from rtseg.config import TrainConfig
from rtseg.data.datasets import open_dataset
from rtseg.engine.semantic import SemanticTask
from rtseg.engine.trainer import train
from tests.toydata import make_folder_dataset


def test_torchrun_matches_single_process(tmp_path):
    data = make_folder_dataset(tmp_path / "d", n_train=12, n_val=3)
    common = ["--data", f"folder:{data}", "--epochs", "1", "--batch-size", "4", "--size", "64", "--lr", "3e-3",
              "--seed", "11", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "rtseg", "train", "--out", str(tmp_path / "ddp"), *common]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    single = train(TrainConfig(model="sinet", data=f"folder:{data}", out=str(tmp_path / "single"), epochs=1,
                               batch_size=4, grad_accum=2, size=(64, 64), lr=3e-3, seed=11, progress=False))
    a = torch.load(tmp_path / "ddp" / "last.pt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "single" / "last.pt", map_location="cpu", weights_only=True)["state_dict"]
    model = rtseg.create_model("sinet")
    params = [n for n, _ in model.named_parameters()]
    assert params and all(n in a for n in params)
    moved = 0
    for n in params:
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=0, msg=n)
        moved += int(not torch.equal(a[n], model.state_dict()[n]))
    assert moved > len(params) // 2  # training really changed the weights
    # only rank 0 wrote: one metrics line, one log, no per-rank files
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    ddp_miou = rows[0]["miou"]
    ddp_model = rtseg.load_model("sinet", tmp_path / "ddp" / "model.pt")
    solo = SemanticTask().evaluate(ddp_model, open_dataset(f"folder:{data}", "val"), progress=False)
    assert ddp_miou == pytest.approx(solo["miou"], abs=1e-9)
    assert single["history"][0]["step"] == rows[0]["step"] == 3


def test_batch_not_divisible_by_world_size(tmp_path):
    data = make_folder_dataset(tmp_path / "d", n_train=4, n_val=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rtseg",
           "train", "--data", f"folder:{data}", "--batch-size", "3", "--size", "64", "--out", str(tmp_path / "o"),
           "--no-progress"]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "--batch-size 3 does not divide by world size 2" in res.stderr
