"""Corrupt files are found (path, reason), skipped by readers, moved to quarantine; the
integrity check finds orphan rows, duplicates, unknown schema versions and stale parts."""

from __future__ import annotations

import shutil
import warnings

import pyarrow.parquet as pq
import pytest

from batchlab.cli import main
from warehouse.check import check_warehouse, find_corrupt_files, quarantine_corrupt
from warehouse.compact import compact
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.schemas import to_table


def _break_files(layout: Layout, fake) -> dict[str, str]:
    """Truncate one epochs file, one trials file, and add a garbage and an empty file."""
    t_epochs = fake(layout, "exp0", 20)  # committed, epochs file truncated
    t_trials = fake(layout, "exp0", 21)  # trials file truncated: not committed any more
    paths = {
        "truncated_epochs": layout.table_file("epochs", "exp0", t_epochs),
        "truncated_trials": layout.table_file("trials", "exp0", t_trials),
        "garbage": layout.table_file("steps", "exp1", "garbage"),
        "empty": layout.table_file("probes", "exp1", "empty"),
    }
    for key in ("truncated_epochs", "truncated_trials"):
        with open(paths[key], "r+b") as fh:
            fh.truncate(fh.seek(0, 2) * 2 // 3)
    layout.put_bytes(paths["garbage"], b"this is not a parquet file at all " * 10)
    layout.put_bytes(paths["empty"], b"")
    return paths


def test_corrupt_files_are_reported_and_skipped(small_warehouse, fake, sums):
    layout = small_warehouse
    good = sums(connect(layout))
    paths = _break_files(layout, fake)

    found = {c.path: c.reason for c in find_corrupt_files(layout)}
    assert set(found) == set(paths.values())
    assert "truncated" in found[paths["truncated_epochs"]]
    assert "magic" in found[paths["garbage"]] and "too small" in found[paths["empty"]]

    with pytest.warns(RuntimeWarning, match="4 corrupt Parquet file"):
        con = connect(layout)
    assert dict(con.execute("SELECT path, reason FROM corrupt_files").fetchall()) == found
    # Every query answers from the rest: the truncated-epochs trial is committed but has no
    # epochs; the truncated-trials trial is not committed, so its rows are hidden.
    assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == good["trials"][0] + 1
    assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == good["epochs"][0]
    assert con.execute("SELECT count(*) FROM steps").fetchone()[0] == good["steps"][0] + 8


def test_quarantine_moves_corrupt_files_aside(small_warehouse, fake):
    layout = small_warehouse
    paths = _break_files(layout, fake)
    moved = quarantine_corrupt(layout)
    assert {m.path for m in moved} == set(paths.values())
    for m in moved:
        rel = m.path[len(layout.base) + 1 :]
        assert m.moved_to == f"{layout.quarantine_dir}/{rel}"
        assert layout.exists(m.moved_to) and not layout.exists(m.path)
        reason = layout.get_bytes(m.moved_to + ".reason.txt").decode()
        assert m.path in reason and m.reason in reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no corrupt file left: no warning
        con = connect(layout)
    assert con.execute("SELECT count(*) FROM corrupt_files").fetchone()[0] == 0
    # Both trials that lost rows (truncated epochs; truncated trials row) are invalidated: not
    # committed until a re-run, reported as incomplete (issue 19; tests/reliability/test_repair.py).
    (p,) = check_warehouse(layout)
    assert p.kind == "incomplete_trials" and p.detail.startswith("2 trials have no results")


def test_deep_check_reads_every_page(tmp_path, fake):
    layout = Layout.open(tmp_path / "runs")
    tid = fake(layout, "e", 1, steps=20_000)
    path = layout.table_file("steps", "e", tid)
    size = pq.ParquetFile(path).metadata.row_group(0).column(4).total_compressed_size
    start = pq.ParquetFile(path).metadata.row_group(0).column(4).data_page_offset
    with open(path, "r+b") as fh:  # garbage inside a data page; magic and footer intact
        fh.seek(start + 16)
        fh.write(b"\xff" * max(64, size // 2))
    assert find_corrupt_files(layout) == []
    (c,) = find_corrupt_files(layout, deep=True)
    assert c.path == path and "unreadable" in c.reason


def test_check_warehouse_finds_integrity_problems(small_warehouse, fake):
    layout = small_warehouse
    assert check_warehouse(layout) == []
    assert check_warehouse(layout, deep=True) == []

    # Orphans: a trial's rows without its trials row (a crashed write).
    layout.write_table(
        layout.table_file("epochs", "exp0", "orphan"),
        to_table("epochs", [{"epoch": 1}, {"epoch": 2}], experiment="exp0", trial_id="orphan"),
    )
    # Duplicates: a trial's epochs copied under another name.
    src = layout.table_files("epochs", "exp1").per_trial[0]
    shutil.copy(src.path, layout.table_file("epochs", "exp1", "copy"))
    # A trials row from a newer batchlab.
    layout.write_table(
        layout.table_file("trials", "exp1", "future"),
        to_table(
            "trials",
            [
                {
                    "experiment": "exp1",
                    "trial_id": "future",
                    "status": "completed",
                    "schema_version": 99,
                }
            ],
        ),
    )
    problems = check_warehouse(layout)
    by_kind = {p.kind: p for p in problems}
    assert set(by_kind) == {"orphan_rows", "duplicate_rows", "schema_version"}
    assert by_kind["orphan_rows"].where == "epochs/experiment=exp0"
    assert "2 rows of 1 trials" in by_kind["orphan_rows"].detail
    assert by_kind["duplicate_rows"].where == "epochs/experiment=exp1"
    assert by_kind["duplicate_rows"].detail.startswith("3 extra rows")
    assert "schema_version 99" in by_kind["schema_version"].detail

    deep = {p.kind for p in check_warehouse(layout, deep=True)}
    assert "key_mismatch" in deep  # copy.parquet holds another trial's rows


def test_stale_part_is_reported(small_warehouse):
    layout = small_warehouse
    compact(layout, min_rows=10, grace_s=0)
    (part,) = [p for p in layout.table_files("trials").parts if p.experiment == "exp0"]
    shutil.copy(part.path, layout.part_file("trials", "exp0", 5))
    (p,) = check_warehouse(layout)
    assert p.kind == "stale_part" and p.where == part.path


def test_cli_check(small_warehouse, fake, capsys):
    layout = small_warehouse
    assert main(["check", "--storage", layout.root]) == 0
    assert "no problems found" in capsys.readouterr().out
    paths = _break_files(layout, fake)
    assert main(["check", "--storage", layout.root]) == 1
    out = capsys.readouterr().out
    assert f"corrupt_file: {paths['garbage']}" in out
    main(["check", "--storage", layout.root, "--quarantine"])
    out = capsys.readouterr().out
    assert out.count("quarantined ") == 4 and "corrupt_file" not in out
