"""Loss-landscape and gradient-noise probes at fixed parameters.

Each probe measures one quantity defined in ../shared/reference/SCIENCE.md (documented in
docs/science.md, section "Probes") on a fixed evaluation set:

- `hessian_top_eigenvalue`: PyHessian's power iteration on Hessian-vector products.
- `keskar_sharpness`: Keskar et al. (ICLR 2017) Metric 2.1, by L-BFGS-B or projected gradient ascent.
- `noise_scale_two_batch`: McCandlish et al. (2018) B_simple, unbiased two-batch estimator.
- `noise_scale_exact`: B_simple from per-example gradients (torch.func vmap(grad)).
- `run_probes`: runs the probes a `MeasureConfig` enables and returns warehouse rows.

Common rules, shared by every probe:

- The model is evaluated in eval() mode (BatchNorm running statistics, no dropout) and every
  submodule's train/eval flag is restored afterwards.
- The model's parameters are never written: perturbed losses go through
  `torch.func.functional_call` with substituted tensors, so they are bit-exactly unchanged, and
  no probe touches `.grad`.
- Only trainable parameters (`requires_grad`) span the space: BatchNorm running statistics are
  buffers and frozen parameters stay fixed.
- Random draws (power-iteration start, subspace, batches) come from a CPU `torch.Generator`
  seeded with `seed` and are then moved to the device, so a seed gives the same draws on CPU
  and GPU.
- A non-finite loss never raises: the probe returns a NaN (or inf) value and `run_probes`
  marks the row "diverged".
- `loss_fn(outputs, targets)` must return the mean loss over the batch (as F.cross_entropy
  does): the full-set loss is assembled from chunks as a size-weighted mean of chunk means.

Pure PyTorch + SciPy; no Ray.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from workers.config import MeasureConfig

LossFn = Callable[[Tensor, Tensor], Tensor]

PROBES = ("keskar_sharpness", "hessian_top_eig", "noise_scale_two_batch", "noise_scale_exact")
ROW_KEYS = ("probe", "epoch", "value", "seconds", "n_examples", "settings_json", "status")


class _NonFinite(Exception):
    """Raised inside a probe's inner loop when the loss (or a gradient) is NaN/inf."""


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
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


