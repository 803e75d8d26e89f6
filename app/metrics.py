"""User-defined metrics (the long-format `metrics` table of custom trainables: trial_id,
experiment, epoch, step, name, value), through the warehouse's named queries
(`warehouse.queries.metrics`). Older warehouses have no such view: the queries answer
"none" without it."""

from __future__ import annotations

import pandas as pd

from app.common import query
from warehouse import queries as q


def metric_names(f: q.Filters) -> list[str]:
    """The names of the user metrics logged by the selected trials ([] without the view)."""
    return [str(n) for n in query("metric_names", f)["name"].tolist() if n is not None]


def metric_curves(f: q.Filters, name: str) -> pd.DataFrame:
    """Per configuration and epoch: the metric's value at the epoch's last logged step,
    mean and std over seeds (`value_mean`, `value_std`, `n_seeds`), with `step`."""
    return query("metric_curves", f, metric=name)


def trial_metrics(trial_ids: list[str]) -> pd.DataFrame:
    """Every user-metric row of these trials (empty without the view)."""
    return query("trial_metrics", trial_ids=tuple(trial_ids))
