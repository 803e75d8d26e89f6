"""Hugging Face `Trainer`: `BatchlabCallback` (a `TrainerCallback`).

```python
from batchlab.integrations.huggingface import BatchlabCallback

trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                  callbacks=[BatchlabCallback(experiment="my-study")])
```

The run becomes one batchlab trial: batch size (per device x devices x gradient
accumulation), lr, seed, epochs and the optimizer come from `TrainingArguments` and the
Trainer; the scheduler, weight decay, warm-up, gradient accumulation, clipping and Adam
settings and `params=` are free axes (`params`). Rows: a `steps` row per optimizer step
(lr, update and gradient norms: `on_optimizer_step`, where the gradients still exist; the
Trainer reports losses only every `logging_steps`, so steps carry no batch loss), an
`epochs` row per epoch (distance from init, epoch distance, per-layer distances measured on
the live model at `on_epoch_end`; the mean of the epoch's logged training losses; the
evaluation's `eval_loss` / `eval_accuracy` as val_loss / val_acc when an evaluation follows
the epoch; other numbers in `metrics`). World process zero only. Inside a batchlab grid
(`trainable:`) it logs to the grid's trial instead (docs/integrations.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import transformers
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from batchlab.integrations.session import (
    Recorder,
    epoch_values,
    integration_session,
    numbers,
    running_trial,
    trial_config,
)
from warehouse.layout import check_experiment

FRAMEWORK = "transformers"
# TrainingArguments that change the arithmetic: free axes of the trial (when set).
AXES = (
    "weight_decay",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "optim",
    "label_smoothing_factor",
)


class BatchlabCallback(TrainerCallback):
    """Writes a `transformers.Trainer` run as one committed batchlab trial (see module).

    storage: the storage root (default `$BATCHLAB_STORAGE` or ./batchlab-runs);
    experiment: the study's name; params: more free axes (your hyperparameters)."""

    def __init__(
        self,
        storage: str | os.PathLike | None = None,
        experiment: str = "huggingface",
        *,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.storage, self.experiment = storage, check_experiment(experiment)
        self.params = dict(params or {})
        self._rec: Recorder | None = None
        self._pending: int | None = None  # an epoch that ended, logged at its evaluation
        self._losses: list[float] = []
        self._last = 0  # the last epoch logged (epochs must increase)
        self.result: dict[str, Any] | None = None

    def _start(self, args: TrainingArguments, state: TrainerState, model: Any, opt: Any) -> None:
        if self._rec is not None and self._rec.standalone:  # a train() that never ended
            self._rec.finish("a new train() began before this one ended")
        if (trial := running_trial()) is not None:
            self._rec = Recorder(trial=trial)
        else:
            hp = {k: getattr(args, k) for k in AXES if getattr(args, k, None) not in (None, "")}
            hp = {k: (v.value if hasattr(v, "value") else v) for k, v in hp.items()}
            bs = args.per_device_train_batch_size * max(1, args.world_size)
            cfg = trial_config(
                {**hp, **self.params},
                framework=FRAMEWORK,
                seed=args.seed,
                batch_size=bs * args.gradient_accumulation_steps,
                lr=args.learning_rate,
                max_epochs=math.ceil(state.num_train_epochs or args.num_train_epochs),
                model=type(model).__name__ if model is not None else None,
                optimizer=type(opt).__name__ if opt is not None else None,
            )
            device = str(next(model.parameters()).device) if model is not None else "cpu"
            self._rec = Recorder(
                session=integration_session(
                    cfg,
                    FRAMEWORK,
                    transformers.__version__,
                    storage=self.storage,
                    experiment=self.experiment,
                    device=device,
                )
            )
        self._pending, self._losses, self._last = None, [], 0
        if model is not None:
            self._rec.call("watch", model)

    def _flush(self, control: TrainerControl, metrics: Mapping[str, Any] | None = None) -> None:
        if self._rec is None or self._pending is None:
            return
        vals = epoch_values(numbers(metrics or {}))
        if "train_loss" not in vals and self._losses:
            vals["train_loss"] = sum(self._losses) / len(self._losses)
        self._rec.call("log_epoch", self._pending, **vals)
        self._pending, self._losses = None, []
        if self._rec.diverged:
            control.should_training_stop = True

    # ------------------------------------------------------------------ events
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        optimizer: Any = None,
        **kw: Any,
    ) -> None:
        if state.is_world_process_zero:
            self._start(args, state, model, optimizer)

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        lr_scheduler: Any = None,
        optimizer: Any = None,
        **kw: Any,
    ) -> None:
        if self._rec is None or not state.is_world_process_zero:
            return
        if lr_scheduler is not None:
            lr = lr_scheduler.get_last_lr()[0]
        else:
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self._rec.call("log_step", lr=lr, step=state.global_step + 1)
        if self._rec.diverged:
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kw: Any,
    ) -> None:
        if self._rec is not None and logs and "loss" in logs and state.is_world_process_zero:
            self._losses.append(float(logs["loss"]))

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._flush(control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self._rec is None or not state.is_world_process_zero:
            return
        self._flush(control)
        # Logged at the evaluation that follows (or the next epoch's begin, the end):
        # an evaluation does not change the weights the distances are taken from.
        ep = max(1, math.ceil((state.epoch or 0) - 1e-6), self._last + 1)
        self._pending = self._last = ep

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict | None = None,
        **kw: Any,
    ) -> None:
        self._flush(control, metrics)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self._rec is None or not state.is_world_process_zero:
            return
        self._flush(control)
        self.result = self._rec.finish()
