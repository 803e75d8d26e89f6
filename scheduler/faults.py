"""Fault injection for the reliability tests (off unless the environment asks for it).

BATCHLAB_FAULT_KILL_AT_EPOCH=N kills the worker process with SIGKILL at the end of epoch N
(before that epoch's resume checkpoint is written) on attempts listed in
BATCHLAB_FAULT_KILL_ATTEMPTS (default "1"), for trials whose id starts with
BATCHLAB_FAULT_TRIAL_PREFIX (default: every trial).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any


def kill_hook(trial_id: str, attempt: int) -> Callable[[dict[str, Any]], None] | None:
    epoch = int(os.environ["BATCHLAB_FAULT_KILL_AT_EPOCH"])
    attempts = {int(a) for a in os.environ.get("BATCHLAB_FAULT_KILL_ATTEMPTS", "1").split(",")}
    prefix = os.environ.get("BATCHLAB_FAULT_TRIAL_PREFIX", "")
    if attempt not in attempts or not trial_id.startswith(prefix):
        return None

    def hook(row: dict[str, Any]) -> None:
        if row["epoch"] == epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
