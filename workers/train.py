"""Train one trial and measure it: the worker's whole story, top to bottom.

config -> seed/device -> data on the device -> model -> optimizer and lr schedule -> loop
(per step: update and gradient norms on the device; per epoch: one host sync for losses,
distances, early stopping) -> end-of-trial probes -> rows for the warehouse.

No Ray here: the scheduler calls `run_trial` inside a Ray task, a test calls it directly.
A diverged trial (NaN/inf or exploding loss) is a result with status "diverged", not an
exception. With a `CheckpointIO`, the full training state is saved at every epoch end and a
re-started trial resumes from it, bit-exactly on CPU (data order is a pure function of
(seed, epoch), so only model, optimizer and RNG states need saving).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from workers import perf, torch_state
from workers.budget import cap_reached, target_reached
from workers.config import TrialConfig
from workers.data import Dataset, load_dataset_cached
from workers.losses import CROSS_ENTROPY, Loss, loss_of
from workers.models import build_model
from workers.resume_rows import compact_rows, expand_rows

EVAL_BATCH = 4096  # examples per forward pass when evaluating a whole split


class CheckpointIO(Protocol):
    """Where a trial keeps its checkpoints (the warehouse provides one per trial)."""

    def save(self, name: str, state: dict[str, Any]) -> None: ...

    def load(self, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel trial (torch.distributed already initialized
    by the caller, e.g. Ray Train's TorchTrainer). Rank 0 saves checkpoints, runs the probes
    and returns the rows; every rank takes its slice of each global batch."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class _ReadOnlyCheckpoints:
    """Non-zero ranks read the resume state but never write."""

    def __init__(self, inner: CheckpointIO):
        self.inner = inner

    def save(self, name: str, state: dict[str, Any]) -> None:
        return None

    def load(self, name: str) -> dict[str, Any] | None:
        return self.inner.load(name)


@dataclass
class TrialResult:
    """Everything a trial produced; the scheduler hands it to the warehouse to write."""

    trial_id: str
    config_hash: str
    status: str  # "completed" | "diverged" | "failed"
    # "max_epochs" | "max_steps" | "max_examples" | "max_time" | "early_stopping" |
    # "target_reached" | "train_target_reached" | "diverged" | "error" (workers/budget.py)
    stop_reason: str
    summary: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    # Extra metrics of a user's training loop (long format: epoch, step, name, value).
    metrics: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def resolve_device(device: str | None = None) -> torch.device:
    """ "auto" (or None) picks CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """The data order of one epoch: a pure function of (seed, epoch), so a resumed trial and
    a trial trained inside a pack see exactly the same batches as a lone trial."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def steps_per_epoch(n: int, batch_size: int) -> int:
    # Keep the last partial batch (as a DataLoader would), except a lone example: BatchNorm
    # cannot train on a batch of one.
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 else 0)


def lr_at(cfg: TrialConfig, step: int, n_steps_epoch: int, decay: float) -> float:
    """The lr applied at optimizer step `step` (0-based): scaling rule, then gradual linear
    warmup from the unscaled lr to the scaled lr over `warmup_epochs` (Goyal et al. 2017),
    then the plateau decay factor."""
    target = cfg.scaled_lr
    warmup_steps = round(cfg.warmup_epochs * n_steps_epoch)
    if warmup_steps > 0 and step < warmup_steps:
        lr = cfg.lr + (target - cfg.lr) * step / warmup_steps
    else:
        lr = target
    return lr * decay


def make_optimizer(cfg: TrialConfig, params) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    return torch.optim.Adam(
        params, lr=cfg.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = CROSS_ENTROPY
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy over a whole split, eval mode, as device scalars (accuracy
    NaN when the loss defines none). The mean is the size-weighted mean of chunk means."""
    return _evaluate_batches(model, ((x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH])
                                     for i in range(0, x.shape[0], EVAL_BATCH)), loss, x.device)  # fmt: skip


