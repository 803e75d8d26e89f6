"""Acceptance tests of workers.probes against closed forms and exact references (CPU, fast)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.config import HessianConfig, MeasureConfig, NoiseScaleConfig, SharpnessConfig
from workers.probes import (
    ROW_KEYS,
    hessian_top_eigenvalue,
    keskar_sharpness,
    noise_scale_exact,
    noise_scale_two_batch,
    run_probes,
)

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: intra-op threading only adds overhead (and stalls badly on a
    loaded CI machine). Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mse_half(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 * mean((Xw - y)^2): its Hessian in w is exactly X'X / n."""
    return 0.5 * (out.squeeze(-1) - target).square().mean()


def _synthetic(n: int = 512, d: int = 20, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, c, generator=g)
    x = torch.randn(n, d, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, c, generator=g)).argmax(1)
    return x, y


def _mlp(d: int = 20, c: int = 5, hidden: int = 32, batchnorm: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.Tanh(), nn.Linear(hidden, c)]
    return nn.Sequential(*layers)


def _train(model: nn.Module, x, y, steps: int, lr: float = 0.1, bs: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (bs,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"  # bit-exact: params and buffers
    assert all(p.grad is None for p in model.parameters()), ".grad was touched"


@pytest.fixture(scope="module")
def trained_mlp():
    x, y = _synthetic(n=1024)
    model = _train(_mlp(), x, y, steps=400)
    return model, x, y


# ----------------------------------------------------------------------------- Hessian


def test_hessian_least_squares_matches_eigvalsh():
    g = torch.Generator().manual_seed(1)
    n, d = 400, 12
    # One column scaled up: the top eigenvalue is well separated (lambda_2 / lambda_1 < 0.5),
    # so PyHessian's successive-difference rule (tol 1e-3) stops close to the true value.
    scales = torch.ones(d)
    scales[0] = 3.0
    X = torch.randn(n, d, generator=g) * scales
    t = torch.randn(n, generator=g)
    model = nn.Linear(d, 1, bias=False)
    model.train()
    before = _snapshot(model)

    exact = float(np.linalg.eigvalsh((X.double().T @ X.double() / n).numpy()).max())
    res = hessian_top_eigenvalue(model, X, t, loss_fn=_mse_half, seed=3)
    assert res["converged"] and 1 < res["iterations"] <= 100
    assert abs(res["value"] - exact) / exact < 1e-3
    assert set(res) >= {"value", "iterations", "converged", "n_examples", "seconds", "seed"}
    assert res["n_examples"] == n and res["seed"] == 3
    # Chunked Hessian-vector products give the same iteration.
    res_c = hessian_top_eigenvalue(model, X, t, loss_fn=_mse_half, seed=3, chunk_size=97)
    assert res_c["iterations"] == res["iterations"]
    assert res_c["value"] == pytest.approx(res["value"], rel=1e-4)
    assert model.training  # mode restored
    _assert_unchanged(model, before)


def test_hessian_generic_spectrum_tight_tol():
    g = torch.Generator().manual_seed(2)
    n, d = 300, 8
    X = torch.randn(n, d, generator=g)
    X[:, 1] += 0.5 * X[:, 0]  # correlated columns, no hand-made gap
    t = torch.randn(n, generator=g)
    model = nn.Linear(d, 1, bias=False)
    exact = float(np.linalg.eigvalsh((X.double().T @ X.double() / n).numpy()).max())
    res = hessian_top_eigenvalue(model, X, t, loss_fn=_mse_half, tol=1e-7, max_iter=1000)
    assert res["converged"]
    assert abs(res["value"] - exact) / exact < 1e-3


def test_hessian_mlp_restores_mode_and_params(trained_mlp):
    model, x, y = trained_mlp
    model.train()
    before = _snapshot(model)
    res = hessian_top_eigenvalue(model, x[:256], y[:256], max_iter=5)
    assert res["iterations"] <= 5 and math.isfinite(res["value"])
    assert model.training
    _assert_unchanged(model, before)


# ----------------------------------------------------------------------------- Keskar


class _Quadratic(nn.Module):
    """Outputs its parameter w for every example; with `_quad_loss` the loss is
    f(w) = 1/2 sum_i h_i (w_i - c_i)^2 (the targets carry c)."""

    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w0.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], -1)


