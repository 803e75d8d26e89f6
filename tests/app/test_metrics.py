"""User-defined metrics (the `metrics` table of custom trainables) on the Curves and Trial
pages, and the pages on a warehouse without such a view (older warehouses)."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from tests.app.test_pages import assert_clean, open_page
from warehouse.layout import Layout
from warehouse.queries import metrics_available
from warehouse.schemas import SCHEMAS, TRIAL_TABLES
from warehouse.store import write_trial

pytestmark = pytest.mark.skipif(
    "metrics" not in SCHEMAS or "metrics" not in TRIAL_TABLES,
    reason="this batchlab has no metrics table (warehouse/schemas.py)",
)


@pytest.fixture(scope="module")
def metrics_root(tmp_path_factory) -> str:
    """Two batch sizes x two seeds of one custom trainable logging `dice` per epoch (and
    `lr_now` per step); the curves are known exactly."""
    root = str(tmp_path_factory.mktemp("app-metrics") / "runs")
    layout = Layout.open(root)
    for bs in (32, 128):
        for seed in (0, 1):
            tid = f"t-b{bs}-s{seed}"
            epochs = [
                {"epoch": e, "step": e * 10, "examples_seen": e * 10 * bs, "elapsed_s": float(e),
                 "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_acc": 0.5 + 0.1 * e}
                for e in (1, 2, 3)
            ]  # fmt: skip
            metrics = [
                {
                    "epoch": e,
                    "step": e * 10,
                    "name": "dice",
                    "value": e / 10 + seed / 100 + bs / 1e4,
                }
                for e in (1, 2, 3)
            ] + [{"epoch": 1, "step": s, "name": "lr_now", "value": 0.1} for s in (5, 10)]
            write_trial(
                layout,
                "custom",
                {"trial_id": tid, "config_hash": tid, "status": "completed", "dataset": "d",
                 "model": "user", "optimizer": "sgd", "batch_size": bs, "lr": 0.1,
                 "scaled_lr": 0.1, "lr_scaling": "none", "seed": seed, "epochs_run": 3,
                 "best_val_loss": 0.4, "best_epoch": 3,
                 "config_json": json.dumps({"batch_size": bs, "trainable": "my.module:fit"})},
                {"epochs": epochs, "metrics": metrics},
            )  # fmt: skip
    return root


def test_curves_page_draws_user_metrics(monkeypatch, metrics_root):
    at = open_page(monkeypatch, metrics_root, "curves.py")
    assert_clean(at, "curves")
    assert any(h.value == "User-defined metrics" for h in at.header)
    assert at.multiselect(key="curves_metrics").options == ["dice", "lr_now"]
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    dice = [s for s in specs if "dice" in json.dumps(s.get("layer", s))]
    assert dice, "a chart of the dice metric"


def test_metric_curves_mean_over_seeds(monkeypatch, metrics_root):
    import streamlit as st

    from app import metrics
    from warehouse.queries import Filters

    monkeypatch.setenv("BATCHLAB_STORAGE", metrics_root)
    st.cache_data.clear()
    df = metrics.metric_curves(Filters(), "dice")
    got = df[(df["batch_size"] == 32) & (df["epoch"] == 2)].iloc[0]
    assert got["value_mean"] == pytest.approx(0.2 + 0.005 + 0.0032)
    assert got["n_seeds"] == 2 and got["value_std"] > 0
    assert set(df["epoch"]) == {1, 2, 3}


def test_trial_page_lists_user_metrics(monkeypatch, metrics_root):
    at = open_page(monkeypatch, metrics_root, "trial.py")
    assert_clean(at, "trial")
    [chart] = at.get("vega_lite_chart")
    metrics = set()
    for ds in chart.proto.datasets:  # Arrow IPC streams
        table = pa.ipc.open_stream(ds.data.data).read_all()
        metrics |= set(table.column("metric").to_pylist())
    assert {"user: dice", "user: lr_now", "val_loss", "train_loss"} <= metrics


def test_no_metrics_view_means_no_user_metrics():
    c = duckdb.connect()
    c.execute("CREATE TABLE trials (experiment VARCHAR, trial_id VARCHAR)")
    assert not metrics_available(c)
    c.execute("CREATE VIEW metrics AS SELECT 1 AS x")  # not the table's columns
    assert not metrics_available(c)


def test_pages_without_metrics_rows(monkeypatch, fixture_root):
    at = open_page(monkeypatch, fixture_root, "curves.py")
    assert_clean(at, "curves")
    assert not any(h.value == "User-defined metrics" for h in at.header)
