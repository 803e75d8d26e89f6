"""Signals a cluster sends to the driver: SIGTERM (SLURM preemption and time limits,
Kubernetes pod deletion) and SIGHUP (a closed terminal or SSH session) stop a run the way
Ctrl-C does: the running trials are cancelled, the run is recorded as cancelled, the DuckDB
file is rebuilt, the resume hint is printed, and the command exits 128 + the signal's
number (143, 129; 130 for Ctrl-C).

`install()` makes either signal raise `Terminated`, a KeyboardInterrupt, so every place
that already handles Ctrl-C (scheduler/runner.py, scheduler/packing.py) handles them too.
Only the first one raises: the cleanup after it must finish within the cluster's grace
period (SLURM's default is 30 s), so a repeated signal is recorded and ignored. Ray's
`ray.init` installs its own SIGTERM handler (`sys.exit`, which ended a run in a native
abort, exit 134): `scheduler.ray_setup.init_ray` calls `install()` again after it.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """A SIGTERM or SIGHUP received by the driver: a Ctrl-C with another exit code."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


_received: list[int] = []


def _handler(signum: int, frame) -> None:
    first = not _received
    _received.append(signum)
    if first:
        raise Terminated(signum)


def install() -> None:
    """Make SIGTERM and SIGHUP raise `Terminated` in the main thread (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def received() -> int | None:
    """The first SIGTERM/SIGHUP this process received, or None."""
    return _received[0] if _received else None


def exit_code(default: int = 130) -> int:
    """128 + the first signal received (143 SIGTERM, 129 SIGHUP); `default` for Ctrl-C."""
    sig = received()
    return 128 + sig if sig else default


def reset() -> None:
    """Forget received signals (for tests that run several commands in one process)."""
    _received.clear()
