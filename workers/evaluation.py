"""Evaluation of a model over a whole split, and the batches of a streamed data set (torch).

Shared by the lone loop (workers/train.py), the user-loop API (workers/trial_api.py,
`trial.evaluate`) and the end-of-training probes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from workers.data import Dataset
from workers.losses import CROSS_ENTROPY, Loss

EVAL_BATCH = 4096  # examples per forward pass when evaluating a whole split


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = CROSS_ENTROPY
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy over a whole split, eval mode, as device scalars (accuracy
    NaN when the loss defines none). The mean is the size-weighted mean of chunk means."""
    chunks = (
        (x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]) for i in range(0, x.shape[0], EVAL_BATCH)
    )
    return evaluate_batches(model, chunks, loss, x.device)


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: Loss,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy of `model` over `batches` (see `evaluate`)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.float64)
    n, has_acc = 0, True
    for xb, yb in batches:
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        out = model(xb).float()
        loss_sum += loss(out, yb).double() * xb.shape[0]
        c = loss.correct(out, yb) if has_acc else None
        if c is None:
            has_acc = False
        else:
            correct += c
        n += xb.shape[0]
    model.train(was_training)
    acc = correct / n if has_acc else torch.full((), math.nan, device=dev)
    return (loss_sum / n).float(), acc.float()


def loader_workers(dev: torch.device) -> int:
    """DataLoader worker processes for a streamed data set ($BATCHLAB_LOADER_WORKERS; default
    2 on CUDA, 0 on CPU where the trial's own threads do the work)."""
    env = os.environ.get("BATCHLAB_LOADER_WORKERS")
    return int(env) if env else (2 if dev.type == "cuda" else 0)


def loader(ds, batches: list[list[int]], dev: torch.device) -> torch.utils.data.DataLoader:
    """A DataLoader over `ds` yielding exactly `batches` (lists of indices), in order."""
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=loader_workers(dev),
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )


def evaluate_split(
    model: nn.Module, data: Dataset, split: str, loss: Loss = CROSS_ENTROPY
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy over the whole validation split ("val") or the training split
    ("train"); a streamed data set's training split is evaluated on its device subset."""
    dev = data.x_train.device
    if split == "val" and data.streaming:
        n = len(data.val_set)
        order = [list(range(i, min(n, i + EVAL_BATCH))) for i in range(0, n, EVAL_BATCH)]
        return evaluate_batches(model, loader(data.val_set, order, dev), loss, dev)
    if split == "val":
        return evaluate(model, data.x_val, data.y_val, loss)
    return evaluate(model, data.x_train, data.y_train, loss)


def val_only(model: nn.Module, data: Dataset, lossf: Loss) -> tuple[float, float]:
    """Validation (loss, accuracy) as host numbers."""
    vl, va = evaluate_split(model, data, "val", lossf)
    return vl.item(), va.item()


def stream_batches(
    data: Dataset, perm: torch.Tensor, batch_size: int, spe: int, dev: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's batches of a streamed data set, in the order of `perm` (the same order
    the device-resident path takes), through a DataLoader."""
    order = perm.cpu().tolist()
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(spe)]
    for xb, yb in loader(data.train_set, batches, dev):
        if not torch.is_floating_point(yb):
            yb = yb.long()
        yield xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
