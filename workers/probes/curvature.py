"""Sharpness measures beyond Keskar and lambda_max (SCIENCE.md, "Sharpness beyond Keskar"):

- `batch_sharpness`: Andreyev & Beneventano (arXiv 2412.20553), the expected directional
  curvature of the mini-batch loss along the mini-batch gradient,
  E_B[g_B' H_B g_B / ||g_B||^2], over mini-batches of the training batch size; the
  Hessian-vector product is torch.func's forward-over-reverse (jvp of grad).
- `adaptive_sharpness`: Kwon et al. (ICML 2021, ASAM) / Andriushchenko et al. (ICML 2023):
  worst case max_{||u||_p <= rho} f(w + |w| u) - f(w) by projected gradient ascent (p = inf
  or 2), and average case E_z[f(w + rho |w| z)] - f(w), z ~ N(0, I); |w| is elementwise, so
  the measure is unchanged by the layer rescalings of Dinh et al. (2017).

The edge-of-stability ratio lambda_max * lr / 2 (Cohen et al. 2021) needs no probe: it is
computed from the stored `hessian_top_eig` value and the trial's lr (warehouse/macros.py).
Same common rules as every probe (workers/probes/__init__.py): eval mode, parameters never
written, seeded CPU draws, a non-finite loss gives NaN, never an exception.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from workers.probes.common import (
    LossFn,
    NonFinite,
    eval_mode,
    flat_params,
    flat_vector,
    loss_at,
    loss_grad_at,
    seconds_since,
    start_clock,
    trainable_of,
)

NORMS = ("linf", "l2")
KINDS = ("worst", "average")


def batch_indices(n: int, batch_size: int, n_batches: int, seed: int) -> list[Tensor]:
    """The mini-batches `batch_sharpness` measures: consecutive chunks of seeded random
    permutations of range(n) (an epoch's batches, a new permutation when one is used up,
    the last incomplete chunk of each dropped), `n_batches` of them, on the CPU."""
    if not 0 < batch_size <= n:
        raise ValueError(f"need 0 < batch_size <= len(x)={n}, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    while len(out) < n_batches:
        perm = torch.randperm(n, generator=gen)
        for a in range(0, n - batch_size + 1, batch_size):
            out.append(perm[a : a + batch_size])
            if len(out) == n_batches:
                break
    return out


def batch_sharpness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    n_batches: int = 16,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, Any]:
    """Batch sharpness (Andreyev & Beneventano 2024): the mean over `n_batches` mini-batches
    B of `batch_size` examples (`batch_indices`) of g_B' H_B g_B / ||g_B||^2, where g_B and
    H_B are the gradient and Hessian of the mean loss over B. H_B g_B is
    torch.func.jvp(grad(f_B), (w,), (g_B,)), one forward-over-reverse pass per batch.

    A batch with g_B = 0 (the quotient is undefined) is left out and counted in
    "zero_grad_batches". Returns {"value", "std" (over batches), "sem", "per_batch",
    "batch_size", "n_batches", "seed", "n_examples", "seconds"}; value NaN on a non-finite
    loss, gradient or product."""
    device, t0 = start_clock(model, x)
    n = int(x.shape[0])
    batches = batch_indices(n, int(batch_size), int(n_batches), seed)
    vals: list[float] = []
    zero = 0
    nonfinite = False
    with eval_mode(model):
        names, params = trainable_of(model)
        w = {k: p.detach() for k, p in zip(names, params, strict=True)}
        for idx in batches:
            idx = idx.to(x.device)
            xb, yb = x[idx], y[idx]

            def f(ps: dict[str, Tensor], xb: Tensor = xb, yb: Tensor = yb) -> Tensor:
                return loss_fn(functional_call(model, ps, (xb,)), yb)

            g = grad(f)(w)
            _, hg = jvp(grad(f), (w,), (g,))
            gf, hgf = flat_vector([g[k] for k in names]), flat_vector([hg[k] for k in names])
            gg = float(gf.double().square().sum())
            ghg = float((gf.double() * hgf.double()).sum())
            if not (math.isfinite(gg) and math.isfinite(ghg)):
                nonfinite = True
                break
            if gg == 0.0:
                zero += 1
                continue
            vals.append(ghg / gg)
    if nonfinite or not vals:
        value, std, sem = math.nan, math.nan, math.nan
    else:
        t = torch.tensor(vals, dtype=torch.float64)
        value = float(t.mean())
        std = float(t.std()) if len(vals) > 1 else math.nan
        sem = std / math.sqrt(len(vals)) if len(vals) > 1 else math.nan
    return {
        "value": value,
        "std": std,
        "sem": sem,
        "per_batch": vals,
        "zero_grad_batches": zero,
        "batch_size": int(batch_size),
        "n_batches": len(batches),
        "seed": seed,
        "n_examples": n,
        "nonfinite": nonfinite,
        "seconds": seconds_since(t0, device),
    }


def _project(u: Tensor, rho: float, norm: str) -> Tensor:
    if norm == "linf":
        return u.clamp(-rho, rho)
    r = float(u.norm())
    return u if r <= rho else u * (rho / r)


def _random_in_ball(like: Tensor, rho: float, norm: str, gen: torch.Generator) -> Tensor:
    """A seeded start point: uniform in the l_inf box, or on the l_2 sphere of radius rho/2."""
    if norm == "linf":
        u = (2.0 * torch.rand(like.shape, generator=gen, dtype=like.dtype) - 1.0) * rho
    else:
        z = torch.randn(like.shape, generator=gen, dtype=like.dtype)
        u = z * (0.5 * rho / float(z.norm()))
    return u.to(like.device)


def adaptive_sharpness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    rho: float,
    norm: str = "linf",
    kind: str = "worst",
    n_iter: int = 20,
    n_samples: int = 8,
    eta: float = 0.0,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Adaptive sharpness of the mean loss f over (x, y), perturbations scaled elementwise by
    s = |w| + eta (every trainable parameter, biases included; eta = 0 makes it exactly
    invariant to Dinh et al.'s rescalings; a zero weight is then never perturbed).

    - kind "worst": max_{||u||_p <= rho} f(w + s * u) - f(w), p = `norm` ("linf" | "l2"),
      by projected gradient ascent in u from a seeded start (uniform in the l_inf box, on the
      l_2 sphere of radius rho/2): `n_iter` steps of size 2.5 rho / n_iter,
      u <- P(u + step * sign(grad_u)) for linf, u <- P(u + step * grad_u / ||grad_u||) for l2,
      grad_u = s * grad_w f. The value uses the largest f seen (a lower bound of the maximum,
      as every inexact ascent).
    - kind "average": the mean over `n_samples` seeded draws z ~ N(0, I) of
      f(w + rho * s * z) - f(w) (Gaussian noise of elementwise std rho |w|); `norm` is
      recorded but plays no part.

    Returns {"value", "rho", "norm", "kind", "eta", "f_x", "f_pert" (the max or mean
    perturbed loss), "iterations" | "n_samples", "seed", "n_examples", "seconds"}."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    device, t0 = start_clock(model, x)
    res: dict[str, Any] = {
        "rho": float(rho),
        "norm": norm,
        "kind": kind,
        "eta": float(eta),
        "seed": seed,
        "n_examples": int(x.shape[0]),
    }
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        names, like, w0 = flat_params(model)
        s = w0.abs() + eta

        def loss(u: Tensor) -> float:
            return loss_at(model, names, like, w0 + s * u, x, y, loss_fn, chunk_size)

        try:
            f_x = loss(torch.zeros_like(w0))
            res["f_x"] = f_x
            if kind == "average":
                fs = []
                for _ in range(n_samples):
                    z = torch.randn(w0.shape, generator=gen, dtype=w0.dtype).to(device)
                    fs.append(loss(rho * z))
                f_pert = sum(fs) / len(fs)
                res["n_samples"] = int(n_samples)
            else:
                step = 2.5 * rho / n_iter
                u = _random_in_ball(w0, rho, norm, gen)
                f_pert = -math.inf
                for _ in range(n_iter):
                    f, g_w = loss_grad_at(model, names, like, w0 + s * u, x, y, loss_fn, chunk_size)
                    f_pert = max(f_pert, f)
                    g_u = s * g_w
                    if norm == "linf":
                        u = _project(u + step * torch.sign(g_u), rho, norm)
                    else:
                        gn = float(g_u.norm())
                        if gn == 0.0:
                            break
                        u = _project(u + step * g_u / gn, rho, norm)
                f_pert = max(f_pert, loss(u))
                res["iterations"] = int(n_iter)
            res["f_pert"] = f_pert
            res["value"] = f_pert - f_x
        except NonFinite:
            res["value"] = math.nan
            res.setdefault("f_x", math.nan)
            res["f_pert"] = math.nan
            res["nonfinite"] = True
    res["seconds"] = seconds_since(t0, device)
    return res
