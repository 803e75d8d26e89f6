"""Golden answers of every named query on the hand-made fixture warehouse
(tests/fixtures/synthetic_warehouse.py), plus checks against numbers known by construction.

A deliberate change of a query's output: re-run with BATCHLAB_UPDATE_GOLDEN=1 to rewrite the
expected files under tests/fixtures/golden/, then review the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from warehouse import queries as q
from warehouse.db import connect

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden"
UPDATE = os.environ.get("BATCHLAB_UPDATE_GOLDEN") == "1"
ACCEPT = (
    "if the change is deliberate, accept it with "
    "`BATCHLAB_UPDATE_GOLDEN=1 python -m pytest tests/warehouse/test_queries.py` "
    "and review the diff of tests/fixtures/golden/"
)


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "synthetic_warehouse", FIXTURES / "synthetic_warehouse.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sw = _load_fixture_module()


@pytest.fixture(scope="module")
def fx_root(tmp_path_factory) -> str:
    return sw.build(tmp_path_factory.mktemp("fixture-warehouse") / "runs")


@pytest.fixture(scope="module")
def con(fx_root):
    c = connect(fx_root)
    yield c
    c.close()


def _seed_text(v):
    if not isinstance(v, (list, np.ndarray)):
        return v
    return ";".join(f"{int(p['seed'])}:{float(p['value']):.10g}" for p in v)


def _normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Round-trip through the CSV form the golden files use, rows in a canonical order;
    per-seed lists (`<x>_seeds`) as 'seed:value;...' text."""
    df = df.copy()
    for c in df.columns:
        if df[c].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            df[c] = df[c].map(_seed_text)
    text = df.to_csv(index=False, float_format="%.10g")
    out = pd.read_csv(io.StringIO(text)) if len(df.columns) else df
    if len(out):
        out = out.sort_values(list(out.columns), kind="stable", na_position="last")
    return out.reset_index(drop=True)


@pytest.mark.parametrize("name", sorted(q.NAMED_QUERIES))
def test_golden(name, con):
    got = _normalize(q.NAMED_QUERIES[name](con, q.Filters()))
    path = GOLDEN / f"{name}.csv"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        got.to_csv(path, index=False, float_format="%.10g")
        pytest.skip(f"rewrote {path}")
    assert path.exists(), f"no golden file {path}; {ACCEPT}"
    want = _normalize(pd.read_csv(path))
    try:
        pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9, atol=1e-12)
    except AssertionError as exc:
        raise AssertionError(f"{name}: output differs from {path}:\n{exc}\n{ACCEPT}") from None


def test_named_queries_cover_every_filtered_query():
    """Every public function of warehouse.queries' family modules taking (con, Filters) is
    registered (`warehouse.queries.base` holds the building blocks, not queries)."""
    for name, fn in inspect.getmembers(q, inspect.isfunction):
        family = fn.__module__.startswith(f"{q.__name__}.") and fn.__module__ != q.base.__name__
        if not family or name.startswith("_"):
            continue
        params = list(inspect.signature(fn).parameters)
        if params[:2] == ["con", "f"]:
            assert q.NAMED_QUERIES.get(name) is fn, f"{name} is missing from NAMED_QUERIES"
    for ids, names in q.FINDING_QUERIES.items():
        for n in names:
            assert n in q.NAMED_QUERIES, f"{ids}: unknown query {n}"


def _row(df: pd.DataFrame, **where) -> pd.Series:
    sel = df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"{where}: {len(sel)} rows"
    return sel.iloc[0]


A = {"experiment": "support", "model": "mlp", "lr_scaling": "none", "lr": 0.01, "workers": 1}


