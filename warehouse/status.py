"""What `batchlab status` and the app's Running view show: every trial of an experiment's
latest run with its state, from the committed `trials` rows and the live area
(warehouse/live.py), without Ray and without the driver (which may be dead).

States: completed | diverged | failed (committed), running | stalled (a live status record;
stalled = heartbeat older than the limit, or its process gone on this host), queued (in the
latest run's plan, not started, driver alive), not started (the same with the driver gone).
"""

from __future__ import annotations

import math
from typing import Any

from warehouse import live
from warehouse.layout import Layout
from warehouse.store import read_trial_rows

COLUMNS = ("trial", "state", "epoch", "train_loss", "val_loss", "best_val", "ex/s", "eta", "host")


def experiment_status(
    layout: Layout, experiment: str, stall_s: float = live.STALL_S, read_committed: bool = True
) -> dict[str, Any]:
    """{"experiment", "run" (latest run record or None), "driver" ("alive" | "finished" |
    "cancelled" | "not alive" | "none"), "rows" (one dict per trial), "counts"}.
    `read_committed=False` reads only the live area (the run record's `done` states stand
    in for the committed rows: the app's refresh), and shows the latest run's trials only."""
    runs = live.runs(layout, experiment)
    run = runs[-1] if runs else None
    if run is None:
        driver = "none"
    elif run.get("state") in ("finished", "cancelled"):
        driver = run["state"]
    else:
        driver = "alive" if live.driver_alive(run, stall_s) else "not alive"
    committed = (
        {}
        if not read_committed
        else {
            r["trial_id"]: r
            for r in read_trial_rows(
                layout,
                experiment,
                (
                    "epochs_run",
                    "max_epochs",
                    "best_val_loss",
                    "final_val_loss",
                    "attempt",
                    "final_train_loss",
                    "host",
                    "stop_reason",
                ),
            )
        }
    )
    statuses = {s["trial_id"]: s for s in live.trial_statuses(layout, experiment, stall_s)}
    planned = [p["trial_id"] for p in (run or {}).get("planned", [])]
    max_epochs = {p["trial_id"]: p.get("max_epochs") for p in (run or {}).get("planned", [])}
    if not read_committed:
        for tid, status in (run or {}).get("done", {}).items():
            committed[tid] = {"trial_id": tid, "status": status}
    ids = list(dict.fromkeys([*planned, *statuses, *committed]))
    rows = []
    for tid in ids:
        c, s = committed.get(tid), statuses.get(tid)
        if c is not None and (s is None or s.get("attempt", 0) <= (c.get("attempt") or 99)):
            rows.append(
                {
                    "trial": tid,
                    "state": c["status"],
                    "epoch": c.get("epochs_run"),
                    "max_epochs": c.get("max_epochs") or max_epochs.get(tid),
                    "train_loss": c.get("final_train_loss"),
                    "val_loss": c.get("final_val_loss"),
                    "best_val": c.get("best_val_loss"),
                    "ex/s": None,
                    "eta": 0.0,
                    "host": c.get("host"),
                }
            )
            continue
        if s is not None:
            mx = s.get("max_epochs") or max_epochs.get(tid)
            per = s.get("mean_epoch_time_s")
            eta = per * max(0, mx - s["epoch"]) if per and mx and s["state"] == "running" else None
            rows.append(
                {
                    "trial": tid,
                    "state": s["state"],
                    "epoch": s["epoch"],
                    "max_epochs": mx,
                    "train_loss": s.get("train_loss"),
                    "val_loss": s.get("val_loss"),
                    "best_val": s.get("best_val_loss"),
                    "ex/s": s.get("examples_per_s"),
                    "eta": eta,
                    "host": s.get("host"),
                    "age_s": s.get("age_s"),
                    "attempt": s.get("attempt"),
                    "pack_id": s.get("pack_id"),
                }
            )
            continue
        rows.append(
            {
                "trial": tid,
                "state": "queued" if driver == "alive" else "not started",
                "epoch": 0,
                "max_epochs": max_epochs.get(tid),
                "train_loss": None,
                "val_loss": None,
                "best_val": None,
                "ex/s": None,
                "eta": None,
                "host": None,
            }
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"experiment": experiment, "run": run, "driver": driver, "rows": rows, "counts": counts}


def _num(v: Any, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _eta(s: float | None) -> str:
    if s is None:
        return "-"
    s = round(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_status(st: dict[str, Any]) -> str:
    """The status as a fixed-width text table with a header line about the driver."""
    run = st["run"]
    if run is None:
        head = f"experiment {st['experiment']!r}: no run recorded in the live area"
    else:
        head = f"experiment {st['experiment']!r}, run {run['run_id']} on {run.get('host')}: driver "
        if st["driver"] == "alive":
            head += f"alive (pid {run.get('pid')})"
        elif st["driver"] == "not alive":
            head += (
                f"NOT ALIVE (pid {run.get('pid')}, last heartbeat "
                f"{live.age_s(run.get('heartbeat')):.0f} s ago): running trials will not "
                "be retried; run the same command again to resume"
            )
        else:
            head += st["driver"]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(st["counts"].items()))
    lines = [head, counts or "no trials"]
    table = [COLUMNS]
    for r in st["rows"]:
        ep = f"{r['epoch'] if r['epoch'] is not None else '-'}/{r.get('max_epochs') or '-'}"
        table.append(
            (
                r["trial"],
                r["state"],
                ep,
                _num(r["train_loss"]),
                _num(r["val_loss"]),
                _num(r["best_val"]),
                _num(r["ex/s"], ".0f"),
                _eta(r["eta"]),
                r["host"] or "-",
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def active_experiments(layout: Layout) -> list[str]:
    """Experiments with a run or trial in the live area (the default of `batchlab status`)."""
    return live.live_experiments(layout)
