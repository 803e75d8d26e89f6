"""Keskar et al. (ICLR 2017) sharpness, Metric 2.1: one solver run (`keskar_sharpness`) and
the kept maximum over solvers and restarts (`keskar_sharpness_max`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.probes.common import (
    LossFn,
    NonFinite,
    eval_mode,
    flat_params,
    loss_at,
    loss_grad_at,
    seconds_since,
    start_clock,
)


def keskar_sharpness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    solver: str = "lbfgsb",
    max_iter: int = 10,
    subspace_dim: int | None = None,
    seed: int = 0,
    start: str = "zero",
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    step_size: float | None = None,
    start_seed: int | None = None,
) -> dict[str, Any]:
    """Keskar et al. (ICLR 2017) sharpness, Metric 2.1, in percent.

    phi(eps, A) = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100, where x is the flat
    vector of trainable parameters and f the mean loss over (x, y) in eval mode. Full space
    (`subspace_dim=None`): A = I and C_eps = {|y_i| <= eps (|x_i| + 1)}. Subspace: A is n x p
    with i.i.d. N(0, 1) entries (seeded) and C_eps = {|y_i| <= eps (|(A^+ x)_i| + 1)}.

    Solvers (the maximum is inexact, as in the paper; f_max is the largest f seen at a feasible
    point, a lower bound of the true maximum):
    - "lbfgsb": scipy.optimize.minimize(-f, method="L-BFGS-B", bounds=C_eps,
      options={"maxiter": max_iter}); f and its gradient come from torch (float32), y lives in
      float64 numpy. "iterations" is SciPy's nit.
    - "pga": projected sign-gradient ascent on the device, y <- clip(y + s * b * sign(grad), -b, b)
      with b the box half-widths and s = `step_size` (default 2.5 / max_iter, so the iterates
      can cross the box); at most max_iter steps, stopping early at a fixed point (every
      coordinate pinned at a bound by its gradient). "iterations" is the number of steps.

    `start` is "zero" (y = 0, the paper's implicit choice) or "random" (seeded uniform point in
    the box; drawn with `start_seed` when given, so restarts keep the subspace of `seed`). Returns {"value", "eps", "solver", "iterations", "subspace_dim", "f_x", "f_max",
    "start", "seed", "n_examples", "seconds", "n_evals"}. A non-finite loss gives value NaN.
    """
    if solver not in ("lbfgsb", "pga"):
        raise ValueError(f"solver must be 'lbfgsb' or 'pga', got {solver!r}")
    if start not in ("zero", "random"):
        raise ValueError(f"start must be 'zero' or 'random', got {start!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    device, t0 = start_clock(model, x)
    n_ex = int(x.shape[0])
    result: dict[str, Any] = {
        "eps": float(eps),
        "solver": solver,
        "subspace_dim": subspace_dim,
        "start": start,
        "seed": seed,
        "n_examples": n_ex,
        "max_iter": max_iter,
    }
    with eval_mode(model):
        names, like, x0 = flat_params(model)  # x0: float32, on the device; never written back
        gen = torch.Generator().manual_seed(seed)
        if subspace_dim is None:
            A = None
            z = x0
        else:
            A = torch.randn(x0.numel(), subspace_dim, generator=gen, dtype=x0.dtype).to(device)
            # z = A^+ x0, the least-squares coordinates of x0 in A's column space (A has full
            # column rank with probability 1; QR-based lstsq avoids forming A'A).
            z = torch.linalg.lstsq(A, x0.unsqueeze(1)).solution.squeeze(1)
        bound = eps * (z.abs() + 1.0)  # box half-widths, on the device
        if start == "zero":
            y0 = torch.zeros_like(bound)
        else:
            g_start = gen if start_seed is None else torch.Generator().manual_seed(start_seed)
            u = torch.rand(bound.shape, generator=g_start, dtype=bound.dtype).to(device)
            result["start_seed"] = start_seed
            y0 = (2.0 * u - 1.0) * bound

        def theta_of(yv: Tensor) -> Tensor:
            return x0 + (yv if A is None else A @ yv)

        def f_grad(yv: Tensor) -> tuple[float, Tensor]:
            f, g_theta = loss_grad_at(model, names, like, theta_of(yv), x, y, loss_fn, chunk_size)
            return f, (g_theta if A is None else A.T @ g_theta)

        n_evals = 0
        try:
            f_x = loss_at(model, names, like, x0, x, y, loss_fn, chunk_size)
            result["f_x"] = f_x
            best = {"f": -math.inf}

            def record(f: float) -> None:
                nonlocal n_evals
                n_evals += 1
                best["f"] = max(best["f"], f)

            if solver == "lbfgsb":
                lo = (-bound).double().cpu().numpy()
                hi = bound.double().cpu().numpy()

                def objective(yn: np.ndarray) -> tuple[float, np.ndarray]:
                    # L-BFGS-B keeps its iterates feasible; the clip only absorbs rounding.
                    yn = np.clip(yn, lo, hi)
                    yt = torch.from_numpy(yn).to(device=device, dtype=x0.dtype)
                    f, g = f_grad(yt)
                    record(f)
                    return -f, -g.double().cpu().numpy()

                res = scipy.optimize.minimize(
                    objective,
                    y0.double().cpu().numpy(),
                    jac=True,
                    method="L-BFGS-B",
                    bounds=scipy.optimize.Bounds(lo, hi),
                    options={"maxiter": int(max_iter)},
                )
                result["iterations"] = int(res.nit)
                result["message"] = str(res.message)
            else:
                s = 2.5 / max_iter if step_size is None else float(step_size)
                result["step_size"] = s
                yv = y0.clone()
                steps = 0
                for _ in range(max_iter):
                    f, g = f_grad(yv)
                    record(f)
                    y_new = torch.clamp(yv + s * bound * torch.sign(g), -bound, bound)
                    steps += 1
                    if torch.equal(y_new, yv):
                        break  # fixed point: no coordinate can move
                    yv = y_new
                else:
                    record(loss_at(model, names, like, theta_of(yv), x, y, loss_fn, chunk_size))
                result["iterations"] = steps
            f_max = best["f"]
            result["f_max"] = f_max
            value = (f_max - f_x) / (1.0 + f_x) * 100.0
        except NonFinite:
            value = float("nan")
            result.setdefault("f_x", float("nan"))
            result["f_max"] = float("nan")
            result.setdefault("iterations", 0)
            result["nonfinite"] = True
    result["value"] = value
    result["n_evals"] = n_evals
    result["seconds"] = seconds_since(t0, device)
    return result


SOLVERS = {"lbfgsb": ("lbfgsb",), "pga": ("pga",), "both": ("lbfgsb", "pga")}
_RUN_KEYS = ("solver", "start", "start_seed", "value", "f_max", "iterations", "n_evals", "seconds")


def keskar_sharpness_max(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    solver: str = "both",
    restarts: int = 0,
    max_iter: int = 10,
    subspace_dim: int | None = None,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """The largest Keskar sharpness over solvers and starts: every solver of `solver`
    ("lbfgsb", "pga" or "both") from y = 0 and from `restarts` seeded uniform points of the
    box (start seeds seed * 1000 + 1 .. + restarts; the subspace stays that of `seed`). Each
    run is a lower bound of the box maximum, so the largest is kept.

    Returns the kept run's result (its "f_max" is the achieved objective, its "iterations"
    its solver's count) with "solver" = the winning solver, plus "solver_setting",
    "restarts", "best_run" (index into "runs"), "runs" (per run: solver, start, start_seed,
    value, f_max, iterations, n_evals, seconds), "spread" (largest / smallest finite value;
    NaN when fewer than two are finite or the smallest is <= 0), and "n_evals" / "seconds"
    summed over the runs. A run with a non-finite loss is kept only when no run is finite."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
    runs: list[dict[str, Any]] = []
    for name in SOLVERS[solver]:
        starts = [("zero", None)] + [("random", seed * 1000 + k) for k in range(1, restarts + 1)]
        for start, start_seed in starts:
            runs.append(
                keskar_sharpness(
                    model,
                    x,
                    y,
                    eps=eps,
                    solver=name,
                    max_iter=max_iter,
                    subspace_dim=subspace_dim,
                    seed=seed,
                    start=start,
                    start_seed=start_seed,
                    loss_fn=loss_fn,
                    chunk_size=chunk_size,
                )
            )
    finite = [i for i, r in enumerate(runs) if math.isfinite(r["value"])]
    best_i = max(finite, key=lambda i: runs[i]["value"]) if finite else 0
    vals = [runs[i]["value"] for i in finite]
    spread = max(vals) / min(vals) if len(vals) >= 2 and min(vals) > 0 else math.nan
    out = dict(runs[best_i])
    out.update(
        solver=runs[best_i]["solver"],
        solver_setting=solver,
        restarts=restarts,
        best_run=best_i,
        spread=spread,
        runs=[{k: r.get(k) for k in _RUN_KEYS} for r in runs],
        n_evals=sum(r["n_evals"] for r in runs),
        seconds=sum(r["seconds"] for r in runs),
    )
    return out
