"""Concurrent writers, readers and compaction: a reader never sees a partial trial (rows of a
trial without its commit, or some of its rows), never a duplicate, and never errors while
trials are being written."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from warehouse.check import check_warehouse
from warehouse.compact import compact
from warehouse.db import connect
from warehouse.layout import Layout

EPOCHS, STEPS = 4, 12


def _writer(layout: Layout, fake, n: int, errors: list, done: threading.Event) -> None:
    try:
        for i in range(n):
            fake(layout, "live", i, epochs=EPOCHS, steps=STEPS)
    except Exception as exc:  # surfaced by the test
        errors.append(exc)
    finally:
        done.set()


def _read(root: str) -> tuple[int, int, int, int]:
    con = connect(root)
    try:
        return con.execute(
            """
            SELECT (SELECT count(*) FROM trials),
                   (SELECT count(*) FROM epochs),
                   (SELECT count(*) FROM steps),
                   (SELECT count(*) FROM (SELECT DISTINCT trial_id, epoch FROM epochs))
            """
        ).fetchone()
    finally:
        con.close()


def _check(snapshot: tuple[int, int, int, int]) -> None:
    trials, epochs, steps, distinct = snapshot
    assert epochs == EPOCHS * trials, f"partial or extra epochs rows: {snapshot}"
    assert steps == STEPS * trials, f"partial or extra steps rows: {snapshot}"
    assert distinct == epochs, f"duplicate (trial_id, epoch) rows: {snapshot}"


def test_reader_never_sees_a_partial_trial(tmp_path, fake):
    layout = Layout.open(tmp_path / "runs")
    n, errors, done = 60, [], threading.Event()
    writer = threading.Thread(target=_writer, args=(layout, fake, n, errors, done))
    writer.start()
    seen = set()
    while not done.is_set():
        snap = _read(layout.root)  # any exception here fails the test
        _check(snap)
        seen.add(snap[0])
    writer.join()
    assert not errors, errors
    final = _read(layout.root)
    _check(final)
    assert final[0] == n
    assert len(seen) >= 3, f"the reader should have seen the warehouse grow: {sorted(seen)}"


@pytest.mark.slow
def test_compaction_while_a_grid_writes(tmp_path, fake):
    """Writer, compactor and reader at once. A reader whose snapshot lost a file to the
    compactor's deletions gets an IO error (documented: reconnect); every answer it does
    get is exact."""
    layout = Layout.open(tmp_path / "runs")
    n, errors, done = 60, [], threading.Event()
    compactions, compact_errors = [], []

    def compactor() -> None:
        while not done.is_set():
            try:
                compactions.append(compact(layout, min_rows=50, grace_s=0.2))
            except Exception as exc:
                compact_errors.append(exc)
                return
            time.sleep(0.05)

    writer = threading.Thread(target=_writer, args=(layout, fake, n, errors, done))
    comp = threading.Thread(target=compactor)
    writer.start()
    comp.start()
    answers = retried = 0
    while not done.is_set() or comp.is_alive():
        try:
            snap = _read(layout.root)
        except duckdb.IOException:
            retried += 1
            continue
        _check(snap)
        answers += 1
    writer.join()
    comp.join()
    assert not errors and not compact_errors, (errors, compact_errors)
    assert any(d.mode != "none" for r in compactions for d in r.dirs)
    compact(layout, min_rows=50, grace_s=0)
    final = _read(layout.root)
    _check(final)
    assert final[0] == n and answers > 3
    assert retried <= answers, f"{retried} reads failed vs {answers} answered"
    assert check_warehouse(layout) == []
