"""The timing probe: seconds per optimizer step of one trial's model alone (docs/advise.md).

`time_steps(cfg)` builds the trial's model, optimizer and loss exactly as a lone trial does
(`workers.train`), and times warm steps on real batches of `cfg.batch_size` from the
trial's data set on the trial's device: forward, backward and optimizer step, after
`warmup` untimed steps; `repeats` runs of `steps` timed steps each (CUDA synchronized
before the clock is read). The row has the median and the interquartile range of the
repeats' seconds per step, and the machine's state while timing: load averages before and
after (`os.getloadavg`), CPU count, torch threads, and the provenance of a trials row
(host, device, device name, torch / CUDA versions).

Evaluation, probes, rows and checkpoints are not timed: this is the step a trial's
`train_time_s / steps_run` would be on an idle device with no pack partner. Pure PyTorch
(no Ray, no scheduler): the scheduler runs it as a lone task (scheduler/advise_study.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from typing import Any

import torch

from workers import torch_state
from workers.config import TrialConfig
from workers.data import Dataset, load_dataset_cached
from workers.losses import loss_of
from workers.models import build_model
from workers.stepping import epoch_permutation, make_optimizer, resolve_device, steps_per_epoch
from workers.trial_measures import provenance


def timing_id(cfg: TrialConfig, device: str, threads: int) -> str:
    """The key of a timing row: what fixes a step's cost (the pack shape key: data set,
    model, batch size, optimizer, loss, performance), the device and the torch threads."""
    key = json.dumps([cfg.shape_key(), device, int(threads)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _load() -> list[float]:
    try:
        return [round(x, 3) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return [float("nan")] * 3


def time_steps(
    cfg: TrialConfig,
    *,
    device: str | None = None,
    warmup: int = 10,
    steps: int = 30,
    repeats: int = 9,
    threads: int | None = None,
    data: Dataset | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """One `timings` row (warehouse/schemas.py) for `cfg`'s model at `cfg.batch_size`
    (module docstring). `threads`: torch intra-op threads while timing (None: as the
    process has them); restored afterwards."""
    if warmup < 0 or steps < 1 or repeats < 1:
        raise ValueError("timing: warmup >= 0, steps >= 1 and repeats >= 1")
    dev = resolve_device(device)
    with torch_state.isolated(threads) as ts:
        data = data if data is not None else load_dataset_cached(cfg.dataset, dev, data_dir)
        if data.streaming:
            raise ValueError("timing: streamed (DataLoader) data sets are not supported")
        n = data.n_train
        b = min(cfg.batch_size, n)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.num_classes).to(dev)
        opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        for g in opt.param_groups:
            g["lr"] = cfg.scaled_lr
        lossf = loss_of(cfg)
        model.train()
        spe = max(1, n // b)  # full batches only: every timed step has the same shape
        state = {"epoch": 0, "i": spe, "perm": None}

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            if state["i"] >= spe:
                state["epoch"] += 1
                state["perm"] = epoch_permutation(cfg.seed, state["epoch"], n, dev)
                state["i"] = 0
            idx = state["perm"][state["i"] * b : (state["i"] + 1) * b]
            state["i"] += 1
            return data.x_train[idx], data.y_train[idx]

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            lossf(model(x), y).backward()
            opt.step()

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        load_before = _load()
        for _ in range(warmup):
            step(*batch())
        sync()
        per_step = []
        for _ in range(repeats):
            batches = [batch() for _ in range(steps)]  # gathered outside the clock
            sync()
            t0 = time.perf_counter()
            for x, y in batches:
                step(x, y)
            sync()
            per_step.append((time.perf_counter() - t0) / steps)
        load_after = _load()
        threads_used = ts["torch_threads"]
    q = statistics.quantiles(per_step, n=4, method="inclusive") if len(per_step) > 1 else None
    prov = provenance(dev)
    return {
        "timing_id": timing_id(cfg, str(dev), threads_used),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "batchnorm": cfg.model.batchnorm or cfg.model.name in ("keskar_f1", "keskar_c1"),
        "optimizer": cfg.optimizer.name,
        "batch_size": int(cfg.batch_size),
        "shape_key": cfg.shape_key(),
        "s_per_step": float(statistics.median(per_step)),
        "s_per_step_iqr": float(q[2] - q[0]) if q else 0.0,
        "s_per_step_all": json.dumps(per_step),
        "warmup": int(warmup),
        "steps": int(steps),
        "repeats": int(repeats),
        "steps_per_epoch": steps_per_epoch(n, cfg.batch_size),
        "torch_threads": int(threads_used),
        "cpu_count": os.cpu_count() or 0,
        "load_before": json.dumps(load_before),
        "load_after": json.dumps(load_after),
        "load1_before": load_before[0],
        "load1_after": load_after[0],
        **{k: prov[k] for k in ("host", "device", "device_name", "torch_version", "cuda_version")},
    }
