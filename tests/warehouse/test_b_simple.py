"""warehouse/b_simple.py: B_simple at several points of training. Known answers: per trial
B_simple = 50 x epoch x (1 + batch_size / 1000) + seed at epochs 1..4 from the two-batch
estimator, an exact-estimator row that must not be mixed in, a `best`-point row and a
diverged row that must be ignored; one trial with the exact estimator only."""

from __future__ import annotations

import json

import pytest

from warehouse.b_simple import b_simple_by_epoch, b_simple_trend
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.queries import Filters
from warehouse.store import write_trial

BATCHES = (32, 128)
SEEDS = (0, 1)
EPOCHS = (1, 2, 3, 4)


def value(b: int, e: int, seed: int) -> float:
    return 50.0 * e * (1 + b / 1000) + seed


def _trial(layout, tid, b, seed, probes, experiment="ns"):
    epochs = [{"epoch": e, "step": 10 * e, "val_acc": 0.9, "val_loss": 0.3} for e in EPOCHS]
    write_trial(
        layout,
        experiment,
        {
            "trial_id": tid,
            "config_hash": tid,
            "status": "completed",
            "dataset": "d",
            "model": "m",
            "optimizer": "sgd",
            "batch_size": b,
            "lr": 0.1,
            "scaled_lr": 0.1,
            "lr_scaling": "none",
            "base_batch_size": 32,
            "seed": seed,
        },
        {"epochs": epochs, "probes": probes},
    )


def build(root: str) -> str:
    layout = Layout.open(root)
    for b in BATCHES:
        for seed in SEEDS:
            probes = [
                {
                    "epoch": e,
                    "probe": "noise_scale_two_batch",
                    "value": value(b, e, seed),
                    "status": "ok",
                    "measured_at": "epoch" if e < EPOCHS[-1] else "final",
                    "settings_json": json.dumps({}),
                }
                for e in EPOCHS
            ]
            probes += [
                {"epoch": 2, "probe": "noise_scale_exact", "value": 1e6, "status": "ok"},
                {"epoch": 4, "probe": "noise_scale_two_batch", "value": 1e6, "measured_at": "best"},
                {"epoch": 3, "probe": "noise_scale_two_batch", "value": 1e6, "status": "diverged"},
            ]
            _trial(layout, f"t-b{b}-s{seed}", b, seed, probes)
    exact = [{"epoch": e, "probe": "noise_scale_exact", "value": 7.0 * e} for e in EPOCHS]
    _trial(layout, "exact-only", 64, 0, exact, experiment="ex")
    return root


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = connect(build(str(tmp_path_factory.mktemp("bsimple"))))
    yield c
    c.close()


def test_per_epoch_means_over_seeds(con):
    df = b_simple_by_epoch(con, Filters(experiment=("ns",)))
    assert len(df) == len(BATCHES) * len(EPOCHS)
    for r in df.itertuples():
        expected = sum(value(r.batch_size, r.epoch, s) for s in SEEDS) / len(SEEDS)
        assert r.b_simple_mean == pytest.approx(expected)  # no exact / best / diverged row
        assert r.n_seeds == len(SEEDS)
        assert r.probe == "noise_scale_two_batch"
        assert r.step_mean == 10 * r.epoch
        assert r.examples_mean == 10 * r.epoch * r.batch_size


def test_exact_estimator_when_no_two_batch(con):
    df = b_simple_by_epoch(con, Filters(experiment=("ex",)))
    assert list(df["epoch"]) == list(EPOCHS)
    assert set(df["probe"]) == {"noise_scale_exact"}
    assert list(df["b_simple_mean"]) == [7.0 * e for e in EPOCHS]


def test_trend_rises(con):
    t = b_simple_trend(b_simple_by_epoch(con, Filters(experiment=("ns",))))
    assert sorted(t["batch_size"]) == list(BATCHES)
    for r in t.itertuples():
        assert (r.first_epoch, r.last_epoch, r.n_epochs) == (1, 4, 4)
        assert r.ratio == pytest.approx(
            (value(r.batch_size, 4, 0) + value(r.batch_size, 4, 1))
            / (value(r.batch_size, 1, 0) + value(r.batch_size, 1, 1))
        )
        assert r.ratio > 1


def test_empty(con):
    df = b_simple_by_epoch(con, Filters(experiment=("none-such",)))
    assert df.empty
    assert b_simple_trend(df).empty


def test_the_duckdb_macro_gives_the_same_rows(tmp_path):
    """`FROM b_simple_by_epoch()` in batchlab.duckdb (warehouse/macros.py) = the function."""
    import duckdb
    import pandas as pd

    from warehouse.db import write_duckdb_file

    root = build(str(tmp_path / "runs"))
    write_duckdb_file(root)
    c = connect(root)
    outside = duckdb.connect(f"{root}/batchlab.duckdb", read_only=True)
    try:
        got = outside.execute("FROM b_simple_by_epoch()").fetchdf()
        want = b_simple_by_epoch(c, Filters())
        assert len(want) == len(BATCHES) * len(EPOCHS) + len(EPOCHS)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    finally:
        outside.close()
        c.close()


def test_advise_carries_b_simple_per_group(tmp_path):
    from warehouse.advice import Target, advise

    c = connect(build(str(tmp_path / "runs")))
    try:
        res = advise(c, Filters(experiment=("ns",)), Target("val_error", 0.5), n_resamples=0)
        (a,) = res
        rows = a["b_simple"]
        assert len(rows) == len(BATCHES) * len(EPOCHS)
        r = next(r for r in rows if r["batch_size"] == 128 and r["epoch"] == 3)
        assert r["b_simple_mean"] == pytest.approx((value(128, 3, 0) + value(128, 3, 1)) / 2)
    finally:
        c.close()
