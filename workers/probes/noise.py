"""Gradient noise scale B_simple (McCandlish et al. 2018): the unbiased two-batch estimator
and the exact value from per-example gradients (torch.func vmap(grad))."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from workers.probes.common import (
    LossFn,
    batch_grad,
    chunk_bounds,
    eval_mode,
    seconds_since,
    start_clock,
    trainable_of,
)


def noise_scale_two_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    b_small: int = 32,
    b_big: int = 1024,
    n_batches: int = 20,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """McCandlish et al. (2018) simple noise scale B_simple = tr(Sigma) / |G|^2, two-batch estimate.

    For each of `n_batches` pairs, gradients G_s, G_b of the mean loss over a small and a big
    batch give the unbiased estimates
        |G|^2    ~ (b_big |G_b|^2 - b_small |G_s|^2) / (b_big - b_small)
        tr(Sigma) ~ (|G_s|^2 - |G_b|^2) / (1/b_small - 1/b_big);
    each is averaged over the pairs, and B_simple is the ratio of the averages.

    - Model in eval mode: BatchNorm uses its running statistics, so a batch gradient is exactly
      the mean of independent per-example gradients (in train mode batch statistics couple the
      examples and the estimator's premise fails) and it matches `noise_scale_exact`.
    - Batches are drawn i.i.d. with replacement from (x, y), so E|G_B|^2 = |G|^2 + tr(Sigma)/B
      holds exactly with Sigma the covariance over this finite set (1/N normalization); without
      replacement a finite-population factor (N - B)/(N - 1) would bias the estimate when b_big
      is close to N. The small batch is the first b_small draws of the big batch (nested, as in
      data-parallel training): the two norms are positively correlated, which lowers the
      variance of their difference.
    - b_big is clamped to len(x); b_small must stay below it.

    The |G|^2 estimate can be negative when noise dominates; the ratio is reported as is.
    """
    device, t0 = start_clock(model, x)
    n = int(x.shape[0])
    b_big_eff = min(int(b_big), n)
    if not 0 < b_small < b_big_eff:
        raise ValueError(
            f"need 0 < b_small < b_big (after clamping b_big to len(x)={n}): "
            f"b_small={b_small}, b_big={b_big_eff}"
        )
    gen = torch.Generator().manual_seed(seed)
    g2_est, tr_est = [], []
    with eval_mode(model):
        _, params = trainable_of(model)
        for _ in range(n_batches):
            idx = torch.randint(0, n, (b_big_eff,), generator=gen).to(x.device)
            gb = batch_grad(model, params, x[idx], y[idx], loss_fn, chunk_size)
            small = idx[:b_small]
            gs = batch_grad(model, params, x[small], y[small], loss_fn, chunk_size)
            # Squared norms in float64: the estimators subtract two nearby numbers.
            nb = float(gb.double().square().sum())
            ns = float(gs.double().square().sum())
            g2_est.append((b_big_eff * nb - b_small * ns) / (b_big_eff - b_small))
            tr_est.append((ns - nb) / (1.0 / b_small - 1.0 / b_big_eff))
    g2 = float(np.mean(g2_est))
    tr = float(np.mean(tr_est))
    return {
        "value": _ratio(tr, g2),
        "g2": g2,
        "trace_sigma": tr,
        # Standard errors of the two averages (spread over the pairs), for judging the ratio.
        "g2_sem": float(np.std(g2_est, ddof=1) / math.sqrt(n_batches)) if n_batches > 1 else None,
        "trace_sigma_sem": (
            float(np.std(tr_est, ddof=1) / math.sqrt(n_batches)) if n_batches > 1 else None
        ),
        "b_small": int(b_small),
        "b_big": b_big_eff,
        "n_batches": int(n_batches),
        "n_examples": n,
        "seed": seed,
        "seconds": seconds_since(t0, device),
    }


def _ratio(num: float, den: float) -> float:
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0.0:
        return float("nan")
    return num / den


def noise_scale_exact(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int = 256,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, Any]:
    """Exact B_simple over (x, y): (1/N) sum_i ||g_i - g_mean||^2 / ||g_mean||^2.

    Per-example gradients g_i of loss_fn(model(x_i), y_i) come from torch.func
    (functional_call + vmap(grad)), `chunk_size` examples at a time, model in eval mode (BatchNorm
    running statistics, so each example's gradient is well defined; works with BatchNorm).
    One pass accumulates sum_i g_i and sum_i ||g_i||^2 in float64 and uses
    (1/N) sum ||g_i - g_mean||^2 = (1/N) sum ||g_i||^2 - ||g_mean||^2; the cancellation costs
    relative precision only when tr(Sigma) << 1e-7 |G|^2, far below any B_simple of interest.
    Returns {"value", "g2" (= ||g_mean||^2), "trace_sigma", "n_examples", "seconds", "chunk_size"}.
    """
    device, t0 = start_clock(model, x)
    n = int(x.shape[0])
    with eval_mode(model):
        names, params = trainable_of(model)
        detached = {k: p.detach() for k, p in zip(names, params, strict=True)}

        def one_loss(ps: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            out = functional_call(model, ps, (xi.unsqueeze(0),))
            return loss_fn(out, yi.unsqueeze(0))

        per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))
        g_sum = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=device)
        sq_sum = torch.zeros((), dtype=torch.float64, device=device)
        for a, b in chunk_bounds(n, chunk_size):
            gs = per_example(detached, x[a:b], y[a:b])
            flat = torch.cat([gs[k].reshape(b - a, -1) for k in names], dim=1)
            g_sum += flat.sum(0, dtype=torch.float64)
            sq_sum += _sq(flat)
            del gs, flat
    g_mean = g_sum / n
    g2 = float(g_mean.square().sum())
    tr = float(sq_sum) / n - g2
    return {
        "value": _ratio(tr, g2),
        "g2": g2,
        "trace_sigma": tr,
        "n_examples": n,
        "chunk_size": chunk_size,
        "seconds": seconds_since(t0, device),
    }


def _sq(flat: Tensor) -> Tensor:
    """sum of squares in float64 without materializing a float64 copy of a large chunk."""
    return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64).square().sum()
