"""The gradient noise scale B_simple over training (McCandlish et al. 2018, docs/advise.md).

The noise-scale probes (`noise_scale_two_batch`, else `noise_scale_exact`; workers/probes)
write one row per probed epoch when `measure.probe_every_epochs` is set (else one at the end). B_simple
is expected to rise as the loss falls (McCandlish et al. fig. 4), so a value at the end of
training alone overstates the batch size that was efficient early on.

- `b_simple_by_epoch(con, f)`: per setting (the named queries' `GROUP`, lr included), batch
  size and probed epoch, the mean B_simple over seeds with its std and seed count, the mean
  step and examples seen at that epoch;
- `b_simple_trend(df)`: per setting and batch size, B_simple at its first and its last probed
  epoch and their ratio (> 1: it rose).

Measured at the weights after the epoch's last step (`measured_at` epoch or final; the
`best` point is left out). Pure DuckDB + pandas: no torch, no Ray.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pandas as pd

from warehouse.capture import selection_cte
from warehouse.queries import Filters

NOISE_PROBES = ("noise_scale_two_batch", "noise_scale_exact")
SETTING = (
    "experiment",
    "dataset",
    "model",
    "batchnorm",
    "optimizer",
    "lr_scaling",
    "workers",
    "lr",
)


def b_simple_by_epoch_sql(f: Filters | None = None) -> tuple[str, dict[str, Any]]:
    """(SQL, parameters) of `b_simple_by_epoch`."""
    sel, params = selection_cte(f or Filters())
    cols = ", ".join(f"s.{c}" for c in SETTING)
    probes = ", ".join(f"'{p}'" for p in NOISE_PROBES)
    sql = f"""
        WITH {sel},
        v AS (
            SELECT {cols}, s.scaled_lr, s.batch_size, s.seed, s.trial_id, p.epoch, p.probe,
                   avg(p.value) AS value
            FROM sel s JOIN probes_raw p USING (experiment, trial_id)
            WHERE p.probe IN ({probes}) AND coalesce(p.status, 'ok') = 'ok'
              AND isfinite(p.value) AND coalesce(p.measured_at, 'final') <> 'best'
            GROUP BY ALL
        ),
        -- per trial one estimator: the two-batch one where it ran, else the exact one
        p AS (
            SELECT * FROM v QUALIFY probe = max(probe) OVER (
                PARTITION BY experiment, trial_id, lr_scaling)
        ),
        e AS (
            SELECT e.experiment, e.trial_id, e.epoch, max(e.step) AS step
            FROM epochs_raw e SEMI JOIN p USING (experiment, trial_id) GROUP BY ALL
        )
        SELECT {", ".join(SETTING)}, batch_size, epoch, any_value(probe) AS probe,
               avg(scaled_lr) AS scaled_lr, avg(value) AS b_simple_mean,
               stddev_samp(value) AS b_simple_std, count(*) AS n_seeds,
               avg(step) AS step_mean, avg(step * batch_size) AS examples_mean
        FROM p LEFT JOIN e USING (experiment, trial_id, epoch)
        GROUP BY ALL
        ORDER BY ALL
    """
    return sql, params


def b_simple_by_epoch(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """B_simple per setting, batch size and probed epoch (module docstring)."""
    sql, params = b_simple_by_epoch_sql(f)
    return con.execute(sql, params).fetchdf()


def b_simple_trend(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting and batch size of `b_simple_by_epoch`'s rows: the first and last probed
    epoch, B_simple there, their ratio, and the number of probed epochs."""
    cols = [*SETTING, "batch_size"]
    out = [
        "first_epoch",
        "last_epoch",
        "b_simple_first",
        "b_simple_last",
        "ratio",
        "n_epochs",
    ]
    if df.empty:
        return pd.DataFrame(columns=[*cols, *out])
    rows = []
    for key, g in df.sort_values("epoch").groupby(cols, dropna=False, sort=True):
        first, last = g.iloc[0], g.iloc[-1]
        rows.append(
            {
                **dict(zip(cols, key, strict=True)),
                "first_epoch": int(first["epoch"]),
                "last_epoch": int(last["epoch"]),
                "b_simple_first": float(first["b_simple_mean"]),
                "b_simple_last": float(last["b_simple_mean"]),
                "ratio": float(last["b_simple_mean"] / first["b_simple_mean"])
                if first["b_simple_mean"] > 0
                else float("nan"),
                "n_epochs": int(g["epoch"].nunique()),
            }
        )
    return pd.DataFrame(rows)


def b_simple_rows(df: pd.DataFrame, group: dict[str, Any]) -> list[dict[str, Any]]:
    """`b_simple_by_epoch`'s rows of one advice group (its columns that `df` has; every lr),
    as records: batch size, lr, epoch, B_simple mean / std, seeds, examples seen."""
    for c, v in group.items():
        if c in df.columns and v is not None:
            df = df[df[c] == v]
    cols = ["batch_size", "lr", "epoch", "b_simple_mean", "b_simple_std", "n_seeds"]
    return df[[*cols, "examples_mean"]].to_dict(orient="records") if len(df) else []
