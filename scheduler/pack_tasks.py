"""What runs inside a Ray worker for a pack: train its trials together, write each one's rows.

The pack counterpart of `scheduler/tasks.py` (and free of Ray imports like it): every member
gets exactly the rows and `trials` row a lone trial gets (`trial_row` + `write_trial`), plus
`pack_id` / `pack_size`. A member's rows are committed as soon as that member finishes, so a
pack whose worker dies later does not lose them: the re-executed task skips members already
committed and resumes the others from their per-epoch resume checkpoints.

A CUDA out-of-memory error is not a failure: the task returns the unfinished members under
"oom" and the driver re-queues them as two smaller packs (`scheduler/packing.py`). For the
tests, BATCHLAB_FAULT_PACK_OOM_ABOVE=N makes every pack of more than N members raise one
(like the other BATCHLAB_FAULT_* switches of scheduler/faults.py, off unless set).
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import os
from collections.abc import Callable
from typing import Any

from scheduler import guards
from scheduler.commit import DONE_STATUSES, TABLES, commit_trial, committed_status, next_attempt
from scheduler.dispatch import TaskArgs
from scheduler.tasks import chain, error_result, exit_result, live_trial
from warehouse.layout import Layout
from workers.checkpoint_io import TrialCheckpoints
from workers.config import DatasetConfig, TrialConfig

__all__ = ["DONE_STATUSES", "TABLES", "committed_status", "execute_pack", "measure_packs"]


def load_data(dataset_json: str, device: str, data_dir: str | None):
    """The data set on the device, loaded once per worker process (Ray reuses workers, so
    consecutive packs of one grid share it). maxsize=1: one data set on the GPU at a time."""
    from workers.data import load_dataset_cached

    return load_dataset_cached(DatasetConfig.model_validate_json(dataset_json), device, data_dir)


def execute_pack(
    cfg_jsons: list[str],
    experiment: str,
    root: str,
    *,
    pack_id: str,
    attempt: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train the trials `cfg_jsons` as one pack and commit each member's rows. `options`:
    the other fields of `TaskArgs` (scheduler/dispatch.py); `attempt`: Ray's count of this
    task's executions (scheduler/ray_backend.py ray_task; 1 outside Ray).

    Returns {"pack_id", "members": [one status record per finished trial, as
    execute_trial's, with its pack_id], "oom": [config JSON of the members left unfinished
    by a CUDA out-of-memory error], "device_name"}.
    """
    import torch

    from workers.train import resolve_device, run_trial
    from workers.user import use_code_dir

    task = TaskArgs(experiment, root, attempt=attempt or 1, **options)
    use_code_dir(task.code_dir)
    if task.num_threads:
        torch.set_num_threads(task.num_threads)
    cfgs = [TrialConfig.model_validate_json(j) for j in cfg_jsons]
    layout = Layout.open(root)
    dev = resolve_device(task.device)
    out: dict[str, Any] = {"pack_id": pack_id, "members": [], "oom": []}

    # Members an earlier attempt of this task already committed (its worker died later).
    todo = []
    for c in cfgs:
        status = committed_status(layout, experiment, c.trial_id)
        if status in DONE_STATUSES:
            out["members"].append(
                {
                    "trial_id": c.trial_id,
                    "status": status,
                    "pack_id": pack_id,
                    "stop_reason": None,
                    "best_val_loss": None,
                    "epochs_run": None,
                    "error": None,
                    "attempt": 0,
                    "already_committed": True,
                }
            )
        else:
            todo.append(c)
    if not todo:
        return out
    ckpts = {c.trial_id: TrialCheckpoints(layout, experiment, c.trial_id) for c in todo}
    for c in todo:
        next_attempt(ckpts[c.trial_id])  # marks the member in flight
    # Counted per run, as a lone trial's: Ray's executions of this pack's task (a member
    # re-run by a later `batchlab run` starts at 1 again; tests/reliability/test_round3_exits.py).
    attempts = dict.fromkeys((c.trial_id for c in todo), task.attempt)
    started = dt.datetime.now(dt.timezone.utc)
    lives = {
        c.trial_id: live_trial(
            layout,
            experiment,
            c,
            attempt=attempts[c.trial_id],
            node_id=task.node_id,
            pack_id=pack_id,
        )
        for c in todo
    }

    def publish(trial_id: str, row: dict[str, Any]) -> None:
        """A member's epoch row to the live area."""
        if (live := lives.get(trial_id)) is not None:
            live.epoch(row)

    def commit(cfg: TrialConfig, result, in_pack: bool) -> None:
        if (live := lives.pop(cfg.trial_id, None)) is not None:
            live.close()
        rec = commit_trial(
            cfg,
            result,
            task,
            attempt=attempts[cfg.trial_id],
            started_at=started,
            ckpt=ckpts[cfg.trial_id] if task.resume else None,
            layout=layout,
            pack_id=pack_id if in_pack else None,
            pack_size=len(cfgs) if in_pack else 1,
        )
        out["members"].append({**rec, "pack_id": pack_id if in_pack else None})

    def lone(c: TrialConfig, data=None) -> None:
        ck = ckpts[c.trial_id] if task.resume else None
        hook = functools.partial(publish, c.trial_id)
        try:
            with guards.no_os_exit():
                result = run_trial(
                    c,
                    device=str(dev),
                    data=data,
                    data_dir=task.data_dir,
                    checkpoints=ck,
                    on_epoch=hook,
                )
        except BaseException as exc:  # the user's code exiting: a failed trial (guards.py)
            if (cause := guards.user_exit(exc)) is None:
                raise
            result = exit_result(c, exc, cause, str(dev))
        commit(c, result, in_pack=False)

    try:
        return run_members(todo, task, dev, ckpts, attempts, out, commit, lone, publish)
    finally:
        for live in lives.values():
            live.close()


