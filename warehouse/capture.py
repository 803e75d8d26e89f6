"""The SQL text of a named query, without running it: a stand-in connection records what
`warehouse.queries.<name>(con, filters)` would execute. warehouse/macros.py turns the text
into DuckDB table macros (the same numbers from any DuckDB client), and warehouse/advice.py
reuses the named queries' trial selection (CTE `sel`) so its numbers are the app's."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pandas as pd

from warehouse.queries import Filters


class _Recorder:
    """Enough of a DuckDB connection for a named query that runs one statement."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> _Recorder:
        self.calls.append((sql, dict(params or {})))
        return self

    def fetchdf(self) -> pd.DataFrame:
        return pd.DataFrame()


def query_sql(fn: Callable[..., Any], f: Filters | None = None) -> tuple[str, dict[str, Any]]:
    """(SQL text, bound parameters) of the one statement the named query `fn` runs for `f`
    (default: every committed trial). ValueError for a query that runs none or several."""
    rec = _Recorder()
    fn(rec, f or Filters())
    if len(rec.calls) != 1:
        raise ValueError(f"{fn.__name__} runs {len(rec.calls)} statements, not one")
    return rec.calls[0]


_SEL = re.compile(r"WITH\s+(sel AS \(.*?\))\s*,\s*\bper AS \(", re.DOTALL)


def selection_cte(f: Filters | None = None) -> tuple[str, dict[str, Any]]:
    """The named queries' CTE `sel AS (...)` (committed trials, filtered, trials equivalent
    across lr rules shared between them) and its parameters, from steps_to_target's SQL."""
    from warehouse.queries import steps_to_target

    sql, params = query_sql(steps_to_target, f)
    m = _SEL.search(sql)
    if m is None:
        raise ValueError("steps_to_target's SQL no longer starts with the CTEs sel, per")
    return m.group(1), params


def _literal(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if v is None:
        return "NULL"
    return "'" + str(v).replace("'", "''") + "'"


def inline(sql: str, params: dict[str, Any]) -> str:
    """`sql` with every `$name` replaced by the SQL literal of params[name] (a macro's body
    cannot take bound parameters)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise KeyError(f"no value for ${name}")
        return _literal(params[name])

    return re.sub(r"\$([A-Za-z_]\w*)", sub, sql)
