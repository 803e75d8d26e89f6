"""Budgets that match the claim (workers/budget.py): stop: caps by steps, examples and time,
until: train-set targets with the max_epochs cap, probes at the best-validation weights, and
the same rules in the user trial API."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from workers.config import TrialConfig
from workers.data import load_dataset
from workers.train import run_trial
from workers.trial_api import Trial


@pytest.fixture(scope="module")
def small(data_cache):
    return load_dataset(TrialConfig(dataset={"n_train": 256}).dataset)


def cfg(**kw) -> TrialConfig:
    base = {"model": {"name": "mlp", "hidden": [32]}, "dataset": {"n_train": 256},
            "batch_size": 64, "max_epochs": 3}  # fmt: skip
    return TrialConfig.model_validate({**base, **kw})


def test_stop_caps_stop_mid_epoch_and_name_the_cap(small):
    r = run_trial(cfg(stop={"max_steps": 6}), data=small)
    assert (r.status, r.stop_reason, r.summary["steps_run"]) == ("completed", "max_steps", 6)
    assert [e["step"] for e in r.epochs] == [4, 6]  # 4 steps per epoch; the 2nd is partial
    assert len(r.steps) == 6
    r = run_trial(cfg(stop={"max_examples": 150}), data=small)
    assert r.stop_reason == "max_examples" and r.summary["steps_run"] == 3  # 3 x 64 >= 150
    assert r.epochs[-1]["examples_seen"] == 192
    r = run_trial(cfg(stop={"max_time_s": 1e-9}), data=small)
    assert r.stop_reason == "max_time" and r.summary["steps_run"] == 1
    # A cap beyond the epochs: max_epochs stops first.
    r = run_trial(cfg(max_epochs=1, stop={"max_steps": 1000}), data=small)
    assert r.stop_reason == "max_epochs" and r.summary["steps_run"] == 4


def test_until_stops_at_the_first_epoch_meeting_the_train_target(small):
    free = run_trial(cfg(lr=0.1, max_epochs=5), data=small)
    losses = [e["train_loss_eval"] for e in free.epochs]
    accs = [e["train_acc_eval"] for e in free.epochs]
    assert losses[2] < min(losses[:2])  # the loss falls: epoch 3 is the first below this
    target = (losses[2] + min(losses[:2])) / 2
    r = run_trial(cfg(lr=0.1, max_epochs=5, until={"train_loss_below": target}), data=small)
    assert (r.stop_reason, r.summary["epochs_run"]) == ("train_target_reached", 3)
    assert r.epochs[-1]["train_loss_eval"] == losses[2]  # the same training up to the stop
    first = next(i for i, a in enumerate(accs) if a >= accs[-1]) + 1
    r = run_trial(cfg(lr=0.1, max_epochs=5, until={"train_acc_above": accs[-1]}), data=small)
    assert (r.stop_reason, r.summary["epochs_run"]) == ("train_target_reached", first)
    # Out of reach: the max_epochs cap stops it, and says so.
    r = run_trial(cfg(lr=0.1, max_epochs=2, until={"train_loss_below": 1e-6}), data=small)
    assert (r.stop_reason, r.summary["epochs_run"]) == ("max_epochs", 2)


def test_budget_keys_are_validated_and_keep_old_ids():
    assert cfg().trial_id == cfg(stop=None, until=None, measure={"at": ["final"]}).trial_id
    assert cfg().trial_id != cfg(stop={"max_steps": 5}).trial_id
    assert cfg().trial_id != cfg(measure={"at": ["final", "best"]}).trial_id
    for bad, words in [
        ({"stop": {}}, "max_steps"),
        ({"until": {}}, "train_loss_below"),
        ({"until": {"train_acc_above": 1.5}}, "train_acc_above"),
        ({"until": {"train_loss_below": 0.1}, "measure": {"train_eval": False}}, "train_eval"),
        ({"measure": {"at": ["last"]}}, "at"),
        ({"stop": {"max_time_s": 5}, "data_parallel_workers": 2}, "max_steps or max_examples"),
    ]:
        with pytest.raises(ValidationError, match=words):
            cfg(**bad)
    assert cfg(stop={"max_steps": 5}).unpackable_reason.startswith("stop")
    assert cfg().unpackable_reason is None


def test_probes_at_the_best_validation_weights(small):
    """measure.at [final, best]: the best row measures the weights of the best validation
    epoch, exactly what the final probe of the same trial cut at that epoch measures."""
    m = {"hessian": {"max_iter": 5, "n_examples": 128}, "at": ["final", "best"]}
    kw = {"lr": 0.5, "batch_size": 32, "max_epochs": 6, "model": {"name": "mlp", "hidden": [64]}}
    r = run_trial(cfg(measure=m, **kw), data=small)
    at = {p["measured_at"]: p for p in r.probes}
    assert set(at) == {"final", "best"} and at["final"]["epoch"] == 6
    best_epoch = r.summary["best_epoch"]
    assert at["best"]["epoch"] == best_epoch < 6  # this lr overfits 256 examples
    cut = run_trial(cfg(measure={**m, "at": ["final"]}, **{**kw, "max_epochs": best_epoch}),
                    data=small)  # fmt: skip
    assert cut.probes[0]["value"] == pytest.approx(at["best"]["value"], rel=1e-5)
    assert at["final"]["value"] != pytest.approx(at["best"]["value"], rel=1e-3)


def test_trial_api_should_stop_follows_the_budget():
    t = Trial(cfg(until={"train_acc_above": 0.9}, stop={"max_steps": 50}), torch.device("cpu"),
              None, None)  # fmt: skip
    t.log_epoch(1, train_loss=1.0, train_loss_eval=1.0, train_acc_eval=0.5)
    assert not t.should_stop
    t.log_epoch(2, train_loss=0.5, train_loss_eval=0.5, train_acc_eval=0.95)
    assert t.should_stop and t.st.stop == "train_target_reached"
    t = Trial(cfg(stop={"max_steps": 3}), torch.device("cpu"), None, None)
    for _ in range(2):
        t.log_step(loss=1.0)
    assert not t.should_stop
    t.log_step(loss=1.0)
    assert t.should_stop and t.st.stop == "max_steps"
