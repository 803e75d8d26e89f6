"""What guards a trial's user code inside a Ray task (scheduler/tasks.py, pack_tasks.py).

- **Exits.** `sys.exit`, `exit()`, a KeyboardInterrupt or `os._exit` called by the user's
  code would end the Ray worker: Ray re-ran the user's code `max_retries` times and the trial
  got no row. `user_exit(exc)` tells such an exit from Ray's own (a cancel raises
  KeyboardInterrupt, Ray's SIGTERM handler a SystemExit carrying `ray_terminate_msg`), and
  `no_os_exit()` turns `os._exit(n)` called from the trial's thread into `UserExit`, so the
  task records the trial as `failed` with the cause. A worker that still dies (a crash, a
  segfault, `os._exit` from another thread) gets its `failed` row from the driver once Ray's
  retries are spent (`scheduler.runner`, `worker_died_error`).
- **Hangs.** `Deadline(seconds, on_expire)`: resources.trial_timeout_s. A hung step cannot be
  interrupted from Python (a blocking C call ignores asynchronous exceptions), so at the
  deadline a timer thread commits the trial as `failed` ("exceeded trial_timeout_s=...")
  and ends the worker process with `os._exit(EXIT_TIMED_OUT)`; Ray's retry of the task finds
  the timed-out marker of this submission and returns the failed record without running the
  trial again. Needs the timer thread to get the GIL (a C extension that hangs holding it
  cannot be stopped from inside the process).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

EXIT_TIMED_OUT = 124  # the worker's exit status after a trial_timeout_s kill (like timeout(1))


class UserExit(BaseException):
    """`os._exit(code)` called by the user's code inside a trial."""

    def __init__(self, code: int):
        super().__init__(f"os._exit({code}) called by the trial's code")
        self.code = code


def ray_cancelled() -> bool:
    """Whether Ray is cancelling the task this worker runs (without importing Ray)."""
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return bool(ray.get_runtime_context().is_canceled())
    except Exception:
        return False


def user_exit(exc: BaseException) -> str | None:
    """The cause to record when `exc` is the user's code exiting; None when it is Ray's
    (a cancel, its SIGTERM handler) or not an exit at all."""
    if isinstance(exc, UserExit):
        return str(exc)
    if isinstance(exc, SystemExit):
        if getattr(exc, "ray_terminate_msg", None) is not None:
            return None
        return f"the trial's code called sys.exit({exc.code!r}) (SystemExit)"
    if isinstance(exc, KeyboardInterrupt):
        if ray_cancelled():
            return None
        return "the trial's code raised KeyboardInterrupt"
    return None


@contextlib.contextmanager
def no_os_exit() -> Iterator[None]:
    """While the block runs, `os._exit(n)` from this thread raises UserExit(n) instead of
    ending the process; other threads (Ray's own) still exit for real."""
    real, me = os._exit, threading.get_ident()

    def _exit(code: int) -> None:
        if threading.get_ident() == me:
            raise UserExit(code)
        real(code)

    os._exit = _exit
    try:
        yield
    finally:
        os._exit = real


class Deadline:
    """Calls `on_expire(elapsed_s)` from a timer thread after `seconds` unless `finish()`
    came first; then ends the process (EXIT_TIMED_OUT). `finish()` and the expiry exclude
    each other: a trial that is committing its rows is never killed midway."""

    def __init__(self, seconds: float | None, on_expire: Callable[[float], None]):
        self.seconds, self.on_expire = seconds, on_expire
        self._lock = threading.Lock()
        self._done = False
        self._t0 = time.monotonic()
        self._timer = None
        if seconds:
            self._timer = threading.Timer(seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            try:
                self.on_expire(time.monotonic() - self._t0)
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(EXIT_TIMED_OUT)

    def finish(self) -> None:
        """The trial ended in time: cancel the timer (waits if it is firing right now)."""
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()


def timeout_error(seconds: float, elapsed: float) -> str:
    return (
        f"exceeded trial_timeout_s={seconds:g} (ran {elapsed:.1f} s; a hung step?): its worker "
        "process was killed; not retried in this run (the next `batchlab run` tries it again)"
    )


def worker_died_error(times: int, detail: str) -> str:
    return (
        f"worker process exited (os._exit or crash) {times} times running this trial; Ray's "
        f"retries are spent: {detail}"
    )
