"""Sharpness measures side by side, and how well each tracks the generalization gap.

- `sharpness_measures(con, f)`: one row per trial and measure (long table): every sharpness
  probe at its last probed epoch (measured_at final or epoch; one measure per probe and eps /
  rho), the derived edge-of-stability ratios (docs/science.md) and a baseline that is no
  sharpness at all (lr / batch size), with the trial's hyperparameters and its
  generalization gap at the same epoch (`gap_loss` = val_loss - train_loss_eval,
  `gap_error` = train_acc_eval - val_acc, from `epochs`).
- `measure_ranking(con, f, gap=...)`: the granulated Kendall coefficient of Jiang et al.
  (ICLR 2020, "Fantastic generalization measures and where to find them", eq. 4-5): for
  each hyperparameter axis, Kendall's tau (scipy.stats.kendalltau, tau-b) between measure
  and gap within every group of trials equal on all other axes (seed included), averaged
  over the groups; then averaged over the axes that vary. Ranked by it, best first.

The SQL of `sharpness_measures` is also the `sharpness_measures()` table macro of
`batchlab.duckdb` (warehouse/macros.py); the ranking needs scipy, so it is Python only.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from warehouse.queries import Filters

# Probes whose value is a sharpness (the noise scale is not).
SHARPNESS_PROBES = (
    "keskar_sharpness",
    "hessian_top_eig",
    "batch_sharpness",
    "adaptive_sharpness_worst_linf",
    "adaptive_sharpness_worst_l2",
    "adaptive_sharpness_average",
)
# Hyperparameter axes of the granulated coefficient (columns of `sharpness_measures`).
AXES = (
    "dataset",
    "model",
    "batchnorm",
    "optimizer",
    "momentum",
    "lr_scaling",
    "lr",
    "batch_size",
    "workers",
)
GAPS = {"loss": "gap_loss", "error": "gap_error"}
BASELINE = "lr_over_batch_size"


def sharpness_measures_sql(f: Filters | None = None) -> tuple[str, dict[str, Any]]:
    """(SQL, parameters) of `sharpness_measures` (each selected trial once; the lr-rule
    sharing of the named queries does not apply: a trial is one point of the grid)."""
    cond, params = (f or Filters()).where("t")
    probes = ", ".join(f"'{p}'" for p in SHARPNESS_PROBES)
    sql = f"""
        WITH t AS (
            SELECT t.experiment, t.trial_id, t.dataset, t.model,
                   coalesce(t.batchnorm, false) AS batchnorm, t.optimizer,
                   coalesce(t.momentum, 0.0) AS momentum, t.lr_scaling, t.lr, t.scaled_lr,
                   t.batch_size, coalesce(t.data_parallel_workers, 1) AS workers, t.seed
            FROM trials t WHERE {cond}
        ),
        p AS (
            SELECT t.experiment, t.trial_id, p.probe,
                   CASE WHEN json_valid(p.settings_json) THEN coalesce(
                       TRY_CAST(json_extract_string(p.settings_json, '$.eps') AS DOUBLE),
                       TRY_CAST(json_extract_string(p.settings_json, '$.rho') AS DOUBLE)) END
                       AS param,
                   p.epoch, p.value
            FROM t JOIN probes_raw p USING (experiment, trial_id)
            WHERE p.probe IN ({probes}) AND coalesce(p.status, 'ok') = 'ok'
              AND isfinite(p.value) AND coalesce(p.measured_at, 'final') <> 'best'
            QUALIFY p.epoch = max(p.epoch) OVER (
                PARTITION BY t.experiment, t.trial_id, p.probe, param)
        ),
        pv AS (
            SELECT experiment, trial_id, probe, param, epoch, avg(value) AS value
            FROM p GROUP BY ALL
        ),
        derived AS (
            SELECT pv.experiment, pv.trial_id, d.probe, CAST(NULL AS DOUBLE) AS param, pv.epoch,
                   pv.value * t.scaled_lr
                       / (2.0 + CASE WHEN d.momentum THEN 2.0 * t.momentum ELSE 0.0 END) AS value
            FROM pv JOIN t USING (experiment, trial_id)
            JOIN (VALUES ('eos_ratio', 'hessian_top_eig', false),
                         ('eos_ratio_momentum', 'hessian_top_eig', true),
                         ('batch_eos_ratio', 'batch_sharpness', false)) d(probe, source, momentum)
                ON pv.probe = d.source
            WHERE t.optimizer = 'sgd'
            UNION ALL
            SELECT pv.experiment, pv.trial_id, '{BASELINE}', NULL, max(pv.epoch),
                   any_value(t.scaled_lr) / any_value(t.batch_size)
            FROM pv JOIN t USING (experiment, trial_id) GROUP BY ALL
        ),
        m AS (SELECT * FROM pv UNION ALL BY NAME SELECT * FROM derived),
        e AS (
            SELECT e.experiment, e.trial_id, e.epoch, avg(e.val_loss - e.train_loss_eval) AS gl,
                   avg(e.train_acc_eval - e.val_acc) AS ge
            FROM epochs_raw e SEMI JOIN t USING (experiment, trial_id) GROUP BY ALL
        )
        SELECT t.*, m.probe || coalesce('@' || CAST(m.param AS VARCHAR), '') AS measure,
               m.probe, m.param, m.epoch, m.value, e.gl AS gap_loss, e.ge AS gap_error
        FROM m JOIN t USING (experiment, trial_id)
        LEFT JOIN e USING (experiment, trial_id, epoch)
        ORDER BY measure, t.experiment, t.trial_id
    """
    return sql, params


def sharpness_measures(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """Every trial's sharpness measures and generalization gap (module docstring)."""
    sql, params = sharpness_measures_sql(f)
    return con.execute(sql, params).fetchdf()