def _trainable(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    names, params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            names.append(name)
            params.append(p)
    if not params:
        raise ValueError("model has no trainable parameters")
    return names, params


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Views of `vec` shaped like `like` (autograd flows from the views back to `vec`)."""
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[i : i + n].view_as(t))
        i += n
    return out


def _chunks(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    step = n if chunk_size is None else max(1, int(chunk_size))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model: nn.Module, x: Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return x.device


def _grads_or_zeros(
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


def _loss_grad_at(
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
    is the size-weighted sum of chunk means. Raises _NonFinite on a NaN/inf loss.
    """
    n = x.shape[0]
    total = 0.0
    g = torch.zeros_like(theta)
    for a, b in _chunks(n, chunk_size):
        t = theta.detach().requires_grad_(True)
        out = functional_call(model, dict(zip(names, _unflat(t, like), strict=True)), (x[a:b],))
        loss = loss_fn(out, y[a:b]) * ((b - a) / n)
        (gc,) = _grads_or_zeros(loss, [t])
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise _NonFinite(f"loss {lv}")
        total += lv
        g += gc
    return total, g


def _loss_at(
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
        params = dict(zip(names, _unflat(theta, like), strict=True))
        for a, b in _chunks(n, chunk_size):
            total += float(loss_fn(functional_call(model, params, (x[a:b],)), y[a:b])) * (
                (b - a) / n
            )
    if not math.isfinite(total):
        raise _NonFinite(f"loss {total}")
    return total


def _batch_grad(
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
    for a, b in _chunks(n, chunk_size):
        loss = loss_fn(model(x[a:b]), y[a:b]) * ((b - a) / n)
        gc = _flat(_grads_or_zeros(loss, params))
        g = gc if g is None else g + gc
    assert g is not None
    return g.detach()


def _elapsed(t0: float, device: torch.device) -> float:
    _sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- Hessian


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
    device = _device(model, x)
    _sync(device)
    t0 = time.perf_counter()
    n = int(x.shape[0])
    with _eval_mode(model):
        _, params = _trainable(model)
        gen = torch.Generator().manual_seed(seed)
        v = _flat([torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]).to(device)
        v = v / v.norm()

        cached: list[Tensor] | None = None
        if chunk_size is None or chunk_size >= n:
            # One batch: build the gradient graph once and reuse it for every product
            # (PyHessian's gradsH); each product is then one extra backward pass.
            loss = loss_fn(model(x), y)
            cached = _grads_or_zeros(loss, params, create_graph=True)

        def hvp(vec: Tensor) -> Tensor:
            # H v = d/dtheta (grad f . v): the second backward through the gradient graph.
            vs = _unflat(vec, params)
            if cached is not None:
                gv = sum((g * vi).sum() for g, vi in zip(cached, vs, strict=True))
                return _flat(_grads_or_zeros(gv, params, retain_graph=True)).detach()
            out = torch.zeros_like(vec)
            for a, b in _chunks(n, chunk_size):
                lc = loss_fn(model(x[a:b]), y[a:b]) * ((b - a) / n)
                gs = _grads_or_zeros(lc, params, create_graph=True)
                gv = sum((g * vi).sum() for g, vi in zip(gs, vs, strict=True))
                out += _flat(_grads_or_zeros(gv, params)).detach()
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
        "seconds": _elapsed(t0, device),
        "seed": seed,
    }


# ----------------------------------------------------------------------------- Keskar


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
    the box). Returns {"value", "eps", "solver", "iterations", "subspace_dim", "f_x", "f_max",
    "start", "seed", "n_examples", "seconds", "n_evals"}. A non-finite loss gives value NaN.
    """
    if solver not in ("lbfgsb", "pga"):
        raise ValueError(f"solver must be 'lbfgsb' or 'pga', got {solver!r}")
    if start not in ("zero", "random"):
        raise ValueError(f"start must be 'zero' or 'random', got {start!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    device = _device(model, x)
    _sync(device)
    t0 = time.perf_counter()
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
    with _eval_mode(model):
        names, params = _trainable(model)
        like = [p.detach() for p in params]
        x0 = _flat(like).detach().clone()  # float32, on the device; never written back
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
            u = torch.rand(bound.shape, generator=gen, dtype=bound.dtype).to(device)
            y0 = (2.0 * u - 1.0) * bound

        def theta_of(yv: Tensor) -> Tensor:
            return x0 + (yv if A is None else A @ yv)

        def f_grad(yv: Tensor) -> tuple[float, Tensor]:
            f, g_theta = _loss_grad_at(model, names, like, theta_of(yv), x, y, loss_fn, chunk_size)
            return f, (g_theta if A is None else A.T @ g_theta)

        n_evals = 0
        try:
            f_x = _loss_at(model, names, like, x0, x, y, loss_fn, chunk_size)
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
                    record(_loss_at(model, names, like, theta_of(yv), x, y, loss_fn, chunk_size))
                result["iterations"] = steps
            f_max = best["f"]
            result["f_max"] = f_max
            value = (f_max - f_x) / (1.0 + f_x) * 100.0
        except _NonFinite:
            value = float("nan")
            result.setdefault("f_x", float("nan"))
            result["f_max"] = float("nan")
            result.setdefault("iterations", 0)
            result["nonfinite"] = True
    result["value"] = value
    result["n_evals"] = n_evals
    result["seconds"] = _elapsed(t0, device)
    return result


# ----------------------------------------------------------------------------- noise scale


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
    device = _device(model, x)
    _sync(device)
    t0 = time.perf_counter()
    n = int(x.shape[0])
    b_big_eff = min(int(b_big), n)
    if not 0 < b_small < b_big_eff:
        raise ValueError(
            f"need 0 < b_small < b_big (after clamping b_big to len(x)={n}): "
            f"b_small={b_small}, b_big={b_big_eff}"
        )
    gen = torch.Generator().manual_seed(seed)
    g2_est, tr_est = [], []
    with _eval_mode(model):
        _, params = _trainable(model)
        for _ in range(n_batches):
            idx = torch.randint(0, n, (b_big_eff,), generator=gen).to(x.device)
            gb = _batch_grad(model, params, x[idx], y[idx], loss_fn, chunk_size)
            small = idx[:b_small]
            gs = _batch_grad(model, params, x[small], y[small], loss_fn, chunk_size)
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
        "seconds": _elapsed(t0, device),
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
    device = _device(model, x)
    _sync(device)
    t0 = time.perf_counter()
    n = int(x.shape[0])
    with _eval_mode(model):
        names, params = _trainable(model)
        detached = {k: p.detach() for k, p in zip(names, params, strict=True)}

        def one_loss(ps: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            out = functional_call(model, ps, (xi.unsqueeze(0),))
            return loss_fn(out, yi.unsqueeze(0))

        per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))
        g_sum = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=device)
        sq_sum = torch.zeros((), dtype=torch.float64, device=device)
        for a, b in _chunks(n, chunk_size):
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
        "seconds": _elapsed(t0, device),
    }


def _sq(flat: Tensor) -> Tensor:
    """sum of squares in float64 without materializing a float64 copy of a large chunk."""
    return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64).square().sum()


# ----------------------------------------------------------------------------- runner


def _subset(x: Tensor, y: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed seeded subset of min(n, len(x)) examples: the first n of a seeded permutation.

    The same seed gives nested subsets for different n, so probes of one trial share examples,
    and the same subset at every epoch (sorted indices, so chunking is order-stable).
    """
    N = int(x.shape[0])
    if n >= N:
        return x, y
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:n]
    idx = perm.sort().values.to(x.device)
    return x[idx], y[idx]


