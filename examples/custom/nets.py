"""User models for batchlab (`model: {factory: "./nets.py:<function>"}`).

A factory returns an nn.Module; it receives `input_shape` and `num_classes` when it names
them as parameters, and every key of `model.kwargs` (which may be grid axes, e.g.
`model.kwargs.width: [32, 128]`).
"""

from __future__ import annotations

import math

from torch import nn


def mlp(input_shape, num_classes, width=64, depth=2):
    """A plain ReLU MLP: only layers trial packs batch natively (PackNet)."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """A model of the user's own class (residual blocks with LayerNorm and GELU): packs train
    it through torch.func (functional_call + vmap), not PackNet."""

    def __init__(self, d_in: int, width: int, blocks: int, num_classes: int):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def residual(input_shape, num_classes, width=64, blocks=2):
    return ResidualMLP(math.prod(input_shape), width, blocks, num_classes)


def linear(input_shape, num_classes=1):
    """A linear model (least squares under `loss: mse`)."""
    return nn.Linear(math.prod(input_shape), num_classes)
