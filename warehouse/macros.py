"""Named queries as DuckDB table macros: `FROM critical_batch_size()` in any DuckDB client.

`batchlab.duckdb` (warehouse/db.py `write_duckdb_file`) defines one table macro per query of
`MACROS`, over every committed trial (not `connect()`'s in-memory connections: DuckDB binds
a macro's body when it is created, 0.2-0.3 s for all of them, on every connection); filter with WHERE (`FROM steps_to_target() WHERE experiment = 'x'`): each query
groups within an experiment and configuration, so filtering afterwards gives the numbers
the app shows for that selection. Each macro's body is the named query's own SQL
(warehouse/capture.py records it, default filters), with the bound parameters written in
as literals, so the macro and the Python function cannot drift apart.

What needs Python (scipy fits and bootstraps) is not a macro; its SQL input is:
- `advise_trial_steps()`: the per-trial input of `batchlab advise` (warehouse/advice.py)
  at the grid's stored target; the fit and the bootstrap run in Python;
- `sharpness_measures()`: the input of the rank table (warehouse/measures.py
  `measure_ranking`, Kendall's tau by scipy);
- `b_simple_by_epoch()`: B_simple per setting, batch size and probed epoch
  (warehouse/b_simple.py), the same rows as `batchlab advise --format json`'s `b_simple`.
docs/advise.md lists them with examples.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from warehouse.capture import inline, query_sql
from warehouse.queries import NAMED_QUERIES, Filters

# Named queries whose result is exactly their one SQL statement (no pandas afterwards).
NAMED = (
    "steps_to_target",
    "critical_batch_size",
    "sharpness_by_batch_size",
    "noise_scale_by_batch_size",
    "lr_batch_table",
    "diverged_trials",
)


def _own() -> dict[str, Callable[[], tuple[str, dict]]]:
    from warehouse.advice import Target, trial_steps_sql
    from warehouse.b_simple import b_simple_by_epoch_sql
    from warehouse.measures import sharpness_measures_sql

    return {
        "advise_trial_steps": lambda: trial_steps_sql(Filters(), Target()),
        "sharpness_measures": lambda: sharpness_measures_sql(Filters()),
        "b_simple_by_epoch": lambda: b_simple_by_epoch_sql(Filters()),
    }


def macro_sql() -> dict[str, str]:
    """name -> `CREATE OR REPLACE MACRO name() AS TABLE ...` for every macro."""
    out = {}
    sources: dict[str, Callable[[], tuple[str, dict]]] = {
        name: (lambda fn=NAMED_QUERIES[name]: query_sql(fn)) for name in NAMED
    }
    sources.update(_own())
    for name, src in sources.items():
        sql, params = src()
        out[name] = f"CREATE OR REPLACE MACRO {name}() AS TABLE {inline(sql, params).strip()}"
    return out


MACROS = (*NAMED, "advise_trial_steps", "sharpness_measures", "b_simple_by_epoch")


def define_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create every macro in `con`'s current database (binding happens when one is used)."""
    for stmt in macro_sql().values():
        con.execute(stmt)
