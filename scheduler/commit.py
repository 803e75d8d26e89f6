"""The one commit path of a trial's results, whoever trained it (a lone task:
scheduler/tasks.py, a pack: scheduler/pack_tasks.py, rank 0 of a data-parallel trial:
scheduler/data_parallel.py): the `trials` row (`trial_row`), the per-trial tables of
`TABLES`, written by `warehouse.store.write_trial` (the tables first, the `trials` row
last: the commit), the resume checkpoint dropped, and the driver's status record.

Also the bookkeeping around a commit that every executor shares: the attempt count in the
trial's checkpoint folder, a trial's committed status, and `failed` results.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import TYPE_CHECKING, Any

from scheduler.dispatch import TaskArgs
from scheduler.versions import package_version
from warehouse.layout import Layout
from warehouse.store import write_trial
from workers.config import TrialConfig
from workers.trial.rows import SUMMARY_COLUMNS as TRIAL_SUMMARY_COLUMNS

if TYPE_CHECKING:  # torch: imported by the executors that train, not by the driver
    from workers.checkpoint_io import TrialCheckpoints
    from workers.train import TrialResult

# Statuses that count as done: re-running the grid skips these trials. A `failed` trial
# (a Python exception, possibly transient) is run again.
DONE_STATUSES = ("completed", "diverged")
TABLES = ("epochs", "steps", "layers", "probes", "metrics")  # a TrialResult's row lists

# The `trials` row takes the summary columns a trial computes (workers/trial/rows.py, the one
# list) except `scaled_lr`, which comes from the config, plus the provenance the worker adds
# (workers/trial_measures.py `provenance`) and the timing breakdown.
PROVENANCE_COLUMNS = (
    "torch_version",
    "cuda_version",
    "python_version",
    "host",
    "device",
    "device_name",
)
SUMMARY_COLUMNS = (
    *(c for c in TRIAL_SUMMARY_COLUMNS if c != "scaled_lr"),
    *PROVENANCE_COLUMNS,
    "perf_json",
)


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
        "batchlab_version": package_version(),
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
        **{k: s.get(k) for k in SUMMARY_COLUMNS},
    }


def user_code_info(cfg: TrialConfig) -> dict[str, str]:
    """Provenance of the trial's user code (workers.user.code_info); a path that no longer
    resolves (the trial failed on it) is recorded as such, never raises."""
    from workers.user import code_info

    try:
        return code_info(cfg.user_paths)
    except Exception as exc:
        return {"hash": "", "version": f"unresolved: {type(exc).__name__}: {exc}"[:500]}


def status_record(cfg: TrialConfig, result: TrialResult, attempt: int | None) -> dict[str, Any]:
    """The driver's small record of a committed trial (scheduler/runner.py counts them)."""
    return {
        "trial_id": cfg.trial_id,
        "status": result.status,
        "stop_reason": result.stop_reason,
        "best_val_loss": result.summary.get("best_val_loss"),
        "epochs_run": result.summary.get("epochs_run"),
        "error": (result.error or "").strip().splitlines()[-1] if result.error else None,
        "attempt": attempt,
    }


def commit_trial(
    cfg: TrialConfig,
    result: TrialResult,
    task: TaskArgs,
    *,
    attempt: int,
    started_at: dt.datetime,
    ckpt: TrialCheckpoints | None = None,
    layout: Layout | None = None,
    pack_id: str | None = None,
    pack_size: int = 1,
    data_parallel_workers: int = 1,
) -> dict[str, Any]:
    """Commit a trial's rows: every table of `TABLES`, then its `trials` row; then drop
    its resume checkpoint (`ckpt`, when given) unless it failed: the committed rows now
    supersede it. Returns the driver's status record (`status_record`)."""
    row = trial_row(
        cfg,
        result,
        code_version=task.code_version,
        attempt=attempt,
        started_at=started_at,
        node_id=task.node_id,
        ray_version=task.ray_version,
        pack_id=pack_id,
        pack_size=pack_size,
        data_parallel_workers=data_parallel_workers,
    )
    layout = layout or Layout.open(task.root)
    write_trial(layout, task.experiment, row, {k: getattr(result, k) for k in TABLES})
    if ckpt is not None and result.status != "failed":
        ckpt.delete("resume")
    return status_record(cfg, result, attempt)


def failed_result(
    cfg: TrialConfig, stop_reason: str, error: str, summary: dict[str, Any] | None = None
) -> TrialResult:
    """A `failed` TrialResult of `cfg` with no rows: `stop_reason`, `error` (the driver shows
    its last line) and `summary` (none by default)."""
    from workers.train import TrialResult

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
    task: TaskArgs,
    *,
    stop_reason: str,
    error: str,
    attempt: int,
    started_at: dt.datetime,
    summary: dict[str, Any] | None = None,
    layout: Layout | None = None,
) -> dict[str, Any]:
    """Commit the `trials` row of `failed_result(cfg, stop_reason, error, summary)` (no other
    rows) through `commit_trial`."""
    result = failed_result(cfg, stop_reason, error, summary)
    return commit_trial(cfg, result, task, attempt=attempt, started_at=started_at, layout=layout)


def next_attempt(ckpt: TrialCheckpoints) -> int:
    """Count this attempt in the trial's checkpoint folder (1 for the first run); also
    marks the trial in flight (checkpoints/.../attempts.json)."""
    path = ckpt.marker_path("attempts")
    prev = ckpt.layout.get_bytes(path)
    n = (json.loads(prev)["attempts"] if prev else 0) + 1
    ckpt.layout.put_bytes(path, json.dumps({"attempts": n}).encode())
    return n


def committed_status(layout: Layout, experiment: str, trial_id: str) -> str | None:
    """The status in a trial's committed `trials` row, or None when it has none."""
    import pyarrow.parquet as pq

    data = layout.get_bytes(layout.table_file("trials", experiment, trial_id))
    if data is None:
        return None
    try:
        return pq.read_table(io.BytesIO(data), columns=["status"]).column(0)[0].as_py()
    except Exception:  # unreadable: the warehouse checks quarantine it; train again
        return None
