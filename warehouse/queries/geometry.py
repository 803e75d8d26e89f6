"""Where the weights went: distance from init (F-7, F-16), epoch distances (F-8), update
norms (F-9), loss landscapes (F-10, F-12)."""

from __future__ import annotations

import duckdb
import pandas as pd

from warehouse.queries.base import (
    GROUP,
    GROUP_SQL,
    KEY,
    KEY_SQL,
    Filters,
    fetch,
    per_config_epoch,
    seed_stat,
    sel_cte,
    sel_with_epoch_summaries,
    unsummarized,
)
from warehouse.summaries import HIST_BINS_PER_DECADE


def distance_by_batch_size(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-7, F-16, F-8: distance of the final weights from the initial ones
    (||theta_T - theta_0||, trainable parameters), the distance at the best epoch, and the
    trial's mean epoch distance ||theta_e - theta_(e-1)|| over its epochs. Per trial from its
    row's `at_best_*` / `mean_*` summaries (from `epochs` for older rows)."""
    sel, params = sel_with_epoch_summaries(con, f)
    return fetch(
        con,
        f"""
        WITH {sel},
        per AS (SELECT s.*, s.at_best_dist_from_init AS dist_at_best FROM sel s)
        SELECT {KEY_SQL}, avg(scaled_lr) AS scaled_lr,
               {seed_stat("final_dist_from_init", "dist_from_init", seeds=True)},
               {seed_stat("dist_at_best", "dist_at_best")},
               {seed_stat("mean_epoch_distance", "mean_epoch_distance")},
               count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {KEY_SQL}
        """,
        params,
    )


def distance_by_layer(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-7, F-16: per-layer (per parameter tensor) distance from init at each trial's last
    recorded epoch, absolute and relative to the layer's initial norm."""
    sel, params = sel_cte(f)
    return fetch(
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
        SELECT {KEY_SQL}, layer, max(numel) AS numel, max(epoch) AS epoch,
               {seed_stat("dist_from_init", "dist_from_init")},
               {seed_stat("rel_dist_from_init", "rel_dist_from_init")},
               count(*) AS n_seeds
        FROM lay WHERE epoch = last_epoch
        GROUP BY ALL ORDER BY {KEY_SQL}, layer
        """,
        params,
    )


def epoch_distance(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-8: per epoch, the epoch distance ||theta_e - theta_(e-1)|| and the distance from
    init, averaged over seeds."""
    sel, params = sel_cte(f)
    return fetch(
        con,
        per_config_epoch(
            sel,
            f"""{seed_stat("e.epoch_distance", "epoch_distance")},
               {seed_stat("e.dist_from_init", "dist_from_init")},
               count(*) AS n_seeds""",
        ),
        params,
    )


def epoch_distance_ratio(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-8: per group and epoch, the smallest batch size's epoch distance over the largest's.
    `ratio` is the ratio of the seed means; `ratio_seed_mean`/`ratio_seed_std` pair the
    two batch sizes' trials by seed (`n_pairs` seeds present in both)."""
    sel, params = sel_cte(f)
    return fetch(
        con,
        f"""
        WITH {sel},
        ends AS (
            SELECT {GROUP_SQL}, min(batch_size) AS small_batch_size,
                   max(batch_size) AS large_batch_size
            FROM sel GROUP BY ALL HAVING count(DISTINCT batch_size) >= 2
        ),
        ed AS (  -- the epoch distances of the smallest and the largest batch size only
            SELECT s.{", s.".join(GROUP)}, s.seed, e.epoch, e.epoch_distance,
                   s.batch_size = ends.small_batch_size AS is_small
            FROM sel s JOIN ends USING ({GROUP_SQL})
            JOIN epochs_raw e USING (experiment, trial_id)
            WHERE s.batch_size IN (ends.small_batch_size, ends.large_batch_size)
              AND isfinite(e.epoch_distance)
        ),
        means AS (
            SELECT {GROUP_SQL}, epoch,
                   avg(epoch_distance) FILTER (is_small) AS small_epoch_distance_mean,
                   stddev_samp(epoch_distance) FILTER (is_small) AS small_epoch_distance_std,
                   count(*) FILTER (is_small) AS n_small,
                   avg(epoch_distance) FILTER (NOT is_small) AS large_epoch_distance_mean,
                   stddev_samp(epoch_distance) FILTER (NOT is_small) AS large_epoch_distance_std,
                   count(*) FILTER (NOT is_small) AS n_large
            FROM ed GROUP BY ALL
        ),
        paired AS (
            SELECT {GROUP_SQL}, sm.epoch,
                   avg(sm.epoch_distance / lg.epoch_distance) AS ratio_seed_mean,
                   stddev_samp(sm.epoch_distance / lg.epoch_distance) AS ratio_seed_std,
                   count(*) AS n_pairs
            FROM ed sm JOIN ed lg USING ({GROUP_SQL}, epoch, seed)
            WHERE sm.is_small AND NOT lg.is_small AND lg.epoch_distance > 0
            GROUP BY ALL
        )
        SELECT {GROUP_SQL}, epoch, ends.small_batch_size, ends.large_batch_size,
               small_epoch_distance_mean, small_epoch_distance_std,
               large_epoch_distance_mean, large_epoch_distance_std,
               small_epoch_distance_mean / nullif(large_epoch_distance_mean, 0) AS ratio,
               ratio_seed_mean, ratio_seed_std, n_small, n_large, coalesce(n_pairs, 0) AS n_pairs
        FROM means JOIN ends USING ({GROUP_SQL})
        LEFT JOIN paired USING ({GROUP_SQL}, epoch)
        WHERE n_small > 0 AND n_large > 0
        ORDER BY {GROUP_SQL}, epoch
        """,
        params,
    )


def update_norm_quantiles(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-9: quantiles of the per-step update norm ||theta_(t+1) - theta_t||, computed per
    trial over all its steps (the trials row's `step_update_norm_*` summary of table `steps`;
    from `steps` itself for trials written before the summaries), then averaged over seeds."""
    sel, params = sel_cte(f)
    fallback = ""
    if unsummarized(con, sel, params):
        fallback = f"""UNION ALL
            SELECT s.{", s.".join(KEY)}, s.trial_id,
                   quantile_cont(st.update_norm, 0.10), quantile_cont(st.update_norm, 0.25),
                   quantile_cont(st.update_norm, 0.50), quantile_cont(st.update_norm, 0.75),
                   quantile_cont(st.update_norm, 0.90), avg(st.update_norm), count(*)
            FROM (SELECT * FROM sel WHERE step_update_norm_n IS NULL) s
            JOIN steps_raw st USING (experiment, trial_id)
            WHERE isfinite(st.update_norm)
            GROUP BY ALL"""
    return fetch(
        con,
        f"""
        WITH {sel},
        per AS (
            SELECT {KEY_SQL}, trial_id, step_update_norm_p10 AS p10, step_update_norm_p25 AS p25,
                   step_update_norm_median AS median, step_update_norm_p75 AS p75,
                   step_update_norm_p90 AS p90, step_update_norm_mean AS mean,
                   step_update_norm_n AS n_steps
            FROM sel WHERE step_update_norm_n > 0
            {fallback}
        )
        SELECT {KEY_SQL},
               avg(p10) AS update_norm_p10_mean, avg(p25) AS update_norm_p25_mean,
               {seed_stat("median", "update_norm_median")},
               avg(p75) AS update_norm_p75_mean, avg(p90) AS update_norm_p90_mean,
               avg(mean) AS update_norm_mean_mean,
               sum(n_steps) AS n_steps, count(*) AS n_seeds
        FROM per GROUP BY ALL ORDER BY {KEY_SQL}
        """,
        params,
    )


def update_norms_by_epoch(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """F-9 from the per-epoch summaries (table `epochs`, `update_norm_*`): available even
    when the per-step rows were not stored."""
    sel, params = sel_cte(f)
    return fetch(
        con,
        per_config_epoch(
            sel,
            f"""avg(e.update_norm_p10) AS update_norm_p10_mean,
               {seed_stat("e.update_norm_median", "update_norm_median")},
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
    sel, params = sel_cte(f)
    fallback = ""
    if unsummarized(con, sel, params):
        fallback = f"""UNION ALL
            SELECT s.{", s.".join(KEY)},
                   CAST(floor(log10(st.update_norm) * {fine}) AS BIGINT) AS bin, 1 AS n
            FROM (SELECT * FROM sel WHERE step_update_norm_n IS NULL) s
            JOIN steps_raw st USING (experiment, trial_id)
            WHERE st.update_norm > 0 AND isfinite(st.update_norm)"""
    return fetch(
        con,
        f"""
        WITH {sel},
        fine AS (
            SELECT {KEY_SQL}, unnest(step_update_norm_hist_bin) AS bin,
                   unnest(step_update_norm_hist_n) AS n
            FROM sel WHERE step_update_norm_n IS NOT NULL
            {fallback}
        ),
        b AS (
            SELECT {KEY_SQL}, CAST(floor(bin * $k / {fine}) AS BIGINT) AS bin, n FROM fine
        )
        SELECT {KEY_SQL}, bin, pow(10, bin / $k) AS bin_lo, pow(10, (bin + 1) / $k) AS bin_hi,
               sum(n)::BIGINT AS n_steps,
               sum(n) / sum(sum(n)) OVER (PARTITION BY {KEY_SQL}) AS fraction
        FROM b GROUP BY {KEY_SQL}, bin ORDER BY {KEY_SQL}, bin
        """,
        {**params, "k": k},
    )


def _landscape(con: duckdb.DuckDBPyConnection, f: Filters, kind: str) -> pd.DataFrame:
    cond, params = f.where("ta")
    return fetch(
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
