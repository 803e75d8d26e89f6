"""Read-only, hardened ad-hoc SQL over the warehouse: the app's SQL page and `batchlab sql`.

Two independent fences, so a gap in one is caught by the other:

1. the statement: DuckDB's own parser (`extract_statements`) must find exactly one
   statement, of type SELECT (WITH ..., FROM ..., VALUES, DESCRIBE, SUMMARIZE, SHOW included)
   or EXPLAIN [ANALYZE] of a SELECT; COPY, EXPORT, ATTACH, INSTALL, LOAD, SET, RESET, PRAGMA,
   CALL, CREATE, INSERT, UPDATE, DELETE, DROP, ... are refused before anything runs;
2. the connection: the views over the storage root are created first, then
   `allowed_directories` = `<root>/tables/` (local roots), `enable_external_access = false`
   (no other file, no network, no extension install or load, no replacement scans of Python
   objects), no extension autoloading, then `lock_configuration = true` (no SET afterwards).
   Threads and memory are capped, and a timer interrupts a query that runs too long.

Results are capped at `max_rows` rows (`df.attrs["truncated"]` says whether rows were cut).
"""

from __future__ import annotations

import re
import threading

import duckdb
import pandas as pd
import pyarrow as pa

from warehouse.db import define_views, snapshot
from warehouse.layout import Layout

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 100_000
DEFAULT_THREADS = 2
DEFAULT_MEMORY_LIMIT = "1GB"
MAX_SQL_CHARS = 100_000
_EXPLAIN_RE = re.compile(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?", re.IGNORECASE)


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ReadOnlySQLError(ValueError):
    """The read-only SQL surface could not answer (the message says why)."""


class SQLRefused(ReadOnlySQLError):
    """A statement or an access the read-only surface does not allow."""


class SQLTimeout(ReadOnlySQLError):
    """The query ran longer than its timeout and was interrupted."""


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
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            "allow_persistent_secrets": False,
        },
    )
    define_views(con, layout, snapshot(layout))
    if layout.is_local:
        # The views read explicit files under <root>/tables/; nothing else is reachable.
        con.execute(f"SET allowed_directories = [{_sql_str(layout.path('tables') + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise SQLRefused unless `sql` is exactly one read-only statement."""
    if len(sql) > MAX_SQL_CHARS:
        raise SQLRefused(f"sql: {len(sql)} characters; at most {MAX_SQL_CHARS} are allowed")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SQLRefused(f"sql: not valid SQL: {exc}") from exc
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


def run_readonly(
    root: str | Layout | duckdb.DuckDBPyConnection | None,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    threads: int = DEFAULT_THREADS,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> pd.DataFrame:
    """Run one read-only statement over the warehouse at `root` (or over a connection from
    `readonly_connect`, to reuse its views) and return at most `max_rows` rows.

    Raises SQLRefused (not read-only, or a file/extension/setting access), SQLTimeout (ran
    past `timeout_s`) or ReadOnlySQLError (any other SQL error), all ValueErrors."""
    if timeout_s <= 0 or max_rows < 0:
        raise ValueError(
            f"timeout_s={timeout_s}, max_rows={max_rows}: need timeout_s > 0, max_rows >= 0"
        )
    own = not isinstance(root, duckdb.DuckDBPyConnection)
    con = readonly_connect(root, threads=threads, memory_limit=memory_limit) if own else root
    try:
        check_statement(con, sql)
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.daemon = True
        timer.start()
        try:
            reader = con.sql(sql).to_arrow_reader(65_536)  # small batches are slow
            batches, n = [], 0
            for batch in reader:
                batches.append(batch)
                n += len(batch)
                if n > max_rows:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema).slice(0, max_rows)
        finally:
            timer.cancel()
    except duckdb.InterruptException as exc:
        raise SQLTimeout(
            f"query interrupted after timeout_s={timeout_s:g} s; narrow it (WHERE, LIMIT) "
            "or raise the timeout"
        ) from exc
    except duckdb.PermissionException as exc:
        raise SQLRefused(
            f"refused: {str(exc).splitlines()[0]} (the read-only SQL surface reads the "
            "warehouse views only: no other files, extensions or settings)"
        ) from exc
    except (duckdb.InvalidInputException, duckdb.Error) as exc:
        msg = str(exc)
        if "configuration has been locked" in msg:
            raise SQLRefused(
                f"refused: settings cannot be changed here ({msg.splitlines()[0]})"
            ) from exc
        raise ReadOnlySQLError(msg) from exc
    finally:
        if own:
            con.close()
    df = table.to_pandas()
    df.attrs["truncated"] = n > max_rows
    return df