def _quad_loss(h: torch.Tensor):
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (h * (out - target).square()).sum(1).mean()

    return loss


def _quad_problem(d: int = 10, offset: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = 3.0 * torch.randn(d, generator=g)
    sign = torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    # Minimum c near w, so the gradient at y = 0 is non-zero and points to a definite corner.
    c = w + sign * offset * 1e-2 * (w.abs() + 1.0) * torch.rand(d, generator=g).add(0.1)
    h = torch.linspace(0.5, 5.0, d)
    return w, c, h


def _quad_closed_form(w, c, h, eps):
    """Each coordinate independently goes to the box end farthest from the minimum."""
    w, c, h = (t.double() for t in (w, c, h))
    b = eps * (w.abs() + 1.0)
    dist = (w - c).abs()
    f_x = float(0.5 * (h * dist**2).sum())
    f_max = float(0.5 * (h * (dist + b) ** 2).sum())
    return (f_max - f_x) / (1.0 + f_x) * 100.0


def _quad_sharpness(w, c, h, eps, solver, scale=1.0):
    model = _Quadratic(w)
    xs = torch.zeros(4, 1)
    targets = c.expand(4, -1).clone()
    before = _snapshot(model)
    res = keskar_sharpness(
        model, xs, targets, eps=eps, solver=solver, loss_fn=_quad_loss(scale * h)
    )
    _assert_unchanged(model, before)
    return res


@pytest.mark.parametrize("solver", ["lbfgsb", "pga"])
@pytest.mark.parametrize("eps", [1e-2, 1e-3])
def test_keskar_quadratic_closed_form(solver, eps):
    w, c, h = _quad_problem()
    res = _quad_sharpness(w, c, h, eps, solver)
    assert res["value"] == pytest.approx(_quad_closed_form(w, c, h, eps), rel=1e-3)
    assert res["solver"] == solver and res["eps"] == eps and res["start"] == "zero"
    assert 1 <= res["iterations"] <= 10
    keys = {"value", "eps", "solver", "iterations", "subspace_dim", "f_x", "f_max", "start"}
    assert keys | {"seed", "n_examples", "seconds"} <= set(res)


@pytest.mark.parametrize("solver", ["lbfgsb", "pga"])
def test_keskar_quadratic_scaling(solver):
    # Minimum much closer than the box (|w - c| ~ 1% of the box): phi ~ eps^2 for small eps.
    w, c, h = _quad_problem(offset=0.01)
    eps = 1e-2
    phi = _quad_sharpness(w, c, h, eps, solver)["value"]
    phi_half = _quad_sharpness(w, c, h, eps / 2, solver)["value"]
    phi_2h = _quad_sharpness(w, c, h, eps, solver, scale=2.0)["value"]
    assert phi_2h > 1.9 * phi  # grows with H's scale (x2 up to the 1 + f(x) denominator)
    assert 3.5 < phi / phi_half < 4.5  # halving eps divides phi by ~4
    assert phi_half == pytest.approx(_quad_closed_form(w, c, h, eps / 2), rel=1e-3)


@pytest.mark.parametrize("eps", [1e-3, 5e-4])
def test_keskar_solvers_agree_on_mlp(trained_mlp, eps):
    model, x, y = trained_mlp
    model.train()
    before = _snapshot(model)
    lb = keskar_sharpness(model, x, y, eps=eps, solver="lbfgsb")
    pga = keskar_sharpness(model, x, y, eps=eps, solver="pga")
    assert lb["value"] > 0 and pga["value"] > 0
    # Stated tolerance: 10% relative. Both are inexact 10-iteration maximizers of the same
    # box problem; on this model they agree to ~0.1% at these eps (both end near the same
    # corner of the tiny box), so 10% leaves room for solver-dependent inexactness.
    assert pga["value"] == pytest.approx(lb["value"], rel=0.10)
    assert lb["f_x"] == pytest.approx(pga["f_x"], rel=1e-6)
    assert lb["f_max"] >= lb["f_x"] and pga["f_max"] >= pga["f_x"]
    assert model.training and all(m.training for m in model.modules())
    _assert_unchanged(model, before)


def test_keskar_subspace_and_random_start(trained_mlp):
    model, x, y = trained_mlp
    before = _snapshot(model)
    a = keskar_sharpness(model, x, y, eps=1e-3, subspace_dim=20, seed=5, start="random")
    b = keskar_sharpness(model, x, y, eps=1e-3, subspace_dim=20, seed=5, start="random")
    assert a["subspace_dim"] == 20 and a["start"] == "random" and a["seed"] == 5
    assert math.isfinite(a["value"]) and a["value"] >= 0
    assert a["value"] == b["value"]  # seeded: same subspace, same start point
    p = keskar_sharpness(model, x, y, eps=1e-3, subspace_dim=20, seed=5, solver="pga")
    assert math.isfinite(p["value"]) and p["value"] >= 0
    _assert_unchanged(model, before)


def test_keskar_bad_arguments(trained_mlp):
    model, x, y = trained_mlp
    with pytest.raises(ValueError):
        keskar_sharpness(model, x, y, eps=1e-3, solver="adam")
    with pytest.raises(ValueError):
        keskar_sharpness(model, x, y, eps=1e-3, start="middle")


# ----------------------------------------------------------------------------- noise scale


def test_noise_scale_two_batch_matches_exact():
    x, y = _synthetic(n=512)
    model = _train(_mlp(), x, y, steps=20)
    model.train()
    before = _snapshot(model)
    exact = noise_scale_exact(model, x, y)
    est = noise_scale_two_batch(model, x, y, b_small=16, b_big=256, n_batches=100, seed=0)
    assert exact["n_examples"] == 512 and est["n_batches"] == 100
    # Stated tolerance: 25% relative. Over 30 seeds this configuration's ratio
    # two_batch / exact had mean 1.00 and standard deviation 3.4% (batches are drawn with
    # replacement, so both averaged estimates are unbiased for this finite set; the ratio of
    # averages has only O(1/n_batches) bias), so 25% is ~7 standard deviations: a genuine
    # estimator bug (a missing factor b or 1/b, a train-mode gradient) fails it.
    assert est["value"] == pytest.approx(exact["value"], rel=0.25)
    assert est["g2"] == pytest.approx(exact["g2"], rel=0.25)
    assert est["trace_sigma"] == pytest.approx(exact["trace_sigma"], rel=0.25)
    assert exact["value"] == pytest.approx(exact["trace_sigma"] / exact["g2"])
    assert model.training
    _assert_unchanged(model, before)


def test_noise_scale_exact_brute_force_with_batchnorm():
    x, y = _synthetic(n=48)
    model = _train(_mlp(hidden=8, batchnorm=True), x, y, steps=10, bs=16)
    model.train()
    before = _snapshot(model)
    res = noise_scale_exact(model, x, y, chunk_size=20)  # chunks of 20, 20, 8

    # Reference: one autograd pass per example, eval mode (BatchNorm running statistics).
    model.eval()
    gs = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        gs.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())]))
    G = torch.stack(gs).double()
    g_mean = G.mean(0)
    tr = float((G - g_mean).square().sum(1).mean())
    g2 = float(g_mean.square().sum())
    model.train()

    assert res["trace_sigma"] == pytest.approx(tr, rel=1e-4)
    assert res["g2"] == pytest.approx(g2, rel=1e-4)
    assert res["value"] == pytest.approx(tr / g2, rel=1e-4)
    _assert_unchanged(model, before)


