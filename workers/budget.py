"""Budgets that match the claim: the `stop:` caps and the `until:` train-set targets.

Shared by batchlab's own loop (workers/train.py) and the user trial API
(workers/trial_api.py) so both stop on the same rule and record the same stop_reason:
"max_steps", "max_examples", "max_time" (a `stop:` cap reached) and "train_target_reached"
(an `until:` target met on the epoch's full train-set evaluation). max_epochs stays the cap
of every trial ("max_epochs").
"""

from __future__ import annotations

import math
from typing import Any

from workers.config import TrialConfig


def cap_reached(cfg: TrialConfig, step: int, examples_seen: int, elapsed_s: float) -> str | None:
    """The `stop:` cap reached after `step` optimizer steps, `examples_seen` training
    examples and `elapsed_s` seconds of training, or None."""
    s = cfg.stop
    if s is None:
        return None
    if s.max_steps is not None and step >= s.max_steps:
        return "max_steps"
    if s.max_examples is not None and examples_seen >= s.max_examples:
        return "max_examples"
    if s.max_time_s is not None and elapsed_s >= s.max_time_s:
        return "max_time"
    return None


def target_reached(cfg: TrialConfig, row: dict[str, Any]) -> str | None:
    """ "train_target_reached" when the epoch row's train-set evaluation meets `until:`
    (train_loss_eval < train_loss_below, or train_acc_eval >= train_acc_above), else None.
    A NaN evaluation (no accuracy for the loss, or not measured) never meets a target."""
    u = cfg.until
    if u is None:
        return None
    tl = row.get("train_loss_eval", math.nan)
    ta = row.get("train_acc_eval", math.nan)
    if u.train_loss_below is not None and _finite(tl) and tl < u.train_loss_below:
        return "train_target_reached"
    if u.train_acc_above is not None and _finite(ta) and ta >= u.train_acc_above:
        return "train_target_reached"
    return None


def epoch_end_stop(cfg: TrialConfig, row: dict[str, Any]) -> str | None:
    """The budget rule at an epoch end: an `until:` target first, then a `stop:` cap (on the
    row's step, examples_seen and elapsed_s)."""
    return target_reached(cfg, row) or cap_reached(
        cfg,
        int(row.get("step") or 0),
        int(row.get("examples_seen") or 0),
        float(row.get("elapsed_s") or 0.0),
    )


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
