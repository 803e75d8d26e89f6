"""The probes at a trial's last probed epoch: sharpness and the Hessian's top eigenvalue
(F-11, F-15, F-29), the gradient noise scale."""

from __future__ import annotations

import duckdb
import pandas as pd

from warehouse.queries.base import KEY, KEY_SQL, PROBE_EPS, Filters, fetch, seed_stat, sel_cte


def _probe_summary(
    con: duckdb.DuckDBPyConnection, f: Filters, probes: tuple[str, ...]
) -> pd.DataFrame:
    sel, params = sel_cte(f)
    return fetch(
        con,
        f"""
        WITH {sel},
        p AS (
            SELECT s.{", s.".join(KEY)}, s.scaled_lr, s.trial_id, s.seed, p.probe,
                   {PROBE_EPS} AS eps,
                   p.epoch, p.value
            FROM sel s JOIN probes_raw p USING (experiment, trial_id)
            WHERE p.probe IN (SELECT unnest($probes)) AND coalesce(p.status, 'ok') = 'ok'
              AND isfinite(p.value)
              AND coalesce(p.measured_at, 'final') <> 'best'  -- measure.at: best is not the final point
            QUALIFY p.epoch = max(p.epoch) OVER (PARTITION BY s.experiment, s.trial_id, p.probe)
        )
        SELECT {KEY_SQL}, probe, eps, avg(scaled_lr) AS scaled_lr, max(epoch) AS epoch,
               {seed_stat("value", "value", seeds=True)}, count(*) AS n_seeds
        FROM p GROUP BY ALL ORDER BY probe, eps, {KEY_SQL}
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
