"""DuckDB over the Parquet files: the views every query, the app and `batchlab sql` use.

Views (one per table in `warehouse.schemas.SCHEMAS`):
- `<table>_raw`: the rows a reader uses (`Layout.table_files`): every per-trial file, plus
  the live compacted parts minus rows whose key has a per-trial file (a per-trial file takes
  precedence over compacted rows of the same trial). Columns are always the current
  schema's, typed (`union_by_name` + a typed empty relation), so files of an older schema
  version read with NULLs for newer columns;
  `trials_raw`, `probes_raw`, `analyses_raw` and `landscapes_raw` are read into memory
  when the connection is made (`MATERIALIZED`); the big tables are read per query;
- `trials`: the committed trials; `epochs`, `steps`, `layers`, `probes`: rows of committed
  trials only (a semi-join on `trials`, the commit marker); `landscapes`, `analyses`: as is;
- `corrupt_files(path, reason)`: files skipped because they are not readable Parquet
  (`batchlab check --quarantine` moves them aside);
- in `batchlab.duckdb` only (not in `connect`'s connections: binding them costs 0.2-0.3 s
  per connection), table macros for the named queries (`FROM critical_batch_size()`;
  warehouse/macros.py).

A connection reads the files listed when it was made (explicit file lists: a file renamed
into place meanwhile never half-appears); reconnect to see newer trials. Local roots are
read by DuckDB's own Parquet reader; object-store roots (`s3://`) through pyarrow datasets
registered with DuckDB (DuckDB's httpfs extension is not needed).
"""

from __future__ import annotations

import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from warehouse.layout import Layout, TableFile, TableFiles
from warehouse.schemas import KEY_COLUMN, SCHEMAS, TRIAL_TABLES

_DUCK_TYPES = {
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.list_(pa.int64()): "BIGINT[]",
}


# Small tables read into memory when a connection is made: one row (or a few) per trial,
# but one file per trial before compaction, and nearly every query joins `trials`; reading
# them once per connection instead of once per query is the difference between seconds
# and milliseconds on an uncompacted warehouse of thousands of trials.
MATERIALIZED = ("trials", "probes", "analyses", "landscapes")


def _empty_select(schema: pa.Schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {_DUCK_TYPES[f.type]}) AS {f.name}" for f in schema)
    return f"SELECT {cols} WHERE false"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read_parquet(paths: list[str]) -> str:
    lst = ", ".join(_sql_str(p) for p in paths)
    return f"read_parquet([{lst}], union_by_name = true)"


@dataclass
class Snapshot:
    """The files a connection reads, listed and checked once."""

    files: dict[str, TableFiles]
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def snapshot(layout: Layout, *, validate: bool = True) -> Snapshot:
    """List every table's reader files; with `validate`, drop (and report) files that are
    not whole Parquet files (two small reads per file: magic bytes and footer length)."""
    # `trials` is listed first: every trial committed in this listing wrote its other
    # tables' files before its trials row, so the later listings hold all of its rows.
    files = {t: layout.table_files(t) for t in ("trials", *(t for t in SCHEMAS if t != "trials"))}
    if not validate:
        return Snapshot(files)
    todo: list[TableFile] = [f for tf in files.values() for f in (*tf.per_trial, *tf.parts)]

    def problem(f: TableFile) -> str | None:
        return layout.parquet_problem(f.path, f.size)

    if layout.is_local:
        problems = list(map(problem, todo))
    else:  # one round trip per file: overlap them
        with ThreadPoolExecutor(16) as pool:
            problems = list(pool.map(problem, todo))
    bad = {f.path: why for f, why in zip(todo, problems, strict=True) if why}
    if not bad:
        return Snapshot(files)
    for t, tf in files.items():
        files[t] = TableFiles(
            t,
            [f for f in tf.per_trial if f.path not in bad],
            [f for f in tf.parts if f.path not in bad],
            tf.stale_parts,
        )
    corrupt = sorted(bad.items())
    warnings.warn(
        f"{len(corrupt)} corrupt Parquet file(s) skipped, e.g. {corrupt[0][0]}: {corrupt[0][1]}; "
        f"see the corrupt_files view, or run `batchlab check --storage {layout.root} --quarantine`",
        RuntimeWarning,
        stacklevel=3,
    )
    return Snapshot(files, corrupt)


def _register_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """A real (in-memory) DuckDB table from Arrow, not a view over a Python object."""
    tmp = f"_arrow_{uuid.uuid4().hex}"
    con.register(tmp, table)
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {tmp}")
    con.unregister(tmp)


