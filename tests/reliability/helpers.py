"""Helpers of the reliability tests (fixtures are in conftest.py): tiny grids, `batchlab run`
as a killable subprocess with its own embedded Ray, and checks of what a reader of the
warehouse can see.

A driver started here runs in its own session (so its process group is exactly the driver
and the Ray head processes it starts: GCS, raylet, dashboard, monitors) with its own Ray
temporary directory; `CliRun.cleanup` kills whatever is left of that Ray instance by pid
(the processes whose command line or environment names the directory), never by name, so
the session fixture's Ray and other people's processes are left alone.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from warehouse.layout import TMP_MARK, Layout
from warehouse.schemas import SCHEMAS

REPO = Path(__file__).resolve().parents[2]

# A cheap real trial: sklearn's digits (no download), a small MLP, per-step and per-layer
# rows on (so exact row counts mean something), no full-training-set evaluation.
TINY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [8]},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "max_epochs": 3,
    "measure": {"layers": True, "store_steps": True, "update_norms": True, "train_eval": False},
    "resources": {"cpus_per_trial": 1},
}
DIGITS_TRAIN = 1438  # sklearn digits: 1,797 examples, 20 % held out for validation


def tiny_grid(experiment: str, seeds: list[int], **over: Any) -> dict[str, Any]:
    """A grid of `len(seeds)` tiny trials (batch 128, lr 0.05); `over` replaces top-level keys."""
    g = copy.deepcopy(TINY)
    g["experiment"] = experiment
    g["grid"] = {"batch_size": [128], "lr": [0.05], "seed": list(seeds)}
    g.update(copy.deepcopy(over))
    # Lone trials unless a test asks for packs: these scenarios kill or fault one trial's
    # worker, which under `pack: auto` (the default) would take its pack mates with it.
    g["resources"] = {"pack": False, **g.get("resources", {})}
    return g


def write_grid(path: Path, grid: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- readers' view


def hidden_files(root: str) -> list[str]:
    """Every temporary file (a writer's `.<name>.tmp-<host>-<pid>-<id>`) under the root."""
    base = Path(Layout.open(root).base)
    if not base.exists():
        return []
    return sorted(str(p) for p in base.rglob("*") if p.is_file() and TMP_MARK in p.name)


def assert_readers_see_only_committed(root: str, experiment: str) -> dict[str, Any]:
    """What every reader sees is whole and committed: no listing returns a temporary file,
    the DuckDB views (fresh connection and the outside-client file) count exactly the
    committed trials, and the per-trial tables hold exactly their committed rows.
    Returns {trial_id: committed trials row}."""
    import duckdb

    from warehouse.db import connect, write_duckdb_file

    layout = Layout.open(root)
    for table in SCHEMAS:
        files = layout.list_files(table)
        assert not [f for f in files if "/." in f or TMP_MARK in f], files
        tf = layout.table_files(table)
        assert all(not f.name.startswith(".") for f in (*tf.per_trial, *tf.parts))
    con = connect(root)
    rows = con.execute(
        "SELECT trial_id, status, epochs_run, steps_run, attempt, CAST(started_at AS VARCHAR) "
        "FROM trials "
        "WHERE experiment = ?",
        [experiment],
    ).fetchall()
    committed = {r[0]: dict(zip(("trial_id", "status", "epochs_run", "steps_run", "attempt",
                                 "started_at"), r, strict=True)) for r in rows}  # fmt: skip
    assert len(committed) == len(rows), "one trials row per trial"
    trial_files = {Path(f).stem for f in layout.list_files("trials", experiment)}
    assert set(committed) == trial_files
    # Exactly one set of rows per committed trial: one epochs row per epoch run.
    n_epochs = con.execute(
        "SELECT count(*), count(DISTINCT (trial_id, epoch)) FROM epochs WHERE experiment = ?",
        [experiment],
    ).fetchone()
    assert n_epochs[0] == n_epochs[1] == sum(r["epochs_run"] or 0 for r in committed.values())
    # The file outside clients open says the same.
    write_duckdb_file(layout)
    outside = duckdb.connect(layout.duckdb_file, read_only=True)
    try:
        n = outside.execute(
            "SELECT count(*) FROM trials WHERE experiment = ?", [experiment]
        ).fetchone()[0]
    finally:
        outside.close()
    assert n == len(committed)
    return committed


# ----------------------------------------------------------------------------- processes


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line or environment contains `text` (here: a test's own Ray
    temp dir). Ray workers rename themselves (`ray::IDLE`), so their command line no longer
    names it, but they inherit RAY_TMPDIR from the raylet."""
    out = []
    needle = text.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        for what in ("cmdline", "environ"):
            try:
                if needle in Path(f"/proc/{d}/{what}").read_bytes():
                    out.append(int(d))
                    break
            except OSError:
                continue
    return out


def kill_pids(pids: list[int], timeout_s: float = 20.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class CliRun:
    """`batchlab run GRID --storage ROOT --num-cpus 2` in its own session and Ray temp dir."""

    def __init__(self, grid: Path, root: str, ray_tmp: str, env: dict[str, str] | None = None):
        self.grid, self.root, self.ray_tmp = grid, root, ray_tmp
        self.env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        # The test process may have started the session Ray (which sets RAY_AUTH_MODE in
        # os.environ): the driver must start its own instance exactly as a user's would.
        self.env.pop("RAY_AUTH_MODE", None)
        self.env.update(env or {})
        self.log = Path(ray_tmp) / f"driver-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> CliRun:
        cmd = [sys.executable, "-m", "batchlab.cli", "run", str(self.grid), "--storage", self.root,
               "--num-cpus", "2", "--no-progress"]  # fmt: skip
        self._fh = open(self.log, "w")  # noqa: SIM115 (closed in wait/cleanup)
        # Ctrl-C must reach the driver as in a terminal even when pytest itself runs as a
        # background job (a shell starts those with SIGINT ignored, and children inherit it).
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, start_new_session=True,
                                     stdout=self._fh, stderr=subprocess.STDOUT,
                                     preexec_fn=_default_sigint)  # fmt: skip
        return self

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_committed(self, experiment: str, n: int, timeout_s: float = 240.0) -> int:
        """Wait until at least `n` trials are committed; returns how many are."""
        layout = Layout.open(self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            k = len(layout.list_files("trials", experiment))
            if k >= n:
                return k
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"driver exited early ({self.proc.returncode}):\n{self.output()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"fewer than {n} trials committed in {timeout_s} s:\n{self.output()}")

    def signal_group(self, sig: int) -> None:
        """Signal the driver's process group (what Ctrl-C in a terminal does for SIGINT)."""
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float = 240.0) -> int:
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.cleanup()
            raise AssertionError(
                f"driver still running after {timeout_s} s:\n{self.output()}"
            ) from None
        self._fh.close()
        return rc

    def wait_ray_gone(self, timeout_s: float = 90.0) -> list[int]:
        """Wait until no process of this run's Ray instance is left; returns stragglers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = pids_mentioning(self.ray_tmp)
            if not left:
                return []
            time.sleep(0.2)
        return pids_mentioning(self.ray_tmp)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        kill_pids(pids_mentioning(self.ray_tmp))
        with contextlib.suppress(Exception):
            self._fh.close()
