"""The driver's trial loop: submit every trial of a run as a task, wait for the results
(scheduler/dispatch.py `drain`), retry `retry_failed` times, and fill the run's report.

Trials run as packs when `resources.pack` says so (scheduler/packing.py, the same loop
over packs), data-parallel trials through Ray Train (scheduler/data_parallel.py), the rest
as lone trial tasks (scheduler/tasks.py). Each lone task asks Ray for the spec's
`cpus_per_trial` / `gpus_per_trial`; Ray retries a task whose worker process died
(`max_retries`), and the trial resumes from its last epoch checkpoint. A Python exception
inside a trial is recorded as a `failed` trial by the worker itself, so the grid goes on.
The task system is scheduler/ray_backend.py unless a test passes another `backend`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from scheduler.dispatch import TaskArgs, drain, task_env
from scheduler.packing import trial_threads
from scheduler.spec import GridSpec
from scheduler.storage_errors import describe
from warehouse.layout import Layout
from workers.config import TrialConfig


def device_for(spec: GridSpec) -> str:
    """The device trials run on: resources.device, "auto" being cuda when the grid asks
    for GPUs, else cpu."""
    r = spec.resources
    if r.device != "auto":
        return r.device
    return "cuda" if r.gpus_per_trial > 0 else "cpu"


def base_task(spec: GridSpec, layout: Layout, code_version: str) -> TaskArgs:
    """The `TaskArgs` every trial task of this run gets (lone and packs alike)."""
    r = spec.resources
    return TaskArgs(
        spec.experiment,
        layout.root,
        code_version,
        device=device_for(spec),
        resume=r.resume_checkpoints,
        num_threads=trial_threads(r.cpus_per_trial),
        data_dir=spec.data_dir,
        code_dir=spec.code_dir,
    )


def without_packs(spec: GridSpec) -> GridSpec:
    r = spec.resources
    return spec.model_copy(update={"resources": r.model_copy(update={"pack": False})})


def execute(
    spec: GridSpec,
    trials: list[TrialConfig],
    layout: Layout,
    report: Any,
    progress: bool,
    out: Any,
    *,
    code_version: str,
    backend: Any = None,
) -> None:
    """Run `trials` on the connected task system; fills `report` (scheduler/runner.py
    RunReport: results, counts, cancelled)."""
    if backend is None:
        import scheduler.ray_backend as backend
    r = spec.resources
    if r.pack and r.trial_timeout_s:  # a timeout kills a worker: one trial's, not a pack's
        print(
            f"resources.trial_timeout_s={r.trial_timeout_s:g}: every trial runs alone (no packs)",
            file=out,
        )
        spec, r = without_packs(spec), without_packs(spec).resources
    if r.pack:  # trial packs (docs/packs.md); data-parallel trials still run one by one
        from scheduler.packing import execute_packs, split_for_packs

        packed, rest = split_for_packs(trials, r.pack)
        if packed:
            task = base_task(spec, layout, code_version)
            execute_packs(spec, packed, layout, report, progress, out, task=task, backend=backend)
        if rest and not report.cancelled:
            counts = report.counts
            execute(
                without_packs(spec),
                rest,
                layout,
                report,
                progress,
                out,
                code_version=code_version,
                backend=backend,
            )
            report.counts = {
                k: counts.get(k, 0) + report.counts.get(k, 0) for k in {*counts, *report.counts}
            }
        return
    LoneLoop(spec, layout, report, code_version, backend).run(trials, progress, out)


class LoneLoop:
    """The loop of lone and data-parallel trial tasks of one run."""

    def __init__(
        self, spec: GridSpec, layout: Layout, report: Any, code_version: str, backend: Any
    ) -> None:
        self.spec, self.layout, self.report, self.backend = spec, layout, report, backend
        r = spec.resources
        self.task = base_task(spec, layout, code_version)
        env = task_env()
        opts = {
            "num_cpus": r.cpus_per_trial,
            "num_gpus": r.gpus_per_trial,
            "max_retries": r.max_retries,
            "retry_exceptions": False,
            **env,
        }
        self.remote = backend.remote(backend.ray_task, **opts)
        # A Ray Train run: the driver-side task holds no resources; the TorchTrainer asks
        # for `data_parallel_workers` x (cpus_per_trial [+ 1 GPU]) itself.
        self.dp_remote = backend.remote(backend.ray_task, num_cpus=0, max_retries=0, **env)
        # A submission's trial and token (a timed-out task's retry finds its record by it).
        self.pending: dict[Any, tuple[TrialConfig, str | None]] = {}
        self.tries: dict[str, int] = {}
        self.executions: dict[str, int] = {}  # executions of earlier submissions (this run)
        self.counts = {"completed": 0, "diverged": 0, "failed": 0}
        self.bar: Any = None

    def run(self, trials: list[TrialConfig], progress: bool, out: Any) -> None:
        from scheduler.progress import EpochBar

        for t in trials:
            self.submit(t)
        self.bar = EpochBar(self.layout, self.spec.experiment, trials, enabled=progress, out=out)

        def cancelled() -> None:
            self.report.cancelled = True
            print(
                "\ncancelled: running trials were stopped; nothing half-written is visible. "
                "Run the same command again to resume.",
                file=out,
            )

        try:
            drain(
                self.backend, self.pending, self.on_result, poll=self.bar.poll, on_cancel=cancelled
            )
        finally:
            self.bar.close()
            self.report.counts = self.counts

    def submit(self, t: TrialConfig) -> None:
        self.tries[t.trial_id] = self.tries.get(t.trial_id, 0) + 1
        task, r = self.task, self.spec.resources
        if t.data_parallel_workers > 1:
            from scheduler.data_parallel import execute_data_parallel_trial

            ref = self.dp_remote.remote(
                execute_data_parallel_trial,
                t.model_dump_json(),
                task.experiment,
                task.root,
                use_gpu=task.device == "cuda",
                cpus_per_worker=r.cpus_per_trial,
                max_failures=r.max_retries,
                code_version=task.code_version,
                data_dir=task.data_dir,
                code_dir=task.code_dir,
            )
            self.pending[ref] = (t, None)
            return
        from scheduler import tasks  # torch: imported once a trial is submitted

        token = uuid.uuid4().hex
        # scheduler.tasks.execute_trial looked up now: a benchmark swaps in a timed one.
        ref = self.remote.remote(
            tasks.execute_trial,
            t.model_dump_json(),
            task.experiment,
            task.root,
            attempt_base=self.executions.get(t.trial_id, 0),
            **task.replace(timeout_s=r.trial_timeout_s, token=token).options(),
        )
        self.pending[ref] = (t, token)

    def on_result(self, item: tuple[TrialConfig, str | None], res: Any, exc: Any) -> None:
        t, token = item
        r = self.spec.resources
        if exc is not None:  # the task failed: its worker died too often
            attempts = self.executions.get(t.trial_id, 0) + r.max_retries + 1
            res = task_failed(
                t, exc, self.layout, self.spec.experiment, token, attempts, self.backend.worker_died
            )
        self.executions[t.trial_id] = res.get("attempt") or self.executions.get(t.trial_id, 0) + 1
        if res["status"] == "failed" and self.tries[t.trial_id] <= r.retry_failed:
            self.submit(t)
            return
        self.counts[res["status"]] = self.counts.get(res["status"], 0) + 1
        self.report.results.append(res)
        self.bar.finished(res)


def task_failed(
    t: TrialConfig,
    exc: Exception,
    layout: Layout,
    experiment: str,
    token: str | None,
    attempts: int,
    worker_died: Callable[[BaseException], bool],
) -> dict[str, Any]:
    """The driver's record of a task that raised instead of returning: a trial_timeout_s
    kill (the worker committed the row), else a worker that died on every execution
    (`worker_died`: the backend's reading of the exception)."""
    from scheduler.tasks import timed_out
    from workers.checkpoint_io import TrialCheckpoints

    res = {
        "trial_id": t.trial_id,
        "status": "failed",
        "error": short_error(exc),
        "attempt": attempts,
    }
    if (line := describe(getattr(exc, "cause", None) or exc, layout.root)) is not None:
        res["error"] = line.removeprefix("batchlab: ")  # storage: the path
    if token and (error := timed_out(TrialCheckpoints(layout, experiment, t.trial_id), token)):
        return {**res, "error": error, "stop_reason": "timeout"}
    return {**res, "worker_died": worker_died(exc)}


def short_error(exc: BaseException) -> str:
    """An exception in one line: its type and the last line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
