"""Trials whose rows were lost (a damaged file quarantined, a table file missing): the record
that says so, the atomic invalidation of their `trials` row, and the SQL that finds them.
See warehouse/check.py, whose `repair` and `quarantine_corrupt` use it, and
`scheduler.runner.plan`, which re-runs them.

Invalidating a trial: a record `<root>/quarantine/invalidated/experiment=<e>/<trial_id>.json`
(why, which files) is written, then the trial's `trials` row is replaced by an empty
`trials` file (a tombstone: it shadows the trial's row in a compacted part too) in one
atomic rename. The trial is then not committed; until a run commits it again it is
*incomplete* (`incomplete_trials`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import duckdb

from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS, TRIAL_TABLES, to_table
from warehouse.store import read_trial_rows

# Statuses of a committed trial the scheduler will not run again (scheduler.runner).
DONE_STATUSES = ("completed", "diverged")


def _layout(root: str | Layout | None) -> Layout:
    return root if isinstance(root, Layout) else Layout.open(root)


@dataclass(frozen=True)
class Invalidated:
    """A trial whose rows were lost: it waits for a re-run (see the module docstring)."""

    experiment: str
    trial_id: str
    reason: str


def _record_path(layout: Layout, experiment: str, trial_id: str) -> str:
    return layout.invalidation_file(experiment, trial_id)


def _records(layout: Layout) -> list[Invalidated]:
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(layout.invalidation_file(), recursive=True, allow_not_found=True)
    out = []
    for info in layout.fs.get_file_info(sel):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        if info.base_name.startswith("."):
            continue
        try:
            rec = json.loads(layout.get_bytes(info.path) or b"{}")
            out.append(Invalidated(rec["experiment"], rec["trial_id"], rec["reason"]))
        except (ValueError, KeyError, TypeError):
            continue  # a damaged record: the trial is re-run or committed either way
    return out


def committed_statuses(layout: Layout, experiment: str) -> dict[str, str]:
    """trial_id -> status of the experiment's committed `trials` rows (straight from files)."""
    return {r["trial_id"]: r["status"] for r in read_trial_rows(layout, experiment)}


def incomplete_trials(root: str | Layout | None = None) -> list[Invalidated]:
    """Invalidated trials that no run has committed again yet (sorted)."""
    layout = _layout(root)
    recs = _records(layout)
    committed = {e: committed_statuses(layout, e) for e in {r.experiment for r in recs}}
    return sorted(
        (r for r in recs if r.trial_id not in committed[r.experiment]),
        key=lambda r: (r.experiment, r.trial_id),
    )


def invalidate_trials(
    root: str | Layout | None, trials: dict[tuple[str, str], str], files: dict | None = None
) -> list[Invalidated]:
    """Mark each (experiment, trial_id) -> reason as needing a re-run: write its record, then
    replace its `trials` row by a tombstone (one atomic rename; see the module docstring).
    Idempotent. Returns what it invalidated."""
    layout = _layout(root)
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    out = []
    committed: dict[str, dict[str, str]] = {}
    for (exp, tid), reason in sorted(trials.items()):
        if exp not in committed:
            committed[exp] = committed_statuses(layout, exp)
        rec = {
            "experiment": exp,
            "trial_id": tid,
            "reason": reason,
            "invalidated_at": now,
            "previous_status": committed[exp].get(tid),
            "files": (files or {}).get((exp, tid), []),
        }
        layout.put_bytes(_record_path(layout, exp, tid), json.dumps(rec, indent=2).encode())
        if tid in committed[exp]:
            layout.write_table(layout.table_file("trials", exp, tid), to_table("trials", []))
        out.append(Invalidated(exp, tid, reason))
    return out


def orphan_rows(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    """(experiment, trial_id) of per-trial rows whose trial has no committed `trials` row."""
    out: set[tuple[str, str]] = set()
    for t in TRIAL_TABLES:
        out |= set(
            con.execute(
                f"SELECT DISTINCT experiment, trial_id FROM {t}_raw "
                "ANTI JOIN trials_raw USING (experiment, trial_id)"
            ).fetchall()
        )
    return out


def _expected_counts() -> dict[str, str]:
    """Per table, the SQL expression over a trials row giving how many rows of that table
    the trial wrote (from its summary columns; NULL when the row does not say)."""
    names = SCHEMAS["trials"].names
    out = {}
    if "epochs_n" in names:
        out["epochs"] = "coalesce(t.epochs_n, t.epochs_run)"
    else:
        out["epochs"] = "t.epochs_run"
    step_n = [
        n for n in names if n.startswith("step_") and n.endswith("_n") and not n.endswith("_hist_n")
    ]
    if step_n:
        out["steps"] = f"greatest({', '.join(f't.{n}' for n in step_n)})"
    return out


def missing_epochs(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """Committed (done) trials with fewer epochs (steps) rows than their trials row says
    they wrote: a table file deleted or lost. Returns (experiment, trial_id, what)."""
    out = []
    for table, expected in _expected_counts().items():
        for exp, tid, want, have in con.execute(
            f"""
            SELECT t.experiment, t.trial_id, {expected} AS want, count(r.trial_id) AS have
            FROM trials_raw t LEFT JOIN {table}_raw r
              ON r.experiment = t.experiment AND r.trial_id = t.trial_id
            WHERE t.status IN {DONE_STATUSES} AND {expected} > 0
            GROUP BY ALL HAVING count(r.trial_id) < want ORDER BY ALL
            """
        ).fetchall():
            out.append((exp, tid, f"{have} of its {want} {table} rows are stored"))
    return out
