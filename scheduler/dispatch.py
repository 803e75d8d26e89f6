"""What the driver's two task loops (lone trials: scheduler/runner.py, packs:
scheduler/packing.py) share, in plain Python: the arguments every trial task gets
(`TaskArgs`), the environment its worker gets (`task_env`), and the loop that waits for the
tasks and hands each result on (`drain`). The backend passed to `drain` is
scheduler/ray_backend.py in a run; a test passes any object with `wait` and `get`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

WORKER_FILLED = ("node_id", "ray_version", "attempt")  # by scheduler/ray_backend.ray_task


@dataclass(frozen=True)
class TaskArgs:
    """The arguments of a trial task (lone: scheduler/tasks.py, pack:
    scheduler/pack_tasks.py, data-parallel: scheduler/data_parallel.py) besides its
    configs. `node_id`, `ray_version` and `attempt` are filled in the worker
    (scheduler/ray_backend.py `ray_task`); `timeout_s` and `token` concern lone trials."""

    experiment: str
    root: str
    code_version: str
    device: str = "auto"
    resume: bool = True
    num_threads: int | None = None
    data_dir: str | None = None
    code_dir: str | None = None
    node_id: str = ""
    ray_version: str = ""
    # This run's count of executions of the trial (None: counted in its checkpoint folder).
    attempt: int | None = None
    timeout_s: float | None = None  # resources.trial_timeout_s (scheduler/guards.py)
    token: str | None = None  # the driver's submission (a timed-out task's retry finds it)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of a task function for a Ray submission: every field but
        `experiment` and `root` (given positionally) and those the worker fills in."""
        d = dataclasses.asdict(self)
        for k in ("experiment", "root", *WORKER_FILLED):
            del d[k]
        return d

    def replace(self, **changes: Any) -> TaskArgs:
        return dataclasses.replace(self, **changes)


def task_env() -> dict[str, Any]:
    """Ray task options that give this run's fault-injection settings (scheduler/faults.py)
    and live-area switch (warehouse/live.py) to its worker processes only."""
    env = {
        k: v for k, v in os.environ.items() if k.startswith(("BATCHLAB_FAULT_", "BATCHLAB_LIVE"))
    }
    return {"runtime_env": {"env_vars": env}} if env else {}


class Backend(Protocol):
    """What `drain` needs of the task system (scheduler/ray_backend.py)."""

    def wait(self, refs: list[Any], timeout: float = ...) -> list[Any]: ...

    def get(self, ref: Any) -> Any: ...


def drain(
    backend: Backend,
    pending: MutableMapping[Any, T],
    on_result: Callable[[T, Any, Exception | None], None],
    *,
    poll: Callable[[], None] = lambda: None,
    on_cancel: Callable[[], None] = lambda: None,
) -> bool:
    """Wait for the tasks in `pending` (task ref -> what it runs) one at a time and call
    `on_result(item, value, None)`, or `on_result(item, None, exception)` for a task that
    raised (its worker died too often, a storage error). `on_result` may submit more tasks
    into `pending`; `poll` runs about once a second (the progress bar).

    Ctrl-C, SIGTERM or SIGHUP (scheduler/interrupts.py) end the loop: `on_cancel` runs and
    the function returns False (True: every task ended). The running tasks are not cancelled but
    disconnected from: see `stop_running` (no ray.cancel)."""
    try:
        while pending:
            done = backend.wait(list(pending), timeout=1.0)
            poll()
            for ref in done:
                item = pending.pop(ref)
                try:
                    value = backend.get(ref)
                except Exception as exc:
                    on_result(item, None, exc)
                else:
                    on_result(item, value, None)
    except KeyboardInterrupt:
        stop_running(backend)
        on_cancel()
        return False
    return True


def stop_running(backend: Any = None) -> None:
    """What the driver does to its running trials when a run is cancelled (Ctrl-C, SIGTERM,
    SIGHUP), before the DuckDB file is rebuilt: it disconnects from Ray
    (`backend.shutdown()`), so no trial commits after the rebuild (the rebuilt file holds
    every committed trial: tests/reliability/test_round3_signals.py). The embedded instance
    stops with its workers; a cluster kills a disconnected job's workers (a trial may still
    commit in that moment; the next command's rebuild lists it). Whatever a trial commits is
    whole, and the next run skips it.

    Not `ray.cancel`: cancelling a task whose result is already on its way makes Ray 2.60's
    driver abort ("Check failed: ... Tried to complete task that was not pending", exit 1,
    ray-project/ray#54798), even without force=True; it failed a CI run of
    tests/reliability/test_driver_interrupts.py."""
    if backend is None:
        import scheduler.ray_backend as backend
    shutdown = getattr(backend, "shutdown", None)
    if shutdown is not None:
        shutdown()
