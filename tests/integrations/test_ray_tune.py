"""BatchlabLoggerCallback with the real Ray Tune (local Ray, 2 tiny trials): the sweep
lands in the warehouse as committed trials, a failed Tune trial as `failed`."""

from __future__ import annotations

import math
import sys

import pytest

pytest.importorskip("ray.tune")
from ray import cloudpickle, tune

from batchlab.integrations.ray_tune import BatchlabLoggerCallback
from tests.integrations.conftest import rows


def trainable(config) -> None:
    loss = 2.0
    for epoch in range(1, 4):
        loss *= 1 - config["lr"]
        if config["batch_size"] == 64 and epoch == 2:
            raise RuntimeError("tiny failure at batch 64")
        tune.report({"epoch": epoch, "train_loss": loss, "val_loss": loss + 0.1, "other": 7})


def test_a_tune_sweep_lands_in_the_warehouse(ray_local, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cb = BatchlabLoggerCallback(tmp_path / "runs", experiment="sweep", max_epochs=3)
    tuner = tune.Tuner(
        trainable,
        param_space={"batch_size": tune.grid_search([16, 64]), "lr": 0.5, "width": 8},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), callbacks=[cb], verbose=0),
    )
    tuner.fit()
    got = rows(tmp_path / "runs", "SELECT * FROM trials ORDER BY batch_size")
    assert [(t["batch_size"], t["status"], t["epochs_run"]) for t in got] == [
        (16, "completed", 3),
        (64, "failed", None),  # as a failed batchlab trial: the error, no rows
    ]
    assert "tiny failure at batch 64" in got[1]["error"]
    assert got[0]["code_version"].startswith("integration:ray-tune==")
    assert '"width": 8' in got[0]["params_json"] and got[0]["seed"] == 0
    eps = rows(
        tmp_path / "runs",
        "SELECT epoch, train_loss, epoch_time_s FROM epochs "
        "WHERE trial_id = (SELECT trial_id FROM trials WHERE batch_size = 16) ORDER BY 1",
    )
    assert [e["epoch"] for e in eps] == [1, 2, 3]
    assert eps[2]["train_loss"] == pytest.approx(0.25) and math.isfinite(eps[0]["epoch_time_s"])
    m = rows(tmp_path / "runs", "SELECT DISTINCT name FROM metrics")
    assert {r["name"] for r in m} == {"other"}


def test_tune_sweep_and_mlflow_import_are_judged_in_the_app(ray_local, tmp_path, monkeypatch):
    """Issue 27's acceptance: a sweep logged by the callback and a store written by the real
    mlflow package, side by side in one warehouse, render on the app's pages (AppTest) with
    both studies selectable and judged on the Findings page."""
    pytest.importorskip("mlflow")
    from tests.app.test_pages import assert_clean, open_page
    from tests.integrations.test_mlflow import write_store
    from warehouse.importers import import_trials
    from warehouse.importers import mlflow as ml

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = tmp_path / "runs"
    cb = BatchlabLoggerCallback(root, experiment="sweep", max_epochs=3)
    tune.Tuner(
        trainable,
        param_space={"batch_size": tune.grid_search([16, 32]), "lr": 0.5, "width": 8},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), callbacks=[cb], verbose=0),
    ).fit()
    db = tmp_path / "mlflow.db"
    write_store(f"sqlite:///{db}")
    import_trials(str(root), "mlflow", str(db), "mlflow-study", ml.read(db))
    for page in ("findings.py", "overview.py", "generalization.py", "curves.py"):
        at = open_page(monkeypatch, str(root), page)
        assert_clean(at, page)
        assert at.sidebar.multiselect(key="f_experiment").value == ["mlflow-study", "sweep"]
