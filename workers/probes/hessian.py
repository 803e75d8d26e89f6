"""Hessian top eigenvalue: PyHessian's power iteration on Hessian-vector products."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.probes.common import (
    LossFn,
    chunk_bounds,
    eval_mode,
    flat_vector,
    grads_or_zeros,
    seconds_since,
    start_clock,
    trainable_of,
    unflatten,
)


def hessian_top_eigenvalue(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Largest-magnitude eigenvalue of the Hessian of the mean loss over (x, y), PyHessian style.

    Power iteration on Hessian-vector products (double backprop) over the trainable parameters,
    model in eval mode: v ~ N(0, I) normalized; each iteration computes Hv, lambda = v'Hv,
    v <- Hv / ||Hv||, and stops when |lambda_prev - lambda| / (|lambda_prev| + 1e-6) < tol or
    after `max_iter` Hessian-vector products.

    Returns {"value", "iterations" (Hessian-vector products computed), "converged",
    "n_examples", "seconds", "seed"}; "value" is NaN when the loss or Hv is non-finite.
    """
    device, t0 = start_clock(model, x)
    n = int(x.shape[0])
    with eval_mode(model):
        _, params = trainable_of(model)
        gen = torch.Generator().manual_seed(seed)
        v = flat_vector([torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]).to(
            device
        )
        v = v / v.norm()

        cached: list[Tensor] | None = None
        if chunk_size is None or chunk_size >= n:
            # One batch: build the gradient graph once and reuse it for every product
            # (PyHessian's gradsH); each product is then one extra backward pass.
            loss = loss_fn(model(x), y)
            cached = grads_or_zeros(loss, params, create_graph=True)

        def hvp(vec: Tensor) -> Tensor:
            # H v = d/dtheta (grad f . v): the second backward through the gradient graph.
            vs = unflatten(vec, params)
            if cached is not None:
                gv = sum((g * vi).sum() for g, vi in zip(cached, vs, strict=True))
                return flat_vector(grads_or_zeros(gv, params, retain_graph=True)).detach()
            out = torch.zeros_like(vec)
            for a, b in chunk_bounds(n, chunk_size):
                lc = loss_fn(model(x[a:b]), y[a:b]) * ((b - a) / n)
                gs = grads_or_zeros(lc, params, create_graph=True)
                gv = sum((g * vi).sum() for g, vi in zip(gs, vs, strict=True))
                out += flat_vector(grads_or_zeros(gv, params)).detach()
            return out

        eig: float | None = None
        converged = False
        iterations = 0
        for _ in range(max_iter):
            hv = hvp(v)
            iterations += 1
            lam = float(torch.dot(hv, v))
            hv_norm = float(hv.norm())
            if not (math.isfinite(lam) and math.isfinite(hv_norm)):
                eig = float("nan")
                break
            if hv_norm == 0.0:
                # v lies in the Hessian's null space (e.g. a dead-ReLU network): the iteration
                # cannot continue. Report v'Hv = 0, not converged.
                eig = lam
                break
            v = hv / hv_norm
            # PyHessian's rule. On a stop we report the newest Rayleigh quotient (PyHessian
            # returns the previous one; both agree to within tol, the newest is the better).
            if eig is not None and abs(eig - lam) / (abs(eig) + 1e-6) < tol:
                eig = lam
                converged = True
                break
            eig = lam
    return {
        "value": float("nan") if eig is None else float(eig),
        "iterations": iterations,
        "converged": converged,
        "n_examples": n,
        "seconds": seconds_since(t0, device),
        "seed": seed,
    }
