"""Run a grid: plan (what is done, what is left), then execute the rest
(scheduler/execute.py) on Ray (scheduler/ray_backend.py, the only module that imports it),
record lost trials, run the analyses, write the run record. See docs/architecture.md.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from scheduler.commit import DONE_STATUSES
from scheduler.execute import device_for, execute
from scheduler.faults import suspended as fault_free
from scheduler.ray_setup import embedded_node, init_ray
from scheduler.spec import GridSpec
from scheduler.storage_errors import check_writable, engine_error
from scheduler.versions import code_version
from warehouse.db import write_duckdb_file
from warehouse.layout import Layout
from warehouse.store import read_trial_rows, write_run_record
from workers.config import TrialConfig

__all__ = [
    "DONE_STATUSES",
    "Plan",
    "RunReport",
    "check_feasible",
    "code_version",
    "init_ray",
    "plan",
    "ray_attempt",
    "run_grid",
]


@dataclass
class Plan:
    spec: GridSpec
    to_run: list[TrialConfig]
    skipped: list[TrialConfig]
    previous_failed: int = 0
    invalidated: int = 0  # trials whose rows were lost (warehouse.check): re-run now

    def describe(self) -> str:
        notes = [f"{self.previous_failed} of them failed before"] if self.previous_failed else []
        if self.invalidated:
            notes.append(
                f"{self.invalidated} of them lost rows to damaged or missing files "
                "(`batchlab check`) and run again"
            )
        return (
            f"experiment {self.spec.experiment!r}: {len(self.to_run) + len(self.skipped)} trials in the grid, "
            f"{len(self.skipped)} already in storage (skipped), {len(self.to_run)} to run"
            + (f" ({'; '.join(notes)})" if notes else "")
        )


@dataclass
class RunReport:
    experiment: str
    root: str
    run_id: str
    planned: int
    skipped: int
    counts: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False
    analyses: dict[str, int] = field(default_factory=dict)


def plan(spec: GridSpec, layout: Layout) -> Plan:
    """Split the grid's trials into those already stored and those to run. A trial that
    `batchlab check` invalidated (its rows were lost) has no committed row: it runs again."""
    from warehouse.check import incomplete_trials

    stored = {r["trial_id"]: r["status"] for r in read_trial_rows(layout, spec.experiment)}
    lost = {i.trial_id for i in incomplete_trials(layout) if i.experiment == spec.experiment}
    to_run, skipped, failed, invalidated = [], [], 0, 0
    for t in spec.trials():
        status = stored.get(t.trial_id)
        if status in DONE_STATUSES:
            skipped.append(t)
        else:
            failed += status == "failed"
            invalidated += t.trial_id in lost
            to_run.append(t)
    return Plan(spec, to_run, skipped, failed, invalidated)


def run_grid(
    spec: GridSpec,
    root: str | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    out=None,
    storage_shared: bool | None = None,
) -> RunReport:
    """Run every trial of `spec` not already stored under `root`; returns a report.

    On a multi-node cluster a local-path `root` must be declared shared (`storage_shared`,
    None reads $BATCHLAB_STORAGE_SHARED); see `scheduler.cluster.check_cluster`."""

    out = sys.stdout if out is None else out  # read at call time (tests swap sys.stdout)
    layout = Layout.open(root)
    check_writable(layout)  # before Ray starts: a read-only or full root fails here
    cleaned = layout.clean_temporaries()
    p = plan(spec, layout)
    print(p.describe(), file=out)
    if cleaned:
        print(f"removed {cleaned} temporary files left by crashed writers", file=out)
    run_id = (
        dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    )
    report = RunReport(spec.experiment, layout.root, run_id, len(p.to_run), len(p.skipped))
    t0 = time.perf_counter()
    # The driver's record in the live area (warehouse/live.py): `batchlab status` reads it.
    from warehouse import live

    live_run = None
    if p.to_run and live.enabled():
        planned = [{"trial_id": t.trial_id, "max_epochs": t.max_epochs} for t in p.to_run]
        live_run = live.LiveRun(layout, spec.experiment, run_id, planned)
    try:
        if p.to_run:
            _start_and_execute(
                spec, p, layout, report, address, num_cpus, storage_shared, progress, out
            )
        # Listed before any post-processing: a failing analysis, compaction or DuckDB
        # rebuild never hides them.
        record_lost_trials(spec, layout, report, out)
        if spec.analyses and not report.cancelled:
            # A barrier: every trial of this run has ended (committed or failed) before any
            # analysis starts, so an analysis always reads its inputs' final checkpoints.
            from scheduler.analyses import run_analyses

            init_ray(address, num_cpus)
            report.analyses = run_analyses(
                spec, layout, code_version=code_version(), device=device_for(spec), out=out
            )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP outside the trial loop
        report.cancelled = True
        print("\ncancelled. Run the same command again to resume.", file=out)
    report.wall_time_s = time.perf_counter() - t0
    if live_run is not None:
        live_run.finish("cancelled" if report.cancelled else "finished")
    try:
        write_duckdb_file(layout)
    except Exception as exc:  # DuckDB reports a full disk in words: one line, exit 5
        if (err := engine_error(exc, layout.duckdb_file)) is not None:
            raise err from exc
        raise
    write_run_record(
        layout,
        spec.experiment,
        run_id,
        {
            "run_id": run_id,
            "spec": spec.model_dump(mode="json"),
            "planned": report.planned,
            "skipped": report.skipped,
            "counts": report.counts,
            "wall_time_s": report.wall_time_s,
            "cancelled": report.cancelled,
            "code_version": code_version(),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        },
    )
    return report


def check_feasible(
    spec: GridSpec, to_run: list[TrialConfig], address: str | None, num_cpus: int | None
) -> dict[str, Any]:
    """Refuse (ValueError / scheduler.cluster's error) resources no node can give, before
    Ray starts; `--dry-run` calls it too. On a cluster (`address` / $RAY_ADDRESS) the nodes
    are checked once connected (`_start_and_execute`). Returns what a trial needs."""
    from scheduler.cluster import check_resources

    if num_cpus is not None and num_cpus < 1:
        raise ValueError(
            f"--num-cpus: {num_cpus} is not allowed: the embedded Ray instance needs at "
            "least 1 CPU to run a trial"
        )
    r = spec.resources
    need = {
        "cpus_per_trial": r.cpus_per_trial,
        "gpus_per_trial": r.gpus_per_trial,
        "data_parallel_workers": max((t.data_parallel_workers for t in to_run), default=1),
    }
    if to_run and not (address or os.environ.get("RAY_ADDRESS")):
        check_resources([embedded_node(num_cpus, r.gpus_per_trial)], **need)
    return need


def _start_and_execute(
    spec: GridSpec,
    p: Plan,
    layout: Layout,
    report: RunReport,
    address: str | None,
    num_cpus: int | None,
    storage_shared: bool | None,
    progress: bool,
    out,
) -> None:
    from scheduler.cluster import alive_nodes, check_cluster, check_resources

    need = check_feasible(spec, p.to_run, address, num_cpus)
    where = init_ray(address, num_cpus)
    print(f"scheduling on the {where}", file=out)
    existing = bool(address or os.environ.get("RAY_ADDRESS"))
    check_resources(alive_nodes(), **need, existing_cluster=existing)
    layout = check_cluster(spec, layout, address=address, storage_shared=storage_shared, out=out)
    execute(spec, p.to_run, layout, report, progress, out, code_version=code_version())


def record_lost_trials(spec: GridSpec, layout: Layout, report: RunReport, out) -> None:
    """Give a `failed` row to every failed trial of this run that has none (its worker died
    each time Ray ran it: os._exit, a crash), then list every failed trial (id: cause)."""
    from scheduler.guards import worker_died_error
    from scheduler.tasks import record_lost_trial

    failed = [r for r in report.results if r["status"] == "failed"]
    died = [r for r in failed if r.get("worker_died", _crash_text(r.get("error")))]
    by_id = {t.trial_id: t for t in spec.trials()} if died else {}
    version = code_version() if died else ""
    for r in died:
        times = r.get("attempt") or spec.resources.max_retries + 1
        r["error"] = worker_died_error(times, r.get("error") or "")
        if (t := by_id.get(r["trial_id"])) is not None:
            with fault_free():
                record_lost_trial(
                    t,
                    layout,
                    spec.experiment,
                    error=r["error"],
                    attempt=times,
                    code_version=version,
                )
    if failed:
        print(f"{len(failed)} trial(s) failed:", file=out)
        for r in failed:
            print(f"  failed {r['trial_id']}: {r.get('error')}", file=out)


def _crash_text(error: str | None) -> bool:
    """A pack's failure record (scheduler/packing.py) keeps only Ray's error text."""
    return (error or "").startswith(("WorkerCrashedError", "NodeDiedError"))


def ray_attempt() -> int:
    """scheduler/ray_backend.py `ray_attempt` (this Ray task execution's number)."""
    import scheduler.ray_backend as backend

    return backend.ray_attempt()


def __getattr__(name: str) -> Any:
    # `_ray_trial`: the old name of scheduler/ray_backend.py `ray_task`, still importable
    # (tests/reliability/test_attempts.py) without importing Ray with this module.
    if name == "_ray_trial":
        import scheduler.ray_backend as backend

        return backend.ray_task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
