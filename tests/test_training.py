"""A few optimizer steps give the same losses with fastln.LayerNorm as with torch's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastln


class TinyTransformerBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=4, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Sequential(nn.LayerNorm(dim, bias=False), nn.Linear(dim, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


def _losses(model: nn.Module, steps: int) -> list[float]:
    torch.manual_seed(123)
    # SGD rather than Adam: Adam divides by the gradient's magnitude, so
    # parameters whose true gradient is zero (the key bias of attention) move
    # by a full step on pure rounding noise, in both models differently.
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(8, 12, 64)
    y = torch.randint(0, 10, (8,))
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("swap", ["replace_layernorm", "constructor"])
def test_training_losses_match_torch(swap):
    torch.manual_seed(0)
    reference_model = TinyTransformerBlock(64)
    ours = copy.deepcopy(reference_model)
    if swap == "replace_layernorm":
        fastln.replace_layernorm(ours)
    else:
        for name in ("norm1", "norm2"):
            old = getattr(ours, name)
            new = fastln.LayerNorm(64)
            new.load_state_dict(old.state_dict())
            setattr(ours, name, new)
        old = ours.head[0]
        ours.head[0] = fastln.LayerNorm(64, bias=False)
        ours.head[0].load_state_dict(old.state_dict())
    assert sum(isinstance(m, fastln.LayerNorm) for m in ours.modules()) == 3

    want = _losses(reference_model, 6)
    got = _losses(ours, 6)
    assert got == pytest.approx(want, rel=1e-4)
    assert want[-1] < want[0]  # the model does train
    for (name, a), (_, b) in zip(ours.named_parameters(), reference_model.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
