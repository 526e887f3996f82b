"""rtseg: real-time, lightweight image segmentation (SINet, BiSeNet, CGNet, DeepLabV3+, CenterMask)."""
from __future__ import annotations

from .checkpoint import load_model, load_official, save_model
from .config import PretrainedCfg, TrainConfig
from .errors import CheckpointError, DataError, ModelNameError, ModelOptionError, RtsegError
from .models import create_model, list_models

__version__ = "0.1.0"


def predict(model, image, **kwargs):  # noqa: ANN001 - documented in rtseg.inference.predict
    """Class-id mask (uint8, HxW of the input) for a path, PIL image or RGB uint8 array."""
    from .inference import predict as _predict

    return _predict(model, image, **kwargs)


__all__ = [
    "create_model", "list_models", "load_official", "load_model", "save_model", "predict",
    "PretrainedCfg", "TrainConfig", "RtsegError", "DataError", "CheckpointError", "ModelNameError",
    "ModelOptionError",
]
