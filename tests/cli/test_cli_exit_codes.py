"""One test per row of the exit-code table in docs/cli.md ("Exit codes")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from batchlab import cli
from batchlab.cli import main
from tests.reliability.helpers import tiny_grid, write_grid
from warehouse.layout import Layout
from warehouse.store import write_trial

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _warehouse(root: Path, experiments=("alpha", "beta")) -> Layout:
    layout = Layout.open(root)
    for e in experiments:
        for i in range(2):
            write_trial(
                layout,
                e,
                {"trial_id": f"{e}{i}", "config_hash": f"h{i}", "status": "completed",
                 "batch_size": 32 * (i + 1), "lr": 0.1, "best_val_loss": 1.0 + i},
                {"epochs": [{"epoch": 1, "val_loss": 1.0 + i, "train_loss": 1.0}]},
            )  # fmt: skip
    return layout


def test_doc_table_lists_every_code() -> None:
    text = DOC.read_text()
    table = text[text.index("## Exit codes") :]
    codes = {int(c) for c in re.findall(r"^\| `(\d+)` \|", table, re.M)}
    assert codes == {
        cli.EXIT_OK,
        cli.EXIT_PROBLEMS,
        cli.EXIT_USAGE,
        cli.EXIT_NO_WAREHOUSE,
        cli.EXIT_TRIALS_FAILED,
        cli.EXIT_STORAGE,  # tests/reliability/test_round3_storage.py
        cli.EXIT_INTERRUPTED,
    }


def test_0_done(tmp_path, capsys) -> None:
    _warehouse(tmp_path / "runs")
    sql = "SELECT count(*) AS n FROM trials"
    assert main(["sql", "--storage", str(tmp_path / "runs"), "--format", "csv", sql]) == 0
    assert capsys.readouterr().out.split() == ["n", "4"]


def test_1_check_found_problems(tmp_path, capsys) -> None:
    layout = _warehouse(tmp_path / "runs")
    assert main(["check", "--storage", layout.root]) == 0
    Path(layout.table_file("epochs", "alpha", "alpha0")).write_bytes(b"not parquet at all")
    assert main(["check", "--storage", layout.root]) == 1
    assert "corrupt_file" in capsys.readouterr().out


def test_1_report_on_incomplete_trials(tmp_path, capsys) -> None:
    """A damaged file quarantined by `check --repair` leaves its trial incomplete: `report`
    still writes the report, lists the trial in it, warns and exits 1 (not a silent 0)."""
    layout = _warehouse(tmp_path / "runs")
    out = tmp_path / "REPORT.md"
    assert main(["report", "--storage", layout.root, "--output", str(out)]) == 0
    assert "Incomplete trials" not in out.read_text()
    Path(layout.table_file("epochs", "alpha", "alpha0")).write_bytes(b"not parquet at all")
    main(["check", "--repair", "--storage", layout.root])
    capsys.readouterr()
    assert main(["report", "--storage", layout.root, "--output", str(out)]) == 1
    assert "1 trial(s) incomplete" in capsys.readouterr().err
    text = out.read_text()
    assert "## Incomplete trials" in text and "- alpha / alpha0: " in text
    assert "| alpha | 1 | 1 |" in text  # its trials row is invalidated: not counted
    # only the experiments asked for
    assert main(["report", "--storage", layout.root, "--experiment", "beta"]) == 0
    assert "Incomplete trials" not in capsys.readouterr().out


def test_2_bad_spec_or_input(tmp_path, capsys) -> None:
    bad = write_grid(tmp_path / "bad.yaml", {**tiny_grid("x", [0]), "max_epochs": -3})
    assert main(["run", str(bad), "--storage", str(tmp_path / "runs")]) == 2
    assert "max_epochs" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    _warehouse(tmp_path / "runs")
    assert main(["sql", "--storage", str(tmp_path / "runs"), "DROP TABLE trials"]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse: unknown option
        main(["report", "--no-such-option"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["sql", "SELECT count(*) FROM trials"],
        ["report"],
        ["compact"],
        ["check"],
        ["export", "--format", "csv", "--output", "{out}"],
    ],
    ids=lambda a: a[0],
)
def test_3_no_warehouse_at_the_root(tmp_path, capsys, argv) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(out=tmp_path / "out") for a in argv]
    assert main([*argv, "--storage", str(empty)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: no warehouse at {empty}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--experiment", "nosuch"],
        ["compact", "--experiment", "nosuch"],
        ["export", "--format", "jsonl", "--output", "{out}", "--experiment", "nosuch"],
    ],
    ids=lambda a: a[0],
)
def test_3_unknown_experiment_lists_those_there(tmp_path, capsys, argv) -> None:
    layout = _warehouse(tmp_path / "runs")
    argv = [a.format(out=tmp_path / "out") for a in argv]
    assert main([*argv, "--storage", layout.root]) == 3
    err = capsys.readouterr().err
    assert "experiment 'nosuch' not in the warehouse" in err
    assert err.rstrip().endswith("experiments there: alpha, beta"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_4_failed_trials_and_allow_failed(ray_local, tmp_path, monkeypatch, capsys) -> None:
    """A real run (local Ray) in which one trial fails (the reliability tests' injected
    out-of-memory): exit 4; again with --allow-failed: 0 (the failed trial is retried and
    fails again; the others are skipped as done)."""
    from scheduler.spec import parse_spec

    grid = tiny_grid("exitcodes", [0, 1], max_epochs=1)
    victim = parse_spec(grid).trials()[1].trial_id
    path = write_grid(tmp_path / "grid.yaml", grid)
    monkeypatch.setenv("BATCHLAB_FAULT_PLAN", json.dumps({victim: {"OOM_AT_EPOCH": "1"}}))
    run = ["run", str(path), "--storage", str(tmp_path / "runs"), "--no-progress"]
    assert main(run) == 4
    out, err = capsys.readouterr()
    assert "1 completed, 0 diverged, 1 failed" in out
    assert "1 trial(s) failed (exit 4; --allow-failed exits 0)" in err
    assert main([*run, "--allow-failed"]) == 0
    assert "0 completed, 0 diverged, 1 failed, 1 skipped" in capsys.readouterr().out


def test_130_interrupted_run(tmp_path, monkeypatch, capsys) -> None:
    """A run cancelled by Ctrl-C (RunReport.cancelled, as scheduler.runner reports it; the
    real Ctrl-C is tests/reliability/test_driver_interrupts.py) and a Ctrl-C anywhere else."""
    import scheduler.runner as runner

    path = write_grid(tmp_path / "grid.yaml", tiny_grid("intr", [0]))

    def cancelled(spec, root, **kw):
        r = runner.RunReport(spec.experiment, root, "r1", 1, 0)
        r.counts, r.cancelled = {"completed": 0, "diverged": 0, "failed": 0}, True
        return r

    monkeypatch.setattr(runner, "run_grid", cancelled)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs"), "--no-progress"]) == 130
    assert "run interrupted" in capsys.readouterr().err

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "report", ctrl_c)
    assert main(["report"]) == 130
