"""The sealed SQL surface (warehouse/sql.py): hostile SQL, memory/time/size bombs, the
temporary directory, errors while the result streams out, and a fuzz loop of hostile
statements. The bombs go through a storage root, the path `batchlab sql` and the app's SQL
page take (a child process with its own limits); the fuzz loop goes through one locked
connection (the statement and connection fences) to try many statements quickly.
"""

from __future__ import annotations

import glob
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import REPO
from tests.warehouse.conftest import fake_trial
from warehouse.layout import Layout
from warehouse.sql import (
    ReadOnlySQLError,
    SQLOutOfMemory,
    SQLRefused,
    SQLResultTooLarge,
    SQLTimeout,
    readonly_connect,
    run_readonly,
)

SECRET = "batchlab-sql-secret-7f3a"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Layout:
    base = tmp_path_factory.mktemp("sqlwh")
    layout = Layout.open(base / "runs")
    for i in range(4):
        fake_trial(layout, "sql", i)
    # Files a hostile query would like to read: in the cwd's .tmp (DuckDB's default temp
    # directory, which DuckDB adds to allowed_directories), beside the root, and in /tmp.
    for d in (base / ".tmp", base):
        d.mkdir(exist_ok=True)
        (d / "secret.txt").write_text(SECRET)
    return layout


def _no_private_dirs_left(before: set[str]) -> None:
    assert set(glob.glob(f"{os.environ.get('TMPDIR', '/tmp')}/batchlab-sql-*")) <= before


# (sql, error class, message fragment). Each runs through a storage root, in a child.
BOMBS = {
    "read_text_tmp": ("SELECT * FROM read_text('.tmp/secret.txt')", SQLRefused, "Cannot access file"),
    "glob_private_dirs": ("SELECT * FROM glob('/tmp/batchlab-sql-*/*')", SQLRefused, "Cannot access file"),
    "read_beside_root": ("SELECT * FROM read_text('{base}/secret.txt')", SQLRefused, "Cannot access file"),
    "order_by_spill": ("SELECT * FROM range(60000000) ORDER BY random()", SQLOutOfMemory, "spilling to disk is off"),
    "list_memory": ("SELECT list(range) FROM range(60000000)", SQLOutOfMemory, "out of memory"),
    "one_long_string": ("SELECT repeat('x', 1500000000) AS s", SQLOutOfMemory, "out of memory"),
    "string_agg": ("SELECT string_agg(repeat('x', 1000), ',') FROM range(2000000)", SQLOutOfMemory, "out of memory"),
    "many_long_strings": ("SELECT repeat('x', 1000) AS s FROM range(200000)", SQLResultTooLarge, "result too large"),
    "too_many_rows": ("SELECT range FROM range(3000000)", SQLResultTooLarge, "more than 1,000,000 rows"),
    "time_bomb": ("SELECT count(*) FROM range(1000000000) a, range(1000) b WHERE a.range * b.range = -1", SQLTimeout, "timeout_s=4"),
    "error_while_streaming": ("SELECT CASE WHEN range > 200000 THEN error('boom') ELSE range END AS x FROM range(1000000)", ReadOnlySQLError, "boom"),
    "copy": ("COPY trials TO '{base}/leak.csv'", SQLRefused, "COPY is not allowed"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BOMBS))
def test_hostile_sql_through_the_sealed_surface(warehouse, case, monkeypatch):
    sql, error, fragment = BOMBS[case]
    base = Path(warehouse.base).parent
    monkeypatch.chdir(base)  # the cwd holds .tmp/secret.txt
    before = set(glob.glob("/tmp/batchlab-sql-*"))
    t0 = time.monotonic()
    with pytest.raises(error) as info:
        run_readonly(
            warehouse.root, sql.format(base=base), timeout_s=4.0, max_rows=1_000_000,
            truncate=False, memory_limit="256MB",
        )  # fmt: skip
    took = time.monotonic() - t0
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg and SECRET not in msg, msg
    assert took < 4.0 + 2.0, f"{case}: the whole call took {took:.1f} s past a 4 s timeout"
    # Nothing spilled or written anywhere: not in the cwd, not beside the root, no private
    # directory left behind.
    assert sorted(p.name for p in (base / ".tmp").iterdir()) == ["secret.txt"]
    assert not (base / "leak.csv").exists()
    _no_private_dirs_left(before)


def test_memory_of_the_whole_call_is_bounded(warehouse):
    """The child's peak RSS stays near its limit (256 MB DuckDB + 2 x 16 MB result + headroom)
    for a bomb of many long strings (2 GB if fully fetched) and a big sort."""
    for sql in ("SELECT repeat('x', 100000) AS s FROM range(20000)",
                "SELECT * FROM range(60000000) ORDER BY random()"):  # fmt: skip
        with pytest.raises((SQLOutOfMemory, SQLResultTooLarge, SQLTimeout)):
            run_readonly(warehouse.root, sql, timeout_s=20, memory_limit="256MB",
                         max_bytes=16 * 2**20)  # fmt: skip
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # (RUSAGE_CHILDREN is the largest of every finished child of this test process.)
    assert peak_mb < 1800, f"a query process reached {peak_mb:.0f} MB"