def test_noise_scale_two_batch_clamps_and_validates():
    x, y = _synthetic(n=100)
    model = _mlp()
    res = noise_scale_two_batch(model, x, y, b_small=8, b_big=1024, n_batches=3)
    assert res["b_big"] == 100 and math.isfinite(res["value"])
    with pytest.raises(ValueError):
        noise_scale_two_batch(model, x, y, b_small=128, b_big=1024, n_batches=3)


# ----------------------------------------------------------------------------- run_probes


def _measure(exact_max_params: int = 200_000) -> MeasureConfig:
    return MeasureConfig(
        sharpness=SharpnessConfig(eps=[1e-3, 5e-4], n_examples=256, max_iter=5),
        hessian=HessianConfig(n_examples=200, max_iter=20),
        noise_scale=NoiseScaleConfig(
            b_small=8,
            b_big=128,
            n_batches=4,
            exact_n_examples=300,
            exact_max_params=exact_max_params,
        ),
    )


def test_run_probes_rows(trained_mlp):
    model, x, y = trained_mlp
    model.train()
    before = _snapshot(model)
    rows = run_probes(model, x, y, _measure(), seed=7, epoch=3)
    assert [r["probe"] for r in rows] == [
        "keskar_sharpness",
        "keskar_sharpness",
        "hessian_top_eig",
        "noise_scale_two_batch",
        "noise_scale_exact",
    ]
    for r in rows:
        assert tuple(sorted(r)) == tuple(sorted(ROW_KEYS))
        assert r["epoch"] == 3 and r["status"] == "ok"
        assert isinstance(r["value"], float) and math.isfinite(r["value"])
        assert r["seconds"] >= 0
        settings = json.loads(r["settings_json"])
        assert r["settings_json"] == json.dumps(settings, sort_keys=True)
        assert settings["subset_seed"] == 7 and settings["model_mode"] == "eval"
    sharp = [json.loads(r["settings_json"]) for r in rows[:2]]
    assert [s["eps"] for s in sharp] == [1e-3, 5e-4]
    assert all(s["solver"] == "lbfgsb" and s["start"] == "zero" for s in sharp)
    assert [r["n_examples"] for r in rows] == [256, 256, 200, 1024, 300]
    assert json.loads(rows[2]["settings_json"])["seed"] == 7
    assert model.training
    _assert_unchanged(model, before)

    # Deterministic: a second call reproduces every value.
    again = run_probes(model, x, y, _measure(), seed=7, epoch=3)
    assert [r["value"] for r in again] == [r["value"] for r in rows]

    # The exact noise scale is skipped above exact_max_params.
    small = run_probes(model, x, y, _measure(exact_max_params=10), seed=7, epoch=3)
    assert [r["probe"] for r in small][-1] == "noise_scale_two_batch"

    # Nothing enabled: no rows.
    assert run_probes(model, x, y, MeasureConfig(), seed=0, epoch=0) == []


