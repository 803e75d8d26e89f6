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


def test_two_concurrent_runs_of_one_grid_count_attempts_right(tmp_path, ray_tmp):
    """Two `batchlab run`s of one grid on one root at the same time (each its own embedded
    Ray): both finish, every trial is committed once with its rows once, and no trial's
    `attempt` counts the other driver's execution of it (nothing was killed: attempt 1)."""
    import shutil
    import tempfile

    from tests.reliability.helpers import (
        CliRun,
        assert_readers_see_only_committed,
        kill_pids,
        pids_mentioning,
        tiny_grid,
        write_grid,
    )

    grid = write_grid(tmp_path / "g.yaml", tiny_grid("twice", [0, 1, 2, 3]))
    root = str(tmp_path / "runs")
    other_tmp = tempfile.mkdtemp(prefix="blr-", dir="/tmp")
    runs = [CliRun(grid, root, ray_tmp), CliRun(grid, root, other_tmp)]
    try:
        for r in runs:
            r.start()
        codes = [r.wait(300) for r in runs]
        assert codes == [0, 0], [r.output()[-2000:] for r in runs]
        committed = assert_readers_see_only_committed(root, "twice")
        assert len(committed) == 4
        assert {t["status"] for t in committed.values()} == {"completed"}
        assert {t["attempt"] for t in committed.values()} == {1}, committed
    finally:
        for r in runs:
            r.cleanup()
        kill_pids(pids_mentioning(other_tmp))
        shutil.rmtree(other_tmp, ignore_errors=True)
