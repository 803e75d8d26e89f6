"""The worker's training loop: schedule, measurements, stopping rules, resume."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from workers.config import (
    EarlyStoppingConfig,
    MeasureConfig,
    ModelConfig,
    OptimizerConfig,
    TrialConfig,
)
from workers.data import load_dataset
from workers.models import build_model
from workers.train import lr_at, run_trial, steps_per_epoch


@pytest.fixture(scope="module")
def mnist1d(data_cache):
    return load_dataset(TrialConfig().dataset)


def cfg(**kw) -> TrialConfig:
    base = {"model": {"name": "mlp", "hidden": [32]}, "max_epochs": 2}
    return TrialConfig.model_validate({**base, **kw})


class _MemoryCheckpoints:
    def __init__(self):
        self.files: dict[str, dict] = {}

    def save(self, name, state):
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        self.files[name] = buf.getvalue()

    def load(self, name):
        import io

        if name not in self.files:
            return None
        return torch.load(io.BytesIO(self.files[name]), weights_only=True)


def test_data_sets_are_on_the_device_and_normalized(mnist1d):
    assert mnist1d.x_train.shape == (4000, 40) and mnist1d.x_val.shape == (1000, 40)
    assert mnist1d.x_train.dtype == torch.float32 and mnist1d.y_train.dtype == torch.int64
    assert abs(mnist1d.x_train.mean().item()) < 1e-4
    assert mnist1d.x_train.std().item() == pytest.approx(1.0, rel=1e-3)
    assert set(mnist1d.y_train.unique().tolist()) == set(range(10))
    from workers.config import DatasetConfig

    digits = load_dataset(DatasetConfig(name="digits", n_train=500))
    assert digits.x_train.shape == (500, 1, 8, 8) and digits.input_shape == (1, 8, 8)
    assert digits.n_train + digits.n_val == 500 + round(1797 * 0.2)


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet", "vgg", "keskar_f1", "keskar_c1"])
@pytest.mark.parametrize("shape", [(40,), (1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_runs_on_every_input_shape(name, shape):
    model = build_model(ModelConfig(name=name, batchnorm=True), shape, 10)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10)


def test_architectures_match_the_sources():
    lenet = build_model(ModelConfig(name="lenet"), (1, 28, 28), 10)
    convs = [m for m in lenet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (3, 3))]
    drops = [m.p for m in lenet.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.25, 0.5]
    linears = [m for m in lenet.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 12 * 12, 128), (128, 10)]
    f1 = build_model(ModelConfig(name="keskar_f1"), (1, 28, 28), 10)
    lin = [m for m in f1.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in lin] == [512] * 5 + [10]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in f1.modules()) == 5


def test_lr_schedule_scaling_and_warmup(mnist1d):
    c = cfg(
        batch_size=128,
        lr=0.01,
        lr_scaling="linear",
        base_batch_size=32,
        warmup_epochs=1.0,
        max_epochs=2,
    )
    spe = steps_per_epoch(4000, 128)
    assert spe == 32
    assert c.scaled_lr == pytest.approx(0.04)
    assert lr_at(c, 0, spe, 1.0) == pytest.approx(0.01)
    assert lr_at(c, 16, spe, 1.0) == pytest.approx(0.01 + 0.03 * 16 / 32)
    assert lr_at(c, 32, spe, 1.0) == pytest.approx(0.04)
    assert lr_at(c, 40, spe, 0.1) == pytest.approx(0.004)
    sq = cfg(batch_size=128, lr=0.01, lr_scaling="sqrt", base_batch_size=32)
    assert sq.scaled_lr == pytest.approx(0.02)
    # The lr actually applied at each step (stored in `steps`) follows the formula.
    r = run_trial(c, data=mnist1d)
    applied = [s["lr"] for s in r.steps]
    assert len(applied) == 2 * spe
    for t, lr in enumerate(applied):
        assert lr == pytest.approx(lr_at(c, t, spe, 1.0)), t


def test_distances_are_consistent_with_checkpoints(mnist1d):
    ck = _MemoryCheckpoints()
    r = run_trial(cfg(batch_size=256, lr=0.1, max_epochs=3), data=mnist1d, checkpoints=ck)
    assert r.status == "completed"
    # Per-layer squares sum to the total squared distance, at every epoch.
    for e in r.epochs:
        per = [row["dist_from_init"] for row in r.layers if row["epoch"] == e["epoch"]]
        assert sum(d * d for d in per) == pytest.approx(e["dist_from_init"] ** 2, rel=1e-5)
    # The final distance equals ||final - init|| computed from the stored checkpoints.
    init, final = ck.load("init"), ck.load("final")
    sq = sum(
        ((final[k] - init[k]) ** 2).sum().item() for k in init if k.endswith(("weight", "bias"))
    )
    assert math.sqrt(sq) == pytest.approx(r.epochs[-1]["dist_from_init"], rel=1e-5)
    # The first epoch's distance equals the epoch distance; an epoch distance never exceeds
    # the sum of that epoch's update norms (triangle inequality).
    assert r.epochs[0]["epoch_distance"] == pytest.approx(r.epochs[0]["dist_from_init"], rel=1e-6)
    for e in r.epochs:
        total = sum(s["update_norm"] for s in r.steps if s["epoch"] == e["epoch"])
        assert e["epoch_distance"] <= total * (1 + 1e-6)
    # Plain SGD: each update norm is lr * gradient norm.
    for s in r.steps[:20]:
        assert s["update_norm"] == pytest.approx(0.1 * s["grad_norm"], rel=1e-4)


def test_large_batches_take_smaller_steps_and_stay_closer_to_init(mnist1d):
    """F-7 and F-9 at a fixed lr on MNIST-1D: directions, not numbers."""
    runs = {
        b: run_trial(cfg(batch_size=b, lr=0.05, max_epochs=4, seed=0), data=mnist1d)
        for b in (32, 256)
    }
    med = {b: statistics.median(s["update_norm"] for s in r.steps) for b, r in runs.items()}
    dist = {b: r.epochs[-1]["dist_from_init"] for b, r in runs.items()}
    assert med[256] < med[32], med
    assert dist[256] < dist[32], dist


def test_early_stopping_in_epochs_and_in_steps(mnist1d):
    r = run_trial(
        cfg(
            batch_size=256,
            lr=1e-6,
            max_epochs=50,
            early_stopping={"patience": 2, "min_delta": 0.01},
        ),
        data=mnist1d,
    )
    assert r.stop_reason == "early_stopping" and r.summary["epochs_run"] < 50
    es = EarlyStoppingConfig(patience=20, unit="steps", eval_every_steps=5, min_delta=0.01)
    r = run_trial(
        cfg(batch_size=256, lr=1e-6, max_epochs=50, early_stopping=es.model_dump()), data=mnist1d
    )
    assert r.stop_reason == "early_stopping"
    # Patience 20 steps with validation every 5: stops after at most a few epochs of 16 steps.
    assert r.summary["steps_run"] <= r.summary["best_step"] + 20 + 5


def test_target_error_records_steps_to_target(mnist1d):
    r = run_trial(cfg(batch_size=64, lr=0.1, max_epochs=30, target_val_error=0.7), data=mnist1d)
    assert r.stop_reason == "target_reached"
    assert r.summary["steps_to_target"] == r.summary["steps_run"] > 0


def test_plateau_decay_divides_the_lr(mnist1d):
    c = cfg(
        batch_size=256,
        lr=1e-7,
        max_epochs=6,
        plateau_decay={"factor": 0.1, "patience": 1, "max_decays": 2},
    )
    r = run_trial(c, data=mnist1d)
    lrs = [e["lr"] for e in r.epochs]
    assert lrs[0] == pytest.approx(1e-7)
    assert min(lrs) == pytest.approx(1e-9)


def test_gradient_clipping_bounds_the_update(mnist1d):
    r = run_trial(cfg(batch_size=64, lr=1.0, max_epochs=1, grad_clip_norm=0.01), data=mnist1d)
    assert max(s["update_norm"] for s in r.steps) <= 1.0 * 0.01 * (1 + 1e-4)


@pytest.mark.parametrize(
    "opt", [{"name": "adam"}, {"name": "sgd", "momentum": 0.9, "nesterov": True}]
)
def test_other_optimizers_train(mnist1d, opt):
    r = run_trial(
        cfg(batch_size=128, lr=0.01 if opt["name"] == "sgd" else 1e-3, optimizer=opt, max_epochs=2),
        data=mnist1d,
    )
    assert r.status == "completed"
    assert r.epochs[-1]["train_loss"] < r.epochs[0]["train_loss"] or r.epochs[-1]["val_loss"] < 2.3


def test_divergence_is_a_status_with_the_step(mnist1d):
    r = run_trial(cfg(batch_size=64, lr=1e6), data=mnist1d)
    assert r.status == "diverged" and r.summary["diverged_step"] >= 1
    assert r.error is None


def test_resume_from_epoch_checkpoint_is_exact(mnist1d):
    c = cfg(
        batch_size=256,
        lr=0.05,
        max_epochs=4,
        model={"name": "mlp", "hidden": [32], "batchnorm": True},
    )
    full = run_trial(c, data=mnist1d)
    ck = _MemoryCheckpoints()

    class Crash(Exception):
        pass

    def crash_at_3(row):
        if row["epoch"] == 3:
            raise Crash

    # A crash at the end of epoch 3 (before its checkpoint): the resume state holds epoch 2.
    with pytest.raises(Crash):
        from workers.train import train_lone

        train_lone(c, torch.device("cpu"), mnist1d, None, ck, crash_at_3)
    resumed = run_trial(c, data=mnist1d, checkpoints=ck)
    assert resumed.summary["resumed_from_epoch"] == 2
    assert [e["val_loss"] for e in resumed.epochs] == [e["val_loss"] for e in full.epochs]
    assert [s["update_norm"] for s in resumed.steps] == [s["update_norm"] for s in full.steps]


def test_measure_switches(mnist1d):
    m = MeasureConfig(update_norms=False, store_steps=False, layers=False, train_eval=False)
    r = run_trial(cfg(batch_size=256, measure=m.model_dump()), data=mnist1d)
    assert r.steps == [] and r.layers == []
    assert math.isnan(r.epochs[0]["train_loss_eval"])


def test_probes_run_at_the_end_with_their_settings(mnist1d):
    m = {
        "hessian": {"max_iter": 5, "n_examples": 256},
        "sharpness": {"eps": [1e-3], "max_iter": 2, "n_examples": 256},
        "noise_scale": {"b_small": 16, "b_big": 128, "n_batches": 3, "exact_n_examples": 128},
    }
    r = run_trial(cfg(batch_size=256, max_epochs=1, measure=m), data=mnist1d)
    probes = {p["probe"] for p in r.probes}
    assert {
        "hessian_top_eig",
        "keskar_sharpness",
        "noise_scale_two_batch",
        "noise_scale_exact",
    } <= probes
    for p in r.probes:
        assert p["epoch"] == 1 and p["settings_json"] and p["seconds"] >= 0


def test_unused_optimizer_config_is_typed():
    assert OptimizerConfig(name="adam").betas == (0.9, 0.999)
