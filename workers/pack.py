"""Train a pack: many trials of one shape (data set, model, batch size, optimizer) at once.

The story mirrors `workers/train.py` (read that first); what changes is that every tensor of
the training state carries a leading member dimension P:

config -> members built one by one exactly as a lone trial builds its model (manual_seed(seed)
then build_model: a member's init equals the lone trial's) -> stacked into one flat (P, N)
parameter matrix -> loop (per step: each member's own batch, one gather; one batched forward
and backward through `workers.packnet.PackNet`; the optimizer update written over the stacked
tensors with per-member hyperparameters; nothing leaves the device) -> per epoch: one
synchronization, one device->host copy of every member's metrics, the same bookkeeping as a
lone trial per member -> finished members leave the stack -> probes per member -> rows.

Equivalence with a lone trial (tests/workers/test_pack.py): same init, same data order
(`epoch_permutation(seed, epoch)`), the same update math as torch.optim.SGD / Adam
(single-tensor code paths, mirrored op for op), so on CPU in fp32 a member's per-epoch losses
agree with `run_trial` to float rounding. What cannot be equal: dropout masks (one RNG stream
for the pack), and timings (a member's epoch_time_s / train_time_s / wall_time_s are the
pack's, since its members train simultaneously; examples_per_s counts the member's examples).

Why the update is written here: torch.optim takes one lr per parameter group, and a pack holds
one tensor per parameter for all members; per-member lr (with scaling rule, warmup and plateau
decay), momentum, nesterov, weight decay, Adam betas/eps and clipping are (P, 1) tensors, or
plain Python numbers when the whole pack shares a value (the cheap and bit-faithful case).

Independence: members never mix (PackNet only runs member-separable ops). A member that
diverges (NaN/inf) keeps computing NaN in its own rows of the stacked tensors until the epoch
ends, exactly like a lone trial (which also notices at the epoch end), and nothing it computes
reaches another member. At every epoch end (and at a mid-epoch early stop in "steps" mode)
finished members are dropped from the stack, so they stop costing compute.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import stack_module_state

from workers import perf, torch_state
from workers.config import TrialConfig
from workers.data import Dataset, load_dataset_cached
from workers.losses import Loss, loss_of
from workers.models import build_model
from workers.packnet import PackNet, PackUnsupported, VmapNet, make_pack_net
from workers.resume_rows import compact_rows, expand_rows
from workers.train import (
    EVAL_BATCH,
    CheckpointIO,
    TrialResult,
    _quantiles,
    epoch_permutation,
    lr_at,
    make_optimizer,
    pack_member_system_metrics,
    provenance,
    record_validation,
    resolve_device,
    steps_per_epoch,
)

__all__ = ["PackUnsupported", "measure_member_bytes", "pack_problem", "run_pack"]

# Evaluation runs EVAL_BATCH example-forwards per call, split across the members (P models on
# 4096 examples each would not fit): its memory does not grow with P, so the measured
# per-member bytes (measure_member_bytes) are training bytes.
EVAL_MIN_EXAMPLES = 16  # per member and call


def pack_problem(cfgs: Sequence[TrialConfig]) -> str | None:
    """Why these trials cannot train as one pack, or None when they can."""
    if not cfgs:
        return "a pack needs at least one trial"
    keys = {c.shape_key() for c in cfgs}
    if len(keys) > 1:
        return (
            f"trials of one pack must share TrialConfig.shape_key() (dataset, model, batch_size, "
            f"optimizer), got {len(keys)} different keys"
        )
    if len({c.trial_id for c in cfgs}) != len(cfgs):
        return "a pack holds each trial once (duplicate trial ids)"
    return None


# ============================================================================ stacked state


def _uniform_or_tensor(values: Sequence[float], dev: torch.device) -> float | Tensor:
    """A Python number when every member shares it (the op is then exactly torch.optim's),
    else a (P, 1) float32 tensor that broadcasts over each member's row."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=torch.float32, device=dev).unsqueeze(1)


class _Stack:
    """The training state of the active members, row i = member i.

    flat (P, N): every trainable parameter, flattened and concatenated in `named_parameters`
    order; `views` are leaf tensors (requiring grad) viewing it in each parameter's shape,
    which is what PackNet multiplies with. Optimizer states, init and the previous epoch's
    parameters are (P, N) as well, so an update is a handful of kernels whatever the number
    of layers. BatchNorm buffers stay separate stacked tensors (PackNet updates them).
    """

    def __init__(
        self, net: PackNet | VmapNet, cfgs: list[TrialConfig], flat: Tensor, buffers: list[Tensor]
    ):
        self.net, self.cfgs = net, cfgs
        self.lossf: Loss = loss_of(cfgs[0])  # shared: the loss is part of the shape key
        self.sizes = [math.prod(s) for s in net.param_shapes]
        self.flat = flat
        self.buffers = buffers
        self.grad = torch.zeros_like(flat)
        self.init = flat.clone()
        self.prev = flat.clone()
        self.state: dict[str, Tensor] = {}
        self._views()
        self._hyper()

    def _views(self) -> None:
        P = self.flat.shape[0]
        self.views, self.grad_views, off = [], [], 0
        for size, shape in zip(self.sizes, self.net.param_shapes, strict=True):
            v = self.flat[:, off : off + size].view(P, *shape)
            self.views.append(v.requires_grad_(True))
            self.grad_views.append(self.grad[:, off : off + size].view(P, *shape))
            off += size
        # The step's (P, N) scratch: a fresh tensor of this size each step costs a page-faulting
        # allocation (glibc mmaps every block this large) per step on CPU.
        self.scratch = torch.empty_like(self.flat)

    def _hyper(self) -> None:
        dev, opts = self.flat.device, [c.optimizer for c in self.cfgs]
        self.adam = opts[0].name == "adam"
        self.wd = _uniform_or_tensor([o.weight_decay for o in opts], dev)
        self.momentum = _uniform_or_tensor([o.momentum for o in opts], dev)
        self.any_momentum = any(o.momentum != 0 for o in opts)
        nest = [o.nesterov for o in opts]
        self.nesterov: bool | Tensor = (
            nest[0] if all(n == nest[0] for n in nest)
            else torch.tensor(nest, device=dev).unsqueeze(1)
        )  # fmt: skip
        self.beta1 = [o.betas[0] for o in opts]
        self.beta2 = [o.betas[1] for o in opts]
        self.one_minus_beta1 = _uniform_or_tensor([1 - b for b in self.beta1], dev)
        self.beta2_t = _uniform_or_tensor(self.beta2, dev)
        self.one_minus_beta2 = _uniform_or_tensor([1 - b for b in self.beta2], dev)
        self.eps = _uniform_or_tensor([o.eps for o in opts], dev)
        clip = [c.grad_clip_norm for c in self.cfgs]
        self.clip = None
        if any(c is not None for c in clip):
            self.clip = (
                torch.tensor([c or 0.0 for c in clip], device=dev).unsqueeze(1),
                torch.tensor([c is not None for c in clip], device=dev).unsqueeze(1),
            )

    @property
    def size(self) -> int:
        return self.flat.shape[0]

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in `rows` (finished ones stop costing compute)."""
        idx = torch.tensor(rows, device=self.flat.device)
        self.cfgs = [self.cfgs[i] for i in rows]
        self.flat = self.flat.detach().index_select(0, idx)
        self.grad = self.grad.index_select(0, idx)
        self.init = self.init.index_select(0, idx)
        self.prev = self.prev.index_select(0, idx)
        self.buffers = [b.index_select(0, idx) for b in self.buffers]
        self.state = {k: v.index_select(0, idx) for k, v in self.state.items()}
        self._views()
        self._hyper()

    # ------------------------------------------------------------------ one step
    def step(
        self, x: Tensor, y: Tensor, neg_lr: Tensor, bc2: float | Tensor | None, upd_norms: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Forward, backward and update of every member on its batch; returns per-member
        (mean batch loss, gradient norm before clipping, ||theta_new - theta_old|| or None).

        neg_lr (P, 1): -lr for SGD, -lr / (1 - beta1^t) for Adam (torch.optim's step_size);
        bc2: Adam's sqrt(1 - beta2^t) (a number, or (P, 1) when members' beta2 differ).
        """
        P = self.size
        logits = self.net.forward(self.views, self.buffers, x, training=True)
        if self.lossf.is_default:
            k = logits.shape[-1]
            loss = F.cross_entropy(logits.reshape(-1, k), y.reshape(-1), reduction="none")
            loss = loss.view(P, -1).mean(1)
        else:  # any other loss, member by member (each call is that member's batch mean)
            loss = torch.stack([self.lossf(logits[p], y[p]) for p in range(P)])
        # d(sum of member losses)/d(member p's params) = d(loss_p)/d(params_p): members are
        # separable, so one backward gives every member its own gradient.
        grads = torch.autograd.grad(loss.sum(), self.views)
        with torch.no_grad():
            for gv, gr in zip(self.grad_views, grads, strict=True):
                gv.copy_(gr)  # contiguous copies (PackNet's weight gradients are)
            del grads
            g = self.grad
            gnorm = torch.linalg.vector_norm(g, dim=1)
            if self.clip is not None:
                # torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), clamped to 1;
                # members without clipping multiply by exactly 1.
                max_norm, has = self.clip
                coef = (max_norm / (gnorm.unsqueeze(1) + 1e-6)).clamp(max=1.0)
                g.mul_(torch.where(has, coef, torch.ones_like(coef)))
            d = self._direction(g, bc2)
            if upd_norms:
                # ||theta_new - theta_old|| as run_trial measures it (the difference of the
                # rounded parameters), with no (P, N) allocation: scratch = new, flat =
                # old - new in place (the same norm), then flat = new.
                s = self.scratch
                if self.adam:
                    torch.mul(d[0], neg_lr, out=s)
                    torch.addcdiv(self.flat, s, d[1], out=s)
                else:
                    torch.addcmul(self.flat, neg_lr, d, out=s)
                upd = torch.linalg.vector_norm(self.flat.sub_(s), dim=1)
                self.flat.copy_(s)
            else:
                if self.adam:
                    self.flat.addcdiv_(neg_lr * d[0], d[1])
                else:
                    self.flat.addcmul_(neg_lr, d)
                upd = None
        return loss.detach(), gnorm, upd

    def _direction(self, g: Tensor, bc2: float | Tensor | None):
        """The update direction, op for op as torch.optim's single-tensor SGD / Adam."""
        p = self.flat
        if isinstance(self.wd, Tensor):
            g = torch.addcmul(g, self.wd, p)
        elif self.wd != 0:
            g = g.add(p, alpha=self.wd)
        if self.adam:
            if "exp_avg" not in self.state:
                self.state["exp_avg"] = torch.zeros_like(p)
                self.state["exp_avg_sq"] = torch.zeros_like(p)
            m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
            m.lerp_(g, self.one_minus_beta1)
            if isinstance(self.one_minus_beta2, Tensor):
                v.mul_(self.beta2_t).addcmul_(g, g * self.one_minus_beta2)
            else:
                v.mul_(self.beta2_t).addcmul_(g, g, value=self.one_minus_beta2)
            denom = (v.sqrt() / bc2).add_(self.eps)
            return m, denom
        if not self.any_momentum:
            return g
        if "momentum_buffer" not in self.state:
            # torch.optim starts the buffer as a copy of the first direction; 0 * m + d is d.
            self.state["momentum_buffer"] = torch.zeros_like(p)
        buf = self.state["momentum_buffer"]
        buf.mul_(self.momentum).add_(g)
        if self.nesterov is False:
            return buf
        if isinstance(self.momentum, Tensor):
            nest = torch.addcmul(g, self.momentum, buf)
        else:
            nest = g.add(buf, alpha=self.momentum)
        return nest if self.nesterov is True else torch.where(self.nesterov, nest, buf)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of every member over a whole split, eval mode: (P,) device
        tensors. Forwards run on max(EVAL_MIN_EXAMPLES, EVAL_BATCH // P) examples per member
        (memory that does not grow with P), but the sums run over blocks of EVAL_BATCH
        examples whatever P is: a member's numbers do not depend on its pack (issue 24)."""
        P, n = self.size, x.shape[0]
        sub = max(EVAL_MIN_EXAMPLES, EVAL_BATCH // P)
        loss_sum = torch.zeros(P, device=x.device, dtype=torch.float64)
        correct = torch.zeros(P, device=x.device, dtype=torch.float64)
        for b in range(0, n, EVAL_BATCH):
            xb, yb = x[b : b + EVAL_BATCH], y[b : b + EVAL_BATCH]
            parts = []
            for i in range(0, xb.shape[0], sub):
                xs = self.net.broadcast(xb[i : i + sub], P)
                logits = self.net.forward(self.views, self.buffers, xs, False).float()
                if self.lossf.is_default:
                    yy = yb[i : i + sub].unsqueeze(0).expand(P, -1)
                    ce = F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), yy.reshape(-1), reduction="none"
                    )
                    parts.append(ce.view(P, -1))
                    correct += (logits.argmax(-1) == yy).sum(1)
                else:
                    parts.append(logits)
            block = torch.cat(parts, dim=1)
            if self.lossf.is_default:
                loss_sum += block.double().sum(1)
                continue
            for p in range(P):  # the loss is a batch mean: one call per member and block
                loss_sum[p] += self.lossf(block[p], yb).double() * xb.shape[0]
                c = self.lossf.correct(block[p], yb)
                correct[p] += c if c is not None else math.nan
        return (loss_sum / n).float(), (correct / n).float()

    # ------------------------------------------------------------------ per-member views
    def layer_norms(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        """(T, P): per-parameter-tensor norms of a - b (or of a), member by member."""
        out, off = [], 0
        for size in self.sizes:
            seg = (
                a[:, off : off + size]
                if b is None
                else a[:, off : off + size] - b[:, off : off + size]
            )
            out.append(torch.linalg.vector_norm(seg, dim=1))
            off += size
        return torch.stack(out)

    def member_state_dict(self, row: int, template: nn.Module) -> dict[str, Tensor]:
        """Member `row`'s weights as the state_dict of a lone model (CPU tensors)."""
        p = {n: v[row] for n, v in zip(self.net.param_names, self.views, strict=True)}
        b = {n: v[row] for n, v in zip(self.net.buffer_names, self.buffers, strict=True)}
        return {k: (p[k] if k in p else b[k]).detach().cpu().clone() for k in template.state_dict()}

    def member_model(self, row: int, template: nn.Module) -> nn.Module:
        """A lone nn.Module holding member `row`'s current weights (for the probes)."""
        model = copy.deepcopy(template)
        with torch.no_grad():
            for (_, p), v in zip(model.named_parameters(), self.views, strict=True):
                p.copy_(v[row])
            for (_, b), v in zip(model.named_buffers(), self.buffers, strict=True):
                b.copy_(v[row])
        return model.train()

    def member_optimizer_state(self, row: int, template: dict[str, Any], step: int) -> dict:
        """Member `row`'s optimizer state in torch.optim's state_dict format (a lone trial
        can load it, and so can a pack)."""
        state: dict[int, dict[str, Tensor]] = {}
        pieces = {k: torch.split(v[row].detach().cpu(), self.sizes) for k, v in self.state.items()}
        for i, shape in enumerate(self.net.param_shapes):
            if self.adam and pieces:
                state[i] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": pieces["exp_avg"][i].reshape(shape).clone(),
                    "exp_avg_sq": pieces["exp_avg_sq"][i].reshape(shape).clone(),
                }
            elif "momentum_buffer" in pieces and self.cfgs[row].optimizer.momentum != 0:
                state[i] = {"momentum_buffer": pieces["momentum_buffer"][i].reshape(shape).clone()}
        return {"state": state, "param_groups": copy.deepcopy(template["param_groups"])}


# ============================================================================ per-member story


@dataclass
class _Member:
    """One trial of the pack: its config, lone-trial bookkeeping `st` and I/O hooks."""

    cfg: TrialConfig
    st: dict[str, Any]
    ckpt: CheckpointIO | None
    opt_template: dict[str, Any]
    norms0: list[float]

    @property
    def es_steps(self) -> int:
        es = self.cfg.early_stopping
        return es.eval_every_steps if (es is not None and es.unit == "steps") else 0


def _new_state() -> dict[str, Any]:
    # The keys and meaning of workers.train._train's `st`, so rows and resume states match.
    return {
        "epoch": 0, "step": 0, "decay": 1.0, "decays": 0, "best_val": math.inf,
        "best_epoch": -1, "best_step": -1, "best_acc": 0.0, "since_best": 0, "plateau": 0,
        "elapsed_s": 0.0, "steps_to_target": -1, "diverged_step": -1,
        "epochs": [], "steps": [], "layers": [], "probes": [],
    }  # fmt: skip


def _validate(m: _Member, vl: float, va: float, epoch: int) -> str | None:
    """workers.train's validation bookkeeping for one member (the same function)."""
    return record_validation(m.cfg, m.st, vl, va, epoch)


def _probe_rows(model: nn.Module, data: Dataset, cfg: TrialConfig, epoch: int) -> list[dict]:
    m = cfg.measure
    if not m.probes_on:
        return []
    from workers.probes import run_probes

    x, y, fn = data.x_train, data.y_train, loss_of(cfg).fn
    return run_probes(
        model, x, y, m, seed=cfg.seed, epoch=epoch, loss_fn=fn, batch_size=cfg.batch_size
    )


def run_pack(
    cfgs: Sequence[TrialConfig],
    *,
    device: str | None = None,
    data: Dataset | None = None,
    data_dir: str | None = None,
    checkpoints: Sequence[CheckpointIO | None] | None = None,
    on_epoch: Callable[[str, dict[str, Any]], None] | None = None,
    on_done: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Train and measure the trials `cfgs` as one pack; one TrialResult per trial, in order.

    Like `run_trial`, never raises for a training failure: a diverged member gets status
    "diverged"; any other exception makes every unfinished member "failed" with the
    traceback. torch.cuda.OutOfMemoryError is re-raised (the scheduler splits the pack).
    `checkpoints[i]` is member i's CheckpointIO (init/final weights and per-epoch resume
    states in the lone trial's format); `on_epoch(trial_id, row)` runs after each member's
    epoch, `on_done(result)` as soon as a member is finished (before the pack ends).
    """
    cfgs = list(cfgs)
    if (problem := pack_problem(cfgs)) is not None:
        raise ValueError(f"run_pack: {problem}")
    dev = resolve_device(device)
    results: dict[str, TrialResult] = {}
    # One execution for the whole pack (the performance settings are part of the shape key):
    # TF32 / cuDNN flags for the pack's duration, its record in every member's perf_json.
    with torch_state.isolated() as ts, perf.applied(cfgs[0].performance, dev) as rec:
        rec["torch_threads"] = ts["torch_threads"]

        def done(r: TrialResult) -> None:
            r.summary["perf_json"] = perf.to_json(rec)
            results[r.trial_id] = r
            if on_done is not None:
                on_done(r)

        try:
            for c in cfgs:
                c.check_scaled_lr()  # a non-finite lr is bad input (failed), not a divergence
            _train_pack(cfgs, dev, data, data_dir, checkpoints, on_epoch, done, rec)
        except Exception as exc:  # recorded as data, the grid goes on
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            tb = traceback.format_exc()
            for c in cfgs:
                if c.trial_id not in results:
                    done(TrialResult(
                        trial_id=c.trial_id, config_hash=c.config_hash, status="failed",
                        stop_reason="error", summary={**provenance(dev)}, error=tb,
                    ))  # fmt: skip
    return [results[c.trial_id] for c in cfgs]


def _train_pack(
    cfgs: list[TrialConfig],
    dev: torch.device,
    data: Dataset | None,
    data_dir: str | None,
    checkpoints: Sequence[CheckpointIO | None] | None,
    on_epoch: Callable[[str, dict[str, Any]], None] | None,
    done: Callable[[TrialResult], None],
    perf_rec: dict[str, Any] | None = None,
) -> None:
    t_start = time.perf_counter()
    c0 = cfgs[0]
    data = data if data is not None else load_dataset_cached(c0.dataset, dev, data_dir)
    n, B = data.n_train, c0.batch_size
    spe = steps_per_epoch(n, B)
    ckpts = list(checkpoints) if checkpoints is not None else [None] * len(cfgs)

    # ---- members: each built exactly as run_trial builds it (same seed -> same init) ----
    lone_models = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        lone_models.append(build_model(cfg.model, data.input_shape, data.num_classes))
    template = copy.deepcopy(lone_models[0]).to(dev)
    net = make_pack_net(template)
    rec = perf_rec if perf_rec is not None else perf.new_record(c0.performance, dev)
    perf.prepare_pack(c0.performance, rec, net)  # channels_last; the rest is recorded
    params, buffers = stack_module_state(lone_models)
    P = len(cfgs)
    flat = torch.cat([params[k].detach().reshape(P, -1) for k in net.param_names], dim=1).to(dev)
    stack = _Stack(net, list(cfgs), flat, [buffers[k].to(dev) for k in net.buffer_names])
    members = []
    for cfg, model, io in zip(cfgs, lone_models, ckpts, strict=True):
        opt = make_optimizer(cfg, [p for p in model.parameters()])
        norms0 = [torch.linalg.vector_norm(p.detach()).item() for p in model.parameters()]
        members.append(_Member(cfg, _new_state(), io, opt.state_dict(), norms0))

    # ---- resume: every member must be at the same epoch (pack_tasks groups them so) ----
    saved = [m.ckpt.load("resume") if m.ckpt is not None else None for m in members]
    if any(s is not None for s in saved):
        epochs = {s["state"]["epoch"] if s is not None else 0 for s in saved}
        if len(epochs) > 1:
            raise ValueError(f"run_pack: members resume from different epochs {sorted(epochs)}")
        _load_resume(stack, members, saved, dev)
    else:
        for m, model in zip(members, lone_models, strict=True):
            if m.ckpt is not None and m.cfg.measure.checkpoints:
                m.ckpt.save("init", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    del lone_models, params, buffers

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    active = members  # row i of `stack` is active[i]
    epoch = active[0].st["epoch"]
    want_upd = any(m.cfg.measure.update_norms for m in members)

    def finish(m: _Member, row: int | None, reason: str) -> None:
        """A member's end: probes and final weights (completed only), summary, result."""
        st, cfg = m.st, m.cfg
        status = "diverged" if reason == "diverged" else "completed"
        if status == "completed" and row is not None:
            model = stack.member_model(row, template)
            st["probes"] += _probe_rows(model, data, cfg, st["epoch"])
            if m.ckpt is not None and cfg.measure.checkpoints:
                m.ckpt.save("final", stack.member_state_dict(row, template))
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else math.nan
        last = st["epochs"][-1] if st["epochs"] else None
        summary = {
            **provenance(dev),
            "n_train": n, "n_val": data.n_val, "steps_per_epoch": spe,
            "epochs_run": st["epoch"], "steps_run": st["step"],
            "best_val_loss": st["best_val"] if math.isfinite(st["best_val"]) else math.nan,
            "best_val_acc": st["best_acc"], "best_epoch": st["best_epoch"],
            "best_step": st["best_step"], "steps_to_target": st["steps_to_target"],
            "diverged_step": st["diverged_step"],
            "final_train_loss": last["train_loss_eval"] if last else math.nan,
            "final_val_loss": last["val_loss"] if last else math.nan,
            "final_dist_from_init": last["dist_from_init"] if last else math.nan,
            "train_time_s": st["elapsed_s"], "wall_time_s": time.perf_counter() - t_start,
            "peak_memory_mb": peak_mb, "resumed_from_epoch": st.get("resumed_from_epoch", 0),
            "scaled_lr": cfg.scaled_lr,
        }  # fmt: skip
        done(TrialResult(
            trial_id=cfg.trial_id, config_hash=cfg.config_hash, status=status,
            stop_reason=reason, summary=summary, epochs=st["epochs"], steps=st["steps"],
            layers=st["layers"], probes=st["probes"],
        ))  # fmt: skip

    # Every active member has taken the same number of optimizer steps (they start, resume
    # and step together): one counter, written into each member's `st` when it is read.
    step = active[0].st["step"]

    def sync_steps() -> None:
        for m in active:
            m.st["step"] = step

    while active:
        epoch += 1
        t_epoch = time.perf_counter()
        ep = _EpochPlan(active, stack, epoch, n, spe, step, dev)
        i = 0
        while i < spe and active:
            idx = ep.perms[:, i * B : (i + 1) * B]
            loss, gnorm, upd = stack.step(
                net.gather(data.x_train, idx), data.y_train[idx], ep.neg_lr[i].unsqueeze(1),
                ep.bc2(i), want_upd,
            )  # fmt: skip
            torch.stack([loss, gnorm, upd if upd is not None else gnorm], out=ep.rec[i])
            step += 1
            i += 1
            # "steps" early stopping validates inside the epoch (a host sync, as in run_trial).
            if not ep.val_every or not any(step % k == 0 for k in ep.val_every):
                continue
            sync_steps()
            due = [r for r, k in enumerate(ep.members_val_every) if k and step % k == 0]
            vl, va = (t.tolist() for t in stack.evaluate(data.x_val, data.y_val))
            stops = {r: s for r in due if (s := _validate(active[r], vl[r], va[r], epoch))}
            if stops:
                _end_epoch(
                    stack, active, list(stops), epoch, i, t_epoch, ep, data, template,
                    on_epoch, finish, stopped=stops, val=(vl, va),
                )  # fmt: skip
                rows = [r for r in range(len(active)) if r not in stops]
                active = [active[r] for r in rows]
                if active:
                    stack.keep(rows)
                    ep.keep(rows)
        if not active:
            break
        # ---- epoch end of the members still training ----
        sync_steps()
        rows = _end_epoch(
            stack, active, list(range(len(active))), epoch, spe, t_epoch, ep, data, template,
            on_epoch, finish, stopped={}, val=None,
        )  # fmt: skip
        for r in rows:
            m = active[r]
            if m.ckpt is not None:
                m.ckpt.save("resume", _resume_state(stack, r, m, template, dev))
        if len(rows) < len(active):
            active = [active[r] for r in rows]
            if active:
                stack.keep(rows)
        stack.prev.copy_(stack.flat)


class _EpochPlan:
    """One epoch's per-member tables, built on the host and uploaded once: data order
    (each member's permutation of (seed, epoch), as a lone trial's), the lr schedule
    (lr_at in float64 exactly as run_trial: scaling rule, warmup, plateau decay), Adam's
    bias corrections, and the device buffer of per-step metrics."""

    def __init__(self, active, stack, epoch, n, spe, step, dev):
        cpu = torch.device("cpu")
        perms = [epoch_permutation(m.cfg.seed, epoch, n, cpu) for m in active]
        self.perms = torch.stack(perms).to(dev)
        lrs = [
            [lr_at(m.cfg, m.st["step"] + i, spe, m.st["decay"]) for m in active] for i in range(spe)
        ]
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
        self.members_val_every = [m.es_steps for m in active]
        self.val_every = sorted({k for k in self.members_val_every if k})

    def bc2(self, i: int) -> float | Tensor | None:
        if self._bc2_host is None:
            return None
        if self._bc2_dev is not None:
            return self._bc2_dev[i].unsqueeze(1)
        return float(self._bc2_host[i, 0])  # shared beta2: a Python number, as torch.optim

    def keep(self, rows: list[int]) -> None:
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


def _end_epoch(
    stack: _Stack,
    active: list[_Member],
    rows: list[int],
    epoch: int,
    spe_done: int,
    t_epoch: float,
    ep: _EpochPlan,
    data: Dataset,
    template: nn.Module,
    on_epoch: Callable[[str, dict[str, Any]], None] | None,
    finish: Callable[[_Member, int | None, str], None],
    stopped: dict[int, str],
    val: tuple[list[float], list[float]] | None,
) -> list[int]:
    """Epoch-end bookkeeping of the members at `rows` after `spe_done` steps: everything
    run_trial does at an epoch end, with one synchronization and one device->host copy for
    all of them. Finished members are finished here; returns the rows that go on."""
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
        host = _to_host(parts)  # the one device->host copy of the epoch
    if val is not None:
        host["vl"], host["va"] = np.asarray(val[0]), np.asarray(val[1])
    keep: list[int] = []
    for r in rows:
        m = active[r]
        st, cfg, meas = m.st, m.cfg, m.cfg.measure
        losses = host["rec"][:, 0, r]
        bad = ~np.isfinite(losses) | (losses > cfg.divergence_loss)
        if bad.any():
            st["diverged_step"] = st["step"] - spe_done + int(np.argmax(bad)) + 1
            finish(m, None, "diverged")
            continue
        st["elapsed_s"] += train_time
        lrs = ep.lr[:spe_done, r].tolist()
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": st["step"],
            "lr": lrs[-1],
            # The mean of the member's own float32 batch losses, as a lone trial takes it
            # (a mean over the (steps, P) table would sum in an order set by P).
            "train_loss": torch.from_numpy(losses.astype(np.float32)).mean().item(),
            "dist_from_init": float(host["dist"][r]),
            "epoch_distance": float(host["ep_dist"][r]),
            "epoch_time_s": train_time,
            "elapsed_s": st["elapsed_s"],
            "examples_per_s": spe_done * cfg.batch_size / train_time
            if train_time > 0
            else math.nan,
            "examples_seen": (epoch - 1) * data.n_train
            + min(data.n_train, spe_done * cfg.batch_size),
        }
        upd_t = torch.from_numpy(host["rec"][:, 2, r].copy())
        gn_t = torch.from_numpy(host["rec"][:, 1, r].copy())
        uq = _quantiles(upd_t) if meas.update_norms else _quantiles(torch.empty(0))
        row.update({f"update_norm_{k}": v for k, v in uq.items()})
        row.update({f"grad_norm_{k}": v for k, v in _quantiles(gn_t).items()})
        if meas.train_eval:
            row["train_loss_eval"], row["train_acc_eval"] = (
                float(host["tl"][r]),
                float(host["ta"][r]),
            )
        else:
            row["train_loss_eval"], row["train_acc_eval"] = math.nan, math.nan
        if meas.layers:
            for j, nm in enumerate(stack.net.param_names):
                d = float(host["per"][j, r])
                st["layers"].append({
                    "epoch": epoch, "layer": nm, "numel": stack.sizes[j], "dist_from_init": d,
                    "rel_dist_from_init": d / max(m.norms0[j], 1e-12),
                    "param_norm": float(host["pnorm"][j, r]),
                })  # fmt: skip
        if meas.store_steps:
            first_step = st["step"] - spe_done + 1
            upd_l, gn_l, bl_l = host["rec"][:, 2, r], host["rec"][:, 1, r], losses
            for j in range(spe_done):
                st["steps"].append({
                    "step": first_step + j, "epoch": epoch, "lr": lrs[j],
                    "update_norm": float(upd_l[j]) if meas.update_norms else math.nan,
                    "grad_norm": float(gn_l[j]), "batch_loss": float(bl_l[j]),
                })  # fmt: skip
        st["epoch"] = epoch
        row.update(pack_member_system_metrics())
        v_loss, v_acc = float(host["vl"][r]), float(host["va"][r])
        row["val_loss"], row["val_acc"] = v_loss, v_acc
        if r in stopped:  # stopped inside the epoch ("steps" early stopping / target)
            st["epochs"].append(row)
            finish(m, r, stopped[r])
            continue
        es = cfg.early_stopping
        reason = None if (es and es.unit == "steps") else _validate(m, v_loss, v_acc, epoch)
        st["epochs"].append(row)
        if reason is not None:
            finish(m, r, reason)
            continue
        if not math.isfinite(v_loss):
            st["diverged_step"] = st["step"]
            finish(m, r, "diverged")
            continue
        if cfg.plateau_decay is not None:
            pd = cfg.plateau_decay
            if st["plateau"] >= pd.patience and st["decays"] < pd.max_decays:
                st["decay"] *= pd.factor
                st["decays"] += 1
                st["plateau"] = 0
        if (
            meas.probe_every_epochs
            and epoch % meas.probe_every_epochs == 0
            and epoch < cfg.max_epochs
        ):
            st["probes"] += _probe_rows(stack.member_model(r, template), data, cfg, epoch)
        if on_epoch is not None:
            on_epoch(cfg.trial_id, row)
        if epoch >= cfg.max_epochs:
            finish(m, r, "max_epochs")
            continue
        keep.append(r)
    return keep


def _to_host(parts: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """One device->host copy for a dict of tensors (float64 on the host)."""
    flat = torch.cat([t.reshape(-1).double() for t in parts.values()]).cpu().numpy()
    out, off = {}, 0
    for k, t in parts.items():
        out[k] = flat[off : off + t.numel()].reshape(tuple(t.shape))
        off += t.numel()
    return out


# ============================================================================ resume


def _resume_state(
    stack: _Stack, row: int, m: _Member, template: nn.Module, dev: torch.device
) -> dict[str, Any]:
    """Member `row`'s resume state in run_trial's format (either path can resume it)."""
    state = {
        "model": stack.member_state_dict(row, template),
        "optimizer": stack.member_optimizer_state(row, m.opt_template, m.st["step"]),
        "init": [t.reshape(s).cpu().clone() for t, s in zip(
            torch.split(stack.init[row], stack.sizes), stack.net.param_shapes, strict=True)],
        "rng_cpu": torch.get_rng_state(),
        "state": compact_rows(m.st),  # row lists as columns (workers/resume_rows.py)
    }  # fmt: skip
    if dev.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _load_resume(
    stack: _Stack, members: list[_Member], saved: list[dict | None], dev: torch.device
) -> None:
    """Load every member's resume state (run_trial's format) into the stack."""
    names = stack.net.param_names
    with torch.no_grad():
        for r, (m, s) in enumerate(zip(members, saved, strict=True)):
            if s is None:
                raise ValueError(f"run_pack: member {m.cfg.trial_id} has no resume state")
            stack.flat[r] = torch.cat([s["model"][k].reshape(-1) for k in names]).to(dev)
            stack.init[r] = torch.cat([t.reshape(-1) for t in s["init"]]).to(dev)
            for b, k in zip(stack.buffers, stack.net.buffer_names, strict=True):
                b[r] = s["model"][k].to(dev)
            opt_state = s["optimizer"]["state"]
            for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                if key in opt_state.get(0, {}):
                    buf = stack.state.setdefault(key, torch.zeros_like(stack.flat))
                    buf[r] = torch.cat(
                        [opt_state[i][key].reshape(-1) for i in range(len(names))]
                    ).to(dev)
            m.st.update(expand_rows(s["state"]))
            m.st["resumed_from_epoch"] = m.st["epoch"]
        stack.prev = stack.flat.clone()
    torch.set_rng_state(saved[0]["rng_cpu"])
    if dev.type == "cuda" and "rng_cuda" in saved[0]:
        torch.cuda.set_rng_state(saved[0]["rng_cuda"], dev)


# ============================================================================ memory


def measure_member_bytes(
    cfg: TrialConfig, data: Dataset, device: str | torch.device = "cuda"
) -> tuple[int, int]:
    """(bytes per member, fixed bytes) of a pack of `cfg`'s shape, measured on `device`:
    one training step and one evaluation chunk of packs of 1 and 2 members, peak allocated
    memory of each (CUDA only; data already on the device is not counted)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"measure_member_bytes: device {dev} is not a CUDA device")
    peaks = []
    for p in (1, 2):
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        model = build_model(cfg.model, data.input_shape, data.num_classes).to(dev)
        net = make_pack_net(model)
        params, buffers = stack_module_state([copy.deepcopy(model) for _ in range(p)])
        flat = torch.cat([params[k].detach().reshape(p, -1) for k in net.param_names], 1).to(dev)
        stack = _Stack(net, [cfg] * p, flat, [buffers[k].to(dev) for k in net.buffer_names])
        b = min(cfg.batch_size, data.n_train)
        idx = torch.arange(b, device=dev).unsqueeze(0).expand(p, b)
        neg_lr = torch.full((p, 1), -1e-9, device=dev)
        bc2 = 1.0 if stack.adam else None
        for _ in range(2):  # the second step holds the optimizer state too
            stack.step(net.gather(data.x_train, idx), data.y_train[idx], neg_lr, bc2, True)
        chunk = max(EVAL_MIN_EXAMPLES, EVAL_BATCH // p)
        stack.evaluate(data.x_val[:chunk], data.y_val[:chunk])
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        del stack, flat, params, buffers, model, net
    per = max(1, peaks[1] - peaks[0])
    return per, max(0, peaks[0] - per)
