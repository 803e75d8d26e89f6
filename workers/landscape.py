"""Loss-landscape probes: 1-D interpolation between minimizers and 2-D filter-normalized surfaces.

Definitions follow ../shared/reference/SCIENCE.md ("1-D interpolation between minimizers", F-10,
and "2-D filter-normalized surface", F-12, Li et al. NeurIPS 2018); see docs/landscapes.md.

Every point is evaluated with the model in eval mode (BatchNorm running statistics, no dropout):
f is the mean loss (cross-entropy by default) over a fixed evaluation set. Many parameter points
are evaluated together: their state dicts are stacked along a new leading dim and the model is
run with `torch.func.functional_call` under `torch.func.vmap`, in chunks of `points_per_call`
points (memory grows linearly with it), the data in batches of `batch_size` examples. A model
that vmap cannot handle is evaluated point by point instead, with the same results.

The model passed in is only used as a stateless function: its parameters, buffers and
train/eval flags are the same after every call as before it.

Pure PyTorch (no Ray), device-agnostic: stacked states go to the model's device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

# (model output, targets) -> the MEAN loss over the batch, a 0-dim tensor. A mean (not a sum)
# is required: data-batch means are combined weighted by batch size into the whole-set mean.
LossFn = Callable[[Tensor, Tensor], Tensor]
# (model output, targets) -> the mean accuracy (fraction in [0, 1]) over the batch, a 0-dim tensor.
AccFn = Callable[[Tensor, Tensor], Tensor]
# A split's evaluation data: inputs and targets with the same first dim.
Split = tuple[Tensor, Tensor]
# Stacked states of a chunk of points: every tensor has a leading dim of the chunk size.
Stacked = dict[str, Tensor]

# Memory budget of one vmapped call when points_per_call=None, in tensor elements
# (2**28 float32 elements = 1 GiB); see _auto_points_per_call.
AUTO_BUDGET_ELEMENTS = 2**28


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of logits `out` (N, C) against integer labels `y` (N,)."""
    return F.cross_entropy(out, y)


def top1_accuracy(out: Tensor, y: Tensor) -> Tensor:
    """Fraction of examples whose largest logit is the label (float64: exact for any N)."""
    return (out.argmax(dim=-1) == y).to(torch.float64).mean()


# --------------------------------------------------------------------------------------------
# Directions and interpolation
# --------------------------------------------------------------------------------------------


def _filter_normalized(
    params: Mapping[str, Tensor], generator: torch.Generator
) -> dict[str, Tensor]:
    """Gaussian direction over `params`, rescaled per filter to the norms of `params`.

    Random numbers are drawn on the CPU in the order of `params`, only for tensors with
    dim >= 2, so a direction depends on the seed and the architecture, not on the device.
    """
    direction: dict[str, Tensor] = {}
    for name, theta in params.items():
        theta = theta.detach()
        if theta.dim() <= 1:
            # Biases and BatchNorm gamma/beta: zero direction (Li et al., "ignore biasbn").
            direction[name] = torch.zeros_like(theta)
            continue
        d = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        # One filter = one slice along dim 0: a conv output channel or a Linear output row.
        # d[k] <- d[k] / ||d[k]|| * ||theta[k]||, with the norms taken in float64 so the
        # equality holds to float32 rounding. Per-filter, NOT per-tensor: a per-tensor scale
        # would let filters of very different norms get equal-size perturbations.
        theta_norm = theta.to(device="cpu", dtype=torch.float64).flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        scale = (theta_norm / d_norm).view(-1, *([1] * (theta.dim() - 1)))
        direction[name] = (d * scale).to(device=theta.device, dtype=theta.dtype)
    return direction


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    """The model's trainable parameters by `named_parameters()` name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def filter_normalized_direction(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """A filter-normalized Gaussian direction over `model`'s trainable parameters (Li et al.).

    For every parameter with dim >= 2, d ~ N(0, I) and each filter k (slice along dim 0)
    is rescaled so ||d[k]|| = ||theta[k]||; parameters with dim <= 1 get a zero direction.
    Keys are the names of `model.named_parameters()` (trainable ones only); tensors have the
    parameter's dtype and device. Deterministic for a seed: drawn with a CPU `torch.Generator`.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return _filter_normalized(_trainable(model), gen)


