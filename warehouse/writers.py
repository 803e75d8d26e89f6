"""Who wrote a hidden temporary, and whether that writer is dead: the one rule every
cleaner of temporaries (Layout.clean_temporaries, export, the sealed SQL child's folders,
live status) applies. No torch, no Ray."""

from __future__ import annotations

import os
import socket

STALE_TMP_S = 3600.0  # a temporary this old is a dead writer's, whatever its host


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's process counts); never
    for pid <= 0 (os.kill would signal a process group)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_writer(
    host: str, pid: int, mtime: float, *, now: float, max_age_s: float = STALE_TMP_S
) -> bool:
    """Whether a temporary that process `pid` on `host` wrote (`Layout.temp_path`'s name:
    `.<name>.tmp-<host>-<pid>-<id>`), last modified at `mtime`, is a crashed writer's: older
    than `max_age_s` (any host), or this host's with its pid gone."""
    return now - mtime > max_age_s or (host == socket.gethostname() and not pid_alive(pid))
