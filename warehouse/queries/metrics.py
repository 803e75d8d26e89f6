"""User-defined metrics: the long-format `metrics` table of custom trainables (experiment,
trial_id, epoch, step, name, value). Older warehouses have no such view: every query checks
for it at run time and answers an empty frame (with its columns) without it."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from warehouse.queries.base import KEY, Filters, fetch, seed_stat, sel_cte

VIEW = "metrics"
COLUMNS = ("experiment", "trial_id", "epoch", "step", "name", "value")
CURVE_COLUMNS = (*KEY, "name", "epoch", "step", "value_mean", "value_std", "n_seeds")


def has_view(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the connection has a table or view called `name`."""
    got = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = $n", {"n": name}
    ).fetchone()
    return bool(got and got[0])


def metrics_available(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the `metrics` view exists with the table's columns."""
    if not has_view(con, VIEW):
        return False
    cols = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $n", {"n": VIEW}
    ).fetchdf()
    return set(cols["column_name"]) >= set(COLUMNS)


def metric_names(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """The names of the user metrics logged by the selected trials (column `name`)."""
    if not metrics_available(con):
        return pd.DataFrame({"name": pd.Series(dtype="object")})
    sel, params = sel_cte(f)
    return fetch(
        con,
        f"""WITH {sel}
        SELECT DISTINCT m.name FROM metrics m
        SEMI JOIN sel ON sel.experiment = m.experiment AND sel.trial_id = m.trial_id
        WHERE m.name IS NOT NULL
        ORDER BY 1""",
        params,
    )


def metric_curves(
    con: duckdb.DuckDBPyConnection, f: Filters, metric: str | None = None
) -> pd.DataFrame:
    """Per configuration, metric (`name`: `metric`, or every one) and epoch: the metric's
    value at the epoch's last logged step, mean and std over seeds (`value_mean`,
    `value_std`, `n_seeds`), with `step` (the median over seeds of that last step)."""
    if not metrics_available(con):
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    sel, params = sel_cte(f)
    key = ", ".join(f"sel.{k}" for k in KEY)
    cols = ", ".join(KEY)
    only = ""
    if metric is not None:
        only, params = "AND m.name = $metric", {**params, "metric": metric}
    return fetch(
        con,
        f"""WITH {sel},
        per_trial AS (
            SELECT {key}, sel.trial_id, m.name, m.epoch, max(m.step) AS step,
                   arg_max(m.value, coalesce(m.step, 0)) AS value
            FROM metrics m JOIN sel ON sel.experiment = m.experiment AND sel.trial_id = m.trial_id
            WHERE m.epoch IS NOT NULL {only}
            GROUP BY ALL
        )
        SELECT {cols}, name, epoch, median(step) AS step, {seed_stat("value", "value")},
               count(*) AS n_seeds
        FROM per_trial GROUP BY ALL ORDER BY {cols}, name, epoch""",
        params,
    )


def trial_metrics(con: duckdb.DuckDBPyConnection, trial_ids: Sequence[str]) -> pd.DataFrame:
    """Every user-metric row of these trials (empty without the view)."""
    if not metrics_available(con):
        return pd.DataFrame(columns=sorted(COLUMNS))
    return fetch(
        con,
        """SELECT experiment, trial_id, name, epoch, step, value FROM metrics
        WHERE trial_id IN (SELECT unnest($ids))
        ORDER BY name, trial_id, step NULLS LAST, epoch""",
        {"ids": list(trial_ids)},
    )