def test_known_numbers(con):
    """Numbers fixed by construction (seed noise: +-0.0003 on the loss, x(1 +- 0.001) else)."""
    f = q.Filters(experiment=("support",))
    gen = q.generalization_by_batch_size(con, f)
    r = _row(gen, **A, batch_size=64)
    assert r["min_val_loss_mean"] == pytest.approx(0.35)
    assert r["min_val_loss_std"] == pytest.approx(0.0003 * math.sqrt(2))
    assert r["n_seeds"] == 2
    tm = q.time_by_batch_size(con, f)
    r = _row(tm, **A, batch_size=256)
    assert r["epoch_time_s_mean"] == pytest.approx(2.2)
    assert r["epochs_to_min_mean"] == 7
    assert r["time_to_min_s_mean"] == pytest.approx(7 * 2.2)
    un = q.update_norm_quantiles(con, f)
    r = _row(un, **A, batch_size=32)
    assert r["update_norm_median_mean"] == pytest.approx(3.3e-3)
    assert r["n_steps"] == 2 * 8 * 32
    wk = q.time_by_workers(con, f)
    r = _row(wk, **{**A, "workers": 4}, batch_size=256)
    assert r["speedup"] == pytest.approx(2.2 / 1.1)
    crit = q.critical_batch_size(con, f)
    r = _row(crit, experiment="support", model="mlp", lr_scaling="none", workers=1)
    # steps = round(40 + 4000 / B): the fit recovers S_min ~ 40, B_crit ~ 100.
    assert r["fit_ok"] and r["s_min"] == pytest.approx(40, abs=1)
    assert r["b_crit"] == pytest.approx(100, rel=0.02)
    assert r["b_simple_mean"] == pytest.approx(100)
    lrb = q.best_lr_by_batch_size(con, f)
    best = {
        int(b): lr
        for b, lr in lrb[
            (lrb["model"] == "mlp") & (lrb["lr_scaling"] == "none") & (lrb["workers"] == 1)
        ][["batch_size", "lr"]].itertuples(index=False)
    }
    assert best == {32: 0.01, 64: 0.01, 128: 0.08, 256: 0.08}
    div = q.diverged_trials(con, f)
    assert len(div) == 4 and set(div["diverged_step"]) == {5} and set(div["lr"]) == {1.0}
    ratio = q.epoch_distance_ratio(con, f)
    r = _row(ratio, **A, epoch=1)
    assert (r["small_batch_size"], r["large_batch_size"]) == (32, 256)
    assert r["ratio"] == pytest.approx(0.3 / 0.04)
    layers = q.distance_by_layer(con, f)
    r = _row(layers, **A, batch_size=32, layer="0.weight")
    assert r["dist_from_init_mean"] == pytest.approx(0.7 * 2.0) and r["epoch"] == 8
    one = q.landscape_1d(con, f)
    assert set(one["analysis_id"]) == {"interp-s0", "interp-s1"}
    assert set(one["batch_size_a"]) == {32} and set(one["batch_size_b"]) == {256}
    assert one["alpha"].min() == -1 and one["alpha"].max() == 2
    two = q.landscape_2d(con, f)
    assert len(two) == 4 * 2 * 81 and two["beta"].notna().all()
    sh = q.sharpness_by_batch_size(con, f)
    r = _row(sh, **A, batch_size=256, probe="keskar_sharpness", eps=1e-3)
    assert r["value_mean"] == pytest.approx(8.0)


def test_filters_are_bound_parameters(con):
    """Values never enter the SQL text: a hostile value matches nothing and breaks nothing."""
    evil = "x' OR '1'='1"
    f = q.Filters(experiment=(evil,), model=("mlp'; DROP VIEW trials; --",))
    cond, params = f.where()
    assert evil not in cond and "$experiment" in cond and params["experiment"] == [evil]
    for name in ("trial_table", "curves", "generalization_by_batch_size", "landscape_1d"):
        assert q.NAMED_QUERIES[name](con, f).empty, name
    assert len(q.trial_table(con, q.Filters())) > 0  # the views are intact


def test_filters_select(con):
    all_ = q.generalization_by_batch_size(con, q.Filters())
    one = q.generalization_by_batch_size(
        con, q.Filters(experiment=("support",), model=("cnn",), seed=(0,))
    )
    assert set(all_["experiment"]) == {"support", "contradict", "sparse"}
    assert set(one["experiment"]) == {"support"} and set(one["model"]) == {"cnn"}
    assert (one["n_seeds"] == 1).all() and one["min_val_loss_std"].isna().all()
    assert len(q.divergence_by_lr(con, q.Filters(experiment=("support",)))) > len(
        q.generalization_by_batch_size(con, q.Filters(experiment=("support",)))
    )


def test_filters_hashable():
    f = q.Filters(experiment=("a",))
    assert hash(f) == hash(dataclasses.replace(f)) and f == q.Filters(experiment=("a",))


def test_empty_warehouse(tmp_path):
    """Every named query answers an empty root with an empty frame, not an error."""
    c = connect(str(tmp_path / "empty"))
    for name, fn in q.NAMED_QUERIES.items():
        df = fn(c, q.Filters())
        assert df.empty, name
        assert len(df.columns) > 0, name


def test_same_answers_after_compaction(tmp_path):
    """Every named query answers the same on the compacted warehouse (the golden files)."""
    from warehouse.compact import compact

    root = sw.build(tmp_path / "runs")
    compact(root, min_rows=1, grace_s=0)
    c = connect(root)
    for name, fn in q.NAMED_QUERIES.items():
        got = _normalize(fn(c, q.Filters()))
        want = _normalize(pd.read_csv(GOLDEN / f"{name}.csv"))
        pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9, atol=1e-12)


def test_best_point_probes_are_not_counted_as_the_final_point(tmp_path):
    from warehouse.db import connect as connect_root
    from warehouse.layout import Layout
    from warehouse.store import write_trial

    layout = Layout.open(str(tmp_path))
    row = {
        "trial_id": "t1",
        "config_hash": "h",
        "status": "completed",
        "batch_size": 32,
        "lr": 0.1,
        "scaled_lr": 0.1,
        "lr_scaling": "none",
        "base_batch_size": 32,
        "seed": 0,
        "dataset": "d",
        "model": "m",
        "optimizer": "sgd",
        "stop_reason": "early_stopping",
    }
    probes = [
        {
            "epoch": 2,
            "probe": "hessian_top_eig",
            "value": 1.0,
            "status": "ok",
            "measured_at": "final",
        },
        {
            "epoch": 2,
            "probe": "hessian_top_eig",
            "value": 3.0,
            "status": "ok",
            "measured_at": "best",
        },
    ]
    write_trial(layout, "e", row, {"probes": probes, "epochs": [{"epoch": 2, "val_loss": 0.5}]})
    df = q.sharpness_by_batch_size(connect_root(layout), q.Filters())
    (value,) = df.loc[df["probe"] == "hessian_top_eig", "value_mean"].tolist()
    assert value == 1.0
