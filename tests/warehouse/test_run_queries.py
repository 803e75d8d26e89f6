"""The named queries of the explorer's run-level pages and of the user metrics
(warehouse/queries/runs.py, metrics.py): what the app asks instead of writing SQL."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from warehouse import queries as q
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.store import CheckpointFiles, list_checkpoints, write_trial


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    """Two batch sizes x two seeds of a custom trainable logging `dice` per epoch and
    `lr_now` per step; nested hyperparameters in config_json."""
    root = str(tmp_path_factory.mktemp("run-queries") / "runs")
    layout = Layout.open(root)
    for bs in (32, 128):
        for seed in (0, 1):
            tid = f"t-b{bs}-s{seed}"
            epochs = [
                {"epoch": e, "step": e * 10, "train_loss": 1.0 / e, "val_loss": 1.2 / e}
                for e in (1, 2, 3)
            ]
            metrics = [
                {"epoch": e, "step": e * 10, "name": "dice", "value": e / 10 + seed / 100}
                for e in (1, 2, 3)
            ] + [{"epoch": 1, "step": s, "name": "lr_now", "value": s / 100} for s in (5, 10)]
            config = {"batch_size": bs, "optimizer": {"name": "sgd", "momentum": 0.9}}
            write_trial(
                layout,
                "custom",
                {"trial_id": tid, "config_hash": tid, "status": "completed", "dataset": "d",
                 "model": "user", "optimizer": "sgd", "batch_size": bs, "lr": 0.1,
                 "scaled_lr": 0.1, "lr_scaling": "none", "seed": seed, "epochs_run": 3,
                 "best_val_loss": 0.4, "best_epoch": 3, "config_json": json.dumps(config)},
                {"epochs": epochs, "metrics": metrics},
            )  # fmt: skip
    CheckpointFiles(layout, "custom", "t-b32-s0").put_bytes("final", b"x" * 10)
    return root


@pytest.fixture(scope="module")
def con(root):
    c = connect(root)
    yield c
    c.close()


def test_runs_table_flattens_the_config(con):
    df = q.runs_table(con, q.Filters())
    assert len(df) == 4 and "config_json" not in df.columns and "error" not in df.columns
    assert set(df["cfg.optimizer.momentum"]) == {0.9}
    assert "cfg.batch_size" not in df.columns  # repeats the trials column
    one = q.runs_table(con, q.Filters(batch_size=(128,)))
    assert set(one["batch_size"]) == {128}


def test_trial_row_and_rows(con):
    row = q.trial_row(con, "custom", "t-b32-s1")
    assert len(row) == 1 and row.iloc[0]["seed"] == 1
    assert q.trial_row(con, "custom", "nope").empty
    ep = q.trial_rows(con, "epochs", ("t-b32-s0", "t-b128-s0"))
    assert list(ep["trial_id"]) == ["t-b128-s0"] * 3 + ["t-b32-s0"] * 3
    assert list(ep["epoch"]) == [1, 2, 3, 1, 2, 3]
    with pytest.raises(ValueError, match="not a per-trial table"):
        q.trial_rows(con, "trials; DROP VIEW epochs", ("x",))


def test_metric_queries(con):
    assert list(q.metric_names(con, q.Filters())["name"]) == ["dice", "lr_now"]
    assert q.metric_names(con, q.Filters(batch_size=(64,))).empty
    dice = q.metric_curves(con, q.Filters(), metric="dice")
    got = dice[(dice["batch_size"] == 32) & (dice["epoch"] == 2)].iloc[0]
    assert got["value_mean"] == pytest.approx(0.2 + 0.005)
    assert got["n_seeds"] == 2 and set(dice["name"]) == {"dice"}
    every = q.metric_curves(con, q.Filters())
    assert set(every["name"]) == {"dice", "lr_now"}
    pd.testing.assert_frame_equal(
        every[every["name"] == "dice"].reset_index(drop=True), dice.reset_index(drop=True)
    )
    lr_now = every[every["name"] == "lr_now"]
    assert list(lr_now["value_mean"]) == pytest.approx([0.10, 0.10])  # the last step's
    rows = q.trial_metrics(con, ("t-b32-s0",))
    assert len(rows) == 5 and set(rows["trial_id"]) == {"t-b32-s0"}


def test_metric_queries_without_the_view():
    c = duckdb.connect()
    c.execute("CREATE TABLE trials (experiment VARCHAR, trial_id VARCHAR)")
    assert not q.metrics_available(c)
    c.execute("CREATE VIEW metrics AS SELECT 1 AS x")  # not the table's columns
    assert not q.metrics_available(c)
    assert q.metric_names(c, q.Filters()).columns.tolist() == ["name"]
    assert list(q.metric_curves(c, q.Filters()).columns) == list(q.metrics.CURVE_COLUMNS)
    assert q.trial_metrics(c, ("x",)).empty


def test_example_runs(con):
    got = q.example_runs(con, n=3)
    assert list(got["trial_id"]) == ["t-b32-s0", "t-b128-s0"]


def test_list_checkpoints(root):
    [ck] = list_checkpoints(Layout.open(root), "custom", "t-b32-s0")
    assert ck.file == "final.pt" and ck.size == 10 and ck.path.endswith("t-b32-s0/final.pt")
    assert list_checkpoints(Layout.open(root), "custom", "t-b128-s0") == []
