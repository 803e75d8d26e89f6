"""Round 3 (issue 24): the signals a cluster sends to `batchlab run` (scheduler/interrupts.py).

SLURM preempts (and ends a job at its time limit) with SIGTERM to every process of the job
step, then SIGKILL after a grace period (30 s by default); Kubernetes sends SIGTERM to the
container's main process; a closed terminal or SSH session sends SIGHUP. Real signals to a
real `batchlab run` subprocess (its own embedded Ray, 2 CPUs) mid-grid:

1. run A: SIGTERM to its whole process group (the driver and its Ray head processes, as
   SLURM does) once two trials are committed;
2. run B (the same command): SIGHUP to the driver alone once two more are committed;
3. run C (the same command) finishes the grid.

A and B must stop like Ctrl-C: cancelled, a run record with `cancelled: true`, the DuckDB
file rebuilt after the signal, the resume hint, no traceback, exit 143 / 129, within 20 s
of the signal, and no process of their Ray left. C skips every committed trial; every trial
is committed once and keeps the row of the run that committed it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from tests.reliability.helpers import (
    CliRun,
    assert_readers_see_only_committed,
    kill_pids,
    pids_mentioning,
    tiny_grid,
    write_grid,
)
from warehouse.layout import Layout

N_TRIALS = 12
EXPERIMENT = "signals"
BOUND_S = 20.0  # SLURM's default grace is 30 s

pytestmark = pytest.mark.slow


def _stop(run: CliRun, sig: int, group: bool, root: str) -> dict:
    """Signal `run` mid-grid; what it did, measured from the signal."""
    k = run.wait_committed(EXPERIMENT, run.base + 2)
    t0 = time.time()
    if group:
        run.signal_group(sig)
    else:
        os.kill(run.proc.pid, sig)
    rc = run.wait(120)
    took = time.time() - t0
    layout = Layout.open(root)
    db = Path(layout.duckdb_file)
    con = duckdb.connect(str(db), read_only=True)
    try:
        in_db = con.execute(
            "SELECT count(*) FROM trials WHERE experiment = ?", [EXPERIMENT]
        ).fetchone()[0]
    finally:
        con.close()
    return {
        "rc": rc,
        "took": took,
        "out": run.output(),
        "left": run.wait_ray_gone(),
        "db_rebuilt": db.stat().st_mtime >= t0,
        "in_db": in_db,
        "at_signal": k,
        "committed": assert_readers_see_only_committed(root, EXPERIMENT),
    }


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    work = tmp_path_factory.mktemp("signals")
    ray_tmp = tempfile.mkdtemp(prefix="blr-", dir="/tmp")
    spec = tiny_grid(EXPERIMENT, list(range(N_TRIALS)), max_epochs=10)
    spec["grid"]["batch_size"] = [8]  # ~1 s a trial: the grid is mid-way at the signal
    grid = write_grid(work / "grid.yaml", spec)
    root = str(work / "runs")
    out: dict = {"root": root, "load": os.getloadavg()}
    runs = []

    def run(base: int) -> CliRun:
        r = CliRun(grid, root, ray_tmp).start()
        r.base = base
        runs.append(r)
        return r

    try:
        out["a"] = _stop(run(0), signal.SIGTERM, True, root)
        out["b"] = _stop(run(len(out["a"]["committed"])), signal.SIGHUP, False, root)
        c = run(0)
        out["c_rc"], out["c_out"] = c.wait(300), c.output()
        out["c_committed"] = assert_readers_see_only_committed(root, EXPERIMENT)
        yield out
    finally:
        for r in runs:
            r.cleanup()
        kill_pids(pids_mentioning(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize(("phase", "code", "name"), [("a", 143, "SIGTERM"), ("b", 129, "SIGHUP")])
def test_sigterm_and_sighup_stop_a_run_like_ctrl_c(scenario, phase, code, name):
    s = scenario[phase]
    assert s["rc"] == code, s["out"]
    assert "cancelled: running trials were stopped" in s["out"], s["out"]
    assert "Run the same command again to resume" in s["out"]
    assert f"run interrupted by {name}" in s["out"]
    assert "Traceback" not in s["out"] and "core dumped" not in s["out"], s["out"]
    assert s["took"] < BOUND_S, f"{name}: exited {s['took']:.1f} s after the signal"
    assert s["left"] == [], f"{name} left processes of the run's Ray behind"
    # The DuckDB file was rebuilt after the signal and holds every committed trial.
    assert s["db_rebuilt"] and s["in_db"] == len(s["committed"])
    assert s["at_signal"] <= len(s["committed"]) < N_TRIALS
    print(f"\n{name}: exit {s['rc']} {s['took']:.1f} s after the signal (load {scenario['load']})")


def test_runs_stopped_by_signals_are_recorded_and_the_rerun_commits_every_trial_once(scenario):
    s = scenario
    runs = Path(Layout.open(s["root"]).path("runs", f"experiment={EXPERIMENT}"))
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    assert [r["cancelled"] for r in records] == [True, True, False]
    assert s["c_rc"] == 0, s["c_out"]
    done = len(s["b"]["committed"])
    assert f"{done} already in storage (skipped), {N_TRIALS - done} to run" in s["c_out"]
    final = s["c_committed"]
    assert len(final) == N_TRIALS and {r["status"] for r in final.values()} == {"completed"}
    for earlier in (s["a"]["committed"], s["b"]["committed"]):
        for tid, row in earlier.items():
            assert final[tid] == row, tid  # committed once, by the run that committed it
