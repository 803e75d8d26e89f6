"""Train one trial and measure it: the lone driver of batchlab's loop.

config -> seed/device -> data on the device -> model -> optimizer and lr schedule -> loop
(per step: update and gradient norms on the device; per epoch: one host sync for losses,
distances, early stopping) -> end-of-trial probes -> rows for the warehouse.

What a trial is and records (its running state, the epoch-end bookkeeping, its rows and
summary) is `workers/trial/`, shared with packs (workers/pack.py) and user loops
(workers/trial_api.py); this module only steps one model. No Ray here: the scheduler calls
`run_trial` inside a Ray task, a test calls it directly. A diverged trial (NaN/inf or
exploding loss) is a result with status "diverged", not an exception. With a
`CheckpointIO`, the full training state is saved at every epoch end and a re-started trial
resumes from it, bit-exactly on CPU (data order is a pure function of (seed, epoch), so only
model, optimizer and RNG states need saving).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers import perf, torch_state
from workers.budget import cap_reached
from workers.config import TrialConfig
from workers.data import Dataset, load_dataset_cached
from workers.evaluation import EVAL_BATCH, evaluate, evaluate_split, stream_batches, val_only
from workers.losses import loss_of
from workers.models import build_model
from workers.resume_rows import compact_rows, expand_rows
from workers.stepping import (
    CheckpointIO,
    epoch_permutation,
    lr_at,
    make_optimizer,
    resolve_device,
    steps_per_epoch,
)
from workers.trial.result import TrialResult
from workers.trial.rows import epoch_row, layer_rows, nan_quantiles, step_rows, summary_row
from workers.trial.state import TrialState, probe_due, saves_checkpoints, validates_in_steps
from workers.trial_api import run_user_trial
from workers.trial_measures import (
    SYSTEM_METRICS,
    end_probes,
    norm_of_diff,
    pack_member_system_metrics,
    peak_memory_mb,
    probe_rows,
    provenance,
    quantiles,
    system_metrics,
    trainable_params,
)

# Names other modules import from here (kept importable after the split of this module).
__all__ = [
    "EVAL_BATCH", "SYSTEM_METRICS", "CheckpointIO", "DistContext", "TrialResult",
    "end_probes", "epoch_permutation", "evaluate", "evaluate_split", "lr_at", "make_optimizer",
    "pack_member_system_metrics", "provenance", "resolve_device", "run_trial",
    "steps_per_epoch", "system_metrics", "train_lone",
]  # fmt: skip


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
                perf.not_applied(rec, cfg.performance, "not applied: a trainable runs its own loop")
                result = run_user_trial(cfg, dev, data_dir, checkpoints, on_epoch)
            else:
                result = train_lone(cfg, dev, data, data_dir, checkpoints, on_epoch, dist, rec)
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


class _Stop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


@dataclass
class _EpochSteps:
    """What the steps of one epoch left on the device for its end (one host sync)."""

    t_epoch: float
    losses: torch.Tensor
    upd: torch.Tensor
    gnorm: torch.Tensor
    lrs: list[float]
    done: int  # steps taken (fewer than an epoch's when stopped inside it)
    stopped: _Stop | None


def train_lone(
    cfg: TrialConfig,
    dev: torch.device,
    data: Dataset | None,
    data_dir: str | None,
    checkpoints: CheckpointIO | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    dist: DistContext | None = None,
    perf_rec: dict[str, Any] | None = None,
) -> TrialResult:
    """batchlab's loop over one model (run_trial's work, without its isolation and error
    handling: exceptions propagate)."""
    run = _LoneRun(cfg, dev, data, data_dir, checkpoints, on_epoch, dist, perf_rec)
    stop_reason = "max_epochs"
    try:
        while run.st.epoch < cfg.max_epochs:
            epoch = run.st.epoch + 1
            run.end_epoch(epoch, run.train_epoch(epoch))
    except _Stop as s:
        stop_reason = s.reason
    return run.finish(stop_reason)


_train = train_lone  # the name before the split (tests/workers/test_train.py used it)


class _LoneRun:
    """One lone trial in training: its model, optimizer, data and TrialState."""

    def __init__(
        self, cfg: TrialConfig, dev: torch.device, data: Dataset | None, data_dir: str | None,
        checkpoints: CheckpointIO | None, on_epoch: Callable[[dict[str, Any]], None] | None,
        dist: DistContext | None, perf_rec: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        self.t_start = time.perf_counter()
        self.cfg, self.dev, self.dist = cfg, dev, dist
        self.main = dist is None or dist.is_main
        self.parallel = dist is not None and dist.world_size > 1
        if not self.main:
            checkpoints = _ReadOnlyCheckpoints(checkpoints) if checkpoints is not None else None
            on_epoch = None
        self.ckpt, self.on_epoch = checkpoints, on_epoch
        self.data = data if data is not None else load_dataset_cached(cfg.dataset, dev, data_dir)
        self.lossf = loss_of(cfg)
        self.n = self.data.n_train
        self.spe = steps_per_epoch(self.n, cfg.batch_size)
        # Model init depends only on the trial seed: the same seed gives the same initial
        # weights in a pack, after a resume, and in the two trials an interpolation compares.
        torch.manual_seed(cfg.seed)
        d = self.data
        self.model = build_model(cfg.model, d.input_shape, d.num_classes).to(dev)
        named = trainable_params(self.model)
        self.names = [nm for nm, _ in named]
        self.params = [p for _, p in named]
        self.init = [p.detach().clone() for p in self.params]
        self.opt = make_optimizer(cfg, self.params)
        # Data parallel: DDP all-reduces (averages) gradients inside backward, so with equal
        # local batches every rank applies exactly the full global batch's mean gradient and
        # the weights stay identical across ranks. Metrics are computed on the raw module.
        self.net: nn.Module = self.model
        if self.parallel:
            from torch.nn.parallel import DistributedDataParallel

            ids = [dev.index] if dev.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.st = TrialState()
        # The best-validation weights, kept in memory when measure.at asks for "best".
        self.best: dict[str, torch.Tensor] | None = None
        self.want_best = "best" in cfg.measure.at
        self._resume_or_save_init()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        self.model.train()
        # The step's forward under `performance:` (channels_last, torch.compile, CUDA graphs,
        # each with its eager fallback: workers/perf.py); `net` itself when they are all off.
        rec = perf_rec if perf_rec is not None else perf.new_record(cfg.performance, dev)
        self.fwd = perf.training_forward(
            cfg.performance, rec, self.model, self.net, d.x_train, d.y_train, self.lossf,
            cfg.batch_size, self.n, dev, data_parallel=self.parallel,
        )  # fmt: skip
        self.prev_epoch_params = [p.detach().clone() for p in self.params]

    def _resume_or_save_init(self) -> None:
        if self.ckpt is None:
            return
        saved = self.ckpt.load("resume")
        if saved is None:
            if saves_checkpoints(self.cfg):
                self.ckpt.save("init", self._cpu_state())
            return
        self.best = saved.get("best_model")
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        for p, t in zip(self.init, saved["init"], strict=True):
            p.copy_(t)
        torch.set_rng_state(saved["rng_cpu"])
        if self.dev.type == "cuda" and "rng_cuda" in saved:
            torch.cuda.set_rng_state(saved["rng_cuda"], self.dev)
        self.st = TrialState.from_saved(expand_rows(saved["state"]))
        self.st.resumed_from_epoch = self.st.epoch

    def _cpu_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def validate(self, epoch: int) -> tuple[float, float, str | None]:
        """One host sync: validation loss/acc, then early-stopping, target and best-weights
        bookkeeping; returns (loss, accuracy, stop reason or None)."""
        vl, va = val_only(self.model, self.data, self.lossf)
        before = self.st.best_val
        reason = self.st.record_validation(self.cfg, vl, va, epoch)
        if self.want_best and self.st.best_val < before:
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return vl, va, reason

    def _batch(self, i: int, perm: torch.Tensor, stream) -> tuple[torch.Tensor, torch.Tensor]:
        d, dist, bs = self.data, self.dist, self.cfg.batch_size
        if stream is not None:
            xb, yb = next(stream)
            if self.parallel:
                xb, yb = xb.tensor_split(dist.world_size)[dist.rank], yb.tensor_split(dist.world_size)[dist.rank]  # fmt: skip
            return xb, yb
        idx = perm[i * bs : (i + 1) * bs]
        if self.parallel:
            idx = idx.tensor_split(dist.world_size)[dist.rank]
        return d.x_train[idx], d.y_train[idx]

    def train_epoch(self, epoch: int) -> _EpochSteps:
        """The optimizer steps of `epoch` (stopping inside it for "steps" early stopping or
        a `stop:` cap); every per-step number stays on the device."""
        cfg, dev, st, spe, params, opt = (
            self.cfg,
            self.dev,
            self.st,
            self.spe,
            self.params,
            self.opt,
        )
        t_epoch = time.perf_counter()
        perm = epoch_permutation(cfg.seed, epoch, self.n, dev)
        ep = _EpochSteps(t_epoch, torch.zeros(spe, device=dev), torch.zeros(spe, device=dev),
                         torch.zeros(spe, device=dev), [], spe, None)  # fmt: skip
        stream = (
            stream_batches(self.data, perm, cfg.batch_size, spe, dev)
            if self.data.streaming
            else None
        )
        upd_norms, val_every = cfg.measure.update_norms, validates_in_steps(cfg)
        for i in range(spe):
            xb, yb = self._batch(i, perm, stream)
            lr = lr_at(cfg, st.step, spe, st.decay)
            ep.lrs.append(lr)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = self.lossf(self.fwd(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
            )
            if cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
            if upd_norms:
                before = [p.detach().clone() for p in params]
            opt.step()
            if upd_norms:
                ep.upd[i] = norm_of_diff([p.detach() for p in params], before)[0]
            ep.losses[i] = loss.detach()
            ep.gnorm[i] = gn
            st.step += 1
            # Validation inside the epoch (patience counted in steps) costs a sync.
            if val_every and st.step % val_every == 0 and (r := self.validate(epoch)[2]):
                ep.stopped, ep.done = _Stop(r), i + 1
                break
            if cfg.stop is not None:
                seen = (epoch - 1) * self.n + min(self.n, (i + 1) * cfg.batch_size)
                t_now = st.elapsed_s + time.perf_counter() - t_epoch
                if cap := cap_reached(cfg, st.step, seen, t_now):
                    ep.stopped, ep.done = _Stop(cap), i + 1
                    break
        return ep

    def end_epoch(self, epoch: int, ep: _EpochSteps) -> None:
        """Epoch end: one host sync for the losses, divergence, distances, rows, validation
        and the stop decision (raises _Stop), then probes, on_epoch and the resume state."""
        cfg, dev, st, m, done = self.cfg, self.dev, self.st, self.cfg.measure, ep.done
        losses, upd, gnorm = ep.losses[:done], ep.upd[:done], ep.gnorm[:done]
        if self.parallel:
            # The global batch loss is the mean of the ranks' local means (equal local
            # batches); one collective per epoch. Every rank then takes the same
            # divergence and stopping decisions, so no rank waits on a finished peer.
            import torch.distributed as tdist

            tdist.all_reduce(losses)
            losses /= self.dist.world_size
        host_losses = losses.tolist()
        if st.diverged_in(host_losses, cfg.divergence_loss, done):
            raise _Stop("diverged")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_time = time.perf_counter() - ep.t_epoch
        st.elapsed_s += train_time
        row, t_eval0 = self._epoch_row(epoch, ep, losses, upd, gnorm, train_time)
        if m.store_steps:
            st.steps += step_rows(st.step - done + 1, epoch, ep.lrs,
                                  upd.tolist() if m.update_norms else None, gnorm.tolist(),
                                  host_losses)  # fmt: skip
        st.epoch = epoch
        if ep.stopped is not None:  # inside the epoch: validated already, or a cap
            row["val_loss"], row["val_acc"] = val_only(self.model, self.data, self.lossf)
            st.epochs.append(system_metrics(row, t_eval0, dev, st))
            raise ep.stopped
        reason = None
        if validates_in_steps(cfg):  # the bookkeeping already ran inside the epoch
            vl, va = val_only(self.model, self.data, self.lossf)
        else:
            vl, va, reason = self.validate(epoch)
        row["val_loss"], row["val_acc"] = vl, va
        st.epochs.append(system_metrics(row, t_eval0, dev, st))
        if (reason := st.close_epoch(cfg, row, reason)) is not None:
            raise _Stop(reason)
        if self.main and probe_due(cfg, epoch):
            t_probe = time.perf_counter()
            st.probes += probe_rows(self.model, self.data, cfg, epoch, self.lossf, at="epoch")
            row["probe_time_s"] = time.perf_counter() - t_probe
        if self.on_epoch is not None:
            self.on_epoch(row)
        if self.ckpt is not None:
            self.ckpt.save("resume", self._resume_state())

    def _epoch_row(self, epoch, ep, losses, upd, gnorm, train_time) -> tuple[dict[str, Any], float]:
        """The epoch row and layer rows (distances, norms, train-set evaluation), and when
        the evaluations began (system_metrics times them)."""
        cfg, st, m = self.cfg, self.st, self.cfg.measure
        cur = [p.detach() for p in self.params]
        d_init, dist_per = norm_of_diff(cur, self.init)
        ep_dist, _ = norm_of_diff(cur, self.prev_epoch_params)
        self.prev_epoch_params = [p.detach().clone() for p in self.params]
        train_loss, d_init, ep_dist = losses.mean().item(), d_init.item(), ep_dist.item()
        uq = quantiles(upd) if m.update_norms else nan_quantiles()
        gq = quantiles(gnorm)
        t_eval0 = time.perf_counter()
        train_eval = None
        if m.train_eval:
            tl, ta = evaluate_split(self.model, self.data, "train", self.lossf)
            train_eval = (tl.item(), ta.item())
        row = epoch_row(
            epoch=epoch, step=st.step, lr=ep.lrs[-1], train_loss=train_loss,
            dist_from_init=d_init, epoch_distance=ep_dist, epoch_time_s=train_time,
            elapsed_s=st.elapsed_s, steps_done=ep.done, batch_size=cfg.batch_size, n_train=self.n,
            update_q=uq, grad_q=gq, train_eval=train_eval,
        )  # fmt: skip
        if m.layers:
            norms0 = [torch.linalg.vector_norm(p0).item() for p0 in self.init]
            pnorms = [torch.linalg.vector_norm(p).item() for p in cur]
            numels = [p.numel() for p in cur]
            st.layers += layer_rows(epoch, self.names, numels, dist_per.tolist(), norms0, pnorms)
        return row, t_eval0

    def _resume_state(self) -> dict[str, Any]:
        state = {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "init": [t.cpu() for t in self.init],
            "rng_cpu": torch.get_rng_state(),
            # row lists as columns: fast to save (workers/resume_rows.py)
            "state": compact_rows(self.st.as_saved()),
        }
        if self.best is not None:
            state["best_model"] = {k: v.cpu() for k, v in self.best.items()}
        if self.dev.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.dev)
        return state

    def finish(self, stop_reason: str) -> TrialResult:
        """End probes and final weights of a completed trial, then the summary and result."""
        cfg, st, dev = self.cfg, self.st, self.dev
        status = "diverged" if stop_reason == "diverged" else "completed"
        if status == "completed" and self.main:
            t_probe = time.perf_counter()
            st.probes += end_probes(self.model, self.best, self.data, cfg, st, self.lossf)
            if st.epochs and st.probes:
                last = st.epochs[-1]
                last["probe_time_s"] = (
                    (last.get("probe_time_s") or 0.0) + time.perf_counter() - t_probe
                )
            if self.ckpt is not None and saves_checkpoints(cfg):
                self.ckpt.save("final", self._cpu_state())
        summary = summary_row(
            st, provenance=provenance(dev), n_train=self.n, n_val=self.data.n_val,
            steps_per_epoch=self.spe, scaled_lr=cfg.scaled_lr,
            wall_time_s=time.perf_counter() - self.t_start, peak_memory_mb=peak_memory_mb(st, dev),
        )  # fmt: skip
        return TrialResult(
            trial_id=cfg.trial_id, config_hash=cfg.config_hash, status=status,
            stop_reason=stop_reason, summary=summary, epochs=st.epochs, steps=st.steps,
            layers=st.layers, probes=st.probes,
        )  # fmt: skip