def run_members(
    todo: list[TrialConfig],
    task: TaskArgs,
    dev: Any,
    ckpts: dict[str, TrialCheckpoints],
    attempts: dict[str, int],
    out: dict[str, Any],
    commit: Callable[[TrialConfig, Any, bool], None],
    lone: Callable[..., None],
    publish: Callable[[str, dict[str, Any]], None],
) -> dict[str, Any]:
    """Train the pack's unfinished members `todo` (execute_pack's closures commit, train
    one member alone and publish an epoch row); fills and returns `out`."""
    import torch

    from workers.pack import run_pack
    from workers.packnet import PackUnsupported, make_pack_net

    if todo[0].trainable is not None:  # the user's own loop trains one model: no packing
        out["unsupported"] = f"trainable {todo[0].trainable!r}: your own loop trains one model"
        for c in todo:
            lone(c)
        return out
    try:
        data = load_data(todo[0].dataset.model_dump_json(), str(dev), task.data_dir)
    except Exception as exc:  # a loader's error, NaN/inf inputs (data_checks.py): all failed
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise  # the driver splits the pack
        for c in todo:
            commit(c, error_result(c, exc, str(dev)), in_pack=True)
        return out
    # Budgets a pack cannot train (stop: caps, until: targets, probes at the best weights):
    # those members train alone, the rest of the group still packs.
    if alone := [c for c in todo if c.unpackable_reason]:
        out["unsupported"] = alone[0].unpackable_reason
        for c in alone:
            lone(c, data)
        todo = [c for c in todo if not c.unpackable_reason]
        if not todo:
            return out
    # A model PackNet cannot batch: the members train one after another, as lone trials.
    try:
        if data.streaming:
            raise PackUnsupported(
                f"dataset.loader {todo[0].dataset.loader!r} returns torch Datasets (streamed "
                "through a DataLoader); packs need the data on the device"
            )
        make_pack_net(_template(todo[0], data).to(dev), data.x_train[:8])
    except PackUnsupported as exc:
        out["unsupported"] = str(exc)
        for c in todo:
            lone(c, data)
        return out

    by_id = {c.trial_id: c for c in todo}
    # Members resume in lockstep only from the same epoch: group them by their resume epoch.
    groups: dict[int, list[TrialConfig]] = {}
    for c in todo:
        saved = ckpts[c.trial_id].load("resume") if task.resume else None
        groups.setdefault(saved["state"]["epoch"] if saved else 0, []).append(c)
    oom_above = int(os.environ.get("BATCHLAB_FAULT_PACK_OOM_ABOVE") or 0)
    oom = False
    for epoch in sorted(groups):
        group = groups[epoch]
        try:
            if oom_above and len(group) > oom_above:
                raise torch.cuda.OutOfMemoryError(f"injected: {len(group)} members > {oom_above}")
            with guards.no_os_exit():
                run_pack(
                    group,
                    device=str(dev),
                    data=data,
                    checkpoints=[ckpts[c.trial_id] for c in group] if task.resume else None,
                    on_epoch=chain(publish, _fault_hooks(group, attempts)),
                    on_done=lambda r: commit(by_id[r.trial_id], r, in_pack=True),
                )
        except torch.cuda.OutOfMemoryError:
            oom = True
        except BaseException as exc:  # user code (a loss, a model factory) exiting: failed
            if (cause := guards.user_exit(exc)) is None:
                raise
            finished = {m["trial_id"] for m in out["members"]}
            for c in group:
                if c.trial_id not in finished:
                    commit(c, exit_result(c, exc, cause, str(dev)), in_pack=True)
        if oom:
            break
    if oom:
        # Outside the except block: the exception (and the tensors its frames hold) is gone,
        # so the cached blocks can go back to the GPU for the smaller packs.
        finished = {m["trial_id"] for m in out["members"]}
        out["oom"] = [c.model_dump_json() for c in todo if c.trial_id not in finished]
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if dev.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(dev)
    return out


