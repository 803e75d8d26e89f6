"""Reading while a compaction runs: a connection lists its files when it is made, and a
compaction may delete some of them (their rows now live in a compacted part) before a
query reads them. DuckDB then raises `IOException: No files found that match the pattern`
(or "No such file"). That is not an error of the query: reconnect (a fresh listing) and run
it again. `retry_vanished` does that a few times, then raises `CompactionInProgress` with a
message a page can show ("results are being compacted, retrying ...") instead of a
traceback. Used by the app (app/common.py); any reader holding a connection can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import duckdb

T = TypeVar("T")

_VANISHED = ("No files found", "No such file", "Cannot open file", "does not exist")


class CompactionInProgress(RuntimeError):
    """Files a query needed kept disappearing under it (a compaction is rewriting them)."""


def is_vanished_file(exc: BaseException) -> bool:
    """Whether `exc` says a file listed by the connection is gone (compacted away)."""
    if isinstance(exc, FileNotFoundError):
        return True
    if isinstance(exc, (duckdb.IOException, duckdb.InvalidInputException, OSError)):
        return any(s in str(exc) for s in _VANISHED)
    return False


def retry_vanished(
    fn: Callable[[], T],
    *,
    reset: Callable[[], object] | None = None,
    attempts: int = 4,
    delay_s: float = 0.25,
) -> T:
    """`fn()`, again after `reset()` (drop the cached connection) while it fails because a
    listed file vanished; other errors pass through unchanged. After `attempts` tries:
    CompactionInProgress (the last error chained)."""
    last: BaseException | None = None
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_vanished_file(exc):
                raise
            last = exc
            if reset is not None:
                reset()
            time.sleep(delay_s * (i + 1))
    raise CompactionInProgress(
        "results are being compacted, retrying: the files this view reads were rewritten "
        f"{attempts} times while it read them; reload the page in a few seconds"
    ) from last
