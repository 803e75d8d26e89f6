"""Per-trial summaries of the `steps` table, stored in the trial's `trials` row.

A study of 10,000 trials x 2,000 steps holds 20M `steps` rows; the questions asked of them
most (F-9: the distribution of per-step update norms by batch size) need only, per trial,
a few quantiles and a histogram. `warehouse.store.write_trial` derives both from the steps
rows it writes and stores them in the trials row (no extra file per trial), so queries read
one in-memory row per trial instead of every step. Columns, for each metric `m` of
`STEP_METRICS` (`update_norm`, `grad_norm`):

- `step_<m>_n`: finite values summarized (0 when the trial stored no steps; NULL only in
  rows written before schema version 2), `step_<m>_mean`, `_min`, `_max`, and the
  quantiles `_p10`, `_p25`, `_median`, `_p75`, `_p90`, interpolated linearly between order
  statistics (numpy's `linear`, DuckDB's `quantile_cont`: the numbers a query over `steps`
  computes);
- `step_<m>_hist_bin` / `step_<m>_hist_n` (lists): counts of the finite, positive values
  in fixed log10 bins, `bin` = floor(log10(x) * HIST_BINS_PER_DECADE): the bin
  [10^(bin/20), 10^((bin+1)/20)). Any coarser binning whose bins per decade divide 20 is an
  exact re-binning (`floor(bin * k / 20)`): `warehouse.queries.update_norm_histogram`.

The queries fall back to the `steps` rows for trials without summaries (written by older
versions): both paths give the same answers (tests/warehouse/test_summaries.py).
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
STATS = ("mean", "min", *QUANTILES, "max")


def step_summaries(steps: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The trials row's `step_*` columns from one trial's steps rows."""
    steps = list(steps)
    return summarize({m: np.array([r.get(m) for r in steps], dtype=float) for m in STEP_METRICS})


def summarize(columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """`step_summaries` from the metric columns as arrays (NaN for a missing value)."""
    out: dict[str, Any] = {}
    for m in STEP_METRICS:
        x = np.asarray(columns[m], dtype=float)
        x = x[np.isfinite(x)]
        out[f"step_{m}_n"] = int(x.size)
        values = dict.fromkeys(STATS)
        if x.size:
            q = np.quantile(x, list(QUANTILES.values()), method="linear")
            values |= {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max())}
            values |= {name: float(v) for name, v in zip(QUANTILES, q, strict=True)}
        out |= {f"step_{m}_{k}": v for k, v in values.items()}
        pos = x[x > 0]
        bins, counts = np.unique(
            np.floor(np.log10(pos) * HIST_BINS_PER_DECADE).astype(np.int64), return_counts=True
        )
        out[f"step_{m}_hist_bin"] = bins.tolist()
        out[f"step_{m}_hist_n"] = counts.tolist()
    return out


# ---- per-trial summaries of the `epochs` rows -------------------------------------------

# Columns of the epochs row at the trial's best epoch, stored as `at_best_<column>`.
AT_BEST = (
    "train_loss_eval",
    "train_acc_eval",
    "val_loss",
    "val_acc",
    "elapsed_s",
    "dist_from_init",
)
# Columns averaged over the trial's epochs (finite values), stored as `mean_<column>`.
MEANS = ("epoch_time_s", "examples_per_s", "epoch_distance")


def epoch_summaries(epochs: Iterable[Mapping[str, Any]], best_epoch: int | None) -> dict[str, Any]:
    """The trials row's epoch summary columns from one trial's epochs rows: `epochs_n`
    (rows; NULL only in rows from before schema version 2), `at_best_<c>` (the row of epoch
    `best_epoch`; NULL when there is none) and `mean_<c>` (mean of the finite values; NULL
    when none). The per-trial numbers of `generalization_by_batch_size`,
    `time_by_batch_size` and `distance_by_batch_size`, so they need not read `epochs`."""
    epochs = list(epochs)
    cols = {c: np.array([r.get(c) for r in epochs], dtype=float) for c in (*AT_BEST, *MEANS)}
    return summarize_epochs(
        np.array([r["epoch"] for r in epochs], dtype=np.int64), cols, best_epoch
    )


def summarize_epochs(
    epoch: np.ndarray, columns: Mapping[str, np.ndarray], best_epoch: int | None
) -> dict[str, Any]:
    """`epoch_summaries` from the columns as arrays (NaN for a missing value)."""
    out: dict[str, Any] = {"epochs_n": len(epoch)}
    at = np.flatnonzero(np.asarray(epoch) == best_epoch) if best_epoch is not None else []
    for c in AT_BEST:
        v = float(columns[c][at[0]]) if len(at) else None
        out[f"at_best_{c}"] = None if v is None or np.isnan(v) else v
    for c in MEANS:
        x = np.asarray(columns[c], dtype=float)
        x = x[np.isfinite(x)]
        out[f"mean_{c}"] = float(x.mean()) if x.size else None
    return out
