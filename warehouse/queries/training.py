"""How training went, by batch size: curves (F-1, F-30, F-31), time (F-3 to F-6, F-14),
steps to a target and the critical batch size, divergence (F-25)."""

from __future__ import annotations

import dataclasses

import duckdb
import pandas as pd

from warehouse.queries.base import (
    GROUP,
    GROUP_SQL,
    KEY,
    KEY_SQL,
    Filters,
    best_lr_flag,
    fetch,
    per_config_epoch,
    seed_stat,
    sel_cte,
    sel_with_epoch_summaries,
)


def curves(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Per-epoch curves averaged over seeds (F-1, F-30, F-31), with every x axis: epoch,
    iterations (optimizer steps), examples seen and wall time (training seconds)."""
    sel, params = sel_cte(f)
    return fetch(
        con,
        per_config_epoch(
            sel,
            f"""avg(e.step) AS step, avg(e.examples_seen) AS examples_seen,
               avg(e.elapsed_s) AS elapsed_s,
               {seed_stat("e.train_loss", "train_loss")},
               {seed_stat("e.train_loss_eval", "train_loss_eval")},
               {seed_stat("e.val_loss", "val_loss")},
               {seed_stat("e.val_acc", "val_acc")},
               count(*) AS n_seeds""",
        ),
        params,
    )


def train_loss_at_common_epoch(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-1: training loss after the same number of epochs for every batch size of a group:
    the last epoch that every trial of the group (`GROUP`, all batch sizes) reached.
    `train_loss` is the full training set in eval mode, or the mean mini-batch loss when
    that was not measured (`train_loss_source` says which)."""
    sel, params = sel_cte(f)
    return fetch(
        con,
        f"""
        WITH {sel},
        ep AS (
            SELECT s.{", s.".join(KEY)}, s.seed, e.epoch,
                   CASE WHEN isfinite(e.train_loss_eval) THEN e.train_loss_eval
                        ELSE e.train_loss END AS train_loss,
                   isfinite(e.train_loss_eval) AS eval_mode
            FROM sel s JOIN epochs_raw e USING (experiment, trial_id)
        ),
        last AS (
            SELECT {GROUP_SQL}, min(max_epoch) AS epoch FROM (
                SELECT {KEY_SQL}, seed, max(epoch) AS max_epoch FROM ep GROUP BY ALL
            ) GROUP BY ALL
        )
        SELECT {KEY_SQL}, last.epoch, {seed_stat("ep.train_loss", "train_loss")},
               CASE WHEN bool_and(ep.eval_mode) THEN 'eval' ELSE 'minibatch' END
                   AS train_loss_source,
               count(*) AS n_seeds
        FROM ep JOIN last USING ({GROUP_SQL}, epoch)
        GROUP BY ALL ORDER BY {KEY_SQL}
        """,
        params,
    )


def time_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-3, F-4, F-5, F-14: time per epoch (mean training seconds per epoch), epochs to the
    minimum validation loss (best_epoch), training time to the minimum (cumulative training
    seconds at best_epoch), total training and wall time, throughput. Per trial from its
    row's `mean_*` / `at_best_*` summaries (from `epochs` for older rows)."""
    sel, params = sel_with_epoch_summaries(con, f)
    return fetch(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT s.*, s.mean_epoch_time_s AS epoch_time_s,
                   s.mean_examples_per_s AS examples_per_s, s.at_best_elapsed_s AS time_to_min_s,
                   CASE WHEN s.best_epoch >= 1 THEN s.best_epoch END AS epochs_to_min
            FROM sel s
        )
        SELECT {KEY_SQL}, avg(scaled_lr) AS scaled_lr,
               {seed_stat("epoch_time_s", "epoch_time_s", seeds=True)},
               {seed_stat("epochs_to_min", "epochs_to_min", seeds=True)},
               {seed_stat("time_to_min_s", "time_to_min_s", seeds=True)},
               {seed_stat("train_time_s", "train_time_s")},
               {seed_stat("wall_time_s", "wall_time_s")},
               {seed_stat("examples_per_s", "examples_per_s")},
               avg(epochs_run) AS epochs_run_mean,
               count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {KEY_SQL}
        """,
        params,
    )


def time_by_workers(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-6: time per epoch by data-parallel worker count, with the speedup over the same
    configuration on one worker (time_1 / time_w; > 1 is faster). Empty speedup (NULL) when
    the single-worker configuration is not in the selection."""
    per = time_by_batch_size(con, f)
    if per.empty:
        return per.assign(speedup=pd.Series(dtype=float))
    cfg = [c for c in KEY if c != "workers"]
    one = per[per["workers"] == 1][[*cfg, "epoch_time_s_mean", "epoch_time_s_std"]]
    one = one.rename(columns={"epoch_time_s_mean": "one_mean", "epoch_time_s_std": "one_std"})
    out = per.merge(one, on=cfg, how="left")
    out["speedup"] = out["one_mean"] / out["epoch_time_s_mean"]
    cols = [*KEY, "epoch_time_s_mean", "epoch_time_s_std", "time_to_min_s_mean"]
    cols += ["time_to_min_s_std", "one_mean", "one_std", "speedup", "n_seeds"]
    return out[cols].rename(
        columns={"one_mean": "epoch_time_1_worker_s_mean", "one_std": "epoch_time_1_worker_s_std"}
    )


def steps_to_target(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Steps (optimizer updates) and examples (steps x batch size) to the validation-error
    target, over the seeds that reached it (`n_reached` of `n_seeds`), and whether this lr is
    the batch size's best (fewest mean steps) within its group (`is_best_lr`)."""
    sel, params = sel_cte(f)
    return fetch(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT s.*, CASE WHEN s.steps_to_target >= 0 THEN s.steps_to_target END AS steps
            FROM sel s
        ),
        agg AS (
            SELECT {KEY_SQL}, avg(scaled_lr) AS scaled_lr,
                   {seed_stat("steps", "steps_to_target")},
                   {seed_stat("steps * batch_size", "examples_to_target")},
                   count(steps) AS n_reached, count(*) AS n_seeds
            FROM per GROUP BY ALL
        )
        SELECT *, {best_lr_flag("steps_to_target_mean")}
        FROM agg ORDER BY {KEY_SQL}
        """,
        params,
    )


def critical_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Critical batch size from the steps-to-target grid (SCIENCE.md; McCandlish et al.):
    per group (lr tuned: each batch size's fewest mean steps over lrs), the least-squares fit
    of S = S_min + E_min / B, which is (S/S_min - 1)(E/E_min - 1) = 1 with E = B S;
    B_crit = E_min / S_min examples. `fit_ok` needs >= 3 batch sizes and S_min, E_min > 0.
    `b_simple_mean` is the measured noise scale of the same trials (two-batch estimator,
    else the exact one), for comparison."""
    sel, params = sel_cte(f)
    cfg = [c for c in GROUP if c != "lr"]
    g = ", ".join(cfg)
    return fetch(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT {g}, batch_size, lr, avg(steps_to_target) AS steps
            FROM sel WHERE steps_to_target >= 0 GROUP BY ALL
        ),
        tuned AS (SELECT {g}, batch_size, min(steps) AS steps FROM per GROUP BY ALL),
        fit AS (
            SELECT {g}, regr_intercept(steps, 1.0 / batch_size) AS s_min,
                   regr_slope(steps, 1.0 / batch_size) AS e_min,
                   regr_r2(steps, 1.0 / batch_size) AS r2,
                   count(*) AS n_batch_sizes, min(batch_size) AS min_batch_size,
                   max(batch_size) AS max_batch_size
            FROM tuned GROUP BY ALL
        ),
        ns AS (
            SELECT {", ".join("s." + c for c in cfg)},
                   coalesce(avg(p.value) FILTER (p.probe = 'noise_scale_two_batch'),
                            avg(p.value) FILTER (p.probe = 'noise_scale_exact')) AS b_simple_mean,
                   count(DISTINCT s.trial_id) AS n_noise_trials
            FROM sel s JOIN probes_raw p USING (experiment, trial_id)
            WHERE p.probe IN ('noise_scale_two_batch', 'noise_scale_exact')
              AND coalesce(p.status, 'ok') = 'ok' AND isfinite(p.value)
              AND coalesce(p.measured_at, 'final') <> 'best'  -- measure.at: best is not the final point
            GROUP BY ALL
        )
        SELECT fit.*, e_min / nullif(s_min, 0) AS b_crit,
               n_batch_sizes >= 3 AND s_min > 0 AND e_min > 0 AS fit_ok,
               ns.b_simple_mean, coalesce(ns.n_noise_trials, 0) AS n_noise_trials
        FROM fit LEFT JOIN ns USING ({g})
        ORDER BY {g}
        """,
        params,
    )


def diverged_trials(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-25: the diverged trials of the selection (whatever its status filter) and the
    optimizer step at which each diverged."""
    cond, params = dataclasses.replace(f, status=("diverged",)).where("t")
    return fetch(
        con,
        f"""
        SELECT experiment, trial_id, dataset, model, optimizer, batch_size, lr, scaled_lr,
               lr_scaling, seed, diverged_step, epochs_run, steps_run, stop_reason,
               json_extract(config_json, '$.grad_clip_norm') AS grad_clip_norm
        FROM trials t WHERE {cond}
        ORDER BY experiment, lr, batch_size, seed
        """,
        params,
    )


def divergence_by_lr(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-25: per configuration (all statuses), how many trials diverged and the median step
    at which they did."""
    sel, params = sel_cte(dataclasses.replace(f, status=()))
    return fetch(
        con,
        f"""
        WITH {sel}
        SELECT {KEY_SQL}, avg(scaled_lr) AS scaled_lr, count(*) AS n_trials,
               count(*) FILTER (status = 'diverged') AS n_diverged,
               count(*) FILTER (status = 'diverged') / count(*) AS diverged_fraction,
               median(diverged_step) FILTER (status = 'diverged' AND diverged_step >= 0)
                   AS diverged_step_median
        FROM sel GROUP BY ALL ORDER BY {KEY_SQL}
        """,
        params,
    )
