"""Reading and writing checkpoints: atomic saves, safe loads, official-checkpoint conversion.

rtseg checkpoints are plain dicts (loadable with ``torch.load(weights_only=True)``)::

    {"rtseg_format": 1, "model_name": str, "model_kwargs": dict, "state_dict": {...},
     "pretrained_cfg": dict, ... training state (optimizer, scheduler, epoch, rng) ...}
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .config import PretrainedCfg
from .errors import CheckpointError, ModelNameError, ModelOptionError
from .fileio import atomic_write

StateDict = dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` atomically (see :mod:`rtseg.fileio`): the previous file stays until the new
    one is complete."""
    atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: PathLike) -> Any:
    """``torch.load(weights_only=True, map_location="cpu")`` with one-line errors."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file not found")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, expected a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(e).__name__}: {msg[:160]})") from None


KeyRules = Sequence[tuple[str, Union[str, Callable[["re.Match[str]"], str]]]]


def rename_key(key: str, rules: KeyRules) -> str:
    """Apply ordered regex ``(pattern, replacement)`` rules to one key, each to the result of the
    previous ones (timm's ``checkpoint_filter_fn`` idea, as data)."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: KeyRules) -> StateDict:
    """Official key names -> rtseg's, for every entry of ``state_dict``."""
    return {rename_key(k, rules): v for k, v in state_dict.items()}


def is_rtseg_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "rtseg_format" in obj and "state_dict" in obj


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """Find the state_dict inside common wrappers and strip DataParallel ``module.`` prefixes.

    Accepts a bare state_dict or ``{'model'|'state_dict'|'model_state'|'net': state_dict, ...}``.
    """
    if is_rtseg_checkpoint(obj):
        obj = obj["state_dict"]
    for _ in range(3):
        if isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
            for key in ("model", "state_dict", "model_state", "model_state_dict", "net", "params"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping) or not _looks_like_state_dict(obj):
        raise CheckpointError(f"{source}: no state_dict of tensors found (top-level keys: {_keys_preview(obj)})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _looks_like_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def _keys_preview(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:6]
        return ", ".join(map(str, keys)) + (" ..." if len(obj) > 6 else "")
    return type(obj).__name__


def load_state_dict_strict(model: nn.Module, state_dict: StateDict, source: str = "checkpoint",
                           model_name: Optional[str] = None) -> None:
    """Strict load; on any mismatch raise one CheckpointError listing missing / unexpected keys
    and shape conflicts (first few of each) instead of torch's multi-line RuntimeError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        what = f"model {model_name!r}" if model_name else type(model).__name__
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape conflicts ({_first(shapes)})")
        raise CheckpointError(f"{source}: does not fit {what}: " + "; ".join(parts))
    cast = {k: (v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v)
            for k, v in state_dict.items()}
    try:
        model.load_state_dict(cast, strict=True)
    except RuntimeError as e:  # torch's multi-line message (e.g. a tensor torch cannot copy)
        detail = (str(e).strip().splitlines() or [""])[-1].strip()[:200]
        raise CheckpointError(f"{source}: does not load into {model_name or type(model).__name__} ({detail})") from e


def _first(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def model_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The dict rtseg saves for a model (plus any ``extra`` training state)."""
    return {
        "rtseg_format": FORMAT_VERSION,
        "model_name": model.rtseg_name,
        "model_kwargs": dict(model.rtseg_kwargs),
        "pretrained_cfg": model.pretrained_cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in _unwrap_module(model).state_dict().items()},
        **extra,
    }


def _unwrap_module(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def save_model(model: nn.Module, path: PathLike, **extra: Any) -> None:
    atomic_save(model_checkpoint(model, **extra), path)


def model_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint",
                          expected_name: Optional[str] = None) -> nn.Module:
    """Rebuild a model from an rtseg checkpoint dict; refuse one of another architecture."""
    from .models import attach_meta, build_model, get_spec

    name = ckpt.get("model_name")
    if expected_name is not None and name != expected_name:
        raise CheckpointError(f"{source}: is a checkpoint of model {name!r}, not {expected_name!r}")
    try:
        spec = get_spec(name)
    except ModelNameError as e:
        raise CheckpointError(f"{source}: checkpoint names an {e}") from None
    kwargs = ckpt.get("model_kwargs") or {}
    if not isinstance(kwargs, Mapping) or not isinstance(ckpt["state_dict"], Mapping):
        raise CheckpointError(f"{source}: malformed rtseg checkpoint (model_kwargs / state_dict are not dicts)")
    kwargs = dict(kwargs)
    try:
        model = build_model(name, kwargs)
    except ModelOptionError as e:
        raise CheckpointError(f"{source}: model_kwargs do not fit: {e}") from e
    try:
        cfg = PretrainedCfg.from_dict(ckpt["pretrained_cfg"]) if ckpt.get("pretrained_cfg") else spec.default_cfg
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: malformed pretrained_cfg ({type(e).__name__}: {e})") from e
    attach_meta(model, name, kwargs, cfg)
    load_state_dict_strict(model, ckpt["state_dict"], source, name)
    return model.eval()


def load_model(name: Optional[str], weights: Union[PathLike, Mapping[str, Any], None], **kwargs: Any) -> nn.Module:
    """The one entry for "a model with weights" used by the CLI and API.

    * ``weights=None``: the packaged default weights of ``name`` when it has some, else random.
    * an rtseg checkpoint: rebuilt from its own kwargs (must be of ``name`` when given).
    * anything else: an official checkpoint of ``name`` converted by :func:`load_official`.
    """
    from .models import create_model, get_spec

    if weights is None:
        if name is None:
            raise CheckpointError("no model name and no weights given")
        spec = get_spec(name)
        if spec.packaged_weights and not kwargs:
            return load_packaged_weights(name)
        return create_model(name, **kwargs).eval()
    source = str(weights) if not isinstance(weights, Mapping) else "state_dict"
    obj = read_checkpoint(weights) if not isinstance(weights, Mapping) else weights
    if is_rtseg_checkpoint(obj):
        return model_from_checkpoint(obj, source, expected_name=name)
    if name is None:
        raise CheckpointError(f"{source}: not an rtseg checkpoint; name the model (--model) to load official weights")
    return load_official(name, obj, source=source, **kwargs)


def load_official(name: str, checkpoint: Union[PathLike, Mapping[str, Any]], *, source: Optional[str] = None,
                  **kwargs: Any) -> nn.Module:
    """Build ``name`` with the official configuration, convert an official checkpoint's keys and
    load it strictly. Returns the model in eval mode with the official preprocessing attached.

    ``checkpoint`` is a path or an already loaded object; wrappers (``{'model': ...}``,
    ``{'state_dict': ...}``) and ``module.`` prefixes are removed first. A state_dict that is
    already in rtseg's own key names loads as is.
    """
    from .models import attach_meta, build_model, get_spec

    spec = get_spec(name)
    if isinstance(checkpoint, Mapping):
        src = source or "state_dict"
        obj = checkpoint
    else:
        src = source or str(checkpoint)
        obj = read_checkpoint(checkpoint)
    sd = unwrap_state_dict(obj, src)
    model_kwargs = {**spec.official_kwargs, **kwargs}
    model = build_model(name, model_kwargs)
    own_keys = set(model.state_dict())
    if not set(sd) <= own_keys or len(own_keys - set(sd)) > 0:
        try:
            sd = spec.convert_official(sd)
        except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as e:  # keys of another model
            raise CheckpointError(f"{src}: does not fit model {name!r}: its keys do not convert to {name!r} "
                                  f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from e
    attach_meta(model, name, model_kwargs, spec.official_cfg or spec.default_cfg)
    load_state_dict_strict(model, sd, src, name)
    return model.eval()


def load_packaged_weights(name: str, **kwargs: Any) -> nn.Module:
    from .models import get_spec

    spec = get_spec(name)
    if not spec.packaged_weights:
        raise CheckpointError(f"model {name!r} has no weights packaged with rtseg; pass a local weights file")
    path = WEIGHTS_DIR / spec.packaged_weights
    model = load_model(name, path)
    if kwargs and any(model.rtseg_kwargs.get(k) != v for k, v in kwargs.items()):
        raise CheckpointError(f"{path}: packaged weights are for {model.rtseg_kwargs}, not {kwargs}")
    return model


def state_dict_bytes(sd: StateDict) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()
