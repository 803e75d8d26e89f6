"""Storage that cannot be written: a read-only file system, a full disk, no permission, a
root that is a file. `check_writable` proves the root writable before Ray starts (and in
`--dry-run`); `describe` turns such an OSError raised anywhere in a command into one line,
"batchlab: cannot write PATH: <strerror>; <what to do>" (batchlab/cli.py prints it and
exits 5, docs/cli.md)."""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
from pathlib import Path

from warehouse.layout import TMP_MARK, Layout

HINTS = {
    errno.ENOSPC: "the disk is full: free space there (or pass --storage on another disk), then "
    "run the same command again; committed trials are kept",
    errno.EDQUOT: "the disk quota is exceeded: free space there (or pass --storage elsewhere), "
    "then run the same command again; committed trials are kept",
    errno.EROFS: "the file system is read-only: pass --storage a writable directory",
    errno.EACCES: "no permission to write there: fix its permissions or pass --storage a "
    "directory you can write",
    errno.EPERM: "not permitted to write there: fix its permissions or pass --storage a "
    "directory you can write",
    errno.ENOTDIR: "a part of that path is a file, not a directory: pass --storage a directory",
    errno.EEXIST: "a file is in the way of a directory there: pass --storage a directory",
}


class StorageUnwritable(OSError):
    """The storage root (or a file under it) cannot be written; str() is the one line."""

    def __init__(self, err: int, line: str):
        super().__init__(err, line)
        self.line = line

    def __str__(self) -> str:
        return self.line


def describe(exc: BaseException, where: str | None = None) -> str | None:
    """One line for an OSError that means "cannot write here", else None; `where` names
    the place when the error does not (a failed write or fsync carries no file name)."""
    if isinstance(exc, StorageUnwritable):
        return str(exc)
    if not isinstance(exc, OSError) or exc.errno not in HINTS:
        return None
    path = _visible(str(exc.filename or _path_in(str(exc)) or where or "the storage root"))
    return f"batchlab: cannot write {path}: {os.strerror(exc.errno)}; {HINTS[exc.errno]}"


def engine_error(exc: BaseException, path: str) -> OSError | None:
    """An OSError for an engine's error that reports a write failure in words only (DuckDB:
    "IO Error: Could not write file ...: No space left on device"), naming `path`."""
    if isinstance(exc, OSError):
        return None
    text = str(exc)
    for code in HINTS:
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), path)
    return None


def _visible(path: str) -> str:
    """A writer's hidden temporary (`.<name>.tmp-<host>-<pid>-<id>`) named as the file it
    was writing."""
    parent, _, name = path.rpartition("/")
    if name.startswith(".") and TMP_MARK in name:
        return f"{parent}/{name[1:].split(TMP_MARK)[0]}"
    return path


def _path_in(message: str) -> str | None:
    """The path pyarrow names in its messages ("Cannot create directory '/a/b'. ...")."""
    m = re.search(r"'(/[^']*)'", message)
    return m.group(1) if m else None


def check_writable(layout: Layout, *, create: bool = True) -> None:
    """Create and remove a probe file at the root (through the Layout, so an object store
    is probed too); raises StorageUnwritable naming the path and what to do. With
    `create=False` (`--dry-run`, which writes nothing) a local root that does not exist yet
    is not created: the probe goes to its nearest existing folder."""
    if not create and layout.is_local:
        return _probe_nearest(Path(layout.base))
    probe = layout.path(f".write-probe-{socket.gethostname()}-{os.getpid()}")
    try:
        layout.put_bytes(probe, b"batchlab write probe\n")
        layout.delete(probe)
    except OSError as exc:
        line = describe(exc)
        if line is None:
            line = (
                f"batchlab: cannot write {layout.root}: {exc}; pass --storage a writable directory"
            )
        raise StorageUnwritable(exc.errno or errno.EIO, line) from exc


def _probe_nearest(root: Path) -> None:
    here = root
    while not os.path.lexists(here) and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise StorageUnwritable(
            errno.ENOTDIR,
            f"batchlab: cannot write {root}: {os.strerror(errno.ENOTDIR)} ({here} is a file); "
            f"{HINTS[errno.ENOTDIR]}",
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".batchlab-write-probe-", dir=here)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        exc.filename = exc.filename or str(here)
        raise StorageUnwritable(exc.errno or errno.EIO, describe(exc) or str(exc)) from exc
