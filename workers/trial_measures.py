"""What batchlab measures of a training model besides its losses (torch): distances and
norms of the weights, per-step norm quantiles, probes, provenance and system metrics.

Shared by the lone loop (workers/train.py), packs (workers/pack_*.py) and the user-loop API
(workers/trial_api.py), so the three measure the same way; the rows these numbers go into
are built by `workers.trial.rows`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import socket
import time
from typing import Any

import torch
from torch import nn

from workers.config import TrialConfig
from workers.data import Dataset
from workers.losses import CROSS_ENTROPY, Loss
from workers.trial.rows import QUANTILE_KEYS, nan_quantiles
from workers.trial.state import TrialState

SYSTEM_METRICS = (
    "eval_time_s",
    "probe_time_s",
    "rss_mb",
    "gpu_memory_peak_mb",
    "gpu_utilization_pct",
)


def trainable_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) of every parameter that requires grad, in named_parameters order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def norm_of_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(total L2 norm of a-b, per-tensor norms) without leaving the device."""
    per = torch.stack([torch.linalg.vector_norm(x - y) for x, y in zip(a, b, strict=True)])
    return torch.linalg.vector_norm(per), per


def quantiles(v: torch.Tensor) -> dict[str, float]:
    """p10 / median / p90 / mean / max of `v` (float64; NaN for an empty tensor)."""
    if v.numel() == 0:
        return nan_quantiles()
    q = torch.quantile(
        v.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device=v.device)
    ).tolist()
    return dict(
        zip(
            QUANTILE_KEYS, (q[0], q[1], q[2], v.double().mean().item(), v.max().item()), strict=True
        )
    )


def provenance(device: torch.device) -> dict[str, Any]:
    """Where and with what a result was computed."""
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    return {
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": name,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "python_version": platform.python_version(),
        "pid": os.getpid(),
    }


def system_metrics(
    row: dict[str, Any], t_eval0: float, dev: torch.device, st: TrialState | None = None
) -> dict[str, Any]:
    """Add the epoch's system metrics to `row` (and return it): the time since `t_eval0`
    (evaluations and row bookkeeping after the training steps), process RSS, and on CUDA the
    epoch's peak allocated memory (the counter is reset for the next epoch; `st.peak_mb`
    keeps the trial's peak) and the GPU utilization when NVML answers."""
    row["eval_time_s"] = time.perf_counter() - t_eval0
    row.setdefault("probe_time_s", 0.0)
    row["rss_mb"] = rss_mb()
    row["gpu_memory_peak_mb"], row["gpu_utilization_pct"] = math.nan, math.nan
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        row["gpu_memory_peak_mb"] = peak
        if st is not None:
            st.add_peak(peak)
        torch.cuda.reset_peak_memory_stats(dev)
        with contextlib.suppress(Exception):  # no NVML (pynvml) on this machine: NaN
            row["gpu_utilization_pct"] = float(torch.cuda.utilization(dev))
    return row


def pack_member_system_metrics() -> dict[str, float]:
    """The system metrics of a pack member's epoch row: the process's resident memory; the
    evaluation split, GPU peak and utilization are the pack's, not the member's (NaN)."""
    nan = math.nan
    return {
        "eval_time_s": nan,
        "probe_time_s": 0.0,
        "rss_mb": rss_mb(),
        "gpu_memory_peak_mb": nan,
        "gpu_utilization_pct": nan,
    }


def rss_mb() -> float:
    """Resident memory now (Linux /proc), else the peak resident memory (getrusage)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (bytes on macOS)
        return peak / (2**20 if sys.platform == "darwin" else 2**10)
    except Exception:
        return math.nan


def peak_memory_mb(st: TrialState, dev: torch.device) -> float:
    """The trial's CUDA peak allocated memory (its epochs' and since the last reset); NaN
    off CUDA."""
    if dev.type != "cuda":
        return math.nan
    return max(st.peak_mb, torch.cuda.max_memory_allocated(dev) / 2**20)


def probe_rows(
    model: nn.Module,
    data: Dataset,
    cfg: TrialConfig,
    epoch: int,
    lossf: Loss = CROSS_ENTROPY,
    at: str = "final",
) -> list[dict[str, Any]]:
    """The enabled probes at the model's weights; each row's `measured_at` names the point
    ("final", "best", or "epoch" for a probe_every_epochs probe during training)."""
    m = cfg.measure
    if not m.probes_on:
        return []
    from workers.probes import run_probes

    x, y, bs = data.x_train, data.y_train, cfg.batch_size
    rows = run_probes(model, x, y, m, seed=cfg.seed, epoch=epoch, loss_fn=lossf.fn, batch_size=bs)
    return [{**r, "measured_at": at} for r in rows]


def end_probes(
    model: nn.Module,
    best_state: dict[str, Any] | None,
    data: Dataset,
    cfg: TrialConfig,
    st: TrialState,
    lossf: Loss = CROSS_ENTROPY,
) -> list[dict[str, Any]]:
    """The end-of-training probes of measure.at: at the final weights ("final", epoch = the
    last epoch) and at the best-validation weights ("best", epoch = best_epoch; none when no
    validation was finite). The trained model is left as it is."""
    rows: list[dict[str, Any]] = []
    if "final" in cfg.measure.at:
        rows += probe_rows(model, data, cfg, st.epoch, lossf, at="final")
    if "best" in cfg.measure.at and best_state is not None and st.best_epoch > 0:
        at_best = copy.deepcopy(model)
        at_best.load_state_dict(best_state)
        rows += probe_rows(at_best, data, cfg, st.best_epoch, lossf, at="best")
        del at_best
    return rows
