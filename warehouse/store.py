"""Writing results: one trial's rows, atomically and idempotently.

A trial's files are named by its trial id, so a retried or re-submitted trial replaces its
own files instead of adding rows. The `trials` row is written last and is the commit
marker: the views show a trial's epochs/steps/layers/probes only once its `trials` row
exists, so a reader never counts a half-written trial.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from warehouse.layout import Layout
from warehouse.schemas import SCHEMA_VERSION, TRIAL_TABLES, to_table
from warehouse.summaries import epoch_summaries, step_summaries


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def write_trial(
    layout: Layout,
    experiment: str,
    trial_row: Mapping[str, Any],
    tables: Mapping[str, Iterable[Mapping[str, Any]]],
) -> None:
    """Write one trial: its per-trial tables first, then the `trials` row (the commit).

    `trial_row` must hold trial_id, config_hash and status; `tables` maps table names in
    TRIAL_TABLES to row dicts (without the key columns, which are filled in here).
    The trials row's summary columns (`step_*`, `epochs_n`, `at_best_*`, `mean_*`) are
    derived from the `steps` and `epochs` rows unless given.
    """
    trial_id = trial_row["trial_id"]
    key = {
        "experiment": experiment,
        "trial_id": trial_id,
        "config_hash": trial_row.get("config_hash"),
        "code_version": trial_row.get("code_version"),
    }
    tables = dict(tables)
    tables["steps"] = list(tables.get("steps", ()))
    for name in TRIAL_TABLES:
        rows = list(tables.get(name, ()))
        path = layout.table_file(name, experiment, trial_id)
        if rows:
            layout.write_table(path, to_table(name, rows, **key))
        elif layout.exists(path) or layout.exists(layout.compacted_marker(name, experiment)):
            # A retry that produced fewer tables must not leave a previous attempt's rows,
            # neither in its old file nor in a compacted part: an empty file (a tombstone)
            # takes precedence over both, and the next compaction drops it.
            layout.write_table(path, to_table(name, [], **key))
    # The steps and epochs summaries (warehouse/summaries.py) unless the caller gave them.
    summary = {} if "step_update_norm_n" in trial_row else step_summaries(tables["steps"])
    if "epochs_n" not in trial_row:
        tables["epochs"] = list(tables.get("epochs", ()))
        summary |= epoch_summaries(tables["epochs"], trial_row.get("best_epoch"))
    row = {**summary, **trial_row, "experiment": experiment, "schema_version": SCHEMA_VERSION}
    layout.write_table(layout.table_file("trials", experiment, trial_id), to_table("trials", [row]))
    # The committed row supersedes what the running attempt published (warehouse/live.py).
    from warehouse.live import clear_trial

    clear_trial(layout, experiment, trial_id)


def write_rows(
    layout: Layout, table: str, experiment: str, key: str, rows: list[Mapping[str, Any]]
) -> None:
    """Write a whole file of `table` rows (analyses, landscapes) under a stable key."""
    layout.write_table(layout.table_file(table, experiment, key), to_table(table, rows))


def read_trial_rows(
    layout: Layout, experiment: str, extra_columns: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The committed `trials` rows of one experiment, straight from the files (no DuckDB),
    for the scheduler's skip logic: trial_id, status, config_hash, and `extra_columns` (NULL
    where a file predates them). Unreadable files are ignored here (and quarantined by the
    warehouse checks)."""
    files = layout.table_files("trials", experiment)
    shadowed = {k for _, k in files.shadowed}
    out = []
    for f in [*files.per_trial, *files.parts]:
        data = layout.get_bytes(f.path)
        if data is None:
            continue
        try:
            pf = pq.ParquetFile(io.BytesIO(data))
            have = set(pf.schema_arrow.names)
            cols = ["trial_id", "status", "config_hash", *(c for c in extra_columns if c in have)]
            t = pf.read(columns=cols)
        except Exception:
            continue
        rows = t.to_pylist()
        for r in rows:
            for c in extra_columns:
                r.setdefault(c, None)
        # A per-trial file takes precedence over compacted rows of the same trial.
        out.extend(r for r in rows if f.key or r["trial_id"] not in shadowed)
    return out


def write_run_record(
    layout: Layout, experiment: str, run_id: str, record: Mapping[str, Any]
) -> None:
    layout.put_bytes(
        layout.run_file(experiment, run_id), json.dumps(record, indent=2, default=str).encode()
    )


class CheckpointFiles:
    """One trial's checkpoint files under the storage root, as bytes: where each lives
    (`Layout.checkpoint_file`), read, written atomically, deleted. What the bytes hold is
    the workers' business (`workers.checkpoint_io.TrialCheckpoints` adds torch.save/load):
    the warehouse never imports torch."""

    def __init__(self, layout: Layout, experiment: str, trial_id: str) -> None:
        self.layout, self.experiment, self.trial_id = layout, experiment, trial_id

    def path(self, name: str) -> str:
        return self.layout.checkpoint_file(self.experiment, self.trial_id, name)

    def marker_path(self, name: str) -> str:
        """A small JSON file beside the states (`<name>.json`: attempt counts, time-outs)."""
        return self.layout.checkpoint_file(self.experiment, self.trial_id, name, suffix=".json")

    def get_bytes(self, name: str) -> bytes | None:
        """The checkpoint's bytes, None when it does not exist."""
        return self.layout.get_bytes(self.path(name))

    def put_bytes(self, name: str, data: bytes) -> None:
        """Replace the checkpoint atomically (readers see the old file or the new one)."""
        self.layout.put_bytes(self.path(name), data)

    def delete(self, name: str) -> None:
        p = self.path(name)
        if self.layout.exists(p):
            self.layout.fs.delete_file(p)


@dataclass(frozen=True)
class CheckpointInfo:
    """One file under a trial's checkpoint directory."""

    file: str  # relative to the trial's checkpoint directory
    size: int  # bytes
    mtime_ns: int | None
    path: str


def list_checkpoints(layout: Layout, experiment: str, trial_id: str) -> list[CheckpointInfo]:
    """Every file of the trial's checkpoints (init / final / resume states, markers), by path."""
    import pyarrow.fs as pafs

    base = layout.checkpoint_dir(experiment, trial_id)
    sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = [i for i in layout.fs.get_file_info(sel) if i.type == pafs.FileType.File]
    return [
        CheckpointInfo(i.path[len(base) :].lstrip("/"), i.size or 0, i.mtime_ns, i.path)
        for i in sorted(infos, key=lambda i: i.path)
    ]
