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
from warehouse.layout import Layout
from warehouse.store import write_trial
from workers.checkpoint_io import TrialCheckpoints
from workers.config import TrialConfig
from workers.train import TrialResult, provenance, resolve_device, run_trial


def trial_row(
    cfg: TrialConfig,
    result: TrialResult,
    *,
    code_version: str,
    attempt: int,
    started_at: dt.datetime,
    node_id: str = "",
    ray_version: str = "",
    pack_id: str | None = None,
    pack_size: int = 1,
    data_parallel_workers: int = 1,
) -> dict[str, Any]:
    """The `trials` row of a finished trial: config columns, summary and provenance."""
    import batchlab

    s = result.summary
    user = user_code_info(cfg)
    return {
        "trial_id": cfg.trial_id,
        "config_hash": cfg.config_hash,
        "code_version": code_version,
        "status": result.status,
        "stop_reason": result.stop_reason,
        "error": result.error,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "batchnorm": cfg.model.batchnorm or cfg.model.name in ("keskar_f1", "keskar_c1"),
        "optimizer": cfg.optimizer.name,
        "momentum": cfg.optimizer.momentum,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "scaled_lr": cfg.scaled_lr,
        "lr_scaling": cfg.lr_scaling,
        "base_batch_size": cfg.base_batch_size,
        "warmup_epochs": cfg.warmup_epochs,
        "seed": cfg.seed,
        "max_epochs": cfg.max_epochs,
        "attempt": attempt,
        "pack_id": pack_id,
        "pack_size": pack_size,
        "data_parallel_workers": data_parallel_workers,
        "config_json": cfg.canonical_json(),
        "batchlab_version": batchlab.__version__,
        "ray_version": ray_version,
        "node_id": node_id,
        "started_at": started_at,
        "finished_at": dt.datetime.now(dt.timezone.utc),
        "loss": cfg.loss,
        "model_factory": cfg.model.factory,
        "dataset_loader": cfg.dataset.loader,
        "trainable": cfg.trainable,
        "params_json": json.dumps(cfg.params, sort_keys=True) if cfg.params else None,
        "user_code_hash": user["hash"],
        "user_code_version": user["version"],
        **{k: s.get(k) for k in _SUMMARY_COLUMNS},
    }


def user_code_info(cfg: TrialConfig) -> dict[str, str]:
    """Provenance of the trial's user code (workers.user.code_info); a path that no longer
    resolves (the trial failed on it) is recorded as such, never raises."""
    from workers.user import code_info

    try:
        return code_info(cfg.user_paths)
    except Exception as exc:
        return {"hash": "", "version": f"unresolved: {type(exc).__name__}: {exc}"[:500]}


_SUMMARY_COLUMNS = (
    "n_train", "n_val", "steps_per_epoch", "epochs_run", "steps_run", "best_val_loss",
    "best_val_acc", "best_epoch", "best_step", "steps_to_target", "diverged_step",
    "final_train_loss", "final_val_loss", "final_dist_from_init", "train_time_s",
    "wall_time_s", "peak_memory_mb", "resumed_from_epoch", "torch_version", "cuda_version",
    "python_version", "host", "device", "device_name", "perf_json",
)  # fmt: skip


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


def next_attempt(ckpt: TrialCheckpoints) -> int:
    """Count this attempt in the trial's checkpoint folder (1 for the first run)."""
    prev = ckpt.layout.get_bytes(ckpt.path("attempts").removesuffix(".pt") + ".json")
    n = (json.loads(prev)["attempts"] if prev else 0) + 1
    ckpt.layout.put_bytes(
        ckpt.path("attempts").removesuffix(".pt") + ".json", json.dumps({"attempts": n}).encode()
    )
    return n


def failed_result(
    cfg: TrialConfig, stop_reason: str, error: str, summary: dict[str, Any] | None = None
) -> TrialResult:
    """A `failed` TrialResult of `cfg` with no rows: `stop_reason`, `error` (the driver shows
    its last line) and `summary` (none by default)."""
    return TrialResult(
        trial_id=cfg.trial_id,
        config_hash=cfg.config_hash,
        status="failed",
        stop_reason=stop_reason,
        summary={} if summary is None else summary,
        error=error,
    )


