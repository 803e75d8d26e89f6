"""The timing probe's rows (`timings`, workers/timing.py) for the advisor (docs/advise.md):
the named query `probe_timings` and the per-batch-size lookup `batchlab advise` uses for
"least wall time". Pure DuckDB + pandas: no torch, no Ray."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from warehouse.queries import Filters

TIMING_KEY = ("experiment", "dataset", "model", "batchnorm", "optimizer", "batch_size")


def probe_timings_sql(f: Filters) -> tuple[str, dict[str, Any]]:
    """(SQL, parameters): the `timings` rows (workers/timing.py) of `f`'s experiments, the
    latest per (experiment, dataset, model, batchnorm, optimizer, batch size, device name)."""
    params: dict[str, Any] = {}
    where = "true"
    if f.experiment:
        where, params = (
            "experiment IN (SELECT unnest($experiments))",
            {"experiments": list(f.experiment)},
        )
    sql = f"""
        SELECT {", ".join(TIMING_KEY)}, device_name, s_per_step, s_per_step_iqr, s_per_step_all,
               repeats,
               steps, torch_threads, cpu_count, ray_num_cpus, load1_before, load1_after, host,
               device, torch_version, code_version, measured_at
        FROM timings WHERE {where}
        QUALIFY row_number() OVER (
            PARTITION BY {", ".join(TIMING_KEY)}, device_name ORDER BY measured_at DESC) = 1
        ORDER BY ALL
    """
    return sql, params


def probe_timings(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """The named query of the timing probes (`probe_timings_sql`)."""
    sql, params = probe_timings_sql(f)
    return con.execute(sql, params).fetchdf()


def probe_step_times(
    timings: pd.DataFrame | None, group: dict[str, Any], devices: set[str], grid: list[int]
) -> dict[int, dict[str, Any]] | None:
    """Per batch size of `grid`, the probe timing of the group on the trials' device (the
    only device timed, when the trials name none); None unless every batch size has one."""
    if timings is None or timings.empty:
        return None
    t = timings
    for k in TIMING_KEY[:-1]:
        t = t[t[k] == group[k]]
    if devices and t["device_name"].isin(devices).any():
        t = t[t["device_name"].isin(devices)]
    if t["device_name"].nunique() > 1:
        return None
    out = {
        int(r["batch_size"]): {**r, "measured_at": str(r["measured_at"])}
        for r in t.to_dict(orient="records")
    }
    return out if all(b in out for b in grid) else None


def probe_repeats(row: dict[str, Any]) -> np.ndarray:
    """The probe row's repeats (seconds per step of each), for the bootstrap."""
    return np.asarray(json.loads(row.get("s_per_step_all") or "[]"), dtype=float)
