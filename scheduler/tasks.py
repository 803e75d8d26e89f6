"""What runs inside a Ray worker process: train one trial and write its rows.

Kept free of Ray imports (the Ray wrapper lives in `scheduler/ray_backend.py`), so the
same function runs in a test, a plain process, or a Ray task.
"""

from __future__ import annotations

import datetime as dt
import json
import traceback
from typing import Any

from scheduler import faults, guards
from scheduler.commit import (  # noqa: F401  (trial_row, user_code_info: importable from here too)
    commit_failed,
    commit_trial,
    committed_status,
    failed_result,
    next_attempt,
    status_record,
    trial_row,
    user_code_info,
)
from scheduler.dispatch import TaskArgs
from warehouse.layout import Layout
from workers.checkpoint_io import TrialCheckpoints
from workers.config import TrialConfig
from workers.train import TrialResult, provenance, resolve_device, run_trial


def live_trial(layout: Layout, experiment: str, cfg: TrialConfig, **kw: Any):
    """The trial's publisher in the live area (warehouse/live.py), or None when off."""
    from warehouse import live

    if not live.enabled():
        return None
    return live.LiveTrial(layout, experiment, cfg.trial_id, max_epochs=cfg.max_epochs, **kw)


def chain(*hooks):
    """One on_epoch callback calling each given hook (None entries skipped) in order."""
    hooks = tuple(h for h in hooks if h is not None)
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def call(*args):
        for h in hooks:
            h(*args)

    return call


def out_of_memory_result(cfg: TrialConfig, exc: BaseException, device: str) -> TrialResult:
    """A lone trial that ran out of device memory: recorded as `failed` with stop reason
    "out_of_memory" (the grid goes on; the next `batchlab run` tries it again, from its last
    resume checkpoint). Packs are split instead (scheduler/packing.py)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the memory back before this worker takes another trial
    lines = str(exc).strip().splitlines()
    return failed_result(
        cfg,
        "out_of_memory",
        # The driver shows the last line: the reason, then the exception's first line.
        "".join(traceback.format_exception(exc))
        + f"out of memory: {lines[0] if lines else type(exc).__name__}",
        {**provenance(resolve_device(device))},
    )


def error_result(cfg: TrialConfig, exc: BaseException, device: str, cause: str = "") -> TrialResult:
    """A trial stopped by `exc` outside run_trial's own handling (a pack's data set that
    failed to load or was refused by workers/data_checks.py): `failed`, with the traceback
    as its error, whose last line (what the driver shows) is `cause` or else the exception."""
    return failed_result(
        cfg,
        "error",
        "".join(traceback.format_exception(exc)) + cause,
        {**provenance(resolve_device(device))},
    )


def exit_result(cfg: TrialConfig, exc: BaseException, cause: str, device: str) -> TrialResult:
    """A trial whose code exited (sys.exit, KeyboardInterrupt, os._exit): `failed`, with the
    cause as the error's last line (what the driver shows)."""
    return error_result(cfg, exc, device, cause)


def _timeout_marker(ckpt: TrialCheckpoints) -> str:
    return ckpt.marker_path("timed-out")


def timed_out(ckpt: TrialCheckpoints, token: str) -> str | None:
    """The error of a trial_timeout_s kill of the submission `token`, or None."""
    data = ckpt.layout.get_bytes(_timeout_marker(ckpt))
    if data is None:
        return None
    try:
        mark = json.loads(data)
    except ValueError:
        return None
    return mark.get("error") if mark.get("token") == token else None


def record_lost_trial(
    cfg: TrialConfig,
    layout: Layout,
    experiment: str,
    *,
    error: str,
    attempt: int,
    code_version: str,
) -> bool:
    """Commit a `failed` row for a trial whose task ended without committing one (its worker
    died every time Ray ran it). Nothing is written when the trial has a committed row (a
    worker may have committed it before dying). Returns whether it wrote."""
    if committed_status(layout, experiment, cfg.trial_id) is not None:
        return False
    commit_failed(
        cfg,
        TaskArgs(experiment, layout.root, code_version),
        stop_reason="worker_died",
        error=error,
        attempt=attempt,
        started_at=dt.datetime.now(dt.timezone.utc),
        layout=layout,
    )
    return True


