"""Per-trial summaries of the `steps` table, written with every trial (tables `step_stats`
and `step_hist`).

A study of 10,000 trials x 2,000 steps holds 20M `steps` rows; the questions asked of them
most (F-9: the distribution of per-step update norms by batch size) need only, per trial,
a few quantiles and a histogram. `warehouse.store.write_trial` derives both from the steps
rows it writes, so queries read 2 rows and a few dozen bins per trial instead of every step:

- `step_stats`: one row per trial and metric (`update_norm`, `grad_norm`): `n` finite
  values, their mean, min, max and the quantiles p10, p25, median, p75, p90 with linear
  interpolation between order statistics (numpy's `linear`, DuckDB's `quantile_cont`: the
  same numbers a query over `steps` computes). A trial without steps rows has rows with
  `n` = 0, so "no row" always means "written before these tables existed".
- `step_hist`: counts of the finite, positive values in fixed log10 bins: `bin` = floor(
  log10(x) * HIST_BINS_PER_DECADE), i.e. the bin [10^(bin/20), 10^((bin+1)/20)). Any
  coarser binning whose bins per decade divide 20 is an exact re-binning
  (`floor(bin * k / 20)`): `warehouse.queries.update_norm_histogram` uses that.

The queries fall back to the `steps` rows for trials without summaries (warehouses written
by older versions), so both paths give the same answers (tests/warehouse/test_summaries.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# Fine histogram resolution: 20 bins per decade (each bin ~12% wide).
HIST_BINS_PER_DECADE = 20
# The metrics of `steps` that are summarized.
STEP_METRICS = ("update_norm", "grad_norm")
QUANTILES = {"p10": 0.10, "p25": 0.25, "median": 0.50, "p75": 0.75, "p90": 0.90}


def step_summaries(
    steps: Iterable[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(`step_stats` rows, `step_hist` rows) of one trial's steps rows, without key columns."""
    steps = list(steps)
    return summarize({m: np.array([r.get(m) for r in steps], dtype=float) for m in STEP_METRICS})


def summarize(
    columns: Mapping[str, np.ndarray],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`step_summaries` from the metric columns as arrays (NaN for a missing value)."""
    stats: list[dict[str, Any]] = []
    hist: list[dict[str, Any]] = []
    for metric in STEP_METRICS:
        x = np.asarray(columns[metric], dtype=float)
        x = x[np.isfinite(x)]
        row: dict[str, Any] = {"metric": metric, "n": int(x.size)}
        if x.size:
            q = np.quantile(x, list(QUANTILES.values()), method="linear")
            row |= {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max())}
            row |= {name: float(v) for name, v in zip(QUANTILES, q, strict=True)}
        stats.append(row)
        pos = x[x > 0]
        if pos.size:
            bins, counts = np.unique(
                np.floor(np.log10(pos) * HIST_BINS_PER_DECADE).astype(np.int64),
                return_counts=True,
            )
            hist.extend(
                {"metric": metric, "bin": int(b), "n": int(c)}
                for b, c in zip(bins, counts, strict=True)
            )
    return stats, hist
