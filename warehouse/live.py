"""The live area: what running trials and drivers publish while a grid runs (issue 15).

Never part of the committed results: the warehouse views, queries and verdicts read only
`tables/`; the live area is under `<root>/live/`:

    live/epochs/experiment=E/<trial_id>.parquet   the running attempt's epochs rows so far
    live/status/experiment=E/<trial_id>.json      state, epoch, host, pid, heartbeat, latest
    live/runs/experiment=E/<run_id>.json          a driver: pid, host, heartbeat, planned ids

Every file is replaced atomically (`Layout.put_bytes`). A trial's files are deleted when its
`trials` row is written (`warehouse.store.write_trial`: committed, diverged or failed); a
retried attempt rewrites them, its rows continuing from its resume epoch (rows of a dead
attempt at or after the first epoch the new attempt logs are dropped: no duplicates).
Epoch rows are written by a publisher thread at most every `interval_s` seconds, the
status file also as a heartbeat every `heartbeat_s`, so a long epoch is not taken for a
stalled trial; the training loop itself only appends a row. No torch, no Ray.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS, to_table
from warehouse.writers import pid_alive

HEARTBEAT_S = 5.0  # seconds between status writes of a running trial / driver
INTERVAL_S = 2.0  # at most one epochs-file write per this many seconds
STALL_S = 60.0  # a heartbeat older than this: the trial (or driver) is shown as stalled


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _dir(layout: Layout, kind: str, experiment: str) -> str:
    return layout.live_dir(kind, experiment)


def epochs_file(layout: Layout, experiment: str, trial_id: str) -> str:
    return f"{_dir(layout, 'epochs', experiment)}/{trial_id}.parquet"


def status_file(layout: Layout, experiment: str, trial_id: str) -> str:
    return f"{_dir(layout, 'status', experiment)}/{trial_id}.json"


def run_file(layout: Layout, experiment: str, run_id: str) -> str:
    return f"{_dir(layout, 'runs', experiment)}/{run_id}.json"


def clear_trial(layout: Layout, experiment: str, trial_id: str) -> None:
    """Delete a trial's live files (its trials row supersedes them)."""
    for path in (
        epochs_file(layout, experiment, trial_id),
        status_file(layout, experiment, trial_id),
    ):
        with contextlib.suppress(FileNotFoundError, OSError):
            layout.delete(path)


def enabled() -> bool:
    """Live rows are on unless BATCHLAB_LIVE=0 (the benchmark's baseline)."""
    return os.environ.get("BATCHLAB_LIVE", "1") != "0"


