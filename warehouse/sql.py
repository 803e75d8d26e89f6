"""Read-only, sealed ad-hoc SQL over the warehouse: the app's SQL page and `batchlab sql`.

Three independent fences, so a gap in one is caught by another:

1. the statement: DuckDB's own parser (`extract_statements`) must find exactly one
   statement, of type SELECT (WITH ..., FROM ..., VALUES, DESCRIBE, SUMMARIZE, SHOW included)
   or EXPLAIN [ANALYZE] of a SELECT; COPY, EXPORT, ATTACH, INSTALL, LOAD, SET, RESET, PRAGMA,
   CALL, CREATE, INSERT, UPDATE, DELETE, DROP, ... are refused before anything runs;
2. the connection: the views over the storage root are created first, then
   `allowed_directories` = `<root>/tables/` (local roots), `enable_external_access = false`
   (no other file, no network, no extension install or load, no replacement scans of Python
   objects), no extension autoloading, **no temporary directory** (DuckDB adds its temp
   directory to the allowed ones, so `read_text('.tmp/...')` would read whatever lies there,
   and a big ORDER BY would spill gigabytes into the cwd: spilling is off, and a query that
   needs more than the memory limit fails with a message saying so), then
   `lock_configuration = true` (no SET afterwards). Threads and memory are capped;
3. the call: with a storage root (what the CLI and the app pass), the query runs in a
   **child process** (`python -m warehouse.sql`) with its own address-space limit (DuckDB's
   memory limit + the result bytes + headroom: long strings, result conversion and anything
   DuckDB does not account for are bounded too) and a private 0700 working directory; the
   whole call, start-up, query, fetch and conversion, runs against one deadline and the child
   is killed when it passes. The result is streamed in Arrow batches and counted: more than
   `max_bytes` bytes is refused ("result too large; add LIMIT or export"), more than
   `max_rows` rows is cut (`df.attrs["truncated"]`) or refused (`truncate=False`).

Every engine error, including one raised while the result streams out (pyarrow turns those
into `OSError`), becomes a `ReadOnlySQLError` (a `ValueError`) with a one-line message;
`batchlab sql` prints it and exits 2. Passing a connection from `readonly_connect` instead of
a root runs in-process (fences 1 and 2, the byte/row bounds and the deadline; no process
isolation): for tests and callers that reuse one connection's views.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from warehouse.db import define_views, snapshot
from warehouse.layout import Layout
from warehouse.writers import pid_alive

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_BYTES = 64 * 2**20  # Arrow bytes of a result (pandas needs a few times this)
DEFAULT_THREADS = 2
DEFAULT_MEMORY_LIMIT = "1GB"
MAX_SQL_CHARS = 100_000
# Address space the child may add beyond DuckDB's memory limit and the result bytes: Python,
# pandas and pyarrow buffers, DuckDB's untracked allocations, thread stacks.
CHILD_HEADROOM_BYTES = 1024 * 2**20
_EXPLAIN_RE = re.compile(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?", re.IGNORECASE)
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ReadOnlySQLError(ValueError):
    """The read-only SQL surface could not answer (the message says why, on one line)."""


class SQLRefused(ReadOnlySQLError):
    """A statement or an access the read-only surface does not allow."""


class SQLTimeout(ReadOnlySQLError):
    """The query ran longer than its timeout and was interrupted."""


class SQLResultTooLarge(ReadOnlySQLError):
    """The result has more bytes (or rows, with truncate=False) than the surface returns."""


class SQLOutOfMemory(ReadOnlySQLError):
    """The query needed more memory than the surface allows."""


_KINDS = {
    c.__name__: c
    for c in (ReadOnlySQLError, SQLRefused, SQLTimeout, SQLResultTooLarge, SQLOutOfMemory)
}


def parse_size(text: str) -> int:
    """'1GB' / '512MiB' / '1000' -> bytes (DuckDB's units: KB = 1000, KiB = 1024)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"memory_limit: {text!r} is not a size; use e.g. '1GB' or '512MiB'")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def readonly_connect(
    root: str | Layout | None = None,
    *,
    threads: int = DEFAULT_THREADS,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory connection with the warehouse views (see module docstring)."""
    layout = root if isinstance(root, Layout) else Layout.open(root)
    con = duckdb.connect(
        ":memory:",
        config={
            "threads": threads,
            "memory_limit": memory_limit,
            "temp_directory": "",  # no spilling: nothing on disk that SQL could read back
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            "allow_persistent_secrets": False,
        },
    )
    try:
        define_views(con, layout, snapshot(layout))
        if layout.is_local:
            # The views read explicit files under <root>/tables/; nothing else is reachable.
            con.execute(f"SET allowed_directories = [{_sql_str(layout.table_root() + '/')}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise SQLRefused unless `sql` is exactly one read-only statement."""
    if len(sql) > MAX_SQL_CHARS:
        raise SQLRefused(f"sql: {len(sql)} characters; at most {MAX_SQL_CHARS} are allowed")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SQLRefused(f"sql: not valid SQL: {_first_line(exc)}") from exc
    if len(statements) != 1:
        raise SQLRefused(
            f"sql: {len(statements)} statements; exactly one SELECT (or EXPLAIN SELECT) is allowed"
        )
    st = statements[0]
    kind = st.type
    if kind == duckdb.StatementType.EXPLAIN:
        try:
            inner = con.extract_statements(_EXPLAIN_RE.sub("", st.query, count=1))
        except duckdb.Error:  # e.g. EXPLAIN (FORMAT ...): refused rather than guessed at
            inner = []
        kind = inner[0].type if len(inner) == 1 else duckdb.StatementType.INVALID
    if kind != duckdb.StatementType.SELECT:
        snippet = " ".join(sql.split())[:60]
        word = snippet.split(" ", 1)[0].upper()
        raise SQLRefused(
            f"sql: {word} is not allowed (a {kind.name} statement: {snippet!r}); this SQL "
            "surface is read-only: one SELECT (WITH/FROM/VALUES/DESCRIBE/SUMMARIZE/SHOW) or "
            "EXPLAIN SELECT"
        )


@dataclass(frozen=True)
class _Limits:
    timeout_s: float
    max_rows: int
    max_bytes: int
    truncate: bool
    memory_limit: str


def _first_line(exc: BaseException) -> str:
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    return lines[0] if lines else type(exc).__name__


def _too_large(what: str) -> SQLResultTooLarge:
    return SQLResultTooLarge(
        f"result too large: {what}; add LIMIT, aggregate, select fewer columns, or export "
        "(`batchlab export`, or any DuckDB client on <root>/batchlab.duckdb)"
    )


def _engine_error(exc: BaseException, lim: _Limits) -> ReadOnlySQLError:
    """Any DuckDB/Arrow error -> one of our errors, with a one-line message."""
    if isinstance(exc, ReadOnlySQLError):
        return exc
    msg = _first_line(exc)
    if isinstance(exc, duckdb.InterruptException) or "INTERRUPT" in msg.upper():
        return _timeout(lim)
    if isinstance(exc, duckdb.PermissionException) or msg.startswith("Permission Error"):
        return SQLRefused(
            f"refused: {msg} (the read-only SQL surface reads the warehouse views only: no "
            "other files, extensions or settings)"
        )
    if "configuration has been locked" in str(exc):
        return SQLRefused(f"refused: settings cannot be changed here ({msg})")
    if (
        isinstance(exc, (duckdb.OutOfMemoryException, MemoryError))
        or "Out of Memory" in msg
        or "bad_alloc" in msg
    ):
        return SQLOutOfMemory(
            f"out of memory: the query needs more than this SQL surface's memory limit "
            f"({lim.memory_limit}; spilling to disk is off); narrow it (WHERE, fewer columns, "
            f"LIMIT) or use any DuckDB client on <root>/batchlab.duckdb ({msg})"
        )
    return ReadOnlySQLError(f"{type(exc).__name__}: {msg}")


def _timeout(lim: _Limits) -> SQLTimeout:
    return SQLTimeout(
        f"query interrupted after timeout_s={lim.timeout_s:g} s; narrow it (WHERE, LIMIT) "
        "or raise the timeout"
    )


def _stream(con: duckdb.DuckDBPyConnection, sql: str, lim: _Limits, deadline: float) -> pa.Table:
    """Run `sql` on `con` and fetch its result in Arrow batches within the bounds of `lim`,
    interrupting DuckDB at `deadline` (time.monotonic)."""
    check_statement(con, sql)
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        reader = con.sql(sql).to_arrow_reader(65_536)  # small batches are slow
        batches, n, nbytes, truncated = [], 0, 0, False
        for batch in reader:
            if time.monotonic() > deadline:
                raise _timeout(lim)
            if n + len(batch) > lim.max_rows:
                if not lim.truncate:
                    raise _too_large(f"more than {lim.max_rows:,} rows")
                batch, truncated = batch.slice(0, lim.max_rows - n), True
            nbytes += batch.get_total_buffer_size()
            if nbytes > lim.max_bytes:
                raise _too_large(f"more than {lim.max_bytes / 2**20:,.0f} MiB")
            batches.append(batch)
            n += len(batch)
            if truncated:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except (duckdb.Error, pa.ArrowException, OSError, MemoryError, RuntimeError) as exc:
        raise _engine_error(exc, lim) from exc
    finally:
        timer.cancel()
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"batchlab_truncated": b"1" if truncated else b"0"}
    )
    return table


