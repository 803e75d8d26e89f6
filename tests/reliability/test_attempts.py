"""Attempt numbers from Ray's own count (scheduler/runner.py `_ray_trial`, `ray_attempt`): a
worker killed before the trial code runs is an attempt; a task never retried is attempt 1
whatever else runs the same trial (two concurrent runs of one grid)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from scheduler.runner import _ray_trial


def record_attempt(marker: str, kill_first: int, *, attempt: int, node_id: str, ray_version: str):
    """A stand-in trial function: SIGKILLs its worker on its first `kill_first` executions
    (as a crash while starting up would), else returns the attempt it was given."""
    path = Path(marker)
    runs = int(path.read_text()) if path.exists() else 0
    path.write_text(str(runs + 1))
    if runs < kill_first:
        os.kill(os.getpid(), signal.SIGKILL)
    return attempt


def test_attempt_counts_killed_executions_and_only_this_run(ray_local, tmp_path):
    import ray.cloudpickle

    ray = ray_local
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import it
    task = ray.remote(_ray_trial).options(num_cpus=0, max_retries=3, retry_exceptions=False)
    # Killed twice before the trial could start: the third execution is attempt 3.
    assert ray.get(task.remote(record_attempt, str(tmp_path / "a"), 2, attempt_base=0)) == 3
    # Never retried: attempt 1, however often the same trial id ran elsewhere; a second
    # submission by the driver (retry_failed) continues from the executions before it.
    refs = [task.remote(record_attempt, str(tmp_path / f"b{i}"), 0, attempt_base=0)
            for i in range(2)]  # fmt: skip
    assert ray.get(refs) == [1, 1]
    assert ray.get(task.remote(record_attempt, str(tmp_path / "c"), 0, attempt_base=3)) == 4
