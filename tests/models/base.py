"""Checks every semantic model must pass (smp's tests/models/base.py idea).

Subclass :class:`SemanticModelChecks`, set ``name``, ``kwargs`` and ``odd_size``; each
architecture's test is then a few lines plus its parity and paper-specific checks.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

import rtseg
from rtseg.checkpoint import model_from_checkpoint, model_checkpoint


class SemanticModelChecks:
    name: str = ""
    kwargs: dict[str, Any] = {}
    size: tuple[int, int] = (64, 64)  # a size the bare network accepts
    odd_size: tuple[int, int] = (67, 93)  # any size: predict must pad/resize and return it

    def make(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return rtseg.create_model(self.name, **self.kwargs)

    def test_forward_backward(self):
        model = self.make().train()
        x = torch.randn(2, 3, *self.size)
        out = model(x)
        main = out[0] if isinstance(out, (tuple, list)) else out
        assert main.shape[:2] == (2, self.kwargs.get("num_classes", main.shape[1]))
        assert main.shape[-2:] == torch.Size(self.size)
        loss = sum(o.float().mean() for o in (out if isinstance(out, (tuple, list)) else [out]))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), "some parameters receive no gradient"
        assert all(torch.isfinite(g).all() for g in grads)

    def test_eval_returns_one_tensor(self):
        model = self.make().eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, *self.size))
        assert isinstance(out, torch.Tensor)

    def test_predict_any_size(self):
        model = self.make().eval()
        image = (np.random.default_rng(0).random((*self.odd_size, 3)) * 255).astype(np.uint8)
        mask = rtseg.predict(model, image)
        assert mask.shape == self.odd_size and mask.dtype == np.uint8
        n = self.kwargs.get("num_classes")
        if n:
            assert int(mask.max()) < n

    def test_checkpoint_roundtrip(self):
        model = self.make().eval()
        buf = io.BytesIO()
        torch.save(model_checkpoint(model), buf)
        buf.seek(0)
        restored = model_from_checkpoint(torch.load(buf, weights_only=True))
        x = torch.randn(1, 3, *self.size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), restored(x))
