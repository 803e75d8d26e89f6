"""DuckDB over the Parquet files: the views every query, the app and `batchlab sql` use.

Views (one per table in `warehouse.schemas.SCHEMAS`):
- `<table>_raw`: every committed file of the table (`union_by_name`, so older schema
  versions read with NULLs for newer columns);
- `trials`: the committed trials; `epochs`, `steps`, `layers`, `probes`: rows of committed
  trials only (a semi-join on `trials`, the commit marker); `landscapes`, `analyses`: as is.

Local roots are read by DuckDB's own Parquet reader; object-store roots (`s3://`) through
pyarrow datasets registered with DuckDB (DuckDB's httpfs extension is not needed).
"""

from __future__ import annotations

import os
import uuid

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS, TRIAL_TABLES

_DUCK_TYPES = {
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}


def _empty_select(schema: pa.Schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {_DUCK_TYPES[f.type]}) AS {f.name}" for f in schema)
    return f"SELECT {cols} WHERE false"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def view_sql(layout: Layout, table: str, files: list[str] | None = None) -> str:
    """The SELECT behind `<table>_raw` for a local root: an explicit file list (so a file
    renamed into place mid-query never half-appears) or an empty typed relation."""
    files = layout.list_files(table) if files is None else files
    if not files:
        return _empty_select(SCHEMAS[table])
    lst = ", ".join(_sql_str(f) for f in files)
    return f"SELECT * FROM read_parquet([{lst}], union_by_name = true)"


def _define_views(con: duckdb.DuckDBPyConnection, layout: Layout, persistent: bool) -> None:
    for table, schema in SCHEMAS.items():
        raw = f"{table}_raw"
        if layout.is_local:
            if persistent:
                # The file for outside clients keeps a glob, so new trials show up without
                # rewriting it; an empty table gets a typed empty view instead.
                sel = (
                    f"SELECT * FROM read_parquet({_sql_str(layout.table_glob(table))}, union_by_name = true)"
                    if layout.list_files(table)
                    else _empty_select(schema)
                )
            else:
                sel = view_sql(layout, table)
            con.execute(f"CREATE OR REPLACE VIEW {raw} AS {sel}")
        else:
            files = layout.list_files(table)
            ds = pads.dataset(files, schema=schema, format="parquet", filesystem=layout.fs)
            con.register(f"{raw}_ds", ds)
            con.execute(f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM {raw}_ds")
    con.execute("CREATE OR REPLACE VIEW trials AS SELECT * FROM trials_raw")
    for table in SCHEMAS:
        if table == "trials":
            continue
        if table in TRIAL_TABLES:
            con.execute(
                f"CREATE OR REPLACE VIEW {table} AS SELECT r.* FROM {table}_raw r "
                "SEMI JOIN trials t ON r.experiment = t.experiment AND r.trial_id = t.trial_id"
            )
        else:
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {table}_raw")


def connect(
    root: str | Layout | None = None, *, threads: int | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the warehouse views over `root`."""
    layout = root if isinstance(root, Layout) else Layout.open(root)
    config = {}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(":memory:", config=config)
    _define_views(con, layout, persistent=False)
    return con


def write_duckdb_file(root: str | Layout | None = None) -> str | None:
    """(Re)create `<root>/batchlab.duckdb` with the same views, for outside DuckDB clients.

    Local roots only (a DuckDB file on an object store cannot be opened in place); returns
    the path, or None for remote roots. Built under a temporary name and renamed, so a
    client never opens a half-built file.
    """
    layout = root if isinstance(root, Layout) else Layout.open(root)
    if not layout.is_local:
        return None
    os.makedirs(layout.base, exist_ok=True)
    tmp = f"{layout.base}/.batchlab.duckdb.tmp-{uuid.uuid4().hex}"
    con = duckdb.connect(tmp)
    try:
        _define_views(con, layout, persistent=True)
    finally:
        con.close()
    os.replace(tmp, layout.duckdb_file)
    return layout.duckdb_file