def test_rows_beyond_the_cap_are_cut_with_a_flag_or_refused(warehouse):
    assert run_readonly(warehouse.root, "SELECT count(*) AS n FROM trials")["n"].tolist() == [4]
    df = run_readonly(warehouse.root, "SELECT range AS x FROM range(5000)", max_rows=100)
    assert len(df) == 100 and df.attrs["truncated"] is True
    with pytest.raises(SQLResultTooLarge, match="more than 100 rows; add LIMIT"):
        run_readonly(warehouse.root, "SELECT range FROM range(5000)", max_rows=100, truncate=False)


def test_cli_sql_turns_every_engine_error_into_one_line_and_exit_2(warehouse, tmp_path):
    for sql, fragment in (
        ("SELECT * FROM range(60000000) ORDER BY random()", "out of memory"),
        ("SELECT CASE WHEN range > 200000 THEN error('boom') ELSE range END FROM range(1000000)",
         "boom"),
        ("SELECT * FROM read_text('.tmp/secret.txt')", "Cannot access file"),
    ):  # fmt: skip
        p = subprocess.run(
            [sys.executable, "-m", "batchlab.cli", "sql", "--storage", warehouse.root, sql],
            cwd=Path(warehouse.base).parent, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert p.returncode == 2, (p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
        assert "Traceback" not in p.stderr and SECRET not in p.stdout + p.stderr
    # A storage root that is a file is an error, not an empty warehouse.
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ReadOnlySQLError, match="is a file, not a directory"):
        run_readonly(str(f), "SELECT count(*) FROM trials")


# ---- fuzz loop: hostile statements through one locked connection ------------------------

READERS = ["read_text", "read_blob", "read_csv", "read_csv_auto", "read_json", "read_json_auto",
           "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "glob",
           "sniff_csv"]  # fmt: skip
PATHS = ["/etc/passwd", ".tmp/secret.txt", "{base}/secret.txt", "{root}/../secret.txt",
         "{root}/tables/../../secret.txt", "/tmp/*", "/proc/self/environ",
         "file:///etc/passwd", "https://example.com/x", "s3://bucket/x", "~/.ray/auth_token",
         "{root}/tables/../batchlab.duckdb"]  # fmt: skip
WRITES = ["COPY (SELECT 1) TO '{base}/leak.csv'", "EXPORT DATABASE '{base}/dump'",
          "ATTACH '{base}/x.duckdb' AS x", "INSTALL httpfs", "LOAD httpfs",
          "SET temp_directory = '{base}'", "SET enable_external_access = true",
          "PRAGMA enable_profiling", "CREATE TABLE t AS SELECT 1", "CALL pragma_version()",
          "SELECT 1; COPY (SELECT 1) TO '{base}/leak.csv'", "CREATE SECRET (TYPE s3)",
          "SET allowed_directories = ['/']", "RESET lock_configuration"]  # fmt: skip
FUZZ_CASES = 240


def _fuzz_statements(rng: random.Random, base: str, root: str) -> list[str]:
    out = []
    for _ in range(FUZZ_CASES):
        r = rng.random()
        if r < 0.55:
            fn, path = rng.choice(READERS), rng.choice(PATHS).format(base=base, root=root)
            inner = f"{fn}('{path}')"
            wrap = rng.choice(["SELECT * FROM {x}", "SELECT count(*) FROM {x}",
                               "WITH q AS (SELECT * FROM {x}) SELECT * FROM q",
                               "SELECT * FROM trials WHERE trial_id IN (SELECT 1 FROM {x})",
                               "EXPLAIN ANALYZE SELECT * FROM {x}", "FROM {x}",
                               "SUMMARIZE SELECT * FROM {x}"])  # fmt: skip
            out.append(wrap.format(x=inner))
        elif r < 0.85:
            out.append(rng.choice(WRITES).format(base=base))
        else:  # harmless reads: they must answer
            out.append(rng.choice(["SELECT count(*) FROM trials", "FROM epochs LIMIT 3",
                                   "SELECT * FROM corrupt_files", "DESCRIBE steps"]))  # fmt: skip
    return out


def test_fuzz_hostile_statements_are_refused_and_nothing_leaks(warehouse, monkeypatch):
    base = Path(warehouse.base).parent
    monkeypatch.chdir(base)
    con = readonly_connect(warehouse)
    rng = random.Random(19)
    tried = refused = answered = 0
    try:
        for sql in _fuzz_statements(rng, str(base), warehouse.base):
            tried += 1
            try:
                df = run_readonly(con, sql, timeout_s=10)
            except ReadOnlySQLError as exc:
                refused += 1
                assert "\n" not in str(exc) and SECRET not in str(exc), (sql, exc)
                continue
            answered += 1
            assert SECRET not in df.to_csv(), sql
            assert not any(s in sql for s in ("read_", "glob", "parquet_", "sniff", "COPY")), (
                f"answered a hostile statement: {sql}"
            )
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('enable_external_access', 'lock_configuration', 'temp_directory')").fetchall())  # fmt: skip
    finally:
        con.close()
    assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                        "temp_directory": ""}  # fmt: skip
    for leaked in ("leak.csv", "dump", "x.duckdb"):
        assert not (base / leaked).exists()
    print(f"\nSQL fuzz: tried {tried}, refused {refused}, answered {answered} (harmless reads), "
          "leaked 0")  # fmt: skip
    assert tried == FUZZ_CASES and refused + answered == tried and refused > 150
