"""`batchlab import mlflow` / `export --format mlflow` against stores written by the real
mlflow package: a file store (`mlruns/`) and a SQLite store; idempotent; judged like a
native study (`batchlab report`)."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient

from batchlab.cli import main
from tests.integrations.conftest import rows
from warehouse.importers import import_trials
from warehouse.importers import mlflow as ml


def write_store(uri: str) -> None:
    """2 batch sizes x (epoch metric + losses per epoch), one FAILED run, one per-step run."""
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("bs-study")
    for bs in (16, 128):
        run = c.create_run(exp, tags={"team": "vision"})
        rid = run.info.run_id
        for k, v in {"batch_size": bs, "learning_rate": 0.1, "seed": 0, "width": 8}.items():
            c.log_param(rid, k, v)
        for epoch in range(3):
            step = (epoch + 1) * 100
            c.log_metric(rid, "epoch", epoch + 1, step=step)
            c.log_metric(rid, "train_loss", 1.0 / (epoch + 1) + bs / 1000, step=step)
            c.log_metric(rid, "val_loss", 1.1 / (epoch + 1) + bs / 1000, step=step)
            c.log_metric(rid, "val_accuracy", 0.5 + 0.1 * epoch, step=step)
        c.set_terminated(rid, "FINISHED")
    run = c.create_run(exp)
    c.log_param(run.info.run_id, "batch_size", 64)
    c.log_param(run.info.run_id, "lr", 0.5)
    for step in range(2):  # no epoch metric: every step is an epoch (0-based -> from 1)
        c.log_metric(run.info.run_id, "loss", 2.0 - step, step=step)
    c.set_terminated(run.info.run_id, "FAILED")


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_import_mlflow_store_is_idempotent_and_judged(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    src = tmp_path / ("mlruns" if kind == "file" else "mlflow.db")
    uri = src.as_uri() if kind == "file" else f"sqlite:///{src}"
    if kind == "file":
        src.mkdir()
    write_store(uri)
    root = tmp_path / "runs"
    trials = ml.read(src)
    report = import_trials(str(root), "mlflow", str(src), "mlflow-study", trials)
    assert len(report.imported) == 3
    got = rows(
        root,
        "SELECT batch_size, lr, status, epochs_run, best_val_acc, params_json"
        " FROM trials ORDER BY batch_size",
    )
    assert [(t["batch_size"], t["status"], t["epochs_run"]) for t in got] == [
        (16, "completed", 3),
        (64, "failed", 2),
        (128, "completed", 3),
    ]
    assert got[0]["lr"] == 0.1 and got[0]["best_val_acc"] == pytest.approx(0.7)
    eps = rows(
        root,
        "SELECT epoch, step, val_loss FROM epochs e JOIN trials t USING (trial_id)"
        " WHERE t.batch_size = 16 ORDER BY epoch",
    )
    assert [(e["epoch"], e["step"]) for e in eps] == [(1, 100), (2, 200), (3, 300)]
    again = import_trials(str(root), "mlflow", str(src), "mlflow-study", ml.read(src))
    assert again.imported == [] and len(again.unchanged) == 3
    from warehouse.queries import Filters
    from warehouse.report import render_report

    text = render_report(root, Filters(experiment=("mlflow-study",)))
    assert "mlflow-study" in text or "batch" in text.lower()


def test_export_to_mlflow_round_trips_and_is_idempotent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    src = tmp_path / "src.db"
    write_store(f"sqlite:///{src}")
    root = tmp_path / "runs"
    import_trials(str(root), "mlflow", str(src), "study", ml.read(src))
    out = tmp_path / "exported.db"
    out.touch()
    cmd = ["export", "--format", "mlflow", "--output", str(out), "--storage", str(root)]
    assert main(cmd) == 0
    assert "exported 3 trials" in capsys.readouterr().out
    assert ml.export_mlflow(str(root), out).endswith("(3 unchanged)")
    c = MlflowClient(tracking_uri=f"sqlite:///{out}")
    runs = c.search_runs([c.get_experiment_by_name("study").experiment_id])
    assert len(runs) == 3
    r16 = next(r for r in runs if r.data.params["batch_size"] == "16")
    hist = c.get_metric_history(r16.info.run_id, "val_loss")
    assert [m.step for m in hist] == [1, 2, 3]
    back = tmp_path / "back"
    assert main(["import", "mlflow", str(out), "--storage", str(back), "--experiment", "back"]) == 0
    a = rows(root, "SELECT batch_size, best_val_loss FROM trials ORDER BY 1")
    b = rows(back, "SELECT batch_size, best_val_loss FROM trials ORDER BY 1")
    assert a == b
