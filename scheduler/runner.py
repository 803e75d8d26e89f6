"""Run a grid: plan (what is done, what is left), then execute the rest on Ray.

Only `scheduler/` imports Ray (here, and lazily in packing, data_parallel, analyses, cluster, submit). Each trial is a
Ray task asking for the spec's `cpus_per_trial` / `gpus_per_trial`; Ray retries a task whose
worker process died (`max_retries`), and the trial resumes from its last epoch checkpoint.
A Python exception inside a trial is recorded as a `failed` trial by the worker itself, so
the grid goes on. See docs/architecture.md.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.faults import suspended as fault_free
from scheduler.ray_setup import embedded_node, init_ray, stop_running
from scheduler.spec import GridSpec
from scheduler.storage_errors import check_writable, describe, engine_error
from warehouse.db import write_duckdb_file
from warehouse.layout import Layout
from warehouse.store import read_trial_rows, write_run_record
from workers.config import TrialConfig

# Statuses that count as done: re-running the grid skips these trials. A `failed` trial
# (a Python exception, possibly transient) is run again.
DONE_STATUSES = ("completed", "diverged")


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


def code_version() -> str:
    """git commit of the batchlab checkout (+ '-dirty'), else the package version."""
    import batchlab

    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        return f"{batchlab.__version__}+g{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return batchlab.__version__


def _device_for(spec: GridSpec) -> str:
    r = spec.resources
    if r.device != "auto":
        return r.device
    return "cuda" if r.gpus_per_trial > 0 else "cpu"


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
                spec, layout, code_version=code_version(), device=_device_for(spec), out=out
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
        layout, spec.experiment, run_id,
        {"run_id": run_id, "spec": spec.model_dump(mode="json"), "planned": report.planned,
         "skipped": report.skipped, "counts": report.counts, "wall_time_s": report.wall_time_s,
         "cancelled": report.cancelled, "code_version": code_version(),
         "finished_at": dt.datetime.now(dt.timezone.utc).isoformat()},
    )  # fmt: skip
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
    _execute(spec, p.to_run, layout, report, progress, out)


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


def _execute(
    spec: GridSpec, trials: list[TrialConfig], layout: Layout, report: RunReport, progress, out
):
    import ray

    from scheduler.data_parallel import execute_data_parallel_trial
    from scheduler.progress import EpochBar
    from scheduler.tasks import execute_trial

    r = spec.resources
    device = _device_for(spec)
    version = code_version()
    if r.pack and r.trial_timeout_s:  # a timeout kills a worker: one trial's, not a pack's
        print(
            f"resources.trial_timeout_s={r.trial_timeout_s:g}: every trial runs alone (no packs)",
            file=out,
        )
        spec = spec.model_copy(update={"resources": r.model_copy(update={"pack": False})})
        r = spec.resources
    if r.pack:  # trial packs (docs/packs.md); data-parallel trials still run one by one
        from scheduler.packing import execute_packs, split_for_packs

        packed, rest = split_for_packs(trials, r.pack)
        if not packed:
            lone = spec.model_copy(update={"resources": r.model_copy(update={"pack": False})})
            return _execute(lone, rest, layout, report, progress, out)
        execute_packs(
            spec, packed, layout, report, progress, out, device=device, code_version=version
        )
        if rest and not report.cancelled:
            counts = report.counts
            lone = spec.model_copy(update={"resources": r.model_copy(update={"pack": False})})
            _execute(lone, rest, layout, report, progress, out)
            report.counts = {k: counts.get(k, 0) + report.counts.get(k, 0) for k in {*counts, *report.counts}}  # fmt: skip
        return
    opts: dict[str, Any] = {
        "num_cpus": r.cpus_per_trial,
        "num_gpus": r.gpus_per_trial,
        "max_retries": r.max_retries,
        "retry_exceptions": False,
    }
    # Fault injection and the live-area switch: reach the worker processes of this run only.
    faults = {
        k: v for k, v in os.environ.items() if k.startswith(("BATCHLAB_FAULT_", "BATCHLAB_LIVE"))
    }
    if faults:  # fault-injection tests: reach the worker processes of this run only
        opts["runtime_env"] = {"env_vars": faults}
    remote = ray.remote(_ray_trial).options(**opts)
    dp_opts = {
        "num_cpus": 0,
        "max_retries": 0,
        **({"runtime_env": opts["runtime_env"]} if faults else {}),
    }
    dp_remote = ray.remote(_ray_trial).options(**dp_opts)
    threads = max(1, int(r.cpus_per_trial))
    pending: dict[Any, TrialConfig] = {}
    tries: dict[str, int] = {}
    executions: dict[str, int] = {}  # executions of earlier submissions of a trial (this run)
    tokens: dict[Any, str] = {}  # a submission's token (a timed-out task's retry finds it)

    def submit(t: TrialConfig) -> None:
        tries[t.trial_id] = tries.get(t.trial_id, 0) + 1
        if t.data_parallel_workers > 1:
            # A Ray Train run: the driver-side task holds no resources; the TorchTrainer
            # asks for `data_parallel_workers` x (cpus_per_trial [+ 1 GPU]) itself.
            ref = dp_remote.remote(
                execute_data_parallel_trial, t.model_dump_json(), spec.experiment, layout.root,
                code_version=version, use_gpu=device == "cuda", cpus_per_worker=r.cpus_per_trial,
                max_failures=r.max_retries, data_dir=spec.data_dir, code_dir=spec.code_dir,
            )  # fmt: skip
            pending[ref] = t
            return
        token = uuid.uuid4().hex
        ref = remote.remote(
            execute_trial, t.model_dump_json(), spec.experiment, layout.root,
            attempt_base=executions.get(t.trial_id, 0),
            code_version=version, device=device, resume=r.resume_checkpoints, num_threads=threads,
            data_dir=spec.data_dir, code_dir=spec.code_dir, timeout_s=r.trial_timeout_s,
            token=token,
        )  # fmt: skip
        pending[ref], tokens[ref] = t, token

    for t in trials:
        submit(t)
    counts = {"completed": 0, "diverged": 0, "failed": 0}
    bar = EpochBar(layout, spec.experiment, trials, enabled=progress, out=out)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            bar.poll()
            for ref in done:
                t, token = pending.pop(ref), tokens.pop(ref, None)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # the task failed: its worker died too often
                    res = _task_failed(
                        t,
                        exc,
                        layout,
                        spec.experiment,
                        token,
                        executions.get(t.trial_id, 0) + r.max_retries + 1,
                    )
                executions[t.trial_id] = res.get("attempt") or executions.get(t.trial_id, 0) + 1
                if res["status"] == "failed" and tries[t.trial_id] <= r.retry_failed:
                    submit(t)
                    continue
                counts[res["status"]] = counts.get(res["status"], 0) + 1
                report.results.append(res)
                bar.finished(res)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (scheduler/interrupts.py)
        report.cancelled = True
        stop_running()  # no ray.cancel: see its docstring
        print(
            "\ncancelled: running trials were stopped; nothing half-written is visible. "
            "Run the same command again to resume.",
            file=out,
        )
    finally:
        bar.close()
        report.counts = counts


def _task_failed(
    t: TrialConfig,
    exc: Exception,
    layout: Layout,
    experiment: str,
    token: str | None,
    attempts: int,
) -> dict[str, Any]:
    """The driver's record of a task that raised instead of returning: a trial_timeout_s
    kill (the worker committed the row), else a worker that died on every execution."""
    from scheduler.tasks import timed_out
    from workers.checkpoint_io import TrialCheckpoints

    res = {"trial_id": t.trial_id, "status": "failed", "error": _short(exc), "attempt": attempts}
    if (
        line := describe(getattr(exc, "cause", None) or exc, layout.root)
    ) is not None:  # storage: the path
        res["error"] = line.removeprefix("batchlab: ")
    if token and (error := timed_out(TrialCheckpoints(layout, experiment, t.trial_id), token)):
        return {**res, "error": error, "stop_reason": "timeout"}
    from ray.exceptions import NodeDiedError, WorkerCrashedError

    return {**res, "worker_died": isinstance(exc, (WorkerCrashedError, NodeDiedError))}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def _ray_trial(fn, *args, attempt_base: int | None = None, **kwargs):
    """Runs in a Ray worker: adds the node id and Ray version to the provenance, and the
    trial's attempt number when `fn` takes one (see `ray_attempt`)."""
    import inspect

    import ray

    ctx = ray.get_runtime_context()
    if attempt_base is not None and "attempt" in inspect.signature(fn).parameters:
        kwargs["attempt"] = attempt_base + ray_attempt()
    return fn(*args, node_id=ctx.get_node_id(), ray_version=ray.__version__, **kwargs)


def ray_attempt() -> int:
    """This execution's number among the executions of the running Ray task (1 first; Ray
    counts every retry, also of a worker killed while it was starting or unpickling the
    arguments, before any trial code ran). The driver adds the executions of earlier
    submissions of the same trial (`retry_failed`), so an attempt counts what *this run*
    tried: two concurrent runs of one grid each give a never-retried trial attempt 1."""
    try:
        import ray

        return 1 + int(
            ray._private.worker.global_worker.core_worker.get_current_task_attempt_number()
        )
    except Exception:  # not in a Ray task (tests call the function directly)
        return 1
