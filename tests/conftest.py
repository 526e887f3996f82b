import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARITY = SHARED / "parity"

# Two pytest-xdist workers share 2 cores: one thread each avoids oversubscription.
torch.set_num_threads(int(os.environ.get("RTSEG_TEST_THREADS", "1")))

# Prediction's default backend (auto) builds an ONNX / OpenVINO graph for every new model and
# input shape, seconds each: hundreds of tiny random models would spend most of the suite there.
# The suite runs the other fast path, BatchNorm folded in PyTorch (built in milliseconds);
# tests/test_fast.py and tests/test_cli.py test `auto` itself (they unset this).
os.environ.setdefault("RTSEG_BACKEND", "fused")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def parity_fixture(name: str) -> Path:
    path = PARITY / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/parity is beside the repo in CI)")
    return path


def pytest_collection_modifyitems(config, items):
    """Longest first: tests marked ``slow`` (minutes each, e.g. the CenterMask held-out run) start
    before the rest, so that pytest-xdist's other worker works through everything else meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
