"""Compaction: no row lost or duplicated (checksums of every column), idempotent, safe with
writers (re-written and new trials), crash-safe, readable by outside DuckDB clients."""

from __future__ import annotations

import json
import shutil

import duckdb
import pyarrow.parquet as pq
import pytest

import warehouse.compact as compaction
from batchlab.cli import main
from warehouse.compact import ROW_GROUP_ROWS, compact
from warehouse.db import connect, write_duckdb_file
from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS, to_table


def _files(layout: Layout, table: str):
    return layout.table_files(table)


def test_compaction_keeps_every_row_and_is_idempotent(small_warehouse, sums):
    layout = small_warehouse
    before, before_raw = sums(connect(layout)), sums(connect(layout), raw=True)
    assert before["epochs"][0] == 36 and before["probes"][0] == 8

    # metrics: no user loop here; timings: written by `batchlab advise --dataset` only
    tables = [t for t in SCHEMAS if _files(layout, t).per_trial]
    assert {"metrics", "timings"}.isdisjoint(tables) and len(tables) == len(SCHEMAS) - 2
    report = compact(layout, min_rows=10, grace_s=0)
    assert {(d.table, d.experiment, d.mode) for d in report.dirs} == {
        (t, e, "append") for t in tables for e in ("exp0", "exp1")
    }
    assert sums(connect(layout)) == before
    assert sums(connect(layout), raw=True) == before_raw
    for t in tables:
        tf = _files(layout, t)
        assert tf.per_trial == [] and len(tf.parts) == 2, t

    again = compact(layout, min_rows=10, grace_s=0)
    assert {d.mode for d in again.dirs} == {"none"} and sum(d.deleted for d in again.dirs) == 0
    assert sums(connect(layout)) == before


def test_parts_have_large_row_groups(tmp_path, fake):
    layout = Layout.open(tmp_path / "runs")
    for i in range(3):
        fake(layout, "e", i, epochs=2, steps=60_000)
    compact(layout, table="steps", grace_s=0)
    (part,) = _files(layout, "steps").parts
    md = pq.read_metadata(part.path)
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert sum(sizes) == 180_000
    assert sizes[:-1] == [ROW_GROUP_ROWS] * (len(sizes) - 1) and ROW_GROUP_ROWS >= 100_000


def test_trial_rewritten_after_compaction_counts_once(small_warehouse, fake, sums):
    layout = small_warehouse
    compact(layout, min_rows=10, grace_s=0)
    n = sums(connect(layout))
    tid = fake(layout, "exp1", 1, value=100.0, probes=False)  # a re-run: new values, no probes

    con = connect(layout)
    assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == n["trials"][0]
    assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == n["epochs"][0]
    assert con.execute("SELECT min(val_loss) FROM epochs WHERE trial_id = ?", [tid]).fetchone()[
        0
    ] == pytest.approx(101.1)
    # The re-run had no probes: its empty file hides the compacted probe row.
    assert con.execute("SELECT count(*) FROM probes WHERE trial_id = ?", [tid]).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM probes").fetchone()[0] == n["probes"][0] - 1
    mid = sums(con)

    report = compact(layout, min_rows=10, grace_s=0)
    modes = {(d.table, d.experiment): d.mode for d in report.dirs}
    assert modes[("epochs", "exp1")] == "rewrite" and modes[("epochs", "exp0")] == "none"
    assert sums(connect(layout)) == mid
    tf = _files(layout, "epochs")
    assert tf.per_trial == [] and tf.stale_parts == []
    assert {p.generation for p in tf.parts if p.experiment == "exp1"} == {2}


def test_new_files_and_rewrites_during_compaction_are_kept(small_warehouse, fake, monkeypatch):
    """A trial written (new) or re-written while a compaction runs is neither lost nor
    double counted: its file stays and takes precedence."""
    layout = small_warehouse
    real = compaction._write_part
    calls = []

    def write_then_race(*args, **kwargs):
        out = real(*args, **kwargs)
        if not calls:  # once, after the first part (trials/exp0) is written
            calls.append(fake(layout, "exp0", 0, value=50.0))  # re-written: was compacted
            calls.append(fake(layout, "exp0", 100))  # brand new
        return out

    monkeypatch.setattr(compaction, "_write_part", write_then_race)
    report = compact(layout, min_rows=10, grace_s=0)
    kept = [p for d in report.dirs for p in d.kept_changed]
    assert kept == [layout.table_file("trials", "exp0", calls[0])]
    con = connect(layout)
    assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == 13
    assert con.execute("SELECT count(*), count(DISTINCT trial_id) FROM epochs").fetchone() == (
        39,
        13,
    )
    assert con.execute(
        "SELECT best_val_loss FROM trials WHERE trial_id = ?", [calls[0]]
    ).fetchone()[0] == pytest.approx(51.0)
    # Written after the `trials` listing: its trials file stays as it is (its epochs file,
    # listed later, was merged: either way it counts once).
    assert layout.exists(layout.table_file("trials", "exp0", calls[1]))


