"""Load: hundreds of tiny trials through the local Ray (2 CPUs) complete with exact row counts.

CI runs 300 trials (about a minute on 2 cores); the 2,000-trial run and the per-trial
scheduling overhead are measured by benchmarks/scheduling_overhead.py (same grid, numbers
in docs/reliability.md).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks.scheduling_overhead import tiny_grid
from scheduler.runner import plan, run_grid
from scheduler.spec import parse_spec
from warehouse.db import connect
from warehouse.layout import Layout

N_TRIALS = 300


@pytest.mark.slow
def test_hundreds_of_tiny_trials_complete_with_exact_row_counts(ray_local, tmp_path):
    spec = parse_spec(tiny_grid(N_TRIALS, experiment="load"))
    assert spec.n_trials == N_TRIALS
    root = str(tmp_path / "runs")
    report = run_grid(spec, root, progress=False, out=io.StringIO())
    assert report.counts == {"completed": N_TRIALS, "diverged": 0, "failed": 0}
    assert len(report.results) == N_TRIALS

    con = connect(root)
    trials, distinct, seeds, steps_run = con.execute(
        "SELECT count(*), count(DISTINCT trial_id), count(DISTINCT seed), sum(steps_run) "
        "FROM trials WHERE status = 'completed'"
    ).fetchone()
    # 64 training examples at batch 32: 2 steps in the one epoch of every trial.
    assert (trials, distinct, seeds, steps_run) == (N_TRIALS, N_TRIALS, N_TRIALS, 2 * N_TRIALS)
    counts = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("epochs", "steps", "layers", "probes")
    }
    # Measurements switched off: one epochs row per trial and nothing else.
    assert counts == {"epochs": N_TRIALS, "steps": 0, "layers": 0, "probes": 0}
    assert (
        con.execute(
            "SELECT count(*) FROM (SELECT trial_id FROM epochs GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()[0]
        == 0
    )
    layout = Layout.open(root)
    assert len(layout.list_files("trials", "load")) == N_TRIALS
    (record,) = Path(layout.path("runs", "experiment=load")).glob("*.json")
    assert json.loads(record.read_text())["counts"]["completed"] == N_TRIALS
    # Planning against 300 stored trials skips them all.
    p = plan(spec, layout)
    assert (len(p.to_run), len(p.skipped)) == (0, N_TRIALS)
