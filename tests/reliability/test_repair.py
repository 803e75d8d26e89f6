"""Self-healing storage (warehouse/check.py): a damaged or missing table file never makes
`batchlab check` raise; repair invalidates exactly the trials that lost rows; the next
`batchlab run` re-runs exactly those, and afterwards every row count is exact.

- `test_damage_repair_rerun_restores_exact_rows`: a real grid through `batchlab run` (its own
  embedded Ray), one epochs file damaged in its middle (magic bytes intact) and one deleted,
  `batchlab check` plain / --deep / --quarantine / --repair, the re-run, exact rows;
- `test_fault_loop_damage_repair_rewrite`: a fault loop over fake trials (no training): each
  round damages one random file of a random table (middle, truncation, garbage, deletion;
  before or after a compaction), runs every check, repairs, re-writes what the plan would
  re-run, and counts rows lost and duplicated. Its figures are in docs/reliability.md.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchlab import cli
from tests.reliability.helpers import (
    CliRun,
    assert_readers_see_only_committed,
    tiny_grid,
    write_grid,
)
from warehouse.check import check_warehouse, incomplete_trials, quarantine_corrupt, repair
from warehouse.compact import compact
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.store import read_trial_rows, write_trial

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def damage_middle(path: str) -> None:
    """Overwrite bytes inside the first column chunk's data pages: magic bytes and footer
    intact (the cheap check passes), the file unreadable."""
    meta = pq.ParquetFile(path).metadata
    for c in range(meta.num_columns):
        col = meta.row_group(0).column(c)
        with open(path, "r+b") as fh:
            fh.seek(col.data_page_offset)
            fh.write(b"\xff" * max(24, col.total_compressed_size))
        try:
            pq.read_table(path)
        except Exception:
            return
    raise AssertionError(f"could not damage {path} detectably")


def _counts(root: str, experiment: str) -> dict[str, dict[str, int]]:
    con = connect(root)
    out = {}
    for t in ("epochs", "steps", "layers"):
        out[t] = dict(
            con.execute(
                f"SELECT trial_id, count(*) FROM {t} WHERE experiment = ? GROUP BY ALL",
                [experiment],
            ).fetchall()
        )
    con.close()
    return out


@pytest.mark.slow
def test_damage_repair_rerun_restores_exact_rows(tmp_path, ray_tmp, capsys):
    exp = "repair"
    grid = write_grid(tmp_path / "grid.yaml", tiny_grid(exp, [0, 1, 2], max_epochs=2))
    root = str(tmp_path / "runs")
    run = CliRun(grid, root, ray_tmp).start()
    try:
        assert run.wait() == 0, run.output()
    finally:
        run.cleanup()
    layout = Layout.open(root)
    first = assert_readers_see_only_committed(root, exp)
    good = _counts(root, exp)
    assert len(first) == 3 and all(r["epochs_run"] == 2 for r in first.values())
    damaged, deleted, intact = sorted(first)
    damage_middle(layout.table_file("epochs", exp, damaged))
    assert layout.parquet_problem(layout.table_file("epochs", exp, damaged)) is None
    Path(layout.table_file("epochs", exp, deleted)).unlink()

    # Every check runs to the end and names both trials' problems (no traceback).
    for args in ([], ["--deep"]):
        assert cli.main(["check", "--storage", root, *args]) == 1
        out = capsys.readouterr().out
        assert f"epochs/experiment={exp}/{damaged}.parquet: unreadable" in out, out
        assert f"missing_rows: trials/experiment={exp}: 2 committed trials" in out, out
    assert cli.main(["check", "--storage", root, "--repair"]) == 1
    out = capsys.readouterr().out
    assert f"invalidated trial {damaged} ({exp}): its epochs file was damaged" in out, out
    assert (
        f"invalidated trial {deleted} ({exp}): its rows are missing (0 of its 2 epochs rows" in out
    ), out
    assert "2 trials incomplete" in out
    (p,) = check_warehouse(root)
    assert p.kind == "incomplete_trials" and p.detail.startswith("2 trials have no results")
    assert {i.trial_id for i in incomplete_trials(root)} == {damaged, deleted}
    assert {r["trial_id"] for r in read_trial_rows(layout, exp)} == {intact}
    assert check_warehouse(root, deep=True) == [p]  # idempotent, nothing else wrong
    assert repair(root).invalidated == []

    run = CliRun(grid, root, ray_tmp).start()
    try:
        assert run.wait() == 0, run.output()
    finally:
        run.cleanup()
    assert "1 already in storage (skipped), 2 to run (2 of them lost rows" in run.output()
    after = assert_readers_see_only_committed(root, exp)
    assert after[intact] == first[intact]  # not re-run: same row, same started_at
    assert after[damaged]["started_at"] != first[damaged]["started_at"]
    assert _counts(root, exp) == good  # every row back, none twice
    assert check_warehouse(root, deep=True) == [] and incomplete_trials(root) == []


# ---- fault loop over fake trials --------------------------------------------------------

N_TRIALS, EPOCHS, STEPS = 4, 3, 5
ROUNDS = 8
TABLES = ("trials", "epochs", "steps", "layers")
KEYS = {"trials": "trial_id", "epochs": "(trial_id, epoch)", "steps": "(trial_id, step)",
        "layers": "(trial_id, epoch, layer)"}  # fmt: skip


def _write(layout: Layout, exp: str, i: int) -> str:
    tid = f"t{i:015d}"
    write_trial(
        layout, exp,
        {"trial_id": tid, "config_hash": f"h{i}", "code_version": "test", "status": "completed",
         "batch_size": 32, "lr": 0.1, "seed": i, "epochs_run": EPOCHS, "steps_run": STEPS,
         "finished_at": T0},
        {"epochs": [{"epoch": e, "step": e, "val_loss": 1.0 / e} for e in range(1, EPOCHS + 1)],
         "steps": [{"step": s, "epoch": 1, "update_norm": 0.1} for s in range(1, STEPS + 1)],
         "layers": [{"epoch": e, "layer": "w", "numel": 4, "dist_from_init": 0.1}
                    for e in range(1, EPOCHS + 1)]},
    )  # fmt: skip
    return tid


def _damage(rng: random.Random, path: str, table: str) -> str:
    # A deleted layers (or probes) file leaves no trace: the trials row does not say how
    # many such rows the trial wrote (docs/reliability.md, "Not covered").
    kinds = ["middle", "truncate", "garbage"] + (["delete"] if table != "layers" else [])
    kind = rng.choice(kinds)
    if kind == "middle":
        damage_middle(path)
    elif kind == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(fh.seek(0, 2) * rng.randint(1, 9) // 10)
    elif kind == "garbage":
        Path(path).write_bytes(rng.randbytes(rng.randint(0, 3000)))
    else:
        Path(path).unlink()
    return kind


def test_fault_loop_damage_repair_rewrite(tmp_path):
    rng = random.Random(1919)
    tried = survived = rows_lost = rows_dup = rerun_extra = 0
    expected = {"trials": N_TRIALS, "epochs": N_TRIALS * EPOCHS, "steps": N_TRIALS * STEPS,
                "layers": N_TRIALS * EPOCHS}  # fmt: skip
    for r in range(ROUNDS):
        layout = Layout.open(tmp_path / f"r{r}")
        exp = "loop"
        for i in range(N_TRIALS):
            _write(layout, exp, i)
        if rng.random() < 0.4:
            compact(layout, experiment=exp, min_rows=1, grace_s=0)
        table = rng.choice(TABLES)
        files = [
            f.path for f in (*layout.table_files(table).per_trial, *layout.table_files(table).parts)
        ]
        _damage(rng, rng.choice(files), table)
        tried += 1
        # Every check: no exception, whatever the damage.
        check_warehouse(layout)
        check_warehouse(layout, deep=True)
        if rng.random() < 0.5:
            quarantine_corrupt(layout)
        rep = repair(layout)
        # What `batchlab run` would re-run: every grid trial without a committed row.
        committed = {x["trial_id"] for x in read_trial_rows(layout, exp)}
        rerun = [i for i in range(N_TRIALS) if f"t{i:015d}" not in committed]
        lost_ids = {i.trial_id for i in rep.incomplete}
        rerun_extra += len({f"t{i:015d}" for i in rerun} - lost_ids)
        for i in rerun:
            _write(layout, exp, i)
        con = connect(layout)
        for t, n in expected.items():
            key = KEYS[t]
            got, distinct = con.execute(
                f"SELECT count(*), count(DISTINCT {key}) FROM {t}"
            ).fetchone()
            rows_lost += max(0, n - distinct)
            rows_dup += got - distinct
        con.close()
        assert check_warehouse(layout) == [] and incomplete_trials(layout) == []
        survived += 1
    print(f"\nstorage fault loop: tried {tried}, survived {survived}, rows lost {rows_lost}, "
          f"rows duplicated {rows_dup}, re-run without an invalidation record {rerun_extra}")  # fmt: skip
    assert (tried, survived, rows_lost, rows_dup) == (ROUNDS, ROUNDS, 0, 0)
