"""Reading during a compaction (warehouse/retry.py, used by app/common.py): a file listed by
a cached connection and compacted away meanwhile is retried on a fresh connection, never
shown as a raw `IOException: No files found`; a compaction that keeps rewriting the files
gives "results are being compacted, retrying"."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from tests.warehouse.conftest import fake_trial
from warehouse.compact import compact
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.retry import CompactionInProgress, is_vanished_file, retry_vanished


def test_a_vanished_file_is_retried_on_a_fresh_connection(tmp_path):
    layout = Layout.open(tmp_path / "runs")
    for i in range(4):
        fake_trial(layout, "e", i)
    cached = [connect(layout)]
    Path(layout.table_file("epochs", "e", "t000000000000001")).unlink()
    with pytest.raises(duckdb.IOException) as info:  # what the page used to show
        cached[0].execute("SELECT count(*) FROM epochs").fetchall()
    assert is_vanished_file(info.value)

    def reset():
        cached[0] = connect(layout)

    n = retry_vanished(
        lambda: cached[0].execute("SELECT count(*) FROM epochs").fetchall(), reset=reset
    )
    assert n == [(9,)]  # three trials' epochs left
    # Other errors pass through untouched.
    with pytest.raises(duckdb.CatalogException):
        retry_vanished(lambda: cached[0].execute("SELECT * FROM nope").fetchall())


def test_files_that_keep_vanishing_say_compaction(tmp_path):
    calls = []

    def always_gone():
        calls.append(1)
        raise duckdb.IOException('IO Error: No files found that match the pattern "x.parquet"')

    with pytest.raises(CompactionInProgress, match="results are being compacted, retrying"):
        retry_vanished(always_gone, attempts=3, delay_s=0.01)
    assert len(calls) == 3


def test_reads_during_repeated_compactions_never_fail(tmp_path):
    layout = Layout.open(tmp_path / "runs")
    for i in range(6):
        fake_trial(layout, "e", i)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            for i in range(6, 12):
                fake_trial(layout, "e", i)
                compact(layout, experiment="e", min_rows=1, grace_s=0)
                # Compactions a second apart (a real one runs once per finished run): back
                # to back on a loaded 2-core machine a reader can lose all 4 retries.
                time.sleep(1.0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    cached = [connect(layout)]
    resets = []

    def reset():
        resets.append(1)
        cached[0] = connect(layout)

    reads = 0
    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set() or reads < 5:
        (n,) = retry_vanished(
            lambda: cached[0].execute("SELECT count(*) FROM epochs").fetchone(), reset=reset
        )
        assert n % 3 == 0 and 18 <= n <= 36, n  # whole trials only
        reads += 1
    t.join()
    assert not errors, errors
    print(f"\nreads during 6 compactions: {reads}, reconnects after a vanished file: "
          f"{len(resets)}, raw errors 0")  # fmt: skip