EXACT_MAX_N = 400  # groups up to this size: tau-b from the pairwise signs (numpy)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b, (P - Q) / sqrt((n0 - n1)(n0 - n2)), NaN when undefined (fewer than
    two values, or a constant side). Small samples from the pairwise signs (the same value
    as scipy.stats.kendalltau, tested; 50x faster on the many two- to ten-trial groups of
    the granulated coefficient), larger ones by scipy."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 2:
        return math.nan
    if n > EXACT_MAX_N:
        from scipy import stats  # imported here: connect() builds the macros

        return float(stats.kendalltau(x, y).statistic)
    i, j = np.triu_indices(n, 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    den = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float(np.dot(sx, sy) / den) if den > 0 else math.nan


def _group_taus(d: pd.DataFrame, keys: list[str], axis: str, value: str, gap: str) -> list[float]:
    """tau(value, gap) within every group of `keys` that holds >= 2 values of `axis`."""
    gid = d.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    varies = d.groupby(gid, dropna=False)[axis].nunique(dropna=False) > 1
    keep = np.isin(gid, varies.index[varies.to_numpy()].to_numpy())
    gid, x, y = gid[keep], d[value].to_numpy(float)[keep], d[gap].to_numpy(float)[keep]
    order = np.argsort(gid, kind="stable")
    gid, x, y = gid[order], x[order], y[order]
    cuts = np.flatnonzero(np.diff(gid)) + 1
    return [
        kendall_tau_b(a, b)
        for a, b in zip(np.split(x, cuts), np.split(y, cuts), strict=True)
        if len(a)
    ]


def granulated_kendall(
    df: pd.DataFrame, value: str, gap: str, axes: tuple[str, ...] = AXES
) -> dict[str, Any]:
    """Jiang et al.'s coefficient for one measure: {"granulated_tau", "overall_tau",
    "<axis>_tau", "<axis>_groups"} over the axes with more than one value in `df`.

    psi_axis = mean over groups (trials equal on every other axis, experiment and seed) that
    hold at least two values of the axis, of tau(value, gap) within the group (groups whose tau
    is undefined, e.g. a constant measure, are left out); granulated = mean of the psi."""
    d = df[np.isfinite(df[value]) & np.isfinite(df[gap])]
    out: dict[str, Any] = {
        "n_trials": len(d),
        "overall_tau": kendall_tau_b(d[value].to_numpy(float), d[gap].to_numpy(float)),
    }
    varying = [a for a in axes if d[a].nunique(dropna=False) > 1]
    psis = []
    for axis in varying:
        keys = ["experiment", "seed", *(a for a in axes if a != axis)]
        taus = [t for t in _group_taus(d, keys, axis, value, gap) if math.isfinite(t)]
        psi = float(np.mean(taus)) if taus else math.nan
        out[f"{axis}_tau"] = psi
        out[f"{axis}_groups"] = len(taus)
        if taus:
            psis.append(psi)
    out["granulated_tau"] = float(np.mean(psis)) if psis else math.nan
    out["axes"] = ",".join(a for a in varying if out[f"{a}_groups"])
    return out


def measure_ranking(con: duckdb.DuckDBPyConnection, f: Filters, gap: str = "loss") -> pd.DataFrame:
    """Sharpness measures ranked by how well they track the generalization gap `gap`
    ("loss": val - train loss; "error": train - val accuracy): one row per measure with
    `granulated_tau`, `overall_tau`, per-axis `<axis>_tau` / `<axis>_groups`, `n_trials`,
    `is_baseline` (lr / batch size, no sharpness: a measure worth having beats it), best
    first (NaN last)."""
    if gap not in GAPS:
        raise ValueError(f"gap must be one of {sorted(GAPS)}, got {gap!r}")
    df = sharpness_measures(con, f)
    rows = []
    for name, d in df.groupby("measure", sort=True):
        r = granulated_kendall(d, "value", GAPS[gap])
        rows.append({"measure": name, "probe": d["probe"].iloc[0], **r})
    if not rows:
        return pd.DataFrame(columns=["measure", "probe", "granulated_tau", "overall_tau"])
    out = pd.DataFrame(rows)
    out["is_baseline"] = out["measure"] == BASELINE
    out["gap"] = gap
    return out.sort_values(
        ["granulated_tau", "measure"], ascending=[False, True], na_position="last"
    ).reset_index(drop=True)