class LiveTrial:
    """What one running trial publishes. `epoch(row)` after each epoch; `close()` when the
    attempt ends (before its trials row is written)."""

    def __init__(
        self,
        layout: Layout,
        experiment: str,
        trial_id: str,
        *,
        max_epochs: int,
        attempt: int = 1,
        node_id: str = "",
        pack_id: str | None = None,
        interval_s: float | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.layout, self.experiment, self.trial_id = layout, experiment, trial_id
        if interval_s is None:  # $BATCHLAB_LIVE_INTERVAL_S (0: every epoch) or INTERVAL_S
            interval_s = float(os.environ.get("BATCHLAB_LIVE_INTERVAL_S") or INTERVAL_S)
        self.interval_s, self.heartbeat_s = interval_s, heartbeat_s
        self.key = {"experiment": experiment, "trial_id": trial_id}
        self.status: dict[str, Any] = {
            "trial_id": trial_id,
            "experiment": experiment,
            "state": "running",
            "epoch": 0,
            "max_epochs": max_epochs,
            "attempt": attempt,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "node_id": node_id,
            "pack_id": pack_id,
            "started_at": _now(),
            "heartbeat": _now(),
            "train_loss": None,
            "val_loss": None,
            "best_val_loss": None,
            "examples_per_s": None,
            "mean_epoch_time_s": None,
        }
        self._rows: list[dict[str, Any]] = []
        self._old: list[dict[str, Any]] | None = None
        self._last_write = self._last_status = 0.0
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._write_status()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="batchlab-live")
        self._thread.start()

    def _beat(self) -> None:
        """The publisher thread: the epochs file at most every `interval_s` when new rows
        came in, the status (heartbeat) at least every `heartbeat_s`. Writing here, not in
        the trial's thread, keeps Parquet encoding and file I/O out of the training loop."""
        tick = min(self.heartbeat_s, self.interval_s) if self.interval_s > 0 else self.heartbeat_s
        while not self._stop.wait(tick):
            now = time.monotonic()
            if self._dirty and now - self._last_write >= self.interval_s:
                self.flush()
            elif now - self._last_status >= self.heartbeat_s:
                self._write_status()

    def _write_status(self) -> None:
        self._last_status = time.monotonic()
        with self._lock:
            if self._stop.is_set() and self.status["state"] == "running":
                return
            self.status["heartbeat"] = _now()
            data = json.dumps(self.status, default=str).encode()
        # The live area is a courtesy: never fail a trial on it.
        with contextlib.suppress(OSError):
            self.layout.put_bytes(status_file(self.layout, self.experiment, self.trial_id), data)

    def _previous(self, first_epoch: int) -> list[dict[str, Any]]:
        """Rows an earlier (killed) attempt published before `first_epoch`."""
        if self._old is None:
            self._old = []
            data = self.layout.get_bytes(epochs_file(self.layout, self.experiment, self.trial_id))
            if data:
                try:
                    self._old = pq.read_table(io.BytesIO(data)).to_pylist()
                except Exception:
                    self._old = []
        return [r for r in self._old if r["epoch"] < first_epoch]

    def epoch(self, row: Mapping[str, Any], force: bool = False) -> None:
        """An epoch ended: keep its row; publish when `interval_s` passed (or `force`)."""
        row = {k: v for k, v in row.items() if k in SCHEMAS["epochs"].names}
        with self._lock:
            self._rows = [r for r in self._rows if r["epoch"] < row["epoch"]] + [row]
            s = self.status
            s["epoch"] = row["epoch"]
            s["train_loss"] = row.get("train_loss")
            s["val_loss"] = row.get("val_loss")
            vals = [r["val_loss"] for r in self._rows if r.get("val_loss") is not None]
            finite = [v for v in vals if v == v and abs(v) != float("inf")]
            s["best_val_loss"] = min(finite) if finite else None
            s["examples_per_s"] = row.get("examples_per_s")
            times = [r["epoch_time_s"] for r in self._rows if r.get("epoch_time_s")]
            s["mean_epoch_time_s"] = sum(times) / len(times) if times else None
            self._dirty = True
        if force or self.interval_s <= 0:  # interval 0: publish every epoch, in this thread
            self.flush()

    def flush(self) -> None:
        self._last_write = time.monotonic()
        with self._lock:
            self._dirty = False
            rows = self._previous(self._rows[0]["epoch"]) + self._rows if self._rows else []
        if rows:
            with contextlib.suppress(OSError):
                self.layout.write_table(
                    epochs_file(self.layout, self.experiment, self.trial_id),
                    to_table("epochs", rows, **self.key),
                )
        self._write_status()

    def close(self) -> None:
        """Stop the heartbeat (the caller then writes the trials row, which clears the files)."""
        self._stop.set()
        self._thread.join(timeout=self.heartbeat_s + 1)


# ----------------------------------------------------------------------------- drivers


_ACTIVE: dict[tuple[str, str], LiveRun] = {}  # (root, experiment) -> this process's run


def active_run(layout: Layout, experiment: str) -> LiveRun | None:
    """The LiveRun this process is driving for `experiment` under `layout`, if any."""
    return _ACTIVE.get((layout.root, experiment))