def _to_pandas(table: pa.Table, lim: _Limits, deadline: float) -> pd.DataFrame:
    truncated = (table.schema.metadata or {}).get(b"batchlab_truncated") == b"1"
    try:
        df = table.replace_schema_metadata(None).to_pandas()
    except (pa.ArrowException, MemoryError) as exc:
        raise _engine_error(exc, lim) from exc
    if time.monotonic() > deadline:
        raise _timeout(lim)
    df.attrs["truncated"] = truncated
    return df


def run_readonly(
    root: str | Layout | duckdb.DuckDBPyConnection | None,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    truncate: bool = True,
    threads: int = DEFAULT_THREADS,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> pd.DataFrame:
    """Run one read-only statement over the warehouse at `root` (sealed: in a child process,
    see the module docstring) or over a connection from `readonly_connect` (in-process) and
    return at most `max_rows` rows and `max_bytes` Arrow bytes.

    Raises SQLRefused (not read-only, or a file/extension/setting access), SQLTimeout (the
    whole call ran past `timeout_s`), SQLResultTooLarge, SQLOutOfMemory or ReadOnlySQLError
    (any other SQL error), all ValueErrors with a one-line message."""
    if not timeout_s > 0 or max_rows < 0 or max_bytes <= 0:
        raise ValueError(
            f"timeout_s={timeout_s}, max_rows={max_rows}, max_bytes={max_bytes}: need "
            "timeout_s > 0, max_rows >= 0, max_bytes > 0"
        )
    lim = _Limits(timeout_s, max_rows, max_bytes, truncate, memory_limit)
    deadline = time.monotonic() + timeout_s
    if isinstance(root, duckdb.DuckDBPyConnection):
        return _to_pandas(_stream(root, sql, lim, deadline), lim, deadline)
    with duckdb.connect(":memory:") as parser:  # refuse before starting a process for it
        check_statement(parser, sql)
    layout = root if isinstance(root, Layout) else Layout.open(root)
    if layout.is_local and Path(layout.base).exists() and not Path(layout.base).is_dir():
        # (A root that does not exist yet is an empty warehouse: its views have no rows.)
        raise ReadOnlySQLError(
            f"storage root {layout.root!r} is a file, not a directory: no warehouse to query"
        )
    table = _run_in_child(layout, sql, lim, deadline, threads=threads)
    return _to_pandas(table, lim, deadline)


# ---- the child process -----------------------------------------------------------------


_PRIVATE_PREFIX = "batchlab-sql-"


def remove_stale_private_dirs() -> int:
    """Delete the private working directories (`<tmp>/batchlab-sql-<pid>-*`, a result file
    of up to `max_bytes` each) of killed `batchlab sql` processes of this user: pid gone.
    Returns the count."""
    n = 0
    for d in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*-*"):
        pid = d.name[len(_PRIVATE_PREFIX) :].split("-", 1)[0]
        try:
            st = d.lstat()
        except OSError:
            continue
        mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
        if mine and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def _run_in_child(
    layout: Layout, sql: str, lim: _Limits, deadline: float, *, threads: int
) -> pa.Table:
    remove_stale_private_dirs()
    # 0700: this user only; the pid in the name lets a later call remove it if we are killed
    private = tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-")
    try:
        request = {
            # (the child runs in its private directory: a relative root is resolved here)
            "root": layout.base if layout.is_local else layout.root,
            "sql": sql,
            "timeout_s": lim.timeout_s,
            "max_rows": lim.max_rows,
            "max_bytes": lim.max_bytes,
            "truncate": lim.truncate,
            "threads": threads,
            "memory_limit": lim.memory_limit,
            "out": f"{private}/result",
            "remaining_s": deadline - time.monotonic(),
        }
        project = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (project, os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "warehouse.sql"],
                input=json.dumps(request).encode(),
                capture_output=True,
                cwd=private,
                env=env,
                timeout=max(0.1, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:  # subprocess.run has killed and reaped it
            raise _timeout(lim) from None
        status = _child_status(proc)
        for w in status.get("warnings", []):
            warnings.warn(w, RuntimeWarning, stacklevel=4)
        if "error" in status:
            raise _KINDS.get(status["kind"], ReadOnlySQLError)(status["error"])
        path = f"{private}/result"
        if os.path.getsize(path) > lim.max_bytes + 2**20:  # the child counted; this is a fence
            raise _too_large(f"more than {lim.max_bytes / 2**20:,.0f} MiB")
        with pa.OSFile(path, "rb") as fh:
            return pa.ipc.open_stream(fh).read_all()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _child_status(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if lines:  # a status line printed in full is the answer, whatever the teardown did
        with contextlib.suppress(ValueError):
            status = json.loads(lines[-1])
            if isinstance(status, dict):
                return status
    if proc.returncode < 0:
        import signal

        how = f"was killed by {signal.Signals(-proc.returncode).name}"
    else:
        how = f"exited with code {proc.returncode}"
    err = [x for x in proc.stderr.decode(errors="replace").splitlines() if x.strip()]
    hint = (
        "; most likely it ran out of memory: narrow the query"
        if proc.returncode in (-9, -6, 137, 134) or any("MemoryError" in x for x in err)
        else ""
    )
    return {
        "kind": "SQLOutOfMemory" if hint else "ReadOnlySQLError",
        "error": f"the query process {how}{hint}" + (f" ({err[-1][:300]})" if err else ""),
    }


def _limit_address_space(extra: int) -> None:
    """Cap this process's address space at what it maps now plus `extra` bytes."""
    with open("/proc/self/status") as fh:
        vm = next(int(x.split()[1]) * 1024 for x in fh if x.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, vm + extra))


def _child_main() -> int:
    req = json.loads(sys.stdin.buffer.read())
    lim = _Limits(
        req["timeout_s"], req["max_rows"], req["max_bytes"], req["truncate"], req["memory_limit"]
    )
    deadline = time.monotonic() + req["remaining_s"]
    out: dict = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            con = readonly_connect(
                req["root"], threads=req["threads"], memory_limit=req["memory_limit"]
            )
        out["warnings"] = [str(w.message) for w in caught]
        _limit_address_space(
            parse_size(req["memory_limit"]) + 2 * req["max_bytes"] + CHILD_HEADROOM_BYTES
        )
        table = _stream(con, req["sql"], lim, deadline)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        with open(req["out"], "wb") as fh:
            fh.write(sink.getbuffer())
    except ReadOnlySQLError as exc:
        out |= {"kind": type(exc).__name__, "error": str(exc)}
    except BaseException as exc:  # every failure: one line for the parent
        err = _engine_error(exc, lim)
        out |= {"kind": type(err).__name__, "error": str(err)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    code = _child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter teardown: the S3 file system's native threads can abort it ("FATAL:
    # exception not rethrown", SIGABRT) after the answer is written and reported.
    os._exit(code)