def _evaluate_batches(model: nn.Module, batches, loss: Loss, dev: torch.device):
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.float64)
    n, has_acc = 0, True
    for xb, yb in batches:
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        out = model(xb).float()
        loss_sum += loss(out, yb).double() * xb.shape[0]
        c = loss.correct(out, yb) if has_acc else None
        if c is None:
            has_acc = False
        else:
            correct += c
        n += xb.shape[0]
    model.train(was_training)
    acc = correct / n if has_acc else torch.full((), math.nan, device=dev)
    return (loss_sum / n).float(), acc.float()


def loader_workers(dev: torch.device) -> int:
    """DataLoader worker processes for a streamed data set ($BATCHLAB_LOADER_WORKERS; default
    2 on CUDA, 0 on CPU where the trial's own threads do the work)."""
    env = os.environ.get("BATCHLAB_LOADER_WORKERS")
    return int(env) if env else (2 if dev.type == "cuda" else 0)


def _loader(ds, batches: list[list[int]], dev: torch.device):
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=loader_workers(dev),
        pin_memory=dev.type == "cuda", persistent_workers=False,
    )  # fmt: skip


def evaluate_split(
    model: nn.Module, data: Dataset, split: str, loss: Loss = CROSS_ENTROPY
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy over the whole validation split ("val") or the training split
    ("train"); a streamed data set's training split is evaluated on its device subset."""
    dev = data.x_train.device
    if split == "val" and data.streaming:
        n = len(data.val_set)
        order = [list(range(i, min(n, i + EVAL_BATCH))) for i in range(0, n, EVAL_BATCH)]
        return _evaluate_batches(model, _loader(data.val_set, order, dev), loss, dev)
    if split == "val":
        return evaluate(model, data.x_val, data.y_val, loss)
    return evaluate(model, data.x_train, data.y_train, loss)


def _params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _norm_of_diff(
    a: list[torch.Tensor], b: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total L2 norm of a-b, per-tensor norms) without leaving the device."""
    per = torch.stack([torch.linalg.vector_norm(x - y) for x, y in zip(a, b, strict=True)])
    return torch.linalg.vector_norm(per), per


def _quantiles(v: torch.Tensor) -> dict[str, float]:
    if v.numel() == 0:
        return {k: math.nan for k in ("p10", "median", "p90", "mean", "max")}
    q = torch.quantile(
        v.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device=v.device)
    )
    q = q.tolist()
    return {
        "p10": q[0],
        "median": q[1],
        "p90": q[2],
        "mean": v.double().mean().item(),
        "max": v.max().item(),
    }


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


def record_validation(
    cfg: TrialConfig, st: dict[str, Any], vl: float, va: float, epoch: int
) -> str | None:
    """Early-stopping, plateau and target bookkeeping of one validation (host values) in the
    trial state `st`; returns the stop reason ("target_reached", "early_stopping") or None.
    Shared by the lone-trial loop and the pack trainer so both stop identically."""
    es = cfg.early_stopping
    if not math.isfinite(vl):
        return None
    if vl < st["best_val"] - (es.min_delta if es else 0.0):
        st.update(best_val=vl, best_epoch=epoch, best_step=st["step"], since_best=0, plateau=0)
    else:
        st["since_best"] += es.eval_every_steps if (es and es.unit == "steps") else 1
        st["plateau"] += 1
    if math.isfinite(va):  # NaN: the loss defines no accuracy (e.g. mse regression)
        st["best_acc"] = max(st["best_acc"], va)
    if cfg.target_val_error is not None and 1.0 - va <= cfg.target_val_error:
        if st["steps_to_target"] < 0:
            st["steps_to_target"] = st["step"]
        return "target_reached"
    if es is not None and st["since_best"] >= es.patience:
        return "early_stopping"
    return None


class _Stop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def run_trial(
    cfg: TrialConfig,
    *,
    device: str | None = None,
    data: Dataset | None = None,
    data_dir: str | None = None,
    checkpoints: CheckpointIO | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    dist: DistContext | None = None,
) -> TrialResult:
    """Train and measure one trial. Never raises for a training failure: a diverged trial
    returns status "diverged"; any other exception returns status "failed" with the
    traceback (the scheduler decides whether to retry). With `dist`, this process is one
    rank of a data-parallel trial (see DistContext)."""
    dev = resolve_device(device)
    # TF32 / cuDNN flags for this trial only (restored after it); `rec` records what was in
    # effect for every performance switch (the trials row's perf_json).
    # Every global torch setting (default dtype, threads, ...) put back after the trial, so
    # user code cannot change the numbers of the next trial in this process.
    with torch_state.isolated() as ts, perf.applied(cfg.performance, dev) as rec:
        rec["torch_threads"] = ts["torch_threads"]
        try:
            cfg.check_scaled_lr()  # a non-finite lr is bad input (failed), not a divergence
            if cfg.trainable is not None:
                from workers.trial_api import run_user_trial

                perf.not_applied(rec, cfg.performance, "not applied: a trainable runs its own loop")
                result = run_user_trial(cfg, dev, data_dir, checkpoints, on_epoch)
            else:
                result = _train(cfg, dev, data, data_dir, checkpoints, on_epoch, dist, rec)
        except Exception as exc:  # recorded as data, the grid goes on
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise  # the scheduler splits packs / retries on OOM: let it see the real type
            result = TrialResult(
                trial_id=cfg.trial_id,
                config_hash=cfg.config_hash,
                status="failed",
                stop_reason="error",
                summary={**provenance(dev)},
                error=traceback.format_exc(),
            )
    if ts["restored"]:
        rec["torch_settings_restored"] = ts["restored"]
    result.summary["perf_json"] = perf.to_json(rec)
    return result


def _train(
    cfg: TrialConfig,
    dev: torch.device,
    data: Dataset | None,
    data_dir: str | None,
    checkpoints: CheckpointIO | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    dist: DistContext | None = None,
    perf_rec: dict[str, Any] | None = None,
) -> TrialResult:
    t_start = time.perf_counter()
    main = dist is None or dist.is_main
    if not main:
        checkpoints = _ReadOnlyCheckpoints(checkpoints) if checkpoints is not None else None
        on_epoch = None
    data = data if data is not None else load_dataset_cached(cfg.dataset, dev, data_dir)
    lossf = loss_of(cfg)
    n = data.n_train
    spe = steps_per_epoch(n, cfg.batch_size)
    m = cfg.measure
    es = cfg.early_stopping

    # Model init depends only on the trial seed: the same seed gives the same initial weights
    # in a pack, after a resume, and in the two trials an interpolation compares.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(dev)
    named = _params(model)
    names = [nm for nm, _ in named]
    params = [p for _, p in named]
    init = [p.detach().clone() for p in params]
    opt = make_optimizer(cfg, params)
    # Data parallel: DDP all-reduces (averages) gradients inside backward, so with equal
    # local batches every rank applies exactly the full global batch's mean gradient and
    # the weights stay identical across ranks. Metrics are computed on the raw module.
    net: nn.Module = model
    if dist is not None and dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    # Mutable trial state: everything a resume needs besides model/optimizer tensors.
    st: dict[str, Any] = {
        "epoch": 0, "step": 0, "decay": 1.0, "decays": 0, "best_val": math.inf,
        "best_epoch": -1, "best_step": -1, "best_acc": 0.0, "since_best": 0, "plateau": 0,
        "elapsed_s": 0.0, "steps_to_target": -1, "diverged_step": -1,
        "epochs": [], "steps": [], "layers": [], "probes": [],
    }  # fmt: skip
    # The best-validation weights, kept in memory when measure.at asks for "best".
    best: dict[str, Any] = {"state": None}
    want_best = "best" in m.at
    if checkpoints is not None:
        if (saved := checkpoints.load("resume")) is not None:
            best["state"] = saved.get("best_model")
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            for p, t in zip(init, saved["init"], strict=True):
                p.copy_(t)
            torch.set_rng_state(saved["rng_cpu"])
            if dev.type == "cuda" and "rng_cuda" in saved:
                torch.cuda.set_rng_state(saved["rng_cuda"], dev)
            st.update(expand_rows(saved["state"]))
            st["resumed_from_epoch"] = st["epoch"]
        elif m.checkpoints:
            checkpoints.save("init", {k: v.detach().cpu() for k, v in model.state_dict().items()})

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model.train()
    # The step's forward under `performance:` (channels_last, torch.compile, CUDA graphs,
    # each with its eager fallback: workers/perf.py); `net` itself when they are all off.
    fwd = perf.training_forward(
        cfg.performance, perf_rec if perf_rec is not None else perf.new_record(cfg.performance, dev),
        model, net, data.x_train, data.y_train, lossf, cfg.batch_size, n, dev,
        data_parallel=dist is not None and dist.world_size > 1,
    )  # fmt: skip
    stop_reason = "max_epochs"
    prev_epoch_params = [p.detach().clone() for p in params]

    def validate(epoch: int) -> tuple[float, float]:
        """One host sync: validation loss/acc, early-stopping and target bookkeeping."""
        vl, va = evaluate_split(model, data, "val", lossf)
        vl, va = vl.item(), va.item()
        before = st["best_val"]
        reason = record_validation(cfg, st, vl, va, epoch)
        if want_best and st["best_val"] < before:
            best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if reason is not None:
            raise _Stop(reason)
        return vl, va

    try:
        while st["epoch"] < cfg.max_epochs:
            epoch = st["epoch"] + 1
            t_epoch = time.perf_counter()
            perm = epoch_permutation(cfg.seed, epoch, n, dev)
            batch_losses = torch.zeros(spe, device=dev)
            upd = torch.zeros(spe, device=dev)
            gnorm = torch.zeros(spe, device=dev)
            lrs = []
            stopped: _Stop | None = None
            stream = _stream(data, perm, cfg.batch_size, spe, dev) if data.streaming else None
            for i in range(spe):
                if stream is not None:
                    xb, yb = next(stream)
                    if dist is not None and dist.world_size > 1:
                        xb, yb = xb.tensor_split(dist.world_size)[dist.rank], yb.tensor_split(dist.world_size)[dist.rank]  # fmt: skip
                else:
                    idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                    if dist is not None and dist.world_size > 1:
                        idx = idx.tensor_split(dist.world_size)[dist.rank]
                    xb, yb = data.x_train[idx], data.y_train[idx]
                lr = lr_at(cfg, st["step"], spe, st["decay"])
                lrs.append(lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss = lossf(fwd(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grads = [p.grad for p in params]
                gn = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads])
                )
                if cfg.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
                if m.update_norms:
                    before = [p.detach().clone() for p in params]
                opt.step()
                if m.update_norms:
                    upd[i] = _norm_of_diff([p.detach() for p in params], before)[0]
                batch_losses[i] = loss.detach()
                gnorm[i] = gn
                st["step"] += 1
                if es is not None and es.unit == "steps" and st["step"] % es.eval_every_steps == 0:
                    # Validation inside the epoch (patience counted in steps) costs a sync.
                    try:
                        validate(epoch)
                    except _Stop as s:
                        stopped = s
                        spe_done = i + 1
                        break
                if cfg.stop is not None:
                    seen = (epoch - 1) * n + min(n, (i + 1) * cfg.batch_size)
                    t_now = st["elapsed_s"] + time.perf_counter() - t_epoch
                    if cap := cap_reached(cfg, st["step"], seen, t_now):
                        stopped, spe_done = _Stop(cap), i + 1
                        break
            else:
                spe_done = spe

            # ---- epoch end: one host sync for everything below ----
            batch_losses, upd, gnorm = batch_losses[:spe_done], upd[:spe_done], gnorm[:spe_done]
            if dist is not None and dist.world_size > 1:
                # The global batch loss is the mean of the ranks' local means (equal local
                # batches); one collective per epoch. Every rank then takes the same
                # divergence and stopping decisions, so no rank waits on a finished peer.
                import torch.distributed as tdist

                tdist.all_reduce(batch_losses)
                batch_losses /= dist.world_size
            bad = ~torch.isfinite(batch_losses) | (batch_losses > cfg.divergence_loss)
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                st["diverged_step"] = st["step"] - spe_done + first + 1
                raise _Stop("diverged")
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            train_time = time.perf_counter() - t_epoch
            st["elapsed_s"] += train_time

            cur = [p.detach() for p in params]
            d_init, dist_per = _norm_of_diff(cur, init)
            ep_dist, _ = _norm_of_diff(cur, prev_epoch_params)
            prev_epoch_params = [p.detach().clone() for p in params]
            row: dict[str, Any] = {
                "epoch": epoch,
                "step": st["step"],
                "lr": lrs[-1],
                "train_loss": batch_losses.mean().item(),
                "dist_from_init": d_init.item(),
                "epoch_distance": ep_dist.item(),
                "epoch_time_s": train_time,
                "elapsed_s": st["elapsed_s"],
                "examples_per_s": spe_done * cfg.batch_size / train_time
                if train_time > 0
                else math.nan,
            }
            # Examples seen so far, counting a partial last batch by its real size.
            row["examples_seen"] = (epoch - 1) * n + min(n, spe_done * cfg.batch_size)
            uq = _quantiles(upd) if m.update_norms else _quantiles(torch.empty(0))
            gq = _quantiles(gnorm)
            row.update({f"update_norm_{k}": v for k, v in uq.items()})
            row.update({f"grad_norm_{k}": v for k, v in gq.items()})
            t_eval0 = time.perf_counter()
            if m.train_eval:
                tl, ta = evaluate_split(model, data, "train", lossf)
                row["train_loss_eval"], row["train_acc_eval"] = tl.item(), ta.item()
            else:
                row["train_loss_eval"], row["train_acc_eval"] = math.nan, math.nan
            if m.layers:
                norms0 = [torch.linalg.vector_norm(p0) for p0 in init]
                for nm, d, p0n, p in zip(names, dist_per.tolist(), norms0, cur, strict=True):
                    st["layers"].append({
                        "epoch": epoch, "layer": nm, "numel": p.numel(), "dist_from_init": d,
                        "rel_dist_from_init": d / max(p0n.item(), 1e-12),
                        "param_norm": torch.linalg.vector_norm(p).item(),
                    })  # fmt: skip
            if m.store_steps:
                first_step = st["step"] - spe_done + 1
                for j, (lr_j, u, g, bl) in enumerate(
                    zip(lrs, upd.tolist(), gnorm.tolist(), batch_losses.tolist(), strict=False)
                ):
                    st["steps"].append({
                        "step": first_step + j, "epoch": epoch, "lr": lr_j,
                        "update_norm": u if m.update_norms else math.nan, "grad_norm": g,
                        "batch_loss": bl,
                    })  # fmt: skip
            st["epoch"] = epoch
            if stopped is not None:
                vl, va = evaluate_split(model, data, "val", lossf)
                row["val_loss"], row["val_acc"] = vl.item(), va.item()
                st["epochs"].append(system_metrics(row, t_eval0, dev, st))
                raise stopped
            try:
                # In "steps" mode validation (and its bookkeeping) already ran inside the epoch.
                vl, va = (
                    _val_only(model, data, lossf)
                    if (es and es.unit == "steps")
                    else validate(epoch)
                )
            except _Stop as s:
                vl, va = evaluate_split(model, data, "val", lossf)
                row["val_loss"], row["val_acc"] = vl.item(), va.item()
                st["epochs"].append(system_metrics(row, t_eval0, dev, st))
                raise s
            row["val_loss"], row["val_acc"] = vl, va
            st["epochs"].append(system_metrics(row, t_eval0, dev, st))
            if not math.isfinite(vl):
                st["diverged_step"] = st["step"]
                raise _Stop("diverged")
            if (reason := target_reached(cfg, row)) is not None:
                raise _Stop(reason)
            if cfg.plateau_decay is not None:
                pd = cfg.plateau_decay
                if st["plateau"] >= pd.patience and st["decays"] < pd.max_decays:
                    st["decay"] *= pd.factor
                    st["decays"] += 1
                    st["plateau"] = 0
            if (
                main
                and m.probe_every_epochs
                and epoch % m.probe_every_epochs == 0
                and epoch < cfg.max_epochs
            ):
                t_probe = time.perf_counter()
                st["probes"] += _probes(model, data, cfg, epoch, lossf, at="epoch")
                row["probe_time_s"] = time.perf_counter() - t_probe
            if on_epoch is not None:
                on_epoch(row)
            if checkpoints is not None:
                checkpoints.save("resume", _resume_state(model, opt, init, st, dev, best["state"]))
    except _Stop as s:
        stop_reason = s.reason

    status = "diverged" if stop_reason == "diverged" else "completed"
    if status == "completed" and main:
        t_probe = time.perf_counter()
        st["probes"] += end_probes(model, best["state"], data, cfg, st, lossf)
        if st["epochs"] and st["probes"]:
            last = st["epochs"][-1]
            last["probe_time_s"] = (last.get("probe_time_s") or 0.0) + time.perf_counter() - t_probe
        if checkpoints is not None and m.checkpoints:
            checkpoints.save("final", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    peak_mb = (
        max(st.get("peak_mb", 0.0), torch.cuda.max_memory_allocated(dev) / 2**20)
        if dev.type == "cuda"
        else math.nan
    )
    epochs_run = st["epoch"]
    summary = {
        **provenance(dev),
        "n_train": n,
        "n_val": data.n_val,
        "steps_per_epoch": spe,
        "epochs_run": epochs_run,
        "steps_run": st["step"],
        "best_val_loss": st["best_val"] if math.isfinite(st["best_val"]) else math.nan,
        "best_val_acc": st["best_acc"]
        if any(math.isfinite(r.get("val_acc", math.nan)) for r in st["epochs"])
        else math.nan,
        "best_epoch": st["best_epoch"],
        "best_step": st["best_step"],
        "steps_to_target": st["steps_to_target"],
        "diverged_step": st["diverged_step"],
        "final_train_loss": st["epochs"][-1]["train_loss_eval"] if st["epochs"] else math.nan,
        "final_val_loss": st["epochs"][-1]["val_loss"] if st["epochs"] else math.nan,
        "final_dist_from_init": st["epochs"][-1]["dist_from_init"] if st["epochs"] else math.nan,
        "train_time_s": st["elapsed_s"],
        "wall_time_s": time.perf_counter() - t_start,
        "peak_memory_mb": peak_mb,
        "resumed_from_epoch": st.get("resumed_from_epoch", 0),
        "scaled_lr": cfg.scaled_lr,
    }
    return TrialResult(
        trial_id=cfg.trial_id,
        config_hash=cfg.config_hash,
        status=status,
        stop_reason=stop_reason,
        summary=summary,
        epochs=st["epochs"],
        steps=st["steps"],
        layers=st["layers"],
        probes=st["probes"],
    )


def system_metrics(
    row: dict[str, Any], t_eval0: float, dev: torch.device, st: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Add the epoch's system metrics to `row` (and return it): the time since `t_eval0`
    (evaluations and row bookkeeping after the training steps), process RSS, and on CUDA the
    epoch's peak allocated memory (the counter is reset for the next epoch; `st["peak_mb"]`
    keeps the trial's peak) and the GPU utilization when NVML answers."""
    row["eval_time_s"] = time.perf_counter() - t_eval0
    row.setdefault("probe_time_s", 0.0)
    row["rss_mb"] = _rss_mb()
    row["gpu_memory_peak_mb"], row["gpu_utilization_pct"] = math.nan, math.nan
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        row["gpu_memory_peak_mb"] = peak
        if st is not None:
            st["peak_mb"] = max(st.get("peak_mb", 0.0), peak)
        torch.cuda.reset_peak_memory_stats(dev)
        with contextlib.suppress(Exception):  # no NVML (pynvml) on this machine: NaN
            row["gpu_utilization_pct"] = float(torch.cuda.utilization(dev))
    return row


SYSTEM_METRICS = (
    "eval_time_s",
    "probe_time_s",
    "rss_mb",
    "gpu_memory_peak_mb",
    "gpu_utilization_pct",
)


def pack_member_system_metrics() -> dict[str, float]:
    """The system metrics of a pack member's epoch row: the process's resident memory; the
    evaluation split, GPU peak and utilization are the pack's, not the member's (NaN)."""
    nan = math.nan
    return {"eval_time_s": nan, "probe_time_s": 0.0, "rss_mb": _rss_mb(),
            "gpu_memory_peak_mb": nan, "gpu_utilization_pct": nan}  # fmt: skip


def _rss_mb() -> float:
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


def _val_only(model: nn.Module, data: Dataset, lossf: Loss) -> tuple[float, float]:
    vl, va = evaluate_split(model, data, "val", lossf)
    return vl.item(), va.item()


def _stream(data: Dataset, perm: torch.Tensor, batch_size: int, spe: int, dev: torch.device):
    """The epoch's batches of a streamed data set, in the order of `perm` (the same order
    the device-resident path takes), through a DataLoader."""
    order = perm.cpu().tolist()
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(spe)]
    for xb, yb in _loader(data.train_set, batches, dev):
        if not torch.is_floating_point(yb):
            yb = yb.long()
        yield xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)


