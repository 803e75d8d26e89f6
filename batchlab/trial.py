"""The running trial, for your own training loop: `from batchlab import trial`.

Inside a function run by batchlab (`trainable: "mypkg.train:main"` in grid.yaml), this
module is the running trial: `trial.config`, `trial.params`, `trial.data`, `trial.loss`,
`trial.build_model()`, `trial.watch(model)`, `trial.log_step(...)`,
`trial.log_epoch(epoch, train_loss=..., val_loss=..., **extra)`, `trial.should_stop`,
`trial.save_checkpoint(state)`, `trial.load_checkpoint()`, `trial.evaluate(model)`,
`trial.measure(...)`. The same object is passed to the function when it takes an argument.
See docs/custom.md; the implementation is `workers/trial_api.py`.
"""

from __future__ import annotations

from typing import Any

from workers.trial_api import Trial, current

__all__ = ["Trial", "current"]


def __getattr__(name: str) -> Any:
    # PEP 562: `trial.log_epoch(...)`, `trial.config`, ... on the trial running now.
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(current(), name)
