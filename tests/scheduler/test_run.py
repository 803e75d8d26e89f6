"""End to end through local Ray: grid -> tasks -> Parquet -> DuckDB."""

from __future__ import annotations

import copy

import pyarrow.parquet as pq
import pytest

from scheduler.runner import plan, run_grid
from scheduler.spec import parse_spec
from tests.conftest import TINY_GRID
from warehouse.db import connect
from warehouse.layout import Layout


def _counts(root: str, experiment: str) -> dict[str, int]:
    con = connect(root)
    out = {}
    for table in ("trials", "epochs", "steps", "layers"):
        out[table] = con.execute(
            f"SELECT count(*) FROM {table} WHERE experiment = ?", [experiment]
        ).fetchone()[0]
    return out


def test_tiny_grid_exact_row_counts(tiny_warehouse):
    con = connect(tiny_warehouse)
    trials = con.execute(
        "SELECT trial_id, status, batch_size, epochs_run, steps_run, steps_per_epoch FROM trials ORDER BY batch_size, seed"
    ).fetchall()
    assert len(trials) == 4
    assert {t[1] for t in trials} == {"completed"}
    # MNIST-1D: 4,000 training examples -> 63 steps/epoch at 64 (last partial), 16 at 256.
    assert [t[5] for t in trials] == [63, 63, 16, 16]
    c = _counts(tiny_warehouse, "tiny")
    assert c["trials"] == 4
    assert c["epochs"] == 4 * 3
    assert c["steps"] == 3 * (63 + 63 + 16 + 16)
    # MLP 40 -> 32 -> 10: 4 parameter tensors, one layers row each per epoch.
    assert c["layers"] == 4 * 3 * 4
    dup = con.execute(
        "SELECT count(*) FROM (SELECT trial_id, epoch FROM epochs GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]
    assert dup == 0
    # Provenance on the trials row and the key columns on every table.
    row = con.execute(
        "SELECT config_hash, code_version, torch_version, host, device_name, node_id, config_json FROM trials LIMIT 1"
    ).fetchone()
    assert all(row), row
    assert (
        con.execute(
            "SELECT count(*) FROM epochs WHERE config_hash IS NULL OR code_version IS NULL"
        ).fetchone()[0]
        == 0
    )


def test_duckdb_file_for_outside_clients(tiny_warehouse):
    import duckdb

    con = duckdb.connect(Layout.open(tiny_warehouse).duckdb_file, read_only=True)
    assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == 12


def test_rerun_skips_everything_and_extension_runs_only_new(ray_local, storage):
    grid = copy.deepcopy(TINY_GRID)
    grid["experiment"] = "extend"
    grid["max_epochs"] = 1
    grid["grid"] = {"batch_size": [256], "lr": [0.05], "seed": [0, 1]}
    first = run_grid(parse_spec(grid), storage, progress=False)
    assert first.counts["completed"] == 2
    again = run_grid(parse_spec(grid), storage, progress=False)
    assert again.planned == 0 and again.skipped == 2
    grid["grid"]["seed"] = [0, 1, 2]
    grid["grid"]["batch_size"] = [256, 512]
    p = plan(parse_spec(grid), Layout.open(storage))
    assert len(p.skipped) == 2 and len(p.to_run) == 4
    ext = run_grid(parse_spec(grid), storage, progress=False)
    assert ext.planned == 4 and ext.counts["completed"] == 4
    assert _counts(storage, "extend")["trials"] == 6


def test_cli_run_compacts_an_experiment_once_it_has_many_trials(
    ray_local, storage, tmp_path, capsys
):
    """`batchlab run --compact-threshold N`: below N (or 0) the per-trial files stay; at N
    the experiment is compacted after the run, with the same rows."""
    import yaml

    from batchlab.cli import main

    grid = copy.deepcopy(TINY_GRID)
    grid |= {"experiment": "autocompact", "max_epochs": 1}
    grid["grid"] = {"batch_size": [256], "lr": [0.05], "seed": [0, 1, 2]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    run = ["run", str(path), "--storage", storage, "--no-progress", "--compact-threshold"]
    assert main([*run, "0"]) == 0
    layout = Layout.open(storage)
    assert len(layout.table_files("trials", "autocompact").per_trial) == 3
    before = _counts(storage, "autocompact")
    assert before["trials"] == 3
    capsys.readouterr()
    assert main([*run, "4"]) == 0  # 3 < 4: left as is
    assert "compacting" not in capsys.readouterr().out
    assert main([*run, "3"]) == 0  # nothing to run; 3 uncompacted trials >= 3
    assert "compacting experiment autocompact: 3 uncompacted trials" in capsys.readouterr().out
    for table in ("trials", "epochs", "steps", "layers"):
        files = layout.table_files(table, "autocompact")
        assert not files.per_trial and len(files.parts) == 1, table
    assert _counts(storage, "autocompact") == before


def test_diverging_trial_is_recorded_and_others_complete(ray_local, storage):
    grid = copy.deepcopy(TINY_GRID)
    grid["experiment"] = "diverge"
    grid["max_epochs"] = 2
    grid["grid"] = {"batch_size": [256], "lr": [0.05, 1e6], "seed": [0]}
    report = run_grid(parse_spec(grid), storage, progress=False)
    assert report.counts == {"completed": 1, "diverged": 1, "failed": 0}
    con = connect(storage)
    rows = dict(con.execute("SELECT lr, status FROM trials").fetchall())
    assert rows == {0.05: "completed", 1e6: "diverged"}
    step = con.execute("SELECT diverged_step FROM trials WHERE status = 'diverged'").fetchone()[0]
    assert step >= 1
    # A diverged trial is done: a re-run does not retry it.
    assert plan(parse_spec(grid), Layout.open(storage)).to_run == []


@pytest.mark.slow
def test_sigkilled_worker_is_retried_resumes_and_leaves_one_set_of_rows(
    ray_local, storage, tiny_warehouse, monkeypatch
):
    grid = copy.deepcopy(TINY_GRID)
    grid["grid"] = {"batch_size": [256], "lr": [0.05], "seed": [0]}
    # Same trials as the tiny warehouse's (same config): results must be identical.
    monkeypatch.setenv("BATCHLAB_FAULT_KILL_AT_EPOCH", "2")
    report = run_grid(parse_spec(grid), storage, progress=False)
    assert report.counts["completed"] == 1, report.results
    con = connect(storage)
    attempt, resumed, steps = con.execute(
        "SELECT attempt, resumed_from_epoch, steps_run FROM trials"
    ).fetchone()
    assert attempt == 2, "the first attempt was killed; Ray retried it"
    assert resumed == 1, "the retry resumed from the epoch-1 checkpoint, not from scratch"
    assert steps == 3 * 16
    assert _counts(storage, "tiny") == {"trials": 1, "epochs": 3, "steps": 48, "layers": 12}
    tid = con.execute("SELECT trial_id FROM trials").fetchone()[0]
    # The tiny warehouse trained this trial inside a pack (`pack: auto`, equal to a lone run
    # to ~1e-7, not bit for bit); the killed one ran alone: compare it exactly with an
    # uninterrupted lone run (one thread, as its worker), and closely with the pack's.
    import torch

    from workers.train import run_trial

    (cfg,) = parse_spec(grid).trials()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lone = run_trial(cfg, device="cpu")
    finally:
        torch.set_num_threads(threads)
    ref = [(r["epoch"], r["train_loss"], r["val_loss"], r["dist_from_init"]) for r in lone.epochs]
    packed = (
        connect(tiny_warehouse)
        .execute(
            "SELECT epoch, train_loss, val_loss, dist_from_init FROM epochs WHERE trial_id = ? ORDER BY epoch",
            [tid],
        )
        .fetchall()
    )
    assert [pytest.approx(r, rel=1e-5) for r in ref] == packed
    got = con.execute(
        "SELECT epoch, train_loss, val_loss, dist_from_init FROM epochs ORDER BY epoch"
    ).fetchall()
    assert got == ref, "a resumed trial equals an uninterrupted run exactly on CPU"


def test_trial_files_are_atomic_and_named_by_trial(tiny_warehouse):
    layout = Layout.open(tiny_warehouse)
    files = layout.list_files("epochs", "tiny")
    assert len(files) == 4
    for f in files:
        t = pq.read_table(f)
        assert set(t.column("trial_id").to_pylist()) == {
            f.rsplit("/", 1)[1].removesuffix(".parquet")
        }
