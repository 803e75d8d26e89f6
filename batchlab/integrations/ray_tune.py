"""Ray Tune: `BatchlabLoggerCallback` (a `LoggerCallback`), a sweep into the warehouse as
it runs.

```python
from batchlab.integrations.ray_tune import BatchlabLoggerCallback

tuner = tune.Tuner(train_fn, param_space=space, run_config=tune.RunConfig(
    callbacks=[BatchlabLoggerCallback(experiment="my-sweep", max_epochs=20)]))
```

Each Tune trial is one batchlab trial, started when Tune starts it, one `epochs` row per
reported result (the `epoch` metric numbers it, else `training_iteration`; train_loss,
val_loss, val_acc, lr by their common names, Tune's `time_this_iter_s` as the epoch time;
other numbers in `metrics`), committed when it ends (`failed` with Tune's error when it
errored), so `batchlab status` shows a running sweep and `batchlab report` judges it.
Batch size, lr and seed come from the trial's config (common names, as `batchlab import`);
every other scalar of the config is a free axis. Trials of one config without a seed
(num_samples > 1) are replicates: seeds 0, 1, ... in the order Tune starts them. The
callback runs on the Tune driver: the model lives in Tune's workers, so there are no
distances, norms or steps (use the Lightning / Hugging Face integrations inside the
trainable for those).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from ray.tune.logger import LoggerCallback

from batchlab.integrations.session import (
    Recorder,
    epoch_values,
    flatten,
    integration_session,
    numbers,
    trial_config,
)
from warehouse.layout import check_experiment

FRAMEWORK = "ray-tune"
# Tune's bookkeeping of a result: not metrics of the trial.
SKIP = {
    "timestamp",
    "done",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "episodes_total",
    "timesteps_since_restore",
    "checkpoint_dir_name",
    "should_checkpoint",
    "date",
    "trial_id",
    "experiment_tag",
    "hostname",
    "node_ip",
}


def _error_text(trial: Any) -> str | None:
    """The error Tune recorded for a failed trial (its local error.txt), or None."""
    path = getattr(trial, "error_file", None)
    try:
        return (Path(path).read_text().strip() or None) if path else None
    except OSError:
        return None


class BatchlabLoggerCallback(LoggerCallback):
    """Writes every trial of a Tune run as a committed batchlab trial (see the module).

    storage: the storage root (default `$BATCHLAB_STORAGE` or ./batchlab-runs);
    experiment: the study's name; max_epochs: the sweep's epoch budget (identity: a trial's
    `max_epochs`; default: the config's `max_epochs` / `epochs` / `num_epochs`, else
    `session.UNKNOWN_MAX_EPOCHS`, 1000)."""

    def __init__(
        self,
        storage: str | os.PathLike | None = None,
        experiment: str = "ray-tune",
        *,
        max_epochs: int | None = None,
    ) -> None:
        self.storage, self.experiment = storage, check_experiment(experiment)
        self.max_epochs = max_epochs
        self._recs: dict[str, Recorder] = {}
        self._replicates: dict[str, int] = {}
        self._shift: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self.results: dict[str, dict[str, Any] | None] = {}  # Tune trial id -> commit record

    def log_trial_start(self, trial: Any) -> None:
        if trial.trial_id in self._recs:  # a restored trial: its session goes on
            return
        hp = {k: v for k, v in flatten(trial.config or {}).items() if not callable(v)}
        if not any(k in hp for k in ("seed", "random_seed")):
            key = repr(sorted((k, repr(v)) for k, v in hp.items()))
            hp["seed"] = self._replicates[key] = self._replicates.get(key, -1) + 1
        cfg = trial_config(
            hp, framework=FRAMEWORK, max_epochs=self.max_epochs, model=trial.trainable_name
        )
        self._recs[trial.trial_id] = Recorder(
            session=integration_session(
                cfg,
                FRAMEWORK,
                ray.__version__,
                storage=self.storage,
                experiment=self.experiment,
            )
        )

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        rec = self._recs.get(trial.trial_id)
        if rec is None:
            return
        vals = {k: v for k, v in numbers(flatten(result)).items() if k not in SKIP}
        vals = {k: v for k, v in vals.items() if not k.startswith("config.")}
        epoch = int(vals.pop("epoch", result.get("training_iteration", iteration)))
        kw = epoch_values(vals)
        if isinstance(result.get("time_this_iter_s"), int | float):
            kw["epoch_time_s"] = float(result["time_this_iter_s"])
        shift = self._shift.setdefault(trial.trial_id, 1 if epoch == 0 else 0)  # 0-based
        last = self._last.get(trial.trial_id, 0)
        epoch = max(epoch + shift, last + 1)  # two results of one epoch: the next epoch
        self._last[trial.trial_id] = epoch
        rec.call("log_epoch", epoch, **kw)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        rec = self._recs.pop(trial.trial_id, None)
        if rec is None:
            return
        error = None
        if failed:
            error = f"ray tune: {_error_text(trial) or 'the trial failed'}"
        self.results[trial.trial_id] = rec.finish(error)
