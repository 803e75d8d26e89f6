"""Lightning: `BatchlabLogger` (a `Logger`) and `BatchlabCallback` (measurements).

```python
from batchlab.integrations.lightning import BatchlabCallback, BatchlabLogger

trainer = L.Trainer(max_epochs=10, logger=BatchlabLogger(experiment="my-study"),
                    callbacks=[BatchlabCallback()])
```

The logger makes the run one batchlab trial: its hyperparameters (`save_hyperparameters`,
`log_hyperparams`) are the trial's config (batch size and lr found by their common names,
or from the dataloader and optimizer when the callback is there; every other scalar is a
free axis, `params`), each epoch's logged metrics are an `epochs` row (train_loss,
val_loss, val_acc, lr by their common names; other numbers in `metrics`). The callback adds
what batchlab measures on the live model: a `steps` row per optimizer step (batch loss, lr,
update and gradient norms) and, at each epoch end, distance from init (total and per layer)
and from the previous epoch. Rank zero only. Inside a batchlab grid (`trainable:`) it logs
to the grid's trial instead (docs/integrations.md).
"""

from __future__ import annotations

import math
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import lightning
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from batchlab.integrations.session import (
    Recorder,
    TrialSession,
    epoch_values,
    flatten,
    integration_session,
    numbers,
    running_trial,
    trial_config,
)
from warehouse.layout import check_experiment

FRAMEWORK = "lightning"


class BatchlabLogger(Logger):
    """A Lightning logger writing the run as one committed batchlab trial.

    storage: the storage root (default `$BATCHLAB_STORAGE` or ./batchlab-runs);
    experiment: the study's name; batch_size / lr / seed / params: override or add to the
    hyperparameters Lightning logs (`params` are free axes of the trial)."""

    def __init__(
        self,
        storage: str | os.PathLike | None = None,
        experiment: str = "lightning",
        *,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.storage, self.experiment = storage, check_experiment(experiment)
        self._given = {"batch_size": batch_size, "lr": lr, "seed": seed}
        self._hparams: dict[str, Any] = dict(params or {})
        self._rec: Recorder | None = None
        self._measured = False  # a BatchlabCallback logs the epochs with measurements
        self._pending: dict[int, dict[str, float]] = {}  # without it: metrics by epoch
        self._error: str | None = None
        self.result: dict[str, Any] | None = None

    # ------------------------------------------------------------------ Logger API
    @property
    def name(self) -> str:
        return self.experiment

    @property
    def version(self) -> str:
        return self._rec.trial_id if self._rec is not None else "pending"

    @property
    def save_dir(self) -> str | None:
        return None  # Lightning's checkpoints stay under the Trainer's default_root_dir

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kw: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        self._hparams.update(flatten(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._measured:
            return  # the callback reads trainer.callback_metrics at the epoch's end
        vals = numbers(metrics)
        epoch = int(vals.pop("epoch")) + 1 if "epoch" in vals else max(self._pending, default=1)
        for e in [e for e in self._pending if e < epoch]:  # an epoch is over: its row
            self._log_epoch(e, self._pending.pop(e))
        self._pending.setdefault(epoch, {}).update(vals)
        if step is not None:
            self._pending[epoch]["step"] = step

    @rank_zero_only
    def finalize(self, status: str) -> None:
        for e in sorted(self._pending):
            self._log_epoch(e, self._pending.pop(e))
        if self._rec is not None:
            error = None if status == "success" else (self._error or f"lightning: {status}")
            self.result = self._rec.finish(error)

    # ------------------------------------------------------------------ batchlab
    def recorder(
        self, trainer: Trainer | None = None, module: LightningModule | None = None
    ) -> Recorder:
        """The trial this run logs to (started on first use)."""
        if self._rec is None:
            if (trial := running_trial()) is not None:
                self._rec = Recorder(trial=trial)
            else:
                self._rec = Recorder(session=self._session(trainer, module))
        return self._rec

    def _session(self, trainer: Trainer | None, module: LightningModule | None) -> TrialSession:
        found: dict[str, Any] = {}
        if trainer is not None:
            found["max_epochs"] = _epoch_budget(trainer)
            dl = trainer.train_dataloader
            if getattr(dl, "batch_size", None):
                found["batch_size"] = dl.batch_size
            if trainer.optimizers:
                opt = trainer.optimizers[0]
                found["lr"] = opt.param_groups[0]["lr"]
                found["optimizer"] = type(opt).__name__
        hp = dict(self._hparams)
        given = {k: v for k, v in self._given.items() if v is not None}
        for k in ("batch_size", "lr"):  # the hyperparameters' value first, then the loop's
            if k not in given and not any(n in hp for n in _NAMES[k]) and k in found:
                given[k] = found[k]
        cfg = trial_config(
            hp,
            framework=FRAMEWORK,
            **given,
            max_epochs=found.get("max_epochs"),
            model=type(module).__name__ if module is not None else None,
            optimizer=found.get("optimizer"),
        )
        return integration_session(
            cfg,
            FRAMEWORK,
            lightning.__version__,
            storage=self.storage,
            experiment=self.experiment,
            device=str(module.device) if module is not None else "cpu",
        )

    def _log_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        values = dict(values)
        step = values.pop("step", None)
        kw = {"step": int(step)} if step is not None else {}
        self.recorder().call("log_epoch", epoch, **kw, **epoch_values(values))


def _epoch_budget(trainer: Trainer) -> int | None:
    """The trainer's max_epochs, or the epochs its max_steps take, or None (unknown)."""
    if (trainer.max_epochs or 0) > 0:
        return trainer.max_epochs
    n = trainer.num_training_batches
    if trainer.max_steps > 0 and isinstance(n, int) and n > 0:
        return math.ceil(trainer.max_steps / max(1, n // trainer.accumulate_grad_batches))
    return None


def _names(field: str) -> tuple[str, ...]:
    from warehouse.importers import TRIAL_FIELDS

    return TRIAL_FIELDS[field]


_NAMES = {"batch_size": _names("batch_size"), "lr": _names("lr")}


class BatchlabCallback(Callback):
    """batchlab's measurements of the live model, logged through the `BatchlabLogger` of
    the trainer (or, inside a batchlab grid without one, to the grid's trial): a `steps`
    row per optimizer step (loss, lr, update and gradient norms) and an `epochs` row per
    epoch with distance from init, epoch distance and the epoch's metrics."""

    def __init__(self) -> None:
        self._rec: Recorder | None = None
        self._logger: BatchlabLogger | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, BatchlabLogger)), None)
        if self._logger is not None:
            self._logger._measured = True
            self._rec = self._logger.recorder(trainer, pl_module)
        elif (trial := running_trial()) is not None:
            self._rec = Recorder(trial=trial)
        else:
            raise RuntimeError(
                "BatchlabCallback: add a BatchlabLogger to the Trainer's loggers "
                "(Trainer(logger=BatchlabLogger(...), callbacks=[BatchlabCallback()]))"
            )
        self._rec.call("watch", pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._rec is None or not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        kw = {"loss": loss.detach()} if loss is not None else {}
        self._rec.call("log_step", lr=lr, step=trainer.global_step, **kw)
        if self._rec.diverged:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._rec is None or not trainer.is_global_zero:
            return
        vals = epoch_values(numbers(trainer.callback_metrics))
        self._rec.call("log_epoch", trainer.current_epoch + 1, step=trainer.global_step, **vals)
        if self._rec.diverged:
            trainer.should_stop = True

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if self._logger is not None:
            self._logger._error = f"{type(exception).__name__}: {exception}"