def _raw_select(con: duckdb.DuckDBPyConnection, layout: Layout, table: str, tf: TableFiles) -> str:
    """The SELECT behind `<table>_raw` (see the module docstring)."""
    schema = SCHEMAS[table]
    selects = [_empty_select(schema)]
    if layout.is_local:
        per_trial = _read_parquet([f.path for f in tf.per_trial]) if tf.per_trial else None
        parts = _read_parquet([f.path for f in tf.parts]) if tf.parts else None
    else:
        per_trial = parts = None
        for kind, fs in (("pt", tf.per_trial), ("part", tf.parts)):
            if fs:
                name = f"_{table}_{kind}_ds"
                con.register(
                    name,
                    pads.dataset(
                        [f.path for f in fs], schema=schema, format="parquet", filesystem=layout.fs
                    ),
                )
                if kind == "pt":
                    per_trial = name
                else:
                    parts = name
    if per_trial:
        selects.append(f"SELECT * FROM {per_trial}")
    if parts:
        shadowed = tf.shadowed
        if shadowed:
            key = KEY_COLUMN[table]
            _register_table(
                con,
                f"_shadow_{table}",
                pa.table({"experiment": [e for e, _ in shadowed], "key": [k for _, k in shadowed]}),
            )
            selects.append(
                f"SELECT r.* FROM {parts} r ANTI JOIN _shadow_{table} s "
                f"ON r.experiment = s.experiment AND r.{key} = s.key"
            )
        else:
            selects.append(f"SELECT * FROM {parts}")
    return " UNION ALL BY NAME ".join(selects)


def _define_committed_views(con: duckdb.DuckDBPyConnection) -> None:
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


def define_views(con: duckdb.DuckDBPyConnection, layout: Layout, snap: Snapshot) -> None:
    """Create every view of the module docstring in `con` over the files of `snap`."""
    # (No `parquet_metadata_cache`: at ~80 KB per footer of a 60-column trials file, the
    # footers of tens of thousands of per-trial files would not fit a 2 GB memory limit.)
    con.execute("SET preserve_insertion_order = false")  # faster snapshots; order is free
    for table in SCHEMAS:
        sel = _raw_select(con, layout, table, snap.files[table])
        if table in MATERIALIZED:
            con.execute(f"CREATE OR REPLACE TABLE _{table}_snapshot AS {sel}")
            sel = f"SELECT * FROM _{table}_snapshot"
        con.execute(f"CREATE OR REPLACE VIEW {table}_raw AS {sel}")
    con.execute("RESET preserve_insertion_order")
    _define_committed_views(con)
    _register_table(
        con,
        "corrupt_files",
        pa.table(
            {"path": [p for p, _ in snap.corrupt], "reason": [r for _, r in snap.corrupt]},
            schema=pa.schema([("path", pa.string()), ("reason", pa.string())]),
        ),
    )


