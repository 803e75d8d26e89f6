"""Generalization by batch size and lr: the minimum validation loss, the best accuracy and
the train-validation gap (F-2, F-13, F-17, F-18, F-23, F-26 to F-28)."""

from __future__ import annotations

import duckdb
import pandas as pd

from warehouse.queries.base import (
    KEY_SQL,
    Filters,
    best_lr_flag,
    fetch,
    seed_stat,
    sel_cte,
    sel_with_epoch_summaries,
)


def generalization_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-2, F-18, F-26, F-27: minimum validation loss, best validation accuracy and the
    train-validation gap at the best epoch (val loss - train loss; train acc - val acc).
    Per trial from its row's `at_best_*` summaries (from `epochs` for older rows)."""
    sel, params = sel_with_epoch_summaries(con, f)
    return fetch(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT s.*, s.at_best_val_loss - s.at_best_train_loss_eval AS gap_loss,
                   s.at_best_train_acc_eval - s.at_best_val_acc AS gap_acc,
                   s.at_best_train_loss_eval AS train_loss_at_best
            FROM sel s
        )
        SELECT {KEY_SQL}, avg(scaled_lr) AS scaled_lr,
               {seed_stat("best_val_loss", "min_val_loss", seeds=True)},
               {seed_stat("best_val_acc", "best_val_acc", seeds=True)},
               {seed_stat("train_loss_at_best", "train_loss_at_best")},
               {seed_stat("gap_loss", "gap_loss", seeds=True)},
               {seed_stat("gap_acc", "gap_acc")},
               count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {KEY_SQL}
        """,
        params,
    )


def lr_batch_table(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-13, F-17, F-23: minimum validation loss for every lr x batch size (per lr rule),
    with `is_best_lr` marking each batch size's best lr (lowest mean) within its group."""
    sel, params = sel_cte(f)
    return fetch(
        con,
        f"""
        WITH {sel},
        agg AS (
            SELECT {KEY_SQL}, avg(scaled_lr) AS scaled_lr,
                   {seed_stat("best_val_loss", "min_val_loss")},
                   {seed_stat("best_val_acc", "best_val_acc")},
                   count(*) AS n_seeds
            FROM sel GROUP BY ALL
        )
        SELECT *, {best_lr_flag("min_val_loss_mean")}
        FROM agg ORDER BY {KEY_SQL}
        """,
        params,
    )


def best_lr_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-17: each batch size's best lr (lowest mean minimum validation loss) per lr rule."""
    df = lr_batch_table(con, f)
    return df[df["is_best_lr"]].drop(columns="is_best_lr").reset_index(drop=True)
