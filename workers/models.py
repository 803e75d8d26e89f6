"""Model definitions named in the sources (see ../shared/reference/SCIENCE.md).

Every model takes inputs of the data set's `input_shape` (no batch dim) and returns logits.
Convolutional models work on 1-D signals (MNIST-1D: shape (40,) or (1, 40)) with Conv1d and
on images (C, H, W) with Conv2d, so every architecture runs on every data set.

No lazy modules: `torch.func.stack_module_state` (trial packs) needs materialized parameters,
so flatten sizes are found with one dummy forward at construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workers.config import ModelConfig


def _spatial(input_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial dims) for a conv net; a flat vector is one channel."""
    if len(input_shape) == 1:
        return 1, (int(input_shape[0]),)
    return int(input_shape[0]), tuple(int(s) for s in input_shape[1:])


def _layers(ndim: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if ndim == 1:
        return nn.Conv1d, nn.MaxPool1d, nn.BatchNorm1d
    if ndim == 2:
        return nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d
    raise ValueError(f"conv models take 1-D or 2-D inputs, got {ndim} spatial dims")


class _ConvNet(nn.Module):
    """features -> flatten -> head, with the input reshaped to (N, C, *spatial)."""

    def __init__(self, input_shape: Sequence[int], features: nn.Sequential, head_in_to_out):
        super().__init__()
        self.channels, self.spatial = _spatial(input_shape)
        self.features = features
        with torch.no_grad():
            probe = torch.zeros(2, self.channels, *self.spatial)
            flat = self.features(probe).flatten(1).shape[1]
        self.head = head_in_to_out(flat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.channels, *self.spatial)
        return self.head(self.features(x).flatten(1))


def mlp(input_dim: int, hidden: Sequence[int], num_classes: int, batchnorm: bool) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(input_shape: Sequence[int], num_classes: int, batchnorm: bool) -> nn.Module:
    """Two conv3x3 blocks with pooling and one FC layer: the cheap default CNN."""
    c, spatial = _spatial(input_shape)
    conv, pool, bn = _layers(len(spatial))
    feats: list[nn.Module] = []
    for cin, cout in ((c, 16), (16, 32)):
        feats.append(conv(cin, cout, 3, padding=1))
        if batchnorm:
            feats.append(bn(cout))
        feats += [nn.ReLU(), pool(2)]
    return _ConvNet(input_shape, nn.Sequential(*feats), lambda n: nn.Linear(n, num_classes))


def lenet(
    input_shape: Sequence[int], num_classes: int, batchnorm: bool, dropout: float | None
) -> nn.Module:
    """Seed 004: conv3x3 32 - ReLU - conv3x3 64 - ReLU - maxpool2 - dropout .25 - FC128 - ReLU -
    dropout .5 - FC10. `dropout` overrides both rates (0 disables dropout)."""
    c, spatial = _spatial(input_shape)
    conv, pool, bn = _layers(len(spatial))
    p1, p2 = (0.25, 0.5) if dropout is None else (dropout, dropout)
    feats: list[nn.Module] = [conv(c, 32, 3)]
    if batchnorm:
        feats.append(bn(32))
    feats += [nn.ReLU(), conv(32, 64, 3)]
    if batchnorm:
        feats.append(bn(64))
    feats += [nn.ReLU(), pool(2), nn.Dropout(p1)]

    def head(n: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(n, 128), nn.ReLU(), nn.Dropout(p2), nn.Linear(128, num_classes)
        )

    return _ConvNet(input_shape, nn.Sequential(*feats), head)


def vgg(
    input_shape: Sequence[int], num_classes: int, batchnorm: bool, channels: Sequence[int]
) -> nn.Module:
    """Seed 002, VGG-inspired: repeated (conv3x3 - ReLU - maxpool2) blocks, flatten, FC - ReLU - FC."""
    c, spatial = _spatial(input_shape)
    conv, pool, bn = _layers(len(spatial))
    feats: list[nn.Module] = []
    cin = c
    size = min(spatial)
    for cout in channels:
        feats.append(conv(cin, cout, 3, padding=1))
        if batchnorm:
            feats.append(bn(cout))
        feats.append(nn.ReLU())
        if size >= 2:  # small inputs (8x8 digits) run out of room to pool
            feats.append(pool(2))
            size //= 2
        cin = cout

    def head(n: int) -> nn.Module:
        return nn.Sequential(nn.Linear(n, 128), nn.ReLU(), nn.Linear(128, num_classes))

    return _ConvNet(input_shape, nn.Sequential(*feats), head)


def keskar_f1(input_dim: int, num_classes: int) -> nn.Module:
    """Keskar et al. F1: input - 5 x [FC512 - BN - ReLU] - output."""
    return mlp(input_dim, [512] * 5, num_classes, batchnorm=True)


def keskar_c1(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Keskar et al. C1 (shallow conv): conv5x5 64-BN-ReLU-maxpool3/2 (x2) - FC384-BN-ReLU-
    dropout .5 - FC192-BN-ReLU-dropout .5 - output."""
    c, spatial = _spatial(input_shape)
    conv, pool, bn = _layers(len(spatial))
    feats = nn.Sequential(
        conv(c, 64, 5, padding=2),
        bn(64),
        nn.ReLU(),
        pool(3, 2, padding=1),
        conv(64, 64, 5, padding=2),
        bn(64),
        nn.ReLU(),
        pool(3, 2, padding=1),
    )

    def head(n: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(n, 384),
            nn.BatchNorm1d(384),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(384, 192),
            nn.BatchNorm1d(192),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(192, num_classes),
        )

    return _ConvNet(input_shape, feats, head)


def build_model(cfg: ModelConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build the model named by `cfg` for inputs of `input_shape` (no batch dim): a built-in,
    or the user's `factory` called with `kwargs` (+ input_shape / num_classes when it
    accepts them by name), which must return an nn.Module."""
    if cfg.factory is not None:
        return build_user_model(cfg, input_shape, num_classes)
    flat = 1
    for s in input_shape:
        flat *= int(s)
    if cfg.name == "mlp":
        return mlp(flat, cfg.hidden, num_classes, cfg.batchnorm)
    if cfg.name == "cnn":
        return small_cnn(input_shape, num_classes, cfg.batchnorm)
    if cfg.name == "lenet":
        return lenet(input_shape, num_classes, cfg.batchnorm, cfg.dropout)
    if cfg.name == "vgg":
        return vgg(input_shape, num_classes, cfg.batchnorm, cfg.channels)
    if cfg.name == "keskar_f1":
        return keskar_f1(flat, num_classes)
    if cfg.name == "keskar_c1":
        return keskar_c1(input_shape, num_classes)
    raise ValueError(f"model.name: unknown model {cfg.name!r}")


def build_user_model(cfg: ModelConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    from workers.user import UserCodeError, call_with, resolve

    fn = resolve(cfg.factory, "model.factory")
    offered = {"input_shape": tuple(int(s) for s in input_shape), "num_classes": int(num_classes)}
    model = call_with(fn, dict(cfg.kwargs), offered)
    if not isinstance(model, nn.Module):
        raise UserCodeError(
            f"model.factory: {cfg.factory!r} returned a {type(model).__name__}; expected a "
            "torch.nn.Module"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise UserCodeError(
            f"model.factory: {cfg.factory!r} returned a module with no trainable parameters"
        )
    return model
