"""Named queries: one function per question the app and users ask, with bound parameters.

Every function takes a DuckDB connection from `warehouse.db.connect` and a `Filters`
(which trials to include), and returns a pandas DataFrame. Aggregates over seeds report
mean, std and count (`*_mean`, `*_std`, `n_seeds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd


@dataclass(frozen=True)
class Filters:
    """Which trials a query covers; an empty tuple means 'all'."""

    experiment: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    optimizer: tuple[str, ...] = ()
    lr_scaling: tuple[str, ...] = ()
    seed: tuple[int, ...] = ()
    batch_size: tuple[int, ...] = ()
    lr: tuple[float, ...] = ()
    status: tuple[str, ...] = ("completed",)
    extra: dict[str, Any] = field(default_factory=dict)

    def where(self, alias: str = "t") -> tuple[str, dict[str, Any]]:
        """A SQL condition over the trials alias and its bound parameters."""
        conds, params = ["true"], {}
        for name in (
            "experiment",
            "dataset",
            "model",
            "optimizer",
            "lr_scaling",
            "seed",
            "batch_size",
            "lr",
            "status",
        ):
            values = getattr(self, name)
            if values:
                conds.append(f"{alias}.{name} IN (SELECT unnest(${name}))")
                params[name] = list(values)
        return " AND ".join(conds), params


def _q(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    return con.execute(sql, params).fetchdf()


def experiments(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per experiment: trial counts by status and when it last finished."""
    return _q(
        con,
        """
        SELECT experiment,
               count(*) AS trials,
               count(*) FILTER (status = 'completed') AS completed,
               count(*) FILTER (status = 'diverged') AS diverged,
               count(*) FILTER (status = 'failed') AS failed,
               list(DISTINCT dataset ORDER BY dataset) AS datasets,
               list(DISTINCT model ORDER BY model) AS models,
               max(finished_at) AS last_finished_at
        FROM trials GROUP BY experiment ORDER BY experiment
        """,
        {},
    )


def filter_options(
    con: duckdb.DuckDBPyConnection, experiment: tuple[str, ...] = ()
) -> dict[str, list]:
    """Distinct values of every filterable column (within the given experiments)."""
    cond, params = Filters(experiment=experiment, status=()).where()
    out = {}
    for col in (
        "experiment",
        "dataset",
        "model",
        "optimizer",
        "lr_scaling",
        "seed",
        "batch_size",
        "lr",
        "status",
    ):
        df = _q(con, f"SELECT DISTINCT {col} AS v FROM trials t WHERE {cond} ORDER BY v", params)
        out[col] = [v for v in df["v"].tolist() if v is not None]
    return out


def trial_table(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """The trials matching the filters, their grid settings and results."""
    cond, params = f.where()
    return _q(
        con,
        f"""
        SELECT experiment, trial_id, status, stop_reason, dataset, model, optimizer, batch_size,
               lr, scaled_lr, lr_scaling, seed, epochs_run, steps_run, best_val_loss, best_val_acc,
               best_epoch, final_dist_from_init, train_time_s, wall_time_s, diverged_step,
               device_name, host, finished_at
        FROM trials t WHERE {cond}
        ORDER BY experiment, batch_size, lr, lr_scaling, seed
        """,
        params,
    )


def curves(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Per-epoch curves averaged over seeds (F-1, F-30, F-31), with every x axis: epoch,
    iterations (optimizer steps), examples seen and wall time (training seconds)."""
    cond, params = f.where()
    return _q(
        con,
        f"""
        SELECT t.experiment, t.batch_size, t.lr, t.lr_scaling, e.epoch,
               avg(e.step) AS step, avg(e.examples_seen) AS examples_seen,
               avg(e.elapsed_s) AS elapsed_s,
               avg(e.train_loss) AS train_loss_mean, stddev_samp(e.train_loss) AS train_loss_std,
               avg(e.train_loss_eval) AS train_loss_eval_mean,
               stddev_samp(e.train_loss_eval) AS train_loss_eval_std,
               avg(e.val_loss) AS val_loss_mean, stddev_samp(e.val_loss) AS val_loss_std,
               avg(e.val_acc) AS val_acc_mean, stddev_samp(e.val_acc) AS val_acc_std,
               count(*) AS n_seeds
        FROM epochs e JOIN trials t USING (experiment, trial_id)
        WHERE {cond}
        GROUP BY ALL ORDER BY t.experiment, t.lr_scaling, t.lr, t.batch_size, e.epoch
        """,
        params,
    )
