"""Known-answer tests of the sharpness measures of workers/probes/curvature.py (CPU, fast):
Dinh et al.'s rescaling of a ReLU net (adaptive sharpness unchanged, lambda_max changed)
and quadratic losses with a known Hessian (exact batch sharpness, lambda_max, adaptive
worst case and average case)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.config import MeasureConfig
from workers.probe_settings import AdaptiveSharpnessConfig, BatchSharpnessConfig
from workers.probes import (
    adaptive_sharpness,
    batch_indices,
    batch_sharpness,
    hessian_top_eigenvalue,
    run_probes,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _relu_net(d: int = 6, h: int = 12, c: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).double()


def _data(n: int = 96, d: int = 6, c: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def _rescaled(net: nn.Sequential, a: float) -> nn.Sequential:
    """Dinh et al. (2017): layer 1 (weight and bias) x a, layer 2's weight x 1/a; ReLU is
    positively homogeneous, so the function is unchanged."""
    out = _relu_net()
    out.load_state_dict(net.state_dict())
    with torch.no_grad():
        out[0].weight.mul_(a)
        out[0].bias.mul_(a)
        out[2].weight.div_(a)
    return out


@pytest.mark.parametrize(
    "kind,norm,rho", [("worst", "linf", 0.01), ("worst", "l2", 0.5), ("average", "l2", 0.05)]
)
def test_adaptive_sharpness_is_invariant_to_dinh_rescaling_lambda_max_is_not(kind, norm, rho):
    x, y = _data()
    net = _relu_net()
    big = _rescaled(net, 8.0)
    assert torch.allclose(net(x), big(x), rtol=1e-10, atol=1e-12)  # the same function
    kw = dict(rho=rho, norm=norm, kind=kind, n_iter=10, n_samples=8, seed=3)
    a0 = adaptive_sharpness(net, x, y, **kw)
    a1 = adaptive_sharpness(big, x, y, **kw)
    assert a0["value"] > 0
    assert a1["value"] == pytest.approx(a0["value"], rel=1e-6)
    l0 = hessian_top_eigenvalue(net, x, y, seed=0, max_iter=200, tol=1e-6)["value"]
    l1 = hessian_top_eigenvalue(big, x, y, seed=0, max_iter=200, tol=1e-6)["value"]
    assert l1 > 5 * l0  # layer 2's weights scaled by 1/8: curvature along them x 64
    b0 = batch_sharpness(net, x, y, batch_size=16, n_batches=4)["value"]
    b1 = batch_sharpness(big, x, y, batch_size=16, n_batches=4)["value"]
    assert b1 != pytest.approx(b0, rel=0.1)  # batch sharpness is not invariant either


class _Point(nn.Module):
    """Outputs its parameter w for every example: with `_quad(A)` the loss is
    1/2 mean_i (w - c_i)' A (w - c_i), Hessian A, mini-batch gradient A (w - mean c_B)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], -1)


