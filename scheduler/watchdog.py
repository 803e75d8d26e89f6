"""The watchdog of an embedded Ray instance (started by `scheduler.ray_setup.init_ray`).

Ray's head processes share the driver's process group, but its agents (dashboard agent,
runtime-env agent) and a driver killed on its own (not its group) used to leave processes
alive for a minute or more. The watchdog is a tiny process, in its own session (a signal to
the driver's process group does not reach it), that outlives the driver just long enough to
tear its Ray instance down. Linux only (it reads /proc); elsewhere nothing is started.
"""

from __future__ import annotations

import os
import subprocess
import sys

# The watchdog of an embedded Ray instance: a tiny process in its own session (a signal to
# the driver's process group does not reach it) that records the driver's descendants (GCS,
# raylet, agents, workers) every half second and, once the driver is gone, however it died,
# sends them SIGTERM, then SIGKILL to what is left 2 s later. Processes are identified by
# pid and start time (a reused pid is never signalled), plus any process whose command line
# names the instance's session directory (the agents).
_WATCHDOG = r"""
import os, signal, sys, time
driver, session = int(sys.argv[1]), sys.argv[2].encode()
me = os.getpid()
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
        return int(rest[1]), rest[19]  # ppid, start time
    except (OSError, IndexError, ValueError):
        return None
def table():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stat(int(d))
            if st:
                out[int(d)] = st
    return out
def mentions(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return session in fh.read()
    except OSError:
        return False
born = (stat(driver) or (0, None))[1]
seen = {}
while born is not None and (stat(driver) or (0, None))[1] == born:
    procs = table()
    kids = {driver}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, start) in procs.items():
            if ppid in kids and pid not in kids and pid != me:
                kids.add(pid)
                seen[pid] = start
                grew = True
    time.sleep(0.5)
procs = table()
for pid, (ppid, start) in procs.items():
    if pid != me and pid not in seen and mentions(pid):
        seen[pid] = start
for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p, s in seen.items() if (stat(p) or (0, None))[1] == s]
    for p in alive:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if (stat(p) or (0, None))[1] == seen[p]]
        time.sleep(0.1)
"""


def start_watchdog(session: str | None) -> int | None:
    """Start the watchdog of the embedded Ray instance this process just started, whose
    session folder is `session` (scheduler/ray_backend.py `start_embedded`; Linux: it reads
    /proc); returns its pid, or None when not started."""
    if not session or not os.path.isdir("/proc"):
        return None
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), session],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    _WATCHDOGS.append(proc)  # kept: a collected Popen of a running process warns
    return proc.pid


_WATCHDOGS: list[subprocess.Popen] = []
