"""Live runs (issue 15): the live area while a grid runs, through local Ray and a real
`batchlab run` process; the committed tables are exactly those of a run without it."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from scheduler.runner import run_grid
from scheduler.spec import parse_spec
from tests.conftest import REPO, TINY_GRID
from warehouse import live
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.status import experiment_status, format_status
from warehouse.store import write_trial

SLOW = {
    **copy.deepcopy(TINY_GRID),
    "experiment": "live",
    "model": {"name": "mlp", "hidden": [64]},
    # Long enough that polls see two running epochs on a fast, idle machine (at 4 epochs a
    # pack of the two trials finished between two polls; at 12, once in 15 runs).
    "max_epochs": 30,
    "grid": {"batch_size": [16], "lr": [0.05], "seed": [0, 1]},
}


def test_live_trial_rows_restart_from_the_resume_epoch_and_clear_on_commit(tmp_path):
    layout = Layout.open(str(tmp_path))
    a = live.LiveTrial(layout, "e", "t1", max_epochs=5, interval_s=0)
    for e in (1, 2, 3):
        a.epoch({"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e, "epoch_time_s": 0.1})
    a.close()  # the attempt dies after epoch 3 (its checkpoint is from epoch 2)
    b = live.LiveTrial(layout, "e", "t1", max_epochs=5, attempt=2, interval_s=0)
    b.epoch({"epoch": 3, "train_loss": 0.3, "val_loss": 0.6})
    rows = live.live_epochs(layout, "e").to_pylist()
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.3)]
    (s,) = live.trial_statuses(layout, "e")
    assert (s["state"], s["epoch"], s["attempt"], s["best_val_loss"]) == ("running", 3, 2, 0.6)
    assert live.trial_statuses(layout, "e", stall_s=-1)[0]["state"] == "stalled"
    b.close()
    write_trial(layout, "e", {"trial_id": "t1", "config_hash": "h", "status": "completed"}, {})
    assert live.trial_statuses(layout, "e") == [] and live.live_epochs(layout, "e").num_rows == 0


@pytest.mark.slow
def test_status_and_live_view_advance_while_a_grid_runs(ray_local, tmp_path, monkeypatch):
    root = str(tmp_path / "runs")
    layout = Layout.open(root)
    # Publish every epoch (the variable reaches the run's workers, like BATCHLAB_LIVE).
    monkeypatch.setenv("BATCHLAB_LIVE_INTERVAL_S", "0")
    seen: list[tuple[int, int]] = []  # (max epoch in status, live rows)
    dups: list[str] = []
    result: dict = {}

    def run() -> None:
        result["report"] = run_grid(parse_spec(SLOW), root, progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        st = experiment_status(layout, "live")
        rows = live.live_epochs(layout, "live").to_pylist()
        keys = [(r["trial_id"], r["epoch"]) for r in rows]
        if len(keys) != len(set(keys)):
            dups.append(repr(keys))
        running = [r["epoch"] for r in st["rows"] if r["state"] == "running"]
        seen.append((max(running, default=0), len(rows)))
        if st["run"] is not None:
            assert st["driver"] in ("alive", "finished"), format_status(st)
        time.sleep(0.2)
    thread.join()
    assert result["report"].counts["completed"] == 2
    assert not dups
    epochs = sorted({e for e, _ in seen if e > 0})
    assert len(epochs) >= 2, f"status showed advancing epochs {seen}"
    assert max(n for _, n in seen) >= 2, "the live view held rows while the grid ran"
    # After the run: the live area holds no trial, the run record says finished.
    assert live.trial_statuses(layout, "live") == []
    assert live.live_epochs(layout, "live").num_rows == 0
    assert experiment_status(layout, "live")["driver"] == "finished"
    # The committed rows equal a run without the live area (timings aside).
    monkeypatch.setenv("BATCHLAB_LIVE", "0")
    other = str(tmp_path / "no-live")
    run_grid(parse_spec(SLOW), other, progress=False)
    q = (
        "SELECT trial_id, epoch, train_loss, val_loss, dist_from_init, epoch_distance "
        "FROM epochs ORDER BY 1, 2"
    )
    assert connect(root).execute(q).fetchall() == connect(other).execute(q).fetchall()
    assert not os.path.exists(os.path.join(other, "live", "status"))


@pytest.mark.slow
def test_killed_driver_is_reported_not_alive(data_cache, tmp_path):
    grid = {**SLOW, "experiment": "orphan", "max_epochs": 30}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    root = str(tmp_path / "runs")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchlab.cli",
            "run",
            str(path),
            "--storage",
            root,
            "--no-progress",
            "--num-cpus",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    layout = Layout.open(root)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            st = experiment_status(layout, "orphan")
            if any(r["state"] == "running" and (r["epoch"] or 0) >= 1 for r in st["rows"]):
                break
            time.sleep(1)
        else:
            pytest.fail(f"no trial reached epoch 1: {format_status(st)}")
        assert st["driver"] == "alive"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        st = experiment_status(layout, "orphan")
        assert st["driver"] == "not alive", format_status(st)
        assert "NOT ALIVE" in format_status(st)
        out = subprocess.run(
            [sys.executable, "-m", "batchlab.cli", "status", "--storage", root],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and "driver NOT ALIVE" in out.stdout, out.stdout + out.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        # The embedded Ray of the killed driver: stop its processes (session-scoped).
        subprocess.run(["pkill", "-9", "-f", f"--storage {root}"], check=False)
