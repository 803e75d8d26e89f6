"""The running state of one trial and its epoch-end bookkeeping (pure Python).

One `TrialState` per trial, whichever driver trains it (lone, packed, user loop): the
counters, the best validation so far, early-stopping and plateau counters, the lr decay
factor, and the rows measured so far. Everything a resume needs besides model and optimizer
tensors; `as_saved` / `from_saved` give the checkpoint's `state` dict (the same string keys
as before this module existed, so checkpoints written by older code still load, and a lone
trial's checkpoint resumes in a pack and back).

The bookkeeping methods are the rules every driver applies at the same points:

- `diverged_in(losses, ...)`: the epoch's batch losses (host values) hold a NaN/inf or a
  loss above `divergence_loss` -> `diverged_step` is the first such step;
- `record_validation(cfg, vl, va, epoch)`: best values, early stopping, target error;
- `close_epoch(cfg, row, reason)`: the stop decision once the epoch row is complete (the
  validation's reason, a non-finite validation loss, an `until:` target, optionally a
  `stop:` cap), else plateau decay for the next epoch;
- `probe_due(cfg, epoch)`, `saves_checkpoints(cfg)`: when probes run during training and
  whether init/final weights are saved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from workers.budget import cap_reached, target_reached
from workers.config import TrialConfig

Rows = list[dict[str, Any]]


def is_divergent(loss: float, limit: float) -> bool:
    """A loss that ends a trial as diverged: NaN/inf, or above `limit` (divergence_loss)."""
    return not math.isfinite(loss) or loss > limit


def first_divergent(losses: Sequence[float], limit: float) -> int | None:
    """Index of the first divergent loss of `losses` (see is_divergent), or None."""
    return next((i for i, v in enumerate(losses) if is_divergent(float(v), limit)), None)


@dataclass
class TrialState:
    """Mutable state of one running trial (see the module docstring)."""

    epoch: int = 0  # the last finished epoch (1-based; 0 before the first)
    step: int = 0  # optimizer steps taken
    decay: float = 1.0  # plateau decay factor of the lr
    decays: int = 0  # plateau decays applied
    best_val: float = math.inf  # best finite validation loss
    best_epoch: int = -1
    best_step: int = -1
    best_acc: float = 0.0  # best finite validation accuracy
    since_best: int = 0  # early-stopping patience used (epochs, or steps in "steps" mode)
    plateau: int = 0  # validations without improvement since the last decay
    elapsed_s: float = 0.0  # training time of the epochs (evaluations excluded)
    steps_to_target: int = -1
    diverged_step: int = -1
    epochs: Rows = field(default_factory=list)
    steps: Rows = field(default_factory=list)
    layers: Rows = field(default_factory=list)
    probes: Rows = field(default_factory=list)
    metrics: Rows = field(default_factory=list)  # a user loop's extra numbers (long format)
    resumed_from_epoch: int = 0
    peak_mb: float = 0.0  # CUDA peak allocated memory of the epochs so far
    stop: str | None = None  # a user loop's pending stop reason (trial.should_stop)
    measured_epochs: list[int] = field(default_factory=list)  # epochs a user loop probed

    # ------------------------------------------------------------------ resume form
    def as_saved(self) -> dict[str, Any]:
        """The checkpoint's `state` dict (string keys; row lists shared, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrialState:
        """The state of a checkpoint's `state` dict (unknown keys ignored, missing keys at
        their defaults: a checkpoint from older code loads)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    # ------------------------------------------------------------------ bookkeeping
    @property
    def val_acc_seen(self) -> bool:
        """Whether any epoch row holds a finite validation accuracy."""
        return any(math.isfinite(r.get("val_acc", math.nan)) for r in self.epochs)

    def diverged_in(self, losses: Sequence[float], limit: float, steps_done: int) -> bool:
        """Check the epoch's batch losses (the last `steps_done` steps, ending at `step`);
        on divergence record diverged_step (the first bad step) and return True."""
        first = first_divergent(losses, limit)
        if first is None:
            return False
        self.diverged_step = self.step - steps_done + first + 1
        return True

    def record_validation(self, cfg: TrialConfig, vl: float, va: float, epoch: int) -> str | None:
        """Early-stopping, plateau and target bookkeeping of one validation (host values);
        returns the stop reason ("target_reached", "early_stopping") or None. A non-finite
        loss is not a validation (close_epoch ends the trial as diverged)."""
        es = cfg.early_stopping
        if not math.isfinite(vl):
            return None
        if vl < self.best_val - (es.min_delta if es else 0.0):
            self.best_val, self.best_epoch, self.best_step = vl, epoch, self.step
            self.since_best = self.plateau = 0
        else:
            self.since_best += es.eval_every_steps if (es and es.unit == "steps") else 1
            self.plateau += 1
        if math.isfinite(va):  # NaN: the loss defines no accuracy (e.g. mse regression)
            self.best_acc = max(self.best_acc, va)
        if cfg.target_val_error is not None and 1.0 - va <= cfg.target_val_error:
            if self.steps_to_target < 0:
                self.steps_to_target = self.step
            return "target_reached"
        if es is not None and self.since_best >= es.patience:
            return "early_stopping"
        return None

    def close_epoch(
        self, cfg: TrialConfig, row: dict[str, Any], reason: str | None, caps: bool = False
    ) -> str | None:
        """The stop decision of an epoch end whose row is complete and validated (`reason`:
        the validation's). In order: that reason; a non-finite validation loss (diverged at
        this step); an `until:` target; with `caps`, a `stop:` cap on the row's counters (a
        user loop's; batchlab's loops check caps at every step). None = go on, after the
        plateau decay the next epoch trains with."""
        if reason is not None:
            return reason
        if "val_loss" in row and not math.isfinite(row["val_loss"]):
            self.diverged_step = self.step
            return "diverged"
        if (target := target_reached(cfg, row)) is not None:
            return target
        if caps:
            counters = (
                int(row.get("step") or 0),
                int(row.get("examples_seen") or 0),
                float(row.get("elapsed_s") or 0.0),
            )
            if (cap := cap_reached(cfg, *counters)) is not None:
                return cap
        self.decay_on_plateau(cfg)
        return None

    def decay_on_plateau(self, cfg: TrialConfig) -> None:
        """lr *= factor once `patience` validations passed without improvement (at most
        `max_decays` times); the plateau counter starts again."""
        pd = cfg.plateau_decay
        if pd is not None and self.plateau >= pd.patience and self.decays < pd.max_decays:
            self.decay *= pd.factor
            self.decays += 1
            self.plateau = 0

    def add_peak(self, peak_mb: float) -> None:
        self.peak_mb = max(self.peak_mb, peak_mb)

    def drop_from(self, epoch: int) -> None:
        """Forget the epoch, layer and probe rows of `epoch` and later (a resumed user loop
        running them again)."""
        self.epochs = [r for r in self.epochs if r["epoch"] < epoch]
        self.layers = [r for r in self.layers if r["epoch"] < epoch]
        self.probes = [r for r in self.probes if r["epoch"] < epoch]


def probe_due(cfg: TrialConfig, epoch: int) -> bool:
    """Whether the probes run at the end of `epoch` during training (probe_every_epochs; the
    last epoch is probed by the end-of-training probes instead)."""
    k = cfg.measure.probe_every_epochs
    return bool(k) and epoch % k == 0 and epoch < cfg.max_epochs


def saves_checkpoints(cfg: TrialConfig) -> bool:
    """Whether init and final weights are saved (measure.checkpoints)."""
    return cfg.measure.checkpoints


def validates_in_steps(cfg: TrialConfig) -> int:
    """The validation interval in steps of "steps" early stopping, else 0."""
    es = cfg.early_stopping
    return es.eval_every_steps if (es is not None and es.unit == "steps") else 0