def _quad(a: torch.Tensor):
    def loss(out: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = out - c
        return 0.5 * (r * a * r).sum(1).mean()

    return loss


def _quad_problem(n: int = 12, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([9.0, 4.0, 2.0, 1.0, 0.5], dtype=torch.float64)[:d]
    w = 1.0 + torch.rand(d, generator=g, dtype=torch.float64)
    c = torch.randn(n, d, generator=g, dtype=torch.float64)
    return _Point(w), torch.zeros(n, 1, dtype=torch.float64), c, a


def _rayleigh(g: np.ndarray, a: np.ndarray) -> float:
    return float(g @ (a * g) / (g @ g))


def test_batch_sharpness_quadratic_exact_per_example_and_full_batch():
    model, x, c, a = _quad_problem()
    loss = _quad(a)
    w, an, cn = model.w.detach().numpy(), a.numpy(), c.numpy()
    n = len(c)
    # batch size 1, n batches: one permutation, every example once.
    per_ex = batch_sharpness(model, x, c, batch_size=1, n_batches=n, loss_fn=loss)
    want = np.mean([_rayleigh(an * (w - ci), an) for ci in cn])
    assert per_ex["value"] == pytest.approx(want, rel=1e-10)
    # the full batch: g = A (w - mean c), one value
    full = batch_sharpness(model, x, c, batch_size=n, n_batches=3, loss_fn=loss)
    assert full["value"] == pytest.approx(_rayleigh(an * (w - cn.mean(0)), an), rel=1e-10)
    assert full["std"] == pytest.approx(0.0, abs=1e-9)
    lam = hessian_top_eigenvalue(model, x, c, loss_fn=loss, max_iter=500, tol=1e-9)["value"]
    assert lam == pytest.approx(9.0, rel=1e-6)
    assert full["value"] <= lam + 1e-9 and per_ex["value"] <= lam + 1e-9


def test_batch_sharpness_least_squares_full_batch_matches_numpy():
    g = torch.Generator().manual_seed(4)
    n, d = 64, 7
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2.0, d)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()

    def mse_half(out, t):
        return 0.5 * (out.squeeze(-1) - t).square().mean()

    xn, yn, wn = x.numpy(), y.numpy(), model.weight.detach().numpy()[0]
    h = xn.T @ xn / n
    grad = h @ wn - xn.T @ yn / n
    res = batch_sharpness(model, x, y, batch_size=n, n_batches=1, loss_fn=mse_half)
    assert res["value"] == pytest.approx(float(grad @ h @ grad / (grad @ grad)), rel=1e-10)
    lam = hessian_top_eigenvalue(model, x, y, loss_fn=mse_half, max_iter=500, tol=1e-9)
    assert lam["value"] == pytest.approx(float(np.linalg.eigvalsh(h)[-1]), rel=1e-5)


def test_batch_indices_cover_each_example_once_per_permutation():
    bs = batch_indices(10, 3, 6, seed=0)
    assert [len(b) for b in bs] == [3] * 6
    first = torch.cat(bs[:3])
    assert len(set(first.tolist())) == 9  # one permutation's 3 full chunks, no repeat
    with pytest.raises(ValueError):
        batch_indices(4, 5, 1, seed=0)


def test_adaptive_worst_linf_quadratic_closed_form():
    model, x, c, a = _quad_problem(n=1)
    loss = _quad(a)
    w, cn, an = model.w.detach().numpy(), c.numpy()[0], a.numpy()
    rho = 0.05
    res = adaptive_sharpness(model, x, c, rho=rho, norm="linf", kind="worst", loss_fn=loss)
    r = np.abs(w - cn) + rho * np.abs(w)  # each coordinate to the box end away from c
    want = 0.5 * float((an * r * r).sum()) - 0.5 * float((an * (w - cn) ** 2).sum())
    assert res["value"] == pytest.approx(want, rel=1e-9)


def test_adaptive_average_at_the_minimum_is_half_rho2_sum_a_w2():
    d = 5
    a = torch.tensor([9.0, 4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    w = torch.linspace(1.0, 2.0, d, dtype=torch.float64)
    model, x, c = _Point(w), torch.zeros(1, 1, dtype=torch.float64), w[None].clone()
    rho = 0.1
    res = adaptive_sharpness(
        model, x, c, rho=rho, kind="average", n_samples=1000, seed=0, loss_fn=_quad(a)
    )
    want = 0.5 * rho**2 * float((a * w * w).sum())  # E z_i^2 = 1
    assert res["value"] == pytest.approx(want, rel=0.1)


def test_adaptive_bad_arguments_and_nan_model():
    x, y = _data()
    net = _relu_net()
    with pytest.raises(ValueError):
        adaptive_sharpness(net, x, y, rho=0.1, norm="l1")
    with pytest.raises(ValueError):
        adaptive_sharpness(net, x, y, rho=0.1, kind="best")
    with pytest.raises(ValueError):
        adaptive_sharpness(net, x, y, rho=0.0)
    with torch.no_grad():
        net[2].weight.fill_(float("nan"))
    assert math.isnan(adaptive_sharpness(net, x, y, rho=0.01)["value"])
    assert math.isnan(batch_sharpness(net, x, y, batch_size=8, n_batches=2)["value"])


def test_run_probes_rows_for_the_new_measures():
    x, y = _data(n=64)
    net = _relu_net().float()
    x = x.float()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = MeasureConfig(
        update_norms=False,
        batch_sharpness=BatchSharpnessConfig(n_batches=3),
        adaptive_sharpness=AdaptiveSharpnessConfig(
            worst_linf_rho=[0.01], worst_l2_rho=[], average_rho=[0.05, 0.1], n_iter=3
        ),
    )
    rows = run_probes(net, x, y, m, seed=0, epoch=2, loss_fn=F.cross_entropy, batch_size=16)
    names = [r["probe"] for r in rows]
    assert names == [
        "batch_sharpness",
        "adaptive_sharpness_worst_linf",
        "adaptive_sharpness_average",
        "adaptive_sharpness_average",
    ]
    assert all(r["status"] == "ok" and math.isfinite(r["value"]) for r in rows)
    s = [json.loads(r["settings_json"]) for r in rows]
    assert s[0]["batch_size"] == 16 and s[0]["n_batches"] == 3 and s[0]["loss"] == "cross_entropy"
    assert [x.get("rho") for x in s[1:]] == [0.01, 0.05, 0.1]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # without a batch size (neither configured nor the trial's) batch sharpness is skipped
    rows = run_probes(net, x, y, m, seed=0, epoch=2)
    assert "batch_sharpness" not in [r["probe"] for r in rows]
    # a MeasureConfig without them set runs none of them
    assert run_probes(net, x, y, MeasureConfig(), seed=0, epoch=2, batch_size=16) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_new_measures_on_cuda_match_cpu():
    """Seeded draws are made on the CPU and moved, so both devices measure the same batches
    and perturbations; only float reduction order differs (float64 here)."""
    x, y = _data(n=128)
    net = _relu_net()
    m = MeasureConfig(
        update_norms=False,
        batch_sharpness=BatchSharpnessConfig(n_batches=4),
        adaptive_sharpness=AdaptiveSharpnessConfig(
            worst_linf_rho=[0.01], worst_l2_rho=[0.5], average_rho=[0.05], n_iter=5
        ),
    )
    cpu = run_probes(net, x, y, m, seed=0, epoch=1, batch_size=32)
    dev = torch.device("cuda")
    gpu = run_probes(net.to(dev), x.to(dev), y.to(dev), m, seed=0, epoch=1, batch_size=32)
    assert [r["probe"] for r in gpu] == [r["probe"] for r in cpu]
    for c, g in zip(cpu, gpu, strict=True):
        assert g["status"] == "ok"
        assert g["value"] == pytest.approx(c["value"], rel=1e-6), c["probe"]
