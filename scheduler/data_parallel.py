"""Data-parallel trials: one trial trained with DistributedDataParallel on several Ray Train
workers (finding F-6).

`batch_size` is the *global* batch (as the seed study's MirroredStrategy): each of the
`data_parallel_workers` ranks takes an even slice of every global batch, DDP averages the
gradients, so every rank applies the global batch's mean gradient. NCCL on GPUs, gloo on CPU.

Ray Train's `TorchTrainer` starts the worker group and the process group; its
`FailureConfig(max_failures)` restarts the group when a worker dies, and the trial resumes
from its own epoch checkpoint under the storage root (rank 0 writes it atomically; every
rank reads it). Only rank 0 writes the trial's rows, once, after training.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from typing import Any

from scheduler.commit import commit_trial, next_attempt
from scheduler.dispatch import TaskArgs
from warehouse.layout import Layout
from workers.checkpoint_io import TrialCheckpoints
from workers.config import TrialConfig


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; rank 0 commits the trial (scheduler/commit.py)."""
    import torch

    import scheduler.ray_backend as ray_backend
    from workers.train import DistContext, run_trial
    from workers.user import use_code_dir

    task: TaskArgs = config["task"]
    use_code_dir(task.code_dir)
    rank, world_size, train_device = ray_backend.train_context()
    dist = DistContext(rank=rank, world_size=world_size)
    if task.num_threads:
        torch.set_num_threads(task.num_threads)
    cfg = TrialConfig.model_validate_json(config["cfg_json"])
    layout = Layout.open(task.root)
    ckpt = TrialCheckpoints(layout, task.experiment, cfg.trial_id)
    attempt = next_attempt(ckpt) if dist.is_main else 0
    started = dt.datetime.now(dt.timezone.utc)
    device = train_device if config["use_gpu"] else "cpu"
    on_epoch = None
    if os.environ.get("BATCHLAB_FAULT_KILL_AT_EPOCH") and dist.is_main:
        from scheduler.faults import kill_hook

        on_epoch = kill_hook(cfg.trial_id, attempt)
    result = run_trial(
        cfg,
        device=device,
        data_dir=task.data_dir,
        checkpoints=ckpt,
        on_epoch=on_epoch,
        dist=dist,
    )
    if not dist.is_main:
        return
    task = task.replace(node_id=ray_backend.node_id(), ray_version=ray_backend.version())
    commit_trial(
        cfg,
        result,
        task,
        attempt=attempt,
        started_at=started,
        ckpt=ckpt,
        layout=layout,
        data_parallel_workers=dist.world_size,
    )


def execute_data_parallel_trial(
    cfg_json: str,
    experiment: str,
    root: str,
    *,
    use_gpu: bool,
    cpus_per_worker: float = 1.0,
    max_failures: int = 3,
    **options: Any,
) -> dict[str, Any]:
    """Train one data-parallel trial through Ray Train and return the driver's status record
    (read back from the committed `trials` row). `options`: the other fields of `TaskArgs`
    (scheduler/dispatch.py; device, resume and num_threads are set here)."""
    from scheduler.ray_backend import fit_torch_trainer
    from warehouse.store import read_trial_rows

    options = {k: v for k, v in options.items() if k not in ("device", "resume", "num_threads")}
    task = TaskArgs(experiment, root, num_threads=max(1, int(cpus_per_worker)), **options)
    cfg = TrialConfig.model_validate_json(cfg_json)
    fit_torch_trainer(
        train_loop,
        {"cfg_json": cfg_json, "task": task, "use_gpu": use_gpu},
        name=f"batchlab-{cfg.trial_id}",
        num_workers=cfg.data_parallel_workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        # Ray Train's own run folder holds no results (ours go to the storage root).
        storage_path=os.environ.get(
            "BATCHLAB_RAY_TRAIN_STORAGE", tempfile.gettempdir() + "/batchlab-ray-train"
        ),
    )
    rows = {r["trial_id"]: r for r in read_trial_rows(Layout.open(root), experiment)}
    row = rows.get(cfg.trial_id)
    if row is None:
        return {
            "trial_id": cfg.trial_id,
            "status": "failed",
            "error": "data-parallel trial wrote no rows",
        }
    return {"trial_id": cfg.trial_id, "status": row["status"], "attempt": None}