def execute_trial(
    cfg_json: str,
    experiment: str,
    root: str,
    *,
    code_version: str,
    device: str = "auto",
    resume: bool = True,
    node_id: str = "",
    ray_version: str = "",
    num_threads: int | None = None,
    data_dir: str | None = None,
    code_dir: str | None = None,
    attempt: int | None = None,
    timeout_s: float | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Train one trial and commit its rows; returns a small status record for the driver.
    The arguments besides `cfg_json` are `TaskArgs`' (scheduler/dispatch.py): `attempt`:
    this run's count of executions of the trial (the driver's, from Ray's task attempt
    number: scheduler/ray_backend.py ray_attempt); None counts in the checkpoint folder.
    `timeout_s` (resources.trial_timeout_s): past it the trial is committed `failed` and
    this process ends (scheduler/guards.py); `token` names the driver's submission, so a
    Ray retry of a timed-out task returns its failed record instead of training again."""
    task = TaskArgs(
        experiment,
        root,
        code_version,
        device=device,
        resume=resume,
        num_threads=num_threads,
        data_dir=data_dir,
        code_dir=code_dir,
        node_id=node_id,
        ray_version=ray_version,
        attempt=attempt,
        timeout_s=timeout_s,
        token=token,
    )
    return run_lone(cfg_json, task)


def run_lone(cfg_json: str, task: TaskArgs) -> dict[str, Any]:
    """`execute_trial` with its arguments in a `TaskArgs`."""
    import torch

    from workers.user import use_code_dir

    use_code_dir(task.code_dir)
    if task.num_threads:
        torch.set_num_threads(task.num_threads)
    cfg = TrialConfig.model_validate_json(cfg_json)
    layout = Layout.open(task.root)
    ckpt = TrialCheckpoints(layout, task.experiment, cfg.trial_id)
    if task.token and (error := timed_out(ckpt, task.token)):
        return {
            "trial_id": cfg.trial_id,
            "status": "failed",
            "stop_reason": "timeout",
            "best_val_loss": None,
            "epochs_run": None,
            "error": error,
            "attempt": task.attempt,
        }
    counted = next_attempt(ckpt)  # also marks the trial in flight (checkpoints/.../attempts.json)
    attempt = task.attempt or counted
    started = dt.datetime.now(dt.timezone.utc)
    live = live_trial(layout, task.experiment, cfg, attempt=attempt, node_id=task.node_id)
    device = task.device

    def expire(elapsed: float) -> None:  # in the timer thread: commit `failed`, then exit
        error = guards.timeout_error(task.timeout_s or 0.0, elapsed)
        commit_failed(
            cfg,
            task,
            stop_reason="timeout",
            error=error,
            attempt=attempt,
            started_at=started,
            summary={**provenance(resolve_device(device))},
            layout=layout,
        )
        layout.put_bytes(
            _timeout_marker(ckpt), json.dumps({"token": task.token, "error": error}).encode()
        )

    deadline = guards.Deadline(task.timeout_s, expire)
    try:
        # Fault injection for the reliability tests: a no-op unless BATCHLAB_FAULT_* is set.
        with faults.inject(cfg.trial_id, attempt) as fault_hook, guards.no_os_exit():
            result = run_trial(
                cfg,
                device=device,
                data_dir=task.data_dir,
                checkpoints=ckpt if task.resume else None,
                on_epoch=chain(live.epoch if live else None, fault_hook),
            )
    except torch.cuda.OutOfMemoryError as exc:
        result = out_of_memory_result(cfg, exc, device)
    except BaseException as exc:  # the user's code exiting: a failed trial, not a dead worker
        if (cause := guards.user_exit(exc)) is None:
            deadline.finish()
            raise
        result = exit_result(cfg, exc, cause, device)
    finally:
        if live is not None:
            live.close()
    deadline.finish()
    return commit_trial(
        cfg,
        result,
        task,
        attempt=attempt,
        started_at=started,
        ckpt=ckpt if task.resume else None,
        layout=layout,
    )