def _lerp(ta: Tensor, tb: Tensor, alpha: Tensor | float) -> Tensor:
    # Written as alpha*b + (1-alpha)*a (not a + alpha*(b-a)) so that alpha=0 gives exactly a
    # and alpha=1 gives exactly b, bit for bit.
    return alpha * tb + (1 - alpha) * ta


def interpolate_states(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """theta(alpha) = alpha * theta_b + (1 - alpha) * theta_a over the whole state dict.

    Every floating tensor is interpolated, BatchNorm running_mean/running_var included
    (SCIENCE.md: the whole state). Integer buffers (num_batches_tracked) come from state_a.
    Extrapolation (alpha < 0 or > 1) can make a running_var negative; it is not clamped.
    """
    if set(state_a) != set(state_b):
        raise ValueError(f"state keys differ: {sorted(set(state_a) ^ set(state_b))}")
    out: dict[str, Tensor] = {}
    for k, ta in state_a.items():
        ta = ta.detach()
        if ta.is_floating_point():
            # alpha as a tensor of the state's dtype: the same rounding as the batched path
            # of interpolation_curve, so both give bit-identical states.
            a = torch.tensor(alpha, dtype=ta.dtype, device=ta.device)
            out[k] = _lerp(ta, state_b[k].detach().to(ta.device), a)
        else:
            out[k] = ta.clone()
    return out


# --------------------------------------------------------------------------------------------
# Batched evaluation
# --------------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


class _EvalMode:
    """Put every module in eval mode; restore each module's own flag on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


def _activation_elements(model: nn.Module, x1: Tensor) -> int:
    """Elements of all leaf-module outputs for one example (an over-estimate of live memory)."""
    total = 0

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x1)
    finally:
        for h in handles:
            h.remove()
    return total


def _auto_points_per_call(
    model: nn.Module, x: Tensor, rows: int, state_elements: int, budget: int
) -> int:
    """Points per vmapped call so that points * (rows * activations + state) <= budget elements."""
    per_point = rows * _activation_elements(model, x[:1]) + state_elements
    return max(1, budget // max(per_point, 1))


def _evaluate_stacked(
    model: nn.Module,
    n_points: int,
    chunk: Callable[[int, int], Stacked],
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    points_per_call: int | None,
    loss_fn: LossFn,
    acc_fn: AccFn | None,
    use_vmap: bool | None,
    state_elements: int,
) -> list[dict[str, float]]:
    """Evaluate n_points points; chunk(i, j) returns the stacked states of points i..j-1.

    Loss and accuracy are accumulated as sum over data batches of n_b * batch mean, in
    float64, then divided by N: the exact whole-set mean whatever batch_size is.
    """
    if n_points == 0:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = int(x.shape[0])
    if n == 0 or int(y.shape[0]) != n:
        raise ValueError(f"need matching non-empty x and y, got {x.shape[0]} and {y.shape[0]}")
    device = _device(model)
    loss_sum = torch.zeros(n_points, dtype=torch.float64)
    acc_sum = torch.zeros(n_points, dtype=torch.float64)

    def metrics(params: dict[str, Tensor], xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(model, params, (xb,))
        loss = loss_fn(out, yb)
        acc = acc_fn(out, yb) if acc_fn is not None else torch.zeros_like(loss)
        return loss, acc

    batched = vmap(metrics, in_dims=(0, None, None))
    vmap_ok = use_vmap is not False

    with torch.no_grad(), _EvalMode(model):
        if points_per_call is None:
            rows = min(batch_size, n)
            ppc = _auto_points_per_call(
                model, x[:1].to(device), rows, state_elements, AUTO_BUDGET_ELEMENTS
            )
        else:
            if points_per_call < 1:
                raise ValueError(f"points_per_call must be >= 1, got {points_per_call}")
            ppc = points_per_call
        for i in range(0, n_points, ppc):
            j = min(i + ppc, n_points)
            stacked = {k: v.to(device) for k, v in chunk(i, j).items()}
            for s in range(0, n, batch_size):
                xb = x[s : s + batch_size].to(device)
                yb = y[s : s + batch_size].to(device)
                nb = int(xb.shape[0])
                # A one-point chunk gains nothing from vmap: plain functional_call.
                vectorize = vmap_ok and j - i > 1
                if vectorize:
                    try:
                        loss, acc = batched(stacked, xb, yb)
                    except Exception as err:  # vmap has no batch rule for some op
                        if use_vmap:
                            raise
                        warnings.warn(
                            f"vmap evaluation failed ({type(err).__name__}: {err}); "
                            "evaluating point by point",
                            RuntimeWarning,
                            stacklevel=3,
                        )
                        vmap_ok = vectorize = False
                if not vectorize:
                    pairs = [
                        metrics({k: v[p] for k, v in stacked.items()}, xb, yb) for p in range(j - i)
                    ]
                    loss = torch.stack([lo for lo, _ in pairs])
                    acc = torch.stack([a for _, a in pairs])
                loss_sum[i:j] += loss.detach().to("cpu", torch.float64) * nb
                acc_sum[i:j] += acc.detach().to("cpu", torch.float64) * nb
    losses = (loss_sum / n).tolist()
    accs = (acc_sum / n).tolist() if acc_fn is not None else [float("nan")] * n_points
    return [{"loss": lo, "acc": a} for lo, a in zip(losses, accs, strict=True)]


def _state_elements(state: Mapping[str, Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def evaluate_states(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 4096,
    points_per_call: int | None = None,
    loss_fn: LossFn = cross_entropy,
    acc_fn: AccFn | None = top1_accuracy,
    use_vmap: bool | None = None,
) -> list[dict[str, float]]:
    """Loss and accuracy of `model` at each state dict in `states`, on (x, y), in eval mode.

    Returns one {"loss": float, "acc": float} per state: the mean of `loss_fn` (default mean
    cross-entropy) and of `acc_fn` (default top-1 accuracy; None gives acc = NaN) over all
    of x, computed in the dtype of the states (float32 for trained models).

    States are stacked `points_per_call` at a time (None: as many as fit a budget of
    AUTO_BUDGET_ELEMENTS elements, estimated from one probe forward) and run with vmap over
    `functional_call`; the data in batches of `batch_size`. A state may omit keys: the model's
    own tensors are used for them. use_vmap: None = vmap, falling back to a per-point loop (with
    a RuntimeWarning) if vmap fails; True = vmap or raise; False = always the loop.
    """
    states = list(states)
    if not states:
        return []
    keys = list(states[0])
    for st in states[1:]:
        if set(st) != set(keys):
            raise ValueError("all states must have the same keys")

    def chunk(i: int, j: int) -> Stacked:
        return {k: torch.stack([st[k].detach() for st in states[i:j]]) for k in keys}

    return _evaluate_stacked(
        model,
        len(states),
        chunk,
        x,
        y,
        batch_size=batch_size,
        points_per_call=points_per_call,
        loss_fn=loss_fn,
        acc_fn=acc_fn,
        use_vmap=use_vmap,
        state_elements=_state_elements(states[0]),
    )


def _broadcast(coef: Tensor, t: Tensor) -> Tensor:
    """coef (P,) reshaped to (P, 1, ..., 1) to scale a stack of tensors shaped like t."""
    return coef.to(device=t.device, dtype=t.dtype).view(-1, *([1] * t.dim()))


def _expand(t: Tensor, p: int) -> Tensor:
    return t.detach().unsqueeze(0).expand(p, *t.shape)


# --------------------------------------------------------------------------------------------
# 1-D interpolation (F-10)
# --------------------------------------------------------------------------------------------


def interpolation_curve(
    model: nn.Module,
    state_small: Mapping[str, Tensor],
    state_large: Mapping[str, Tensor],
    data: Mapping[str, Split],
    *,
    alpha_min: float = -1.0,
    alpha_max: float = 2.0,
    n_points: int = 25,
    batch_size: int = 4096,
    points_per_call: int | None = None,
    loss_fn: LossFn = cross_entropy,
    acc_fn: AccFn | None = top1_accuracy,
    use_vmap: bool | None = None,
) -> list[dict[str, Any]]:
    """Loss/accuracy along theta(a) = a * theta_large + (1 - a) * theta_small (Keskar F-10).

    a = 0 is the small-batch minimizer, a = 1 the large-batch one; `n_points` values of a
    evenly spaced on [alpha_min, alpha_max] (the defaults, 25 on [-1, 2], contain 0 and 1
    exactly). The whole state is interpolated, BatchNorm running statistics included (see
    `interpolate_states`). `data` maps split names ("train", "val") to (x, y).

    Rows, split-major then by increasing a: {"alpha", "beta": None, "split", "loss", "acc"}.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    alphas = [float(a) for a in np.linspace(alpha_min, alpha_max, n_points)]
    if set(state_small) != set(state_large):
        raise ValueError(f"state keys differ: {sorted(set(state_small) ^ set(state_large))}")
    coef = torch.tensor(alphas, dtype=torch.float64)

    def chunk(i: int, j: int) -> Stacked:
        # Same formula as interpolate_states, broadcast over the chunk's alphas.
        out: Stacked = {}
        for k, ta in state_small.items():
            if ta.is_floating_point():
                tb = state_large[k].detach().to(ta.device)
                out[k] = _lerp(ta.detach().unsqueeze(0), tb.unsqueeze(0), _broadcast(coef[i:j], ta))
            else:
                out[k] = _expand(ta, j - i)
        return out

    rows: list[dict[str, Any]] = []
    for split, (x, y) in data.items():
        results = _evaluate_stacked(
            model,
            n_points,
            chunk,
            x,
            y,
            batch_size=batch_size,
            points_per_call=points_per_call,
            loss_fn=loss_fn,
            acc_fn=acc_fn,
            use_vmap=use_vmap,
            state_elements=_state_elements(state_small),
        )
        for a, r in zip(alphas, results, strict=True):
            rows.append({"alpha": a, "beta": None, "split": split, **r})
    return rows


# --------------------------------------------------------------------------------------------
# 2-D filter-normalized surface (F-12)
# --------------------------------------------------------------------------------------------


def _grid(n_points: int, span: float) -> Iterator[tuple[float, float]]:
    axis = [float(v) for v in np.linspace(-span, span, n_points)]
    for a in axis:
        for b in axis:
            yield a, b


def surface(
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: Mapping[str, Split],
    *,
    seed: int,
    n_points: int = 51,
    span: float = 1.0,
    batch_size: int = 4096,
    points_per_call: int | None = None,
    loss_fn: LossFn = cross_entropy,
    acc_fn: AccFn | None = top1_accuracy,
    use_vmap: bool | None = None,
) -> list[dict[str, Any]]:
    """f(a, b) = L(theta* + a * d1 + b * d2) on an n_points x n_points grid over [-span, span]^2.

    theta* = `state` (a full state dict of `model`). d1 and d2 are filter-normalized Gaussian
    directions drawn with seeds `seed` and `seed + 1`, normalized per filter against the
    trainable parameters of theta* (not of the model's current weights). Only trainable
    parameters move; BatchNorm running statistics and other buffers stay at theta*'s values,
    and the model is evaluated in eval mode. Points are generated chunk by chunk (never all
    n_points**2 states at once) and evaluated batched (see `evaluate_states`).

    Rows, split-major, then a-major, b-minor: {"alpha": a, "beta": b, "split", "loss", "acc"}.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    names = list(_trainable(model))
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"state lacks trainable parameters {missing}")
    theta = {n: state[n].detach() for n in names}
    d1 = _filter_normalized(theta, torch.Generator(device="cpu").manual_seed(int(seed)))
    d2 = _filter_normalized(theta, torch.Generator(device="cpu").manual_seed(int(seed) + 1))
    points = list(_grid(n_points, span))
    ca = torch.tensor([a for a, _ in points], dtype=torch.float64)
    cb = torch.tensor([b for _, b in points], dtype=torch.float64)

    def chunk(i: int, j: int) -> Stacked:
        out: Stacked = {}
        for k, t in state.items():
            if k in d1:
                t = t.detach()
                # theta* + a*d1 + b*d2: exactly theta* at a = b = 0.
                out[k] = (
                    t.unsqueeze(0)
                    + _broadcast(ca[i:j], t) * d1[k].unsqueeze(0)
                    + _broadcast(cb[i:j], t) * d2[k].unsqueeze(0)
                )
            else:
                out[k] = _expand(t, j - i)
        return out

    rows: list[dict[str, Any]] = []
    for split, (x, y) in data.items():
        results = _evaluate_stacked(
            model,
            len(points),
            chunk,
            x,
            y,
            batch_size=batch_size,
            points_per_call=points_per_call,
            loss_fn=loss_fn,
            acc_fn=acc_fn,
            use_vmap=use_vmap,
            state_elements=_state_elements(state),
        )
        for (a, b), r in zip(points, results, strict=True):
            rows.append({"alpha": a, "beta": b, "split": split, **r})
    return rows
