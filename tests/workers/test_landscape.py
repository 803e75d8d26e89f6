"""Tests of workers/landscape.py: filter-normalized directions, interpolation, surfaces."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.config import ModelConfig
from workers.landscape import (
    evaluate_states,
    filter_normalized_direction,
    interpolate_states,
    interpolation_curve,
    surface,
)
from workers.models import build_model

MNIST = (1, 28, 28)
SMALL = (1, 8, 8)  # cheap image shape for the evaluation tests


def _data(shape, n, seed, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _direct_eval(model, state, x, y):
    """Independent reference: load the state into a copy, eval mode, one plain forward."""
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.eval()
    with torch.no_grad():
        out = m(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).double().mean().item()


def _trained_state(model, seed, steps=5, lr=0.1):
    """A copy of `model` trained a few SGD steps in train mode: weights AND BN stats move."""
    m = copy.deepcopy(model)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, *SMALL, generator=g) * (1 + seed)  # different input scales
        y = torch.randint(0, 10, (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return _clone_state(m)


# --------------------------------------------------------------------------------------------
# 1. filter normalization
# --------------------------------------------------------------------------------------------


def _per_filter_norms_match(direction, params, rtol=1e-5):
    for name, p in params.items():
        if p.dim() >= 2:
            dn = direction[name].double().flatten(1).norm(dim=1)
            pn = p.detach().double().flatten(1).norm(dim=1)
            if not torch.allclose(dn, pn, rtol=rtol, atol=0):
                return False
    return True


FILTER_MODELS = [
    pytest.param(ModelConfig(name="lenet"), id="lenet"),
    pytest.param(ModelConfig(name="mlp", hidden=[64, 32], batchnorm=True), id="mlp-bn"),
    pytest.param(ModelConfig(name="lenet", batchnorm=True), id="lenet-bn"),
]


@pytest.mark.parametrize("cfg", FILTER_MODELS)
def test_filter_normalization_per_filter(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, MNIST, 10)
    params = dict(model.named_parameters())
    d = filter_normalized_direction(model, seed=3)
    assert list(d) == list(params)

    # Every filter of every conv / linear layer: ||d[k]|| == ||theta[k]||.
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    assert layers
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            w, dw = mod.weight, d[f"{name}.weight"]
            assert dw.shape == w.shape and dw.dtype == w.dtype and dw.device == w.device
            for k in range(w.shape[0]):
                torch.testing.assert_close(
                    dw[k].double().norm(), w[k].detach().double().norm(), rtol=1e-5, atol=0
                )
            # A direction, not the weights rescaled: nearly orthogonal to theta.
            cos = F.cosine_similarity(dw.flatten().double(), w.detach().flatten().double(), dim=0)
            assert abs(cos.item()) < 0.2
    assert _per_filter_norms_match(d, params)

    # Biases and BatchNorm gamma/beta: zero direction.
    for name, p in params.items():
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bool(bn) == bool(cfg.batchnorm)

    # The check has teeth: a per-tensor normalization (the common bug) fails it.
    g = torch.Generator().manual_seed(3)
    wrong = {}
    for name, p in params.items():
        r = torch.randn(p.shape, generator=g)
        wrong[name] = r / r.norm() * p.detach().norm() if p.dim() >= 2 else torch.zeros_like(p)
    assert not _per_filter_norms_match(wrong, params)


def test_direction_deterministic_and_trainable_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[16], batchnorm=True), SMALL, 10)
    a = filter_normalized_direction(model, seed=7)
    b = filter_normalized_direction(model, seed=7)
    c = filter_normalized_direction(model, seed=8)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["1.weight"], c["1.weight"])
    model[1].weight.requires_grad_(False)  # frozen parameters are not directions
    assert "1.weight" not in filter_normalized_direction(model, seed=7)


# --------------------------------------------------------------------------------------------
# 2. interpolation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(ModelConfig(name="mlp", hidden=[32, 32], batchnorm=True), id="mlp-bn"),
        pytest.param(ModelConfig(name="lenet", batchnorm=True), id="lenet-bn"),
    ],
)
def test_interpolation_endpoints_and_bn_stats(cfg):
    torch.manual_seed(1)
    model = build_model(cfg, SMALL, 10)  # left in train mode on purpose
    sa, sb = _trained_state(model, seed=0), _trained_state(model, seed=1)
    bn_keys = [k for k in sa if k.endswith("running_mean") or k.endswith("running_var")]
    assert bn_keys and all(not torch.equal(sa[k], sb[k]) for k in bn_keys)
    data = {"train": _data(SMALL, 40, 10), "val": _data(SMALL, 30, 11)}

    rows = interpolation_curve(model, sa, sb, data, batch_size=16)
    assert len(rows) == 2 * 25
    alphas = [r["alpha"] for r in rows if r["split"] == "train"]
    np.testing.assert_allclose(alphas, np.linspace(-1.0, 2.0, 25))
    assert alphas[8] == 0.0 and alphas[16] == 1.0
    assert all(r["beta"] is None for r in rows)
    assert [r["split"] for r in rows] == ["train"] * 25 + ["val"] * 25

    for split, (x, y) in data.items():
        by_alpha = {r["alpha"]: r for r in rows if r["split"] == split}
        for alpha, state in ((0.0, sa), (1.0, sb), (0.5, interpolate_states(sa, sb, 0.5))):
            loss, acc = _direct_eval(model, state, x, y)
            assert by_alpha[alpha]["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
            assert by_alpha[alpha]["acc"] == pytest.approx(acc, abs=1e-12)
        # Same numbers as evaluating the endpoint states directly with evaluate_states.
        direct = evaluate_states(model, [sa, sb], x, y, batch_size=16)
        assert by_alpha[0.0]["loss"] == pytest.approx(direct[0]["loss"], rel=1e-6)
        assert by_alpha[1.0]["loss"] == pytest.approx(direct[1]["loss"], rel=1e-6)


def test_interpolate_states_whole_state():
    torch.manual_seed(2)
    model = build_model(ModelConfig(name="mlp", hidden=[8], batchnorm=True), SMALL, 10)
    sa, sb = _trained_state(model, seed=0, steps=2), _trained_state(model, seed=1, steps=3)
    for alpha in (0.0, 1.0, 0.25, -1.0, 2.0):
        st = interpolate_states(sa, sb, alpha)
        assert set(st) == set(sa)
        for k, v in st.items():
            if sa[k].is_floating_point():  # weights AND running_mean / running_var
                torch.testing.assert_close(v, alpha * sb[k] + (1 - alpha) * sa[k])
            else:  # num_batches_tracked from state_a
                assert torch.equal(v, sa[k]) and v.dtype == sa[k].dtype
    # Bit-exact endpoints (integer buffers always come from state_a).
    at0, at1 = interpolate_states(sa, sb, 0.0), interpolate_states(sa, sb, 1.0)
    assert all(torch.equal(at0[k], sa[k]) for k in sa)
    assert all(torch.equal(at1[k], sb[k]) for k in sa if sa[k].is_floating_point())


# --------------------------------------------------------------------------------------------
# 3. surface on an analytic quadratic
# --------------------------------------------------------------------------------------------


def _half_mse(out, t):
    """L = 1/(2N) sum_n ||out_n - t_n||^2: quadratic in the weights of a linear model."""
    return 0.5 * ((out - t) ** 2).sum(dim=-1).mean()


@pytest.mark.parametrize("k_out", [1, 3])
def test_surface_matches_closed_form_quadratic(k_out):
    torch.manual_seed(3)
    n_in, seed, n_points, span = 6, 11, 7, 1.5
    model = nn.Linear(n_in, k_out, bias=False).double()
    state = _clone_state(model)
    g = torch.Generator().manual_seed(4)
    data = {}
    for split, n in (("train", 50), ("val", 23)):
        x = torch.randn(n, n_in, generator=g, dtype=torch.float64)
        data[split] = (x, torch.randn(n, k_out, generator=g, dtype=torch.float64))

    rows = surface(
        model,
        state,
        data,
        seed=seed,
        n_points=n_points,
        span=span,
        batch_size=16,  # uneven last data batch
        points_per_call=5,  # uneven last chunk of points
        loss_fn=_half_mse,
        acc_fn=None,
    )
    assert len(rows) == 2 * n_points**2

    # Closed form: W = W* + a D1 + b D2, residuals R = X W^T - T are affine in (a, b), so
    # f(a, b) = c0 + a g1 + b g2 + (a^2 h11 + 2 a b h12 + b^2 h22) / 2.
    w = state["weight"].numpy()
    d1 = filter_normalized_direction(model, seed)["weight"].numpy()
    d2 = filter_normalized_direction(model, seed + 1)["weight"].numpy()
    axis = np.linspace(-span, span, n_points)
    for split, (x, t) in data.items():
        x, t = x.numpy(), t.numpy()
        n = x.shape[0]
        r0, r1, r2 = x @ w.T - t, x @ d1.T, x @ d2.T
        c0 = (r0 * r0).sum() / (2 * n)
        g1, g2 = (r0 * r1).sum() / n, (r0 * r2).sum() / n
        h11, h12, h22 = (r1 * r1).sum() / n, (r1 * r2).sum() / n, (r2 * r2).sum() / n
        got = [r for r in rows if r["split"] == split]
        assert [(r["alpha"], r["beta"]) for r in got] == [(a, b) for a in axis for b in axis]
        for r in got:
            a, b = r["alpha"], r["beta"]
            want = c0 + a * g1 + b * g2 + 0.5 * (a * a * h11 + 2 * a * b * h12 + b * b * h22)
            assert r["loss"] == pytest.approx(want, rel=1e-10)
            assert np.isnan(r["acc"])
        center = [r for r in got if r["alpha"] == 0.0 and r["beta"] == 0.0]
        assert center[0]["loss"] == pytest.approx(c0, rel=1e-12)


def test_surface_keeps_bn_stats_and_uses_state_norms():
    """BN running stats unperturbed; directions normalized against `state`, not the model."""
    torch.manual_seed(5)
    model = build_model(ModelConfig(name="mlp", hidden=[16], batchnorm=True), SMALL, 10)
    state = _trained_state(model, seed=0)
    x, y = _data(SMALL, 20, 6)
    rows = surface(model, state, {"train": (x, y)}, seed=2, n_points=3, span=0.5)
    # Rebuild every point by hand from directions of a model holding `state`.
    ref = copy.deepcopy(model)
    ref.load_state_dict(state)
    d1, d2 = filter_normalized_direction(ref, 2), filter_normalized_direction(ref, 3)
    for r in rows:
        point = {
            k: v + r["alpha"] * d1[k] + r["beta"] * d2[k] if k in d1 else v
            for k, v in state.items()
        }
        loss, acc = _direct_eval(model, point, x, y)
        assert r["loss"] == pytest.approx(loss, rel=1e-5)
        assert r["acc"] == pytest.approx(acc)


# --------------------------------------------------------------------------------------------
# 4. vmap-batched evaluation == plain loop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(ModelConfig(name="lenet", batchnorm=True), id="lenet-bn"),
        pytest.param(ModelConfig(name="cnn"), id="cnn"),
        pytest.param(ModelConfig(name="mlp", hidden=[32, 16], batchnorm=True), id="mlp-bn"),
    ],
)
def test_vmap_equals_loop(cfg):
    torch.manual_seed(6)
    model = build_model(cfg, SMALL, 10)
    base = _trained_state(model, seed=0, steps=2)
    g = torch.Generator().manual_seed(7)
    states = [
        {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
         for k, v in base.items()}
        for _ in range(5)
    ]  # fmt: skip
    x, y = _data(SMALL, 30, 8)
    loop = evaluate_states(model, states, x, y, batch_size=7, use_vmap=False)
    ref = [_direct_eval(model, s, x, y) for s in states]
    for ppc in (1, 2, None):  # 1: plain per-point path; 2: chunks of 2+2+1; None: auto (all 5)
        vm = evaluate_states(model, states, x, y, batch_size=7, points_per_call=ppc, use_vmap=True)
        for a, b, (loss, acc) in zip(vm, loop, ref, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["acc"] == pytest.approx(b["acc"], abs=1e-12)
            assert a["loss"] == pytest.approx(loss, rel=1e-5)
            assert a["acc"] == pytest.approx(acc, abs=1e-12)


class _ItemModel(nn.Module):
    """A forward vmap cannot batch (.item() on a parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.lin(x) * self.scale.item()


def test_vmap_failure_falls_back_to_loop():
    torch.manual_seed(9)
    model = _ItemModel()
    s0 = _clone_state(model)
    s1 = {k: v * 1.5 for k, v in s0.items()}
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    with pytest.warns(RuntimeWarning, match="point by point"):
        got = evaluate_states(model, [s0, s1], x, y)
    want = evaluate_states(model, [s0, s1], x, y, use_vmap=False)
    assert got == want
    assert got[0]["loss"] == pytest.approx(_direct_eval(model, s0, x, y)[0], rel=1e-6)
    with pytest.raises(RuntimeError):
        evaluate_states(model, [s0, s1], x, y, use_vmap=True)


# --------------------------------------------------------------------------------------------
# 5. model state and mode unchanged
# --------------------------------------------------------------------------------------------


def test_model_state_and_mode_unchanged():
    torch.manual_seed(10)
    model = build_model(ModelConfig(name="lenet", batchnorm=True), SMALL, 10)
    model.train()
    model.head.eval()  # mixed flags must come back exactly as they were
    flags = {n: m.training for n, m in model.named_modules()}
    before = _clone_state(model)
    sa, sb = _trained_state(model, seed=0, steps=2), _trained_state(model, seed=1, steps=2)
    sa_before = {k: v.clone() for k, v in sa.items()}
    x, y = _data(SMALL, 12, 11)
    data = {"train": (x, y), "val": (x[:5], y[:5])}

    filter_normalized_direction(model, 0)
    evaluate_states(model, [sa, sb], x, y, batch_size=5)
    evaluate_states(model, [sa, sb], x, y, use_vmap=False)
    interpolation_curve(model, sa, sb, data, n_points=3)
    surface(model, sa, data, seed=0, n_points=2)

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(sa_before[k], sa[k]) for k in sa)  # inputs not mutated either
    assert all(p.grad is None for p in model.parameters())
