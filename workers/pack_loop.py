"""The epochs of a pack (torch): each member's per-epoch tables, and the epoch end where
every member's numbers come to the host in one copy and go through the trial contract
(`workers/trial/`: the same TrialState bookkeeping, rows and stop decisions as a lone
trial). See workers/pack.py for the story.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from workers.config import TrialConfig
from workers.data import Dataset
from workers.pack_stack import PackStack
from workers.stepping import CheckpointIO, epoch_permutation, lr_at
from workers.trial.rows import epoch_row, layer_rows, nan_quantiles, step_rows
from workers.trial.state import TrialState, probe_due, validates_in_steps
from workers.trial_measures import pack_member_system_metrics, probe_rows, quantiles


@dataclass
class PackMember:
    """One trial of the pack: its config, its TrialState (a lone trial's) and I/O hooks."""

    cfg: TrialConfig
    st: TrialState
    ckpt: CheckpointIO | None
    opt_template: dict[str, Any]
    norms0: list[float]


class EpochPlan:
    """One epoch's per-member tables, built on the host and uploaded once: data order
    (each member's permutation of (seed, epoch), as a lone trial's), the lr schedule
    (lr_at in float64 exactly as run_trial: scaling rule, warmup, plateau decay), Adam's
    bias corrections, and the device buffer of per-step metrics."""

    def __init__(
        self,
        active: list[PackMember],
        stack: PackStack,
        epoch: int,
        n: int,
        spe: int,
        step: int,
        dev: torch.device,
    ) -> None:
        cpu = torch.device("cpu")
        perms = [epoch_permutation(m.cfg.seed, epoch, n, cpu) for m in active]
        self.perms = torch.stack(perms).to(dev)
        lrs = [[lr_at(m.cfg, m.st.step + i, spe, m.st.decay) for m in active] for i in range(spe)]
        self.lr = np.array(lrs).reshape(spe, len(active))
        step_size, self._bc2_host, self._bc2_dev = self.lr, None, None
        if stack.adam:
            # torch.optim.Adam: step_size = lr / (1 - beta1^t); denom uses sqrt(1 - beta2^t).
            t = step + 1 + np.arange(spe)[:, None]
            step_size = self.lr / (1 - np.asarray(stack.beta1)[None, :] ** t)
            self._bc2_host = np.sqrt(1 - np.asarray(stack.beta2)[None, :] ** t)
            if len(set(stack.beta2)) > 1:
                self._bc2_dev = torch.tensor(self._bc2_host, dtype=torch.float32, device=dev)
        self.neg_lr = torch.tensor(-step_size, dtype=torch.float32, device=dev)
        # rec[i] = (batch loss, gradient norm, update norm) of step i, per member.
        self.rec = torch.zeros(spe, 3, len(active), device=dev)
        # Validation intervals of the members with "steps" early stopping (by row), and
        # the distinct ones (checked every step: cheap when empty).
        self.members_val_every = [validates_in_steps(m.cfg) for m in active]
        self.val_every = sorted({k for k in self.members_val_every if k})

    def bc2(self, i: int) -> float | Tensor | None:
        """Adam's sqrt(1 - beta2^t) of step i (None for SGD)."""
        if self._bc2_host is None:
            return None
        if self._bc2_dev is not None:
            return self._bc2_dev[i].unsqueeze(1)
        return float(self._bc2_host[i, 0])  # shared beta2: a Python number, as torch.optim

    def keep(self, rows: list[int]) -> None:
        """Keep the tables of the members at `rows` only."""
        idx = torch.tensor(rows, device=self.perms.device)
        self.perms = self.perms.index_select(0, idx)
        self.neg_lr = self.neg_lr.index_select(1, idx)
        self.rec = self.rec.index_select(2, idx)
        self.lr = self.lr[:, rows]
        self.members_val_every = [self.members_val_every[r] for r in rows]
        self.val_every = sorted({k for k in self.members_val_every if k})
        if self._bc2_host is not None:
            self._bc2_host = self._bc2_host[:, rows]
        if self._bc2_dev is not None:
            self._bc2_dev = self._bc2_dev.index_select(1, idx)


def end_epoch(
    stack: PackStack,
    active: list[PackMember],
    rows: list[int],
    epoch: int,
    spe_done: int,
    t_epoch: float,
    ep: EpochPlan,
    data: Dataset,
    template: nn.Module,
    on_epoch: Callable[[str, dict[str, Any]], None] | None,
    finish: Callable[[PackMember, int | None, str], None],
    stopped: dict[int, str],
    val: tuple[list[float], list[float]] | None,
) -> list[int]:
    """Epoch-end bookkeeping of the members at `rows` after `spe_done` steps: everything
    run_trial does at an epoch end, with one synchronization and one device->host copy for
    all of them. Finished members are finished here; returns the rows that go on."""
    host, train_time = _epoch_numbers(stack, active, rows, spe_done, t_epoch, ep, data, val)
    keep: list[int] = []
    for r in rows:
        m = active[r]
        st, cfg, meas = m.st, m.cfg, m.cfg.measure
        losses = host["rec"][:, 0, r]
        if st.diverged_in(losses.tolist(), cfg.divergence_loss, spe_done):
            finish(m, None, "diverged")
            continue
        st.elapsed_s += train_time
        lrs = ep.lr[:spe_done, r].tolist()
        upd, gn = host["rec"][:, 2, r], host["rec"][:, 1, r]
        row = epoch_row(
            epoch=epoch,
            step=st.step,
            lr=lrs[-1],
            # The mean of the member's own float32 batch losses, as a lone trial takes it
            # (a mean over the (steps, P) table would sum in an order set by P).
            train_loss=torch.from_numpy(losses.astype(np.float32)).mean().item(),
            dist_from_init=float(host["dist"][r]),
            epoch_distance=float(host["ep_dist"][r]),
            epoch_time_s=train_time,
            elapsed_s=st.elapsed_s,
            steps_done=spe_done,
            batch_size=cfg.batch_size,
            n_train=data.n_train,
            update_q=quantiles(torch.from_numpy(upd.copy()))
            if meas.update_norms
            else nan_quantiles(),
            grad_q=quantiles(torch.from_numpy(gn.copy())),
            train_eval=(float(host["tl"][r]), float(host["ta"][r])) if meas.train_eval else None,
        )
        if meas.layers:
            st.layers += layer_rows(
                epoch,
                stack.net.param_names,
                stack.sizes,
                host["per"][:, r].tolist(),
                m.norms0,
                host["pnorm"][:, r].tolist(),
            )
        if meas.store_steps:
            st.steps += step_rows(
                st.step - spe_done + 1,
                epoch,
                lrs,
                upd.tolist() if meas.update_norms else None,
                gn.tolist(),
                losses.tolist(),
            )
        st.epoch = epoch
        row.update(pack_member_system_metrics())
        row["val_loss"], row["val_acc"] = float(host["vl"][r]), float(host["va"][r])
        st.epochs.append(row)
        if r in stopped:  # stopped inside the epoch ("steps" early stopping / target)
            finish(m, r, stopped[r])
            continue
        reason = None
        if not validates_in_steps(cfg):  # "steps" mode: the bookkeeping ran inside the epoch
            reason = st.record_validation(cfg, row["val_loss"], row["val_acc"], epoch)
        if (reason := st.close_epoch(cfg, row, reason)) is not None:
            finish(m, r, reason)
            continue
        if probe_due(cfg, epoch):
            model = stack.member_model(r, template)
            st.probes += probe_rows(model, data, cfg, epoch, stack.lossf, at="epoch")
        if on_epoch is not None:
            on_epoch(cfg.trial_id, row)
        if epoch >= cfg.max_epochs:
            finish(m, r, "max_epochs")
            continue
        keep.append(r)
    return keep


def _epoch_numbers(
    stack: PackStack,
    active: list[PackMember],
    rows: list[int],
    spe_done: int,
    t_epoch: float,
    ep: EpochPlan,
    data: Dataset,
    val: tuple[list[float], list[float]] | None,
) -> tuple[dict[str, np.ndarray], float]:
    """Every member's epoch-end numbers on the host (one synchronization, one copy) and the
    epoch's training time."""
    dev = stack.flat.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    train_time = time.perf_counter() - t_epoch
    with torch.no_grad():
        cur = stack.flat.detach()
        per = stack.layer_norms(cur, stack.init)  # (T, P)
        ep_per = stack.layer_norms(cur, stack.prev)
        pnorm = stack.layer_norms(cur)
        want_train_eval = any(active[r].cfg.measure.train_eval for r in rows)
        tl, ta = stack.evaluate(data.x_train, data.y_train) if want_train_eval else (None, None)
        vl, va = (None, None) if val is not None else stack.evaluate(data.x_val, data.y_val)
        parts = {
            "rec": ep.rec[:spe_done],
            "dist": torch.linalg.vector_norm(per, dim=0),
            "ep_dist": torch.linalg.vector_norm(ep_per, dim=0),
            "per": per,
            "pnorm": pnorm,
        }
        if tl is not None:
            parts["tl"], parts["ta"] = tl, ta
        if vl is not None:
            parts["vl"], parts["va"] = vl, va
        host = to_host(parts)  # the one device->host copy of the epoch
    if val is not None:
        host["vl"], host["va"] = np.asarray(val[0]), np.asarray(val[1])
    return host, train_time


def to_host(parts: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """One device->host copy for a dict of tensors (float64 on the host)."""
    flat = torch.cat([t.reshape(-1).double() for t in parts.values()]).cpu().numpy()
    out, off = {}, 0
    for k, t in parts.items():
        out[k] = flat[off : off + t.numel()].reshape(tuple(t.shape))
        off += t.numel()
    return out
