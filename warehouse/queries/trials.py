"""What was run: the experiments, the filter choices, the trials table."""

from __future__ import annotations

import duckdb
import pandas as pd

from warehouse.queries.base import Filters, fetch


def experiments(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per experiment: trial counts by status and when it last finished."""
    return fetch(
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
        df = fetch(con, f"SELECT DISTINCT {col} AS v FROM trials t WHERE {cond} ORDER BY v", params)
        out[col] = [v for v in df["v"].tolist() if v is not None]
    return out


def trial_table(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """The trials matching the filters, their grid settings and results."""
    cond, params = f.where()
    return fetch(
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
