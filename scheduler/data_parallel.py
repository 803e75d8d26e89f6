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

from warehouse.layout import Layout
from warehouse.store import write_trial
from workers.checkpoint_io import TrialCheckpoints
from workers.config import TrialConfig


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from scheduler.tasks import next_attempt, trial_row
    from workers.train import DistContext, run_trial
    from workers.user import use_code_dir

    use_code_dir(config.get("code_dir"))
    ctx = ray.train.get_context()
    dist = DistContext(rank=ctx.get_world_rank(), world_size=ctx.get_world_size())
    if config.get("num_threads"):
        torch.set_num_threads(config["num_threads"])
    cfg = TrialConfig.model_validate_json(config["cfg_json"])
    layout = Layout.open(config["root"])
    ckpt = TrialCheckpoints(layout, config["experiment"], cfg.trial_id)
    attempt = next_attempt(ckpt) if dist.is_main else 0
    started = dt.datetime.now(dt.timezone.utc)
    device = str(ray.train.torch.get_device()) if config["use_gpu"] else "cpu"
    on_epoch = None
    if os.environ.get("BATCHLAB_FAULT_KILL_AT_EPOCH") and dist.is_main:
        from scheduler.faults import kill_hook

        on_epoch = kill_hook(cfg.trial_id, attempt)
    result = run_trial(
        cfg,
        device=device,
        data_dir=config.get("data_dir"),
        checkpoints=ckpt,
        on_epoch=on_epoch,
        dist=dist,
    )
    if not dist.is_main:
        return
    row = trial_row(
        cfg, result, code_version=config["code_version"], attempt=attempt, started_at=started,
        node_id=ray.get_runtime_context().get_node_id(), ray_version=ray.__version__,
        data_parallel_workers=dist.world_size,
    )  # fmt: skip
    tables = {
        "epochs": result.epochs,
        "steps": result.steps,
        "layers": result.layers,
        "probes": result.probes,
    }
    write_trial(layout, config["experiment"], row, tables)
    if result.status != "failed":
        ckpt.delete("resume")


def execute_data_parallel_trial(
    cfg_json: str,
    experiment: str,
    root: str,
    *,
    code_version: str,
    use_gpu: bool,
    cpus_per_worker: float = 1.0,
    max_failures: int = 3,
    data_dir: str | None = None,
    code_dir: str | None = None,
    node_id: str = "",
    ray_version: str = "",
) -> dict[str, Any]:
    """Train one data-parallel trial through Ray Train and return the driver's status record
    (read back from the committed `trials` row)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from warehouse.store import read_trial_rows

    cfg = TrialConfig.model_validate_json(cfg_json)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "cfg_json": cfg_json,
            "experiment": experiment,
            "root": root,
            "code_version": code_version,
            "use_gpu": use_gpu,
            "data_dir": data_dir,
            "code_dir": code_dir,
            "num_threads": max(1, int(cpus_per_worker)),
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.data_parallel_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        # Ray Train's own run folder holds no results (ours go to the storage root).
        run_config=RunConfig(
            name=f"batchlab-{cfg.trial_id}",
            storage_path=os.environ.get(
                "BATCHLAB_RAY_TRAIN_STORAGE", tempfile.gettempdir() + "/batchlab-ray-train"
            ),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()
    rows = {r["trial_id"]: r for r in read_trial_rows(Layout.open(root), experiment)}
    row = rows.get(cfg.trial_id)
    if row is None:
        return {
            "trial_id": cfg.trial_id,
            "status": "failed",
            "error": "data-parallel trial wrote no rows",
        }
    return {"trial_id": cfg.trial_id, "status": row["status"], "attempt": None}