def _jsonable(v: Any) -> Any:
    """Strict JSON: non-finite floats become null (their status is in the row)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(w) for w in v]
    if isinstance(v, (np.floating, np.integer)):
        return _jsonable(v.item())
    return v


def _row(probe: str, epoch: int, res: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    value = float(res["value"])
    settings = {k: v for k, v in res.items() if k not in ("value", "seconds", "n_examples")}
    settings.update(extra)
    status = "ok" if math.isfinite(value) and not res.get("nonfinite", False) else "diverged"
    return {
        "probe": probe,
        "epoch": int(epoch),
        "value": value,
        "seconds": float(res["seconds"]),
        "n_examples": int(res["n_examples"]),
        "settings_json": json.dumps(_jsonable(settings), sort_keys=True, allow_nan=False),
        "status": status,
    }


def run_probes(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    measure: MeasureConfig,
    *,
    seed: int,
    epoch: int,
    loss_fn: LossFn = F.cross_entropy,
) -> list[dict[str, Any]]:
    """Run every probe `measure` enables and return one warehouse row per measurement.

    - measure.sharpness: one "keskar_sharpness" row per eps.
    - measure.hessian: one "hessian_top_eig" row.
    - measure.noise_scale: one "noise_scale_two_batch" row (batches drawn from the whole
      training set: the config names no subset for it), plus "noise_scale_exact" when the model
      has <= exact_max_params trainable parameters.

    Each probe uses a fixed subset of the training set: the first n_examples of a permutation
    seeded with `seed` (recorded as "subset_seed"); probe randomness also uses `seed`. Rows have
    exactly the keys ROW_KEYS; a non-finite loss or eigenvalue gives value NaN and status
    "diverged" (never an exception). Runs on whatever device the model and tensors are on.
    """
    rows: list[dict[str, Any]] = []
    common = {"model_mode": "eval", "subset_seed": seed, "n_train": int(x_train.shape[0])}
    loss_name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    common["loss"] = loss_name

    if measure.sharpness is not None:
        cfg = measure.sharpness
        xs, ys = _subset(x_train, y_train, cfg.n_examples, seed)
        for eps in cfg.eps:
            res = keskar_sharpness(
                model,
                xs,
                ys,
                eps=eps,
                solver=cfg.solver,
                max_iter=cfg.max_iter,
                subspace_dim=cfg.subspace_dim,
                seed=seed,
                start="zero",
                loss_fn=loss_fn,
            )
            rows.append(_row("keskar_sharpness", epoch, res, common))

    if measure.hessian is not None:
        cfg_h = measure.hessian
        xs, ys = _subset(x_train, y_train, cfg_h.n_examples, seed)
        res = hessian_top_eigenvalue(
            model, xs, ys, max_iter=cfg_h.max_iter, tol=cfg_h.tol, seed=seed, loss_fn=loss_fn
        )
        rows.append(_row("hessian_top_eig", epoch, res, {**common, "tol": cfg_h.tol}))

    if measure.noise_scale is not None:
        cfg_n = measure.noise_scale
        res = noise_scale_two_batch(
            model,
            x_train,
            y_train,
            b_small=cfg_n.b_small,
            b_big=cfg_n.b_big,
            n_batches=cfg_n.n_batches,
            seed=seed,
            loss_fn=loss_fn,
        )
        rows.append(_row("noise_scale_two_batch", epoch, res, common))
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n_params <= cfg_n.exact_max_params:
            xs, ys = _subset(x_train, y_train, cfg_n.exact_n_examples, seed)
            res = noise_scale_exact(model, xs, ys, loss_fn=loss_fn)
            rows.append(_row("noise_scale_exact", epoch, res, {**common, "n_params": n_params}))
    return rows