class LiveRun:
    """A driver's run record in the live area, with a heartbeat thread. `done` maps each
    finished trial of the run to its status, so readers need not list the committed rows."""

    def __init__(self, layout: Layout, experiment: str, run_id: str, planned: list[dict[str, Any]]):
        self.layout, self.experiment, self.run_id = layout, experiment, run_id
        self.record: dict[str, Any] = {
            "run_id": run_id,
            "experiment": experiment,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": _now(),
            "heartbeat": _now(),
            "state": "running",
            "planned": planned,
            "done": {},
        }
        self._stop = threading.Event()
        _ACTIVE[(layout.root, experiment)] = self
        self._write()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="batchlab-run")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()

    def _write(self) -> None:
        self.record["heartbeat"] = _now()
        with contextlib.suppress(OSError):
            self.layout.put_bytes(
                run_file(self.layout, self.experiment, self.run_id),
                json.dumps(self.record, default=str).encode(),
            )

    def mark(self, trial_id: str, status: str) -> None:
        """A trial of the run finished (written with the next heartbeat)."""
        self.record["done"][trial_id] = status

    def finish(self, state: str) -> None:
        """The driver ends the run ("finished" | "cancelled"): one last record."""
        _ACTIVE.pop((self.layout.root, self.experiment), None)
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S + 1)
        self.record["state"] = state
        self.record["finished_at"] = _now()
        self._write()


# ----------------------------------------------------------------------------- reading


def _json_files(layout: Layout, kind: str, experiment: str) -> list[dict[str, Any]]:
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(_dir(layout, kind, experiment), allow_not_found=True)
    out = []
    for info in layout.fs.get_file_info(sel):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        if info.base_name.startswith("."):
            continue
        data = layout.get_bytes(info.path)
        if data:
            try:
                out.append(json.loads(data))
            except ValueError:
                continue
    return out


def age_s(ts: str | None) -> float:
    """Seconds since the ISO timestamp `ts` (infinite without one, or an unreadable one)."""
    if not ts:
        return float("inf")
    try:
        return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(ts)).total_seconds()
    except ValueError:
        return float("inf")


def driver_alive(run: Mapping[str, Any], stall_s: float = STALL_S) -> bool:
    """A running driver: same host -> its pid exists; elsewhere -> a recent heartbeat."""
    if run.get("state") != "running":
        return False
    if run.get("host") == socket.gethostname() and run.get("pid"):
        return pid_alive(int(run["pid"])) and age_s(run.get("heartbeat")) < stall_s
    return age_s(run.get("heartbeat")) < stall_s


def trial_statuses(
    layout: Layout, experiment: str, stall_s: float = STALL_S
) -> list[dict[str, Any]]:
    """Every live status record of `experiment`, with `age_s` and state "stalled" when the
    heartbeat is older than `stall_s` (or its process is gone on this host)."""
    out = []
    for s in _json_files(layout, "status", experiment):
        s["age_s"] = age_s(s.get("heartbeat"))
        gone = (
            s.get("host") == socket.gethostname() and s.get("pid") and not pid_alive(int(s["pid"]))
        )
        if s.get("state") == "running" and (s["age_s"] > stall_s or gone):
            s["state"] = "stalled"
        out.append(s)
    return out


def runs(layout: Layout, experiment: str) -> list[dict[str, Any]]:
    return sorted(_json_files(layout, "runs", experiment), key=lambda r: r.get("started_at", ""))


def live_epochs(layout: Layout, experiment: str | None = None) -> pa.Table:
    """The live epochs rows (of one experiment, or all), as one Arrow table."""
    import pyarrow.fs as pafs

    base = layout.live_dir("epochs", experiment or None)
    sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    tables = []
    for info in layout.fs.get_file_info(sel):
        if (
            info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        ):
            data = layout.get_bytes(info.path)
            if data:
                try:
                    tables.append(pq.read_table(io.BytesIO(data)))
                except Exception:
                    continue
    if not tables:
        return SCHEMAS["epochs"].empty_table()
    return pa.concat_tables(tables, promote_options="default")


def live_experiments(layout: Layout) -> list[str]:
    import pyarrow.fs as pafs

    names = set()
    for kind in ("status", "runs"):
        sel = pafs.FileSelector(layout.live_dir(kind), allow_not_found=True)
        for i in layout.fs.get_file_info(sel):
            if i.type == pafs.FileType.Directory and i.base_name.startswith("experiment="):
                names.add(i.base_name.split("=", 1)[1])
    return sorted(names)
