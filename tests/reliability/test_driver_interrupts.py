"""The driver interrupted mid-grid, as a user would: Ctrl-C, then `kill -9`, then a clean run.

`batchlab run` runs as a subprocess with its own embedded Ray (2 CPUs, its own temp dir),
in its own process group:

1. run A gets SIGINT on its whole process group (Ctrl-C in a terminal) once two trials are
   committed: it cancels and exits 1, saying how to resume;
2. run B (the same command) skips what A committed and is SIGKILLed (its process group:
   the driver and its Ray head processes) once two more trials are committed;
3. run C (the same command) finishes the grid.

After every phase a reader sees only whole, committed trials (no temporary file listed,
DuckDB views count exactly); no trial committed by an earlier run runs again (its `trials`
row, start time and attempt, is unchanged, and each run prints how many it skipped).
The three runs are started with cloud credentials in their environment: no secret may
reach the warehouse or the logs (the security guarantee in docs/reliability.md).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.helpers import (
    CliRun,
    assert_readers_see_only_committed,
    hidden_files,
    kill_pids,
    pids_mentioning,
    tiny_grid,
    write_grid,
)
from warehouse.layout import Layout

N_TRIALS = 16
EXPERIMENT = "interrupts"
SECRET_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "HF_TOKEN",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Runs the three phases once; returns what each left behind."""
    work = tmp_path_factory.mktemp("interrupts")
    ray_tmp = tempfile.mkdtemp(prefix="blr-", dir="/tmp")
    # Slow enough (batch 8: 180 steps an epoch, ~1 s a trial here) that the grid cannot end
    # between the second commit and the driver's reaction to Ctrl-C on an idle machine.
    spec = tiny_grid(EXPERIMENT, list(range(N_TRIALS)), max_epochs=10)
    spec["grid"]["batch_size"] = [8]
    grid = write_grid(work / "grid.yaml", spec)
    root = str(work / "runs")
    secrets = {k: f"sentinel-{uuid.uuid4().hex}" for k in SECRET_VARS}
    out: dict = {"root": root, "ray_tmp": ray_tmp, "secrets": secrets, "logs": []}

    def run() -> CliRun:
        r = CliRun(grid, root, ray_tmp, env=secrets).start()
        out["logs"].append(r.log)
        return r

    try:
        a = run()
        a.wait_committed(EXPERIMENT, 2)
        a.signal_group(signal.SIGINT)
        out["a_rc"], out["a_out"] = a.wait(180), a.output()
        out["a_left"] = a.wait_ray_gone()
        out["a_committed"] = assert_readers_see_only_committed(root, EXPERIMENT)

        b = run()
        k = len(out["a_committed"])
        b.wait_committed(EXPERIMENT, k + 2)
        b.signal_group(signal.SIGKILL)
        out["b_rc"], out["b_out"] = b.wait(60), b.output()
        out["b_left"] = b.wait_ray_gone()
        kill_pids(out["b_left"])
        out["b_committed"] = assert_readers_see_only_committed(root, EXPERIMENT)
        out["b_hidden"] = hidden_files(root)

        c = run()
        out["c_rc"], out["c_out"] = c.wait(300), c.output()
        out["c_left"] = c.wait_ray_gone()
        out["c_committed"] = assert_readers_see_only_committed(root, EXPERIMENT)
        yield out
    finally:
        kill_pids(pids_mentioning(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _skipped(output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) already in storage \(skipped\), (\d+) to run", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))


def test_ctrl_c_cancels_cleanly_and_says_how_to_resume(scenario):
    s = scenario
    assert s["a_rc"] == 130, s["a_out"]  # interrupted (docs/cli.md "Exit codes")
    # (lone trials or, with `pack: auto`, packs of them)
    assert re.search(r"cancelled: running (trials|packs) were stopped", s["a_out"]), s["a_out"]
    assert "Run the same command again to resume" in s["a_out"]
    assert "Traceback" not in s["a_out"]
    assert s["a_left"] == [], "Ctrl-C left processes of the run's Ray instance behind"
    assert 2 <= len(s["a_committed"]) < N_TRIALS
    # The cancelled run is on record as such.
    runs = Path(Layout.open(s["root"]).path("runs", f"experiment={EXPERIMENT}"))
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    assert [r["cancelled"] for r in records] == [True, False]  # run B was killed: no record
    assert all(r["planned"] + r["skipped"] == N_TRIALS for r in records)


def test_killed_driver_leaves_nothing_half_written_and_its_ray_dies_with_it(scenario):
    s = scenario
    assert s["b_rc"] == -signal.SIGKILL
    assert _skipped(s["b_out"]) == (len(s["a_committed"]), N_TRIALS - len(s["a_committed"]))
    assert s["b_left"] == [], "processes of the killed driver's Ray outlived it"
    assert len(s["a_committed"]) + 2 <= len(s["b_committed"]) < N_TRIALS
    # Temporary files a killed writer may leave are never what a reader lists (checked in
    # assert_readers_see_only_committed); the next run removes them (below).
    assert all(Path(p).name.startswith(".") for p in s["b_hidden"])


def test_rerun_completes_the_grid_and_runs_no_committed_trial_again(scenario):
    s = scenario
    assert s["c_rc"] == 0, s["c_out"]
    assert s["c_left"] == []
    done_before = len(s["b_committed"])
    assert _skipped(s["c_out"]) == (done_before, N_TRIALS - done_before)
    final = s["c_committed"]
    assert len(final) == N_TRIALS and {r["status"] for r in final.values()} == {"completed"}
    # A trial committed by an earlier run still has that run's row: same start, same attempt.
    for earlier in (s["a_committed"], s["b_committed"]):
        for tid, row in earlier.items():
            assert final[tid] == row, tid
    assert all(r["attempt"] == 1 for r in s["a_committed"].values())
    assert hidden_files(s["root"]) == []


def test_no_secret_reaches_the_warehouse_or_the_logs(scenario):
    s = scenario
    needles = {name: v.encode() for name, v in s["secrets"].items()}
    token_file = Path.home() / ".ray" / "auth_token"
    if token_file.exists():  # the Ray cluster token is a secret too
        needles["ray auth token"] = token_file.read_bytes().strip()
    scanned = {"storage": 0, "parquet": 0, "logs": 0}
    leaks = []
    for kind, base in (("storage", s["root"]), ("logs", s["ray_tmp"])):
        for p in Path(base).rglob("*"):
            if not p.is_file():
                continue
            data = p.read_bytes()
            scanned[kind] += 1
            leaks += [(name, str(p)) for name, n in needles.items() if n in data]
            if p.suffix == ".parquet":  # compressed: look at the decoded values too
                scanned["parquet"] += 1
                text = _strings(pq.read_table(p))
                leaks += [(name, str(p)) for name, n in needles.items() if n.decode() in text]
    assert leaks == []
    # The scan looked at the real thing: every table file, the run records, Ray's logs.
    assert scanned["parquet"] >= N_TRIALS * 4 and scanned["logs"] >= 10, scanned
    for out in (s["a_out"], s["b_out"], s["c_out"]):
        assert not any(v in out for v in s["secrets"].values())


def _strings(table: pa.Table) -> str:
    parts = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            parts.extend(v for v in col.to_pylist() if v)
    return "\n".join(parts)
