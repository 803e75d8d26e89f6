"""Seeds until decided (scheduler/decide.py) end to end on local Ray: a tiny grid starts with
one seed (every group undecided: no spread), gets seeds only while the named finding is
undecided, and stops once it is decided, reporting the compute saved against the cap."""

from __future__ import annotations

import io

from batchlab.cli import main as cli_main
from scheduler.decide import run_until_decided
from scheduler.spec import parse_spec
from warehouse.db import connect

GRID = {
    "experiment": "decide", "dataset": {"name": "mnist1d", "n_train": 512},
    "model": {"name": "mlp", "hidden": [16]}, "max_epochs": 1,
    "measure": {"checkpoints": False, "layers": False, "store_steps": False},
    "grid": {"batch_size": [16, 64, 256], "lr": [0.05], "seed": [0]},
    "resources": {"cpus_per_trial": 1},
}  # fmt: skip


def test_seeds_are_added_until_the_finding_is_decided(ray_local, storage):
    out = io.StringIO()
    rep = run_until_decided(parse_spec(GRID), storage, ("F-9",), 4, progress=False, out=out)
    # Round 1: one seed per batch size, undecided for want of seeds; round 2 adds seed 1 to
    # the three settings of that group; F-9 (update norms fall with batch size) is decided.
    assert [r["trials"] for r in rep.rounds] == [3, 3], rep.rounds
    assert rep.rounds[0]["undecided"] >= 1 and rep.rounds[0]["extendable"] >= 1
    assert (rep.stopped, rep.rounds[-1]["undecided"]) == ("decided", 0), rep.describe()
    assert (rep.settings, rep.trials_used, rep.trials_at_cap, rep.trials_saved) == (3, 6, 12, 6)
    assert 0 < rep.seconds_used < rep.seconds_at_cap
    seeds = (
        connect(storage)
        .execute("SELECT batch_size, list(seed ORDER BY seed) FROM trials GROUP BY 1 ORDER BY 1")
        .fetchall()
    )
    assert seeds == [(16, [0, 1]), (64, [0, 1]), (256, [0, 1])]
    assert "6 saved" in rep.describe()
    # Again: everything stored, still decided: nothing runs.
    again = run_until_decided(parse_spec(GRID), storage, ("F-9",), 4, progress=False, out=out)
    assert [r["trials"] for r in again.rounds] == [0] and again.stopped == "decided"


def test_until_decided_flag_refuses_unknown_findings(tmp_path, capsys):
    import yaml

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    rc = cli_main(["run", str(grid), "--storage", str(tmp_path / "runs"),
                   "--until-decided", "F-9,F-99", "--max-seeds", "4"])  # fmt: skip
    assert rc == 2 and "unknown finding(s) ['F-99']" in capsys.readouterr().err
