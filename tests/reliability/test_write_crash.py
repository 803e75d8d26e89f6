"""A writer killed between writing a file and renaming it into place: the half-written
temporary file is never seen by a reader, and the next run removes it.

The crash is real: `BATCHLAB_FAULT_CRASH_WRITING` makes `Layout.put_bytes` write half of the
bytes to its hidden temporary file and SIGKILL its own process (scheduler/faults.py).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scheduler.runner import plan, run_grid
from scheduler.spec import parse_spec
from tests.reliability.helpers import (
    REPO,
    assert_readers_see_only_committed,
    hidden_files,
    tiny_grid,
)
from warehouse.db import connect
from warehouse.layout import TMP_MARK, Layout

CRASH = "BATCHLAB_FAULT_CRASH_WRITING"


def test_writer_killed_before_rename_leaves_only_an_invisible_temporary(tmp_path):
    layout = Layout.open(tmp_path / "runs")
    target = layout.table_file("trials", "w", "0123456789abcdef")
    payload = b"PAR1" + os.urandom(4096) + b"PAR1"
    code = (
        "import sys; from warehouse.layout import Layout; "
        "Layout.open(sys.argv[1]).put_bytes(sys.argv[2], bytes.fromhex(sys.argv[3]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, layout.root, target, payload.hex()],
        cwd=REPO, env={**os.environ, CRASH: "experiment=w/0123"}, capture_output=True,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    # The target never appeared; a half-written temporary did, named after the dead writer.
    assert not layout.exists(target)
    (tmp,) = hidden_files(layout.root)
    name = Path(tmp).name
    assert name.startswith(".0123456789abcdef.parquet" + TMP_MARK + socket.gethostname())
    assert Path(tmp).stat().st_size == len(payload) // 2
    # No reader lists it: not the file listing, not the reader's file set, not DuckDB.
    assert layout.list_files("trials") == []
    assert layout.table_files("trials").per_trial == []
    assert connect(layout.root).execute("SELECT count(*) FROM trials").fetchone()[0] == 0
    # A live writer's temporary (this process) is left alone; the dead one's is removed.
    live = (
        Path(target).parent / f".x.parquet{TMP_MARK}{socket.gethostname()}-{os.getpid()}-0a1b2c3d"
    )
    live.write_bytes(b"in progress")
    assert layout.clean_temporaries() == 1
    assert hidden_files(layout.root) == [str(live)]
    # One left by another host is removed once it is older than max_age_s.
    other = Path(target).parent / f".y.parquet{TMP_MARK}elsewhere-12345-0a1b2c3d"
    other.write_bytes(b"abandoned")
    old = time.time() - 7200
    os.utime(other, (old, old))
    assert layout.clean_temporaries(max_age_s=3600) == 1
    assert hidden_files(layout.root) == [str(live)]


def test_duckdb_file_build_killed_midway_is_cleaned_by_the_next_run(tmp_path):
    """`batchlab.duckdb` is rebuilt under a temporary name at the end of every run: a run
    killed while building it leaves the temporary (and DuckDB's .wal); the next run's
    cleanup removes both and leaves the previous file alone."""
    from warehouse.db import write_duckdb_file

    layout = Layout.open(tmp_path / "runs")
    write_duckdb_file(layout)
    before = Path(layout.duckdb_file).read_bytes()
    code = (
        "import os, signal, sys, duckdb; from warehouse.layout import Layout\n"
        "lay = Layout.open(sys.argv[1]); con = duckdb.connect(lay.temp_path(lay.duckdb_file))\n"
        "con.execute('CREATE TABLE t AS SELECT 1 AS x'); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, layout.root], cwd=REPO, capture_output=True
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    left = hidden_files(layout.root)
    assert left and all(Path(f).name.startswith(".batchlab.duckdb" + TMP_MARK) for f in left)
    assert layout.clean_temporaries() == len(left)
    assert hidden_files(layout.root) == []
    assert Path(layout.duckdb_file).read_bytes() == before


@pytest.mark.slow
def test_worker_killed_while_committing_is_invisible_and_cleaned_by_the_next_run(
    ray_local, tmp_path, monkeypatch
):
    grid = tiny_grid("crash", [0, 1, 2], max_epochs=2, resources={"max_retries": 0})
    spec = parse_spec(grid)
    victim = spec.trials()[1]
    root = str(tmp_path / "runs")
    # The victim's worker dies while writing its `trials` row, the commit marker, after its
    # epochs/steps/layers files were written.
    monkeypatch.setenv(CRASH, f"tables/trials/experiment=crash/{victim.trial_id}")
    first = run_grid(spec, root, progress=False)
    assert first.counts == {"completed": 2, "diverged": 0, "failed": 1}, first.results
    (failed,) = [r for r in first.results if r["status"] == "failed"]
    assert failed["trial_id"] == victim.trial_id

    layout = Layout.open(root)
    (tmp,) = hidden_files(root)
    assert f"/tables/trials/experiment=crash/.{victim.trial_id}.parquet{TMP_MARK}" in tmp
    committed = assert_readers_see_only_committed(root, "crash")
    # The driver gave the victim, whose worker died on every attempt, a `failed` row (issue
    # 24); the fault is aimed at the worker's write, not the driver's (faults.suspended).
    assert len(committed) == 3 and committed[victim.trial_id]["status"] == "failed"
    con = connect(root)
    why = con.execute("SELECT stop_reason, error FROM trials WHERE trial_id = ?", [victim.trial_id])
    reason, error = why.fetchone()
    assert reason == "worker_died" and "worker process exited" in error
    # The dead attempt's epochs (written before its commit marker) are emptied by that
    # failed row's commit: no reader sees them.
    assert layout.exists(layout.table_file("epochs", "crash", victim.trial_id))
    for view in ("epochs_raw", "epochs"):
        n = con.execute(f"SELECT count(*) FROM {view} WHERE trial_id = ?", [victim.trial_id])
        assert n.fetchone()[0] == 0, view
    assert [t.trial_id for t in plan(spec, layout).to_run] == [victim.trial_id]

    monkeypatch.delenv(CRASH)
    out = io.StringIO()
    again = run_grid(spec, root, progress=False, out=out)
    assert "removed 1 temporary files left by crashed writers" in out.getvalue()
    assert (again.planned, again.skipped, again.counts["completed"]) == (1, 2, 1)
    assert hidden_files(root) == []
    committed = assert_readers_see_only_committed(root, "crash")
    assert len(committed) == 3 and {r["status"] for r in committed.values()} == {"completed"}
    assert connect(root).execute("SELECT count(*) FROM epochs").fetchone()[0] == 3 * 2