def test_interrupted_compaction_is_readable_and_finished_next_time(
    small_warehouse, sums, monkeypatch
):
    layout = small_warehouse
    before = sums(connect(layout))

    def crash(self, f):
        raise OSError("simulated crash before deleting the merged files")

    monkeypatch.setattr(Layout, "delete_if_unchanged", crash)
    with pytest.raises(OSError, match="simulated crash"):
        compact(layout, min_rows=10, grace_s=0)
    monkeypatch.undo()
    # Parts and all the per-trial files coexist: the per-trial files take precedence.
    assert _files(layout, "epochs").parts and _files(layout, "epochs").per_trial
    assert sums(connect(layout)) == before

    report = compact(layout, min_rows=10, grace_s=0)
    assert {d.mode for d in report.dirs if d.table == "epochs"} == {"rewrite"}
    assert sums(connect(layout)) == before
    assert _files(layout, "epochs").per_trial == []


def test_stale_generation_is_ignored_and_removed(small_warehouse, sums):
    layout = small_warehouse
    compact(layout, min_rows=10, grace_s=0)
    before = sums(connect(layout))
    # What a crash between writing generation 2 and deleting generation 1 leaves behind.
    (part,) = [p for p in _files(layout, "epochs").parts if p.experiment == "exp0"]
    shutil.copy(part.path, layout.part_file("epochs", "exp0", 2))
    stale = _files(layout, "epochs").stale_parts
    assert [p.path for p in stale] == [part.path]
    assert sums(connect(layout)) == before
    report = compact(layout, min_rows=10, grace_s=0)
    assert sum(d.deleted for d in report.dirs) == 1
    assert not layout.exists(part.path) and sums(connect(layout)) == before


def test_small_parts_are_merged(tmp_path, fake, sums):
    layout = Layout.open(tmp_path / "runs")
    for batch in range(3):
        for i in range(batch * 4, batch * 4 + 4):
            fake(layout, "e", i)
        compact(layout, min_rows=1, grace_s=0)  # appends a part each time
    assert len(_files(layout, "epochs").parts) == 3
    before = sums(connect(layout))
    report = compact(layout, min_rows=1_000, grace_s=0)  # every part is now "small"
    assert {d.mode for d in report.dirs} == {"rewrite"}
    assert len(_files(layout, "epochs").parts) == 1 and sums(connect(layout)) == before


def test_corrupt_part_leaves_its_directory_alone(small_warehouse):
    layout = small_warehouse
    compact(layout, min_rows=10, grace_s=0)
    (part,) = [p for p in _files(layout, "epochs").parts if p.experiment == "exp0"]
    with open(part.path, "r+b") as fh:
        fh.truncate(part.size // 2)
    layout.write_table(
        layout.table_file("epochs", "exp0", "t9"),
        to_table("epochs", [{"epoch": 1}], experiment="exp0", trial_id="t9"),
    )
    report = compact(layout, min_rows=10, grace_s=0)
    (d,) = [d for d in report.dirs if (d.table, d.experiment) == ("epochs", "exp0")]
    assert d.mode == "none" and "truncated" in d.skipped[0][1]
    assert layout.exists(layout.table_file("epochs", "exp0", "t9"))


def test_outside_duckdb_file_sees_the_same_rows(small_warehouse, fake, sums):
    layout = small_warehouse
    write_duckdb_file(layout)

    def outside():
        con = duckdb.connect(layout.duckdb_file, read_only=True)
        try:
            return sums(con)
        finally:
            con.close()

    assert outside() == sums(connect(layout))
    compact(layout, min_rows=10, grace_s=0)  # rebuilds the file
    fake(layout, "exp1", 3, value=7.0, probes=False)  # re-written: shadows compacted rows
    fake(layout, "exp1", 200)  # new, after the file was built: the globs pick it up
    assert outside() == sums(connect(layout))


def test_cli_compact(small_warehouse, capsys):
    assert main(["compact", "--storage", small_warehouse.root, "--experiment", "exp0"]) == 0
    out = capsys.readouterr().out
    assert "trials/experiment=exp0: append" in out and "exp1" not in out
    assert _files(small_warehouse, "trials").per_trial  # exp1 untouched
    with pytest.raises(ValueError, match="table: 'nope'"):
        compact(small_warehouse, table="nope")
    with pytest.raises(ValueError, match="'part-g'"):  # a key that would pass for a part
        small_warehouse.table_file("epochs", "exp0", "part-g000001-abc")


@pytest.mark.slow
def test_compacting_a_real_grid(tiny_warehouse, tmp_path, sums):
    """A grid run by the scheduler: same rows after compaction, and a re-run of the grid
    still finds every trial done (its skip logic reads compacted `trials` rows)."""
    from scheduler.runner import plan
    from scheduler.spec import parse_spec

    root = str(tmp_path / "copy")
    shutil.copytree(tiny_warehouse, root)
    (record,) = (tmp_path / "copy" / "runs" / "experiment=tiny").glob("*.json")
    spec = parse_spec(json.loads(record.read_text())["spec"])
    before = sums(connect(root))
    compact(root, grace_s=0)
    assert sums(connect(root)) == before
    layout = Layout.open(root)
    assert all(not layout.table_files(t).per_trial for t in SCHEMAS)
    p = plan(spec, layout)
    assert len(p.to_run) == 0 and len(p.skipped) == 4
