"""stop:/until: budgets through the scheduler on local Ray: the grid keys reach the trials,
packs leave budgeted trials to train alone (saying why), and stop_reason lands in `trials`."""

from __future__ import annotations

import io

from scheduler.runner import run_grid
from scheduler.spec import parse_spec
from warehouse.db import connect


def test_budgets_run_alone_in_a_pack_task_and_record_the_cap(ray_local, storage):
    spec = parse_spec({
        "experiment": "budgets", "dataset": {"name": "mnist1d", "n_train": 256},
        "model": {"name": "mlp", "hidden": [16]}, "max_epochs": 3,
        "stop": {"max_steps": 5}, "measure": {"checkpoints": False},
        "grid": {"batch_size": [64], "lr": [0.05, 0.1], "seed": [0]},
        "resources": {"cpus_per_trial": 1, "pack": True},
    })  # fmt: skip
    out = io.StringIO()
    report = run_grid(spec, storage, progress=False, out=out)
    assert report.counts["completed"] == 2, report.results
    assert "stop: packs train every member to max_epochs" in out.getvalue()
    rows = (
        connect(storage)
        .execute("SELECT stop_reason, steps_run, epochs_run, pack_id FROM trials")
        .fetchall()
    )
    assert rows == [("max_steps", 5, 2, None)] * 2