def _probes(
    model: nn.Module, data: Dataset, cfg: TrialConfig, epoch: int, lossf: Loss = CROSS_ENTROPY,
    at: str = "final",
) -> list[dict[str, Any]]:  # fmt: skip
    """The enabled probes at the model's weights; each row's `at` names the point
    ("final", "best", or "epoch" for a probe_every_epochs probe during training)."""
    m = cfg.measure
    if not m.probes_on:
        return []
    from workers.probes import run_probes

    x, y, bs = data.x_train, data.y_train, cfg.batch_size
    rows = run_probes(model, x, y, m, seed=cfg.seed, epoch=epoch, loss_fn=lossf.fn, batch_size=bs)
    return [{**r, "measured_at": at} for r in rows]


def end_probes(
    model: nn.Module, best_state: dict[str, Any] | None, data: Dataset, cfg: TrialConfig,
    st: dict[str, Any], lossf: Loss = CROSS_ENTROPY,
) -> list[dict[str, Any]]:  # fmt: skip
    """The end-of-training probes of measure.at: at the final weights ("final", epoch = the
    last epoch) and at the best-validation weights ("best", epoch = best_epoch; none when no
    validation was finite). The trained model is left as it is."""
    rows: list[dict[str, Any]] = []
    if "final" in cfg.measure.at:
        rows += _probes(model, data, cfg, st["epoch"], lossf, at="final")
    if "best" in cfg.measure.at and best_state is not None and st["best_epoch"] > 0:
        at_best = copy.deepcopy(model)
        at_best.load_state_dict(best_state)
        rows += _probes(at_best, data, cfg, st["best_epoch"], lossf, at="best")
        del at_best
    return rows


def _resume_state(model, opt, init, st, dev, best_state=None) -> dict[str, Any]:
    state = {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "init": [t.cpu() for t in init],
        "rng_cpu": torch.get_rng_state(),
        "state": compact_rows(st),  # row lists as columns: fast to save (workers/resume_rows.py)
    }
    if best_state is not None:
        state["best_model"] = {k: v.cpu() for k, v in best_state.items()}
    if dev.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(dev)
    return state