def test_run_probes_nan_model_is_diverged_not_raised():
    x, y = _synthetic(n=300)
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    rows = run_probes(model, x, y, _measure(), seed=0, epoch=1)
    assert len(rows) == 5
    for r in rows:
        assert r["status"] == "diverged"
        assert math.isnan(r["value"])
        json.loads(r["settings_json"])  # strict JSON despite NaNs


def test_run_probes_inf_loss_is_diverged():
    x, y = _synthetic(n=300)
    model = _mlp()
    with torch.no_grad():
        model[2].bias.fill_(float("inf"))
    rows = run_probes(model, x, y, _measure(), seed=0, epoch=1)
    assert rows and all(r["status"] == "diverged" for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_probes_on_cuda_matches_cpu(trained_mlp):
    model, x, y = trained_mlp
    cpu_rows = run_probes(model, x, y, _measure(), seed=1, epoch=0)
    dev = torch.device("cuda")
    gpu_model = copy.deepcopy(model).to(dev)
    gpu_rows = run_probes(gpu_model, x.to(dev), y.to(dev), _measure(), seed=1, epoch=0)
    assert [r["probe"] for r in gpu_rows] == [r["probe"] for r in cpu_rows]
    for c, g in zip(cpu_rows, gpu_rows, strict=True):
        assert g["status"] == "ok"
        # Same seeded draws on both devices; only float32 reduction order differs.
        tol = 0.05 if c["probe"] == "noise_scale_two_batch" else 0.02
        assert g["value"] == pytest.approx(c["value"], rel=tol), c["probe"]


# ------------------------------------------------- Keskar: solvers, restarts, the kept max


def _two_basin_problem(eps: float = 1e-2, d: int = 4, k: float = 0.1):
    """f(w + y) with a known box maximum that gradient ascent from y = 0 misses.

    Coordinate 0, in box units s = y_0 / b_0 in [-1, 1], adds k (-a s + c s^3) (a = 0.02,
    c = 0.2): the gradient at 0 points down to a local maximum at s = -sqrt(a / 3c) = -0.18,
    while the box maximum is at s = +1 (basin s > 0.18, 41% of the box). Coordinates 1..d-1
    add 1/2 h_i (w_i + y_i - c_i)^2 with c_i outside the box (3 half-widths off), so they
    rise monotonically to the far end from any start. Box maximum: k (c - a) + 1/2 sum
    h_i (4 b_i)^2; f(w) = 1/2 sum h_i (3 b_i)^2."""
    g = torch.Generator().manual_seed(1)
    w = 3.0 * torch.randn(d, generator=g)
    b = eps * (w.abs() + 1.0)
    sign = torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    c = w + 3.0 * b * sign
    h = torch.linspace(1.0, 3.0, d)
    a3, c3 = 0.02, 0.2

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = (out[:, 0] - w[0]) / b[0]
        quad = 0.5 * (h[1:] * (out[:, 1:] - c[1:]).square()).sum(1)
        return (k * (-a3 * s + c3 * s**3) + quad).mean()

    f_x = float(0.5 * (h[1:].double() * (3.0 * b[1:].double()) ** 2).sum())
    f_max = k * (c3 - a3) + float(0.5 * (h[1:].double() * (4.0 * b[1:].double()) ** 2).sum())
    return _Quadratic(w), loss, (f_max - f_x) / (1.0 + f_x) * 100.0


def test_keskar_restarts_reach_the_box_maximum_a_single_run_misses():
    from workers.probes import keskar_sharpness_max

    model, loss, phi_max = _two_basin_problem()
    xs, ys = torch.zeros(4, 1), torch.zeros(4, 4)
    before = _snapshot(model)
    one = keskar_sharpness(model, xs, ys, eps=1e-2, solver="lbfgsb", max_iter=10, loss_fn=loss)
    assert one["value"] < 0.8 * phi_max  # stuck at the local maximum the gradient points to
    for seed in range(3):
        best = keskar_sharpness_max(model, xs, ys, eps=1e-2, solver="lbfgsb", restarts=8,
                                    max_iter=10, seed=seed, loss_fn=loss)  # fmt: skip
        assert best["value"] == pytest.approx(phi_max, rel=1e-3), seed
        assert best["value"] == max(r["value"] for r in best["runs"])
        assert len(best["runs"]) == 9 and best["runs"][0]["start"] == "zero"
        assert best["runs"][0]["value"] == pytest.approx(one["value"], rel=1e-9)
        assert best["f_max"] >= best["f_x"] and best["iterations"] >= 1
        assert best["spread"] > 1.2
    _assert_unchanged(model, before)


def test_keskar_both_solvers_keep_the_larger_and_rows_store_the_runs(trained_mlp):
    model, x, y = trained_mlp
    both = run_probes(model, x, y, MeasureConfig(sharpness=SharpnessConfig(
        eps=[1e-3], solver="both", restarts=1, max_iter=5)), seed=0, epoch=3)  # fmt: skip
    (row,) = both
    s = json.loads(row["settings_json"])
    assert s["solver_setting"] == "both" and s["restarts"] == 1
    assert [(r["solver"], r["start"]) for r in s["runs"]] == [
        ("lbfgsb", "zero"),
        ("lbfgsb", "random"),
        ("pga", "zero"),
        ("pga", "random"),
    ]
    assert row["value"] == pytest.approx(max(r["value"] for r in s["runs"]))
    assert s["solver"] == s["runs"][s["best_run"]]["solver"]
    assert all(r["f_max"] is not None and r["iterations"] >= 1 for r in s["runs"])
    # Without restarts and one solver the row is the single run's, as before.
    (plain,) = run_probes(model, x, y, MeasureConfig(sharpness=SharpnessConfig(
        eps=[1e-3], max_iter=5)), seed=0, epoch=3)  # fmt: skip
    assert "runs" not in json.loads(plain["settings_json"])
    assert plain["value"] == pytest.approx(s["runs"][0]["value"], rel=1e-9)
