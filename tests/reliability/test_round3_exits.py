"""Round 3 (issue 24): user code that exits or hangs at run time, through the real scheduler
on local Ray (scheduler/guards.py, scheduler/tasks.py, scheduler/runner.py).

One grid of a user trainable (`trainable: ./loop.py:main`) whose `params.mode` picks what
the user's code does: returns normally, calls `sys.exit(3)`, raises KeyboardInterrupt,
calls `os._exit(7)`, SIGKILLs its own process (a crash), or hangs in `time.sleep`. Every
execution of the user's code appends a line to a file, so the test counts how often Ray
ran it. Expected: each exit is one execution and a `failed` row naming the cause; the crash
is retried `max_retries` times, then gets a `failed` row "worker process exited ... 2
times"; the hang is killed at `resources.trial_timeout_s` and recorded `failed`
"exceeded trial_timeout_s=...", run once; the normal trial completes.

Also: pack members count `attempt` per run, as lone trials do.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import yaml

from scheduler.runner import plan, run_grid
from scheduler.spec import load_spec
from tests.reliability.helpers import assert_readers_see_only_committed, tiny_grid, write_grid
from warehouse.layout import Layout

pytestmark = pytest.mark.slow

LOOP = """
import os, signal, sys, time
import torch
from batchlab import trial


def main():
    mode = trial.params["mode"]
    with open(os.path.join(trial.params["marks"], mode), "a") as fh:
        fh.write("ran\\n")
    if mode == "sys_exit":
        sys.exit(3)
    if mode == "keyboard":
        raise KeyboardInterrupt
    if mode == "os_exit":
        os._exit(7)
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        time.sleep(3600)
    model = trial.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=trial.lr)
    x, y = trial.data.x_train, trial.data.y_train
    loss = trial.loss(model(x[:64]), y[:64])
    opt.zero_grad()
    loss.backward()
    opt.step()
    val_loss, val_acc = trial.evaluate(model, "val")
    trial.log_epoch(1, train_loss=float(loss), val_loss=val_loss, val_acc=val_acc)
"""

MODES = ["ok", "sys_exit", "keyboard", "os_exit", "crash", "hang"]
TIMEOUT_S = 30


def _runs(marks: Path, mode: str) -> int:
    p = marks / mode
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_exits_crashes_and_hangs_in_user_code_become_failed_rows(ray_local, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "loop.py").write_text(LOOP)
    grid = {
        "experiment": "exits",
        "trainable": "./loop.py:main",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [8]},
        "max_epochs": 1,
        "grid": {
            "batch_size": [64],
            "lr": [0.05],
            "seed": [0],
            "params.mode": MODES,
            "params.marks": [str(marks)],
        },
        "resources": {"cpus_per_trial": 1, "max_retries": 1, "trial_timeout_s": TIMEOUT_S},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    spec = load_spec(path)
    root = str(tmp_path / "runs")
    out = io.StringIO()
    t0 = time.monotonic()
    report = run_grid(spec, root, progress=False, out=out)
    took = time.monotonic() - t0
    text = out.getvalue()
    committed = assert_readers_see_only_committed(root, "exits")
    by_mode = {
        t.params["mode"]: t.trial_id for t in spec.trials()
    }  # every trial has a row, failed ones included
    assert set(committed) == set(by_mode.values()), text
    from warehouse.db import connect

    rows = {
        r[0]: r[1:]
        for r in connect(root)
        .execute("SELECT trial_id, status, stop_reason, error, attempt FROM trials")
        .fetchall()
    }
    status = {m: rows[by_mode[m]][0] for m in MODES}
    assert status == {m: "completed" if m == "ok" else "failed" for m in MODES}, rows
    last = {m: (rows[by_mode[m]][2] or "").strip().splitlines()[-1] for m in MODES if m != "ok"}
    assert "sys.exit(3)" in last["sys_exit"]
    assert "KeyboardInterrupt" in last["keyboard"]
    assert "os._exit(7) called by the trial's code" in last["os_exit"]
    assert "worker process exited (os._exit or crash) 2 times" in last["crash"]
    assert last["hang"].startswith(f"exceeded trial_timeout_s={TIMEOUT_S}")
    assert rows[by_mode["hang"]][1] == "timeout" and rows[by_mode["crash"]][1] == "worker_died"
    # The user's code ran once for every exit and the hang (no retry re-ran it); the crash
    # ran max_retries + 1 times.
    ran = {m: _runs(marks, m) for m in MODES}
    assert ran == {"ok": 1, "sys_exit": 1, "keyboard": 1, "os_exit": 1, "crash": 2, "hang": 1}
    assert rows[by_mode["crash"]][3] == 2 and rows[by_mode["os_exit"]][3] == 1
    # Every failed trial is listed with its cause; the run did not wait for the hang.
    for m in MODES[1:]:
        assert f"failed {by_mode[m]}:" in text, text
    assert report.counts == {"completed": 1, "diverged": 0, "failed": 5}
    assert took < TIMEOUT_S + 120, took
    print(f"\nexits/crash/hang grid: {took:.1f} s (trial_timeout_s={TIMEOUT_S}); runs {ran}")
    # Failed trials run again next time.
    assert len(plan(spec, Layout.open(root)).to_run) == 5


def test_trial_timeout_is_not_part_of_trial_identity(tmp_path):
    a = tiny_grid("ident", [0, 1])
    b = tiny_grid("ident", [0, 1], resources={"cpus_per_trial": 1, "trial_timeout_s": 30})
    ids = [
        [t.trial_id for t in load_spec(write_grid(tmp_path / f"{n}.yaml", g)).trials()]
        for n, g in (("a", a), ("b", b))
    ]
    assert ids[0] == ids[1]


def test_pack_members_count_attempts_per_run(ray_local, tmp_path):
    """A pack member that runs again in a later run (its row lost: here deleted) is attempt
    1 of that run, as a lone trial is; it used to be 2 (counted in its checkpoint folder)."""
    spec_d = tiny_grid("packatt", [0, 1], max_epochs=1, resources={"pack": True})
    spec = load_spec(write_grid(tmp_path / "g.yaml", spec_d))
    root = str(tmp_path / "runs")
    first = run_grid(spec, root, progress=False, out=io.StringIO())
    assert first.counts["completed"] == 2, first.results
    assert {r.get("pack_id") is not None for r in first.results} == {True}
    layout = Layout.open(root)
    for f in layout.list_files("trials", "packatt"):
        Path(f).unlink()  # the rows are gone: the next run trains both members again
    second = run_grid(spec, root, progress=False, out=io.StringIO())
    assert second.counts["completed"] == 2, second.results
    committed = assert_readers_see_only_committed(root, "packatt")
    assert {r["attempt"] for r in committed.values()} == {1}, committed