def _template(cfg: TrialConfig, data):
    from workers.models import build_model

    return build_model(cfg.model, data.input_shape, data.num_classes)


def _fault_hooks(
    group: list[TrialConfig], attempts: dict[str, int]
) -> Callable[[str, dict[str, Any]], None] | None:
    """The KILL_AT_EPOCH fault of scheduler/faults.py for pack members (None unless a
    BATCHLAB_FAULT_* variable is set). The step-level faults hook torch.optim and module
    forwards of a lone trial; they do not apply to packs."""
    from scheduler import faults

    if not faults.active():
        return None
    hooks = {c.trial_id: faults.kill_hook(c.trial_id, attempts[c.trial_id]) for c in group}

    def on_epoch(trial_id: str, row: dict[str, Any]) -> None:
        if (hook := hooks.get(trial_id)) is not None:
            hook(row)

    return on_epoch


def measure_packs(
    cfg_jsons: list[str], device: str = "cuda", data_dir: str | None = None
) -> dict[str, Any]:
    """Sizing facts for the driver, measured on this worker's GPU: free and total memory,
    the bytes of each data set on the device, and (bytes per member, fixed bytes) of a pack
    of each config's shape. One config per shape key."""
    import torch

    from workers.pack import measure_member_bytes

    dev = torch.device(device)
    out: dict[str, Any] = {"data_bytes": {}, "members": {}}
    for j in cfg_jsons:
        cfg = TrialConfig.model_validate_json(j)
        before = torch.cuda.memory_allocated(dev)
        data = load_data(cfg.dataset.model_dump_json(), str(dev), data_dir)
        out["data_bytes"][cfg.dataset.model_dump_json()] = max(
            out["data_bytes"].get(cfg.dataset.model_dump_json(), 0),
            torch.cuda.memory_allocated(dev) - before,
            sum(
                t.numel() * t.element_size()
                for t in (data.x_train, data.y_train, data.x_val, data.y_val)
            ),
        )
        out["members"][cfg.shape_key()] = measure_member_bytes(cfg, data, dev)
    torch.cuda.empty_cache()
    out["free_bytes"], out["total_bytes"] = torch.cuda.mem_get_info(dev)
    out["device_name"] = torch.cuda.get_device_name(dev)
    return out
