"""warehouse/macros.py: the named queries as table macros of `batchlab.duckdb`, opened fresh
by the Python DuckDB client, give the app's numbers."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from tests.fixtures.synthetic_warehouse import build
from warehouse.advice import Target, trial_steps
from warehouse.db import connect, write_duckdb_file
from warehouse.macros import MACROS, NAMED
from warehouse.measures import sharpness_measures
from warehouse.queries import NAMED_QUERIES, Filters


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = build(str(tmp_path_factory.mktemp("macros")), ("support",))
    write_duckdb_file(r)
    return r


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal up to row order and float rounding (list columns left out)."""
    assert list(a.columns) == list(b.columns)
    cols = [c for c in a.columns if not c.endswith("_seeds")]
    keys = [c for c in cols if a[c].dtype == object or a[c].dtype == bool]
    a = a[cols].sort_values(keys or cols).reset_index(drop=True)
    b = b[cols].sort_values(keys or cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9)


def test_macros_in_the_duckdb_file_match_the_named_queries(root):
    app = connect(root)
    outside = duckdb.connect(f"{root}/batchlab.duckdb", read_only=True)
    try:
        names = {
            r[0] for r in outside.execute("SELECT function_name FROM duckdb_functions()").fetchall()
        }
        assert set(MACROS) <= names
        for name in NAMED:
            want = NAMED_QUERIES[name](app, Filters())
            got = outside.execute(f"FROM {name}()").fetchdf()
            assert len(want), name  # the fixture exercises every macro
            _same(got, want)
        cbs = outside.execute(
            "SELECT b_crit FROM critical_batch_size() WHERE experiment = 'support' "
            "AND lr_scaling = 'none' AND NOT batchnorm AND workers = 1 AND fit_ok"
        ).fetchall()
        assert cbs and all(b > 0 for (b,) in cbs)
        _same(
            outside.execute("FROM advise_trial_steps()").fetchdf(),
            trial_steps(app, Filters(), Target()),
        )
        _same(
            outside.execute("FROM sharpness_measures()").fetchdf(),
            sharpness_measures(app, Filters()),
        )
    finally:
        outside.close()
        app.close()


def test_filtering_a_macro_afterwards_gives_the_filtered_query(root):
    app = connect(root)
    outside = duckdb.connect(f"{root}/batchlab.duckdb", read_only=True)
    try:
        got = outside.execute(
            "FROM steps_to_target() WHERE experiment = 'support' AND lr_scaling = 'linear'"
        ).fetchdf()
        f = Filters(experiment=("support",), lr_scaling=("linear",))
        _same(got, NAMED_QUERIES["steps_to_target"](app, f))
    finally:
        outside.close()
        app.close()
