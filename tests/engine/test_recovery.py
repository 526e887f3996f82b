"""Nothing lost: SIGKILL mid-epoch then --resume gives the weights of an uninterrupted run;
SIGINT / SIGTERM save a checkpoint and exit cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.toydata import make_folder_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "rtseg", "train", "--data", f"folder:{data}", "--out", str(out), "--epochs", "2",
            "--batch-size", "2", "--size", "64", "--lr", "3e-3", "--seed", "5", "--save-every", "1",
            "--no-progress", *extra]


def _wait_for_step(out, step, proc, timeout=120):
    last = out / "last.pt"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read() if proc.stderr else ''}")
        if last.exists():
            try:
                state = torch.load(last, map_location="cpu", weights_only=True)
            except Exception:  # being replaced right now
                state = None
            if state and state["global_step"] >= step:
                return state
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("rec"), n_train=12, n_val=2)


def _params(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_mid_epoch_then_resume_is_identical(data, tmp_path):
    """Kill -9 inside epoch 1, resume, and compare with an uninterrupted run: bit-identical
    (single process on the CPU is deterministic: same order, same seeded augmentation, same RNG
    states restored, same kernels), so the tolerance is exactly zero."""
    ref = subprocess.run(_cmd(data, tmp_path / "ref"), env=ENV, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cmd(data, tmp_path / "killed"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        state = _wait_for_step(tmp_path / "killed", 3, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 6  # really mid-epoch
    res = subprocess.run(_cmd(data, tmp_path / "killed", "--resume"), env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    a, b = _params(tmp_path / "ref" / "last.pt"), _params(tmp_path / "killed" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_exits_cleanly(data, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(data, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(out, 2, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    lines = [line for line in err.strip().splitlines() if line.startswith("rtseg")]
    assert lines and "checkpoint saved" in lines[-1] and "Traceback" not in err
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["global_step"] >= 2
    res = subprocess.run(_cmd(data, out, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["global_step"] == 12
