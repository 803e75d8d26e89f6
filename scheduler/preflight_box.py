"""The preflight's calls into user code, in a child process with a time limit per call.

`run_boxed(spec, limit_s)` starts `python -m scheduler.preflight` (whose main calls
`serve` with the checks: this module never imports the preflight), sends it the grid
spec (JSON on stdin) and reads, on the child's stdout, one JSON line before each call into
user code (`{"stage": [key, value]}`: the import of a path, a loader, a factory, a forward,
a loss) and a last line with the result (`{"result": {"problems": [...], "notes": [...]}}`).
The user's own prints go to stderr. A call that runs longer than `limit_s` has the child
killed (SIGKILL, by its pid) and becomes one problem naming the key; a child that exits
without a result (os._exit, a crash, the OOM killer) is named the same way. SystemExit and
KeyboardInterrupt out of user code are caught in the child (scheduler/preflight.py), so a
loader that calls sys.exit(0) is a problem line, never a silent exit 0 of `batchlab run`.

Why a process, not a thread: a thread stuck in `while True: pass` cannot be stopped, and a
daemon thread would keep burning the driver's CPU for the whole run.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler.spec import GridSpec

REPO = Path(__file__).resolve().parent.parent
STARTUP_S = 60.0  # the child's own start (Python, torch, pydantic): not user code


Result = dict[str, list[str]]  # {"problems": [...], "notes": [...]}


def run_boxed(spec: GridSpec, limit_s: float, child: str = "scheduler.preflight") -> Result:
    """The preflight checks of `spec` in a child process (`python -m child`, whose main
    calls `serve`), each call into user code limited to `limit_s` seconds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    stage = ("preflight", "starting its process")
    try:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(spec.model_dump_json().encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + max(limit_s, STARTUP_S)
        buf = b""
        result = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                key, value = stage
                return {
                    "problems": [
                        f"{key}: {value!r} did not return within {limit_s:g} s (a loop that "
                        "never ends, or a slow download?); the preflight stopped it. Make the "
                        "call cheap, or raise preflight_timeout_s in grid.yaml "
                        "($BATCHLAB_PREFLIGHT_TIMEOUT_S)"
                    ],
                    "notes": [],
                }
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "stage" in msg:
                    stage = tuple(msg["stage"])
                    deadline = time.monotonic() + limit_s
                else:
                    result = msg["result"]
        code = proc.wait()
        if result is None:
            key, value = stage
            return {
                "problems": [
                    f"{key}: {value!r}: the preflight's process ended (exit code {code}) "
                    "without a result while running it: the code exited its process "
                    "(os._exit?), crashed, or ran out of memory"
                ],
                "notes": [],
            }
        return {"problems": result["problems"], "notes": result["notes"]}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def serve(check: Callable[[GridSpec, Callable[[str, str], None]], Any]) -> None:
    """The child's side: read the spec, run `check(spec, stage)` (its result has
    `problems` and `notes`), report each stage and the result, then end the process."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the user's prints (and C-level writes) go to stderr, not the protocol
    sys.stdout = sys.stderr

    def stage(key: str, value: str) -> None:
        proto.write(json.dumps({"stage": [key, value]}) + "\n")
        proto.flush()

    spec = GridSpec.model_validate(json.loads(sys.stdin.read()))
    try:
        checks = check(spec, stage)
        result = {"problems": checks.problems, "notes": checks.notes}
    except BaseException as exc:  # the checks themselves, never silently
        result = {"problems": [f"preflight: failed: {type(exc).__name__}: {exc}"], "notes": []}
    proto.write(json.dumps({"result": result}) + "\n")
    proto.flush()
    os._exit(0)  # threads the user's code started must not keep the child alive
