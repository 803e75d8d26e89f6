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

The pieces: `workers/pack_stack.py` (the stacked state, its step and evaluation: why the
update is written there), `workers/pack_loop.py` (the epoch tables and the epoch end, through
the trial contract `workers/trial/` that lone and user-loop trials share),
`workers/pack_resume.py` (resume states in the lone trial's format), `workers/pack_memory.py`
(a member's memory on CUDA). This module: which trials may pack, and the pack's loop.

Independence: members never mix (PackNet only runs member-separable ops). A member that
diverges (NaN/inf) keeps computing NaN in its own rows of the stacked tensors until the epoch
ends, exactly like a lone trial (which also notices at the epoch end), and nothing it computes
reaches another member. At every epoch end (and at a mid-epoch early stop in "steps" mode)
finished members are dropped from the stack, so they stop costing compute.
"""

from __future__ import annotations

import copy
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import stack_module_state

from workers import perf, torch_state
from workers.config import TrialConfig
from workers.data import Dataset, load_dataset_cached
from workers.models import build_model
from workers.pack_loop import EpochPlan, PackMember, end_epoch
from workers.pack_memory import measure_member_bytes
from workers.pack_resume import load_resume, member_resume_state
from workers.pack_stack import PackStack
from workers.packnet import PackUnsupported, make_pack_net
from workers.stepping import CheckpointIO, make_optimizer, resolve_device, steps_per_epoch
from workers.trial.result import TrialResult
from workers.trial.rows import summary_row
from workers.trial.state import TrialState, saves_checkpoints
from workers.trial_measures import end_probes, peak_memory_mb, provenance

__all__ = ["PackStack", "PackUnsupported", "measure_member_bytes", "pack_problem", "run_pack"]

_Stack = PackStack  # the name before the split (benchmarks/cpu_grid.py builds one)


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
                    done(
                        TrialResult(
                            trial_id=c.trial_id,
                            config_hash=c.config_hash,
                            status="failed",
                            stop_reason="error",
                            summary={**provenance(dev)},
                            error=tb,
                        )
                    )
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
    ckpts = list(checkpoints) if checkpoints is not None else [None] * len(cfgs)
    stack, template, members = _build(cfgs, dev, data, ckpts, perf_rec)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    spe = steps_per_epoch(data.n_train, c0.batch_size)

    def finish(m: PackMember, row: int | None, reason: str) -> None:
        """A member's end: probes and final weights (completed only), summary, result."""
        st, cfg = m.st, m.cfg
        status = "diverged" if reason == "diverged" else "completed"
        if status == "completed" and row is not None:
            model = stack.member_model(row, template)
            st.probes += end_probes(model, None, data, cfg, st, stack.lossf)
            if m.ckpt is not None and saves_checkpoints(cfg):
                m.ckpt.save("final", stack.member_state_dict(row, template))
        summary = summary_row(
            st,
            provenance=provenance(dev),
            n_train=data.n_train,
            n_val=data.n_val,
            steps_per_epoch=spe,
            scaled_lr=cfg.scaled_lr,
            wall_time_s=time.perf_counter() - t_start,
            peak_memory_mb=peak_memory_mb(st, dev),
        )
        done(
            TrialResult(
                trial_id=cfg.trial_id,
                config_hash=cfg.config_hash,
                status=status,
                stop_reason=reason,
                summary=summary,
                epochs=st.epochs,
                steps=st.steps,
                layers=st.layers,
                probes=st.probes,
            )
        )

    _loop(stack, template, members, data, spe, dev, on_epoch, finish)


def _build(
    cfgs: list[TrialConfig],
    dev: torch.device,
    data: Dataset,
    ckpts: list[CheckpointIO | None],
    perf_rec: dict[str, Any] | None,
) -> tuple[PackStack, torch.nn.Module, list[PackMember]]:
    """The pack's stack, a lone model as template, and its members: each built exactly as
    run_trial builds it (same seed -> same init), resumed from their checkpoints or with
    their init weights saved."""
    c0 = cfgs[0]
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
    stack = PackStack(net, list(cfgs), flat, [buffers[k].to(dev) for k in net.buffer_names])
    members = []
    for cfg, model, io in zip(cfgs, lone_models, ckpts, strict=True):
        opt = make_optimizer(cfg, [p for p in model.parameters()])
        norms0 = [torch.linalg.vector_norm(p.detach()).item() for p in model.parameters()]
        members.append(PackMember(cfg, TrialState(), io, opt.state_dict(), norms0))
    # Resume: every member must be at the same epoch (pack_tasks groups them so).
    saved = [m.ckpt.load("resume") if m.ckpt is not None else None for m in members]
    if any(s is not None for s in saved):
        epochs = {s["state"]["epoch"] if s is not None else 0 for s in saved}
        if len(epochs) > 1:
            raise ValueError(f"run_pack: members resume from different epochs {sorted(epochs)}")
        load_resume(stack, members, saved, dev)
    else:
        for m, model in zip(members, lone_models, strict=True):
            if m.ckpt is not None and saves_checkpoints(m.cfg):
                m.ckpt.save("init", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    return stack, template, members


def _loop(
    stack: PackStack,
    template: torch.nn.Module,
    members: list[PackMember],
    data: Dataset,
    spe: int,
    dev: torch.device,
    on_epoch: Callable[[str, dict[str, Any]], None] | None,
    finish: Callable[[PackMember, int | None, str], None],
) -> None:
    """The epochs of the pack until every member is finished."""
    net, B, n = stack.net, members[0].cfg.batch_size, data.n_train
    active = members  # row i of `stack` is active[i]
    epoch = active[0].st.epoch
    want_upd = any(m.cfg.measure.update_norms for m in members)
    # Every active member has taken the same number of optimizer steps (they start, resume
    # and step together): one counter, written into each member's state when it is read.
    step = active[0].st.step

    def sync_steps() -> None:
        for m in active:
            m.st.step = step

    while active:
        epoch += 1
        t_epoch = time.perf_counter()
        ep = EpochPlan(active, stack, epoch, n, spe, step, dev)
        i = 0
        while i < spe and active:
            idx = ep.perms[:, i * B : (i + 1) * B]
            loss, gnorm, upd = stack.step(
                net.gather(data.x_train, idx),
                data.y_train[idx],
                ep.neg_lr[i].unsqueeze(1),
                ep.bc2(i),
                want_upd,
            )
            torch.stack([loss, gnorm, upd if upd is not None else gnorm], out=ep.rec[i])
            step += 1
            i += 1
            # "steps" early stopping validates inside the epoch (a host sync, as in run_trial).
            if not ep.val_every or not any(step % k == 0 for k in ep.val_every):
                continue
            sync_steps()
            due = [r for r, k in enumerate(ep.members_val_every) if k and step % k == 0]
            vl, va = (t.tolist() for t in stack.evaluate(data.x_val, data.y_val))
            stops = {
                r: s
                for r in due
                if (s := active[r].st.record_validation(active[r].cfg, vl[r], va[r], epoch))
            }
            if stops:
                end_epoch(
                    stack,
                    active,
                    list(stops),
                    epoch,
                    i,
                    t_epoch,
                    ep,
                    data,
                    template,
                    on_epoch,
                    finish,
                    stopped=stops,
                    val=(vl, va),
                )
                rows = [r for r in range(len(active)) if r not in stops]
                active = [active[r] for r in rows]
                if active:
                    stack.keep(rows)
                    ep.keep(rows)
        if not active:
            break
        # ---- epoch end of the members still training ----
        sync_steps()
        rows = end_epoch(
            stack,
            active,
            list(range(len(active))),
            epoch,
            spe,
            t_epoch,
            ep,
            data,
            template,
            on_epoch,
            finish,
            stopped={},
            val=None,
        )
        for r in rows:
            m = active[r]
            if m.ckpt is not None:
                m.ckpt.save("resume", member_resume_state(stack, r, m, template, dev))
        if len(rows) < len(active):
            active = [active[r] for r in rows]
            if active:
                stack.keep(rows)
        stack.prev.copy_(stack.flat)
