"""Shared blocks (rtseg.models.layers)."""
import torch

from rtseg.models.layers import channel_shuffle


def test_channel_shuffle_interleaves_and_keeps_channels_last():
    x = torch.arange(2 * 6 * 3 * 4, dtype=torch.float32).reshape(2, 6, 3, 4)
    y = channel_shuffle(x, 2)
    # groups [0 1 2 | 3 4 5] -> 0 3 1 4 2 5
    assert torch.equal(y, x[:, [0, 3, 1, 4, 2, 5]])
    cl = channel_shuffle(x.contiguous(memory_format=torch.channels_last), 2)
    assert torch.equal(cl, y) and cl.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y)  # and the gradient is the inverse permutation, in both layouts
    for inp in (x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last).requires_grad_()):
        channel_shuffle(inp, 2).backward(g)
        assert torch.equal(inp.grad, g[:, [0, 2, 4, 1, 3, 5]])
