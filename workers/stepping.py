"""What every driver of batchlab's loop steps with (torch): the device, the data order, the
lr schedule, the optimizer, and where checkpoints go.

Lone trials (workers/train.py), packs (workers/pack.py) and the timing probe
(workers/timing.py) take the same data order and lr from here, so a pack member sees exactly
the batches and the lr of its lone trial.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch

from workers.config import TrialConfig


class CheckpointIO(Protocol):
    """Where a trial keeps its checkpoints (the warehouse provides one per trial)."""

    def save(self, name: str, state: dict[str, Any]) -> None: ...

    def load(self, name: str) -> dict[str, Any] | None: ...


def resolve_device(device: str | None = None) -> torch.device:
    """ "auto" (or None) picks CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """The data order of one epoch: a pure function of (seed, epoch), so a resumed trial and
    a trial trained inside a pack see exactly the same batches as a lone trial."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over `n` examples."""
    # Keep the last partial batch (as a DataLoader would), except a lone example: BatchNorm
    # cannot train on a batch of one.
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 else 0)


def lr_at(cfg: TrialConfig, step: int, n_steps_epoch: int, decay: float) -> float:
    """The lr applied at optimizer step `step` (0-based): scaling rule, then gradual linear
    warmup from the unscaled lr to the scaled lr over `warmup_epochs` (Goyal et al. 2017),
    then the plateau decay factor."""
    target = cfg.scaled_lr
    warmup_steps = round(cfg.warmup_epochs * n_steps_epoch)
    if warmup_steps > 0 and step < warmup_steps:
        lr = cfg.lr + (target - cfg.lr) * step / warmup_steps
    else:
        lr = target
    return lr * decay


def make_optimizer(cfg: TrialConfig, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The configured torch.optim optimizer over `params` (lr set per step by lr_at)."""
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    return torch.optim.Adam(
        params, lr=cfg.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
