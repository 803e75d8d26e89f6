"""`performance:` (workers/perf.py): every switch validated with a clear error, trial identity
kept for defaults and execution-only switches, defaults bit-identical, channels_last equal to
NCHW within 1e-5 (lone and packed), torch.compile equal to eager (or a recorded fallback), the
TF32 / cuDNN flags restored after a trial, and what was in effect in every trial's perf_json."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from scheduler.spec import SpecError, parse_spec
from workers import perf
from workers.config import PerformanceConfig, TrialConfig
from workers.pack import run_pack
from workers.train import run_trial

CNN = {
    "dataset": {"name": "digits"},
    "model": {"name": "cnn", "batchnorm": True},
    "batch_size": 64,
    "max_epochs": 1,
    "measure": {"layers": False, "checkpoints": False},
}
MLP = {
    "dataset": {"name": "digits", "n_train": 512},
    "model": {"name": "mlp", "hidden": [16]},
    "batch_size": 128,
    "max_epochs": 2,
    "measure": {"layers": False, "checkpoints": False},
}


def _cfg(base: dict, **performance) -> TrialConfig:
    return TrialConfig.model_validate({**base, "performance": performance})


def _curves(r) -> list[float]:
    """Every number a trial's rows hold about its optimization path."""
    out = [s["batch_loss"] for s in r.steps] + [s["grad_norm"] for s in r.steps]
    for e in r.epochs:
        out += [e["train_loss"], e["train_loss_eval"], e["val_loss"], e["dist_from_init"]]
    return out


def _rec(r) -> dict:
    return json.loads(r.summary["perf_json"])


# ============================================================================ config


def test_every_switch_is_accepted_and_defaults_are_off():
    p = PerformanceConfig()
    assert (p.tf32, p.compile, p.channels_last, p.cuda_graphs, p.cudnn_benchmark) == (
        None, False, False, False, False,
    )  # fmt: skip
    assert p.is_default
    for mode in (True, False, "default", "reduce-overhead", "max-autotune"):
        assert PerformanceConfig(compile=mode).compile == mode
    on = PerformanceConfig(
        tf32=True, compile="reduce-overhead", channels_last=True, cuda_graphs=True,
        cudnn_benchmark=True,
    )  # fmt: skip
    assert not on.is_default and PerformanceConfig(tf32=False).tf32 is False


@pytest.mark.parametrize(
    ("performance", "field", "needle"),
    [
        ({"compile": "fast"}, "performance.compile", "'fast' is not allowed: false, true or a "
         "torch.compile mode ('default', 'reduce-overhead'"),
        ({"compile": 1}, "performance.compile", "1 is not allowed"),
        ({"tf32": "yes"}, "performance.tf32", "valid boolean"),
        ({"channels_last": 1}, "performance.channels_last", "valid boolean"),
        ({"cuda_graphs": "on"}, "performance.cuda_graphs", "valid boolean"),
        ({"cudnn_benchmark": None}, "performance.cudnn_benchmark", "valid boolean"),
    ],
)  # fmt: skip
def test_bad_values_name_the_field_the_value_and_what_is_allowed(performance, field, needle):
    with pytest.raises(ValidationError) as err:
        TrialConfig.model_validate({"performance": performance})
    text = str(err.value)
    assert field in text and needle in text
    assert repr(next(iter(performance.values()))) in text  # the value given


def test_the_grid_spec_takes_performance_and_names_an_unknown_key():
    spec = parse_spec({"experiment": "p", "performance": {"tf32": True, "channels_last": True}})
    (t,) = spec.trials()
    assert t.performance.tf32 is True and t.performance.channels_last is True
    with pytest.raises(SpecError, match=r"performance\.channel_last.*channels_last"):
        parse_spec({"experiment": "p", "performance": {"channel_last": True}})


def test_identity_defaults_and_execution_switches_keep_the_trial_id_tf32_changes_it():
    # Ids computed by the code before `performance:` existed (commit e36b277).
    assert TrialConfig().trial_id == "f6591db9165f0ee5"
    assert TrialConfig().shape_key() == "87e421ba808353e2"
    cnn = TrialConfig.model_validate(CNN | {"measure": {}})
    assert (cnn.trial_id, cnn.shape_key()) == ("ef3d3835b4a69314", "517d50e8ac6d7dac")
    base = CNN | {"measure": {}}
    fast = _cfg(base, compile="max-autotune", channels_last=True, cuda_graphs=True,
                cudnn_benchmark=True)  # fmt: skip
    assert fast.trial_id == cnn.trial_id  # same maths: a re-run skips the stored trial
    assert fast.shape_key() != cnn.shape_key()  # but never one pack with default trials
    ids = {_cfg(base, tf32=v).trial_id for v in (True, False)}
    assert len(ids) == 2 and cnn.trial_id not in ids  # TF32 (or strict fp32) is asked for


# ============================================================================ lone trials


