"""The run-level views through AppTest on the fixture warehouse: the Runs table (every
hyperparameter, filters, the selection driving other pages), a trial's page, comparing
trials, parallel coordinates."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from app import run_charts
from app.runs_data import verdict_contributions
from tests.app.test_pages import assert_clean, open_page
from warehouse.db import connect
from warehouse.findings import evaluate
from warehouse.queries import Filters, config_columns


@pytest.fixture(scope="module")
def trials(fixture_root) -> pd.DataFrame:
    c = connect(fixture_root)
    df = c.execute("SELECT * FROM trials ORDER BY experiment, trial_id").fetchdf()
    c.close()
    return df


def _specs(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def test_runs_table_has_every_hyperparameter(monkeypatch, fixture_root, trials):
    at = open_page(monkeypatch, fixture_root, "runs.py")
    assert_clean(at, "runs")
    table = at.dataframe[0].value
    assert len(table) == len(trials)  # every status (failed and diverged too)
    assert {"batch_size", "lr", "seed", "best_val_loss", "status"} <= set(table.columns)
    at.toggle(key="runs_all_cols").set_value(True).run()
    every = at.dataframe[0].value
    assert any(c.startswith("cfg.") for c in every.columns) or trials["config_json"].isna().all()
    # A filter on any column narrows the rows.
    at.multiselect(key="runs_filter_cols").set_value(["batch_size"]).run()
    at.slider(key="runs_rng_batch_size").set_value((32, 64)).run()
    assert set(at.dataframe[0].value["batch_size"]) <= {32, 64}
    at.text_input(key="runs_query").input("seed == 0").run()
    assert set(at.dataframe[0].value["seed"]) == {0}
    at.text_input(key="runs_query").input("no_such_column > 1").run()
    assert at.error and "query not applied" in at.error[0].value


def test_selected_runs_drive_every_page(monkeypatch, fixture_root, trials):
    picked = list(trials[trials["experiment"] == "support"]["trial_id"][:2])
    monkeypatch.setenv("BATCHLAB_STORAGE", fixture_root)
    at = open_page(monkeypatch, fixture_root, "overview.py")
    at.session_state["_batchlab_runs"] = picked
    at.run()
    toggle = at.sidebar.toggle(key="f_only_runs")
    assert "2 selected runs" in toggle.label
    toggle.set_value(True).run()
    assert set(at.dataframe[1].value["trial_id"]) == set(picked)
    assert at.query_params["only_runs"] in ("1", ["1"])
    at.switch_page("views/compare.py").run()
    assert_clean(at, "compare")
    [spec] = _specs(at)
    assert spec["encoding"]["color"]["field"] == "run"  # one line per chosen trial
    assert at.multiselect(key="compare_pick").value == picked


def test_trial_page(monkeypatch, fixture_root, trials):
    row = trials[(trials["experiment"] == "support") & (trials["status"] == "completed")].iloc[0]
    monkeypatch.setenv("BATCHLAB_STORAGE", fixture_root)
    at = open_page(monkeypatch, fixture_root, "trial.py")
    at.selectbox(key="trial_pick").set_value(row["trial_id"]).run()
    assert_clean(at, "trial")
    assert at.query_params["trial"] in (row["trial_id"], [row["trial_id"]])
    assert len(at.tabs) == 7
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["status"] == "completed" and metrics["epochs"] == str(row["epochs_run"])
    [spec] = _specs(at)  # the trial's curves, one panel per column
    assert spec["facet"]["field"] == "metric"
    prov = at.table[0].value
    assert prov.loc["config_hash", "value"] == str(row["config_hash"])
    assert at.dataframe, "probes / layers / verdict groups"


def test_verdict_contributions_match_the_trials_groups(fixture_root, trials):
    c = connect(fixture_root)
    verdicts = evaluate(c, Filters(experiment=("support",)))
    row = trials[(trials["experiment"] == "support") & (trials["status"] == "completed")]
    row = row.iloc[0].to_dict()
    got = verdict_contributions(verdicts, row)
    assert not got.empty
    assert all(row["experiment"] in g for g in got["group"])
    other = {**row, "experiment": "nowhere"}
    assert verdict_contributions(verdicts, other).empty


def test_compare_chart_one_line_per_trial():
    df = pd.DataFrame(
        {
            "trial_id": ["a"] * 3 + ["b"] * 3,
            "run": ["A"] * 3 + ["B"] * 3,
            "epoch": [1, 2, 3] * 2,
            "step": [10, 20, 30, 5, 10, 15],
            "examples_seen": [1, 2, 3] * 2,
            "elapsed_s": [1.0, 2.0, 3.0] * 2,
            "val_loss": [1.0, 0.5, 0.25, 2.0, 1.0, 0.0],
        }
    )
    spec = run_charts.compare_chart(df, "val_loss", "validation loss (nats)", "iterations",
                                    log_y=True).to_dict()  # fmt: skip
    assert spec["encoding"]["x"]["field"] == "step"
    assert spec["encoding"]["color"]["field"] == "run"
    binds = {p["bind"] for p in spec["params"]}
    assert binds == {"scales", "legend"}  # zoom / pan; a legend click brings a trial forward
    rows = spec["datasets"][spec["data"]["name"]]
    assert all(r["val_loss"] > 0 for r in rows)  # log y drops the 0


def test_parallel_coordinates_positions():
    df = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "run": ["A", "B", "C"],
            "batch_size": [16, 64, 256],
            "lr_scaling": ["none", "linear", "none"],
            "best_val_loss": [0.5, 0.25, 1.0],
        }
    )
    lines, ticks = run_charts.parallel_data(df, ["batch_size", "lr_scaling"], "best_val_loss")
    bs = lines[lines["axis"] == "batch_size"].set_index("trial_id")["pos"]
    assert bs["a"] == 0 and bs["c"] == 1 and bs["b"] == pytest.approx(0.5)  # log2 spacing
    assert set(ticks[ticks["axis"] == "lr_scaling"]["label"]) == {"linear", "none"}
    spec = run_charts.parallel_chart(df, ["batch_size", "lr_scaling"], "best_val_loss").to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rule", "line", "text"]


def test_parallel_coordinates_mixed_studies():
    """A CSV-imported study beside native trials: a config column holds numbers, text and
    gaps (pandas 3 keeps NaN through astype(str)); sorting them raised TypeError."""
    df = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "run": ["A", "B", "C", "D"],
            "batch_size": [16, 64, 256, 32],
            "cfg.source": [None, "csv", "ray-tune", np.nan],
            "cfg.params.momentum": [0.9, "0.9", np.nan, 0.0],
            "best_val_loss": [0.5, 0.25, 1.0, np.nan],
        }
    ).astype({"cfg.source": object, "cfg.params.momentum": object})
    axes = ["batch_size", "cfg.source", "cfg.params.momentum"]
    lines, ticks = run_charts.parallel_data(df, axes, "best_val_loss")
    assert set(ticks[ticks["axis"] == "cfg.source"]["label"]) == {"(none)", "csv", "ray-tune"}
    assert (
        lines["pos"].notna().all() or lines[lines["pos"].isna()]["axis"].eq("best_val_loss").all()
    )
    run_charts.parallel_chart(df, axes, "best_val_loss").to_dict()


def test_config_columns_flatten_nested_keys():
    cfg = pd.Series([json.dumps({"optimizer": {"name": "sgd", "momentum": 0.9}, "lr": 0.1})])
    got = config_columns(cfg)
    assert got.loc[0, "cfg.optimizer.momentum"] == 0.9 and got.loc[0, "cfg.lr"] == 0.1


@pytest.mark.parametrize("page", ["runs.py", "trial.py", "compare.py", "parallel.py"])
def test_run_pages_on_empty_root(monkeypatch, empty_root, page):
    at = open_page(monkeypatch, empty_root, page)
    assert_clean(at, page)
    assert any("No trials" in i.value for i in at.info)
