"""Landscape analyses scheduled after their trials (F-10, F-12)."""

from __future__ import annotations

import copy
import io

import pytest

from scheduler.analyses import plan_analyses
from scheduler.runner import run_grid
from scheduler.spec import SpecError, parse_spec
from tests.conftest import TINY_GRID
from warehouse.db import connect

GRID = copy.deepcopy(TINY_GRID)
GRID.update(
    experiment="landscape",
    max_epochs=2,
    grid={"batch_size": [32, 256], "lr": [0.05, 1e6], "seed": [0]},
    analyses=[
        {
            "kind": "interpolate",
            "name": "sb-vs-lb",
            "small": {"batch_size": 32},
            "large": {"batch_size": 256},
            "n_points": 7,
        },
        {
            "kind": "surface",
            "name": "lb-surface",
            "select": {"batch_size": 256, "lr": 0.05},
            "n_points": 4,
            "n_examples": 500,
        },
    ],
)


def test_analysis_spec_errors_name_the_field():
    bad = copy.deepcopy(GRID)
    bad["analyses"] = [
        {"kind": "interpolate", "small": {"btach_size": 32}, "large": {"btach_size": 256}}
    ]
    with pytest.raises(SpecError, match=r"analyses\[0\].*unknown axis \['btach_size'\]"):
        parse_spec(bad)
    bad["analyses"] = [{"kind": "contour"}]
    with pytest.raises(SpecError, match=r"analyses\[0\]"):
        parse_spec(bad)


def test_pairs_match_on_everything_else():
    spec = parse_spec({**GRID, "grid": {"batch_size": [32, 64, 256], "lr": [0.05], "seed": [0, 1]}})
    planned = plan_analyses(spec.analyses, spec.trials())
    pairs = [a for a in planned if a.kind == "interpolate"]
    assert len(pairs) == 2
    for a in pairs:
        small, large = a.trials
        assert (small.batch_size, large.batch_size) == (32, 256)
        assert small.seed == large.seed and small.lr == large.lr
    assert len({a.analysis_id for a in planned}) == len(planned)


@pytest.mark.slow
def test_analyses_run_after_their_trials_and_reproduce_endpoints(ray_local, storage):
    spec = parse_spec(GRID)
    report = run_grid(spec, storage, progress=False)
    assert report.counts == {"completed": 2, "diverged": 2, "failed": 0}
    # Interpolations: (32, 0.05)-(256, 0.05) runs; (32, 1e6)-(256, 1e6) is skipped (diverged).
    assert report.analyses == {"completed": 2, "skipped": 1}
    con = connect(storage)
    rows = con.execute("SELECT kind, status, reason FROM analyses ORDER BY kind, status").fetchall()
    assert [(k, s) for k, s, _ in rows] == [
        ("interpolate", "completed"),
        ("interpolate", "skipped"),
        ("surface", "completed"),
    ]
    assert "diverged" in rows[1][2]
    assert (
        con.execute("SELECT count(*) FROM landscapes WHERE kind = 'interpolate'").fetchone()[0]
        == 7 * 2
    )
    assert (
        con.execute("SELECT count(*) FROM landscapes WHERE kind = 'surface'").fetchone()[0]
        == 4 * 4 * 2
    )
    # Ordering: no analysis started before its input trials finished.
    late = con.execute(
        """SELECT count(*) FROM analyses a, trials t
           WHERE a.status = 'completed' AND list_contains(CAST(json(a.trial_ids) AS VARCHAR[]), t.trial_id)
             AND a.started_at < t.finished_at"""
    ).fetchone()[0]
    assert late == 0
    # alpha = 0 and 1 reproduce the two trials' final losses (whole state, eval mode).
    ends = con.execute(
        """SELECT l.alpha, l.split, l.loss,
                  CASE WHEN l.alpha = 0 THEN ts.final_train_loss ELSE tl.final_train_loss END AS train_ref,
                  CASE WHEN l.alpha = 0 THEN ts.final_val_loss ELSE tl.final_val_loss END AS val_ref
           FROM landscapes l JOIN trials ts ON ts.trial_id = l.trial_id JOIN trials tl ON tl.trial_id = l.trial_id_b
           WHERE l.kind = 'interpolate' AND l.alpha IN (0, 1)"""
    ).fetchall()
    assert len(ends) == 4
    for _alpha, split, loss, train_ref, val_ref in ends:
        assert loss == pytest.approx(train_ref if split == "train" else val_ref, rel=1e-5)
    # Re-running skips the stored analyses and the trials.
    buf = io.StringIO()
    again = run_grid(spec, storage, progress=False, out=buf)
    assert again.planned == 0 and again.analyses == {}
    assert "3 already stored, 0 to run" in buf.getvalue()
