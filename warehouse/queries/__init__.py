"""Named queries: one function per question the app and users ask, with bound parameters.

Every function takes a DuckDB connection from `warehouse.db.connect` and a `Filters`
(which trials to include), and returns a pandas DataFrame. Values are bound parameters,
never pasted into the SQL text. The queries live by family of findings:

- `base`: `Filters`, the configuration key (`GROUP`, `KEY`), the CTE `sel`, the per-seed
  statistics (how every query aggregates over seeds: see its docstring);
- `trials`: the experiments, filter choices and the trials table;
- `runs`: the explorer's run-level data (the runs table, one trial's row, a few trials'
  rows of one table);
- `metrics`: the user metrics of custom trainables (the `metrics` table);
- `training`: curves, time, steps to target, critical batch size, divergence;
- `generalization`: minimum validation loss, accuracy, gap, lr x batch size;
- `geometry`: distances, update norms, landscapes;
- `sharpness`: the probes (sharpness, Hessian, noise scale).

`NAMED_QUERIES` maps every query that takes `(con, Filters)` to its function, and
`FINDING_QUERIES` says which queries back which finding (F-n in FINDINGS.md). Every public
name of the family modules is importable from here (`from warehouse.queries import X`).
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import pandas as pd

from warehouse.queries.base import (
    GROUP,
    GROUP_SQL,
    KEY,
    KEY_SQL,
    PROBE_EPS,
    Filters,
    fetch,
    per_config_epoch,
    seed_stat,
    sel_cte,
    sel_with_epoch_summaries,
    unsummarized,
)
from warehouse.queries.generalization import (
    best_lr_by_batch_size,
    generalization_by_batch_size,
    lr_batch_table,
)
from warehouse.queries.geometry import (
    distance_by_batch_size,
    distance_by_layer,
    epoch_distance,
    epoch_distance_ratio,
    landscape_1d,
    landscape_2d,
    update_norm_histogram,
    update_norm_quantiles,
    update_norms_by_epoch,
)
from warehouse.queries.metrics import (
    has_view,
    metric_curves,
    metric_names,
    metrics_available,
    trial_metrics,
)
from warehouse.queries.runs import (
    config_columns,
    example_runs,
    flatten,
    runs_table,
    trial_row,
    trial_rows,
)
from warehouse.queries.sharpness import noise_scale_by_batch_size, sharpness_by_batch_size
from warehouse.queries.training import (
    critical_batch_size,
    curves,
    diverged_trials,
    divergence_by_lr,
    steps_to_target,
    time_by_batch_size,
    time_by_workers,
    train_loss_at_common_epoch,
)
from warehouse.queries.trials import experiments, filter_options, trial_table

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
        runs_table,
        metric_names,
        metric_curves,
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


__all__ = [
    "FINDING_QUERIES",
    "GROUP",
    "GROUP_SQL",
    "KEY",
    "KEY_SQL",
    "NAMED_QUERIES",
    "PROBE_EPS",
    "Filters",
    "best_lr_by_batch_size",
    "config_columns",
    "critical_batch_size",
    "curves",
    "distance_by_batch_size",
    "distance_by_layer",
    "diverged_trials",
    "divergence_by_lr",
    "epoch_distance",
    "epoch_distance_ratio",
    "example_runs",
    "experiments",
    "fetch",
    "filter_options",
    "flatten",
    "generalization_by_batch_size",
    "has_view",
    "landscape_1d",
    "landscape_2d",
    "lr_batch_table",
    "metric_curves",
    "metric_names",
    "metrics_available",
    "noise_scale_by_batch_size",
    "per_config_epoch",
    "runs_table",
    "seed_stat",
    "sel_cte",
    "sel_with_epoch_summaries",
    "sharpness_by_batch_size",
    "steps_to_target",
    "time_by_batch_size",
    "time_by_workers",
    "train_loss_at_common_epoch",
    "trial_metrics",
    "trial_row",
    "trial_rows",
    "trial_table",
    "unsummarized",
    "update_norm_histogram",
    "update_norm_quantiles",
    "update_norms_by_epoch",
]