def connect(
    root: str | Layout | None = None,
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
    validate: bool = True,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the warehouse views over `root`.

    Corrupt files are skipped with a RuntimeWarning and listed in the `corrupt_files` view;
    every query answers from the rest."""
    layout = root if isinstance(root, Layout) else Layout.open(root)
    config = {}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(":memory:", config=config)
    define_views(con, layout, snapshot(layout, validate=validate))
    return con


# ---- the DuckDB file for outside clients ------------------------------------------------

# The storage format `batchlab.duckdb` is written in: DuckDB 1.1 and every later release
# read it (DuckDB 2.0 writes its own v2.0.0 format by default, which releases before 2.0
# refuse: "version number 69, but we can only read versions between 64 and 68").
STORAGE_VERSION = "v1.1.0"
ROOT_MACRO = "batchlab_root"
_PART_LIKE = "%/part-g%-%.parquet"  # compacted files (Layout.PART_RE), as a LIKE pattern


def _root_macro_sql(db_name: str) -> str:
    """`batchlab_root()`: the directory of the `batchlab.duckdb` file the views are read
    from, with a trailing '/' ('' when it was opened by a relative name from its own
    directory), evaluated when a query is bound, so every path in the views is relative to
    the file's own location, never to the working directory and never to the root it was
    built in. DuckDB exposes the main database's path through its default temp_directory
    `<file>.tmp`; a session that ATTACHes the file instead names the root with
    `SET file_search_path = '<root>'`; anything else is an error that says so."""
    tmp = f"{db_name}.tmp"
    td, fsp = "current_setting('temp_directory')", "current_setting('file_search_path')"
    hint = (
        f"batchlab: cannot tell where this {db_name} lies: open it as the main database "
        f"(duckdb <root>/{db_name}), or SET file_search_path = '<root>' (the directory "
        f"holding {db_name} and tables/) before querying it from an ATTACH"
    )
    return f"""CREATE OR REPLACE MACRO {ROOT_MACRO}() AS (CASE
        WHEN {td} = {_sql_str(tmp)} THEN ''
        WHEN suffix({td}, {_sql_str("/" + tmp)}) THEN left({td}, -{len(tmp)})
        WHEN {fsp} <> '' AND NOT contains({fsp}, ',') THEN rtrim({fsp}, '/') || '/'
        ELSE error({_sql_str(hint)})
    END)"""


def _rel(layout: Layout, path: str) -> str:
    """SQL for `path` (under the root) relative to the file's location."""
    rel = path[len(layout.base) + 1 :] if path.startswith(layout.base + "/") else path
    return f"{ROOT_MACRO}() || {_sql_str(rel)}"


def _persistent_raw_sql(layout: Layout, table: str, parts: list[str]) -> str:
    """`<table>_raw` for `batchlab.duckdb`: the per-trial files by glob (trials written
    later show up without a rebuild; DuckDB skips the parts by their names), plus the live
    parts listed when the file was built (only a compaction changes them, and it rebuilds
    the file), minus compacted rows whose key has a per-trial file: `connect`'s rules.
    Every path is relative to the file's location (`batchlab_root()`)."""
    glob = _rel(layout, layout.table_glob(table))
    selects = [
        _empty_select(SCHEMAS[table]),
        f"""SELECT * EXCLUDE (filename)
            FROM read_parquet({glob}, union_by_name = true, filename = true)
            WHERE filename NOT LIKE '{_PART_LIKE}'""",
    ]
    if parts:
        key = KEY_COLUMN[table]
        lst = ", ".join(_rel(layout, p) for p in parts)
        selects.append(
            f"""SELECT r.* FROM read_parquet([{lst}], union_by_name = true) r
            ANTI JOIN (
                SELECT regexp_extract(file, '/experiment=([^/]+)/[^/]+$', 1) AS experiment,
                       regexp_extract(file, '/([^/]+)\\.parquet$', 1) AS stem
                FROM glob({glob}) WHERE file NOT LIKE '{_PART_LIKE}'
            ) s ON r.experiment = s.experiment AND r.{key} = s.stem"""
        )
    return " UNION ALL BY NAME ".join(selects)


def _attach_for_writing(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """ATTACH `path` as `out` in STORAGE_VERSION (a DuckDB 1.1 without the option writes
    its own, same, format)."""
    try:
        con.execute(f"ATTACH {_sql_str(path)} AS out (STORAGE_VERSION '{STORAGE_VERSION}')")
    except (duckdb.BinderException, duckdb.InvalidInputException, duckdb.NotImplementedException):
        if not duckdb.__version__.startswith("1.1."):
            raise
        con.execute(f"ATTACH {_sql_str(path)} AS out")


def write_duckdb_file(root: str | Layout | None = None) -> str | None:
    """(Re)create `<root>/batchlab.duckdb` with the same views, for outside DuckDB clients.

    Local roots only (a DuckDB file on an object store cannot be opened in place); returns
    the path, or None for remote roots. Built under a temporary name and renamed, so a
    client never opens a half-built file. Unlike `connect`, its views glob the per-trial
    files at query time (new trials show up), and a corrupt file makes a query fail until
    `batchlab check --quarantine` moves it aside. Written in storage format STORAGE_VERSION;
    every path in it is relative to the file's own location (`_root_macro_sql`), so a
    copied or moved root reads its own files (docs/warehouse.md "Outside clients").
    """
    layout = root if isinstance(root, Layout) else Layout.open(root)
    if not layout.is_local:
        return None
    os.makedirs(layout.base, exist_ok=True)
    tmp = layout.temp_path(layout.duckdb_file)  # a crashed build is cleaned by the next run
    db_name = layout.duckdb_file.rsplit("/", 1)[1]
    con = duckdb.connect(":memory:")
    try:
        # While building, the views are bound against this root through file_search_path.
        con.execute(f"SET file_search_path = {_sql_str(layout.base)}")
        _attach_for_writing(con, tmp)
        con.execute("USE out")
        con.execute(_root_macro_sql(db_name))
        for table, schema in SCHEMAS.items():
            # read_parquet over a glob that matches nothing is an error: an empty table gets
            # a typed empty view until the next rebuild (every `batchlab run` / `compact`).
            tf = layout.table_files(table)
            sel = (
                _persistent_raw_sql(layout, table, [f.path for f in tf.parts])
                if tf.per_trial or tf.parts
                else _empty_select(schema)
            )
            con.execute(f"CREATE OR REPLACE VIEW {table}_raw AS {sel}")
        _define_committed_views(con)
        from warehouse.macros import define_macros  # pandas, only when the file is built

        define_macros(con)
        con.execute("USE memory")
        con.execute("DETACH out")
    finally:
        con.close()
    os.replace(tmp, layout.duckdb_file)
    return layout.duckdb_file