def commit_failed(
    cfg: TrialConfig,
    layout: Layout,
    experiment: str,
    *,
    stop_reason: str,
    error: str,
    summary: dict[str, Any] | None = None,
    **row: Any,
) -> None:
    """Commit the `trials` row of `failed_result(cfg, stop_reason, error, summary)` (no other
    rows); `row`: `trial_row`'s keywords (code_version, attempt, started_at, ...)."""
    result = failed_result(cfg, stop_reason, error, summary)
    write_trial(layout, experiment, trial_row(cfg, result, **row), {})


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
    return ckpt.path("timed-out").removesuffix(".pt") + ".json"


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
    from scheduler.pack_tasks import committed_status

    if committed_status(layout, experiment, cfg.trial_id) is not None:
        return False
    commit_failed(
        cfg,
        layout,
        experiment,
        stop_reason="worker_died",
        error=error,
        code_version=code_version,
        attempt=attempt,
        started_at=dt.datetime.now(dt.timezone.utc),
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
    `attempt`: this run's count of executions of the trial (the driver's, from Ray's task
    attempt number: scheduler/runner.py ray_attempt); None counts in the checkpoint folder.
    `timeout_s` (resources.trial_timeout_s): past it the trial is committed `failed` and
    this process ends (scheduler/guards.py); `token` names the driver's submission, so a
    Ray retry of a timed-out task returns its failed record instead of training again."""
    import torch

    from workers.user import use_code_dir

    use_code_dir(code_dir)
    if num_threads:
        torch.set_num_threads(num_threads)
    cfg = TrialConfig.model_validate_json(cfg_json)
    layout = Layout.open(root)
    ckpt = TrialCheckpoints(layout, experiment, cfg.trial_id)
    if token and (error := timed_out(ckpt, token)):
        return {
            "trial_id": cfg.trial_id,
            "status": "failed",
            "stop_reason": "timeout",
            "best_val_loss": None,
            "epochs_run": None,
            "error": error,
            "attempt": attempt,
        }
    counted = next_attempt(ckpt)  # also marks the trial in flight (checkpoints/.../attempts.json)
    attempt = attempt or counted
    started = dt.datetime.now(dt.timezone.utc)
    live = live_trial(layout, experiment, cfg, attempt=attempt, node_id=node_id)

    def expire(elapsed: float) -> None:  # in the timer thread: commit `failed`, then exit
        error = guards.timeout_error(timeout_s or 0.0, elapsed)
        commit_failed(
            cfg,
            layout,
            experiment,
            stop_reason="timeout",
            error=error,
            summary={**provenance(resolve_device(device))},
            code_version=code_version,
            attempt=attempt,
            started_at=started,
            node_id=node_id,
            ray_version=ray_version,
        )
        layout.put_bytes(
            _timeout_marker(ckpt), json.dumps({"token": token, "error": error}).encode()
        )

    deadline = guards.Deadline(timeout_s, expire)
    try:
        # Fault injection for the reliability tests: a no-op unless BATCHLAB_FAULT_* is set.
        with faults.inject(cfg.trial_id, attempt) as fault_hook, guards.no_os_exit():
            result = run_trial(
                cfg,
                device=device,
                data_dir=data_dir,
                checkpoints=ckpt if resume else None,
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
    row = trial_row(
        cfg, result, code_version=code_version, attempt=attempt, started_at=started,
        node_id=node_id, ray_version=ray_version,
    )  # fmt: skip
    tables = {
        "epochs": result.epochs,
        "steps": result.steps,
        "layers": result.layers,
        "probes": result.probes,
        "metrics": result.metrics,
    }
    write_trial(layout, experiment, row, tables)
    if resume and result.status != "failed":
        ckpt.delete("resume")  # the committed rows now supersede the resume state
    return {
        "trial_id": cfg.trial_id,
        "status": result.status,
        "stop_reason": result.stop_reason,
        "best_val_loss": result.summary.get("best_val_loss"),
        "epochs_run": result.summary.get("epochs_run"),
        "error": (result.error or "").strip().splitlines()[-1] if result.error else None,
        "attempt": attempt,
    }
