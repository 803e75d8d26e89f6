"""The rows a trial writes, built in one place from host values and its `TrialState`.

The keys are the column names of the warehouse tables (`warehouse/schemas.py`: `epochs`,
`steps`, `layers`, and the summary columns of `trials`); tests/workers/test_equivalence.py
checks them against the schema. Pure Python: the drivers measure on their device (torch) and
hand plain numbers here.

The summary is computed once, from the state, for every driver (it used to be written three
times, and the copies differed: the pack's `best_val_acc` was 0.0 where no validation
accuracy was finite, now NaN as for the others; the user loop's `final_train_loss` fell
back to the epoch's mean mini-batch loss, now it is the last epoch's full training-set
evaluation for every trial, NaN when that was not measured, so one column means one thing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from workers.trial.state import TrialState

NAN = math.nan

# The summary columns of the `trials` row a trial computes (besides provenance and perf_json).
SUMMARY_COLUMNS = (
    "n_train",
    "n_val",
    "steps_per_epoch",
    "epochs_run",
    "steps_run",
    "best_val_loss",
    "best_val_acc",
    "best_epoch",
    "best_step",
    "steps_to_target",
    "diverged_step",
    "final_train_loss",
    "final_val_loss",
    "final_dist_from_init",
    "train_time_s",
    "wall_time_s",
    "peak_memory_mb",
    "resumed_from_epoch",
    "scaled_lr",
)

QUANTILE_KEYS = ("p10", "median", "p90", "mean", "max")


def nan_quantiles() -> dict[str, float]:
    """The quantiles of nothing (a measurement switched off)."""
    return dict.fromkeys(QUANTILE_KEYS, NAN)


def epoch_row(
    *,
    epoch: int,
    step: int,
    lr: float,
    train_loss: float,
    dist_from_init: float,
    epoch_distance: float,
    epoch_time_s: float,
    elapsed_s: float,
    steps_done: int,
    batch_size: int,
    n_train: int,
    update_q: Mapping[str, float],
    grad_q: Mapping[str, float],
    train_eval: tuple[float, float] | None,
) -> dict[str, Any]:
    """The `epochs` row of batchlab's loop (lone or packed) after `steps_done` steps of
    `epoch`, before validation and system metrics (the caller adds those). examples_seen
    counts a partial last batch by its real size; `train_eval` is the full training-set
    (loss, accuracy), None when not measured (NaN)."""
    row: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "train_loss": train_loss,
        "dist_from_init": dist_from_init,
        "epoch_distance": epoch_distance,
        "epoch_time_s": epoch_time_s,
        "elapsed_s": elapsed_s,
        "examples_per_s": steps_done * batch_size / epoch_time_s if epoch_time_s > 0 else NAN,
        "examples_seen": (epoch - 1) * n_train + min(n_train, steps_done * batch_size),
    }
    row.update({f"update_norm_{k}": v for k, v in update_q.items()})
    row.update({f"grad_norm_{k}": v for k, v in grad_q.items()})
    row["train_loss_eval"], row["train_acc_eval"] = train_eval if train_eval else (NAN, NAN)
    return row


def layer_rows(
    epoch: int,
    names: Sequence[str],
    numels: Sequence[int],
    dists: Sequence[float],
    init_norms: Sequence[float],
    param_norms: Sequence[float],
) -> list[dict[str, Any]]:
    """The `layers` rows of one epoch end: per parameter tensor, its distance from init
    (absolute and relative to its initial norm) and its norm."""
    return [
        {
            "epoch": epoch,
            "layer": nm,
            "numel": k,
            "dist_from_init": d,
            "rel_dist_from_init": d / max(n0, 1e-12),
            "param_norm": pn,
        }
        for nm, k, d, n0, pn in zip(names, numels, dists, init_norms, param_norms, strict=True)
    ]


def step_rows(
    first_step: int,
    epoch: int,
    lrs: Sequence[float],
    update_norms: Sequence[float] | None,
    grad_norms: Sequence[float],
    batch_losses: Sequence[float],
) -> list[dict[str, Any]]:
    """The `steps` rows of batchlab's loop for one epoch (update_norms None: not measured)."""
    n = len(batch_losses)
    upd = update_norms if update_norms is not None else [NAN] * n
    return [
        {
            "step": first_step + j,
            "epoch": epoch,
            "lr": float(lrs[j]),
            "update_norm": float(upd[j]) if update_norms is not None else NAN,
            "grad_norm": float(grad_norms[j]),
            "batch_loss": float(batch_losses[j]),
        }
        for j in range(min(n, len(lrs)))
    ]


def summary_row(
    st: TrialState,
    *,
    provenance: Mapping[str, Any],
    n_train: int | None,
    n_val: int | None,
    steps_per_epoch: int | None,
    scaled_lr: float,
    wall_time_s: float,
    peak_memory_mb: float,
) -> dict[str, Any]:
    """The trial's summary (the `trials` row's summary columns and provenance) from its
    final state: the one definition for lone, packed and user-loop trials."""
    last = st.epochs[-1] if st.epochs else {}
    return {
        **provenance,
        "n_train": n_train,
        "n_val": n_val,
        "steps_per_epoch": steps_per_epoch,
        "epochs_run": st.epoch,
        "steps_run": st.step,
        "best_val_loss": st.best_val if math.isfinite(st.best_val) else NAN,
        "best_val_acc": st.best_acc if st.val_acc_seen else NAN,
        "best_epoch": st.best_epoch,
        "best_step": st.best_step,
        "steps_to_target": st.steps_to_target,
        "diverged_step": st.diverged_step,
        "final_train_loss": last.get("train_loss_eval", NAN),
        "final_val_loss": last.get("val_loss", NAN),
        "final_dist_from_init": last.get("dist_from_init", NAN),
        "train_time_s": st.elapsed_s,
        "wall_time_s": wall_time_s,
        "peak_memory_mb": peak_memory_mb,
        "resumed_from_epoch": st.resumed_from_epoch,
        "scaled_lr": scaled_lr,
    }
