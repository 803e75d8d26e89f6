"""Helpers shared by every probe: eval mode, flat parameter vectors, chunked losses and
gradients through torch.func.functional_call (the model's parameters are never written)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[Tensor, Tensor], Tensor]


class NonFinite(Exception):
    """Raised inside a probe's inner loop when the loss (or a gradient) is NaN/inf."""


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each submodule's own flag afterwards.

    Saving per submodule (not just model.training) keeps mixed states, e.g. a frozen
    BatchNorm left in eval inside a training model, exactly as they were.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def trainable_of(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    names, params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            names.append(name)
            params.append(p)
    if not params:
        raise ValueError("model has no trainable parameters")
    return names, params


def flat_vector(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Views of `vec` shaped like `like` (autograd flows from the views back to `vec`)."""
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[i : i + n].view_as(t))
        i += n
    return out


def chunk_bounds(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    step = n if chunk_size is None else max(1, int(chunk_size))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_of(model: nn.Module, x: Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return x.device


def grads_or_zeros(
    out: Tensor,
    inputs: list[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> list[Tensor]:
    """autograd.grad with unused inputs (and a constant `out`) mapped to zero gradients."""
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    gs = torch.autograd.grad(
        out, inputs, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, inputs, strict=True)]


def loss_grad_at(
    model: nn.Module,
    names: list[str],
    like: list[Tensor],
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    chunk_size: int | None,
) -> tuple[float, Tensor]:
    """(f(theta), grad f(theta)) for a flat trainable-parameter vector `theta`.

    The model is called through functional_call with views of `theta`, so its own parameters
    are never written. Chunks are backpropagated one at a time (bounded memory); the mean loss
    is the size-weighted sum of chunk means. Raises NonFinite on a NaN/inf loss.
    """
    n = x.shape[0]
    total = 0.0
    g = torch.zeros_like(theta)
    for a, b in chunk_bounds(n, chunk_size):
        t = theta.detach().requires_grad_(True)
        out = functional_call(model, dict(zip(names, unflatten(t, like), strict=True)), (x[a:b],))
        loss = loss_fn(out, y[a:b]) * ((b - a) / n)
        (gc,) = grads_or_zeros(loss, [t])
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise NonFinite(f"loss {lv}")
        total += lv
        g += gc
    return total, g


def loss_at(
    model: nn.Module,
    names: list[str],
    like: list[Tensor],
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    chunk_size: int | None,
) -> float:
    n = x.shape[0]
    total = 0.0
    with torch.no_grad():
        params = dict(zip(names, unflatten(theta, like), strict=True))
        for a, b in chunk_bounds(n, chunk_size):
            total += float(loss_fn(functional_call(model, params, (x[a:b],)), y[a:b])) * (
                (b - a) / n
            )
    if not math.isfinite(total):
        raise NonFinite(f"loss {total}")
    return total


def batch_grad(
    model: nn.Module,
    params: list[nn.Parameter],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    chunk_size: int | None,
) -> Tensor:
    """Flat gradient of the mean loss over (x, y) w.r.t. `params` (never touches .grad)."""
    n = x.shape[0]
    g = None
    for a, b in chunk_bounds(n, chunk_size):
        loss = loss_fn(model(x[a:b]), y[a:b]) * ((b - a) / n)
        gc = flat_vector(grads_or_zeros(loss, params))
        g = gc if g is None else g + gc
    assert g is not None
    return g.detach()


def start_clock(model: nn.Module, x: Tensor) -> tuple[torch.device, float]:
    """A probe's device and start time: `time.perf_counter()` once the device's queued work
    is done (`seconds_since(t0, device)` reads the clock at the end)."""
    device = device_of(model, x)
    sync_device(device)
    return device, time.perf_counter()


def flat_params(model: nn.Module) -> tuple[list[str], list[Tensor], Tensor]:
    """(names, detached tensors, flat copy) of the model's trainable parameters: the point a
    probe perturbs through `loss_at` / `loss_grad_at` (the copy is never written back)."""
    names, params = trainable_of(model)
    like = [p.detach() for p in params]
    return names, like, flat_vector(like).detach().clone()


def seconds_since(t0: float, device: torch.device) -> float:
    sync_device(device)
    return time.perf_counter() - t0
