"""The hardened SQL surface: SELECTs over the views work; file access outside the root,
extensions, settings, writes and every non-SELECT statement are refused with a clear
message; limits (rows, timeout, threads, memory) hold."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchlab.cli import main
from warehouse.schemas import SCHEMAS
from warehouse.sql import (
    ReadOnlySQLError,
    SQLRefused,
    SQLTimeout,
    readonly_connect,
    run_readonly,
)


@pytest.fixture(scope="module")
def con(shared_small_warehouse):
    c = readonly_connect(shared_small_warehouse)
    yield c
    c.close()


@pytest.fixture
def outside(tmp_path) -> str:
    """A Parquet file outside the storage root."""
    path = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"secret": [42]}), path)
    return str(path)


def test_selects_over_the_views_work(con, shared_small_warehouse):
    assert run_readonly(con, "SELECT count(*) AS n FROM trials")["n"].tolist() == [12]
    df = run_readonly(
        con,
        """
        WITH e AS (SELECT trial_id, max(epoch) AS last FROM epochs GROUP BY ALL)
        SELECT t.batch_size, count(*) AS n FROM trials t JOIN e USING (trial_id)
        GROUP BY ALL ORDER BY ALL
        """,
    )
    assert df["n"].sum() == 12
    assert len(run_readonly(con, "DESCRIBE epochs")) == len(SCHEMAS["epochs"])
    assert len(run_readonly(con, "FROM probes")) == 8
    assert len(run_readonly(con, "EXPLAIN SELECT * FROM steps")) >= 1
    assert len(run_readonly(con, "SUMMARIZE trials")) > 0
    # Reading the warehouse's own files directly is allowed: they are inside the root.
    path = shared_small_warehouse.table_files("trials").per_trial[0].path
    assert len(run_readonly(con, f"SELECT * FROM read_parquet('{path}')")) == 1
    # A root path (not a connection) works too, with a fresh locked connection.
    assert run_readonly(shared_small_warehouse.root, "SELECT 1 AS x")["x"].tolist() == [1]


REFUSED = {
    "copy_to": ("COPY (SELECT * FROM trials) TO '{tmp}/leak.csv'", "COPY is not allowed"),
    "copy_from": ("COPY trials FROM '/etc/passwd'", "COPY is not allowed"),
    "export": ("EXPORT DATABASE '{tmp}/dump'", "EXPORT is not allowed"),
    "install": ("INSTALL httpfs", "INSTALL is not allowed"),
    "load": ("LOAD httpfs", "LOAD is not allowed"),
    "attach": ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH is not allowed"),
    "detach": ("DETACH memory", "DETACH is not allowed"),
    "set": ("SET enable_external_access = true", "SET is not allowed"),
    "reset": ("RESET threads", "RESET is not allowed"),
    "pragma": ("PRAGMA enable_profiling", "PRAGMA is not allowed"),
    "call": ("CALL pragma_version()", "CALL is not allowed"),
    "create": ("CREATE TABLE t AS SELECT 1", "CREATE is not allowed"),
    "create_secret": ("CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')", "CREATE is not allowed"),
    "insert": ("INSERT INTO corrupt_files VALUES ('a', 'b')", "INSERT is not allowed"),
    "update": ("UPDATE corrupt_files SET reason = 'x'", "UPDATE is not allowed"),
    "delete": ("DELETE FROM corrupt_files", "DELETE is not allowed"),
    "drop": ("DROP VIEW trials", "DROP is not allowed"),
    "two_statements": ("SELECT 1; SELECT 2", "2 statements"),
    "select_then_copy": ("SELECT 1; COPY trials TO '{tmp}/x.csv'", "2 statements"),
    "explain_analyze_copy": ("EXPLAIN ANALYZE COPY trials TO '{tmp}/x.csv'", "COPY statement"),
    "read_csv_passwd": ("SELECT * FROM read_csv('/etc/passwd')", 'Cannot access file "/etc/passwd"'),
    "read_text": ("SELECT * FROM read_text('/etc/hostname')", "Cannot access file"),
    "glob_etc": ("SELECT * FROM glob('/etc/*')", "Cannot access file"),
    "outside_parquet": ("SELECT * FROM read_parquet('{outside}')", "Cannot access file"),
    "dotdot_escape": ("SELECT * FROM read_parquet('{root}/tables/../../outside.parquet')", "Cannot access file"),
    "url": ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "Cannot access file"),
    "not_sql": ("DROP EVERYTHING NOW", "not valid SQL"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(con, shared_small_warehouse, outside, tmp_path, case):
    sql, message = REFUSED[case]
    root = shared_small_warehouse.base
    pq.write_table(pa.table({"secret": [42]}), f"{root}/../outside.parquet")  # exists, outside
    sql = sql.format(tmp=tmp_path, outside=outside, root=root)
    with pytest.raises(SQLRefused, match=re.escape(message)):
        run_readonly(con, sql)
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "x.csv").exists()
    assert not (tmp_path / "dump").exists() and not (tmp_path / "other.duckdb").exists()
    # The connection is unharmed: still locked, still answering.
    assert run_readonly(con, "SELECT count(*) AS n FROM trials")["n"].tolist() == [12]
    settings = dict(
        run_readonly(
            con,
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('enable_external_access', 'lock_configuration', 'threads', "
            "'autoload_known_extensions', 'autoinstall_known_extensions')",
        ).values.tolist()
    )
    assert settings == {
        "enable_external_access": "false",
        "lock_configuration": "true",
        "threads": "2",
        "autoload_known_extensions": "false",
        "autoinstall_known_extensions": "false",
    }


def test_row_cap(con):
    df = run_readonly(con, "SELECT range AS x FROM range(1000)", max_rows=10)
    assert df["x"].tolist() == list(range(10)) and df.attrs["truncated"] is True
    df = run_readonly(con, "SELECT range AS x FROM range(10)", max_rows=10)
    assert len(df) == 10 and df.attrs["truncated"] is False


def test_timeout_interrupts_a_long_query(con):
    t0 = time.perf_counter()
    with pytest.raises(SQLTimeout, match=r"timeout_s=0\.5"):
        run_readonly(
            con,
            "SELECT count(*) FROM range(100000000) a, range(1000) b WHERE a.range * b.range = -1",
            timeout_s=0.5,
        )
    assert time.perf_counter() - t0 < 10
    assert run_readonly(con, "SELECT 1 AS x")["x"].tolist() == [1]  # usable afterwards


def test_memory_limit_is_enforced(shared_small_warehouse):
    con = readonly_connect(shared_small_warehouse, memory_limit="64MB")
    limit = run_readonly(con, "SELECT current_setting('memory_limit') AS m")["m"][0]
    assert limit.endswith("MiB") and float(limit.split()[0]) <= 64
    with pytest.raises(ReadOnlySQLError, match=r"(?i)out of memory"):
        run_readonly(con, "SELECT list(range) FROM range(50000000)")


def test_cli_sql_is_read_only(shared_small_warehouse, tmp_path, capsys):
    root = shared_small_warehouse.root
    assert (
        main(["sql", "--storage", root, "--format", "csv", "SELECT count(*) AS n FROM trials"]) == 0
    )
    assert capsys.readouterr().out.splitlines() == ["n", "12"]
    assert main(["sql", "--storage", root, f"COPY trials TO '{tmp_path}/leak.csv'"]) == 2
    assert "COPY is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "leak.csv").exists()
    assert main(["sql", "--storage", root, "SELECT * FROM read_csv('/etc/passwd')"]) == 2
    assert "Cannot access file" in capsys.readouterr().err


def test_cli_sql_with_a_relative_root(shared_small_warehouse, monkeypatch, capsys):
    """`--storage runs` from the directory above it: the query child runs in its own private
    directory, so the root is resolved before it starts (a relative root read 0 rows)."""
    root = Path(shared_small_warehouse.base)
    monkeypatch.chdir(root.parent)
    rel = root.name
    assert run_readonly(rel, "SELECT count(*) AS n FROM trials")["n"].tolist() == [12]
    assert (
        main(["sql", "--storage", rel, "--format", "csv", "SELECT count(*) AS n FROM trials"]) == 0
    )
    assert capsys.readouterr().out.splitlines() == ["n", "12"]