def test_defaults_are_bit_identical_and_the_step_calls_the_module_itself(data_cache):
    cfg = TrialConfig.model_validate(MLP)
    model = torch.nn.Linear(2, 2)
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    rec = perf.new_record(cfg.performance, torch.device("cpu"))
    fwd = perf.training_forward(
        cfg.performance, rec, model, model, x, y, torch.nn.functional.cross_entropy, 2, 4,
        torch.device("cpu"),
    )  # fmt: skip
    assert fwd is model  # the very call of the training step before these switches existed
    # CPU no-ops (TF32, cuDNN autotuning, CUDA graphs) change nothing, bit for bit.
    a = run_trial(cfg, device="cpu")
    b = run_trial(_cfg(MLP, tf32=False, cudnn_benchmark=True, cuda_graphs=True), device="cpu")
    assert a.status == b.status == "completed"
    assert _curves(a) == _curves(b)
    ra, rb = _rec(a), _rec(b)
    assert ra["notes"] == {} and not any(ra["in_effect"].values())
    assert rb["requested"]["cuda_graphs"] is True and not any(rb["in_effect"].values())
    assert set(rb["notes"]) == {"tf32", "cudnn_benchmark", "cuda_graphs"}
    assert rb["notes"]["cuda_graphs"].startswith("cpu:")


def test_channels_last_cnn_same_losses_and_a_recorded_noop_on_an_mlp(data_cache):
    a = run_trial(TrialConfig.model_validate(CNN), device="cpu")
    b = run_trial(_cfg(CNN, channels_last=True), device="cpu")
    assert a.status == b.status == "completed"
    assert _rec(b)["in_effect"]["channels_last"] is True
    assert _curves(b) == pytest.approx(_curves(a), abs=1e-5)
    c = run_trial(_cfg(MLP, channels_last=True), device="cpu")
    assert _rec(c)["in_effect"]["channels_last"] is False
    assert "no Conv2d" in _rec(c)["notes"]["channels_last"]
    assert _curves(c) == _curves(run_trial(TrialConfig.model_validate(MLP), device="cpu"))


def test_a_compile_failure_falls_back_to_eager_with_the_reason(data_cache, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    r = run_trial(_cfg(MLP, compile="reduce-overhead"), device="cpu")
    assert r.status == "completed", r.error
    rec = _rec(r)
    assert rec["in_effect"]["compile"] is False
    assert rec["notes"]["compile"] == "fell back to eager: RuntimeError: no compiler here"
    assert _curves(r) == _curves(run_trial(TrialConfig.model_validate(MLP), device="cpu"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compile_on_cpu_trains_like_eager_or_records_why_not(data_cache):
    eager = run_trial(TrialConfig.model_validate(MLP), device="cpu")
    r = run_trial(_cfg(MLP, compile=True), device="cpu")
    assert r.status == "completed", r.error
    rec = _rec(r)
    if rec["in_effect"]["compile"] is False:  # no working compiler on this machine
        assert rec["notes"]["compile"].startswith("fell back to eager")
        assert _curves(r) == _curves(eager)
        return
    assert rec["in_effect"]["compile"] == "default" and rec["compile_s"] > 0
    # Fused kernels round differently at the last bits; the path is the same.
    assert _curves(r) == pytest.approx(_curves(eager), rel=1e-4, abs=1e-5)


def test_a_trainable_gets_the_flags_and_a_note_for_the_rest():
    rec = perf.new_record(PerformanceConfig(compile=True, channels_last=True), torch.device("cpu"))
    perf.not_applied(rec, PerformanceConfig(compile=True, channels_last=True), "a trainable")
    assert rec["notes"] == {"compile": "a trainable", "channels_last": "a trainable"}


def test_tf32_and_cudnn_flags_are_set_for_one_trial_and_restored():
    before = perf._snapshot()
    cuda = torch.device("cuda")  # the flags are plain process state: settable without a GPU
    with perf.applied(PerformanceConfig(tf32=True, cudnn_benchmark=True), cuda) as rec:
        assert perf._tf32_now() == (True, True) and torch.backends.cudnn.benchmark
        assert rec["in_effect"]["tf32_matmul"] and rec["in_effect"]["cudnn_benchmark"]
    assert perf._snapshot() == before
    with perf.applied(PerformanceConfig(tf32=False), cuda) as rec:
        assert perf._tf32_now() == (False, False)
    assert perf._snapshot() == before
    with perf.applied(PerformanceConfig(), cuda) as rec:
        assert perf._snapshot() == before  # defaults touch nothing
        assert rec["notes"]["tf32"].startswith("torch defaults")


# ============================================================================ packs and rows


def test_a_pack_applies_channels_last_and_records_compile_as_not_applied(data_cache):
    lrs = (0.01, 0.05)
    plain = run_pack([TrialConfig.model_validate(CNN | {"lr": lr}) for lr in lrs], device="cpu")
    fast = run_pack(
        [_cfg(CNN | {"lr": lr}, channels_last=True, compile=True) for lr in lrs], device="cpu"
    )
    for a, b in zip(plain, fast, strict=True):
        assert a.status == b.status == "completed", b.error
        assert _curves(b) == pytest.approx(_curves(a), abs=1e-5)
        rec = _rec(b)
        assert rec["in_effect"]["channels_last"] is True and "channels_last" not in rec["notes"]
        assert rec["in_effect"]["compile"] is False
        assert rec["notes"]["compile"].startswith("not applied to packs")
    assert not any(_rec(plain[0])["in_effect"].values())


def test_the_trials_row_carries_perf_json(data_cache):
    import datetime as dt

    from scheduler.tasks import trial_row
    from warehouse.schemas import to_table

    cfg = _cfg(MLP, channels_last=True)
    r = run_trial(cfg, device="cpu")
    row = trial_row(
        cfg, r, code_version="t", attempt=1, started_at=dt.datetime.now(dt.timezone.utc)
    )
    assert json.loads(row["perf_json"])["requested"]["channels_last"] is True
    assert to_table("trials", [row | {"experiment": "e"}]).column("perf_json")[0].as_py()
