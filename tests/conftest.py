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


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def parity_fixture(name: str) -> Path:
    path = PARITY / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/parity is beside the repo in CI)")
    return path
