"""Named queries: one function per question the app and users ask, with bound parameters.

Every function takes a DuckDB connection from `warehouse.db.connect` and a `Filters`
(which trials to include), and returns a pandas DataFrame. Values are bound parameters,
never pasted into the SQL text.

Aggregation over seeds: trials that share a configuration key (`KEY`: experiment, dataset,
model, batchnorm, optimizer, lr_scaling, lr, workers, batch_size) are the seeds of one
configuration; each query computes its statistic per trial first, then reports `<x>_mean`,
`<x>_std` (sample std over seeds; NULL with one seed) and `n_seeds` (trials in the group).
Non-finite values (NaN from a disabled measurement) are left out of means and stds.
`workers` is `data_parallel_workers` (1 when unset). `lr` is the grid's lr before the
scaling rule; `scaled_lr` is the peak lr the trials used.

Every query starts from the CTE `sel` (committed trials, filtered) and joins it with the
`<table>_raw` views: an inner join with committed trials keeps exactly the rows the
committed views (`epochs`, `steps`, ...) hold, without their second semi-join on `trials`.

`NAMED_QUERIES` maps every query that takes `(con, Filters)` to its function, and
`FINDING_QUERIES` says which queries back which finding (F-n in FINDINGS.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from warehouse.summaries import AT_BEST, HIST_BINS_PER_DECADE, MEANS


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
    trial_id: tuple[str, ...] = ()  # the explorer's selected runs
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
            "trial_id",
            "status",
        ):
            values = getattr(self, name)
            if values:
                conds.append(f"{alias}.{name} IN (SELECT unnest(${name}))")
                params[name] = list(values)
        return " AND ".join(conds), params

    def __hash__(self) -> int:  # `extra` is a dict; hash the rest (st.cache_data keys on it)
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)[:-1]))


def _q(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    return con.execute(sql, params).fetchdf()


# The configuration key: trials equal on these are seeds of one configuration.
GROUP = ("experiment", "dataset", "model", "batchnorm", "optimizer", "lr_scaling", "lr", "workers")
KEY = (*GROUP, "batch_size")
_KEY = ", ".join(KEY)
_GROUP = ", ".join(GROUP)


def _sel(f: Filters) -> tuple[str, dict[str, Any]]:
    """CTE `sel`: the filtered trials with the key columns normalized (no NULL keys).

    Equivalent trials are shared between lr rules: at `batch_size == base_batch_size` every
    rule gives the grid lr (`scaled_lr == lr`, checked), so such a trial is the same training
    under `none`, `linear` and `sqrt`; it appears once under every lr rule its setting (the
    other `GROUP` columns) was run with, and the same training run twice (same setting,
    batch size and seed) appears once (fixed lr first, then the lowest trial_id). The
    lr-rule filter applies after this."""
    rules = f.lr_scaling
    cond, params = dataclasses.replace(f, lr_scaling=()).where("t")
    cfg = ", ".join(c for c in GROUP if c != "lr_scaling")
    keep = "WHERE lr_scaling IN (SELECT unnest($lr_scaling))" if rules else ""
    if rules:
        params["lr_scaling"] = list(rules)
    return (
        f"""sel AS (
            WITH t0 AS (
                SELECT t.* EXCLUDE (batchnorm), coalesce(t.batchnorm, false) AS batchnorm,
                       coalesce(t.data_parallel_workers, 1) AS workers,
                       t.batch_size = t.base_batch_size
                           AND abs(t.scaled_lr - t.lr) <= 1e-9 * abs(t.lr) AS equivalent_
                FROM trials t WHERE {cond}
            ),
            rules_ AS (SELECT DISTINCT {cfg}, lr_scaling AS rule_ FROM t0),
            one_ AS (
                SELECT * FROM t0 WHERE equivalent_
                QUALIFY row_number() OVER (
                    PARTITION BY {cfg}, batch_size, seed
                    ORDER BY lr_scaling <> 'none', lr_scaling, trial_id) = 1
            ),
            all_ AS (
                SELECT * FROM t0 WHERE NOT coalesce(equivalent_, false)
                UNION ALL BY NAME
                SELECT one_.* REPLACE (rules_.rule_ AS lr_scaling)
                FROM one_ JOIN rules_ USING ({cfg})
            )
            SELECT * EXCLUDE (equivalent_) FROM all_ {keep}
        )""",
        params,
    )


def _stat(expr: str, name: str, *, seeds: bool = False) -> str:
    """Mean and sample std over seeds of a per-trial expression, finite values only; with
    `seeds`, also `<name>_seeds`: the per-seed values as a list of {seed, value} (the
    charts' per-seed points), NULL when none is finite."""
    ok = f"isfinite({expr})"
    per = (
        f", list({{'seed': seed, 'value': {expr}}} ORDER BY seed) FILTER (WHERE {ok}) "
        f"AS {name}_seeds"
    )
    return (
        f"avg({expr}) FILTER (WHERE {ok}) AS {name}_mean, "
        f"stddev_samp({expr}) FILTER (WHERE {ok}) AS {name}_std" + (per if seeds else "")
    )


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


def _per_config_epoch(sel: str, aggs: str, where: str = "") -> str:
    """SQL: per configuration (`KEY`) and epoch, the aggregates `aggs` over the `epochs`
    rows (alias `e`) of the trials in `sel`, ordered by key and epoch. Grouped on a dense
    integer id of the configuration instead of its ten key columns (measured: ~20% faster
    at 2M epoch rows), then the key columns are joined back."""
    return f"""
        WITH {sel},
        g AS (SELECT experiment, trial_id, dense_rank() OVER (ORDER BY {_KEY}) AS gid FROM sel),
        k AS (SELECT DISTINCT dense_rank() OVER (ORDER BY {_KEY}) AS gid, {_KEY} FROM sel),
        agg AS (
            SELECT g.gid, e.epoch, {aggs}
            FROM g JOIN epochs_raw e USING (experiment, trial_id)
            {where}
            GROUP BY g.gid, e.epoch
        )
        SELECT k.* EXCLUDE (gid), agg.* EXCLUDE (gid) FROM agg JOIN k USING (gid)
        ORDER BY {_KEY}, epoch
        """


def curves(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Per-epoch curves averaged over seeds (F-1, F-30, F-31), with every x axis: epoch,
    iterations (optimizer steps), examples seen and wall time (training seconds)."""
    sel, params = _sel(f)
    return _q(
        con,
        _per_config_epoch(
            sel,
            f"""avg(e.step) AS step, avg(e.examples_seen) AS examples_seen,
               avg(e.elapsed_s) AS elapsed_s,
               {_stat("e.train_loss", "train_loss")},
               {_stat("e.train_loss_eval", "train_loss_eval")},
               {_stat("e.val_loss", "val_loss")},
               {_stat("e.val_acc", "val_acc")},
               count(*) AS n_seeds""",
        ),
        params,
    )


def train_loss_at_common_epoch(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-1: training loss after the same number of epochs for every batch size of a group:
    the last epoch that every trial of the group (`GROUP`, all batch sizes) reached.
    `train_loss` is the full training set in eval mode, or the mean mini-batch loss when
    that was not measured (`train_loss_source` says which)."""
    sel, params = _sel(f)
    return _q(
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
            SELECT {_GROUP}, min(max_epoch) AS epoch FROM (
                SELECT {_KEY}, seed, max(epoch) AS max_epoch FROM ep GROUP BY ALL
            ) GROUP BY ALL
        )
        SELECT {_KEY}, last.epoch, {_stat("ep.train_loss", "train_loss")},
               CASE WHEN bool_and(ep.eval_mode) THEN 'eval' ELSE 'minibatch' END
                   AS train_loss_source,
               count(*) AS n_seeds
        FROM ep JOIN last USING ({_GROUP}, epoch)
        GROUP BY ALL ORDER BY {_KEY}
        """,
        params,
    )


def generalization_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-2, F-18, F-26, F-27: minimum validation loss, best validation accuracy and the
    train-validation gap at the best epoch (val loss - train loss; train acc - val acc).
    Per trial from its row's `at_best_*` summaries (from `epochs` for older rows)."""
    sel, params = _sel_with_epoch_summaries(con, f)
    return _q(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT s.*, s.at_best_val_loss - s.at_best_train_loss_eval AS gap_loss,
                   s.at_best_train_acc_eval - s.at_best_val_acc AS gap_acc,
                   s.at_best_train_loss_eval AS train_loss_at_best
            FROM sel s
        )
        SELECT {_KEY}, avg(scaled_lr) AS scaled_lr,
               {_stat("best_val_loss", "min_val_loss", seeds=True)},
               {_stat("best_val_acc", "best_val_acc", seeds=True)},
               {_stat("train_loss_at_best", "train_loss_at_best")},
               {_stat("gap_loss", "gap_loss", seeds=True)},
               {_stat("gap_acc", "gap_acc")},
               count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {_KEY}
        """,
        params,
    )


def _sel_with_epoch_summaries(
    con: duckdb.DuckDBPyConnection, f: Filters
) -> tuple[str, dict[str, Any]]:
    """`_sel` whose rows all carry the epoch summaries (`at_best_*`, `mean_*`; schema
    version 2): rows written before them get the same numbers computed from `epochs`, as
    `warehouse.summaries.summarize_epochs` does, so per-trial queries need one code path."""
    sel, params = _sel(f)
    missing = con.execute(
        f"WITH {sel} SELECT count(*) FROM sel WHERE epochs_n IS NULL", params
    ).fetchone()[0]
    if not missing:
        return sel, params
    at_best = [f"at_best_{c}" for c in AT_BEST]
    means = [f"mean_{c}" for c in MEANS]
    computed = ", ".join(
        [f"max(e.{c}) FILTER (WHERE e.epoch = s.best_epoch) AS at_best_{c}" for c in AT_BEST]
        + [f"avg(e.{c}) FILTER (WHERE isfinite(e.{c})) AS mean_{c}" for c in MEANS]
    )
    filled = ", ".join(f"coalesce(s.{c}, x.{c}) AS {c}" for c in (*at_best, *means))
    return (
        sel.replace("sel AS (", "sel0 AS (", 1)
        + f""",
        old AS (
            SELECT s.experiment, s.trial_id, {computed}
            FROM sel0 s JOIN epochs_raw e USING (experiment, trial_id)
            WHERE s.epochs_n IS NULL GROUP BY ALL
        ),
        sel AS (
            SELECT s.* REPLACE ({filled})
            FROM sel0 s LEFT JOIN old x USING (experiment, trial_id)
        )""",
        params,
    )


def time_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-3, F-4, F-5, F-14: time per epoch (mean training seconds per epoch), epochs to the
    minimum validation loss (best_epoch), training time to the minimum (cumulative training
    seconds at best_epoch), total training and wall time, throughput. Per trial from its
    row's `mean_*` / `at_best_*` summaries (from `epochs` for older rows)."""
    sel, params = _sel_with_epoch_summaries(con, f)
    return _q(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT s.*, s.mean_epoch_time_s AS epoch_time_s,
                   s.mean_examples_per_s AS examples_per_s, s.at_best_elapsed_s AS time_to_min_s,
                   CASE WHEN s.best_epoch >= 1 THEN s.best_epoch END AS epochs_to_min
            FROM sel s
        )
        SELECT {_KEY}, avg(scaled_lr) AS scaled_lr,
               {_stat("epoch_time_s", "epoch_time_s", seeds=True)},
               {_stat("epochs_to_min", "epochs_to_min", seeds=True)},
               {_stat("time_to_min_s", "time_to_min_s", seeds=True)},
               {_stat("train_time_s", "train_time_s")},
               {_stat("wall_time_s", "wall_time_s")},
               {_stat("examples_per_s", "examples_per_s")},
               avg(epochs_run) AS epochs_run_mean,
               count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {_KEY}
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


def distance_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-7, F-16, F-8: distance of the final weights from the initial ones
    (||theta_T - theta_0||, trainable parameters), the distance at the best epoch, and the
    trial's mean epoch distance ||theta_e - theta_(e-1)|| over its epochs. Per trial from its
    row's `at_best_*` / `mean_*` summaries (from `epochs` for older rows)."""
    sel, params = _sel_with_epoch_summaries(con, f)
    return _q(
        con,
        f"""
        WITH {sel},
        per AS (SELECT s.*, s.at_best_dist_from_init AS dist_at_best FROM sel s)
        SELECT {_KEY}, avg(scaled_lr) AS scaled_lr,
               {_stat("final_dist_from_init", "dist_from_init", seeds=True)},
               {_stat("dist_at_best", "dist_at_best")},
               {_stat("mean_epoch_distance", "mean_epoch_distance")},
               count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {_KEY}
        """,
        params,
    )


def distance_by_layer(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-7, F-16: per-layer (per parameter tensor) distance from init at each trial's last
    recorded epoch, absolute and relative to the layer's initial norm."""
    sel, params = _sel(f)
    return _q(
        con,
        f"""
        WITH {sel},
        lt AS (  -- each layer's row at its last epoch (arg_max_null: NULL values count)
            SELECT l.experiment, l.trial_id, l.layer, max(l.epoch) AS epoch,
                   arg_max_null(l.numel, l.epoch) AS numel,
                   arg_max_null(l.dist_from_init, l.epoch) AS dist_from_init,
                   arg_max_null(l.rel_dist_from_init, l.epoch) AS rel_dist_from_init
            FROM layers_raw l SEMI JOIN sel USING (experiment, trial_id)
            GROUP BY ALL
        ),
        lay AS (  -- kept where it is the trial's last epoch
            SELECT s.{", s.".join(KEY)}, s.seed, lt.layer, lt.epoch, lt.numel,
                   lt.dist_from_init, lt.rel_dist_from_init,
                   max(lt.epoch) OVER (PARTITION BY lt.experiment, lt.trial_id) AS last_epoch
            FROM sel s JOIN lt USING (experiment, trial_id)
        )
        SELECT {_KEY}, layer, max(numel) AS numel, max(epoch) AS epoch,
               {_stat("dist_from_init", "dist_from_init")},
               {_stat("rel_dist_from_init", "rel_dist_from_init")},
               count(*) AS n_seeds
        FROM lay WHERE epoch = last_epoch
        GROUP BY ALL ORDER BY {_KEY}, layer
        """,
        params,
    )


def epoch_distance(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-8: per epoch, the epoch distance ||theta_e - theta_(e-1)|| and the distance from
    init, averaged over seeds."""
    sel, params = _sel(f)
    return _q(
        con,
        _per_config_epoch(
            sel,
            f"""{_stat("e.epoch_distance", "epoch_distance")},
               {_stat("e.dist_from_init", "dist_from_init")},
               count(*) AS n_seeds""",
        ),
        params,
    )


def epoch_distance_ratio(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-8: per group and epoch, the smallest batch size's epoch distance over the largest's.
    `ratio` is the ratio of the seed means; `ratio_seed_mean`/`ratio_seed_std` pair the
    two batch sizes' trials by seed (`n_pairs` seeds present in both)."""
    sel, params = _sel(f)
    return _q(
        con,
        f"""
        WITH {sel},
        ends AS (
            SELECT {_GROUP}, min(batch_size) AS small_batch_size,
                   max(batch_size) AS large_batch_size
            FROM sel GROUP BY ALL HAVING count(DISTINCT batch_size) >= 2
        ),
        ed AS (  -- the epoch distances of the smallest and the largest batch size only
            SELECT s.{", s.".join(GROUP)}, s.seed, e.epoch, e.epoch_distance,
                   s.batch_size = ends.small_batch_size AS is_small
            FROM sel s JOIN ends USING ({_GROUP})
            JOIN epochs_raw e USING (experiment, trial_id)
            WHERE s.batch_size IN (ends.small_batch_size, ends.large_batch_size)
              AND isfinite(e.epoch_distance)
        ),
        means AS (
            SELECT {_GROUP}, epoch,
                   avg(epoch_distance) FILTER (is_small) AS small_epoch_distance_mean,
                   stddev_samp(epoch_distance) FILTER (is_small) AS small_epoch_distance_std,
                   count(*) FILTER (is_small) AS n_small,
                   avg(epoch_distance) FILTER (NOT is_small) AS large_epoch_distance_mean,
                   stddev_samp(epoch_distance) FILTER (NOT is_small) AS large_epoch_distance_std,
                   count(*) FILTER (NOT is_small) AS n_large
            FROM ed GROUP BY ALL
        ),
        paired AS (
            SELECT {_GROUP}, sm.epoch,
                   avg(sm.epoch_distance / lg.epoch_distance) AS ratio_seed_mean,
                   stddev_samp(sm.epoch_distance / lg.epoch_distance) AS ratio_seed_std,
                   count(*) AS n_pairs
            FROM ed sm JOIN ed lg USING ({_GROUP}, epoch, seed)
            WHERE sm.is_small AND NOT lg.is_small AND lg.epoch_distance > 0
            GROUP BY ALL
        )
        SELECT {_GROUP}, epoch, ends.small_batch_size, ends.large_batch_size,
               small_epoch_distance_mean, small_epoch_distance_std,
               large_epoch_distance_mean, large_epoch_distance_std,
               small_epoch_distance_mean / nullif(large_epoch_distance_mean, 0) AS ratio,
               ratio_seed_mean, ratio_seed_std, n_small, n_large, coalesce(n_pairs, 0) AS n_pairs
        FROM means JOIN ends USING ({_GROUP})
        LEFT JOIN paired USING ({_GROUP}, epoch)
        WHERE n_small > 0 AND n_large > 0
        ORDER BY {_GROUP}, epoch
        """,
        params,
    )


def _unsummarized(con: duckdb.DuckDBPyConnection, sel: str, params: dict[str, Any]) -> bool:
    """Whether a selected trial has no step summaries (its row predates schema version 2):
    its per-step numbers must come from `steps` itself."""
    return bool(
        con.execute(
            f"WITH {sel} SELECT count(*) FROM sel WHERE step_update_norm_n IS NULL", params
        ).fetchone()[0]
    )


def update_norm_quantiles(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-9: quantiles of the per-step update norm ||theta_(t+1) - theta_t||, computed per
    trial over all its steps (the trials row's `step_update_norm_*` summary of table `steps`;
    from `steps` itself for trials written before the summaries), then averaged over seeds."""
    sel, params = _sel(f)
    fallback = ""
    if _unsummarized(con, sel, params):
        fallback = f"""UNION ALL
            SELECT s.{", s.".join(KEY)}, s.trial_id,
                   quantile_cont(st.update_norm, 0.10), quantile_cont(st.update_norm, 0.25),
                   quantile_cont(st.update_norm, 0.50), quantile_cont(st.update_norm, 0.75),
                   quantile_cont(st.update_norm, 0.90), avg(st.update_norm), count(*)
            FROM (SELECT * FROM sel WHERE step_update_norm_n IS NULL) s
            JOIN steps_raw st USING (experiment, trial_id)
            WHERE isfinite(st.update_norm)
            GROUP BY ALL"""
    return _q(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT {_KEY}, trial_id, step_update_norm_p10 AS p10, step_update_norm_p25 AS p25,
                   step_update_norm_median AS median, step_update_norm_p75 AS p75,
                   step_update_norm_p90 AS p90, step_update_norm_mean AS mean,
                   step_update_norm_n AS n_steps
            FROM sel WHERE step_update_norm_n > 0
            {fallback}
        )
        SELECT {_KEY},
               avg(p10) AS update_norm_p10_mean, avg(p25) AS update_norm_p25_mean,
               {_stat("median", "update_norm_median")},
               avg(p75) AS update_norm_p75_mean, avg(p90) AS update_norm_p90_mean,
               avg(mean) AS update_norm_mean_mean,
               sum(n_steps) AS n_steps, count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {_KEY}
        """,
        params,
    )


def update_norms_by_epoch(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-9 from the per-epoch summaries (table `epochs`, `update_norm_*`): available even
    when the per-step rows were not stored."""
    sel, params = _sel(f)
    return _q(
        con,
        _per_config_epoch(
            sel,
            f"""avg(e.update_norm_p10) AS update_norm_p10_mean,
               {_stat("e.update_norm_median", "update_norm_median")},
               avg(e.update_norm_p90) AS update_norm_p90_mean,
               avg(e.update_norm_max) AS update_norm_max_mean,
               count(*) AS n_seeds""",
            where="WHERE isfinite(e.update_norm_median)",
        ),
        params,
    )


def update_norm_histogram(
    con: duckdb.DuckDBPyConnection, f: Filters, bins_per_decade: int = 10
) -> pd.DataFrame:
    """F-9: the distribution of per-step update norms per configuration (seeds pooled), in
    fixed log10 bins shared by every configuration and experiment: bin `b` holds the norms
    in [bin_lo, bin_hi) = [10^(b/k), 10^((b+1)/k)), k = `bins_per_decade` (a divisor of 20);
    the count and the fraction of the configuration's positive finite steps. Read from the
    trials row's `step_update_norm_hist_*` (20 bins per decade per trial, re-binned
    exactly), or from `steps` itself for trials written before the summaries."""
    fine = HIST_BINS_PER_DECADE
    k = int(bins_per_decade)
    if k < 1 or fine % k:
        allowed = [d for d in range(1, fine + 1) if fine % d == 0]
        raise ValueError(f"bins_per_decade: {bins_per_decade!r} is not allowed; allowed: {allowed}")
    sel, params = _sel(f)
    fallback = ""
    if _unsummarized(con, sel, params):
        fallback = f"""UNION ALL
            SELECT s.{", s.".join(KEY)},
                   CAST(floor(log10(st.update_norm) * {fine}) AS BIGINT) AS bin, 1 AS n
            FROM (SELECT * FROM sel WHERE step_update_norm_n IS NULL) s
            JOIN steps_raw st USING (experiment, trial_id)
            WHERE st.update_norm > 0 AND isfinite(st.update_norm)"""
    return _q(
        con,
        f"""
        WITH {sel},
        fine AS (
            SELECT {_KEY}, unnest(step_update_norm_hist_bin) AS bin,
                   unnest(step_update_norm_hist_n) AS n
            FROM sel WHERE step_update_norm_n IS NOT NULL
            {fallback}
        ),
        b AS (
            SELECT {_KEY}, CAST(floor(bin * $k / {fine}) AS BIGINT) AS bin, n FROM fine
        )
        SELECT {_KEY}, bin, pow(10, bin / $k) AS bin_lo, pow(10, (bin + 1) / $k) AS bin_hi,
               sum(n)::BIGINT AS n_steps,
               sum(n) / sum(sum(n)) OVER (PARTITION BY {_KEY}) AS fraction
        FROM b GROUP BY {_KEY}, bin ORDER BY {_KEY}, bin
        """,
        {**params, "k": k},
    )


_PROBE_EPS = (
    "CASE WHEN json_valid(p.settings_json) "
    "THEN TRY_CAST(json_extract_string(p.settings_json, '$.eps') AS DOUBLE) END"
)


def _probe_summary(
    con: duckdb.DuckDBPyConnection, f: Filters, probes: tuple[str, ...]
) -> pd.DataFrame:
    sel, params = _sel(f)
    return _q(
        con,
        f"""
        WITH {sel},
        p AS (
            SELECT s.{", s.".join(KEY)}, s.scaled_lr, s.trial_id, s.seed, p.probe,
                   {_PROBE_EPS} AS eps,
                   p.epoch, p.value
            FROM sel s JOIN probes_raw p USING (experiment, trial_id)
            WHERE p.probe IN (SELECT unnest($probes)) AND coalesce(p.status, 'ok') = 'ok'
              AND isfinite(p.value)
              AND coalesce(p.measured_at, 'final') <> 'best'  -- measure.at: best is not the final point
            QUALIFY p.epoch = max(p.epoch) OVER (PARTITION BY s.experiment, s.trial_id, p.probe)
        )
        SELECT {_KEY}, probe, eps, avg(scaled_lr) AS scaled_lr, max(epoch) AS epoch,
               {_stat("value", "value", seeds=True)}, count(*) AS n_seeds
        FROM p GROUP BY ALL ORDER BY probe, eps, {_KEY}
        """,
        {**params, "probes": list(probes)},
    )


def sharpness_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-11, F-15, F-29: Keskar sharpness (percent; one row per eps) and the Hessian's top
    eigenvalue (`probe` = keskar_sharpness | hessian_top_eig), each at the last epoch the
    trial was probed."""
    return _probe_summary(con, f, ("keskar_sharpness", "hessian_top_eig"))


def noise_scale_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Gradient noise scale B_simple (McCandlish et al. 2018; `probe` = noise_scale_two_batch
    | noise_scale_exact), in examples, at the last probed epoch."""
    return _probe_summary(con, f, ("noise_scale_two_batch", "noise_scale_exact"))


def steps_to_target(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Steps (optimizer updates) and examples (steps x batch size) to the validation-error
    target, over the seeds that reached it (`n_reached` of `n_seeds`), and whether this lr is
    the batch size's best (fewest mean steps) within its group (`is_best_lr`)."""
    sel, params = _sel(f)
    return _q(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT s.*, CASE WHEN s.steps_to_target >= 0 THEN s.steps_to_target END AS steps
            FROM sel s
        ),
        agg AS (
            SELECT {_KEY}, avg(scaled_lr) AS scaled_lr,
                   {_stat("steps", "steps_to_target")},
                   {_stat("steps * batch_size", "examples_to_target")},
                   count(steps) AS n_reached, count(*) AS n_seeds
            FROM per GROUP BY ALL
        )
        SELECT *, steps_to_target_mean IS NOT NULL AND row_number() OVER (
                   PARTITION BY {", ".join(c for c in KEY if c != "lr")}
                   ORDER BY steps_to_target_mean ASC NULLS LAST, lr) = 1 AS is_best_lr
        FROM agg ORDER BY {_KEY}
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
    sel, params = _sel(f)
    cfg = [c for c in GROUP if c != "lr"]
    g = ", ".join(cfg)
    return _q(
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


def lr_batch_table(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-13, F-17, F-23: minimum validation loss for every lr x batch size (per lr rule),
    with `is_best_lr` marking each batch size's best lr (lowest mean) within its group."""
    sel, params = _sel(f)
    return _q(
        con,
        f"""
        WITH {sel},
        agg AS (
            SELECT {_KEY}, avg(scaled_lr) AS scaled_lr,
                   {_stat("best_val_loss", "min_val_loss")},
                   {_stat("best_val_acc", "best_val_acc")},
                   count(*) AS n_seeds
            FROM sel GROUP BY ALL
        )
        SELECT *, min_val_loss_mean IS NOT NULL AND row_number() OVER (
                   PARTITION BY {", ".join(c for c in KEY if c != "lr")}
                   ORDER BY min_val_loss_mean ASC NULLS LAST, lr) = 1 AS is_best_lr
        FROM agg ORDER BY {_KEY}
        """,
        params,
    )


def best_lr_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-17: each batch size's best lr (lowest mean minimum validation loss) per lr rule."""
    df = lr_batch_table(con, f)
    return df[df["is_best_lr"]].drop(columns="is_best_lr").reset_index(drop=True)


def diverged_trials(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-25: the diverged trials of the selection (whatever its status filter) and the
    optimizer step at which each diverged."""
    cond, params = dataclasses.replace(f, status=("diverged",)).where("t")
    return _q(
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
    sel, params = _sel(dataclasses.replace(f, status=()))
    return _q(
        con,
        f"""
        WITH {sel}
        SELECT {_KEY}, avg(scaled_lr) AS scaled_lr, count(*) AS n_trials,
               count(*) FILTER (status = 'diverged') AS n_diverged,
               count(*) FILTER (status = 'diverged') / count(*) AS diverged_fraction,
               median(diverged_step) FILTER (status = 'diverged' AND diverged_step >= 0)
                   AS diverged_step_median
        FROM sel GROUP BY ALL ORDER BY {_KEY}
        """,
        params,
    )


def _landscape(con: duckdb.DuckDBPyConnection, f: Filters, kind: str) -> pd.DataFrame:
    cond, params = f.where("ta")
    return _q(
        con,
        f"""
        SELECT l.experiment, l.analysis_id, l.kind, l.trial_id, l.trial_id_b,
               ta.batch_size AS batch_size_a, tb.batch_size AS batch_size_b,
               ta.lr_scaling, ta.lr, ta.seed, ta.dataset, ta.model,
               l.alpha, l.beta, l.split, l.loss, l.acc
        FROM landscapes l
        JOIN trials ta ON ta.experiment = l.experiment AND ta.trial_id = l.trial_id
        LEFT JOIN trials tb ON tb.experiment = l.experiment AND tb.trial_id = l.trial_id_b
        WHERE l.kind = $kind AND {cond}
        ORDER BY l.experiment, l.analysis_id, l.split, l.alpha, l.beta
        """,
        {**params, "kind": kind},
    )


def landscape_1d(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-10: 1-D interpolation curves theta(a) = a theta_b + (1 - a) theta_a (kind
    'interpolate'; a = 0 is `trial_id`, a = 1 is `trial_id_b`), train and validation loss."""
    return _landscape(con, f, "interpolate")


def landscape_2d(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-12: 2-D filter-normalized loss surfaces around one trial (kind 'surface'), over
    (alpha, beta)."""
    return _landscape(con, f, "surface")


NAMED_QUERIES: dict[str, Callable[[duckdb.DuckDBPyConnection, Filters], pd.DataFrame]] = {
    fn.__name__: fn
    for fn in (
        trial_table,
        curves,
        train_loss_at_common_epoch,
        generalization_by_batch_size,
        time_by_batch_size,
        time_by_workers,
        distance_by_batch_size,
        distance_by_layer,
        epoch_distance,
        epoch_distance_ratio,
        update_norm_quantiles,
        update_norms_by_epoch,
        update_norm_histogram,
        sharpness_by_batch_size,
        noise_scale_by_batch_size,
        steps_to_target,
        critical_batch_size,
        lr_batch_table,
        best_lr_by_batch_size,
        diverged_trials,
        divergence_by_lr,
        landscape_1d,
        landscape_2d,
    )
}

# Which named queries back which finding (FINDINGS.md).
FINDING_QUERIES: dict[str, tuple[str, ...]] = {
    "F-1": ("curves", "train_loss_at_common_epoch"),
    "F-2": ("generalization_by_batch_size",),
    "F-3": ("time_by_batch_size",),
    "F-4": ("time_by_batch_size",),
    "F-5": ("time_by_batch_size",),
    "F-6": ("time_by_workers",),
    "F-7": ("distance_by_batch_size", "distance_by_layer"),
    "F-8": ("epoch_distance", "epoch_distance_ratio"),
    "F-9": ("update_norm_quantiles", "update_norms_by_epoch", "update_norm_histogram"),
    "F-10": ("landscape_1d",),
    "F-11": ("sharpness_by_batch_size",),
    "F-12": ("landscape_2d",),
    "F-13": ("lr_batch_table", "generalization_by_batch_size"),
    "F-14": ("time_by_batch_size",),
    "F-15": ("sharpness_by_batch_size",),
    "F-16": ("distance_by_batch_size", "distance_by_layer"),
    "F-17": ("lr_batch_table", "best_lr_by_batch_size"),
    "F-18": ("lr_batch_table", "generalization_by_batch_size"),
    "F-23": ("lr_batch_table",),
    "F-25": ("diverged_trials", "divergence_by_lr"),
    "F-26": ("generalization_by_batch_size",),
    "F-27": ("generalization_by_batch_size",),
    "F-28": ("generalization_by_batch_size",),
    "F-29": ("sharpness_by_batch_size", "generalization_by_batch_size"),
    "F-30": ("curves",),
    "F-31": ("curves", "generalization_by_batch_size"),
}
