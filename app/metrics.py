"""User-defined metrics (the long-format `metrics` table of custom trainables: trial_id,
experiment, epoch, step, name, value). Older warehouses have no such view: every function
checks for it at run time and answers "none" without it."""

from __future__ import annotations

import duckdb
import pandas as pd
import streamlit as st

from app.common import _connection, storage_root, version
from app.disk_cache import persisted
from warehouse import queries as q

VIEW = "metrics"
_COLUMNS = {"experiment", "trial_id", "epoch", "step", "name", "value"}


def has_view(c: duckdb.DuckDBPyConnection, name: str) -> bool:
    got = c.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = $n", {"n": name}
    ).fetchone()
    return bool(got and got[0])


def _usable(c: duckdb.DuckDBPyConnection) -> bool:
    if not has_view(c, VIEW):
        return False
    cols = c.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $n", {"n": VIEW}
    ).fetchdf()
    return set(cols["column_name"]) >= _COLUMNS


@st.cache_data(max_entries=64, show_spinner=False)
@persisted
def _names(root: str, v: str, f: q.Filters) -> list[str]:
    c = _connection(root, v).cursor()
    if not _usable(c):
        return []
    sel, params = q.sel_cte(f)
    df = c.execute(
        f"""WITH {sel}
        SELECT DISTINCT m.name FROM metrics m
        SEMI JOIN sel ON sel.experiment = m.experiment AND sel.trial_id = m.trial_id
        ORDER BY 1""",
        params,
    ).fetchdf()
    return [str(n) for n in df["name"].tolist() if n is not None]


def metric_names(f: q.Filters) -> list[str]:
    """The names of the user metrics logged by the selected trials ([] without the view)."""
    return _names(storage_root(), version(), f)


@st.cache_data(max_entries=128, show_spinner=False)
@persisted
def _curves(root: str, v: str, f: q.Filters, name: str) -> pd.DataFrame:
    c = _connection(root, v).cursor()
    sel, params = q.sel_cte(f)
    key = ", ".join(f"sel.{k}" for k in q.KEY)
    return c.execute(
        f"""WITH {sel},
        per_trial AS (
            SELECT {key}, sel.trial_id, m.epoch, max(m.step) AS step,
                   arg_max(m.value, coalesce(m.step, 0)) AS value
            FROM metrics m JOIN sel ON sel.experiment = m.experiment AND sel.trial_id = m.trial_id
            WHERE m.name = $name AND m.epoch IS NOT NULL
            GROUP BY ALL
        )
        SELECT {", ".join(q.KEY)}, epoch, median(step) AS step, {q.seed_stat("value", "value")},
               count(*) AS n_seeds
        FROM per_trial GROUP BY ALL ORDER BY {", ".join(q.KEY)}, epoch""",
        {**params, "name": name},
    ).fetchdf()


def metric_curves(f: q.Filters, name: str) -> pd.DataFrame:
    """Per configuration and epoch: the metric's value at the epoch's last logged step,
    mean and std over seeds (`value_mean`, `value_std`, `n_seeds`), with `step`."""
    return _curves(storage_root(), version(), f, name)


@st.cache_data(max_entries=128, show_spinner=False)
@persisted
def _trial_metrics(root: str, v: str, trial_ids: tuple[str, ...]) -> pd.DataFrame:
    c = _connection(root, v).cursor()
    if not _usable(c):
        return pd.DataFrame(columns=sorted(_COLUMNS))
    return c.execute(
        """SELECT experiment, trial_id, name, epoch, step, value FROM metrics
        WHERE trial_id IN (SELECT unnest($ids))
        ORDER BY name, trial_id, step NULLS LAST, epoch""",
        {"ids": list(trial_ids)},
    ).fetchdf()


def trial_metrics(trial_ids: list[str]) -> pd.DataFrame:
    """Every user-metric row of these trials (empty without the view)."""
    return _trial_metrics(storage_root(), version(), tuple(trial_ids))
